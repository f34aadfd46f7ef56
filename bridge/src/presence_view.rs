//! The cluster-wide device → node view, read from the compacted presence
//! topic by every node.
//!
//! Each node replays the whole presence topic at start (it is ready once it
//! reached the end offsets it found) and then follows it. The view keeps
//! only devices that are online on *other* nodes: for each, the node holding
//! it and the generation of that connection (devices connected here are the
//! broker's to know, so a single node holds no view at all). A record older
//! than what the view holds (lower generation; equal generation and a lower
//! node id) is stale and ignored, so every node, reading the same records,
//! reaches the same view whatever their order.
//!
//! Nodes named in [`PresenceView::mark_gone`] (their inbox has no consumer:
//! they died or were scaled in) hold nothing as far as routing goes: their
//! devices count as offline until they connect again somewhere.

use dashmap::DashMap;
use herald_schemas::v1::PresenceEvent;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use tokio::sync::{watch, Notify};

/// The connection holding a device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    node: Arc<str>,
    generation: u64,
}

impl Holder {
    fn is_newer_than(&self, other: &Holder) -> bool {
        (self.generation, &self.node) > (other.generation, &other.node)
    }
}

/// What applying one presence record changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Older than what the view holds.
    Stale,
    /// The device is now held by `node` with `generation`.
    Online { node: Arc<str>, generation: u64 },
    /// The device went offline, or came to this node.
    Gone,
}

/// Which node holds each online device, cluster-wide.
pub struct PresenceView {
    node: Arc<str>,
    devices: DashMap<Arc<str>, Holder>,
    /// Node names, shared by every device entry (10 M devices on 50 nodes
    /// hold 50 strings).
    node_names: DashMap<Arc<str>, ()>,
    /// Devices whose commands wait on this node for a move.
    watchers: DashMap<Arc<str>, Arc<Notify>>,
    gone: RwLock<HashSet<Arc<str>>>,
    ready: watch::Sender<bool>,
    /// When this process made the view, in microseconds: this node's
    /// connections with a lower generation were made by an earlier life.
    created_us: u64,
}

