//! librdkafka's statistics as Prometheus metrics: [`KafkaStatsMetrics`] is
//! registered once per registry, and each Kafka client gets a
//! [`StatsContext`] naming it (label `client`), which updates the metrics
//! whenever librdkafka reports (`statistics.interval.ms`, see
//! [`with_statistics`]).
//!
//! Exported (all labelled `client`; gauges unless noted):
//!
//! - `herald_kafka_client_queue_messages`, `herald_kafka_client_queue_bytes`,
//!   `herald_kafka_client_queue_max_messages`: a producer's queue (messages
//!   not yet acknowledged by Kafka, `msg_cnt` / `msg_size`) and its limit
//!   (`msg_max`); producers only;
//! - `herald_kafka_client_tx_bytes_total`, `herald_kafka_client_rx_bytes_total`
//!   (counters): bytes sent to and received from the brokers. librdkafka
//!   reports running totals; each report adds its increase over the previous
//!   one, so they are true counters (reset only when the process restarts);
//! - `herald_kafka_broker_rtt_seconds{broker, quantile="0.5"|"0.99"}`: request
//!   round trips over the last interval (NaN when there was none, as in a
//!   summary). A consumer's fetches wait at the broker for data up to
//!   `fetch.wait.max.ms`, which its RTT includes;
//! - `herald_kafka_broker_int_latency_seconds{broker, quantile}`: producers:
//!   how long records waited in the producer's queue before going into a
//!   request to that broker (`linger.ms` included);
//! - `herald_kafka_broker_outbuf_latency_seconds{broker, quantile}`: how long
//!   requests waited to be sent (a full in-flight window, a busy connection).
//!   With the round trip these three split a produce's time;
//! - `herald_kafka_broker_outbuf_requests{broker}`: requests waiting to be sent;
//! - `herald_kafka_broker_inflight_requests{broker}`: requests sent, awaiting
//!   the broker's response;
//! - `herald_kafka_consumer_lag_messages{topic, partition}`: consumers only,
//!   for each assigned partition: the high watermark minus the committed
//!   offset (what a restart would read again or for the first time).
//!   Partitions without a committed offset yet are left out.
//!
//! Label growth stays bounded: `broker` takes librdkafka's broker names (the
//! cluster's brokers and the logical `GroupCoordinator`), and a context
//! removes its series for brokers and partitions the latest report no longer
//! lists (a revoked partition's lag disappears), and all its series when its
//! client is dropped. Each client of a process needs its own `client` label.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::ConsumerContext;
use rdkafka::{ClientConfig, ClientContext, Statistics};
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A reasonable `statistics.interval.ms` for scraping every 15–60 s.
pub const DEFAULT_STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// librdkafka's largest `statistics.interval.ms` (one day).
const MAX_STATISTICS_INTERVAL_MS: u128 = 86_400_000;

/// Makes `client` report statistics every `interval` (zero: never).
pub fn with_statistics(client: &mut ClientConfig, interval: Duration) {
    let ms = if interval.is_zero() {
        0
    } else {
        interval.as_millis().clamp(1, MAX_STATISTICS_INTERVAL_MS)
    };
    client.set("statistics.interval.ms", ms.to_string());
}

/// The quantiles exported of librdkafka's rolling windows (round trip, queue
/// wait, send wait), as their labels.
const QUANTILES: [&str; 2] = ["0.5", "0.99"];

/// The metrics every [`StatsContext`] of a registry updates. Cloning shares
/// them.
#[derive(Debug, Clone)]
pub struct KafkaStatsMetrics {
    queue_messages: IntGaugeVec,
    queue_bytes: IntGaugeVec,
    queue_max_messages: IntGaugeVec,
    tx_bytes: IntCounterVec,
    rx_bytes: IntCounterVec,
    rtt: GaugeVec,
    int_latency: GaugeVec,
    outbuf_latency: GaugeVec,
    outbuf_requests: IntGaugeVec,
    inflight_requests: IntGaugeVec,
    consumer_lag: IntGaugeVec,
}

