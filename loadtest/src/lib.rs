//! Load testing for terminal fleets: a lean MQTT client, open-loop
//! scheduling with coordinated-omission-correct latencies, terminals that
//! reconnect and retransmit as firmware does, a loss ledger checked against
//! Kafka, clients that stall or acknowledge late, the scenarios of the
//! `herald-loadtest` CLI (with the loss-counting MQTT fan-in), and simulated
//! terminals for Herald's tests.

pub mod accounting;
pub mod backoff;
pub mod brokers;
pub mod cli;
pub mod client;
pub mod downlink;
pub mod engine;
pub mod fanin;
pub mod fanin_clients;
pub mod fanin_ledger;
pub mod impairment;
pub mod kafka;
pub mod lifecycle;
pub mod message_id;
pub mod outbox;
pub mod presence_fill;
pub mod report;
pub mod schedule;
pub mod terminal;
#[cfg(test)]
mod test_broker;
pub mod uplink;
