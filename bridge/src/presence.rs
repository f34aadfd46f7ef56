//! Presence: every connect and disconnect as a PresenceEvent on a compacted
//! topic keyed by device id, so the latest record per device says whether it
//! is online. Events have their own producer and bounded queue: past the
//! bound (a long Kafka outage with devices churning) they are shed and
//! counted, never queued without end or in the uplinks' way.

use crate::config::KafkaConfig;
use crate::presence_view::PresenceView;
use crate::producer::{create_producer, flush, HeraldProducer, LogLimiter, ProducerRole};
use crate::BridgeError;
use herald_broker::{DisconnectReason, SessionEvents};
use herald_kafka::stats::KafkaStatsMetrics;
use herald_schemas::v1::{PresenceEvent, PresenceReason};
use herald_schemas::Message as _;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Writes presence events with a producer of their own (idempotent,
/// acks=all, ordered per device, queue bounded by
/// `kafka.presence.max_queued_events`).
pub struct KafkaPresence {
    /// `None` when presence is disabled.
    producer: Option<HeraldProducer>,
    topic: String,
    node: String,
    /// Where each device is, cluster-wide: a disconnect of a connection the
    /// device already replaced on another node is not written.
    view: Arc<PresenceView>,
    written: IntCounterVec,
    shed: IntCounter,
    shed_log: LogLimiter,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl KafkaPresence {
    pub fn new(
        config: &KafkaConfig,
        view: Arc<PresenceView>,
        stats: &KafkaStatsMetrics,
        registry: &Registry,
    ) -> Result<Self, BridgeError> {
        let producer = if config.presence.enabled {
            Some(create_producer(config, ProducerRole::Presence, stats)?)
        } else {
            None
        };
        let written = IntCounterVec::new(
            Opts::new(
                "herald_presence_events_total",
                "Presence events written to Kafka, by result.",
            ),
            &["result"],
        )?;
        let shed = IntCounter::new(
            "herald_presence_events_shed_total",
            "Presence events dropped because their producer queue was full (Kafka slow or down).",
        )?;
        registry.register(Box::new(written.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        Ok(Self {
            producer,
            topic: config.presence.topic.clone(),
            node: config.cluster.node_id(),
            view,
            written,
            shed,
            shed_log: LogLimiter::new(Duration::from_secs(10)),
        })
    }

    /// Waits up to `timeout` for events still queued.
    pub fn flush(&self, timeout: Duration) {
        if let Some(producer) = &self.producer {
            flush(producer, "presence", timeout);
        }
    }

    fn write(&self, device_id: &str, online: bool, reason: PresenceReason, generation: u64) {
        let Some(producer) = &self.producer else {
            return;
        };
        let event = PresenceEvent {
            device_id: device_id.into(),
            online,
            reason: reason as i32,
            at_ms: now_ms(),
            generation,
            node: self.node.clone(),
        };
        let payload = event.encode_to_vec();
        let record = FutureRecord::to(&self.topic)
            .key(device_id)
            .payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => {
                let written = self.written.clone();
                let device_id = device_id.to_string();
                tokio::spawn(async move {
                    let ok = matches!(delivery.await, Ok(Ok(_)));
                    written
                        .with_label_values(&[if ok { "ok" } else { "error" }])
                        .inc();
                    if !ok {
                        tracing::warn!(device_id, "presence event not written");
                    }
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.shed.inc();
                if let Some(suppressed) = self.shed_log.allow() {
                    tracing::warn!(
                        device_id,
                        suppressed,
                        "presence queue full (Kafka slow or down): presence event shed"
                    );
                }
            }
            Err((error, _)) => {
                self.written.with_label_values(&["error"]).inc();
                tracing::warn!(%error, device_id, "presence event not queued");
            }
        }
    }
}

impl SessionEvents for KafkaPresence {
    fn connected(&self, client_id: &str, generation: u64) {
        self.write(client_id, true, PresenceReason::Connected, generation);
    }

    fn disconnected(&self, client_id: &str, generation: u64, reason: DisconnectReason) {
        if self.view.held_elsewhere_since(client_id, generation) {
            return; // the device's latest record is its newer connection's
        }
        let reason = match reason {
            DisconnectReason::Normal => PresenceReason::Normal,
            DisconnectReason::KeepaliveTimeout => PresenceReason::KeepaliveTimeout,
            DisconnectReason::Takeover => PresenceReason::Takeover,
            DisconnectReason::AuthRevoked => PresenceReason::AuthRevoked,
            DisconnectReason::ServerShutdown => PresenceReason::ServerShutdown,
            DisconnectReason::ConnectionLost => PresenceReason::ConnectionLost,
        };
        self.write(client_id, false, reason, generation);
    }
}
