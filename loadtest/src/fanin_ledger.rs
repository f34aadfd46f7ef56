//! The fan-in scenario's loss ledger: per publisher, which messages were
//! sent, acknowledged (PUBACK, or PUBCOMP for QoS 2) and received by the
//! subscriber, and the counts the scenario gates on (acknowledged but
//! lost, duplicates, never acknowledged).
//!
//! Each publisher numbers its messages 0, 1, 2, … and never resends one, so
//! what it sent is a count and every other fact is a bit in a per-publisher
//! bitset: cheap at hundreds of thousands of messages per second, and
//! owned by one task each (publishers their acknowledgements, the
//! subscriber its receptions), so the hot path takes no lock.

use serde::{Deserialize, Serialize};

/// A growable set of sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; true if it was not in the set.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let new = self.words[word] & mask == 0;
        if new {
            self.words[word] |= mask;
            self.len += 1;
        }
        new
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Word `i` restricted to the sequence numbers below `end`.
    fn word_below(&self, i: usize, end: u64) -> u64 {
        let word = self.words.get(i).copied().unwrap_or(0);
        let first = i as u64 * 64;
        if end <= first {
            0
        } else if end - first >= 64 {
            word
        } else {
            word & ((1u64 << (end - first)) - 1)
        }
    }

    /// How many members are below `end`.
    pub fn count_below(&self, end: u64) -> u64 {
        (0..self.words.len())
            .map(|i| u64::from(self.word_below(i, end).count_ones()))
            .sum()
    }

    /// How many members below `end` are not in `other`.
    pub fn count_missing_from(&self, other: &SeqSet, end: u64) -> u64 {
        (0..self.words.len())
            .map(|i| {
                let missing = self.word_below(i, end) & !other.words.get(i).copied().unwrap_or(0);
                u64::from(missing.count_ones())
            })
            .sum()
    }
}

/// One publisher's side: how many messages it sent and which of them were
/// acknowledged.
#[derive(Debug, Clone, Default)]
pub struct PublisherRecord {
    /// Messages 0..sent were written to the socket (each once).
    pub sent: u64,
    pub acked: SeqSet,
}

/// What a subscriber made of one PUBLISH of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reception {
    /// The first copy of a message.
    First,
    /// A message received before.
    Duplicate,
    /// The run's tag, but no publisher of the run has that index.
    Unknown,
}

/// One subscriber's side: which messages of which publisher arrived, and
/// how many copies beyond the first.
#[derive(Debug, Clone, Default)]
pub struct Receptions {
    per_publisher: Vec<SeqSet>,
    unique: u64,
    duplicates: u64,
    unknown_publisher: u64,
    other_runs: u64,
}

impl Receptions {
    pub fn new(publishers: u32) -> Self {
        Self {
            per_publisher: vec![SeqSet::default(); publishers as usize],
            ..Self::default()
        }
    }

    /// Records message `seq` of `publisher`.
    pub fn record(&mut self, publisher: u32, seq: u64) -> Reception {
        let Some(set) = self.per_publisher.get_mut(publisher as usize) else {
            self.unknown_publisher += 1;
            return Reception::Unknown;
        };
        if set.insert(seq) {
            self.unique += 1;
            Reception::First
        } else {
            self.duplicates += 1;
            Reception::Duplicate
        }
    }

    /// A PUBLISH that is not of this run (an earlier run's leftover in a
    /// persistent session, someone else's message).
    pub fn other_run(&mut self) {
        self.other_runs += 1;
    }