impl PresenceView {
    pub fn new(node: &str) -> Self {
        Self {
            node: Arc::from(node),
            devices: DashMap::new(),
            node_names: DashMap::new(),
            watchers: DashMap::new(),
            gone: RwLock::new(HashSet::new()),
            ready: watch::channel(false).0,
            created_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// When this view (this node's life) began, in wall-clock microseconds.
    pub fn created_us(&self) -> u64 {
        self.created_us
    }

    /// Devices the view has online on other nodes.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The other node holding `device_id`, if one does and is not gone.
    /// `None` (here, offline, unknown, or on a gone node): a command for it
    /// stays on this node. Whether it is connected here is the broker's to say.
    pub fn locate(&self, device_id: &str) -> Option<Arc<str>> {
        self.devices
            .get(device_id)
            .map(|h| h.node.clone())
            .filter(|holder| !self.is_gone(holder))
    }

    /// True if another node holds a connection of `device_id` newer than
    /// `generation`: this node's disconnect of that older connection must
    /// not be written as the device's latest presence.
    pub fn held_elsewhere_since(&self, device_id: &str, generation: u64) -> bool {
        self.devices
            .get(device_id)
            .is_some_and(|h| h.generation > generation)
    }

    /// Applies one presence record and wakes commands waiting for the device.
    pub fn apply(&self, event: &PresenceEvent) -> Applied {
        let incoming = Holder {
            node: self.intern(&event.node),
            generation: event.generation,
        };
        let applied = if event.online && incoming.node != self.node {
            match self.devices.entry(Arc::from(event.device_id.as_str())) {
                dashmap::Entry::Occupied(mut held) => {
                    if !incoming.is_newer_than(held.get()) {
                        return Applied::Stale;
                    }
                    held.insert(incoming.clone());
                }
                dashmap::Entry::Vacant(entry) => {
                    entry.insert(incoming.clone());
                }
            }
            Applied::Online {
                node: incoming.node,
                generation: incoming.generation,
            }
        } else {
            // Offline, or connected here: whatever older connection the view
            // holds elsewhere is over.
            match self.devices.remove_if(event.device_id.as_str(), |_, held| {
                !held.is_newer_than(&incoming)
            }) {
                Some(_) => Applied::Gone,
                None if event.online => Applied::Gone,
                None => return Applied::Stale,
            }
        };
        if let Some(waiting) = self.watchers.get(event.device_id.as_str()) {
            waiting.notify_waiters();
        }
        applied
    }

    /// Notified whenever the device's entry changes. Keep it alive for as
    /// long as a command of the device waits on this node; call
    /// [`PresenceView::unwatch`] after.
    pub fn watch(&self, device_id: &str) -> Arc<Notify> {
        self.watchers
            .entry(Arc::from(device_id))
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Forgets the device's watcher once nobody holds it any more.
    pub fn unwatch(&self, device_id: &str, watcher: Arc<Notify>) {
        drop(watcher);
        self.watchers
            .remove_if(device_id, |_, w| Arc::strong_count(w) == 1);
    }

    /// Marks `node` gone (its inbox has no consumer) or back.
    pub fn mark_gone(&self, node: &str, gone: bool) {
        let mut set = self.gone.write().unwrap_or_else(|e| e.into_inner());
        let changed = if gone {
            set.insert(self.intern(node))
        } else {
            set.remove(node)
        };
        drop(set);
        if changed {
            // Commands waiting for devices of that node look again.
            for waiting in self.watchers.iter() {
                waiting.notify_waiters();
            }
        }
    }

    pub fn is_gone(&self, node: &str) -> bool {
        self.gone
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }

    /// Marks the view caught up with the presence topic.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the view caught up with the presence topic.
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    fn intern(&self, node: &str) -> Arc<str> {
        if let Some(name) = self.node_names.get(node) {
            return name.key().clone();
        }
        self.node_names
            .entry(Arc::from(node))
            .or_insert(())
            .key()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(device: &str, node: &str, generation: u64, online: bool) -> PresenceEvent {
        PresenceEvent {
            device_id: device.into(),
            node: node.into(),
            generation,
            online,
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_connection_wins_in_any_order() {
        let records = [
            event("d", "a", 10, true),
            event("d", "b", 20, true),
            event("d", "a", 10, false),
        ];
        // Every order of the same records gives the same view.
        for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]] {
            let view = PresenceView::new("a");
            for i in order {
                view.apply(&records[i]);
            }
            assert_eq!(view.locate("d"), Some("b".into()), "{order:?}");
        }
        // Node b itself keeps nothing: its own devices are its broker's.
        let view = PresenceView::new("b");
        for record in &records {
            view.apply(record);
        }
        assert_eq!(view.locate("d"), None);
        assert!(view.is_empty());
        // A connection here ends the view's older one elsewhere.
        let view = PresenceView::new("b");
        view.apply(&records[0]);
        assert_eq!(view.apply(&records[1]), Applied::Gone);
        assert!(!view.held_elsewhere_since("d", 5), "held here");
    }

    #[test]
    fn equal_generations_are_ordered_by_node() {
        let view = PresenceView::new("x");
        view.apply(&event("d", "b", 7, true));
        assert_eq!(view.apply(&event("d", "a", 7, true)), Applied::Stale);
        assert!(matches!(
            view.apply(&event("d", "c", 7, true)),
            Applied::Online { .. }
        ));
    }

    #[test]
    fn a_stale_disconnect_is_known_and_gone_nodes_hold_nothing() {
        let view = PresenceView::new("a");
        view.apply(&event("d", "b", 20, true));
        assert!(view.held_elsewhere_since("d", 10));
        assert!(!view.held_elsewhere_since("d", 20));
        view.mark_gone("b", true);
        assert_eq!(view.locate("d"), None);
        view.mark_gone("b", false);
        assert_eq!(view.locate("d"), Some("b".into()));
    }

    #[tokio::test]
    async fn watchers_wake_on_a_move() {
        let view = Arc::new(PresenceView::new("a"));
        let watcher = view.watch("d");
        let woken = watcher.notified();
        view.apply(&event("d", "b", 1, true));
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("woken");
        view.unwatch("d", watcher);
        assert!(view.watchers.is_empty());
    }
}
