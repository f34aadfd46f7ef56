//! Topic routing: which sessions receive a published message.
//!
//! Exact subscriptions live in a hash map (one lookup per publish); only
//! filters with `+` or `#` go into a trie, walked level by level, so a
//! publish costs O(levels) however many devices are subscribed. Filters
//! reach the router only through `topic::check_filter`, so the trie's depth,
//! and the recursion that walks it, are bounded by `max_topic_levels`.
//!
//! Shared subscriptions (`$share/<group>/<filter>`, MQTT 5 §4.8.2) are kept
//! apart, one entry per group and filter: each message matching one goes to
//! a single member, chosen by the configured strategy. They are few (backend
//! workers), so they are matched by a scan of the groups.

use crate::codec::QoS;
use crate::compact;
use crate::config::SharedSubscriptionStrategy;
use crate::session::{Session, SubOptions};
use crate::topic::{filter_matches, split_shared};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Clone)]
struct Subscriber {
    session: Arc<Session>,
    options: SubOptions,
}

/// One session a published message goes to, and how.
pub(crate) struct Delivery {
    pub session: Arc<Session>,
    /// Its matching subscriptions' options, merged: the highest QoS
    /// [MQTT-3.3.4-2], Retain As Published if any asked for it.
    pub options: SubOptions,
    /// The Subscription Identifiers of all its matching subscriptions
    /// [MQTT-3.3.4-3].
    pub subscription_ids: Vec<usize>,
    /// The shared subscription it was chosen through, if any.
    pub shared: Option<Arc<str>>,
}

impl Delivery {
    fn of(subscriber: &Subscriber, shared: Option<&Arc<str>>) -> Self {
        Self {
            session: subscriber.session.clone(),
            options: subscriber.options,
            subscription_ids: subscriber
                .options
                .id
                .map(|id| vec![id.get() as usize])
                .unwrap_or_default(),
            shared: shared.cloned(),
        }
    }
}

/// A trie node's children. Most nodes have one or a few (below a device's
/// id: `down`, `up`), and a hash map's smallest table costs over 400 bytes
/// per node, so a few children are a short list, searched in order; past
/// [`FEW_CHILDREN`] (the level of device ids) they move to a hash map.
enum Children {
    Few(Vec<(Box<str>, Node)>),
    Many(HashMap<Box<str>, Node>),
}

const FEW_CHILDREN: usize = 8;

impl Default for Children {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Self::Few(list) => list.is_empty(),
            Self::Many(map) => map.is_empty(),
        }
    }

    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Self::Few(list) => list.iter().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Self::Many(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Self::Few(list) => list.iter_mut().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Self::Many(map) => map.get_mut(level),
        }
    }

    /// The child for `level`, created if missing.
    fn entry(&mut self, level: &str) -> &mut Node {
        if let Self::Few(list) = self {
            if list.len() >= FEW_CHILDREN && !list.iter().any(|(l, _)| **l == *level) {
                *self = Self::Many(std::mem::take(list).into_iter().collect());
            }
        }
        match self {
            Self::Few(list) => {
                let at = match list.iter().position(|(l, _)| **l == *level) {
                    Some(at) => at,
                    None => {
                        compact::push(list, (level.into(), Node::default()));
                        list.len() - 1
                    }
                };
                &mut list[at].1
            }
            Self::Many(map) => map.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Self::Few(list) => list.retain(|(l, _)| **l != *level),
            Self::Many(map) => {
                map.remove(level);
            }
        }
    }
}

#[derive(Default)]
struct Node {
    children: Children,
    /// Subscriptions whose filter ends at this node.
    here: Vec<Subscriber>,
    /// Subscriptions whose filter ends with `#` below this node.
    multi: Vec<Subscriber>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.multi.is_empty()
    }
}

/// The members of one shared subscription.
struct SharedGroup {
    /// The whole `$share/<group>/<filter>`, as subscribed.
    key: Arc<str>,
    filter: Box<str>,
    members: Vec<Subscriber>,
    /// Round-robin position.
    next: AtomicUsize,
}

