//! The loss ledger of a run: which messages were sent, acknowledged, read
//! back from Kafka, delivered and receipted, by unique id, and the counts a
//! fault test gates on (acknowledged-but-lost, lost, duplicates), for the
//! whole fleet or part of it (healthy, stalled, slow terminals). The MQTT
//! fan-in has its own, bitset ledger (fanin_ledger.rs).
//!
//! Uplinks are keyed by (terminal, sequence number), downlink commands by
//! their sequence number in the run; message_id.rs turns the ids found in
//! Kafka into these keys.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One uplink: the `seq`-th message of terminal `terminal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UplinkKey {
    pub terminal: u32,
    pub seq: u64,
}

/// What happened to the uplinks of a run.
#[derive(Debug, Default)]
pub struct UplinkLedger {
    sent: HashSet<UplinkKey>,
    acked: HashSet<UplinkKey>,
    /// Records read back from Kafka per id.
    in_kafka: HashMap<UplinkKey, u32>,
    kafka_records_marked_dup: u64,
    unknown_in_kafka: u64,
}

/// The uplink counts of a run report (`uplink.*` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkAccounting {
    /// Unique messages sent (each at least once).
    pub sent: u64,
    /// Unique messages PUBACKed.
    pub acked: u64,
    /// Unique messages read back from the Kafka topic.
    pub in_kafka: u64,
    /// PUBACKed but never read back from Kafka: must be 0.
    pub acked_but_lost: u64,
    /// Kafka records beyond the first per message.
    pub duplicates: u64,
    /// Sent but not PUBACKed by the end of the run.
    pub never_acked: u64,
    /// Of those, how many reached Kafka anyway (the PUBACK was lost).
    pub never_acked_in_kafka: u64,
    /// PUBLISHes sent again with DUP after a reconnect.
    pub retransmitted: u64,
    /// Messages scheduled in the publishing phase that were never sent: the
    /// terminal was still behind (in-flight window full, or offline) when
    /// the drain time ran out.
    pub not_sent: u64,
    /// Records of this run read back, duplicates included.
    pub kafka_records: u64,
    /// Of those, records Herald marked as retransmissions (`herald-dup: 1`).
    pub kafka_records_marked_dup: u64,
    /// Records carrying this run's tag but an id never sent (should be 0).
    pub unknown_in_kafka: u64,
    /// Whether the read-back reached the topic's end offsets of the end of the
    /// run; if not, `in_kafka` and `acked_but_lost` are not final.
    pub kafka_caught_up: bool,
    pub kafka_topic: String,
}

impl UplinkLedger {
    /// Records that `key` is about to be written for the first time.
    pub fn sent(&mut self, key: UplinkKey) {
        self.sent.insert(key);
    }

    /// Records a PUBACK; true the first time for `key`.
    pub fn acked(&mut self, key: UplinkKey) -> bool {
        self.acked.insert(key)
    }

    /// Records a Kafka record of this run; true the first time for `key`.
    pub fn read_back(&mut self, key: UplinkKey, marked_dup: bool) -> bool {
        if marked_dup {
            self.kafka_records_marked_dup += 1;
        }
        let records = self.in_kafka.entry(key).or_insert(0);
        *records += 1;
        *records == 1
    }

    /// A record with this run's tag that names no terminal of the run.
    pub fn unknown_read_back(&mut self) {
        self.unknown_in_kafka += 1;
    }

    /// Every message sent has been read back from Kafka.
    pub fn all_sent_in_kafka(&self) -> bool {
        self.sent.iter().all(|key| self.in_kafka.contains_key(key))
    }

    /// The counts from the ids (the fields not about ids stay at their default).
    pub fn accounting(&self) -> UplinkAccounting {
        let count = |n: usize| n as u64;
        let never_acked: Vec<&UplinkKey> = self.sent.difference(&self.acked).collect();
        UplinkAccounting {
            sent: count(self.sent.len()),
            acked: count(self.acked.len()),
            in_kafka: count(
                self.in_kafka
                    .keys()
                    .filter(|key| self.sent.contains(key))
                    .count(),
            ),
            acked_but_lost: count(
                self.acked
                    .iter()
                    .filter(|key| !self.in_kafka.contains_key(key))
                    .count(),
            ),
            duplicates: self
                .in_kafka
                .values()
                .map(|&records| u64::from(records.saturating_sub(1)))
                .sum(),
            never_acked: count(never_acked.len()),
            never_acked_in_kafka: count(
                never_acked
                    .iter()
                    .filter(|key| self.in_kafka.contains_key(key))
                    .count(),
            ),
            kafka_records: self.in_kafka.values().map(|&r| u64::from(r)).sum(),
            kafka_records_marked_dup: self.kafka_records_marked_dup,
            unknown_in_kafka: self.unknown_in_kafka
                + count(
                    self.in_kafka
                        .keys()
                        .filter(|key| !self.sent.contains(key))
                        .count(),
                ),
            ..UplinkAccounting::default()
        }
    }
}

