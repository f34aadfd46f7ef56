//! Topic routing: which sessions receive a published message.
//!
//! Exact subscriptions live in a hash map (one lookup per publish); only
//! filters with `+` or `#` go into a trie, walked level by level, so a
//! publish costs O(levels) however many devices are subscribed. Filters
//! reach the router only through `topic::check_filter`, so the trie's depth,
//! and the recursion that walks it, are bounded by `max_topic_levels`.

use crate::codec::QoS;
use crate::session::{Session, SubOptions};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Clone)]
struct Subscriber {
    session: Arc<Session>,
    options: SubOptions,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
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

/// Subscriptions and retained messages.
#[derive(Default)]
pub(crate) struct Router {
    exact: DashMap<Box<str>, Vec<Subscriber>>,
    wildcard: RwLock<Node>,
}

fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

fn upsert(list: &mut Vec<Subscriber>, session: &Arc<Session>, options: SubOptions) {
    match list.iter_mut().find(|s| Arc::ptr_eq(&s.session, session)) {
        Some(existing) => existing.options = options,
        None => list.push(Subscriber {
            session: session.clone(),
            options,
        }),
    }
}

fn remove(list: &mut Vec<Subscriber>, session: &Arc<Session>) -> bool {
    let before = list.len();
    list.retain(|s| !Arc::ptr_eq(&s.session, session));
    list.len() != before
}

impl Router {
    pub fn subscribe(&self, filter: &str, session: &Arc<Session>, options: SubOptions) {
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
            node = node.children.entry(level.into()).or_default();
        }
        upsert(&mut node.here, session, options);
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, session: &Arc<Session>) -> bool {
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
                    let Some(child) = node.children.get_mut(*first) else {
                        return false;
                    };
                    let removed = walk(child, rest, session);
                    if child.is_empty() {
                        node.children.remove(*first);
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

    /// The sessions a message on `topic` goes to, each once, at the highest
    /// QoS any of its matching subscriptions granted.
    pub fn matches(&self, topic: &str, out: &mut Vec<(Arc<Session>, SubOptions)>) {
        if let Some(list) = self.exact.get(topic) {
            out.extend(list.iter().map(|s| (s.session.clone(), s.options)));
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
            out.sort_by_key(|(s, _)| Arc::as_ptr(s) as usize);
            out.dedup_by(|later, first| {
                if Arc::ptr_eq(&later.0, &first.0) {
                    first.1.qos = first.1.qos.max_qos(later.1.qos);
                    first.1.retain_as_published |= later.1.retain_as_published;
                    first.1.no_local &= later.1.no_local;
                    true
                } else {
                    false
                }
            });
        }
    }
}

fn collect(node: &Node, levels: &[&str], system: bool, out: &mut Vec<(Arc<Session>, SubOptions)>) {
    // `a/#` also matches `a` itself.
    if !system {
        out.extend(node.multi.iter().map(|s| (s.session.clone(), s.options)));
    }
    let Some((first, rest)) = levels.split_first() else {
        out.extend(node.here.iter().map(|s| (s.session.clone(), s.options)));
        return;
    };
    if let Some(child) = node.children.get(*first) {
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
        }
    }

    fn session(id: &str) -> Arc<Session> {
        crate::session::tests_support::session(id)
    }

    fn ids(router: &Router, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        router.matches(topic, &mut out);
        let mut ids: Vec<String> = out.iter().map(|(s, _)| s.client_id.to_string()).collect();
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
        router.matches("devices/1/down/cmd", &mut out);
        assert_eq!(out.len(), 3);
        let a_opts = out.iter().find(|(s, _)| Arc::ptr_eq(s, &a)).unwrap().1;
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
}
