//! Load testing for terminal fleets: a lean MQTT client, open-loop
//! scheduling with coordinated-omission-correct latencies, the scenarios of
//! the `herald-loadtest` CLI, and simulated terminals for Herald's tests.

pub mod cli;
pub mod client;
pub mod engine;
pub mod report;
pub mod schedule;
pub mod terminal;