/// A DeliveryReceipt's outcome, as the ledger counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    Delivered,
    Expired,
    Refused,
    Other,
}

impl ReceiptOutcome {
    pub fn name(self) -> &'static str {
        match self {
            ReceiptOutcome::Delivered => "delivered",
            ReceiptOutcome::Expired => "expired",
            ReceiptOutcome::Refused => "refused",
            ReceiptOutcome::Other => "other",
        }
    }

    fn bit(self) -> u8 {
        match self {
            ReceiptOutcome::Delivered => 1,
            ReceiptOutcome::Expired => 2,
            ReceiptOutcome::Refused => 4,
            ReceiptOutcome::Other => 8,
        }
    }

    const ALL: [ReceiptOutcome; 4] = [
        ReceiptOutcome::Delivered,
        ReceiptOutcome::Expired,
        ReceiptOutcome::Refused,
        ReceiptOutcome::Other,
    ];
}

/// What happened to the downlink commands of a run, keyed by sequence number.
#[derive(Debug, Default)]
pub struct DownlinkLedger {
    produced: HashSet<u64>,
    produce_failed: u64,
    /// Deliveries to the terminals per command.
    deliveries: HashMap<u64, u32>,
    /// Outcomes (bit set) of the receipts read back per command.
    receipts: HashMap<u64, u8>,
    receipt_records: u64,
}

/// The downlink counts of a run report (`downlink.*` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownlinkAccounting {
    /// Commands Kafka confirmed.
    pub produced: u64,
    /// Commands Kafka did not confirm (not counted anywhere else).
    pub produce_failed: u64,
    /// Unique commands the terminals received.
    pub delivered: u64,
    /// Unique commands with at least one receipt read back.
    pub receipted: u64,
    /// Unique commands per receipt outcome (`delivered`, `expired`, `refused`,
    /// `other`); a command with receipts of two outcomes counts under both.
    pub receipted_by_outcome: BTreeMap<String, u64>,
    /// Produced, but neither delivered nor receipted as expired or refused: must be 0.
    pub lost: u64,
    /// Deliveries beyond the first per command.
    pub duplicated: u64,
    /// Delivered, but no `delivered` receipt read back.
    pub delivered_without_receipt: u64,
    /// Receipt records of this run read back, repeats included.
    pub receipt_records: u64,
    /// Delivered or receipted commands Kafka never confirmed to the producer.
    pub unknown: u64,
    /// Whether the receipts read-back reached the topic's end offsets.
    pub receipts_caught_up: bool,
    pub downlink_topic: String,
    pub receipts_topic: String,
    /// The same counts for the terminals that read and acknowledge at once
    /// (all of them, unless some stall or are slow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<DownlinkClassAccounting>,
    /// For the terminals that stopped reading after they subscribed
    /// (`--stalled`): their commands end as expired or refused receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<DownlinkClassAccounting>,
    /// For the terminals that acknowledge late (`--slow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<DownlinkClassAccounting>,
    /// Stalled terminals whose connection the broker closed.
    #[serde(default)]
    pub stalled_disconnected: u64,
    /// For each of those, ms from the stall to the disconnect (as noticed).
    #[serde(default)]
    pub stalled_disconnected_after_ms: Vec<u64>,
    /// Commands the stalled terminals found unread in their sockets at the
    /// end (written by the broker, never acknowledged; not counted as delivered).
    #[serde(default)]
    pub stalled_unread: u64,
}

/// The downlink counts of one kind of terminal (`downlink.healthy`,
/// `downlink.stalled`, `downlink.slow`); the same meanings as in
/// [`DownlinkAccounting`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownlinkClassAccounting {
    pub terminals: u32,
    pub produced: u64,
    pub delivered: u64,
    pub receipted: u64,
    pub receipted_by_outcome: BTreeMap<String, u64>,
    pub lost: u64,
    pub duplicated: u64,
}

impl From<DownlinkAccounting> for DownlinkClassAccounting {
    fn from(a: DownlinkAccounting) -> Self {
        Self {
            terminals: 0,
            produced: a.produced,
            delivered: a.delivered,
            receipted: a.receipted,
            receipted_by_outcome: a.receipted_by_outcome,
            lost: a.lost,
            duplicated: a.duplicated,
        }
    }
}

impl DownlinkLedger {
    pub fn produced(&mut self, seq: u64) {
        self.produced.insert(seq);
    }

    pub fn produce_failed(&mut self) {
        self.produce_failed += 1;
    }