impl SharedGroup {
    /// The member that gets the next message: among the connected ones
    /// (other than `exclude`), by `strategy`; if none is connected, one that
    /// is offline, whose session keeps QoS 1/2 messages for its return.
    fn pick(
        &self,
        strategy: SharedSubscriptionStrategy,
        exclude: Option<&Arc<Session>>,
    ) -> Option<&Subscriber> {
        let eligible = |s: &&Subscriber| exclude.is_none_or(|e| !Arc::ptr_eq(e, &s.session));
        match strategy {
            SharedSubscriptionStrategy::RoundRobin => {
                let count = self.members.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let in_turn = || {
                    (0..count)
                        .map(move |i| &self.members[(start + i) % count])
                        .filter(eligible)
                };
                in_turn()
                    .find(|s| s.session.lock().attachment.is_some())
                    .or_else(|| in_turn().next())
            }
            SharedSubscriptionStrategy::LeastBusy => self
                .members
                .iter()
                .filter(eligible)
                .filter_map(|s| {
                    let state = s.session.lock();
                    let load = state.queue.len() + state.inflight.len();
                    state.attachment.is_some().then_some((load, s))
                })
                .min_by_key(|(load, _)| *load)
                .map(|(_, s)| s)
                .or_else(|| self.members.iter().find(eligible)),
        }
    }
}

/// Subscriptions, exact, wildcard and shared.
#[derive(Default)]
pub(crate) struct Router {
    exact: DashMap<Box<str>, Vec<Subscriber>>,
    wildcard: RwLock<Node>,
    shared: RwLock<Vec<SharedGroup>>,
    /// `shared.len()`, read without the lock: most brokers have no shared
    /// subscription, and every publish asks.
    shared_groups: AtomicUsize,
}

fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

fn upsert(list: &mut Vec<Subscriber>, session: &Arc<Session>, options: SubOptions) {
    match list.iter_mut().find(|s| Arc::ptr_eq(&s.session, session)) {
        Some(existing) => existing.options = options,
        None => compact::push(
            list,
            Subscriber {
                session: session.clone(),
                options,
            },
        ),
    }
}

fn remove(list: &mut Vec<Subscriber>, session: &Arc<Session>) -> bool {
    let before = list.len();
    list.retain(|s| !Arc::ptr_eq(&s.session, session));
    list.len() != before
}

