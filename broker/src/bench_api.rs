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
