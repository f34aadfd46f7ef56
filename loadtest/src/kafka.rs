//! Kafka for the loss ledger: reading a topic back from exactly where it
//! ended before the run, until nothing more can come, and producing records
//! with Kafka's confirmation.
//!
//! A read-back takes the end offset of every partition before the run
//! starts and assigns itself those offsets (no consumer group, nothing
//! committed), so it sees every record written during the run and no older
//! one. Partitions that appear during the run (a topic created by the first
//! record) are read from their beginning. After the run,
//! [`ReadBack::finish`] reads on until the end offsets of that moment are
//! reached and the topic has been quiet for the settle time, so that records
//! a slow Kafka writes late still count.

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// After everything expected has arrived, how long the read-back still
/// waits for stragglers (late duplicates).
const COMPLETE_GRACE: Duration = Duration::from_secs(1);

/// End offsets (next offset to be written) per partition.
pub type Offsets = BTreeMap<i32, i64>;

/// Reads one topic from its end offsets of before the run.
pub struct ReadBack {
    topic: String,
    consumer: Arc<StreamConsumer>,
    /// Metadata and watermark queries go through their own client: on the
    /// reader's connection they would wait behind its long-polling fetches.
    probe: Arc<BaseConsumer>,
    /// Next offset to read per assigned partition.
    positions: Arc<Mutex<Offsets>>,
    /// Records read so far (of any run).
    records: Arc<AtomicU64>,
}

impl ReadBack {
    /// Records the topic's end offsets and assigns the consumer there.
    pub async fn open(bootstrap_servers: &str, topic: &str) -> anyhow::Result<ReadBack> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set(
                "group.id",
                format!("herald-loadtest-readback-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Back soon after a Kafka restart, so that the e2e latency read
            // here is Herald's, not this reader's reconnect backoff.
            .set("reconnect.backoff.max.ms", "1000");
        let consumer: StreamConsumer = config.create().context("creating the Kafka consumer")?;
        let consumer = Arc::new(consumer);
        let probe: BaseConsumer = config.create().context("creating the Kafka consumer")?;
        let probe = Arc::new(probe);
        let start = end_offsets(&probe, topic).await.with_context(|| {
            format!("reading the end offsets of {topic} at {bootstrap_servers} before the run")
        })?;
        let mut assignment = TopicPartitionList::new();
        for (&partition, &offset) in &start {
            assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        consumer.assign(&assignment)?;
        Ok(ReadBack {
            topic: topic.to_string(),
            consumer,
            probe,
            positions: Arc::new(Mutex::new(start)),
            records: Arc::default(),
        })
    }

    /// Reads records in a task, handing each to `on_record`, until aborted.
    /// Picks up partitions that appear meanwhile.
    pub fn spawn<F>(&self, mut on_record: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(&BorrowedMessage<'_>) + Send + 'static,
    {
        let (consumer, probe, positions, records, topic) = (
            self.consumer.clone(),
            self.probe.clone(),
            self.positions.clone(),
            self.records.clone(),
            self.topic.clone(),
        );
        tokio::spawn(async move {
            let mut look_for_partitions = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    message = consumer.recv() => match message {
                        Ok(message) => {
                            on_record(&message);
                            let mut positions = positions.lock().unwrap_or_else(|e| e.into_inner());
                            let next = positions.entry(message.partition()).or_insert(0);
                            *next = (*next).max(message.offset() + 1);
                            drop(positions);
                            records.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tracing::debug!(%error, topic, "read-back");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = look_for_partitions.tick() => {
                        assign_new_partitions(&consumer, &probe, &topic, &positions).await;
                    }
                }
            }
        })
    }

    /// Records read so far (of any run).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    fn reached(&self, ends: &Offsets) -> bool {
        let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        ends.iter()
            .all(|(partition, end)| positions.get(partition).copied().unwrap_or(0) >= *end)
    }

    /// After the run: reads until the end offsets of now are reached and
    /// then either `complete()` holds (everything expected is in; a short
    /// grace for stragglers) or nothing new came for `settle`. Progress is
    /// any record read or a change of `progress()` (e.g. deliveries seen
    /// elsewhere). Returns whether the end offsets were reached; false when
    /// Kafka stayed unreachable or stuck for `settle`.
    pub async fn finish(
        &self,
        settle: Duration,
        complete: impl Fn() -> bool,
        progress: impl Fn() -> u64,
    ) -> bool {
        let mut quiet_since = Instant::now();
        let mut seen = (self.records(), progress());
        let mut ends = end_offsets(&self.probe, &self.topic).await.ok();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Instant::now();
            let now_seen = (self.records(), progress());
            if now_seen != seen {
                seen = now_seen;
                quiet_since = now;
            }
            if ends.is_none() {
                ends = end_offsets(&self.probe, &self.topic).await.ok();
            }
            let caught_up = ends.as_ref().is_some_and(|ends| self.reached(ends));
            let quiet = now.duration_since(quiet_since);
            let done =
                (caught_up && complete() && quiet >= COMPLETE_GRACE.min(settle)) || quiet >= settle;
            if !done {
                continue;
            }
            if !caught_up {
                tracing::warn!(
                    topic = self.topic,
                    "read-back stopped before the end offsets"
                );
                return false;
            }
            // Anything written since the end offsets were taken?
            match end_offsets(&self.probe, &self.topic).await {
                Ok(latest) if self.reached(&latest) => return true,
                Ok(latest) => ends = Some(latest),
                Err(_) => return true,
            }
        }
    }
}

/// The end offset of every partition of `topic`; none if it does not exist yet.
pub async fn end_offsets(probe: &Arc<BaseConsumer>, topic: &str) -> anyhow::Result<Offsets> {
    let (probe, topic) = (probe.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut ends = Offsets::new();
        for partition in partitions(&probe, &topic)? {
            let (_, high) = probe.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)?;
            ends.insert(partition, high);
        }
        Ok(ends)
    })
    .await?
}

fn partitions(probe: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = probe.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Assigns, from their beginning, partitions of `topic` created since the start.
async fn assign_new_partitions(
    consumer: &StreamConsumer,
    probe: &Arc<BaseConsumer>,
    topic: &str,
    positions: &Arc<Mutex<Offsets>>,
) {
    let (probe, name) = (probe.clone(), topic.to_string());
    let Ok(Ok(now)) = tokio::task::spawn_blocking(move || partitions(&probe, &name)).await else {
        return;
    };
    let mut positions = positions.lock().unwrap_or_else(|e| e.into_inner());
    let mut added = TopicPartitionList::new();
    for partition in now {
        if !positions.contains_key(&partition)
            && added
                .add_partition_offset(topic, partition, Offset::Beginning)
                .is_ok()
        {
            positions.insert(partition, 0);
        }
    }
    if added.count() > 0 {
        if let Err(error) = consumer.incremental_assign(&added) {
            tracing::warn!(%error, topic, "assigning new partitions");
        }
    }
}

/// A producer whose records Kafka confirms only once all replicas have them.
pub fn producer(bootstrap_servers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("socket.nagle.disable", "true")
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .context("creating the Kafka producer")
}

/// Hands a record to the producer (waiting while its queue is full); the
/// returned future resolves with Kafka's confirmation.
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Whether Kafka confirmed a record.
pub async fn confirmed(delivery: DeliveryFuture) -> bool {
    matches!(delivery.await, Ok(Ok(_)))
}

/// Whether the record carries `header` with `value`.
pub fn has_header(message: &BorrowedMessage<'_>, header: &str, value: &[u8]) -> bool {
    use rdkafka::message::Headers as _;
    message.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key == header && h.value == Some(value))
    })
}
