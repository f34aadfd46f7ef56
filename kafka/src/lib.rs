//! What Herald's Kafka clients share, neutral of MQTT (the broker) and of
//! the services (the consumers): the first pieces of issue #9's shared Kafka
//! crate.
//!
//! - [`clients`]: the settings an idempotent producer and an at-least-once
//!   group consumer start from;
//! - [`layered`]: one TOML file with environment overrides, the way every
//!   Herald binary loads its configuration;
//! - [`options`]: the check that librdkafka pass-through options do not
//!   override what a client sets itself;
//! - [`stats`]: librdkafka's statistics of each client as Prometheus metrics;
//! - [`watermark`]: the offset to store of a consumer whose records settle
//!   out of order.

pub mod clients;
pub mod layered;
pub mod options;
pub mod stats;
pub mod watermark;