    /// Unique messages received (of this run's publishers).
    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// The whole run: every publisher's record and the main subscriber's receptions.
#[derive(Debug)]
pub struct FaninLedger {
    pub publishers: Vec<PublisherRecord>,
    pub receptions: Receptions,
}

/// The fan-in counts of a run report (`fanin.*` in the JSON); the scenario
/// fills in the fields that are not about ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaninAccounting {
    /// Publishing clients.
    pub publishers: u32,
    pub qos: u8,
    /// Offered messages per second in all (`-r`); none: each publisher as
    /// fast as its in-flight window allows.
    pub offered_rate: Option<f64>,
    /// Most unacknowledged messages per publisher (0: no limit).
    pub inflight: usize,
    /// Unique messages sent (each exactly once).
    pub sent: u64,
    /// Unique messages acknowledged (PUBACK; PUBCOMP for QoS 2; none for QoS 0).
    pub acked: u64,
    /// Unique messages of this run the subscriber received.
    pub received: u64,
    /// Acknowledged but never received by the subscriber: must be 0.
    pub acked_but_lost: u64,
    /// Receptions beyond the first per message.
    pub duplicates: u64,
    /// Sent but never received, acknowledged or not (with QoS 0, the loss).
    pub not_received: u64,
    /// Sent but not acknowledged by the end of the run (0 with QoS 0,
    /// which has no acknowledgement).
    pub never_acked: u64,
    /// Of those, how many the subscriber received anyway.
    pub never_acked_received: u64,
    /// Sent, not acknowledged, not received.
    pub never_acked_lost: u64,
    /// Receptions with this run's tag naming a message nobody sent (should be 0).
    pub unknown: u64,
    /// Receptions of other runs' messages (leftovers of a persistent session), ignored.
    pub other_runs: u64,
    /// Messages per second sent, acknowledged and received during the
    /// publishing phase (counted at its end).
    pub publish_rate: f64,
    pub ack_rate: f64,
    pub receive_rate: f64,
    /// Whether everything sent was acknowledged and received before the
    /// settle time ran out.
    pub complete: bool,
    /// Publishers whose connection the broker closed (they do not reconnect).
    pub publisher_disconnects: u64,
    /// Times the broker closed the subscriber's connection (it reconnects
    /// on its persistent session).
    pub subscriber_disconnects: u64,
    /// Extra subscribers that stopped reading after subscribing.
    pub stalled: u32,
    /// How many of them the broker disconnected.
    pub stalled_disconnected: u64,
    /// For each of those, ms from the stall to the disconnect (as noticed).
    pub stalled_disconnected_after_ms: Vec<u64>,
    /// PUBLISHes the stalled subscribers found unread in their sockets at the end.
    pub stalled_unread: u64,
    /// Extra subscribers acknowledging each message `slow_ack_ms` after it arrived.
    pub slow: u32,
    pub slow_ack_ms: u64,
    /// Unique messages of this run the slow subscribers received, in all.
    pub slow_received: u64,
    pub slow_duplicates: u64,
    pub slow_disconnects: u64,
}

impl FaninLedger {
    /// The counts from the ids (the other fields stay at their default).
    pub fn accounting(&self) -> FaninAccounting {
        let empty = SeqSet::default();
        let mut a = FaninAccounting {
            duplicates: self.receptions.duplicates,
            unknown: self.receptions.unknown_publisher,
            other_runs: self.receptions.other_runs,
            ..FaninAccounting::default()
        };
        for (index, publisher) in self.publishers.iter().enumerate() {
            let received = self.receptions.per_publisher.get(index).unwrap_or(&empty);
            let sent = publisher.sent;
            let acked = publisher.acked.count_below(sent);
            let received_sent = received.count_below(sent);
            let received_not_acked = received.count_missing_from(&publisher.acked, sent);
            a.sent += sent;
            a.acked += acked;
            a.received += received_sent;
            a.acked_but_lost += publisher.acked.count_missing_from(received, sent);
            a.never_acked += sent - acked;
            a.never_acked_received += received_not_acked;
            a.never_acked_lost += (sent - acked) - received_not_acked;
            a.unknown += received.len() - received_sent;
        }
        a.not_received = a.sent - a.received;
        a
    }

