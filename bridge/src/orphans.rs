//! Inboxes nobody consumes: a node that died or was scaled in may leave
//! forwarded commands in its inbox. Every node surveys the inbox topics
//! and their consumer groups; an inbox whose group has no member of its own
//! node is orphaned. Its node is marked gone in the presence view (its
//! devices count as offline, so commands for them wait where they are
//! instead of being forwarded to it), and one live node, chosen by
//! rendezvous hashing so all nodes agree without talking, joins the
//! orphan's group and handles its commands like its own inbox's: each is
//! delivered or forwarded to wherever its device reconnected. When the node
//! is back (a member of its own group again), the adopter leaves.
//!
//! Liveness is Kafka's: a node is a member of its inbox group until its
//! `session.timeout.ms` passed without a heartbeat. An inbox counts as
//! orphaned once it has had no member of its own for another session
//! timeout, so a node that is starting (its inbox topic exists a moment
//! before it joins) is not taken for gone: a dead node's inbox is taken
//! over about two session timeouts after its death.

use crate::consumers::{consumer_config, inbox_group, inbox_topic_prefix, ConsumerRole};
use crate::dispatch::Dispatcher;
use crate::downlink::{consume, CommandSource, ConsumerSource};
use crate::presence_view::PresenceView;
use crate::{BridgeError, KafkaConfig};
use herald_kafka::stats::with_statistics;
use prometheus::{IntGauge, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Marks client ids of adopters, so a survey tells them from the owner.
const ADOPTER_MARK: &str = "-adopted-";

/// Finds and takes over orphaned inboxes; see the module documentation.
pub(crate) struct OrphanInboxes {
    config: KafkaConfig,
    view: Arc<PresenceView>,
    dispatcher: Arc<Dispatcher>,
    /// For metadata and group queries only.
    admin: Arc<BaseConsumer>,
    source: ConsumerSource,
    adopted: IntGauge,
    gone: IntGauge,
}

/// One inbox and whether its own node consumes it.
#[derive(Debug, PartialEq, Eq)]
struct Inbox {
    node: String,
    owned: bool,
}

impl OrphanInboxes {
    pub(crate) fn new(
        config: &KafkaConfig,
        view: Arc<PresenceView>,
        dispatcher: Arc<Dispatcher>,
        source: ConsumerSource,
        registry: &Registry,
    ) -> Result<Self, BridgeError> {
        let adopted = IntGauge::new(
            "herald_cluster_adopted_inboxes",
            "Inboxes of gone nodes this node consumes.",
        )?;
        let gone = IntGauge::new(
            "herald_cluster_gone_nodes",
            "Nodes whose inbox has no consumer of their own (dead or scaled in).",
        )?;
        registry.register(Box::new(adopted.clone()))?;
        registry.register(Box::new(gone.clone()))?;
        Ok(Self {
            config: config.clone(),
            admin: Arc::new(survey_client(config)?),
            source,
            view,
            dispatcher,
            adopted,
            gone,
        })
    }

    /// Surveys every `orphan_check_interval` until `drain`; adopters stop
    /// then, and this returns once they committed.
    pub(crate) async fn run(
        self,
        max_inflight: usize,
        drain: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let mut adopters: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        let me = self.view.node().to_string();
        let mut unowned_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut tick = tokio::time::interval(self.config.cluster.orphan_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.cancelled() => break,
                _ = tick.tick() => {}
            }
            let inboxes = match self.survey().await {
                Ok(inboxes) => inboxes,
                Err(error) => {
                    warn!(%error, "cannot survey the inboxes");
                    continue;
                }
            };
            let live: BTreeSet<&str> = inboxes
                .iter()
                .filter(|i| i.owned)
                .map(|i| i.node.as_str())
                .chain([me.as_str()])
                .collect();
            let mut gone = 0;
            let now = tokio::time::Instant::now();
            unowned_since.retain(|node, _| inboxes.iter().any(|i| !i.owned && &i.node == node));
            for inbox in inboxes.iter().filter(|i| i.node != me) {
                // Unowned for a whole session timeout: a node that is
                // starting has its inbox topic a moment before it joins
                // its group, and a node restarting keeps its membership.
                let orphaned = !inbox.owned
                    && now.duration_since(*unowned_since.entry(inbox.node.clone()).or_insert(now))
                        >= self.config.cluster.session_timeout;
                gone += i64::from(orphaned);
                self.view.mark_gone(&inbox.node, orphaned);
                let mine = orphaned && adopter_of(&inbox.node, &live) == Some(me.as_str());
                match (mine, adopters.contains_key(&inbox.node)) {
                    (true, false) => {
                        info!(node = %inbox.node, "taking over the inbox of a gone node");
                        let adopter = self.adopt(&inbox.node, max_inflight, &drain, &shutdown);
                        adopters.insert(inbox.node.clone(), adopter);
                    }
                    (false, true) => {
                        if let Some((stop, task)) = adopters.remove(&inbox.node) {
                            info!(node = %inbox.node, "leaving the inbox of a node that is back");
                            stop.cancel();
                            let _ = task.await;
                        }
                    }
                    _ => {}
                }
            }
            self.gone.set(gone);
            self.adopted.set(adopters.len() as i64);
        }
        for (_, (stop, task)) in adopters {
            stop.cancel();
            let _ = task.await;
        }
    }

    fn adopt(
        &self,
        node: &str,
        max_inflight: usize,
        drain: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> (CancellationToken, JoinHandle<()>) {
        let stop = drain.child_token();
        let task = tokio::spawn(consume(
            self.source.clone(),
            CommandSource::Adopted(node.to_string()),
            self.dispatcher.clone(),
            max_inflight,
            stop.clone(),
            shutdown.clone(),
        ));
        (stop, task)
    }

    /// Every inbox topic, and whether a member of its node's own (not an
    /// adopter) is in its group.
    async fn survey(&self) -> Result<Vec<Inbox>, BridgeError> {
        let admin = self.admin.clone();
        let prefix = inbox_topic_prefix(&self.config);
        let config = self.config.clone();
        let surveyed = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let metadata = admin.fetch_metadata(None, timeout)?;
            let mut inboxes = Vec::new();
            for topic in metadata.topics() {
                let Some(node) = topic.name().strip_prefix(&prefix) else {
                    continue;
                };
                let groups = admin.fetch_group_list(Some(&inbox_group(&config, node)), timeout)?;
                let owned = groups.groups().iter().any(|group| {
                    group
                        .members()
                        .iter()
                        .any(|member| !member.client_id().contains(ADOPTER_MARK))
                });
                inboxes.push(Inbox {
                    node: node.to_string(),
                    owned,
                });
            }
            Ok::<_, BridgeError>(inboxes)
        })
        .await;
        surveyed.unwrap_or_else(|_| {
            Err(BridgeError::Config {
                key: "kafka.cluster".into(),
                reason: "inbox survey task failed".into(),
            })
        })
    }
}

