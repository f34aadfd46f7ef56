//! Rate limit for one connection's log lines, so a client repeating the same
//! bad input cannot flood the log: a few lines, then one per interval that
//! says how many were held back.

use std::time::{Duration, Instant};

/// Logs at info through a connection's [`LogGate`], with its client id and
/// how many lines were held back before this one.
macro_rules! gated_info {
    ($conn:expr, $($field:tt)+) => {
        if let Some(held_back) = $conn.log_gate.allow() {
            tracing::info!(client_id = $conn.client_id(), peer = %$conn.peer, held_back, $($field)+);
        }
    };
}
pub(super) use gated_info;

const BURST: u32 = 5;
const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct LogGate {
    window_start: Instant,
    lines: u32,
    suppressed: u32,
}

impl LogGate {
    pub fn new() -> Self {
        Self {
            window_start: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now, `n` lines having been held
    /// back before it; `None` if this one is held back.
    pub fn allow(&mut self) -> Option<u32> {
        if self.window_start.elapsed() >= INTERVAL {
            self.window_start = Instant::now();
            self.lines = 0;
        }
        if self.lines >= BURST {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// At most `max` characters of client-supplied text, for a log line.
pub(super) fn clip(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_with_a_count() {
        let mut gate = LogGate::new();
        for _ in 0..BURST {
            assert_eq!(gate.allow(), Some(0));
        }
        assert_eq!(gate.allow(), None);
        assert_eq!(gate.allow(), None);
        gate.window_start -= INTERVAL;
        assert_eq!(gate.allow(), Some(2));
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("ab", 3), "ab");
    }
}
