//! Herald's Kafka bridge.
//!
//! [`KafkaUplinkSink`] implements the broker's `UplinkSink` with an
//! idempotent rdkafka producer (acks=all): each device uplink that matches a
//! topic rule becomes a Kafka record keyed by device id, and the broker's
//! PUBACK waits for Kafka's acknowledgement. [`KafkaHealth`] tells `/readyz`
//! whether Kafka is reachable. [`DownlinkBridge`] consumes device commands
//! and writes a receipt for each; [`KafkaPresence`] writes presence events.
//! Uplinks, receipts and presence events each have their own producer and
//! queue, so neither of the others can starve or fail uplinks. Uplinks Kafka
//! refuses for good go to a dead-letter topic (see `producer`).

mod config;
mod consumers;
mod dispatch;
mod downlink;
mod health;
pub mod message_id;
mod orphans;
mod presence;
mod presence_follower;
mod presence_view;
mod producer;
mod rules;
mod topics;

pub use config::{
    ClusterConfig, DownlinkConfig, KafkaConfig, PresenceConfig, UplinkRule, RECORD_MARGIN,
};
pub use downlink::DownlinkBridge;
pub use health::KafkaHealth;
pub use presence::KafkaPresence;
pub use presence_follower::PresenceFollower;
pub use presence_view::PresenceView;
pub use producer::{header, Flusher, HeraldProducer, KafkaUplinkSink, ProducerRole};
pub use rules::TopicRules;

/// Checks that the topics a node needs exist, creating the missing ones
/// where allowed (see `topics`). Gives up after `give_up` without Kafka.
pub async fn ensure_topics(config: &KafkaConfig, give_up: std::time::Duration) {
    topics::ensure(config, give_up).await
}

/// Checks a Kafka configuration without connecting: rules compile, the
/// pass-through producer options do not override what Herald guarantees,
/// and a Kafka record can hold the largest MQTT packet the broker accepts
/// (`max_packet_size`, from `broker.max_packet_size`).
pub fn validate(config: &KafkaConfig, max_packet_size: u32) -> Result<(), BridgeError> {
    TopicRules::compile(&config.uplink_rules)?;
    if !rules::legal_kafka_topic(&config.dead_letter_topic) {
        return Err(BridgeError::Config {
            key: "kafka.dead_letter_topic".into(),
            reason: format!(
                "{:?} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
                config.dead_letter_topic
            ),
        });
    }
    for role in [
        ProducerRole::Uplinks { max_packet_size },
        ProducerRole::Presence,
        ProducerRole::Receipts,
    ] {
        producer::producer_config(config, role)?;
    }
    consumers::validate(config)?;
    Ok(())
}

/// Errors at the bridge's boundary.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid configuration `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error(transparent)]
    Reserved(#[from] herald_kafka::options::ReservedOption),
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}