impl KafkaStatsMetrics {
    /// Creates the metrics and registers them on `registry`: once per
    /// registry (a second time fails with `AlreadyReg`), then clone the
    /// result for each client.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["client"]);
        let window = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["client", "broker", "quantile"])
        };
        let metrics = Self {
            queue_messages: gauge(
                "herald_kafka_client_queue_messages",
                "Messages in the producer's queue, not yet acknowledged by Kafka (librdkafka msg_cnt).",
                &["client"],
            )?,
            queue_bytes: gauge(
                "herald_kafka_client_queue_bytes",
                "Bytes of the messages in the producer's queue (librdkafka msg_size).",
                &["client"],
            )?,
            queue_max_messages: gauge(
                "herald_kafka_client_queue_max_messages",
                "Most messages the producer's queue holds (librdkafka msg_max).",
                &["client"],
            )?,
            tx_bytes: counter(
                "herald_kafka_client_tx_bytes_total",
                "Bytes sent to the Kafka brokers.",
            )?,
            rx_bytes: counter(
                "herald_kafka_client_rx_bytes_total",
                "Bytes received from the Kafka brokers.",
            )?,
            rtt: window(
                "herald_kafka_broker_rtt_seconds",
                "Request round trip to a broker over the last statistics interval, by quantile (NaN: no request); includes a fetch's wait for data.",
            )?,
            int_latency: window(
                "herald_kafka_broker_int_latency_seconds",
                "Time produced records waited in the producer's queue before going into a request to a broker (linger included), over the last statistics interval, by quantile (NaN: none).",
            )?,
            outbuf_latency: window(
                "herald_kafka_broker_outbuf_latency_seconds",
                "Time requests waited to be sent to a broker, over the last statistics interval, by quantile (NaN: none).",
            )?,
            outbuf_requests: gauge(
                "herald_kafka_broker_outbuf_requests",
                "Requests waiting to be sent to a broker (librdkafka outbuf_cnt).",
                &["client", "broker"],
            )?,
            inflight_requests: gauge(
                "herald_kafka_broker_inflight_requests",
                "Requests sent to a broker and awaiting its response (librdkafka waitresp_cnt).",
                &["client", "broker"],
            )?,
            consumer_lag: gauge(
                "herald_kafka_consumer_lag_messages",
                "Records of an assigned partition past its committed offset (librdkafka consumer_lag).",
                &["client", "topic", "partition"],
            )?,
        };
        registry.register(Box::new(metrics.queue_messages.clone()))?;
        registry.register(Box::new(metrics.queue_bytes.clone()))?;
        registry.register(Box::new(metrics.queue_max_messages.clone()))?;
        registry.register(Box::new(metrics.tx_bytes.clone()))?;
        registry.register(Box::new(metrics.rx_bytes.clone()))?;
        registry.register(Box::new(metrics.rtt.clone()))?;
        registry.register(Box::new(metrics.int_latency.clone()))?;
        registry.register(Box::new(metrics.outbuf_latency.clone()))?;
        registry.register(Box::new(metrics.outbuf_requests.clone()))?;
        registry.register(Box::new(metrics.inflight_requests.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        Ok(metrics)
    }

    /// The gauges of librdkafka's rolling windows, in the order of a broker
    /// report's `rtt`, `int_latency`, `outbuf_latency`.
    fn windows(&self) -> [&GaugeVec; 3] {
        [&self.rtt, &self.int_latency, &self.outbuf_latency]
    }
}

/// The context of one Kafka client (`FutureProducer<StatsContext>`,
/// `StreamConsumer<StatsContext>`): exports its statistics under label
/// `client`. Everything else (logging, errors, the consumer's rebalances,
/// including cooperative incremental assignment) is rdkafka's default.
#[derive(Debug)]
pub struct StatsContext {
    metrics: KafkaStatsMetrics,
    client: String,
    seen: Mutex<Seen>,
}

/// What the previous report set, to remove what the next one leaves out and
/// to turn running totals into counter increments.
#[derive(Debug, Default)]
struct Seen {
    producer: bool,
    brokers: HashSet<String>,
    partitions: HashSet<(String, i32)>,
    tx_bytes: u64,
    rx_bytes: u64,
}

