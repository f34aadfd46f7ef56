//! `stats` and `watermark` with real clients: an idempotent producer and a
//! cooperative-sticky stream consumer with a [`StatsContext`], against the
//! local Kafka (`deploy/kafka/kafka.sh`, started here unless it serves
//! already; `HERALD_TEST_KAFKA_PORT` picks another port than 9092).

use herald_kafka::clients::{at_least_once_consumer, idempotent_producer};
use herald_kafka::stats::{with_statistics, KafkaStatsMetrics, StatsContext};
use herald_kafka::watermark::{store, OffsetWatermark};
use prometheus::proto::MetricType;
use prometheus::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RECORDS: usize = 30;
const WAIT: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_millis(200);

/// The local Kafka's bootstrap address, started if need be.
fn kafka() -> String {
    let port = std::env::var("HERALD_TEST_KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/kafka.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg("start")
        .env("KAFKA_PORT", &port)
        .stdout(Stdio::null())
        .status()
        .expect("deploy/kafka/kafka.sh runs");
    assert!(status.success(), "kafka.sh start (port {port}) failed");
    format!("127.0.0.1:{port}")
}

/// The values of the series of `name` whose `client` label is `client`,
/// by their other labels (sorted by name, as gathered).
fn series(registry: &Registry, name: &str, client: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for family in registry.gather().into_iter().filter(|f| f.name() == name) {
        let counter = family.get_field_type() == MetricType::COUNTER;
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if !labels
                .iter()
                .any(|l| l.name() == "client" && l.value() == client)
            {
                continue;
            }
            let key = labels
                .iter()
                .filter(|l| l.name() != "client")
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect::<Vec<_>>()
                .join(",");
            let value = if counter {
                metric.get_counter().get_value()
            } else {
                metric.get_gauge().get_value()
            };
            found.insert(key, value);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_report_statistics_and_store_watermarked_offsets() {
    let bootstrap = kafka();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let topic = format!(
        "herald-kafka-live-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    );
    let registry = Registry::new();
    let metrics = KafkaStatsMetrics::register(&registry).expect("registered");

    let mut config = idempotent_producer(&bootstrap, "live", Duration::from_secs(20));
    with_statistics(&mut config, INTERVAL);
    let producer: FutureProducer<StatsContext> = config
        .create_with_context(StatsContext::new(metrics.clone(), "live-producer"))
        .expect("producer");
    for i in 0..RECORDS {
        let key = format!("device-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("x"),
                Duration::from_secs(20),
            )
            .await
            .expect("produced");
    }

    let mut config = at_least_once_consumer(&bootstrap, "live", &topic);
    config.set("partition.assignment.strategy", "cooperative-sticky");
    with_statistics(&mut config, INTERVAL);
    let consumer: StreamConsumer<StatsContext> = config
        .create_with_context(StatsContext::new(metrics, "live-consumer"))
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribed");

    // Consume everything, then settle it backwards: only the oldest record
    // of a partition moves its watermark, straight to the end.
    let mut watermark = OffsetWatermark::new();
    let mut consumed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while consumed.len() < RECORDS {
        let message = tokio::time::timeout_at(deadline.into(), consumer.recv())
            .await
            .expect("all records consumed in time")
            .expect("a record");
        watermark.begin(message.topic(), message.partition(), message.offset());
        consumed.push((message.partition(), message.offset()));
    }
    let mut highest = BTreeMap::new();
    for &(partition, offset) in &consumed {
        let top = highest.entry(partition).or_insert(offset);
        *top = (*top).max(offset);
    }
    let mut stored = BTreeMap::new();
    for &(partition, offset) in consumed.iter().rev() {
        if let Some(next) = watermark.complete(&topic, partition, offset) {
            store(&consumer, &topic, partition, next).expect("offset stored");
            assert!(stored.insert(partition, next).is_none(), "one store each");
        }
    }
    let expected: BTreeMap<i32, i64> = highest.iter().map(|(p, o)| (*p, o + 1)).collect();
    assert_eq!(
        stored, expected,
        "each partition resumes after its last record"
    );

    // The stored offsets are committed (every second) and reported: the lag
    // of every partition with records is 0. Statistics are served while the
    // consumer polls.
    let wanted: BTreeMap<String, f64> = stored
        .keys()
        .map(|p| (format!("partition={p},topic={topic}"), 0.0))
        .collect();
    loop {
        let lag = series(
            &registry,
            "herald_kafka_consumer_lag_messages",
            "live-consumer",
        );
        if lag == wanted {
            break;
        }
        assert!(Instant::now() < deadline, "lag {lag:?}, wanted {wanted:?}");
        let _ = tokio::time::timeout(INTERVAL, consumer.recv()).await;
    }

    let sent = series(
        &registry,
        "herald_kafka_client_tx_bytes_total",
        "live-producer",
    );
    assert!(sent.get("").is_some_and(|b| *b > 0.0), "{sent:?}");
    let received = series(
        &registry,
        "herald_kafka_client_rx_bytes_total",
        "live-consumer",
    );
    assert!(received.get("").is_some_and(|b| *b > 0.0), "{received:?}");
    let queue = series(
        &registry,
        "herald_kafka_client_queue_messages",
        "live-producer",
    );
    assert_eq!(queue.get(""), Some(&0.0), "every record acknowledged");
    let outbuf = series(
        &registry,
        "herald_kafka_broker_outbuf_requests",
        "live-consumer",
    );
    assert!(!outbuf.is_empty(), "brokers reported");
    let rtt = series(
        &registry,
        "herald_kafka_broker_rtt_seconds",
        "live-consumer",
    );
    assert_eq!(
        rtt.len(),
        2 * outbuf.len(),
        "two quantiles per broker: {rtt:?}"
    );

    // A dropped client's series go with it.
    drop(consumer);
    assert!(series(
        &registry,
        "herald_kafka_consumer_lag_messages",
        "live-consumer"
    )
    .is_empty());
    assert!(series(
        &registry,
        "herald_kafka_broker_rtt_seconds",
        "live-consumer"
    )
    .is_empty());
    assert!(!series(
        &registry,
        "herald_kafka_broker_rtt_seconds",
        "live-producer"
    )
    .is_empty());
}
