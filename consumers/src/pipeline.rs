//! The consume → process → produce loop every service shares.
//!
//! A record's outputs (and, for a record that cannot be processed, its
//! dead-letter record) are produced with an idempotent producer; the record's
//! offset is stored for commit only once Kafka acknowledged all of them, in
//! consumption order. A failed produce is retried, never skipped, so a crash
//! at any point reprocesses instead of losing: at least once.
//!
//! Before a record is processed, its identity ([`Processor::dedup_key`]) is
//! checked against the instance's window of ids seen ([`SeenWindow`]): a
//! duplicate is dropped unprocessed (its offset still committed in order) and
//! counted in `herald_consumer_duplicates_dropped_total`.
//!
//! Every output of a record, its dead letter included, carries the record's
//! W3C trace context (`traceparent`, `tracestate` headers) when it has a
//! valid one ([`Input::trace_context`]): a payment's trace runs on through
//! the service, whichever service it is, without the processors knowing.
//!
//! The service's consumer and producer report librdkafka's statistics every
//! `kafka.statistics_interval` as the `herald_kafka_*` metrics
//! (`herald_kafka::stats`), labelled `client="<service>-consumer"` and
//! `"<service>-producer"`.

use crate::config::{DedupConfig, KafkaSettings};
use crate::dedup::SeenWindow;
use futures::stream::{FuturesOrdered, StreamExt};
use herald_kafka::stats::{with_statistics, KafkaStatsMetrics, StatsContext};
use herald_schemas::trace::{InvalidTraceparent, TraceContext};
use herald_schemas::v1::DeadLetter;
use herald_schemas::Message as _;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

/// What a processor made of one input record.
#[derive(Debug)]
pub enum Verdict {
    /// Produce these (possibly none).
    Emit(Vec<Output>),
    /// Cannot be processed: dead-letter it with `error`, and produce `also`
    /// (e.g. a message telling the device). `reason` is a short stable label
    /// for the `herald_consumer_rejected_total` metric, e.g. `missing_scan_id`.
    Reject {
        reason: &'static str,
        error: String,
        also: Vec<Output>,
    },
}

/// One consumed record, as processors see it.
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    message: &'a OwnedMessage,
}

impl<'a> Input<'a> {
    /// The input view of a consumed record.
    pub fn new(message: &'a OwnedMessage) -> Self {
        Input {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().unwrap_or_default(),
            payload: message.payload().unwrap_or_default(),
            message,
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let headers = self.message.headers()?;
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The record's W3C trace context (its last `traceparent` and
    /// `tracestate` headers): `None` without a `traceparent`, an error for
    /// one that is not valid (W3C Trace Context §3.2), which is not passed on.
    pub fn trace_context(&self) -> Option<Result<TraceContext, InvalidTraceparent>> {
        let headers = self.message.headers()?;
        TraceContext::from_headers(headers.iter().map(|h| (h.key, h.value)))
    }

    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key).into_owned()
    }
}

/// A stateless service.
pub trait Processor: Send + Sync + 'static {
    /// Service name, for dead letters, metrics and logs.
    fn name(&self) -> &'static str;
    fn process(&self, input: &Input<'_>) -> Verdict;

    /// The identity two copies of the same input share: a record whose key
    /// the instance has seen within its dedup window is dropped unprocessed.
    /// `None`: never dropped (the default).
    fn dedup_key(&self, input: &Input<'_>) -> Option<String> {
        let _ = input;
        None
    }
}

/// librdkafka options the services set themselves, with why.
const RESERVED_OPTIONS: &[(&str, &str)] = &[
    ("bootstrap.servers", "use kafka.bootstrap_servers"),
    ("group.id", "use the service's group_id"),
    (
        "enable.auto.offset.store",
        "offsets are stored only once outputs are acknowledged",
    ),
    (
        "enable.auto.commit",
        "stored offsets are committed every second",
    ),
    (
        "enable.idempotence",
        "outputs are always produced idempotently",
    ),
    ("acks", "outputs always use acks=all"),
    ("request.required.acks", "outputs always use acks=all"),
    ("statistics.interval.ms", "use kafka.statistics_interval"),
];

