//! Herald's Kafka bridge.
//!
//! [`KafkaUplinkSink`] implements the broker's `UplinkSink` with an
//! idempotent rdkafka producer (acks=all): each device uplink that matches a
//! topic rule becomes a Kafka record keyed by device id, and the broker's
//! PUBACK waits for Kafka's acknowledgement. [`KafkaHealth`] tells `/readyz`
//! whether Kafka is reachable. [`DownlinkBridge`] consumes device commands
//! and writes a receipt for each; [`KafkaPresence`] writes presence events.

mod config;
mod downlink;
mod health;
mod presence;
mod producer;
mod rules;

pub use config::{DownlinkConfig, KafkaConfig, PresenceConfig, UplinkRule};
pub use downlink::DownlinkBridge;
pub use health::KafkaHealth;
pub use presence::KafkaPresence;
pub use producer::{header, KafkaUplinkSink};
pub use rules::TopicRules;

/// Checks a Kafka configuration without connecting: rules compile and the
/// pass-through producer options do not override what Herald guarantees.
pub fn validate(config: &KafkaConfig) -> Result<(), BridgeError> {
    TopicRules::compile(&config.uplink_rules)?;
    producer::producer_config(config)?;
    downlink::validate(config)?;
    Ok(())
}

/// Errors at the bridge's boundary.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid configuration `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}
