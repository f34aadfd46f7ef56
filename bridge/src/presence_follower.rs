//! Follows the compacted presence topic into this node's [`PresenceView`],
//! and acts on what it reads: a device that connected to another node with
//! a newer connection is taken over from this node (the newest connection
//! wins cluster-wide, by generation, whatever the order the records arrive
//! in).
//!
//! The follower reads every partition from the beginning, without a
//! consumer group. The view is ready once it reached the end offsets found
//! at start; then the records an earlier life of this node left saying a
//! device is connected here (it crashed) are closed with an offline record.

use crate::consumers::{create_consumer, Consumer as PresenceConsumer, ConsumerRole};
use crate::presence::KafkaPresence;
use crate::presence_view::{Applied, PresenceView};
use crate::{BridgeError, KafkaConfig};
use herald_broker::{BrokerHandle, DisconnectReason, SessionEvents as _};
use herald_kafka::stats::KafkaStatsMetrics;
use herald_schemas::v1::PresenceEvent;
use herald_schemas::Message as _;
use prometheus::{IntCounter, IntGauge, Registry};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Reads presence into the view; see the module documentation.
pub struct PresenceFollower {
    consumer: Arc<PresenceConsumer>,
    topic: String,
    view: Arc<PresenceView>,
    handle: BrokerHandle,
    presence: Arc<KafkaPresence>,
    devices: IntGauge,
    takeovers: IntCounter,
    undecodable: IntCounter,
}

impl PresenceFollower {
    pub fn new(
        config: &KafkaConfig,
        view: Arc<PresenceView>,
        handle: BrokerHandle,
        presence: Arc<KafkaPresence>,
        stats: &KafkaStatsMetrics,
        registry: &Registry,
    ) -> Result<Self, BridgeError> {
        let consumer = create_consumer(config, ConsumerRole::PresenceView, stats)?;
        let devices = IntGauge::new(
            "herald_cluster_view_devices",
            "Devices online on other nodes, as this node's presence view has them.",
        )?;
        let takeovers = IntCounter::new(
            "herald_cluster_takeovers_total",
            "Sessions ended here because the device connected to another node since.",
        )?;
        let undecodable = IntCounter::new(
            "herald_cluster_presence_undecodable_total",
            "Presence records that are not a PresenceEvent (skipped).",
        )?;
        for metric in [&takeovers, &undecodable] {
            registry.register(Box::new(metric.clone()))?;
        }
        registry.register(Box::new(devices.clone()))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: config.presence.topic.clone(),
            view,
            handle,
            presence,
            devices,
            takeovers,
            undecodable,
        })
    }

    /// Replays the presence topic, then follows it until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut behind = loop {
            match self.assign_all().await {
                Ok(ends) => break ends,
                Err(error) => {
                    warn!(topic = %self.topic, %error, "cannot read the presence topic yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        };
        info!(topic = %self.topic, partitions_behind = behind.len(), "replaying presence");
        let replay_started = std::time::Instant::now();
        // This node's connections from before this process, while replaying.
        let mut leftovers: HashMap<String, u64> = HashMap::new();
        if behind.is_empty() {
            self.caught_up(std::mem::take(&mut leftovers), replay_started);
        }
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    warn!(%error, "presence view consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match PresenceEvent::decode(message.payload().unwrap_or_default()) {
                Ok(event) => {
                    if !behind.is_empty() {
                        self.note_leftover(&event, &mut leftovers);
                    }
                    self.apply(&event);
                }
                Err(_) => self.undecodable.inc(),
            }
            let partition = message.partition();
            if let Some(&end) = behind.get(&partition) {
                if message.offset() + 1 >= end {
                    behind.remove(&partition);
                    if behind.is_empty() {
                        self.caught_up(std::mem::take(&mut leftovers), replay_started);
                    }
                }
            }
        }
    }

    fn apply(&self, event: &PresenceEvent) {
        let applied = self.view.apply(event);
        self.devices.set(self.view.len() as i64);
        if let Applied::Online { node, generation } = applied {
            if node != *self.view.node() && self.handle.take_over(&event.device_id, generation) {
                self.takeovers.inc();
                debug!(device_id = %event.device_id, %node, "device moved to another node: session taken over");
            }
        }
    }

    /// Assigns every partition from its beginning; returns the end offset
    /// of each partition that holds records.
    async fn assign_all(&self) -> Result<HashMap<i32, i64>, BridgeError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(BridgeError::Config {
                    key: "kafka.presence.topic".into(),
                    reason: format!("topic {topic:?} does not exist"),
                });
            }
            let mut ends = HashMap::new();
            let mut list = TopicPartitionList::new();
            for partition in partitions {
                let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
                if high > low {
                    ends.insert(partition, high);
                }
                list.add_partition_offset(&topic, partition, Offset::Beginning)?;
            }
            consumer.assign(&list)?;
            Ok(ends)
        })
        .await
        .unwrap_or_else(|_| {
            Err(BridgeError::Config {
                key: "kafka.presence.topic".into(),
                reason: "metadata task failed".into(),
            })
        })
    }

    /// Marks the view ready, and closes what this node's earlier life left
    /// open: devices the topic says are here, from connections made before
    /// this process started.
    /// Tracks, during the replay, the connections an earlier life of this
    /// node left open in the topic.
    fn note_leftover(&self, event: &PresenceEvent, leftovers: &mut HashMap<String, u64>) {
        let ours = event.node == self.view.node().as_ref();
        if ours && event.online && event.generation < self.view.created_us() {
            leftovers.insert(event.device_id.clone(), event.generation);
        } else if leftovers
            .get(&event.device_id)
            .is_some_and(|&left| left <= event.generation)
        {
            // Closed, or the device connected since (here or elsewhere).
            leftovers.remove(&event.device_id);
        }
    }

    fn caught_up(&self, leftovers: HashMap<String, u64>, replay_started: std::time::Instant) {
        for (device_id, generation) in &leftovers {
            self.presence
                .disconnected(device_id, *generation, DisconnectReason::ServerShutdown);
        }
        self.view.set_ready();
        info!(
            devices_on_other_nodes = self.view.len(),
            closed_from_before_restart = leftovers.len(),
            took = ?replay_started.elapsed(),
            "presence view ready"
        );
    }
}