    /// Records a command a terminal received; true the first time.
    pub fn delivered(&mut self, seq: u64) -> bool {
        let deliveries = self.deliveries.entry(seq).or_insert(0);
        *deliveries += 1;
        *deliveries == 1
    }

    pub fn receipt(&mut self, seq: u64, outcome: ReceiptOutcome) {
        self.receipt_records += 1;
        *self.receipts.entry(seq).or_insert(0) |= outcome.bit();
    }

    fn settled(&self, seq: &u64) -> bool {
        let final_receipt = ReceiptOutcome::Expired.bit() | ReceiptOutcome::Refused.bit();
        self.deliveries.contains_key(seq)
            || self
                .receipts
                .get(seq)
                .is_some_and(|outcomes| outcomes & final_receipt != 0)
    }

    /// Produced commands not yet delivered, expired or refused.
    pub fn unsettled(&self) -> u64 {
        self.produced
            .iter()
            .filter(|seq| !self.settled(seq))
            .count() as u64
    }

    /// Produced commands without any receipt yet.
    pub fn unreceipted(&self) -> u64 {
        self.produced
            .iter()
            .filter(|seq| !self.receipts.contains_key(seq))
            .count() as u64
    }

    /// The part of the ledger about the commands whose sequence number
    /// `keep` accepts (e.g. those of some terminals); receipt records and
    /// failed produces are not per command and stay out.
    pub fn subset(&self, keep: impl Fn(u64) -> bool) -> DownlinkLedger {
        DownlinkLedger {
            produced: self.produced.iter().copied().filter(|&s| keep(s)).collect(),
            produce_failed: 0,
            deliveries: self
                .deliveries
                .iter()
                .filter(|(&s, _)| keep(s))
                .map(|(&s, &n)| (s, n))
                .collect(),
            receipts: self
                .receipts
                .iter()
                .filter(|(&s, _)| keep(s))
                .map(|(&s, &o)| (s, o))
                .collect(),
            receipt_records: 0,
        }
    }

