//! Downlink: commands from Kafka to devices, with receipts.
//!
//! Herald's nodes consume the downlink topic (DownlinkCommand records keyed
//! by device id) as one consumer group, and each node its own inbox topic
//! (commands other nodes forwarded to it). Each command is routed in
//! partition order (see `dispatch`): published with QoS 1 to
//! `<prefix>/<device_id>/down/<kind>` on this node, or forwarded to the node
//! holding the device. When it settles — the device PUBACK'd it, it expired,
//! it was refused, or its forward was acknowledged — and its receipt is in
//! Kafka, the command counts as handled. A partition's offset is stored only
//! up to its oldest command not yet handled, so a crash redelivers (at least
//! once) everything unsettled.
//!
//! Receipts and forwards have their own producer, apart from uplinks, with a
//! bounded queue: a receipt is never dropped, so when that queue is full the
//! command waits for room, and consumption pauses once `max_inflight`
//! commands wait (per consumer, so a full downlink group cannot block the
//! inbox).

use crate::config::KafkaConfig;
use crate::consumers::{
    create_consumer, inbox_topic, inbox_topic_prefix, Consumer as CommandConsumer, ConsumerRole,
};
use crate::dispatch::{self, DispatchSettings, Dispatcher, Settled};
use crate::orphans::OrphanInboxes;
use crate::presence_view::PresenceView;
use crate::producer::{create_producer, Flusher, ProducerRole};
use crate::BridgeError;
use herald_broker::BrokerHandle;
use herald_kafka::stats::KafkaStatsMetrics;
use herald_kafka::watermark::{self, OffsetWatermark};
use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The downlink side of one Herald node.
pub struct DownlinkBridge {
    /// `None` when downlinks are disabled.
    consumers: Option<Consumers>,
    view: Arc<PresenceView>,
    max_inflight: usize,
}

struct Consumers {
    dispatcher: Arc<Dispatcher>,
    source: ConsumerSource,
    orphans: OrphanInboxes,
}

/// How to make a command consumer of a node (again, after a fatal error).
#[derive(Clone)]
pub(crate) struct ConsumerSource {
    config: KafkaConfig,
    stats: KafkaStatsMetrics,
}

/// Which command consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommandSource {
    Downlink,
    Inbox,
    Adopted(String),
}

impl ConsumerSource {
    pub(crate) fn new(config: &KafkaConfig, stats: &KafkaStatsMetrics) -> Self {
        Self {
            config: config.clone(),
            stats: stats.clone(),
        }
    }

    /// A new consumer of `source`, subscribed.
    fn subscribe(&self, source: &CommandSource) -> Result<Arc<CommandConsumer>, BridgeError> {
        let node = self.config.cluster.node_id();
        let (role, topic) = match source {
            CommandSource::Downlink => (ConsumerRole::Downlink, self.config.downlink.topic.clone()),
            CommandSource::Inbox => (ConsumerRole::Inbox, inbox_topic(&self.config, &node)),
            CommandSource::Adopted(gone) => {
                (ConsumerRole::Adopted(gone), inbox_topic(&self.config, gone))
            }
        };
        let consumer = create_consumer(&self.config, role, &self.stats)?;
        consumer.subscribe(&[&topic])?;
        Ok(Arc::new(consumer))
    }
}

impl DownlinkBridge {
    pub fn new(
        config: &KafkaConfig,
        topic_prefix: &str,
        handle: BrokerHandle,
        view: Arc<PresenceView>,
        stats: &KafkaStatsMetrics,
        registry: &Registry,
    ) -> Result<Self, BridgeError> {
        let consumers = if config.downlink.enabled {
            let settings = DispatchSettings {
                topic_prefix: topic_prefix.to_string(),
                receipts_topic: config.downlink.receipts_topic.clone(),
                inbox_prefix: inbox_topic_prefix(config),
                default_ttl: config.downlink.default_ttl,
                max_forwards: config.cluster.max_forwards,
            };
            let producer = create_producer(config, ProducerRole::Receipts, stats)?;
            let dispatcher = Arc::new(Dispatcher::new(
                producer,
                handle,
                view.clone(),
                settings,
                registry,
            )?);
            let source = ConsumerSource::new(config, stats);
            Some(Consumers {
                orphans: OrphanInboxes::new(
                    config,
                    view.clone(),
                    dispatcher.clone(),
                    source.clone(),
                    registry,
                )?,
                dispatcher,
                source,
            })
        } else {
            None
        };
        Ok(Self {
            consumers,
            view,
            max_inflight: config.downlink.max_inflight.max(1),
        })
    }

    /// Flushes the receipts' producer at shutdown, once [`Self::run`] returned.
    pub fn receipts_flusher(&self) -> Option<Flusher> {
        self.consumers
            .as_ref()
            .map(|c| Flusher::new(c.dispatcher.producer().clone(), "receipts"))
    }

