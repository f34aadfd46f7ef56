//! The uplink sink: MQTT publishes into Kafka, acknowledged by Kafka; and the
//! one place where Herald's librdkafka producers are configured.
//!
//! Kafka's refusals fall in two kinds. Transient ones (timeouts, brokers
//! down, a full queue, ...) withhold the device's PUBACK, so the device
//! retries. Permanent ones (the record is too large, invalid, or Herald may
//! not write the topic) would make a device retransmit forever, so the
//! uplink is written to the dead-letter topic and, once Kafka acknowledged
//! the dead letter, reported to the broker as [`UplinkError::Rejected`].

use crate::config::{KafkaConfig, RECORD_MARGIN, RESERVED_PRODUCER_OPTIONS};
use crate::message_id::message_id;
use crate::rules::TopicRules;
use crate::BridgeError;
use herald_broker::{Rejection, Uplink, UplinkAck, UplinkError, UplinkSink};
use herald_kafka::options::check_reserved;
use herald_kafka::stats::{with_statistics, KafkaStatsMetrics, StatsContext};
use herald_schemas::trace::TraceContext;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Names of the Kafka headers Herald puts on uplink records and dead
/// letters: a contract with the consumers, kept in `herald-schemas`.
pub use herald_schemas::headers as header;

/// A Herald producer: its librdkafka statistics become `herald_kafka_*` metrics.
pub type HeraldProducer = FutureProducer<StatsContext>;

/// Which part of Herald a producer serves. Each gets its own librdkafka
/// client and queue, so a backlog in one cannot fail or delay another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerRole {
    /// Device uplinks and their dead letters. `max_packet_size` is the
    /// largest MQTT packet the broker accepts (`broker.max_packet_size`):
    /// Kafka's record size limit must hold it.
    Uplinks { max_packet_size: u32 },
    /// Presence events, queue bounded by `kafka.presence.max_queued_events`.
    Presence,
    /// Downlink receipts, queue bounded by `kafka.downlink.max_queued_receipts`.
    Receipts,
}

const MESSAGE_MAX_BYTES: &str = "message.max.bytes";

/// Builds the librdkafka configuration of a producer, refusing pass-through
/// options that would override what Herald guarantees.
///
/// Every producer is idempotent with acks=all and takes
/// `kafka.producer_options`. The uplink producer's `message.max.bytes` is
/// `max_packet_size` + [`RECORD_MARGIN`] unless overridden, and an override
/// too small for the largest packet is refused. Presence and receipt
/// producers get their own bounded queue (`queue.buffering.max.messages`,
/// and 1 KiB per message for `queue.buffering.max.kbytes`), which
/// pass-through options cannot widen.
pub(crate) fn producer_config(
    config: &KafkaConfig,
    role: ProducerRole,
) -> Result<ClientConfig, BridgeError> {
    check_reserved(
        "kafka.producer_options",
        &config.producer_options,
        RESERVED_PRODUCER_OPTIONS,
    )?;
    let client_id = match role {
        ProducerRole::Uplinks { .. } => config.client_id.clone(),
        ProducerRole::Presence => format!("{}-presence", config.client_id),
        ProducerRole::Receipts => format!("{}-receipts", config.client_id),
    };
    let mut client = herald_kafka::clients::idempotent_producer(
        &config.bootstrap_servers,
        &client_id,
        config.delivery_timeout,
    );
    with_statistics(&mut client, config.statistics_interval);
    herald_kafka::clients::with_options(&mut client, &config.producer_options);
    let queue_bound = match role {
        ProducerRole::Uplinks { max_packet_size } => {
            let needed = u64::from(max_packet_size) + u64::from(RECORD_MARGIN);
            match config.producer_options.get(MESSAGE_MAX_BYTES) {
                None => {
                    client.set(MESSAGE_MAX_BYTES, needed.to_string());
                }
                Some(value) => {
                    let key = format!("kafka.producer_options.\"{MESSAGE_MAX_BYTES}\"");
                    let given: u64 = value.trim().parse().map_err(|_| BridgeError::Config {
                        key: key.clone(),
                        reason: format!("{value:?} is not a number of bytes"),
                    })?;
                    if given < needed {
                        return Err(BridgeError::Config {
                            key,
                            reason: format!(
                                "{given} bytes cannot hold the largest uplink Herald accepts: \
                                 broker.max_packet_size is {max_packet_size} bytes, and a Kafka \
                                 record needs up to {RECORD_MARGIN} more for its key, headers and \
                                 framing; set it to at least {needed}, lower broker.max_packet_size, \
                                 or leave it out (Herald then sets {needed})"
                            ),
                        });
                    }
                }
            }
            None
        }
        ProducerRole::Presence => Some(config.presence.max_queued_events),
        ProducerRole::Receipts => Some(config.downlink.max_queued_receipts),
    };
    if let Some(messages) = queue_bound {
        let messages = messages.clamp(1, i32::MAX as usize);
        client
            .set("queue.buffering.max.messages", messages.to_string())
            .set("queue.buffering.max.kbytes", messages.to_string());
    }
    Ok(client)
}

