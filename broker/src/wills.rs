//! Delayed wills (MQTT 5 Will Delay Interval): each one waiting is tracked,
//! cancelled when its client reconnects, and their number is bounded, so a
//! will cannot outlive its purpose or pile up.

use dashmap::DashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(crate) struct DelayedWills {
    /// Client id → (generation of the connection that left it, its cancel token).
    pending: DashMap<Arc<str>, (u64, CancellationToken)>,
}

impl DelayedWills {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Tracks the delayed will of `client_id`'s connection `generation`;
    /// the returned token is cancelled if the client comes back first.
    pub fn track(&self, client_id: Arc<str>, generation: u64) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some((_, (_, older))) = self.pending.remove(&client_id) {
            older.cancel();
        }
        self.pending.insert(client_id, (generation, token.clone()));
        token
    }

    /// The client reconnected: its waiting will, if any, is not published.
    pub fn cancel(&self, client_id: &str) {
        if let Some((_, (_, token))) = self.pending.remove(client_id) {
            token.cancel();
        }
    }

    /// The delay of `generation`'s will passed: true if it is still due
    /// (not cancelled or replaced meanwhile); it is no longer tracked.
    pub fn take_due(&self, client_id: &str, generation: u64) -> bool {
        self.pending
            .remove_if(client_id, |_, (g, _)| *g == generation)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_cancels_and_only_the_tracked_generation_fires() {
        let wills = DelayedWills::default();
        let token = wills.track("a".into(), 1);
        wills.cancel("a");
        assert!(token.is_cancelled());
        assert!(!wills.take_due("a", 1));
        let first = wills.track("b".into(), 2);
        let _second = wills.track("b".into(), 3);
        assert!(first.is_cancelled());
        assert!(!wills.take_due("b", 2));
        assert!(wills.take_due("b", 3));
        assert_eq!(wills.len(), 0);
    }
}
