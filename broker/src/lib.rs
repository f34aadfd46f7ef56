//! Herald's MQTT broker core.
//!
//! MQTT 3.1.1 and 5.0 on one port, device authentication and per-device topic
//! ACLs, sessions, routing, retained and will messages, limits and metrics.
//! It knows nothing of Kafka: uplinks leave through an [`UplinkSink`], whose
//! acknowledgement gates the PUBACK.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_broker::BrokerError> {
//! use herald_broker::{Broker, BrokerConfig, LocalOnly};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let broker = Broker::start(BrokerConfig::default(), std::sync::Arc::new(LocalOnly),
//!                            &prometheus::Registry::new(), shutdown.clone()).await?;
//! broker.wait().await;
//! # Ok(()) }
//! ```

mod auth;
pub mod codec;
mod config;
mod connection;
mod io;
mod metrics;
mod router;
mod server;
mod session;
mod sink;

pub use config::{AuthConfig, AuthMode, BrokerConfig, ConfigError, TlsConfig};
pub use server::{Broker, BrokerError};
pub use sink::{LocalOnly, Uplink, UplinkAck, UplinkError, UplinkSink};

use auth::Authenticator;
use codec::QoS;
use metrics::Metrics;
use router::Router;
use session::{Message, Offer, Queued, Registry, Session};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// State shared by every connection task.
pub(crate) struct Shared {
    config: BrokerConfig,
    auth: Authenticator,
    registry: Registry,
    router: Router,
    sink: Arc<dyn UplinkSink>,
    metrics: Metrics,
    uplink_permits: Arc<Semaphore>,
    max_connections: usize,
    /// Connections past CONNECT.
    connected: AtomicUsize,
    /// Bumped when the revocation list changes, so connections re-check.
    revocations: AtomicU64,
    shutdown: CancellationToken,
}

impl Shared {
    fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::Relaxed)
    }

    /// Delivers a message to the local subscribers of `topic` and keeps it if retained.
    fn route(&self, from: Option<&Arc<Session>>, topic: &str, message: &Message, qos: QoS) {
        if message.retain && self.config.retain_available {
            self.router.retain(topic, message);
        }
        let mut targets = Vec::new();
        self.router.matches(topic, &mut targets);
        for (session, options) in targets {
            if options.no_local && from.is_some_and(|f| Arc::ptr_eq(f, &session)) {
                continue;
            }
            let queued = Queued {
                message: message.clone(),
                qos: if (options.qos as u8) < (qos as u8) {
                    options.qos
                } else {
                    qos
                },
                // MQTT 3.1.1 §3.3.1.3: forwarded messages lose the retain flag
                // unless the subscriber asked for it (MQTT 5 Retain As Published).
                retain: options.retain_as_published && message.retain,
            };
            match session.offer(queued, self.config.max_queued_messages) {
                Offer::Queued => {}
                Offer::DroppedOldest => self
                    .metrics
                    .messages_dropped
                    .with_label_values(&["queue_full"])
                    .inc(),
                Offer::DroppedOffline => self
                    .metrics
                    .messages_dropped
                    .with_label_values(&["offline_qos0"])
                    .inc(),
            }
        }
    }

    /// Publishes a will: to local subscribers, and to the sink without anyone
    /// waiting for the acknowledgement.
    fn publish_will(&self, session: &Arc<Session>, topic: &Arc<str>, message: &Message, qos: QoS) {
        self.route(Some(session), topic, message, qos);
        if !self.sink.wants(topic) {
            return;
        }
        let uplink = Uplink {
            client_id: session.client_id.clone(),
            topic: topic.clone(),
            payload: message.payload.clone(),
            qos: qos as u8,
            retain: message.retain,
            received_at: std::time::SystemTime::now(),
            user_properties: Vec::new(),
        };
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
