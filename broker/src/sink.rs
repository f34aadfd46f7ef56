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
    /// The client marked this PUBLISH as a retransmission (MQTT DUP flag):
    /// downstream it may already have arrived once.
    pub dup: bool,
    /// When the broker read the PUBLISH.
    pub received_at: SystemTime,
    /// MQTT 5 user properties, passed through.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 Content Type, passed through.
    pub content_type: Option<String>,
    /// MQTT 5 Response Topic (request/response), passed through.
    pub response_topic: Option<String>,
    /// MQTT 5 Correlation Data (request/response), passed through.
    pub correlation_data: Option<Bytes>,
}

/// Why the sink could not take an uplink.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UplinkError {
    /// The downstream system did not confirm in time; the device should retry.
    #[error("delivery timed out: {0}")]
    Timeout(String),
    /// The downstream system failed the message; it may take it later, so
    /// the device is not told success and retries.
    #[error("delivery failed: {0}")]
    Failed(String),
    /// The downstream system will never take this message: retrying cannot
    /// help. The sink has already set it aside (dead letters) before it
    /// reports this, so the broker may let the device move on: MQTT 5 gets
    /// the reason code of `kind`, MQTT 3.1.1 a plain PUBACK.
    #[error("rejected ({kind:?}): {reason}")]
    Rejected { kind: Rejection, reason: String },
}

/// Why an uplink was rejected for good; picks the MQTT 5 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Larger than the downstream system accepts (PUBACK 0x97 quota exceeded).
    TooLarge,
    /// Refused as invalid by the downstream system (PUBACK 0x99 payload format invalid).
    Invalid,
    /// The broker is not authorized downstream (PUBACK 0x87 not authorized).
    NotAuthorized,
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

impl Rejection {
    /// The `kind` label of `herald_uplinks_rejected_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::NotAuthorized => "not_authorized",
        }
    }
}