/// A client for metadata and group queries. It is never polled, so it must
/// not produce events nobody takes (statistics would pile up in its queue).
fn survey_client(config: &KafkaConfig) -> Result<BaseConsumer, BridgeError> {
    let mut client = consumer_config(config, ConsumerRole::PresenceView)?;
    with_statistics(&mut client, Duration::ZERO);
    Ok(client.create()?)
}

/// The live node that takes over `gone`'s inbox: the highest rendezvous
/// hash of (gone, live), the same on every node that sees the same nodes.
fn adopter_of<'a>(gone: &str, live: &BTreeSet<&'a str>) -> Option<&'a str> {
    live.iter().copied().max_by_key(|node| {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, format!("{gone}\0{node}").as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_picks_the_same_adopter_and_spreads_them() {
        let live: BTreeSet<&str> = ["herald-0", "herald-1", "herald-2"].into();
        let mut chosen = BTreeSet::new();
        for gone in 3..40 {
            let gone = format!("herald-{gone}");
            let adopter = adopter_of(&gone, &live).unwrap();
            assert_eq!(adopter_of(&gone, &live.clone()), Some(adopter));
            chosen.insert(adopter);
        }
        assert_eq!(chosen.len(), 3, "adoptions spread over the live nodes");
        assert_eq!(adopter_of("x", &BTreeSet::new()), None);
    }
}