    /// [`FaninLedger::accounting`] for messages sent with QoS 0: nothing is
    /// acknowledged, so nothing counts as never acknowledged.
    pub fn accounting_at_most_once(&self) -> FaninAccounting {
        FaninAccounting {
            never_acked: 0,
            never_acked_received: 0,
            never_acked_lost: 0,
            ..self.accounting()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_sets_count_members_below_a_bound_across_words() {
        let mut set = SeqSet::default();
        for seq in [0, 1, 63, 64, 65, 200] {
            assert!(set.insert(seq));
        }
        assert!(!set.insert(64));
        assert_eq!(set.len(), 6);
        assert!(set.contains(63) && set.contains(200) && !set.contains(2));
        assert!(!set.contains(10_000), "beyond the last word");
        assert_eq!(set.count_below(0), 0);
        assert_eq!(set.count_below(63), 2);
        assert_eq!(set.count_below(64), 3);
        assert_eq!(set.count_below(66), 5);
        assert_eq!(set.count_below(u64::MAX), 6);
        let mut other = SeqSet::default();
        other.insert(1);
        other.insert(64);
        assert_eq!(set.count_missing_from(&other, 66), 3, "0, 63, 65");
        assert_eq!(other.count_missing_from(&set, 1000), 0, "other is a subset");
    }

    #[test]
    fn a_clean_run_loses_nothing() {
        let mut receptions = Receptions::new(2);
        let mut publishers = vec![PublisherRecord::default(), PublisherRecord::default()];
        for (index, publisher) in publishers.iter_mut().enumerate() {
            for seq in 0..100 {
                publisher.sent += 1;
                assert!(publisher.acked.insert(seq));
                assert_eq!(receptions.record(index as u32, seq), Reception::First);
            }
        }
        let a = FaninLedger {
            publishers,
            receptions,
        }
        .accounting();
        assert_eq!(
            (
                a.sent,
                a.acked,
                a.received,
                a.acked_but_lost,
                a.duplicates,
                a.never_acked
            ),
            (200, 200, 200, 0, 0, 0)
        );
        assert_eq!((a.unknown, a.other_runs, a.not_received), (0, 0, 0));
    }

    #[test]
    fn at_most_once_nothing_is_acknowledged_and_only_receptions_count() {
        let mut receptions = Receptions::new(1);
        receptions.record(0, 1);
        let ledger = FaninLedger {
            publishers: vec![PublisherRecord {
                sent: 3,
                ..Default::default()
            }],
            receptions,
        };
        let a = ledger.accounting_at_most_once();
        assert_eq!((a.sent, a.acked, a.received), (3, 0, 1));
        assert_eq!((a.acked_but_lost, a.never_acked, a.not_received), (0, 0, 2));
    }

    /// Mosquitto under overload: everything acknowledged, most of it dropped.
    #[test]
    fn acknowledged_then_dropped_is_loss_and_the_rest_is_told_apart() {
        let mut receptions = Receptions::new(2);
        let mut p0 = PublisherRecord {
            sent: 10,
            ..Default::default()
        };
        // 0..6 acknowledged; 6..10 never.
        for seq in 0..6 {
            p0.acked.insert(seq);
        }
        // The subscriber got 0, 1 (1 twice), 7 (acknowledgement lost), and
        // a message numbered past what was sent.
        for seq in [0, 1, 1, 7, 12] {
            receptions.record(0, seq);
        }
        // Publisher 1 sent nothing; an earlier run's message; a publisher
        // index beyond the run's.
        let p1 = PublisherRecord::default();
        receptions.other_run();
        assert_eq!(receptions.record(5, 0), Reception::Unknown);
        assert_eq!((receptions.unique(), receptions.duplicates()), (4, 1));
        let a = FaninLedger {
            publishers: vec![p0, p1],
            receptions,
        }
        .accounting();
        assert_eq!(a.sent, 10);
        assert_eq!(a.acked, 6);
        assert_eq!(a.received, 3, "0, 1, 7");
        assert_eq!(a.acked_but_lost, 4, "2, 3, 4, 5");
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.never_acked, 4);
        assert_eq!(a.never_acked_received, 1, "7");
        assert_eq!(a.never_acked_lost, 3, "6, 8, 9");
        assert_eq!(a.not_received, 7);
        assert_eq!(a.unknown, 2, "12, and publisher 5's");
        assert_eq!(a.other_runs, 1);
    }
}