impl StatsContext {
    /// The context of the client labelled `client` (e.g. `uplinks`).
    pub fn new(metrics: KafkaStatsMetrics, client: impl Into<String>) -> Self {
        Self {
            metrics,
            client: client.into(),
            seen: Mutex::default(),
        }
    }

    /// The client's label.
    pub fn client(&self) -> &str {
        &self.client
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates the metrics from one report.
    fn record(&self, statistics: &Statistics) {
        let m = &self.metrics;
        let client = self.client.as_str();
        let mut seen = self.seen();

        if statistics.client_type == "producer" {
            seen.producer = true;
            m.queue_messages
                .with_label_values(&[client])
                .set(saturating_i64(statistics.msg_cnt));
            m.queue_bytes
                .with_label_values(&[client])
                .set(saturating_i64(statistics.msg_size));
            m.queue_max_messages
                .with_label_values(&[client])
                .set(saturating_i64(statistics.msg_max));
        }

        let tx = u64::try_from(statistics.tx_bytes).unwrap_or(0);
        let rx = u64::try_from(statistics.rx_bytes).unwrap_or(0);
        m.tx_bytes
            .with_label_values(&[client])
            .inc_by(increase(seen.tx_bytes, tx));
        m.rx_bytes
            .with_label_values(&[client])
            .inc_by(increase(seen.rx_bytes, rx));
        (seen.tx_bytes, seen.rx_bytes) = (tx, rx);

        let mut brokers = HashSet::new();
        for (key, broker) in &statistics.brokers {
            // librdkafka's placeholder for partitions without a leader.
            if broker.source == "internal" {
                continue;
            }
            let name = if broker.name.is_empty() {
                key.as_str()
            } else {
                broker.name.as_str()
            };
            for (gauge, window) in m.windows().into_iter().zip([
                &broker.rtt,
                &broker.int_latency,
                &broker.outbuf_latency,
            ]) {
                let (p50, p99) = match window {
                    Some(w) if w.cnt > 0 => (micros_to_seconds(w.p50), micros_to_seconds(w.p99)),
                    _ => (f64::NAN, f64::NAN),
                };
                for (quantile, value) in QUANTILES.into_iter().zip([p50, p99]) {
                    gauge
                        .with_label_values(&[client, name, quantile])
                        .set(value);
                }
            }
            m.outbuf_requests
                .with_label_values(&[client, name])
                .set(broker.outbuf_cnt);
            m.inflight_requests
                .with_label_values(&[client, name])
                .set(broker.waitresp_cnt);
            brokers.insert(name.to_string());
        }
        for gone in seen.brokers.difference(&brokers) {
            self.remove_broker(gone);
        }
        seen.brokers = brokers;

        let mut partitions = HashSet::new();
        if statistics.client_type == "consumer" {
            for (topic, stats) in &statistics.topics {
                for partition in stats.partitions.values() {
                    // -1: librdkafka's unassigned-messages partition; a
                    // negative lag: no committed offset (or watermark) yet.
                    if partition.partition < 0 || !partition.desired || partition.consumer_lag < 0 {
                        continue;
                    }
                    m.consumer_lag
                        .with_label_values(&[client, topic, &partition.partition.to_string()])
                        .set(partition.consumer_lag);
                    partitions.insert((topic.clone(), partition.partition));
                }
            }
        }
        for (topic, partition) in seen.partitions.difference(&partitions) {
            self.remove_partition(topic, *partition);
        }
        seen.partitions = partitions;
    }

    fn remove_broker(&self, broker: &str) {
        let (m, client) = (&self.metrics, self.client.as_str());
        for gauge in m.windows() {
            for quantile in QUANTILES {
                let _ = gauge.remove_label_values(&[client, broker, quantile]);
            }
        }
        let _ = m.outbuf_requests.remove_label_values(&[client, broker]);
        let _ = m.inflight_requests.remove_label_values(&[client, broker]);
    }

    fn remove_partition(&self, topic: &str, partition: i32) {
        let _ = self.metrics.consumer_lag.remove_label_values(&[
            self.client.as_str(),
            topic,
            &partition.to_string(),
        ]);
    }
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.record(&statistics);
    }
}

