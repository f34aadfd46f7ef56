//! Herald's MQTT broker core.
//!
//! MQTT 3.1.1 and 5.0 on one port, device authentication and per-device topic
//! ACLs, sessions, routing, retained and will messages, limits and metrics.
//! It knows nothing of Kafka: uplinks leave through an [`UplinkSink`], whose
//! acknowledgement gates the PUBACK.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_broker::BrokerError> {
//! use herald_broker::{Broker, BrokerConfig, BrokerHooks};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let broker = Broker::start(BrokerConfig::default(), BrokerHooks::default(),
//!                            &prometheus::Registry::new(), shutdown.clone()).await?;
//! broker.wait().await;
//! # Ok(()) }
//! ```

mod auth;
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_api;
pub mod codec;
mod compact;
mod config;
mod connection;
mod downlink;
mod events;
mod flapping;
mod io;
mod metrics;
mod proxy_protocol;
mod retained;
mod router;
mod server;
mod session;
mod sink;
mod tls;
mod topic;
mod websocket;
mod wills;

pub use config::{
    AdmissionConfig, AuthConfig, AuthMode, BrokerConfig, ConfigError, LimitsConfig,
    QueueFullPolicy, SharedSubscriptionStrategy, TlsConfig, WebSocketConfig,
};
pub use downlink::{DeliveryOutcome, DeliveryTicket, Downlink, DownlinkRefusal};
pub use events::{DisconnectReason, NoSessionEvents, SessionEvents};
pub use server::{Broker, BrokerError};
pub use sink::{LocalOnly, Rejection, Uplink, UplinkAck, UplinkError, UplinkSink};

use auth::Authenticator;
use codec::QoS;
use downlink::{DownlinkTag, Mailbox};
use flapping::FlappingDetector;
use metrics::Metrics;
use retained::RetainedStore;
use router::{Delivery, Router};
use session::{Message, Offer, Queued, Registry, Session, SubOptions};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wills::DelayedWills;

/// State shared by every connection task.
pub(crate) struct Shared {
    config: BrokerConfig,
    auth: Authenticator,
    registry: Registry,
    router: Router,
    retained: RetainedStore,
    wills: DelayedWills,
    flapping: FlappingDetector,
    /// Log lines about refused CONNECTs, across all clients: a client
    /// looping on a bad password must not flood the log (the metrics count
    /// every refusal).
    admission_log: governor::DefaultDirectRateLimiter,
    sink: Arc<dyn UplinkSink>,
    events: Arc<dyn SessionEvents>,
    mailbox: Mailbox,
    metrics: Metrics,
    uplink_permits: Arc<Semaphore>,
    max_connections: usize,
    /// Connections past CONNECT.
    connected: AtomicUsize,
    /// Bumped when the revocation list changes, so connections re-check.
    revocations: AtomicU64,
    /// Cancelled when a graceful shutdown begins: listeners stop accepting
    /// and connections close, spread over the drain time. A child of
    /// `shutdown`, so it is cancelled by a plain shutdown too.
    drain: CancellationToken,
    shutdown: CancellationToken,
    /// [`Stopping`] as a number: what connections read on their wake-up
    /// (an atomic load, where the tokens take a lock).
    stopping: std::sync::atomic::AtomicU8,
}

/// How far the node is in stopping; connections learn of each step
/// through their wake-up, so that their tasks hold no cancellation future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stopping {
    No = 0,
    /// A graceful shutdown began: connections close over the drain time.
    Draining = 1,
    /// Connections close now.
    Now = 2,
}

/// What the broker is plugged into: where uplinks go and who hears about
/// sessions. The defaults make a plain MQTT broker.
pub struct BrokerHooks {
    pub uplinks: Arc<dyn UplinkSink>,
    pub session_events: Arc<dyn SessionEvents>,
}

impl Default for BrokerHooks {
    fn default() -> Self {
        Self {
            uplinks: Arc::new(LocalOnly),
            session_events: Arc::new(NoSessionEvents),
        }
    }
}

/// A cheap handle for delivering downlinks into a running broker.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
}

impl BrokerHandle {
    /// Hands a downlink to its device. The ticket settles when the device
    /// acknowledged it, when it expired, or at once if it is refused.
    pub fn deliver(&self, downlink: Downlink) -> DeliveryTicket {
        let shared = &self.shared;
        let device_id = downlink.device_id.clone();
        let refused = |reason| DeliveryTicket::settled(DeliveryOutcome::Refused(reason));
        let valid_id = if shared.auth.is_open() {
            !device_id.is_empty() && !device_id.contains(['+', '#', '/'])
        } else {
            herald_identity::validate_device_id(&device_id).is_ok()
        };
        if !valid_id {
            return refused(DownlinkRefusal::InvalidDeviceId);
        }
        if shared.auth.is_revoked(&device_id) {
            return refused(DownlinkRefusal::Revoked);
        }
        if topic::check_name(&downlink.topic, &shared.config.limits).is_err()
            || !shared.auth.is_downlink_topic(&device_id, &downlink.topic)
        {
            return refused(DownlinkRefusal::TopicOutsideNamespace);
        }
        let (tag, ticket) = DownlinkTag::new(downlink.expires_at);
        let (topic, queued) = downlink::queued(downlink, tag);
        // Through the mailbox, so downlinks keep their order whether or not
        // the device has subscribed yet.
        shared.mailbox.push(
            &device_id,
            &topic,
            queued,
            shared.config.max_queued_messages,
            shared.config.queue_full_policy,
        );
        if let Some(session) = shared.registry.session(&device_id) {
            shared.flush_mailbox(&session);
        }
        ticket
    }

