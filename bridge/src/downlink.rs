//! Downlink: commands from Kafka to devices, with receipts.
//!
//! Herald's instances consume the downlink topic (DownlinkCommand records
//! keyed by device id) as one consumer group. Each command is handed to the
//! broker in partition order and published with QoS 1 to
//! `<prefix>/<device_id>/down/<kind>`. When it settles — the device PUBACK'd
//! it, it expired, or it was refused — a DeliveryReceipt is written, and only
//! once Kafka acknowledged the receipt does the command count as handled. A
//! partition's offset is stored only up to its oldest command not yet
//! handled, so a crash redelivers (at least once) everything unsettled.
//!
//! Receipts have their own producer, apart from uplinks, with a bounded
//! queue: a receipt is never dropped, so when that queue is full the command
//! waits for room, and consumption pauses once `max_inflight` commands wait.

use crate::config::{KafkaConfig, RESERVED_CONSUMER_OPTIONS};
use crate::presence::now_ms;
use crate::producer::{create_producer, Flusher, ProducerRole};
use crate::BridgeError;
use herald_broker::{BrokerHandle, DeliveryOutcome, DeliveryTicket, Downlink};
use herald_schemas::v1::{
    CommandKind, DeliveryOutcome as ReceiptOutcome, DeliveryReceipt, DownlinkCommand,
};
use herald_schemas::Message as _;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Offsets of one consumer's partitions: which are in flight, and how far
/// every earlier one is handled.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionOffsets>,
}

#[derive(Default)]
struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    next_unseen: i64,
    stored: i64,
}

impl OffsetTracker {
    pub(crate) fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let fresh = || PartitionOffsets {
            stored: offset,
            ..Default::default()
        };
        let p = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(fresh);
        if offset < p.next_unseen {
            // Consumption rewound (the partition came back after a rebalance):
            // what was tracked before says nothing about these offsets.
            *p = fresh();
        }
        p.in_flight.insert(offset);
        p.next_unseen = p.next_unseen.max(offset + 1);
    }

    /// Marks `offset` handled; returns the offset to store (the next to
    /// consume after a restart) when it advanced.
    pub(crate) fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_string(), partition))?;
        p.in_flight.remove(&offset);
        let safe = p.in_flight.first().copied().unwrap_or(p.next_unseen);
        (safe > p.stored).then(|| {
            p.stored = safe;
            safe
        })
    }
}

struct Metrics {
    outcomes: IntCounterVec,
    inflight: IntGauge,
    latency: Histogram,
}

/// The downlink consumer of one Herald instance.
pub struct DownlinkBridge {
    consumer: Option<Arc<StreamConsumer>>,
    /// The receipts' own producer; `None` when downlinks are disabled.
    producer: Option<FutureProducer>,
    handle: BrokerHandle,
    topic_prefix: String,
    receipts_topic: String,
    default_ttl: Duration,
    max_inflight: usize,
    metrics: Arc<Metrics>,
}

fn consumer_config(config: &KafkaConfig) -> Result<ClientConfig, BridgeError> {
    herald_kafka::options::check_reserved(
        "kafka.consumer_options",
        &config.consumer_options,
        RESERVED_CONSUMER_OPTIONS,
    )?;
    let mut client = herald_kafka::clients::at_least_once_consumer(
        &config.bootstrap_servers,
        &format!("{}-downlink", config.client_id),
        &config.downlink.group_id,
    );
    herald_kafka::clients::with_options(&mut client, &config.consumer_options);
    Ok(client)
}

pub(crate) fn validate(config: &KafkaConfig) -> Result<(), BridgeError> {
    consumer_config(config).map(drop)
}