    /// The counts from the ids (topics and `receipts_caught_up` stay at their default).
    pub fn accounting(&self) -> DownlinkAccounting {
        let delivered_receipt = ReceiptOutcome::Delivered.bit();
        let mut receipted_by_outcome = BTreeMap::new();
        for outcome in ReceiptOutcome::ALL {
            let commands = self
                .receipts
                .values()
                .filter(|outcomes| *outcomes & outcome.bit() != 0)
                .count() as u64;
            if commands > 0 || outcome != ReceiptOutcome::Other {
                receipted_by_outcome.insert(outcome.name().to_string(), commands);
            }
        }
        DownlinkAccounting {
            produced: self.produced.len() as u64,
            produce_failed: self.produce_failed,
            delivered: self.deliveries.len() as u64,
            receipted: self.receipts.len() as u64,
            receipted_by_outcome,
            lost: self.unsettled(),
            duplicated: self
                .deliveries
                .values()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            delivered_without_receipt: self
                .deliveries
                .keys()
                .filter(|seq| {
                    self.receipts
                        .get(seq)
                        .is_none_or(|outcomes| outcomes & delivered_receipt == 0)
                })
                .count() as u64,
            receipt_records: self.receipt_records,
            unknown: self
                .deliveries
                .keys()
                .chain(self.receipts.keys())
                .filter(|seq| !self.produced.contains(seq))
                .collect::<HashSet<_>>()
                .len() as u64,
            ..DownlinkAccounting::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(terminal: u32, seq: u64) -> UplinkKey {
        UplinkKey { terminal, seq }
    }

    #[test]
    fn a_clean_run_loses_nothing() {
        let mut ledger = UplinkLedger::default();
        for seq in 0..10 {
            ledger.sent(key(1, seq));
            assert!(ledger.acked(key(1, seq)));
            assert!(ledger.read_back(key(1, seq), false));
        }
        assert!(ledger.all_sent_in_kafka());
        let a = ledger.accounting();
        assert_eq!(
            (
                a.sent,
                a.acked,
                a.in_kafka,
                a.acked_but_lost,
                a.duplicates,
                a.never_acked
            ),
            (10, 10, 10, 0, 0, 0)
        );
        assert_eq!((a.kafka_records, a.unknown_in_kafka), (10, 0));
    }

    #[test]
    fn uplink_loss_duplicates_and_unacknowledged_are_told_apart() {
        let mut ledger = UplinkLedger::default();
        for seq in 0..6 {
            ledger.sent(key(0, seq));
        }
        // 0, 1: acked and in Kafka; 1 twice (a retransmission whose first
        // PUBACK was lost), three times counting a DUP-marked copy.
        for seq in [0, 1] {
            ledger.acked(key(0, seq));
        }
        assert!(ledger.read_back(key(0, 0), false));
        assert!(ledger.read_back(key(0, 1), false));
        assert!(!ledger.read_back(key(0, 1), true));
        assert!(!ledger.read_back(key(0, 1), true));
        // 2: acked twice (counted once), never in Kafka: acknowledged but lost.
        assert!(ledger.acked(key(0, 2)));
        assert!(!ledger.acked(key(0, 2)));
        // 3: in Kafka, PUBACK never came. 4, 5: neither.
        ledger.read_back(key(0, 3), false);
        // A record of this run nobody sent.
        ledger.read_back(key(9, 0), false);
        assert!(!ledger.all_sent_in_kafka());
        let a = ledger.accounting();
        assert_eq!(a.sent, 6);
        assert_eq!(a.acked, 3);
        assert_eq!(a.in_kafka, 3, "0, 1, 3 (not the unknown one)");
        assert_eq!(a.acked_but_lost, 1);
        assert_eq!(a.duplicates, 2);
        assert_eq!(a.never_acked, 3);
        assert_eq!(a.never_acked_in_kafka, 1);
        assert_eq!(a.kafka_records, 6);
        assert_eq!(a.kafka_records_marked_dup, 2);
        assert_eq!(a.unknown_in_kafka, 1);
    }

    #[test]
    fn downlink_lost_means_neither_delivered_nor_expired_nor_refused() {
        let mut ledger = DownlinkLedger::default();
        for seq in 0..6 {
            ledger.produced(seq);
        }
        ledger.produce_failed();
        // 0: delivered twice, receipted delivered twice.
        assert!(ledger.delivered(0));
        assert!(!ledger.delivered(0));
        ledger.receipt(0, ReceiptOutcome::Delivered);
        ledger.receipt(0, ReceiptOutcome::Delivered);
        // 1: delivered, receipt not read back (yet).
        ledger.delivered(1);
        // 2: expired; 3: refused.
        ledger.receipt(2, ReceiptOutcome::Expired);
        ledger.receipt(3, ReceiptOutcome::Refused);
        // 4: a DELIVERED receipt but no delivery seen: lost, by the strict rule.
        ledger.receipt(4, ReceiptOutcome::Delivered);
        // 5: nothing. 7: delivered but never confirmed produced.
        ledger.delivered(7);
        assert_eq!(ledger.unsettled(), 2);
        assert_eq!(ledger.unreceipted(), 2);
        let a = ledger.accounting();
        assert_eq!((a.produced, a.produce_failed), (6, 1));
        assert_eq!(a.delivered, 3);
        assert_eq!(a.receipted, 4);
        assert_eq!(
            a.receipted_by_outcome,
            BTreeMap::from([
                ("delivered".to_string(), 2),
                ("expired".to_string(), 1),
                ("refused".to_string(), 1)
            ])
        );
        assert_eq!(a.lost, 2, "4 and 5");
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.delivered_without_receipt, 2, "1 and 7");
        assert_eq!(a.receipt_records, 5);
        assert_eq!(a.unknown, 1);
    }

    #[test]
    fn a_subset_of_terminals_has_its_own_counts() {
        // Four terminals, commands round robin: terminal 0 stalls, the rest are healthy.
        let mut ledger = DownlinkLedger::default();
        for seq in 0..8 {
            ledger.produced(seq);
            if seq % 4 == 0 {
                // The stalled terminal's commands expire, or are refused.
                let outcome = if seq == 0 {
                    ReceiptOutcome::Expired
                } else {
                    ReceiptOutcome::Refused
                };
                ledger.receipt(seq, outcome);
            } else {
                ledger.delivered(seq);
                ledger.receipt(seq, ReceiptOutcome::Delivered);
            }
        }
        ledger.delivered(5);
        let stalled: DownlinkClassAccounting =
            ledger.subset(|seq| seq % 4 == 0).accounting().into();
        assert_eq!(
            (
                stalled.produced,
                stalled.delivered,
                stalled.receipted,
                stalled.lost
            ),
            (2, 0, 2, 0),
            "expired and refused are not lost"
        );
        assert_eq!(
            stalled.receipted_by_outcome,
            BTreeMap::from([
                ("delivered".to_string(), 0),
                ("expired".to_string(), 1),
                ("refused".to_string(), 1)
            ])
        );
        let healthy = ledger.subset(|seq| seq % 4 != 0).accounting();
        assert_eq!(
            (
                healthy.produced,
                healthy.delivered,
                healthy.lost,
                healthy.duplicated
            ),
            (6, 6, 0, 1)
        );
        assert_eq!(healthy.unknown, 0);
        assert_eq!(ledger.accounting().produced, 8);
    }
}
