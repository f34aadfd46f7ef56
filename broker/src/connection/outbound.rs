//! Outbound delivery: what the session queue holds goes to the client within
//! its in-flight window and packet size, QoS 1/2 exchanges are completed, and
//! a resumed session repeats what the client never acknowledged.

use super::Connection;
use crate::codec::*;
use crate::downlink::{DeliveryOutcome, DownlinkRefusal};
use crate::io::WRITE_HIGH_WATER;
use crate::metrics::qos_label;
use crate::session::{Inflight, OutboundStage, Queued};
use bytes::BytesMut;
use std::time::Instant;

impl Connection {
    pub(super) fn on_pubrec(&mut self, out: &mut BytesMut, rec: PubRec) {
        let mut state = self.session.lock();
        let found = state
            .inflight
            .iter_mut()
            .find(|i| i.pkid == rec.pkid && i.stage == OutboundStage::Published);
        let mut rel = PubRel::new(rec.pkid, None);
        match found {
            Some(inflight) if (rec.reason as u8) < 0x80 => inflight.stage = OutboundStage::Released,
            Some(_) => {
                // A negative PUBREC ends the exchange.
                state.inflight.retain(|i| i.pkid != rec.pkid);
                return;
            }
            None => rel.reason = PubRelReason::PacketIdentifierNotFound,
        }
        drop(state);
        self.send(out, &Packet::PubRel(rel));
    }

    pub(super) fn complete_outbound(&mut self, pkid: u16, qos: QoS) {
        let stage = match qos {
            QoS::ExactlyOnce => OutboundStage::Released,
            _ => OutboundStage::Published,
        };
        let mut state = self.session.lock();
        let Some(at) = state
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.stage == stage && i.queued.qos == qos)
        else {
            return;
        };
        if let Some(done) = state.inflight.remove(at) {
            if let Some(tag) = done.queued.downlink {
                tag.settle(DeliveryOutcome::Acknowledged);
            }
        }
        if self.congested_since.is_some() {
            self.congested_since = Some(Instant::now()); // progress
        }
    }

    pub(super) fn publish_packet(queued: &Queued, pkid: u16, dup: bool) -> Packet {
        Packet::Publish(Publish {
            dup,
            qos: queued.qos,
            retain: queued.retain,
            topic: queued.message.topic.clone(),
            pkid,
            payload: queued.message.payload.clone(),
            properties: queued.message.properties.as_deref().cloned(),
        })
    }

    /// On a resumed session, repeats what the client never acknowledged,
    /// except downlinks that expired (or were given up) meanwhile.
    pub(super) fn resend_inflight(&self, out: &mut BytesMut) {
        let mut state = self.session.lock();
        let now = Instant::now();
        state
            .inflight
            .retain(|inflight| match &inflight.queued.downlink {
                Some(tag) if inflight.stage == OutboundStage::Published && tag.is_stale(now) => {
                    tag.settle(DeliveryOutcome::Expired);
                    false
                }
                _ => true,
            });
        for inflight in &state.inflight {
            let packet = match inflight.stage {
                OutboundStage::Published => {
                    Self::publish_packet(&inflight.queued, inflight.pkid, true)
                }
                OutboundStage::Released => Packet::PubRel(PubRel::new(inflight.pkid, None)),
            };
            self.send(out, &packet);
        }
    }

    /// Moves queued messages to the wire, within the client's in-flight
    /// window; lets waiting publishers go on once the queue has room, and
    /// notes since when it has had none.
    pub(super) fn drain_session(&mut self, out: &mut BytesMut) {
        let metrics = &self.shared.metrics;
        let mut state = self.session.lock();
        while out.len() < WRITE_HIGH_WATER && state.inflight.len() < self.outbound_limit {
            let Some(queued) = state.queue.pop_front() else {
                break;
            };
            if let Some(tag) = queued
                .downlink
                .as_ref()
                .filter(|tag| tag.is_stale(Instant::now()))
            {
                tag.settle(DeliveryOutcome::Expired);
                metrics
                    .messages_dropped
                    .with_label_values(&["expired"])
                    .inc();
                continue;
            }
            let pkid = if queued.qos == QoS::AtMostOnce {
                0
            } else {
                state.allocate_pkid()
            };
            let packet = Self::publish_packet(&queued, pkid, false);
            if packet.size() > self.client_max_packet {
                metrics
                    .messages_dropped
                    .with_label_values(&["client_max_packet_size"])
                    .inc();
                if let Some(tag) = &queued.downlink {
                    tag.settle(DeliveryOutcome::Refused(DownlinkRefusal::PacketTooLarge));
                }
                continue;
            }
            self.send(out, &packet);
            metrics
                .messages_sent
                .with_label_values(&[qos_label(queued.qos)])
                .inc();
            if queued.qos == QoS::AtMostOnce {
                // No acknowledgement will come: sent is as far as it goes.
                if let Some(tag) = &queued.downlink {
                    tag.settle(DeliveryOutcome::Acknowledged);
                }
            } else {
                state.inflight.push_back(Inflight {
                    pkid,
                    stage: OutboundStage::Published,
                    queued,
                });
            }
        }
        let max_queued = self.shared.config.max_queued_messages;
        if state.queue.len() >= max_queued {
            self.congested_since.get_or_insert_with(Instant::now);
        } else {
            self.congested_since = None;
            state.release_waiters(max_queued);
        }
    }
}
