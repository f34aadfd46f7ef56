//! The offset watermark of a consumer that settles records out of order: a
//! partition's offset is stored for commit only up to its oldest record not
//! yet handled, so a crash or a rebalance redelivers (at least once)
//! everything unsettled, and never skips it.
//!
//! Per partition, [`OffsetWatermark`] keeps the offsets in flight and the
//! next offset not yet consumed. [`OffsetWatermark::complete`] says when the
//! offset to store advanced; [`store`] stores it on the consumer. The caller
//! holds the watermark (behind a mutex when completions come from several
//! tasks).

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap};

/// Offsets of one consumer's partitions: which are in flight, and how far
/// every earlier one is handled.
#[derive(Debug, Default)]
pub struct OffsetWatermark {
    topics: HashMap<String, HashMap<i32, PartitionOffsets>>,
}

#[derive(Debug)]
struct PartitionOffsets {
    /// Consumed, not yet handled.
    in_flight: BTreeSet<i64>,
    /// One past the highest offset consumed.
    next_unseen: i64,
    /// The offset last returned to store (or where tracking began).
    stored: i64,
}

impl PartitionOffsets {
    /// Tracking that begins at `offset`: nothing before it is ours to store.
    fn starting_at(offset: i64) -> Self {
        Self {
            in_flight: BTreeSet::new(),
            next_unseen: offset,
            stored: offset,
        }
    }
}