    /// Once the presence view is ready (routing needs to know where devices
    /// are), consumes the downlink topic and this node's inbox, and takes
    /// over inboxes of nodes that are gone, until `drain` (or `shutdown`);
    /// then waits, until `shutdown`, for the commands in flight to settle
    /// (their devices acknowledge while the broker drains), and commits what
    /// is handled. What is still unsettled at `shutdown` stays uncommitted
    /// and is delivered again after the next rebalance.
    pub async fn run(self, drain: CancellationToken, shutdown: CancellationToken) {
        let Some(consumers) = self.consumers else {
            return;
        };
        tokio::select! {
            _ = drain.cancelled() => return,
            _ = self.view.ready() => {}
        }
        let max_inflight = self.max_inflight;
        let downlink = consume(
            consumers.source.clone(),
            CommandSource::Downlink,
            consumers.dispatcher.clone(),
            max_inflight,
            drain.clone(),
            shutdown.clone(),
        );
        let inbox = consume(
            consumers.source,
            CommandSource::Inbox,
            consumers.dispatcher,
            max_inflight,
            drain.clone(),
            shutdown.clone(),
        );
        let orphans = consumers.orphans.run(max_inflight, drain, shutdown);
        tokio::join!(downlink, inbox, orphans);
    }
}

/// Consumes commands from `source` until `drain`, settles each, stores
/// offsets as far as commands are handled, and commits at the end. A
/// consumer that fails for good (librdkafka's fatal errors, e.g. a static
/// member fenced after its session timed out) is replaced by a new one,
/// which resumes from the committed offsets.
pub(crate) async fn consume(
    factory: ConsumerSource,
    source: CommandSource,
    dispatcher: Arc<Dispatcher>,
    max_inflight: usize,
    drain: CancellationToken,
    shutdown: CancellationToken,
) {
    // Shared by every consumer of the source: the commands in flight stay
    // bounded across a replacement.
    let slots = Arc::new(Semaphore::new(max_inflight));
    let last = loop {
        let consumer = match factory.subscribe(&source) {
            Ok(consumer) => consumer,
            Err(error) => {
                warn!(?source, %error, "cannot start a command consumer; retrying");
                tokio::select! {
                    _ = drain.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        info!(?source, "consuming commands");
        match consume_with(&consumer, &dispatcher, &slots, &drain, &shutdown).await {
            Ok(()) => break consumer,
            Err(error) => {
                error!(?source, %error, "command consumer failed for good; starting a new one");
                tokio::select! {
                    _ = drain.cancelled() => break consumer,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    debug!(
        ?source,
        "command consumer stopped; waiting for the commands in flight"
    );
    let all = u32::try_from(max_inflight).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => {}
        _ = shutdown.cancelled() => {}
    }
    // A synchronous commit waits on the network: not on a runtime thread.
    let committed =
        tokio::task::spawn_blocking(move || last.commit_consumer_state(CommitMode::Sync)).await;
    if let Ok(Err(error)) = committed {
        debug!(%error, "final command offset commit");
    }
}

/// One consumer's loop: returns at `drain`, or with the fatal error that
/// ended it.
async fn consume_with(
    consumer: &Arc<CommandConsumer>,
    dispatcher: &Arc<Dispatcher>,
    slots: &Arc<Semaphore>,
    drain: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let tracker = Arc::new(Mutex::new(OffsetWatermark::new()));
    loop {
        let permit = tokio::select! {
            _ = drain.cancelled() => return Ok(()),
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return Ok(()) },
        };
        let message = tokio::select! {
            _ = drain.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message.detach(),
            Err(error) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    return Err(format!("{code:?}: {reason}"));
                }
                warn!(%error, "command consumer error");
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
        // Routed here, in partition order; only the wait runs apart.
        let trace = dispatch::command_trace(&message);
        let pending = dispatcher.start(&message, trace.as_ref());
        let (dispatcher, tracker, consumer, shutdown) = (
            dispatcher.clone(),
            tracker.clone(),
            consumer.clone(),
            shutdown.clone(),
        );
        dispatcher.inflight().inc();
        tokio::spawn(async move {
            let _permit = permit;
            let handled = match dispatcher.settle(pending, &shutdown).await {
                Settled::Receipt(receipt) => {
                    dispatcher
                        .write_receipt(&receipt, trace.as_ref(), &shutdown)
                        .await
                }
                Settled::Forwarded => true,
                Settled::Abandoned => false,
            };
            dispatcher.inflight().dec();
            if !handled {
                return; // shutting down: leave it for redelivery
            }
            let store = tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .complete(&topic, partition, offset);
            if let Some(next) = store {
                if let Err(error) = watermark::store(&*consumer, &topic, partition, next) {
                    debug!(%error, topic, partition, "offset not stored (partition revoked, or its consumer replaced)");
                }
            }
        });
    }
}