/// Creates the producer for `role`.
pub(crate) fn create_producer(
    config: &KafkaConfig,
    role: ProducerRole,
    stats: &KafkaStatsMetrics,
) -> Result<HeraldProducer, BridgeError> {
    let label = match role {
        ProducerRole::Uplinks { .. } => "uplinks",
        ProducerRole::Presence => "presence",
        ProducerRole::Receipts => "receipts",
    };
    let context = StatsContext::new(stats.clone(), label);
    Ok(producer_config(config, role)?.create_with_context(context)?)
}

/// Waits up to `timeout` for records still queued in `producer`.
pub(crate) fn flush(producer: &HeraldProducer, what: &str, timeout: Duration) {
    if let Err(error) = producer.flush(timeout) {
        tracing::warn!(%error, "Kafka {what} producer did not flush every record before shutdown");
    }
}

/// Flushes one of Herald's producers at shutdown.
#[derive(Clone)]
pub struct Flusher {
    producer: HeraldProducer,
    what: &'static str,
}

impl Flusher {
    pub(crate) fn new(producer: HeraldProducer, what: &'static str) -> Self {
        Self { producer, what }
    }

    /// Waits up to `timeout` for records still queued (blocking).
    pub fn flush(&self, timeout: Duration) {
        flush(&self.producer, self.what, timeout);
    }
}

/// Lets a log line through at most once per interval, counting the others.
pub(crate) struct LogLimiter {
    interval_ms: i64,
    next_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as i64,
            next_ms: AtomicI64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when this line may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = crate::presence::now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Whether Kafka refused a record for good, and why; `None` for errors
/// worth retrying (timeouts, unreachable or overloaded brokers, a full
/// queue, leadership changes, ...).
pub(crate) fn permanent(error: &KafkaError) -> Option<Rejection> {
    let KafkaError::MessageProduction(code) = error else {
        return None;
    };
    use RDKafkaErrorCode as C;
    match code {
        // Broker code 10 (the topic's max.message.bytes), also librdkafka's
        // local check against message.max.bytes; 18: RecordListTooLarge.
        C::MessageSizeTooLarge | C::MessageBatchTooLarge => Some(Rejection::TooLarge),
        // 2: CorruptMessage; 87: InvalidRecord; local: bad message format.
        C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidRequiredAcks
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::BadMessage => Some(Rejection::Invalid),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => {
            Some(Rejection::NotAuthorized)
        }
        _ => None,
    }
}

/// The error the broker gets for a transient refusal: the PUBACK is withheld.
fn transient(error: KafkaError) -> UplinkError {
    match error {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => {
            UplinkError::Timeout(error.to_string())
        }
        other => UplinkError::Failed(other.to_string()),
    }
}

/// How one produce attempt ended, when it did not succeed.
enum Refused {
    /// librdkafka refused to queue the record.
    Locally(KafkaError),
    /// The record was sent and failed (or timed out).
    OnDelivery(KafkaError),
    /// The producer went away before an answer.
    ShutDown,
}

async fn settled(sent: Result<DeliveryFuture, KafkaError>) -> Result<(), Refused> {
    match sent {
        Err(error) => Err(Refused::Locally(error)),
        Ok(delivery) => match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _message))) => Err(Refused::OnDelivery(error)),
            Err(_canceled) => Err(Refused::ShutDown),
        },
    }
}