/// Checks the pass-through options of `kafka`.
pub fn validate(kafka: &KafkaSettings) -> Result<(), PipelineError> {
    for (section, options) in [
        ("kafka.consumer_options", &kafka.consumer_options),
        ("kafka.producer_options", &kafka.producer_options),
    ] {
        herald_kafka::options::check_reserved(section, options, RESERVED_OPTIONS)?;
    }
    Ok(())
}

/// Errors starting a service.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Reserved(#[from] herald_kafka::options::ReservedOption),
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A record whose outputs are being produced; completes with its position
/// (topic, partition, offset) once Kafka acknowledged them all.
type Settling = Pin<Box<dyn Future<Output = (String, i32, i64)> + Send>>;

/// How long one attempt to produce an output may take
/// (`message.timeout.ms`; a failed output is retried, its input not committed).
const OUTPUT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `processor` over `inputs` as consumer group `group_id` until
/// `shutdown`, dropping duplicates within the `dedup` window.
pub async fn run(
    processor: Arc<dyn Processor>,
    kafka: &KafkaSettings,
    dedup: &DedupConfig,
    group_id: &str,
    inputs: &[&str],
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    validate(kafka)?;
    let service = processor.name();
    let statistics = KafkaStatsMetrics::register(registry)?;
    // The group id names the service's clients too (client.id in Kafka's
    // logs and quotas).
    let mut consumer_config =
        herald_kafka::clients::at_least_once_consumer(&kafka.bootstrap_servers, group_id, group_id);
    with_statistics(&mut consumer_config, kafka.statistics_interval);
    herald_kafka::clients::with_options(&mut consumer_config, &kafka.consumer_options);
    let consumer: StreamConsumer<StatsContext> = consumer_config.create_with_context(
        StatsContext::new(statistics.clone(), format!("{service}-consumer")),
    )?;
    consumer.subscribe(inputs)?;
    let mut producer_config = herald_kafka::clients::idempotent_producer(
        &kafka.bootstrap_servers,
        group_id,
        OUTPUT_DELIVERY_TIMEOUT,
    );
    with_statistics(&mut producer_config, kafka.statistics_interval);
    herald_kafka::clients::with_options(&mut producer_config, &kafka.producer_options);
    let producer: FutureProducer<StatsContext> = producer_config
        .create_with_context(StatsContext::new(statistics, format!("{service}-producer")))?;

    let records = IntCounterVec::new(
        Opts::new(
            "herald_consumer_records_total",
            "Input records handled, by service and result.",
        ),
        &["service", "result"],
    )?;
    let inflight = IntGauge::new(
        "herald_consumer_inflight",
        "Records whose outputs await Kafka's acknowledgement.",
    )?;
    let duplicates = IntCounterVec::new(
        Opts::new(
            "herald_consumer_duplicates_dropped_total",
            "Input records dropped unprocessed because their id was seen within the dedup window, by service.",
        ),
        &["service"],
    )?;
    let rejected = IntCounterVec::new(
        Opts::new(
            "herald_consumer_rejected_total",
            "Input records sent to the dead-letter topic, by service and reason.",
        ),
        &["service", "reason"],
    )?;
    registry.register(Box::new(records.clone()))?;
    registry.register(Box::new(inflight.clone()))?;
    registry.register(Box::new(duplicates.clone()))?;
    registry.register(Box::new(rejected.clone()))?;

    let mut seen = SeenWindow::new(dedup.window, dedup.max_entries);
    info!(service, ?inputs, group_id, dedup_window = ?dedup.window, dedup_max_entries = dedup.max_entries, "consuming");
    let mut pending: FuturesOrdered<Settling> = FuturesOrdered::new();
    let max_inflight = kafka.max_inflight.max(1);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((topic, partition, offset)) = pending.next(), if !pending.is_empty() => {
                inflight.dec();
                // Settled in consumption order: store the offset after it.
                let next = offset + 1;
                if let Err(error) = herald_kafka::watermark::store(&consumer, &topic, partition, next) {
                    tracing::debug!(%error, topic, partition, "offset not stored (partition revoked?)");
                }
                continue;
            }
            message = consumer.recv(), if pending.len() < max_inflight => message,
        };
        let message = match next {
            Ok(message) => message.detach(),
            Err(error) => {
                warn!(service, %error, "consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let input = Input::new(&message);
        let duplicate = !seen.is_disabled()
            && processor
                .dedup_key(&input)
                .is_some_and(|id| seen.check(&id, Instant::now()));
        let verdict = if duplicate {
            duplicates.with_label_values(&[service]).inc();
            tracing::debug!(
                service,
                topic = input.topic,
                partition = input.partition,
                offset = input.offset,
                "duplicate dropped"
            );
            // Nothing to produce; the offset is still stored in order below.
            None
        } else {
            Some(processor.process(&input))
        };
        let trace = match verdict.as_ref().and_then(|_| input.trace_context()) {
            Some(Ok(trace)) => Some(trace),
            Some(Err(error)) => {
                tracing::debug!(service, topic = input.topic, partition = input.partition, offset = input.offset, %error,
                    "traceparent header is not W3C trace context; not passed on");
                None
            }
            None => None,
        };
        let outputs = match verdict {
            None => Vec::new(),
            Some(Verdict::Emit(outputs)) => {
                records.with_label_values(&[service, "ok"]).inc();
                outputs
            }
            Some(Verdict::Reject {
                reason,
                error,
                mut also,
            }) => {
                records.with_label_values(&[service, "dead_letter"]).inc();
                rejected.with_label_values(&[service, reason]).inc();
                warn!(service, topic = input.topic, partition = input.partition, offset = input.offset, %error, "record sent to the dead-letter topic");
                let letter = DeadLetter {
                    service: service.into(),
                    source_topic: input.topic.into(),
                    source_partition: input.partition,
                    source_offset: input.offset,
                    key: input.key.to_vec(),
                    payload: input.payload.to_vec(),
                    error,
                    at_ms: now_ms(),
                };
                also.push(Output {
                    topic: kafka.dead_letter_topic.clone(),
                    key: input.key_str(),
                    payload: letter.encode_to_vec(),
                });
                also
            }
        };
        let position = (input.topic.to_string(), input.partition, input.offset);
        let (producer, shutdown) = (producer.clone(), shutdown.clone());
        inflight.inc();
        pending.push_back(Box::pin(async move {
            produce_all(&producer, &outputs, trace.as_ref(), &shutdown).await;
            position
        }));
    }
    // Offsets of records whose outputs are acknowledged are stored; commit them.
    info!(service, "stopping; committing handled offsets");
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing consumed since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(error) => warn!(service, %error, "final offset commit failed"),
    }
    producer.flush(Duration::from_secs(5)).ok();
    Ok(())
}

