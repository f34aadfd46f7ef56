//! The "seen ids" window a consumer instance drops duplicate input records
//! with: bounded in time (`window`) and in count (`max_entries`), oldest
//! forgotten first.
//!
//! Ids are kept as 128-bit SHA-256 prefixes, so an entry costs the same
//! whatever the id's length (an id can hold device-chosen text such as a
//! `scan_id`): under 100 bytes, at most about 10 MB at the default 100,000
//! entries.
//!
//! A first-in-first-out window is what dedupe needs: an id is remembered from
//! the moment it was first seen, and forgotten `window` later or when
//! `max_entries` newer ids pushed it out, whichever comes first. (An LRU or
//! TinyLFU cache would refresh or refuse entries, which is not the question
//! asked here, so this is a `VecDeque` in arrival order plus a `HashSet`.)
//! It serves one task, the service's consume loop: no locking.

use ring::digest;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// What the window stores of an id.
type Fingerprint = [u8; 16];

fn fingerprint(id: &str) -> Fingerprint {
    let digest = digest::digest(&digest::SHA256, id.as_bytes());
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest.as_ref()[..16]);
    fingerprint
}

/// Remembers the ids seen in the last `window`, at most `max_entries` of them.
#[derive(Debug)]
pub struct SeenWindow {
    window: Duration,
    max_entries: usize,
    /// Ids in the order they were first seen, with when.
    order: VecDeque<(Instant, Fingerprint)>,
    seen: HashSet<Fingerprint>,
}

impl SeenWindow {
    /// A window of `window` and `max_entries`; either at zero disables it
    /// (every id is then new).
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self {
            window,
            max_entries,
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Whether the window remembers nothing at all.
    pub fn is_disabled(&self) -> bool {
        self.window.is_zero() || self.max_entries == 0
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `true` if `id` was already seen within the window (a duplicate);
    /// otherwise remembers it, as of `now`, and returns `false`.
    pub fn check(&mut self, id: &str, now: Instant) -> bool {
        if self.is_disabled() {
            return false;
        }
        self.forget_older_than(now);
        let fingerprint = fingerprint(id);
        if self.seen.contains(&fingerprint) {
            return true;
        }
        while self.order.len() >= self.max_entries {
            self.pop_oldest();
        }
        self.order.push_back((now, fingerprint));
        self.seen.insert(fingerprint);
        false
    }

    fn forget_older_than(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, fingerprint)) = self.order.pop_front() {
            self.seen.remove(&fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_and_new_after_it() {
        let start = Instant::now();
        let mut window = SeenWindow::new(Duration::from_secs(600), 100);
        assert!(!window.check("scanbox-1:s-1", start));
        assert!(window.check("scanbox-1:s-1", start + Duration::from_secs(1)));
        assert!(!window.check("scanbox-1:s-2", start + Duration::from_secs(2)));
        assert!(window.check("scanbox-1:s-1", start + Duration::from_secs(599)));
        // Remembered from its first sighting, not refreshed by duplicates.
        assert!(!window.check("scanbox-1:s-1", start + Duration::from_secs(600)));
        assert!(window.check("scanbox-1:s-2", start + Duration::from_secs(600)));
        assert!(!window.check("scanbox-1:s-2", start + Duration::from_secs(603)));
        assert_eq!(window.len(), 2, "expired ids are forgotten");
    }

    #[test]
    fn the_oldest_id_is_forgotten_past_max_entries() {
        let now = Instant::now();
        let mut window = SeenWindow::new(Duration::from_secs(600), 3);
        for id in ["a", "b", "c"] {
            assert!(!window.check(id, now));
        }
        assert!(!window.check("d", now), "pushes out a");
        assert_eq!(window.len(), 3);
        assert!(window.check("b", now) && window.check("c", now) && window.check("d", now));
        assert!(!window.check("a", now), "a was forgotten");
        assert!(
            !window.check("b", now),
            "and remembering a again pushed out b"
        );
    }

    #[test]
    fn a_zero_window_or_count_disables_it() {
        let now = Instant::now();
        for mut window in [
            SeenWindow::new(Duration::ZERO, 100),
            SeenWindow::new(Duration::from_secs(600), 0),
        ] {
            assert!(window.is_disabled());
            assert!(!window.check("a", now));
            assert!(!window.check("a", now));
            assert!(window.is_empty());
        }
    }

    #[test]
    fn long_ids_cost_the_same() {
        let now = Instant::now();
        let mut window = SeenWindow::new(Duration::from_secs(600), 10);
        let long = "x".repeat(100_000);
        assert!(!window.check(&long, now));
        assert!(window.check(&long, now));
        assert!(!window.check(&long[1..], now));
    }
}
