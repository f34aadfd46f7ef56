//! A terminal's outbox: the QoS 1 and 2 PUBLISHes sent and not yet
//! acknowledged, in the order they were sent, with their packet ids.
//!
//! It bounds how many messages a terminal has in flight, and after a
//! reconnect it yields what MQTT 3.1.1 §4.4 says a client resends on a
//! persistent session: every unacknowledged PUBLISH again, DUP set and with
//! its packet id, and a PUBREL for every QoS 2 message whose PUBREC came.

use crate::accounting::UplinkKey;
use bytes::Bytes;
use rumqttc::mqttbytes::v4::{Packet, PubRel, Publish};
use rumqttc::mqttbytes::QoS;
use std::collections::VecDeque;
use std::time::Instant;

/// One message waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub pkid: u16,
    pub qos: QoS,
    /// Kept only when the outbox retransmits.
    pub payload: Option<Bytes>,
    /// When it was meant to be sent (latencies count from here).
    pub intended: Instant,
    /// Its place in the run's ledger, if the run keeps one.
    pub key: Option<UplinkKey>,
    /// QoS 2: PUBREC came and PUBREL was sent; waiting for PUBCOMP.
    pub released: bool,
}

#[derive(Debug)]
pub struct Outbox {
    /// Most messages in flight; `None` for no limit.
    capacity: Option<usize>,
    /// Whether payloads are kept for retransmission.
    retransmits: bool,
    entries: VecDeque<InFlight>,
    last_pkid: u16,
}

impl Outbox {
    pub fn new(capacity: Option<usize>, retransmits: bool) -> Self {
        Self {
            capacity: capacity.map(|c| c.clamp(1, usize::from(u16::MAX))),
            retransmits,
            entries: VecDeque::new(),
            last_pkid: 0,
        }
    }

    pub fn has_room(&self) -> bool {
        self.capacity.is_none_or(|c| self.entries.len() < c)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds a message about to be sent; returns its packet id.
    pub fn push(
        &mut self,
        qos: QoS,
        payload: &Bytes,
        intended: Instant,
        key: Option<UplinkKey>,
    ) -> u16 {
        let pkid = self.free_pkid();
        self.entries.push_back(InFlight {
            pkid,
            qos,
            payload: self.retransmits.then(|| payload.clone()),
            intended,
            key,
            released: false,
        });
        pkid
    }

    /// The next packet id after the last one, skipping 0 and, in a bounded
    /// outbox, ids still in flight.
    fn free_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let in_use = self.capacity.is_some()
                && self
                    .entries
                    .iter()
                    .any(|entry| entry.pkid == self.last_pkid);
            if !in_use {
                return self.last_pkid;
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is done.
    pub fn complete(&mut self, pkid: u16) -> Option<InFlight> {
        let at = self.entries.iter().position(|entry| entry.pkid == pkid)?;
        self.entries.remove(at)
    }

    /// PUBREC: the broker has the QoS 2 message; PUBREL follows. False if
    /// `pkid` is not in flight.
    pub fn release(&mut self, pkid: u16) -> bool {
        match self.entries.iter_mut().find(|entry| entry.pkid == pkid) {
            Some(entry) => {
                entry.released = true;
                true
            }
            None => false,
        }
    }

    /// What to send again after reconnecting, oldest first: a PUBLISH with
    /// DUP set for each unacknowledged message, a PUBREL for each released one.
    pub fn retransmissions<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = Packet> + 'a {
        self.entries.iter().filter_map(move |entry| {
            if entry.released {
                return Some(Packet::PubRel(PubRel::new(entry.pkid)));
            }
            let mut publish = Publish::from_bytes(topic, entry.qos, entry.payload.clone()?);
            publish.pkid = entry.pkid;
            publish.dup = true;
            Some(Packet::Publish(publish))
        })
    }

    /// Forgets everything in flight (a client that does not retransmit,
    /// after its connection dropped); returns how many were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.entries.len();
        self.entries.clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn the_window_bounds_messages_in_flight() {
        let mut outbox = Outbox::new(Some(2), true);
        let now = Instant::now();
        let first = outbox.push(QoS::AtLeastOnce, &payload("a"), now, None);
        outbox.push(QoS::AtLeastOnce, &payload("b"), now, None);
        assert!(!outbox.has_room());
        assert_eq!(outbox.complete(first).map(|e| e.pkid), Some(first));
        assert!(outbox.has_room());
        assert!(
            outbox.complete(first).is_none(),
            "a second PUBACK is ignored"
        );
        assert!(Outbox::new(None, false).has_room());
    }

    #[test]
    fn retransmissions_keep_order_and_packet_ids_with_dup_set() {
        let mut outbox = Outbox::new(Some(16), true);
        let now = Instant::now();
        let a = outbox.push(QoS::AtLeastOnce, &payload("a"), now, None);
        let b = outbox.push(QoS::ExactlyOnce, &payload("b"), now, None);
        let c = outbox.push(QoS::AtLeastOnce, &payload("c"), now, None);
        outbox.complete(a);
        assert!(outbox.release(b));
        let resent: Vec<Packet> = outbox.retransmissions("devices/x/up/scan").collect();
        match resent.as_slice() {
            [Packet::PubRel(rel), Packet::Publish(publish)] => {
                assert_eq!(rel.pkid, b);
                assert_eq!(publish.pkid, c);
                assert!(publish.dup);
                assert_eq!(publish.qos, QoS::AtLeastOnce);
                assert_eq!(publish.topic, "devices/x/up/scan");
                assert_eq!(&publish.payload[..], b"c");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn packet_ids_wrap_past_zero_and_skip_ids_in_flight() {
        let mut outbox = Outbox::new(Some(4), true);
        let now = Instant::now();
        let stuck = outbox.push(QoS::AtLeastOnce, &payload("stuck"), now, None);
        assert_eq!(stuck, 1);
        for _ in 0..u16::MAX - 1 {
            let pkid = outbox.push(QoS::AtLeastOnce, &payload("x"), now, None);
            assert_ne!(pkid, 0);
            outbox.complete(pkid);
        }
        // 65535 was the last one; 0 and the stuck 1 are skipped.
        assert_eq!(outbox.push(QoS::AtLeastOnce, &payload("y"), now, None), 2);
    }

    #[test]
    fn without_retransmission_no_payload_is_kept() {
        let mut outbox = Outbox::new(None, false);
        outbox.push(QoS::AtLeastOnce, &payload("a"), Instant::now(), None);
        assert_eq!(outbox.retransmissions("t").count(), 0);
        assert_eq!(outbox.clear(), 1);
        assert!(outbox.is_empty());
    }
}