/// The record to produce for `output`, with the input's `trace` context.
fn output_record<'a>(
    output: &'a Output,
    trace: Option<&TraceContext>,
) -> FutureRecord<'a, String, Vec<u8>> {
    let record = FutureRecord::to(&output.topic)
        .key(&output.key)
        .payload(&output.payload);
    match trace {
        None => record,
        Some(trace) => record.headers(trace.pairs().fold(
            OwnedHeaders::new_with_capacity(2),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )),
    }
}

/// Produces every output, retrying failures, until all are acknowledged or
/// shutdown (then the record stays uncommitted and is processed again).
async fn produce_all(
    producer: &FutureProducer<StatsContext>,
    outputs: &[Output],
    trace: Option<&TraceContext>,
    shutdown: &CancellationToken,
) {
    let mut remaining: Vec<&Output> = outputs.iter().collect();
    let mut backoff = Duration::from_millis(100);
    while !remaining.is_empty() {
        let deliveries: Vec<_> = remaining
            .iter()
            .map(|output| {
                producer
                    .send_result(output_record(output, trace))
                    .map_err(|(error, _)| error)
            })
            .collect();
        let mut failed = Vec::new();
        for (output, delivery) in remaining.into_iter().zip(deliveries) {
            let ok = match delivery {
                Ok(delivery) => matches!(delivery.await, Ok(Ok(_))),
                Err(_) => false,
            };
            if !ok {
                failed.push(output);
            }
        }
        if failed.is_empty() {
            return;
        }
        warn!(
            failed = failed.len(),
            "outputs not acknowledged by Kafka; retrying"
        );
        remaining = failed;
        tokio::select! {
            _ = shutdown.cancelled() => std::future::pending::<()>().await,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn record_with(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"payload".to_vec()),
            Some(b"spk-1".to_vec()),
            "herald.payments".into(),
            Timestamp::NotAvailable,
            0,
            1,
            Some(headers),
        )
    }

    fn header_values(record: &FutureRecord<'_, String, Vec<u8>>) -> Vec<(String, String)> {
        record
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .map(|h| {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                (h.key.to_owned(), value)
            })
            .collect()
    }

    /// W3C Trace Context §3.2: a valid `traceparent` on the input is on
    /// every output, unchanged, with its `tracestate`.
    #[test]
    fn outputs_carry_the_inputs_trace_context() {
        let message = record_with(
            OwnedHeaders::new()
                .insert(Header {
                    key: "herald-device-id",
                    value: Some("spk-1"),
                })
                .insert(Header {
                    key: "traceparent",
                    value: Some(TRACEPARENT),
                })
                .insert(Header {
                    key: "tracestate",
                    value: Some("herald=1"),
                }),
        );
        let trace = Input::new(&message).trace_context().unwrap().unwrap();
        let output = Output {
            topic: "herald.downlink".into(),
            key: "spk-1".into(),
            payload: b"command".to_vec(),
        };
        let record = output_record(&output, Some(&trace));
        assert_eq!(
            header_values(&record),
            [
                ("traceparent".to_string(), TRACEPARENT.to_string()),
                ("tracestate".to_string(), "herald=1".to_string())
            ]
        );
        assert_eq!(
            (record.key, record.payload),
            (Some(&output.key), Some(&output.payload))
        );
        assert!(output_record(&output, None).headers.is_none());
    }

    #[test]
    fn an_invalid_traceparent_is_not_passed_on() {
        let message = record_with(OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-not-a-trace-01"),
        }));
        assert!(matches!(
            Input::new(&message).trace_context(),
            Some(Err(InvalidTraceparent::Format))
        ));
        let message = record_with(OwnedHeaders::new());
        assert!(Input::new(&message).trace_context().is_none());
    }

    #[test]
    fn options_that_break_at_least_once_are_refused() {
        let mut kafka = KafkaSettings::default();
        assert!(validate(&kafka).is_ok());
        kafka
            .consumer_options
            .insert("enable.auto.offset.store".into(), "true".into());
        let error = validate(&kafka).unwrap_err().to_string();
        assert!(
            error.contains("kafka.consumer_options.\"enable.auto.offset.store\""),
            "{error}"
        );
        kafka.consumer_options.clear();
        kafka.producer_options.insert("acks".into(), "1".into());
        assert!(validate(&kafka).is_err());
        kafka.producer_options.clear();
        kafka
            .producer_options
            .insert("statistics.interval.ms".into(), "1000".into());
        let error = validate(&kafka).unwrap_err().to_string();
        assert!(error.contains("kafka.statistics_interval"), "{error}");
    }
}
