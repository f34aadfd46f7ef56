//! Unique ids of the messages a run sends: scan ids, command ids and
//! payment ids, `<run tag>-<client id>-<seq>-<send time µs>`.
//!
//! The run tag (`lt` and eight base-36 digits, new for every run) lets a
//! reader of a Kafka topic keep only this run's records; the client id and
//! sequence number make the id unique and stable across retransmissions; the
//! intended send time (Unix µs) gives end-to-end latency to whoever reads the
//! id back, in this process or another.

/// The tag every id of one run starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTag(String);

/// The parts of an id of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedId<'a> {
    pub client_id: &'a str,
    pub seq: u64,
    pub sent_unix_micros: u64,
}

impl RunTag {
    /// A tag drawn from the clock and the process id.
    pub fn new() -> Self {
        let mixed = crate::engine::unix_micros() ^ (u64::from(std::process::id()) << 40);
        Self::from_number(mixed)
    }

    /// The tag for `number` (its lowest 41 bits, as eight base-36 digits).
    pub fn from_number(number: u64) -> Self {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut rest = number % 36u64.pow(8);
        let mut digits = [b'0'; 8];
        for digit in digits.iter_mut().rev() {
            *digit = DIGITS[(rest % 36) as usize];
            rest /= 36;
        }
        Self(format!("lt{}", String::from_utf8_lossy(&digits)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of message `seq` of `client_id`, meant to be sent at `sent_unix_micros`.
    pub fn id(&self, client_id: &str, seq: u64, sent_unix_micros: u64) -> String {
        format!("{}-{client_id}-{seq}-{sent_unix_micros}", self.0)
    }

    /// The parts of `id` if it belongs to this run.
    pub fn parse<'a>(&self, id: &'a str) -> Option<ParsedId<'a>> {
        let rest = id.strip_prefix(self.0.as_str())?.strip_prefix('-')?;
        let mut from_the_right = rest.rsplitn(3, '-');
        let sent_unix_micros = from_the_right.next()?.parse().ok()?;
        let seq = from_the_right.next()?.parse().ok()?;
        let client_id = from_the_right.next().filter(|c| !c.is_empty())?;
        Some(ParsedId {
            client_id,
            seq,
            sent_unix_micros,
        })
    }
}

impl Default for RunTag {
    fn default() -> Self {
        Self::new()
    }
}

/// The send time (Unix µs) of an id of any run.
pub fn stamp_of(id: &str) -> Option<u64> {
    if !id.starts_with("lt") {
        return None;
    }
    id.rsplit('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_with_dashes_in_the_client_id() {
        let run = RunTag::from_number(123_456_789);
        assert_eq!(run.as_str().len(), 10);
        let id = run.id("scan-box-17", 42, 1_790_000_000_123_456);
        assert_eq!(
            run.parse(&id),
            Some(ParsedId {
                client_id: "scan-box-17",
                seq: 42,
                sent_unix_micros: 1_790_000_000_123_456
            })
        );
        assert_eq!(stamp_of(&id), Some(1_790_000_000_123_456));
    }

    #[test]
    fn ids_of_other_runs_and_foreign_ids_are_not_ours() {
        let run = RunTag::from_number(1);
        let other = RunTag::from_number(2);
        assert_ne!(run, other);
        assert_eq!(run.parse(&other.id("speaker-1", 0, 5)), None);
        for foreign in [
            "",
            "s-1",
            "lt",
            &format!("{}-", run.as_str()),
            &format!("{}-x-1", run.as_str()),
        ] {
            assert_eq!(run.parse(foreign), None, "{foreign:?}");
        }
        assert_eq!(stamp_of("s-1"), None);
    }
}
