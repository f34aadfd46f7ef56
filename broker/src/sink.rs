//! Where device uplinks go beyond the broker.
//!
//! The broker core knows nothing of Kafka: it hands each PUBLISH to an
//! [`UplinkSink`] and, for QoS 1 and 2, waits on the returned [`UplinkAck`]
//! before it acknowledges the device. The bridge implements the sink with a
//! Kafka producer; [`LocalOnly`] is the sink of a plain MQTT broker.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

/// A message a client published, as handed to the sink.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The publishing client's id (the device id in device mode).
    pub client_id: Arc<str>,
    /// MQTT topic name.
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// MQTT QoS, 0 to 2.
    pub qos: u8,
    pub retain: bool,
    /// When the broker read the PUBLISH.
    pub received_at: SystemTime,
    /// MQTT 5 user properties, passed through.
    pub user_properties: Vec<(String, String)>,
}

/// Why the sink could not take an uplink.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UplinkError {
    /// The downstream system did not confirm in time; the device should retry.
    #[error("delivery timed out: {0}")]
    Timeout(String),
    /// The downstream system refused or failed the message.
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// Completes when the sink has durably accepted the uplink.
pub type UplinkAck = Pin<Box<dyn Future<Output = Result<(), UplinkError>> + Send>>;

/// Takes device uplinks out of the broker.
pub trait UplinkSink: Send + Sync + 'static {
    /// Starts delivery of `uplink`. Returns `None` when no rule takes the
    /// topic (the message is then only routed to MQTT subscribers).
    fn submit(&self, uplink: Uplink) -> Option<UplinkAck>;

    /// Cheap check made before building an [`Uplink`]: may the sink take
    /// messages on `topic` at all?
    fn wants(&self, topic: &str) -> bool;
}

/// The sink of a plain MQTT broker: nothing leaves the broker.
pub struct LocalOnly;

impl UplinkSink for LocalOnly {
    fn submit(&self, _uplink: Uplink) -> Option<UplinkAck> {
        None
    }

    fn wants(&self, _topic: &str) -> bool {
        false
    }
}