fn millis_since_epoch(uplink: &Uplink) -> i64 {
    uplink
        .received_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The device's trace context: its first `traceparent` user property when
/// that is valid W3C Trace Context (§3.2), with its first `tracestate`.
/// Returns the context and the positions of the user properties it took.
fn uplink_trace(uplink: &Uplink) -> Option<(TraceContext, [Option<usize>; 2])> {
    let position = |name: &str| {
        uplink
            .user_properties
            .iter()
            .position(|(key, _)| key == name)
    };
    let parent = position(header::TRACEPARENT)?;
    let state = position(header::TRACESTATE);
    let tracestate = state.map(|i| uplink.user_properties[i].1.as_bytes());
    match TraceContext::parse(uplink.user_properties[parent].1.as_bytes(), tracestate) {
        Ok(context) => {
            // An invalid tracestate is not taken: it stays a user property.
            let state = state.filter(|_| context.tracestate().is_some());
            Some((context, [Some(parent), state]))
        }
        Err(error) => {
            tracing::debug!(
                device_id = %uplink.client_id, %error,
                "traceparent user property is not W3C trace context; kept as a plain user property"
            );
            None
        }
    }
}

/// The Kafka headers of `uplink`, in this order:
///
/// 1. Herald's own (device id, topic, QoS, reception time, message id,
///    DUP), always.
/// 2. The device's trace context as `traceparent` (and `tracestate`), when
///    its `traceparent` user property is valid (see [`uplink_trace`]).
///    Always too: it is bounded (under 1 KiB) and is what finds a record,
///    dead letters included, in a trace. Written once, under the W3C names
///    readers of Kafka's trace context look for, not again as
///    `mqtt-user-traceparent`; an invalid one stays a plain user property.
/// 3. The MQTT 5 properties Herald passes through, as sent: Content Type,
///    Response Topic, Correlation Data (raw bytes), then the user
///    properties as `mqtt-user-<name>` in the device's order. Their names
///    and values count against `property_budget`: the first one that does
///    not fit ends the list, so what is written is always a prefix of it,
///    in order. Uplink records pass no limit (the MQTT packet bounded these
///    and a record holds the largest packet); a dead letter passes
///    `kafka.dead_letter_max_payload`.
fn uplink_headers(uplink: &Uplink, property_budget: usize) -> OwnedHeaders {
    let qos = uplink.qos.to_string();
    let received = millis_since_epoch(uplink).to_string();
    let message_id = message_id(&uplink.client_id, &uplink.topic, &uplink.payload);
    let dup: &[u8] = if uplink.dup { b"1" } else { b"0" };
    let mut headers = OwnedHeaders::new_with_capacity(13 + uplink.user_properties.len())
        .insert(Header {
            key: header::DEVICE_ID,
            value: Some(uplink.client_id.as_bytes()),
        })
        .insert(Header {
            key: header::MQTT_TOPIC,
            value: Some(uplink.topic.as_bytes()),
        })
        .insert(Header {
            key: header::QOS,
            value: Some(qos.as_bytes()),
        })
        .insert(Header {
            key: header::RECEIVED_AT,
            value: Some(received.as_bytes()),
        })
        .insert(Header {
            key: header::MESSAGE_ID,
            value: Some(message_id.as_bytes()),
        })
        .insert(Header {
            key: header::DUP,
            value: Some(dup),
        });
    let (trace, taken) = match uplink_trace(uplink) {
        Some((trace, taken)) => (Some(trace), taken),
        None => (None, [None; 2]),
    };
    for (key, value) in trace.iter().flat_map(TraceContext::pairs) {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let properties = [
        (
            header::CONTENT_TYPE,
            uplink.content_type.as_deref().map(str::as_bytes),
        ),
        (
            header::RESPONSE_TOPIC,
            uplink.response_topic.as_deref().map(str::as_bytes),
        ),
        (header::CORRELATION_DATA, uplink.correlation_data.as_deref()),
    ];
    let mut used = 0usize;
    let mut fits = |key: &str, value: &[u8]| {
        used = used.saturating_add(key.len() + value.len());
        used <= property_budget
    };
    for (key, value) in properties {
        let Some(value) = value else { continue };
        if !fits(key, value) {
            return headers;
        }
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    for (i, (name, value)) in uplink.user_properties.iter().enumerate() {
        if taken.contains(&Some(i)) {
            continue;
        }
        let key = format!("{}{name}", header::USER_PROPERTY_PREFIX);
        if !fits(&key, value.as_bytes()) {
            break;
        }
        headers = headers.insert(Header {
            key: &key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// First and longest pause before an uplink is produced again after a
/// transient failure.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Produces device uplinks to Kafka.
pub struct KafkaUplinkSink {
    inner: Arc<Inner>,
}

struct Inner {
    producer: HeraldProducer,
    rules: TopicRules,
    dead_letter_topic: String,
    dead_letter_max_payload: usize,
    produce_latency: Histogram,
    produced: IntCounterVec,
    dead_letters: IntCounterVec,
    dead_letter_log: LogLimiter,
    retries: IntCounterVec,
    retry_log: LogLimiter,
}

impl KafkaUplinkSink {
    /// `max_packet_size` is `broker.max_packet_size`: the producer's record
    /// size limit is set (or checked) to hold the largest packet.
    pub fn new(
        config: &KafkaConfig,
        max_packet_size: u32,
        stats: &KafkaStatsMetrics,
        registry: &Registry,
    ) -> Result<Self, BridgeError> {
        let rules = TopicRules::compile(&config.uplink_rules)?;
        let producer = create_producer(config, ProducerRole::Uplinks { max_packet_size }, stats)?;
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "herald_kafka_produce_duration_seconds",
                "Time from handing an uplink to the Kafka producer to Kafka's acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let produced = IntCounterVec::new(
            Opts::new(
                "herald_kafka_produced_total",
                "Uplink records produced to Kafka, by Kafka topic and result.",
            ),
            &["topic", "result"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "herald_kafka_dead_letters_total",
                "Uplinks Kafka refused for good, written to the dead-letter topic, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(produce_latency.clone()))?;
        registry.register(Box::new(produced.clone()))?;
        let retries = IntCounterVec::new(
            Opts::new(
                "herald_kafka_produce_retries_total",
                "Uplinks produced again after a transient Kafka failure (the PUBACK still withheld), by Kafka topic.",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                producer,
                rules,
                dead_letter_topic: config.dead_letter_topic.clone(),
                dead_letter_max_payload: config.dead_letter_max_payload,
                produce_latency,
                produced,
                dead_letters,
                dead_letter_log: LogLimiter::new(Duration::from_secs(10)),
                retries,
                retry_log: LogLimiter::new(Duration::from_secs(10)),
            }),
        })
    }

    /// Waits up to `timeout` for records still queued in the producer.
    pub fn flush(&self, timeout: Duration) {
        flush(&self.inner.producer, "uplink", timeout);
    }

    /// The producer, for components that share its connection (health checks).
    pub fn producer(&self) -> &HeraldProducer {
        &self.inner.producer
    }
}

impl Inner {
    /// Queues `uplink` for `kafka_topic`.
    fn send(&self, uplink: &Uplink, kafka_topic: &str) -> Result<DeliveryFuture, KafkaError> {
        let record = FutureRecord::to(kafka_topic)
            .key(uplink.client_id.as_bytes())
            .payload(&uplink.payload[..])
            .timestamp(millis_since_epoch(uplink))
            .headers(uplink_headers(uplink, usize::MAX));
        self.producer
            .send_result(record)
            .map_err(|(error, _record)| error)
    }

    /// Waits for the first attempt; a transient refusal (Kafka down, slow,
    /// or its queue full) is produced again with backoff for as long as the
    /// device stays connected, the PUBACK withheld meanwhile: a Kafka outage
    /// never closes a device's connection by itself. A permanent refusal is
    /// dead-lettered.
    async fn deliver(
        &self,
        uplink: &Uplink,
        kafka_topic: &str,
        first: Result<DeliveryFuture, KafkaError>,
    ) -> Result<(), UplinkError> {
        let mut attempt = first;
        let mut backoff = RETRY_BACKOFF_MIN;
        let (mut error, on_delivery) = loop {
            let (error, on_delivery) = match settled(attempt).await {
                Ok(()) => return Ok(()),
                Err(Refused::ShutDown) => {
                    return Err(UplinkError::Failed("producer shut down".into()))
                }
                Err(Refused::Locally(error)) => (error, false),
                Err(Refused::OnDelivery(error)) => (error, true),
            };
            if permanent(&error).is_some() {
                break (error, on_delivery);
            }
            self.retries.with_label_values(&[kafka_topic]).inc();
            if let Some(suppressed) = self.retry_log.allow() {
                tracing::warn!(
                    device_id = %uplink.client_id, kafka_topic, %error, suppressed,
                    "uplink not in Kafka yet; producing it again (PUBACK withheld)"
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            attempt = self.send(uplink, kafka_topic);
        };
        let Some(mut kind) = permanent(&error) else {
            return Err(transient(error));
        };
        if kind == Rejection::TooLarge && on_delivery {
            // The broker judges a whole batch: a small record batched with
            // a too-large one is refused with it. Alone, it gets through.
            match settled(self.send(uplink, kafka_topic)).await {
                Ok(()) => return Ok(()),
                Err(Refused::ShutDown) => {
                    return Err(UplinkError::Failed("producer shut down".into()))
                }
                Err(Refused::Locally(again) | Refused::OnDelivery(again)) => error = again,
            }
            kind = match permanent(&error) {
                Some(kind) => kind,
                None => return Err(transient(error)),
            };
        }
        self.dead_letter(uplink, kafka_topic, kind, &error).await
    }

    /// Writes `uplink` to the dead-letter topic. Only once Kafka has it is
    /// the uplink reported rejected; otherwise the refusal is transient.
    async fn dead_letter(
        &self,
        uplink: &Uplink,
        kafka_topic: &str,
        kind: Rejection,
        error: &KafkaError,
    ) -> Result<(), UplinkError> {
        let reason = error.to_string();
        let size = uplink.payload.len().to_string();
        let kept = uplink.payload.len().min(self.dead_letter_max_payload);
        let headers = uplink_headers(uplink, self.dead_letter_max_payload)
            .insert(Header {
                key: header::DEAD_LETTER_REASON,
                value: Some(reason.as_bytes()),
            })
            .insert(Header {
                key: header::DEAD_LETTER_KIND,
                value: Some(kind.as_label().as_bytes()),
            })
            .insert(Header {
                key: header::KAFKA_TOPIC,
                value: Some(kafka_topic.as_bytes()),
            })
            .insert(Header {
                key: header::ORIGINAL_SIZE,
                value: Some(size.as_bytes()),
            });
        let record = FutureRecord::to(&self.dead_letter_topic)
            .key(uplink.client_id.as_bytes())
            .payload(&uplink.payload[..kept])
            .timestamp(millis_since_epoch(uplink))
            .headers(headers);
        let sent = self
            .producer
            .send_result(record)
            .map_err(|(error, _record)| error);
        let written = settled(sent).await;
        let result = if written.is_ok() { "ok" } else { "error" };
        self.produced
            .with_label_values(&[&self.dead_letter_topic, result])
            .inc();
        match written {
            Ok(()) => {
                self.dead_letters
                    .with_label_values(&[kind.as_label()])
                    .inc();
                if let Some(suppressed) = self.dead_letter_log.allow() {
                    tracing::warn!(
                        device_id = %uplink.client_id, mqtt_topic = %uplink.topic, kafka_topic,
                        size = uplink.payload.len(), %reason, dead_letter_topic = %self.dead_letter_topic,
                        suppressed, "Kafka refused an uplink for good; kept it in the dead-letter topic"
                    );
                } else {
                    tracing::debug!(
                        device_id = %uplink.client_id, mqtt_topic = %uplink.topic, kafka_topic,
                        size = uplink.payload.len(), %reason, "uplink dead-lettered"
                    );
                }
                Err(UplinkError::Rejected { kind, reason })
            }
            Err(refused) => {
                let why = match refused {
                    Refused::Locally(e) | Refused::OnDelivery(e) => e.to_string(),
                    Refused::ShutDown => "producer shut down".into(),
                };
                Err(UplinkError::Failed(format!(
                    "Kafka refused the uplink for good ({reason}) and the dead letter \
                     was not written to {}: {why}",
                    self.dead_letter_topic
                )))
            }
        }
    }
}

impl UplinkSink for KafkaUplinkSink {
    fn wants(&self, topic: &str) -> bool {
        self.inner.rules.kafka_topic(topic).is_some()
    }

    fn submit(&self, uplink: Uplink) -> Option<UplinkAck> {
        let kafka_topic = self.inner.rules.kafka_topic(&uplink.topic)?;
        let started = Instant::now();
        // Queued now, in the order the device published; only the wait is deferred.
        let first = self.inner.send(&uplink, &kafka_topic);
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            let result = inner.deliver(&uplink, &kafka_topic, first).await;
            inner
                .produce_latency
                .observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(()) => "ok",
                Err(UplinkError::Timeout(_)) => "timeout",
                Err(UplinkError::Failed(_)) => "error",
                Err(UplinkError::Rejected { .. }) => "rejected",
            };
            inner
                .produced
                .with_label_values(&[&kafka_topic, outcome])
                .inc();
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPLINKS: ProducerRole = ProducerRole::Uplinks {
        max_packet_size: 1024 * 1024,
    };

    #[test]
    fn reserved_options_are_refused_with_the_key_to_use() {
        let mut config = KafkaConfig::default();
        config.producer_options.insert("acks".into(), "1".into());
        let err = producer_config(&config, UPLINKS).unwrap_err().to_string();
        assert!(
            err.contains("kafka.producer_options.\"acks\"") && err.contains("acks=all"),
            "{err}"
        );
        config.producer_options.clear();
        config
            .producer_options
            .insert("compression.type".into(), "lz4".into());
        let client = producer_config(&config, UPLINKS).unwrap();
        assert_eq!(client.get("compression.type"), Some("lz4"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("message.timeout.ms"), Some("30000"));
        assert_eq!(client.get("socket.nagle.disable"), Some("true"));
    }

    #[test]
    fn the_uplink_record_limit_holds_the_largest_packet() {
        let mut config = KafkaConfig::default();
        let client = producer_config(&config, UPLINKS).unwrap();
        assert_eq!(client.get("message.max.bytes"), Some("1114112"));
        // librdkafka takes it (batch.size stays at its default below it).
        let _producer: FutureProducer = client.create().unwrap();

        config
            .producer_options
            .insert("message.max.bytes".into(), "2000000".into());
        let client = producer_config(&config, UPLINKS).unwrap();
        assert_eq!(client.get("message.max.bytes"), Some("2000000"));

        // librdkafka's own default, too small for a 1 MiB packet.
        config
            .producer_options
            .insert("message.max.bytes".into(), "1000000".into());
        let err = producer_config(&config, UPLINKS).unwrap_err().to_string();
        assert!(
            err.contains("kafka.producer_options.\"message.max.bytes\"")
                && err.contains("broker.max_packet_size")
                && err.contains("1114112"),
            "{err}"
        );
        let small = ProducerRole::Uplinks {
            max_packet_size: 900_000,
        };
        assert!(producer_config(&config, small).is_ok());

        config
            .producer_options
            .insert("message.max.bytes".into(), "1MB".into());
        let err = producer_config(&config, UPLINKS).unwrap_err().to_string();
        assert!(err.contains("not a number"), "{err}");
    }

    #[test]
    fn presence_and_receipts_have_their_own_bounded_queues() {
        let mut config = KafkaConfig::default();
        config.presence.max_queued_events = 500;
        config.downlink.max_queued_receipts = 700;
        // A pass-through bound for the uplinks cannot unbound the others.
        config
            .producer_options
            .insert("queue.buffering.max.messages".into(), "1000000".into());
        config
            .producer_options
            .insert("security.protocol".into(), "plaintext".into());
        let uplinks = producer_config(&config, UPLINKS).unwrap();
        assert_eq!(uplinks.get("client.id"), Some("herald"));
        assert_eq!(uplinks.get("queue.buffering.max.messages"), Some("1000000"));
        let presence = producer_config(&config, ProducerRole::Presence).unwrap();
        assert_eq!(presence.get("client.id"), Some("herald-presence"));
        assert_eq!(presence.get("queue.buffering.max.messages"), Some("500"));
        assert_eq!(presence.get("queue.buffering.max.kbytes"), Some("500"));
        assert_eq!(presence.get("security.protocol"), Some("plaintext"));
        assert_eq!(presence.get("enable.idempotence"), Some("true"));
        assert_eq!(presence.get("message.max.bytes"), None);
        let receipts = producer_config(&config, ProducerRole::Receipts).unwrap();
        assert_eq!(receipts.get("client.id"), Some("herald-receipts"));
        assert_eq!(receipts.get("queue.buffering.max.messages"), Some("700"));
        assert_eq!(receipts.get("acks"), Some("all"));
        for client in [presence, receipts] {
            let _producer: FutureProducer = client.create().unwrap();
        }
    }

    #[test]
    fn kafka_errors_are_sorted_into_transient_and_permanent() {
        use RDKafkaErrorCode as C;
        let production = KafkaError::MessageProduction;
        for (code, expected) in [
            (C::MessageSizeTooLarge, Some(Rejection::TooLarge)),
            (C::MessageBatchTooLarge, Some(Rejection::TooLarge)),
            (C::InvalidMessage, Some(Rejection::Invalid)),
            (C::InvalidRecord, Some(Rejection::Invalid)),
            (C::InvalidRequiredAcks, Some(Rejection::Invalid)),
            (C::BadMessage, Some(Rejection::Invalid)),
            (C::TopicAuthorizationFailed, Some(Rejection::NotAuthorized)),
            (
                C::ClusterAuthorizationFailed,
                Some(Rejection::NotAuthorized),
            ),
            (C::MessageTimedOut, None),
            (C::QueueFull, None),
            (C::NotEnoughReplicas, None),
            (C::NotLeaderForPartition, None),
            (C::UnknownTopicOrPartition, None),
            (C::BrokerTransportFailure, None),
            (C::AllBrokersDown, None),
            (C::RequestTimedOut, None),
        ] {
            assert_eq!(permanent(&production(code)), expected, "{code:?}");
        }
        assert_eq!(permanent(&KafkaError::Canceled), None);
        assert!(matches!(
            transient(production(C::MessageTimedOut)),
            UplinkError::Timeout(_)
        ));
        assert!(matches!(
            transient(production(C::NotEnoughReplicas)),
            UplinkError::Failed(_)
        ));
    }

    #[test]
    fn user_properties_stay_within_the_budget() {
        use rdkafka::message::Headers as _;
        let uplink = Uplink {
            client_id: "d".into(),
            topic: "devices/d/up/scan".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 1,
            retain: false,
            dup: false,
            received_at: std::time::SystemTime::now(),
            user_properties: vec![("a".into(), "1".repeat(100)), ("b".into(), "2".into())],
            content_type: None,
            response_topic: None,
            correlation_data: None,
        };
        assert_eq!(uplink_headers(&uplink, usize::MAX).count(), 8);
        assert_eq!(uplink_headers(&uplink, 120).count(), 7);
        // Herald's own six headers whatever the budget.
        assert_eq!(uplink_headers(&uplink, 10).count(), 6);
        assert_eq!(uplink_headers(&uplink, 0).count(), 6);
    }

    /// Every header after Herald's own six, as (name, value bytes).
    fn passed_through(headers: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
        use rdkafka::message::Headers as _;
        headers
            .iter()
            .skip(6)
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect()
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn mqtt5_uplink(user_properties: &[(&str, &str)]) -> Uplink {
        Uplink {
            client_id: "scanbox-1".into(),
            topic: "devices/scanbox-1/up/scan".into(),
            payload: bytes::Bytes::from_static(b"scan"),
            qos: 1,
            retain: false,
            dup: false,
            received_at: std::time::SystemTime::now(),
            user_properties: user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            content_type: Some("application/x-protobuf".into()),
            response_topic: Some("devices/scanbox-1/down/reply".into()),
            // Correlation Data is binary: not even UTF-8.
            correlation_data: Some(bytes::Bytes::from_static(&[0x00, 0xff, 0x10, 0x80])),
        }
    }

    fn pair(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_owned(), value.to_vec())
    }

    /// [MQTT-3.3.2-15]/[MQTT-3.3.2-16] (Response Topic, Correlation Data),
    /// [MQTT-3.3.2-20] (Content Type) and [MQTT-3.3.2-17]/[MQTT-3.3.2-18]
    /// (user properties, in order) say what a server forwards unaltered:
    /// here into Kafka headers, byte for byte; a valid `traceparent` (W3C
    /// Trace Context §3.2) under its own name, once.
    #[test]
    fn mqtt5_properties_become_headers_byte_exact() {
        let uplink = mqtt5_uplink(&[
            ("shop", "7"),
            ("traceparent", TRACEPARENT),
            ("k", "first"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("k", "second"),
        ]);
        assert_eq!(
            passed_through(&uplink_headers(&uplink, usize::MAX)),
            [
                pair("traceparent", TRACEPARENT.as_bytes()),
                pair("tracestate", b"rojo=00f067aa0ba902b7"),
                pair("mqtt-content-type", b"application/x-protobuf"),
                pair("mqtt-response-topic", b"devices/scanbox-1/down/reply"),
                pair("mqtt-correlation-data", &[0x00, 0xff, 0x10, 0x80]),
                pair("mqtt-user-shop", b"7"),
                pair("mqtt-user-k", b"first"),
                pair("mqtt-user-k", b"second"),
            ]
        );
        let plain = Uplink {
            content_type: None,
            response_topic: None,
            correlation_data: None,
            ..mqtt5_uplink(&[])
        };
        assert!(passed_through(&uplink_headers(&plain, usize::MAX)).is_empty());
    }

    #[test]
    fn an_invalid_trace_context_stays_a_plain_user_property() {
        let uplink = Uplink {
            content_type: None,
            response_topic: None,
            correlation_data: None,
            ..mqtt5_uplink(&[("traceparent", "00-abc-01"), ("tracestate", "rojo=1")])
        };
        assert_eq!(
            passed_through(&uplink_headers(&uplink, usize::MAX)),
            [
                pair("mqtt-user-traceparent", b"00-abc-01"),
                pair("mqtt-user-tracestate", b"rojo=1"),
            ]
        );
        // A valid traceparent with an invalid tracestate: only the former moves.
        let uplink = Uplink {
            user_properties: vec![
                ("tracestate".into(), "no list".into()),
                ("traceparent".into(), TRACEPARENT.into()),
            ],
            ..uplink
        };
        assert_eq!(
            passed_through(&uplink_headers(&uplink, usize::MAX)),
            [
                pair("traceparent", TRACEPARENT.as_bytes()),
                pair("mqtt-user-tracestate", b"no list"),
            ]
        );
    }

    /// The budget (a dead letter's) covers the passed-through properties,
    /// in order, not Herald's headers nor the (bounded) trace context.
    #[test]
    fn the_budget_limits_properties_not_the_trace_context() {
        let uplink = mqtt5_uplink(&[("traceparent", TRACEPARENT), ("shop", "7")]);
        let names = |budget| {
            passed_through(&uplink_headers(&uplink, budget))
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["traceparent"]);
        let content_type = "mqtt-content-type".len() + "application/x-protobuf".len();
        assert_eq!(names(content_type), ["traceparent", "mqtt-content-type"]);
        let all = content_type
            + "mqtt-response-topic".len()
            + "devices/scanbox-1/down/reply".len()
            + "mqtt-correlation-data".len()
            + 4
            + "mqtt-user-shop".len()
            + 1;
        assert_eq!(names(all).len(), 5);
        assert_eq!(
            names(all - 1).len(),
            4,
            "the last user property no longer fits"
        );
    }

    fn header_value<'a>(headers: &'a OwnedHeaders, name: &str) -> Option<&'a str> {
        use rdkafka::message::Headers as _;
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    #[test]
    fn a_retransmission_keeps_its_message_id_and_is_marked_dup() {
        let first = Uplink {
            client_id: "scanbox-1".into(),
            topic: "devices/scanbox-1/up/scan".into(),
            payload: bytes::Bytes::from_static(b"scan s-1"),
            qos: 1,
            retain: false,
            dup: false,
            received_at: std::time::SystemTime::now(),
            user_properties: Vec::new(),
            content_type: None,
            response_topic: None,
            correlation_data: None,
        };
        let resent = Uplink {
            dup: true,
            received_at: first.received_at + Duration::from_secs(30),
            ..first.clone()
        };
        let other = Uplink {
            payload: bytes::Bytes::from_static(b"scan s-2"),
            ..first.clone()
        };
        let (first, resent, other) = (
            uplink_headers(&first, usize::MAX),
            uplink_headers(&resent, usize::MAX),
            uplink_headers(&other, usize::MAX),
        );
        let id = header_value(&first, header::MESSAGE_ID).unwrap();
        assert!(id.starts_with("scanbox-1:") && id.len() == "scanbox-1:".len() + 32);
        assert_eq!(header_value(&resent, header::MESSAGE_ID), Some(id));
        assert_ne!(header_value(&other, header::MESSAGE_ID), Some(id));
        assert_eq!(header_value(&first, header::DUP), Some("0"));
        assert_eq!(header_value(&resent, header::DUP), Some("1"));
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_interval() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
    }
}
