//! Entry points into broker internals for the criterion benchmarks in
//! benches/ (feature `bench-internals`); not part of the supported API.

use crate::auth::Authenticator;
use crate::codec::QoS;
use crate::config::AuthConfig;
use crate::router::Router;
use crate::session::{Session, SubOptions};
use std::sync::Arc;

/// A router filled with subscriptions.
#[derive(Default)]
pub struct RouterBench {
    router: Router,
    out: Vec<(Arc<Session>, SubOptions)>,
}

impl RouterBench {
    pub fn subscribe(&mut self, filter: &str, client_id: &str) {
        let session = Arc::new(Session::new_for_bench(client_id));
        let options = SubOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
        };
        self.router.subscribe(filter, &session, options);
    }

    /// How many sessions a message on `topic` goes to.
    pub fn route(&mut self, topic: &str) -> usize {
        self.out.clear();
        self.router.matches(topic, &mut self.out);
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
    out: Vec<(Arc<Session>, SubOptions)>,
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
        self.out.clear();
        self.router.matches(topic, &mut self.out);
        let mut matched: Vec<Matched> = self
            .out
            .drain(..)
            .map(|(session, options)| Matched {
                client_id: session.client_id.to_string(),
                qos: options.qos as u8,
                no_local: options.no_local,
                retain_as_published: options.retain_as_published,
            })
            .collect();
        matched.sort();
        matched
    }
}
