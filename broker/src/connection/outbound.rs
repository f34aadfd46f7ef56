//! Outbound delivery: what the session queue holds goes to the client within
//! its in-flight window and packet size, QoS 1/2 exchanges are completed, and
//! a resumed session repeats what the client never acknowledged.

use super::Connection;
use crate::codec::*;
use crate::downlink::{DeliveryOutcome, DownlinkRefusal};
use crate::io::WRITE_HIGH_WATER;
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

    /// The PUBLISH that sends `queued`: its properties as published, with
    /// what is left of its Message Expiry Interval [MQTT-3.3.2-6], the
    /// Subscription Identifiers it matched [MQTT-3.3.4-3], and a topic alias
    /// (`(alias, known)`: a known one replaces the topic name).
    pub(super) fn publish_packet(
        queued: &Queued,
        pkid: u16,
        dup: bool,
        now: Instant,
        alias: Option<(u16, bool)>,
    ) -> Packet {
        let message = &queued.message;
        let rewritten =
            message.expires_at.is_some() || !queued.subscription_ids.is_empty() || alias.is_some();
        let properties = if rewritten {
            let mut properties = message.properties.as_deref().cloned().unwrap_or_default();
            if let Some(at) = message.expires_at {
                // Rounded up: a message not yet expired never says 0.
                let left = at.saturating_duration_since(now).as_millis().div_ceil(1000);
                properties.message_expiry_interval = Some(left.min(u32::MAX.into()) as u32);
            }
            properties.subscription_identifiers = queued.subscription_ids.to_vec();
            properties.topic_alias = alias.map(|(alias, _)| alias);
            Some(properties)
        } else {
            message.properties.as_deref().cloned()
        };
        let topic = match alias {
            Some((_, true)) => bytes::Bytes::new(),
            _ => message.topic.clone(),
        };
        Packet::Publish(Publish {
            dup,
            qos: queued.qos,
            retain: queued.retain,
            topic,
            pkid,
            payload: message.payload.clone(),
            properties,
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
                    Self::publish_packet(&inflight.queued, inflight.pkid, true, now, None)
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
        let now = Instant::now();
        let mut state = self.session.lock();
        while out.len() < WRITE_HIGH_WATER
            && state.inflight.len() < usize::from(self.outbound_limit)
        {
            let Some(queued) = state.queue.pop_front() else {
                break;
            };
            // Expired while it waited [MQTT-3.3.2-5]; a downlink also when
            // nobody waits for its outcome any more.
            let downlink_stale = queued
                .downlink
                .as_ref()
                .is_some_and(|tag| tag.is_stale(now));
            if downlink_stale || queued.message.is_expired(now) {
                if let Some(tag) = &queued.downlink {
                    tag.settle(DeliveryOutcome::Expired);
                }
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
            let alias_max = self.client_alias_max;
            let alias = (alias_max > 0)
                .then(|| {
                    self.aliases
                        .get_or_insert_with(Default::default)
                        .outgoing(&queued.message.topic, alias_max)
                })
                .flatten();
            let packet = Self::publish_packet(&queued, pkid, false, now, alias);
            if packet.size() > self.client_max_packet as usize {
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
            if let (Some((alias, false)), Some(aliases)) = (alias, self.aliases.as_mut()) {
                aliases.assigned(queued.message.topic.clone(), alias);
            }
            metrics.messages_sent.get(queued.qos).inc();
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
