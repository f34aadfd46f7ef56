//! Entry points into broker internals for the criterion benchmarks in
//! benches/ (feature `bench-internals`); not part of the supported API.

use crate::auth::Authenticator;
use crate::codec::QoS;
use crate::config::{AuthConfig, SharedSubscriptionStrategy};
use crate::router::Router;
use crate::session::{Session, SubOptions};
use std::sync::Arc;

/// A router filled with subscriptions.
#[derive(Default)]
pub struct RouterBench {
    router: Router,
    out: Vec<crate::router::Delivery>,
}

impl RouterBench {
    pub fn subscribe(&mut self, filter: &str, client_id: &str) {
        let session = Arc::new(Session::new_for_bench(client_id));
        let options = SubOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
        };
        self.router.subscribe(filter, &session, options);
    }

    /// How many sessions a message on `topic` goes to.
    pub fn route(&mut self, topic: &str) -> usize {
        self.out.clear();
        self.router
            .matches(topic, SharedSubscriptionStrategy::RoundRobin, &mut self.out);
        self.out.len()
    }
}

/// The device-mode ACL.
pub struct AclBench(Authenticator);

impl AclBench {
    pub fn new(config: &AuthConfig) -> Self {
        Self(Authenticator::new(config).expect("valid auth config"))
    }

    pub fn may_publish(&self, client_id: &str, topic: &str) -> bool {
        self.0.may_publish(client_id, topic)
    }

    pub fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.0.may_subscribe(client_id, filter)
    }
}

/// A router driven by client ids, for the fuzz targets in fuzz/: one session
/// per client id, so repeated subscriptions and unsubscriptions act on the
/// same session, as a connection's do.
#[derive(Default)]
pub struct RouterOps {
    router: Router,
    sessions: std::collections::HashMap<String, Arc<Session>>,
}

/// One session a message goes to, with the options merged over all of its
/// matching subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Matched {
    pub client_id: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
}

impl RouterOps {
    fn session(&mut self, client_id: &str) -> Arc<Session> {
        self.sessions
            .entry(client_id.to_owned())
            .or_insert_with(|| Arc::new(Session::new_for_bench(client_id)))
            .clone()
    }

    /// Subscribes (or updates the options of) `client_id` to `filter`; `qos` is taken mod 3.
    pub fn subscribe(
        &mut self,
        filter: &str,
        client_id: &str,
        qos: u8,
        no_local: bool,
        retain_as_published: bool,
    ) {
        let qos = match qos % 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let session = self.session(client_id);
        let options = SubOptions {
            qos,
            no_local,
            retain_as_published,
            id: None,
        };
        self.router.subscribe(filter, &session, options);
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, filter: &str, client_id: &str) -> bool {
        let session = self.session(client_id);
        self.router.unsubscribe(filter, &session)
    }

    /// The sessions a message on `topic` goes to, sorted by client id.
    pub fn matched(&mut self, topic: &str) -> Vec<Matched> {
        let mut out = Vec::new();
        self.router
            .matches(topic, SharedSubscriptionStrategy::RoundRobin, &mut out);
        let mut matched: Vec<Matched> = out
            .into_iter()
            .map(|delivery| Matched {
                client_id: delivery.session.client_id.to_string(),
                qos: delivery.options.qos as u8,
                no_local: delivery.options.no_local,
                retain_as_published: delivery.options.retain_as_published,
            })
            .collect();
        matched.sort();
        matched
    }
}

fn limits(max_topic_length: usize, max_topic_levels: usize) -> crate::config::LimitsConfig {
    crate::config::LimitsConfig {
        max_topic_length,
        max_topic_levels,
        ..Default::default()
    }
}

fn topic_refusal(e: crate::topic::TopicError) -> &'static str {
    match e {
        crate::topic::TopicError::Invalid => "invalid",
        crate::topic::TopicError::TooLong => "too_long",
        crate::topic::TopicError::TooManyLevels => "too_many_levels",
    }
}

/// `topic::check_name` with these limits (fuzz/).
pub fn check_topic_name(
    topic: &str,
    max_length: usize,
    max_levels: usize,
) -> Result<(), &'static str> {
    crate::topic::check_name(topic, &limits(max_length, max_levels)).map_err(topic_refusal)
}

/// `topic::check_filter` with these limits (fuzz/).
pub fn check_topic_filter(
    filter: &str,
    max_length: usize,
    max_levels: usize,
) -> Result<(), &'static str> {
    crate::topic::check_filter(filter, &limits(max_length, max_levels)).map_err(topic_refusal)
}

/// `topic::filter_matches` (fuzz/).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    crate::topic::filter_matches(filter, topic)
}

/// `topic::literal_prefix` (fuzz/).
pub fn literal_prefix(filter: &str) -> &str {
    crate::topic::literal_prefix(filter)
}

/// The retained store with count and byte caps and no expiry (fuzz/).
pub struct RetainedOps(crate::retained::RetainedStore);

impl RetainedOps {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self(crate::retained::RetainedStore::new(
            &crate::config::LimitsConfig {
                max_retained_messages: max_messages,
                max_retained_bytes: max_bytes,
                retained_expiry: std::time::Duration::ZERO,
                ..Default::default()
            },
        ))
    }

    /// Stores (an empty payload clears) the retained message of `topic`.
    pub fn retain(&self, topic: &str, payload: &[u8]) -> Result<(), &'static str> {
        let message = crate::session::Message::new(
            bytes::Bytes::copy_from_slice(topic.as_bytes()),
            bytes::Bytes::copy_from_slice(payload),
            true,
            QoS::AtMostOnce,
            None,
        );
        self.0.retain(topic, &message).map_err(|e| e.as_label())
    }

    /// The topics of up to `limit` retained messages matching `filter`, in the store's order.
    pub fn matching(&self, filter: &str, limit: usize) -> Vec<String> {
        self.0
            .matching(filter, QoS::AtMostOnce, limit)
            .into_iter()
            .map(|queued| String::from_utf8_lossy(&queued.message.topic).into_owned())
            .collect()
    }
}

/// Reads a PROXY protocol v2 header from the start of `bytes`, as a listener
/// with `proxy_protocol` on does (for the fuzzer): the terminal's address or
/// why the header was refused, and how many bytes the read consumed.
pub fn read_proxy_header(bytes: &[u8]) -> (Result<Option<std::net::SocketAddr>, String>, usize) {
    let mut rest = bytes;
    // Reads from a slice are always ready: no runtime needed.
    let result = futures::executor::block_on(crate::proxy_protocol::read_header(&mut rest));
    (result.map_err(|e| e.to_string()), bytes.len() - rest.len())
}

/// The largest PROXY v2 address block a listener reads.
pub const MAX_PROXY_ADDRESS_BLOCK: usize = crate::proxy_protocol::MAX_ADDRESS_BLOCK;

/// The TLS listener's stream (`tls/stream.rs`) after its handshake over `io`.
pub async fn tls_server<S>(
    config: Arc<rustls::ServerConfig>,
    io: S,
) -> std::io::Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let conn =
        rustls::server::UnbufferedServerConnection::new(config).map_err(std::io::Error::other)?;
    crate::tls::TlsStream::accept(io, conn).await
}
