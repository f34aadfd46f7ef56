//! Flapping detection: a client id that completes more authenticated
//! connects than allowed within a window is refused for a while (CONNACK
//! 0x8A "banned"), as EMQX's flapping detection does. Only authenticated
//! connects count, so nobody can get another device banned by connecting
//! with its id; a banned id is refused before its password is checked.

use crate::config::AdmissionConfig;
use dashmap::DashMap;
use std::time::{Duration, Instant};

struct Record {
    window_start: Instant,
    connects: u32,
    banned_until: Option<Instant>,
}

pub(crate) struct FlappingDetector {
    clients: DashMap<Box<str>, Record>,
    max_connects: u32,
    window: Duration,
    ban: Duration,
    max_tracked: usize,
}

impl FlappingDetector {
    pub fn new(config: &AdmissionConfig) -> Self {
        Self {
            clients: DashMap::new(),
            max_connects: config.flapping_max_connects,
            window: config.flapping_window,
            ban: config.flapping_ban,
            max_tracked: config.flapping_max_tracked,
        }
    }

    /// Whether `client_id` is banned at `now`.
    pub fn is_banned(&self, client_id: &str, now: Instant) -> bool {
        self.max_connects > 0
            && self
                .clients
                .get(client_id)
                .and_then(|r| r.banned_until)
                .is_some_and(|until| until > now)
    }

    /// Counts an authenticated connect of `client_id`; true if it makes the
    /// client a flapping one, banned from `now` on.
    pub fn record_connect(&self, client_id: &str, now: Instant) -> bool {
        if self.max_connects == 0 {
            return false;
        }
        if let Some(mut record) = self.clients.get_mut(client_id) {
            if now.saturating_duration_since(record.window_start) >= self.window {
                record.window_start = now;
                record.connects = 0;
            }
            record.connects += 1;
            if record.connects > self.max_connects {
                record.banned_until = Some(now + self.ban);
                record.connects = 0;
                record.window_start = now;
                return true;
            }
            return false;
        }
        if self.clients.len() < self.max_tracked {
            self.clients.insert(
                client_id.into(),
                Record {
                    window_start: now,
                    connects: 1,
                    banned_until: None,
                },
            );
        }
        false
    }

    /// Forgets clients whose window and ban are both over.
    pub fn sweep(&self, now: Instant) {
        self.clients.retain(|_, r| {
            now.saturating_duration_since(r.window_start) < self.window
                || r.banned_until.is_some_and(|until| until > now)
        });
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