/// rdkafka's default rebalance handling (eager or cooperative) is kept.
impl ConsumerContext for StatsContext {}

/// A dropped client's series go with it.
impl Drop for StatsContext {
    fn drop(&mut self) {
        let seen = std::mem::take(&mut *self.seen());
        let (m, client) = (&self.metrics, self.client.as_str());
        if seen.producer {
            let _ = m.queue_messages.remove_label_values(&[client]);
            let _ = m.queue_bytes.remove_label_values(&[client]);
            let _ = m.queue_max_messages.remove_label_values(&[client]);
        }
        let _ = m.tx_bytes.remove_label_values(&[client]);
        let _ = m.rx_bytes.remove_label_values(&[client]);
        for broker in &seen.brokers {
            self.remove_broker(broker);
        }
        for (topic, partition) in &seen.partitions {
            self.remove_partition(topic, *partition);
        }
    }
}

/// What a running total grew by since `previous` (all of it if it went
/// back, which one librdkafka handle never does).
fn increase(previous: u64, now: u64) -> u64 {
    now.checked_sub(previous).unwrap_or(now)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn micros_to_seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::MetricType;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::producer::FutureProducer;

    /// Captured from librdkafka 2.12 against Kafka 4.1; the producer's queue,
    /// request and RTT figures edited to be non-zero.
    const PRODUCER: &str = include_str!("../tests/data/statistics-producer.json");
    /// Captured from librdkafka 2.12 against Kafka 4.1: a group consumer of
    /// the 3 partitions of `stats-sample`, lag 0, 0 and 1.
    const CONSUMER: &str = include_str!("../tests/data/statistics-consumer.json");

    fn parse(json: &str) -> Statistics {
        serde_json::from_str(json).expect("sample statistics parse")
    }

    /// The value of the series of `name` whose labels include `labels`.
    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = registry.gather().into_iter().find(|f| f.name() == name)?;
        let metric = family.get_metric().iter().find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })?;
        Some(match family.get_field_type() {
            MetricType::COUNTER => metric.get_counter().get_value(),
            _ => metric.get_gauge().get_value(),
        })
    }

    fn series(registry: &Registry, name: &str) -> usize {
        registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)
            .map_or(0, |f| f.get_metric().len())
    }

    const BROKER: &str = "127.0.0.1:9092/1";

    #[test]
    fn a_producer_report_sets_its_queue_broker_and_traffic_metrics() {
        let registry = Registry::new();
        let metrics = KafkaStatsMetrics::register(&registry).unwrap();
        let context = StatsContext::new(metrics, "uplinks");
        context.stats(parse(PRODUCER));
        let client = ("client", "uplinks");
        let get = |name, extra: &[(&str, &str)]| {
            let mut labels = vec![client];
            labels.extend_from_slice(extra);
            value(&registry, name, &labels)
        };
        assert_eq!(get("herald_kafka_client_queue_messages", &[]), Some(42.0));
        assert_eq!(get("herald_kafka_client_queue_bytes", &[]), Some(4200.0));
        assert_eq!(
            get("herald_kafka_client_queue_max_messages", &[]),
            Some(100_000.0)
        );
        assert_eq!(get("herald_kafka_client_tx_bytes_total", &[]), Some(3735.0));
        assert_eq!(get("herald_kafka_client_rx_bytes_total", &[]), Some(1194.0));
        let broker = ("broker", BROKER);
        assert_eq!(
            get(
                "herald_kafka_broker_rtt_seconds",
                &[broker, ("quantile", "0.5")]
            ),
            Some(0.0015)
        );
        assert_eq!(
            get(
                "herald_kafka_broker_rtt_seconds",
                &[broker, ("quantile", "0.99")]
            ),
            Some(0.0042)
        );
        assert_eq!(
            get(
                "herald_kafka_broker_int_latency_seconds",
                &[broker, ("quantile", "0.5")]
            ),
            Some(0.0023)
        );
        assert_eq!(
            get(
                "herald_kafka_broker_int_latency_seconds",
                &[broker, ("quantile", "0.99")]
            ),
            Some(0.0031)
        );
        // No request waited to be sent in the window: NaN, not 0.
        let outbuf = get(
            "herald_kafka_broker_outbuf_latency_seconds",
            &[broker, ("quantile", "0.5")],
        );
        assert!(outbuf.is_some_and(f64::is_nan), "{outbuf:?}");
        assert_eq!(
            get("herald_kafka_broker_outbuf_requests", &[broker]),
            Some(2.0)
        );
        assert_eq!(
            get("herald_kafka_broker_inflight_requests", &[broker]),
            Some(1.0)
        );
        assert_eq!(series(&registry, "herald_kafka_consumer_lag_messages"), 0);
    }

    #[test]
    fn a_consumer_report_sets_the_lag_of_its_assigned_partitions() {
        let registry = Registry::new();
        let metrics = KafkaStatsMetrics::register(&registry).unwrap();
        let context = StatsContext::new(metrics, "downlink");
        context.stats(parse(CONSUMER));
        let lag = |partition| {
            value(
                &registry,
                "herald_kafka_consumer_lag_messages",
                &[
                    ("client", "downlink"),
                    ("topic", "stats-sample"),
                    ("partition", partition),
                ],
            )
        };
        assert_eq!(lag("0"), Some(0.0));
        assert_eq!(lag("1"), Some(0.0));
        assert_eq!(lag("2"), Some(1.0));
        assert_eq!(lag("-1"), None, "librdkafka's internal partition");
        assert_eq!(series(&registry, "herald_kafka_consumer_lag_messages"), 3);
        // No producer queue for a consumer.
        assert_eq!(series(&registry, "herald_kafka_client_queue_messages"), 0);
        // The fetch's long poll (fetch.wait.max.ms 500) is in its RTT.
        let rtt = value(
            &registry,
            "herald_kafka_broker_rtt_seconds",
            &[("broker", BROKER), ("quantile", "0.99")],
        );
        assert_eq!(rtt, Some(0.505855));
        // The group coordinator saw no request in the window: NaN, not 0.
        let coordinator = value(
            &registry,
            "herald_kafka_broker_rtt_seconds",
            &[("broker", "GroupCoordinator"), ("quantile", "0.5")],
        );
        assert!(coordinator.is_some_and(f64::is_nan), "{coordinator:?}");
        assert_eq!(series(&registry, "herald_kafka_broker_outbuf_requests"), 2);
    }

    #[test]
    fn traffic_counters_add_what_the_running_totals_grew_by() {
        let registry = Registry::new();
        let metrics = KafkaStatsMetrics::register(&registry).unwrap();
        let context = StatsContext::new(metrics, "downlink");
        let mut stats = parse(CONSUMER);
        context.stats(stats.clone());
        stats.tx_bytes += 1000;
        stats.rx_bytes += 10;
        context.stats(stats.clone());
        let tx = || {
            value(
                &registry,
                "herald_kafka_client_tx_bytes_total",
                &[("client", "downlink")],
            )
        };
        assert_eq!(tx(), Some(7379.0 + 1000.0));
        assert_eq!(
            value(&registry, "herald_kafka_client_rx_bytes_total", &[]),
            Some(10538.0 + 10.0)
        );
        // The same report again adds nothing.
        context.stats(stats);
        assert_eq!(tx(), Some(8379.0));
    }

    #[test]
    fn clients_share_the_metrics_of_one_registry() {
        let registry = Registry::new();
        let metrics = KafkaStatsMetrics::register(&registry).unwrap();
        assert!(
            matches!(
                KafkaStatsMetrics::register(&registry),
                Err(prometheus::Error::AlreadyReg)
            ),
            "once per registry"
        );
        let uplinks = StatsContext::new(metrics.clone(), "uplinks");
        let receipts = StatsContext::new(metrics, "receipts");
        assert_eq!(receipts.client(), "receipts");
        uplinks.stats(parse(PRODUCER));
        let mut quiet = parse(PRODUCER);
        quiet.msg_cnt = 0;
        receipts.stats(quiet);
        let queue = |client| {
            value(
                &registry,
                "herald_kafka_client_queue_messages",
                &[("client", client)],
            )
        };
        assert_eq!(queue("uplinks"), Some(42.0));
        assert_eq!(queue("receipts"), Some(0.0));
    }

    #[test]
    fn series_no_longer_reported_are_removed() {
        let registry = Registry::new();
        let metrics = KafkaStatsMetrics::register(&registry).unwrap();
        let context = StatsContext::new(metrics.clone(), "svc-consumer");
        let other = StatsContext::new(metrics, "svc-producer");
        other.stats(parse(PRODUCER));
        let mut stats = parse(CONSUMER);
        context.stats(stats.clone());
        assert_eq!(series(&registry, "herald_kafka_consumer_lag_messages"), 3);
        // Partition 2 revoked, 1 not committed yet; the coordinator moved.
        let topic = stats.topics.get_mut("stats-sample").expect("sample topic");
        if let Some(p) = topic.partitions.get_mut(&2) {
            p.desired = false;
        }
        if let Some(p) = topic.partitions.get_mut(&1) {
            p.consumer_lag = -1;
        }
        stats.brokers.remove("GroupCoordinator");
        context.stats(stats);
        assert_eq!(series(&registry, "herald_kafka_consumer_lag_messages"), 1);
        let coordinator = [("client", "svc-consumer"), ("broker", "GroupCoordinator")];
        assert_eq!(
            value(
                &registry,
                "herald_kafka_broker_outbuf_requests",
                &coordinator
            ),
            None
        );
        assert_eq!(series(&registry, "herald_kafka_broker_rtt_seconds"), 4);
        // A dropped client takes its series along, and only its own.
        drop(context);
        for name in [
            "herald_kafka_consumer_lag_messages",
            "herald_kafka_broker_outbuf_requests",
            "herald_kafka_client_tx_bytes_total",
        ] {
            let left = value(&registry, name, &[("client", "svc-consumer")]);
            assert_eq!(left, None, "{name}");
        }
        assert_eq!(series(&registry, "herald_kafka_broker_rtt_seconds"), 2);
        assert_eq!(series(&registry, "herald_kafka_client_queue_messages"), 1);
    }

    #[test]
    fn statistics_interval_in_milliseconds_zero_disables() {
        let mut client = ClientConfig::new();
        with_statistics(&mut client, DEFAULT_STATISTICS_INTERVAL);
        assert_eq!(client.get("statistics.interval.ms"), Some("5000"));
        with_statistics(&mut client, Duration::ZERO);
        assert_eq!(client.get("statistics.interval.ms"), Some("0"));
        with_statistics(&mut client, Duration::from_micros(10));
        assert_eq!(client.get("statistics.interval.ms"), Some("1"));
        with_statistics(&mut client, Duration::from_secs(7 * 86_400));
        assert_eq!(client.get("statistics.interval.ms"), Some("86400000"));
    }

    #[test]
    fn producers_and_consumers_take_the_context() {
        // StreamConsumer<StatsContext> (which needs a runtime), with real
        // statistics: tests/live.rs.
        let registry = Registry::new();
        let metrics = KafkaStatsMetrics::register(&registry).unwrap();
        // Nothing listens there; creating a client does not connect yet.
        let mut config =
            crate::clients::idempotent_producer("127.0.0.1:1", "t", Duration::from_secs(1));
        with_statistics(&mut config, DEFAULT_STATISTICS_INTERVAL);
        let _producer: FutureProducer<StatsContext> = config
            .create_with_context(StatsContext::new(metrics.clone(), "p"))
            .unwrap();
        let config = crate::clients::at_least_once_consumer("127.0.0.1:1", "t", "g");
        let consumer: BaseConsumer<StatsContext> = config
            .create_with_context(StatsContext::new(metrics, "c"))
            .unwrap();
        assert_eq!(consumer.client().context().client(), "c");
    }
}