impl OffsetWatermark {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `offset` of `topic`/`partition` consumed and in flight. An offset
    /// below one consumed before means consumption rewound (the partition
    /// came back after a rebalance, from its committed offset): what was
    /// tracked for the partition is dropped and tracking starts over there.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.topics.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.topics.entry(topic.to_string()).or_default(),
        };
        let p = partitions
            .entry(partition)
            .or_insert_with(|| PartitionOffsets::starting_at(offset));
        if offset < p.next_unseen {
            *p = PartitionOffsets::starting_at(offset);
        }
        p.in_flight.insert(offset);
        p.next_unseen = offset + 1;
    }

    /// Marks `offset` handled. Returns the offset to store (the next one to
    /// consume after a restart: every earlier offset is handled) when it
    /// advanced, else `None` (an earlier offset is still in flight, or the
    /// partition is not tracked: never begun, or forgotten).
    pub fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.topics.get_mut(topic)?.get_mut(&partition)?;
        p.in_flight.remove(&offset);
        let safe = p.in_flight.first().copied().unwrap_or(p.next_unseen);
        (safe > p.stored).then(|| {
            p.stored = safe;
            safe
        })
    }

    /// Stops tracking `topic`/`partition` (e.g. revoked): completions of its
    /// records still in flight return `None`, and the next [`begin`] starts
    /// over from its offset.
    ///
    /// [`begin`]: OffsetWatermark::begin
    pub fn forget_partition(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.topics.get_mut(topic) {
            partitions.remove(&partition);
            if partitions.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Records of `topic`/`partition` begun and not completed.
    pub fn in_flight(&self, topic: &str, partition: i32) -> usize {
        self.topics
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
            .map_or(0, |p| p.in_flight.len())
    }
}

/// Stores `next`, the first offset of `topic`/`partition` not handled (what
/// [`OffsetWatermark::complete`] returns), as the offset to commit. Fails
/// when the partition is not assigned to `consumer` (any more).
pub fn store<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    next: i64,
) -> KafkaResult<()> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(next))?;
    consumer.store_offsets(&list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_up_to_the_oldest_unhandled_offset() {
        let mut w = OffsetWatermark::new();
        for o in 10..14 {
            w.begin("d", 0, o);
        }
        assert_eq!(w.in_flight("d", 0), 4);
        assert_eq!(w.complete("d", 0, 11), None, "10 still in flight");
        assert_eq!(w.complete("d", 0, 12), None);
        assert_eq!(
            w.complete("d", 0, 10),
            Some(13),
            "10..=12 handled: resume at 13"
        );
        assert_eq!(w.complete("d", 0, 13), Some(14));
        assert_eq!(w.in_flight("d", 0), 0);
    }

    #[test]
    fn in_order_completion_advances_every_time() {
        let mut w = OffsetWatermark::new();
        w.begin("d", 0, 0);
        w.begin("d", 0, 1);
        assert_eq!(w.complete("d", 0, 0), Some(1));
        assert_eq!(w.complete("d", 0, 1), Some(2));
    }

    #[test]
    fn partitions_and_topics_are_independent() {
        let mut w = OffsetWatermark::new();
        w.begin("d", 0, 7);
        w.begin("d", 1, 5);
        w.begin("e", 0, 100);
        assert_eq!(w.complete("d", 1, 5), Some(6));
        assert_eq!(w.complete("e", 0, 100), Some(101));
        assert_eq!(w.in_flight("d", 0), 1, "d/0 untouched");
        assert_eq!(w.complete("d", 0, 7), Some(8));
    }

    #[test]
    fn unknown_partitions_and_offsets_store_nothing() {
        let mut w = OffsetWatermark::new();
        assert_eq!(w.complete("x", 0, 1), None, "never begun");
        w.begin("d", 0, 5);
        assert_eq!(w.complete("d", 1, 5), None, "other partition");
        assert_eq!(w.complete("d", 0, 3), None, "an offset not in flight");
        assert_eq!(w.complete("d", 0, 5), Some(6));
        assert_eq!(w.complete("d", 0, 5), None, "completed twice");
    }

    #[test]
    fn gaps_in_the_offsets_are_skipped() {
        // Compacted topics and transaction markers leave gaps.
        let mut w = OffsetWatermark::new();
        w.begin("d", 0, 10);
        w.begin("d", 0, 15);
        assert_eq!(w.complete("d", 0, 15), None);
        assert_eq!(w.complete("d", 0, 10), Some(16));
    }

    #[test]
    fn a_rewind_after_a_rebalance_starts_over() {
        let mut w = OffsetWatermark::new();
        for o in 100..150 {
            w.begin("d", 0, o);
        }
        assert_eq!(w.complete("d", 0, 100), Some(101));
        // The partition is revoked and comes back from the committed offset.
        w.begin("d", 0, 101);
        assert_eq!(
            w.in_flight("d", 0),
            1,
            "the old assignment's offsets dropped"
        );
        assert_eq!(
            w.complete("d", 0, 101),
            Some(102),
            "not next_unseen (150) of the old assignment"
        );
        assert_eq!(
            w.complete("d", 0, 140),
            None,
            "old in-flight work does not move it"
        );
    }

    #[test]
    fn a_forgotten_partition_ignores_stale_completions_and_starts_over() {
        let mut w = OffsetWatermark::new();
        for o in 100..110 {
            w.begin("d", 0, o);
        }
        w.begin("d", 1, 7);
        w.forget_partition("d", 0);
        w.forget_partition("d", 9); // never tracked: nothing happens
        assert_eq!(w.in_flight("d", 0), 0);
        assert_eq!(w.complete("d", 0, 100), None, "revoked: nothing to store");
        // Another member advanced the partition before it came back.
        w.begin("d", 0, 200);
        w.begin("d", 0, 201);
        assert_eq!(w.complete("d", 0, 201), None);
        assert_eq!(w.complete("d", 0, 200), Some(202));
        assert_eq!(w.complete("d", 1, 7), Some(8), "other partitions kept");
        w.forget_partition("d", 0);
        w.forget_partition("d", 1);
        assert!(w.topics.is_empty());
    }

    #[test]
    fn storing_on_a_partition_not_assigned_fails() {
        use rdkafka::consumer::BaseConsumer;
        // Nothing listens there; creating a consumer does not connect yet.
        let consumer: BaseConsumer =
            crate::clients::at_least_once_consumer("127.0.0.1:1", "t", "g")
                .create()
                .unwrap();
        assert!(store(&consumer, "d", 0, 5).is_err());
    }
}