    /// Whether `client_id` has a connection to this node now.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.shared
            .registry
            .session(client_id)
            .is_some_and(|session| session.lock().attachment.is_some())
    }

    /// Another node accepted a connection for `client_id` with
    /// `generation`: if this node's session of that client is older, its
    /// connection closes (taken over, MQTT 5 reason 0x8E) and the session
    /// ends here. Downlinks it held settle with no outcome, so their sender
    /// hands them on. Returns whether a session was ended.
    pub fn take_over(&self, client_id: &str, generation: u64) -> bool {
        let shared = &self.shared;
        let Some(session) = shared.registry.evict_older(client_id, generation) else {
            return false;
        };
        shared.router.remove_session(&session);
        shared.metrics.sessions.dec();
        tracing::debug!(
            client_id,
            "session taken over by a connection on another node"
        );
        true
    }
}

pub(crate) trait MinQos {
    fn min_qos(self, other: Self) -> Self;
}

impl MinQos for QoS {
    fn min_qos(self, other: Self) -> Self {
        if (other as u8) < (self as u8) {
            other
        } else {
            self
        }
    }
}

impl Shared {
    /// Moves the downlinks waiting for `session`'s client into its queue,
    /// in arrival order, as far as its subscriptions now match them.
    fn flush_mailbox(&self, session: &Arc<Session>) {
        let filters: Vec<(Box<str>, SubOptions)> = session.lock().subscriptions.clone();
        if filters.is_empty() {
            return;
        }
        fn matching<'a>(
            filters: &'a [(Box<str>, SubOptions)],
            topic: &'a str,
        ) -> impl Iterator<Item = &'a SubOptions> + 'a {
            filters
                .iter()
                .filter(move |(filter, _)| topic::filter_matches(filter, topic))
                .map(|(_, options)| options)
        }
        for queued in self.mailbox.take_matching(&session.client_id, |topic| {
            matching(&filters, topic).next().is_some()
        }) {
            // The highest granted QoS and every identifier, in one pass.
            let mut granted = QoS::AtMostOnce;
            let mut subscription_ids = Vec::new();
            let topic = String::from_utf8_lossy(&queued.message.topic);
            for options in matching(&filters, &topic) {
                if options.qos as u8 > granted as u8 {
                    granted = options.qos;
                }
                subscription_ids.extend(options.id.map(|id| id.get() as usize));
            }
            let qos = granted.min_qos(queued.message.qos);
            let subscription_ids = subscription_ids.into_boxed_slice();
            let offer = session.offer(
                session::Queued {
                    qos,
                    subscription_ids,
                    ..queued
                },
                self.config.max_queued_messages,
                self.config.queue_full_policy,
            );
            self.count_offer(&offer);
        }
    }

    /// Hands what `session` got through shared subscriptions and did not
    /// acknowledge to other members of the same groups (MQTT 5 §4.8.2): a
    /// worker that goes away does not hold its share back. What no other
    /// member can take stays queued for this session's return. QoS 2
    /// messages past PUBREC stay: the client has them.
    fn redistribute_shared(&self, session: &Arc<Session>) {
        /// Takes the items `pred` picks out of `items`, keeping the others' order.
        fn take_where<T>(items: &mut VecDeque<T>, pred: impl Fn(&T) -> bool) -> VecDeque<T> {
            if !items.iter().any(&pred) {
                return VecDeque::new();
            }
            let (taken, kept) = std::mem::take(items).into_iter().partition(|i| pred(i));
            *items = kept;
            taken
        }
        let taken: Vec<Queued> = {
            let mut state = session.lock();
            let inflight = take_where(&mut state.inflight, |i| {
                i.stage == session::OutboundStage::Published && i.queued.shared.is_some()
            });
            let queued = take_where(&mut state.queue, |q| q.shared.is_some());
            inflight
                .into_iter()
                .map(|i| i.queued)
                .chain(queued)
                .collect()
        };
        if taken.is_empty() {
            return;
        }
        // Without this session's lock: picking a member locks theirs.
        let strategy = self.config.shared_subscription_strategy;
        let mut stays = Vec::new();
        for queued in taken {
            let key = queued.shared.clone().unwrap_or_default();
            match self.router.other_member(&key, session, strategy) {
                Some(member) => {
                    self.metrics.shared_redeliveries.inc();
                    let offer = member.session.offer(
                        Queued {
                            subscription_ids: member.subscription_ids.into_boxed_slice(),
                            ..queued
                        },
                        self.config.max_queued_messages,
                        self.config.queue_full_policy,
                    );
                    self.count_offer(&offer);
                }
                None => stays.push(queued),
            }
        }
        let mut state = session.lock();
        for queued in stays.into_iter().rev() {
            state.queue.push_front(queued);
        }
    }

    /// How long after the start of a drain connection `generation` closes:
    /// spread evenly over `min(drain_period, connections / drain_rate)`, so
    /// the fleet reconnects elsewhere as a stream rather than a burst.
    fn drain_delay(&self, generation: u64) -> std::time::Duration {
        let connections = self.connected.load(Ordering::Relaxed) as f64;
        let window = (connections / f64::from(self.config.drain_rate.max(1)))
            .min(self.config.drain_period.as_secs_f64());
        // Generations are consecutive; a Fibonacci hash scatters them over [0, 1).
        let spread =
            (generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        std::time::Duration::from_secs_f64(window * spread)
    }

    pub(crate) fn stopping(&self) -> Stopping {
        match self.stopping.load(Ordering::Acquire) {
            0 => Stopping::No,
            1 => Stopping::Draining,
            _ => Stopping::Now,
        }
    }

    /// Moves to `step` of stopping and wakes every connection to act on it.
    fn stop(&self, step: Stopping) {
        self.stopping.fetch_max(step as u8, Ordering::AcqRel);
        self.registry
            .for_each_attached(|_, attachment| attachment.wake.notify_one());
    }

    fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::Relaxed)
    }

    /// Counts what a full queue did to an offered message.
    fn count_offer(&self, offer: &Offer) {
        let reason = match offer {
            Offer::Queued => return,
            Offer::QueuedFull => {
                self.metrics.backpressure_waits.inc();
                return;
            }
            Offer::DroppedOldest => "queue_full",
            Offer::DroppedOffline => "offline_qos0",
            Offer::RefusedFull => "offline_queue_full",
        };
        self.metrics
            .messages_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Delivers a message to the local subscribers of `topic` and keeps it
    /// if retained. Returns the subscribers whose queue it filled: under
    /// backpressure the publisher's acknowledgement waits for their room.
    fn route(
        &self,
        from: Option<&Arc<Session>>,
        topic: &str,
        message: &Message,
    ) -> Vec<Arc<Session>> {
        if message.retain && self.config.retain_enabled() {
            if let Err(refused) = self.retained.retain(topic, message) {
                self.metrics
                    .limits_exceeded
                    .with_label_values(&[refused.as_label()])
                    .inc();
            }
        }
        let mut congested = Vec::new();
        let strategy = self.config.shared_subscription_strategy;
        let mut deliveries = Vec::new();
        self.router.matches(topic, strategy, &mut deliveries);
        for delivery in deliveries {
            let Delivery {
                session,
                options,
                subscription_ids,
                shared,
            } = delivery;
            // [MQTT-3.8.3-3]: not back to its own publisher if it said No Local.
            if options.no_local && from.is_some_and(|f| Arc::ptr_eq(f, &session)) {
                continue;
            }
            let queued = Queued {
                message: message.clone(),
                // [MQTT-3.8.4-8]: the lower of the message's and the subscription's QoS.
                qos: options.qos.min_qos(message.qos),
                // MQTT 3.1.1 §3.3.1.3, [MQTT-3.3.1-12], [MQTT-3.3.1-13]: forwarded
                // messages lose the retain flag unless the subscriber asked
                // for it (MQTT 5 Retain As Published).
                retain: options.retain_as_published && message.retain,
                downlink: None,
                subscription_ids: subscription_ids.into_boxed_slice(),
                shared,
            };
            let offer = session.offer(
                queued,
                self.config.max_queued_messages,
                self.config.queue_full_policy,
            );
            self.count_offer(&offer);
            if let Offer::QueuedFull = offer {
                congested.push(session);
            }
        }
        congested
    }

    /// Publishes a will: to local subscribers, and to the sink without anyone
    /// waiting for the acknowledgement.
    ///
    /// Its properties go with it [MQTT-3.1.3-9], and its Message Expiry
    /// Interval counts from now, when it is published.
    fn publish_will(&self, session: &Arc<Session>, topic: &Arc<str>, will: &Message) {
        let message = Message::new(
            will.topic.clone(),
            will.payload.clone(),
            will.retain,
            will.qos,
            will.properties.clone(),
        );
        // Nobody waits for a will's acknowledgement, so nothing to hold back.
        self.route(Some(session), topic, &message);
        if !self.sink.wants(topic) {
            return;
        }
        let uplink = message.to_uplink(session.client_id.clone(), topic.clone(), false);
        if let Some(ack) = self.sink.submit(uplink) {
            let client_id = session.client_id.clone();
            tokio::spawn(async move {
                if let Err(error) = ack.await {
                    tracing::warn!(client_id = %client_id, %error, "will message not delivered");
                }
            });
        }
    }
}
