//! Flapping detection: a client id that completes more authenticated
//! connects than allowed within a window is refused for a while (CONNACK
//! 0x8A "banned"), as EMQX's flapping detection does. Only authenticated
//! connects count, so nobody can get another device banned by connecting
//! with its id; a banned id is refused before its password is checked.

use crate::config::AdmissionConfig;
use dashmap::DashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

/// 12 bytes a client id, for the minute after each connect: times are whole
/// seconds since the detector started, and the id is kept as a keyed 64-bit
/// hash (two ids sharing a hash would only share a counter).
struct Record {
    window_start: u32,
    banned_until: u32,
    connects: u32,
}

pub(crate) struct FlappingDetector {
    clients: DashMap<u64, Record>,
    hasher: RandomState,
    epoch: Instant,
    max_connects: u32,
    window: u32,
    ban: u32,
    max_tracked: usize,
}

fn whole_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1)
}

impl FlappingDetector {
    pub fn new(config: &AdmissionConfig) -> Self {
        Self {
            clients: DashMap::new(),
            hasher: RandomState::new(),
            // Second 0 stays free to mean "never banned".
            epoch: Instant::now() - Duration::from_secs(1),
            max_connects: config.flapping_max_connects,
            window: whole_secs(config.flapping_window),
            ban: whole_secs(config.flapping_ban),
            max_tracked: config.flapping_max_tracked,
        }
    }

    fn now_secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Whether `client_id` is banned at `now`.
    pub fn is_banned(&self, client_id: &str, now: Instant) -> bool {
        if self.max_connects == 0 {
            return false;
        }
        let now = self.now_secs(now);
        self.clients
            .get(&self.hasher.hash_one(client_id))
            .is_some_and(|r| r.banned_until > now)
    }

    /// Counts an authenticated connect of `client_id`; true if it makes the
    /// client a flapping one, banned from `now` on.
    pub fn record_connect(&self, client_id: &str, now: Instant) -> bool {
        if self.max_connects == 0 {
            return false;
        }
        let now = self.now_secs(now);
        let key = self.hasher.hash_one(client_id);
        if let Some(mut record) = self.clients.get_mut(&key) {
            if now.saturating_sub(record.window_start) >= self.window {
                record.window_start = now;
                record.connects = 0;
            }
            record.connects += 1;
            if record.connects > self.max_connects {
                record.banned_until = now.saturating_add(self.ban);
                record.connects = 0;
                record.window_start = now;
                return true;
            }
            return false;
        }
        if self.clients.len() < self.max_tracked {
            self.clients.insert(
                key,
                Record {
                    window_start: now,
                    banned_until: 0,
                    connects: 1,
                },
            );
        }
        false
    }

    /// Forgets clients whose window and ban are both over.
    pub fn sweep(&self, now: Instant) {
        let now = self.now_secs(now);
        self.clients.retain(|_, r| {
            now.saturating_sub(r.window_start) < self.window || r.banned_until > now
        });
        self.clients.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_past_the_limit_within_the_window_and_forgets_later() {
        let detector = FlappingDetector::new(&AdmissionConfig {
            flapping_max_connects: 3,
            flapping_window: Duration::from_secs(60),
            flapping_ban: Duration::from_secs(300),
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!detector.record_connect("d", t0));
        }
        assert!(!detector.is_banned("d", t0));
        assert!(detector.record_connect("d", t0), "the fourth connect trips");
        assert!(detector.is_banned("d", t0 + Duration::from_secs(299)));
        assert!(!detector.is_banned("d", t0 + Duration::from_secs(301)));
        assert!(!detector.is_banned("other", t0));
        // A slow reconnecter is never banned.
        for i in 0..10 {
            assert!(!detector.record_connect("slow", t0 + Duration::from_secs(61 * i)));
        }
        detector.sweep(t0 + Duration::from_secs(10_000));
        assert_eq!(detector.clients.len(), 0);
    }
}
