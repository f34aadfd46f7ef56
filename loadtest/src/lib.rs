//! Load testing for terminal fleets: a lean MQTT client, open-loop
//! scheduling with coordinated-omission-correct latencies, terminals that
//! reconnect and retransmit as firmware does, a loss ledger checked against
//! Kafka, the scenarios of the `herald-loadtest` CLI, and simulated
//! terminals for Herald's tests.

pub mod accounting;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod downlink;
pub mod engine;
pub mod kafka;
pub mod lifecycle;
pub mod message_id;
pub mod outbox;
pub mod report;
pub mod schedule;
pub mod terminal;
pub mod uplink;