impl Router {
    /// Adds or updates a subscription; `filter` was checked, and a shared
    /// one (`$share/...`) split, by the caller.
    pub fn subscribe(&self, filter: &str, session: &Arc<Session>, options: SubOptions) {
        if let Some(Ok((_, inner))) = split_shared(filter) {
            let mut groups = self.shared.write().unwrap_or_else(|e| e.into_inner());
            match groups.iter_mut().find(|g| &*g.key == filter) {
                Some(group) => upsert(&mut group.members, session, options),
                None => groups.push(SharedGroup {
                    key: filter.into(),
                    filter: inner.into(),
                    members: vec![Subscriber {
                        session: session.clone(),
                        options,
                    }],
                    next: AtomicUsize::new(0),
                }),
            }
            self.shared_groups.store(groups.len(), Ordering::Release);
            return;
        }
        if !is_wildcard(filter) {
            upsert(
                &mut self.exact.entry(filter.into()).or_default(),
                session,
                options,
            );
            return;
        }
        let mut root = self.wildcard.write().unwrap_or_else(|e| e.into_inner());
        let mut node = &mut *root;
        for level in filter.split('/') {
            if level == "#" {
                upsert(&mut node.multi, session, options);
                return;
            }
            node = node.children.entry(level);
        }
        upsert(&mut node.here, session, options);
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, session: &Arc<Session>) -> bool {
        if filter.starts_with("$share/") {
            let mut groups = self.shared.write().unwrap_or_else(|e| e.into_inner());
            let Some(at) = groups.iter().position(|g| &*g.key == filter) else {
                return false;
            };
            let removed = remove(&mut groups[at].members, session);
            if groups[at].members.is_empty() {
                groups.swap_remove(at);
            }
            self.shared_groups.store(groups.len(), Ordering::Release);
            return removed;
        }
        if !is_wildcard(filter) {
            let removed = self
                .exact
                .get_mut(filter)
                .is_some_and(|mut list| remove(&mut list, session));
            self.exact.remove_if(filter, |_, list| list.is_empty());
            return removed;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let mut root = self.wildcard.write().unwrap_or_else(|e| e.into_inner());
        fn walk(node: &mut Node, levels: &[&str], session: &Arc<Session>) -> bool {
            match levels {
                [] => remove(&mut node.here, session),
                ["#"] => remove(&mut node.multi, session),
                [first, rest @ ..] => {
                    let Some(child) = node.children.get_mut(first) else {
                        return false;
                    };
                    let removed = walk(child, rest, session);
                    if child.is_empty() {
                        node.children.remove(first);
                    }
                    removed
                }
            }
        }
        walk(&mut root, &levels, session)
    }

    /// Removes all of a session's subscriptions (it ended or was discarded).
    pub fn remove_session(&self, session: &Arc<Session>) {
        let filters: Vec<Box<str>> = session
            .lock()
            .subscriptions
            .iter()
            .map(|(f, _)| f.clone())
            .collect();
        for filter in filters {
            self.unsubscribe(&filter, session);
        }
    }

    /// Appends to `out` the sessions a message on `topic` goes to: each
    /// session once for its own subscriptions, plus one member of every
    /// shared subscription that matches.
    pub fn matches(
        &self,
        topic: &str,
        strategy: SharedSubscriptionStrategy,
        out: &mut Vec<Delivery>,
    ) {
        if let Some(list) = self.exact.get(topic) {
            out.extend(list.iter().map(|s| Delivery::of(s, None)));
        }
        {
            let root = self.wildcard.read().unwrap_or_else(|e| e.into_inner());
            if !root.is_empty() {
                let levels: Vec<&str> = topic.split('/').collect();
                // Wildcards at the first level never match topics starting with $.
                let system = topic.starts_with('$');
                collect(&root, &levels, system, out);
            }
        }
        if out.len() > 1 {
            out.sort_by_key(|d| Arc::as_ptr(&d.session) as usize);
            out.dedup_by(|later, first| {
                if !Arc::ptr_eq(&later.session, &first.session) {
                    return false;
                }
                first.options.qos = first.options.qos.max_qos(later.options.qos);
                first.options.retain_as_published |= later.options.retain_as_published;
                first.options.no_local &= later.options.no_local;
                first.subscription_ids.append(&mut later.subscription_ids);
                true
            });
        }
        if self.shared_groups.load(Ordering::Acquire) == 0 {
            return;
        }
        let groups = self.shared.read().unwrap_or_else(|e| e.into_inner());
        for group in groups.iter().filter(|g| filter_matches(&g.filter, topic)) {
            if let Some(member) = group.pick(strategy, None) {
                out.push(Delivery::of(member, Some(&group.key)));
            }
        }
    }

    /// Another member of the shared subscription `key` than `leaving`, for a
    /// message `leaving` did not acknowledge.
    pub fn other_member(
        &self,
        key: &str,
        leaving: &Arc<Session>,
        strategy: SharedSubscriptionStrategy,
    ) -> Option<Delivery> {
        let groups = self.shared.read().unwrap_or_else(|e| e.into_inner());
        let group = groups.iter().find(|g| &*g.key == key)?;
        let member = group.pick(strategy, Some(leaving))?;
        Some(Delivery::of(member, Some(&group.key)))
    }
}

fn collect(node: &Node, levels: &[&str], system: bool, out: &mut Vec<Delivery>) {
    // `a/#` also matches `a` itself.
    if !system {
        out.extend(node.multi.iter().map(|s| Delivery::of(s, None)));
    }
    let Some((first, rest)) = levels.split_first() else {
        out.extend(node.here.iter().map(|s| Delivery::of(s, None)));
        return;
    };
    if let Some(child) = node.children.get(first) {
        collect(child, rest, false, out);
    }
    if !system {
        if let Some(child) = node.children.get("+") {
            collect(child, rest, false, out);
        }
    }
}

trait MaxQos {
    fn max_qos(self, other: Self) -> Self;
}

impl MaxQos for QoS {
    fn max_qos(self, other: Self) -> Self {
        if (other as u8) > (self as u8) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    const RR: SharedSubscriptionStrategy = SharedSubscriptionStrategy::RoundRobin;

    fn session(id: &str) -> Arc<Session> {
        crate::session::tests_support::session(id)
    }

    fn ids(router: &Router, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        router.matches(topic, RR, &mut out);
        let mut ids: Vec<String> = out
            .iter()
            .map(|d| d.session.client_id.to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn routes_exact_and_wildcards_once_per_session() {
        let router = Router::default();
        let (a, b, c) = (session("a"), session("b"), session("c"));
        router.subscribe("devices/1/down/cmd", &a, opts(QoS::AtMostOnce));
        router.subscribe("devices/1/down/#", &a, opts(QoS::AtLeastOnce));
        router.subscribe("devices/+/down/cmd", &b, opts(QoS::AtLeastOnce));
        router.subscribe("#", &c, opts(QoS::AtMostOnce));
        let mut out = Vec::new();
        router.matches("devices/1/down/cmd", RR, &mut out);
        assert_eq!(out.len(), 3);
        let a_opts = out
            .iter()
            .find(|d| Arc::ptr_eq(&d.session, &a))
            .unwrap()
            .options;
        assert_eq!(a_opts.qos, QoS::AtLeastOnce, "highest granted QoS wins");
        assert_eq!(ids(&router, "devices/2/down/cmd"), ["b", "c"]);
        assert_eq!(ids(&router, "$SYS/broker"), Vec::<String>::new());

        assert!(router.unsubscribe("devices/1/down/#", &a));
        assert!(!router.unsubscribe("devices/1/down/#", &a));
        assert!(router.unsubscribe("#", &c));
        assert_eq!(ids(&router, "devices/1/down/cmd"), ["a", "b"]);
        assert!(router.unsubscribe("devices/+/down/cmd", &b));
        assert!(
            router.wildcard.read().unwrap().is_empty(),
            "empty trie branches are pruned"
        );
    }

    #[test]
    fn every_matching_subscription_identifier_is_returned() {
        // [MQTT-3.3.4-3]: one PUBLISH carrying the identifiers of all the
        // session's matching subscriptions.
        let router = Router::default();
        let a = session("a");
        let with_id = |qos, id| SubOptions {
            id: std::num::NonZeroU32::new(id),
            ..opts(qos)
        };
        router.subscribe("t/1", &a, with_id(QoS::AtMostOnce, 7));
        router.subscribe("t/+", &a, with_id(QoS::AtLeastOnce, 9));
        router.subscribe("t/#", &a, with_id(QoS::AtMostOnce, 0));
        let mut out = Vec::new();
        router.matches("t/1", RR, &mut out);
        assert_eq!(out.len(), 1);
        let mut ids = out[0].subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, [7, 9]);
        assert_eq!(out[0].options.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn a_shared_subscription_gives_each_message_to_one_member_in_turn() {
        let router = Router::default();
        let (a, b, plain) = (session("a"), session("b"), session("p"));
        for s in [&a, &b] {
            router.subscribe("$share/g/jobs/+", s, opts(QoS::AtLeastOnce));
        }
        router.subscribe("jobs/+", &plain, opts(QoS::AtLeastOnce));
        let mut got = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            router.matches("jobs/1", RR, &mut out);
            assert_eq!(out.len(), 2, "the plain subscriber and one member");
            let member = out.iter().find(|d| d.shared.is_some()).unwrap();
            assert_eq!(member.shared.as_deref(), Some("$share/g/jobs/+"));
            got.push(member.session.client_id.to_string());
        }
        // Offline members alternate too when none is connected.
        assert_eq!(got, ["a", "b", "a", "b"]);
        let other = router.other_member("$share/g/jobs/+", &a, RR).unwrap();
        assert!(Arc::ptr_eq(&other.session, &b));
        assert!(router.unsubscribe("$share/g/jobs/+", &a));
        assert!(router.unsubscribe("$share/g/jobs/+", &b));
        assert!(router.other_member("$share/g/jobs/+", &a, RR).is_none());
        assert!(router.shared.read().unwrap().is_empty(), "empty groups go");
    }

    #[test]
    fn many_children_move_from_a_list_to_a_map_and_still_match() {
        let router = Router::default();
        let sessions: Vec<_> = (0..20).map(|i| session(&format!("d{i}"))).collect();
        for (i, s) in sessions.iter().enumerate() {
            router.subscribe(&format!("devices/d{i}/down/#"), s, opts(QoS::AtLeastOnce));
        }
        assert!(matches!(
            router
                .wildcard
                .read()
                .unwrap()
                .children
                .get("devices")
                .map(|n| &n.children),
            Some(Children::Many(_))
        ));
        for i in [0, 7, 8, 19] {
            assert_eq!(
                ids(&router, &format!("devices/d{i}/down/cmd")),
                [format!("d{i}")]
            );
        }
        assert!(ids(&router, "devices/d20/down/cmd").is_empty());
        for (i, s) in sessions.iter().enumerate() {
            assert!(router.unsubscribe(&format!("devices/d{i}/down/#"), s));
        }
        assert!(router.wildcard.read().unwrap().is_empty());
    }
}