impl DownlinkBridge {
    pub fn new(
        config: &KafkaConfig,
        topic_prefix: &str,
        handle: BrokerHandle,
        registry: &Registry,
    ) -> Result<Self, BridgeError> {
        let (consumer, producer) = if config.downlink.enabled {
            let consumer: StreamConsumer = consumer_config(config)?.create()?;
            consumer.subscribe(&[&config.downlink.topic])?;
            let producer = create_producer(config, ProducerRole::Receipts)?;
            (Some(Arc::new(consumer)), Some(producer))
        } else {
            (None, None)
        };
        let metrics = Metrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "herald_downlinks_total",
                    "Downlink commands settled, by outcome.",
                ),
                &["outcome"],
            )?,
            inflight: IntGauge::new(
                "herald_downlinks_inflight",
                "Downlink commands handed to devices and not settled.",
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "herald_downlink_delivery_seconds",
                    "From a command's creation to the device's PUBACK.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                ]),
            )?,
        };
        registry.register(Box::new(metrics.outcomes.clone()))?;
        registry.register(Box::new(metrics.inflight.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        Ok(Self {
            consumer,
            producer,
            handle,
            topic_prefix: topic_prefix.to_string(),
            receipts_topic: config.downlink.receipts_topic.clone(),
            default_ttl: config.downlink.default_ttl,
            max_inflight: config.downlink.max_inflight.max(1),
            metrics: Arc::new(metrics),
        })
    }

    /// Flushes the receipts' producer at shutdown, once [`Self::run`] returned.
    pub fn receipts_flusher(&self) -> Option<Flusher> {
        self.producer
            .clone()
            .map(|producer| Flusher::new(producer, "receipts"))
    }

    /// Consumes until `drain` (or `shutdown`); then waits, until
    /// `shutdown`, for the commands in flight to settle (their devices
    /// acknowledge while the broker drains), and commits what is handled.
    /// What is still unsettled at `shutdown` stays uncommitted and is
    /// delivered again after the next rebalance.
    pub async fn run(self, drain: CancellationToken, shutdown: CancellationToken) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        let this = Arc::new(self);
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let slots = Arc::new(Semaphore::new(this.max_inflight));
        loop {
            let permit = tokio::select! {
                _ = drain.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            let message = tokio::select! {
                _ = drain.cancelled() => break,
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    warn!(%error, "downlink consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let (topic, partition, offset) = (
                message.topic().to_string(),
                message.partition(),
                message.offset(),
            );
            tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin(&topic, partition, offset);
            // Handed to the broker here, in partition order; only the wait runs apart.
            let pending = this.start(
                message.key().unwrap_or_default(),
                message.payload().unwrap_or_default(),
            );
            let (this, tracker, consumer, shutdown) = (
                this.clone(),
                tracker.clone(),
                consumer.clone(),
                shutdown.clone(),
            );
            this.metrics.inflight.inc();
            tokio::spawn(async move {
                let _permit = permit;
                let receipt = this.settle(pending).await;
                let written = this.write_receipt(&receipt, &shutdown).await;
                this.metrics.inflight.dec();
                if !written {
                    return; // shutting down: leave it for redelivery
                }
                let store = tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .complete(&topic, partition, offset);
                if let Some(next) = store {
                    let mut list = TopicPartitionList::new();
                    if list
                        .add_partition_offset(&topic, partition, Offset::Offset(next))
                        .is_ok()
                    {
                        if let Err(error) = consumer.store_offsets(&list) {
                            debug!(%error, topic, partition, "offset not stored (partition revoked?)");
                        }
                    }
                }
            });
        }
        info!("downlink consumer stopped; waiting for the commands in flight");
        let all = u32::try_from(this.max_inflight).unwrap_or(u32::MAX);
        tokio::select! {
            _ = slots.acquire_many(all) => {}
            _ = shutdown.cancelled() => {}
        }
        info!("committing handled downlink offsets");
        // A synchronous commit waits on the network: not on a runtime thread.
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        if let Ok(Err(error)) = committed {
            debug!(%error, "final downlink offset commit");
        }
    }

    /// Decodes a command and hands it to the broker.
    fn start(&self, key: &[u8], payload: &[u8]) -> Pending {
        let now = now_ms();
        let command = match DownlinkCommand::decode(payload) {
            Ok(command) => command,
            Err(error) => {
                return Pending::Done(DeliveryReceipt {
                    device_id: String::from_utf8_lossy(key).into_owned(),
                    outcome: ReceiptOutcome::Refused as i32,
                    reason: format!("undecodable command: {error}"),
                    at_ms: now,
                    ..Default::default()
                })
            }
        };
        let expires_at_ms = match command.expires_at_ms {
            0 => (if command.created_at_ms > 0 {
                command.created_at_ms
            } else {
                now
            })
            .saturating_add(self.default_ttl.as_millis() as i64),
            at => at,
        };
        let receipt = |outcome: ReceiptOutcome, reason: &str| DeliveryReceipt {
            command_id: command.command_id.clone(),
            device_id: command.device_id.clone(),
            outcome: outcome as i32,
            reason: reason.into(),
            latency_ms: if command.created_at_ms > 0 {
                now - command.created_at_ms
            } else {
                0
            },
            at_ms: now,
        };
        if expires_at_ms <= now {
            return Pending::Done(receipt(ReceiptOutcome::Expired, "expired before delivery"));
        }
        let kind = match command.kind() {
            CommandKind::Announce => "announce",
            CommandKind::PrintChunk => "print",
            CommandKind::Display => "display",
            CommandKind::Unspecified => "command",
        };
        let downlink = Downlink {
            device_id: command.device_id.clone(),
            topic: format!("{}/{}/down/{kind}", self.topic_prefix, command.device_id),
            payload: payload.to_vec().into(),
            expires_at: Some(UNIX_EPOCH + Duration::from_millis(expires_at_ms.max(0) as u64)),
        };
        let ticket = self.handle.deliver(downlink.clone());
        Pending::Waiting {
            command,
            downlink,
            ticket,
            expires_at_ms,
        }
    }

    /// Waits for the outcome; a downlink the broker let go of (its session
    /// ended) is handed over again, until it expires.
    async fn settle(&self, pending: Pending) -> DeliveryReceipt {
        let (command, downlink, mut ticket, expires_at_ms) = match pending {
            Pending::Done(receipt) => return receipt,
            Pending::Waiting {
                command,
                downlink,
                ticket,
                expires_at_ms,
            } => (command, downlink, ticket, expires_at_ms),
        };
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((expires_at_ms - now_ms()).max(0) as u64);
        let outcome = loop {
            tokio::select! {
                outcome = &mut ticket => match outcome {
                    Some(outcome) => break outcome,
                    None => ticket = self.handle.deliver(downlink.clone()),
                },
                // Dropping the ticket tells the broker not to send it any more.
                _ = tokio::time::sleep_until(deadline) => break DeliveryOutcome::Expired,
            }
        };
        let now = now_ms();
        let latency_ms = if command.created_at_ms > 0 {
            now - command.created_at_ms
        } else {
            0
        };
        let (outcome, reason) = match outcome {
            DeliveryOutcome::Acknowledged => {
                self.metrics
                    .latency
                    .observe(latency_ms.max(0) as f64 / 1000.0);
                (ReceiptOutcome::Delivered, String::new())
            }
            DeliveryOutcome::Expired => (
                ReceiptOutcome::Expired,
                "expired before the device acknowledged".into(),
            ),
            DeliveryOutcome::Refused(refusal) => (ReceiptOutcome::Refused, refusal.as_str().into()),
        };
        DeliveryReceipt {
            command_id: command.command_id,
            device_id: command.device_id,
            outcome: outcome as i32,
            reason,
            latency_ms,
            at_ms: now,
        }
    }

    /// Writes a receipt, retrying until Kafka acknowledges it; while the
    /// receipts' queue is full, waits for room. Returns false if shutdown
    /// came first.
    async fn write_receipt(&self, receipt: &DeliveryReceipt, shutdown: &CancellationToken) -> bool {
        let Some(producer) = &self.producer else {
            return false;
        };
        let label = match receipt.outcome() {
            ReceiptOutcome::Delivered => "delivered",
            ReceiptOutcome::Expired => "expired",
            ReceiptOutcome::Refused => "refused",
            ReceiptOutcome::Unspecified => "unspecified",
        };
        self.metrics.outcomes.with_label_values(&[label]).inc();
        let payload = receipt.encode_to_vec();
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(&self.receipts_topic)
                .key(&receipt.device_id)
                .payload(&payload);
            let failure = match producer.send_result(record) {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => return true,
                    Ok(Err((error, _))) => Some(error.to_string()),
                    Err(_canceled) => Some("producer shut down".to_string()),
                },
                // Full: wait for room, without backing off or warning.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
                Err((error, _)) => Some(error.to_string()),
            };
            let pause = match failure {
                None => Duration::from_millis(20),
                Some(error) => {
                    warn!(command_id = %receipt.command_id, %error, "receipt not written; retrying");
                    let pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

enum Pending {
    Done(DeliveryReceipt),
    Waiting {
        command: DownlinkCommand,
        downlink: Downlink,
        ticket: DeliveryTicket,
        expires_at_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_up_to_the_oldest_unhandled_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..14 {
            t.begin("d", 0, o);
        }
        assert_eq!(t.complete("d", 0, 11), None, "10 still in flight");
        assert_eq!(t.complete("d", 0, 12), None);
        assert_eq!(
            t.complete("d", 0, 10),
            Some(13),
            "10..=12 handled: resume at 13"
        );
        t.begin("d", 1, 5);
        assert_eq!(t.complete("d", 1, 5), Some(6), "partitions are independent");
        assert_eq!(t.complete("d", 0, 13), Some(14));
        assert_eq!(t.complete("x", 0, 1), None, "unknown partition");
    }

    #[test]
    fn a_rewind_after_a_rebalance_starts_over() {
        let mut t = OffsetTracker::default();
        for o in 100..150 {
            t.begin("d", 0, o);
        }
        assert_eq!(t.complete("d", 0, 100), Some(101));
        // The partition is revoked and comes back from the committed offset.
        t.begin("d", 0, 101);
        assert_eq!(
            t.complete("d", 0, 101),
            Some(102),
            "not next_unseen (150) of the old assignment"
        );
        assert_eq!(
            t.complete("d", 0, 140),
            None,
            "old in-flight work does not move it"
        );
    }
}
