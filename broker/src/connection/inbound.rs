//! The inbound pipeline: PUBLISHes from the client through the ACL, QoS 2
//! bookkeeping and the sink, and their acknowledgements, sent in the order
//! the PUBLISHes came in and never a success the sink did not confirm.

use super::aliases::AliasError;
use super::log_gate::{clip, gated_info};
use super::{CloseReason, Connection};
use crate::codec::{self, *};
use crate::io::Io;
use crate::session::Message;
use crate::sink::{Rejection, UplinkAck, UplinkError};
use crate::topic::{check_name, TopicError};
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;
use tracing::{debug, warn};

/// How an inbound PUBLISH ends up, decided when its acknowledgement is due.
pub(super) enum Settled {
    /// Delivered (to the sink, or locally when no sink rule takes it).
    Accepted,
    /// The sink could not deliver it.
    Failed(UplinkError),
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// Outside the client's namespace.
    NotAuthorized,
    /// In device mode, no uplink rule takes the topic.
    NoRoute,
    /// The topic name is over a length or level limit.
    TopicLimit,
    /// Over a per-client quota (user properties, QoS 2 backlog).
    Quota,
}

/// A PUBLISH whose acknowledgement waits: for the sink, or for earlier
/// PUBLISHes. Holds its share of the in-flight budget.
pub(super) struct PendingAck {
    pkid: u16,
    qos: QoS,
    wait: Option<UplinkAck>,
    settled: Option<Settled>,
    _slot: Option<InflightSlot>,
}

impl Future for PendingAck {
    type Output = (u16, QoS, Settled);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let settled = match self.wait.as_mut() {
            Some(wait) => match std::task::ready!(wait.as_mut().poll(cx)) {
                Ok(()) => Settled::Accepted,
                Err(error) => Settled::Failed(error),
            },
            None => self.settled.take().unwrap_or(Settled::Accepted),
        };
        self.wait = None;
        Poll::Ready((self.pkid, self.qos, settled))
    }
}

/// A global in-flight permit, reflected in `herald_uplinks_inflight`.
pub(super) struct InflightSlot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection {
    /// Decodes and handles every complete packet buffered, unless uplinks
    /// are at their in-flight limit.
    pub(super) fn process_input<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
    ) -> Result<(), CloseReason> {
        let max_packet = self.shared.config.max_packet_size as usize;
        while self.pending.len() < usize::from(self.shared.config.max_inflight_uplinks)
            && self.permit_wait.is_none()
        {
            // A PUBLISH may go to the sink: hold a global in-flight permit
            // before decoding it, or stop reading until one is free.
            let is_publish = io.rbuf.first().is_some_and(|b| b >> 4 == 3);
            if is_publish && self.reserved.is_none() {
                match self.shared.uplink_permits.clone().try_acquire_owned() {
                    Ok(permit) => self.reserved = Some(permit),
                    Err(_) => {
                        self.permit_wait = Some(Box::new(PollSemaphore::new(
                            self.shared.uplink_permits.clone(),
                        )));
                        break;
                    }
                }
            }
            match codec::read(self.version, &mut io.rbuf, max_packet) {
                Ok(Some(packet)) => self.handle(&mut io.wbuf, packet)?,
                Ok(None) => break,
                Err(error) => {
                    let (kind, reason) = match error {
                        CodecError::TooLarge { .. } => {
                            ("packet_too_large", CloseReason::PacketTooLarge)
                        }
                        _ => ("malformed", CloseReason::ProtocolError),
                    };
                    self.shared
                        .metrics
                        .protocol_errors
                        .with_label_values(&[kind])
                        .inc();
                    gated_info!(self, %error, "closing connection on bad packet");
                    return Err(reason);
                }
            }
        }
        // An idle connection holds no permit.
        if self.permit_wait.is_none() {
            self.reserved = None;
        }
        io.release_read_buffer();
        Ok(())
    }

    pub(super) fn on_pubrel(&mut self, out: &mut BytesMut, rel: PubRel) {
        let mut comp = PubComp::new(rel.pkid, None);
        let mut state = self.session.lock();
        let before = state.incoming_qos2.len();
        state.incoming_qos2.retain(|&p| p != rel.pkid);
        if state.incoming_qos2.len() == before {
            comp.reason = PubCompReason::PacketIdentifierNotFound;
        }
        drop(state);
        self.send(out, &Packet::PubComp(comp));
    }

    /// The topic of a PUBLISH that carries a topic alias: set or looked up
    /// (MQTT 5 §3.3.2.3.4). The alias itself is not passed on.
    fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), CloseReason> {
        let Some(alias) = publish
            .properties
            .as_mut()
            .and_then(|p| p.topic_alias.take())
        else {
            return Ok(());
        };
        let maximum = self.shared.config.topic_alias_maximum;
        let topic = std::mem::take(&mut publish.topic);
        let resolved = self
            .aliases
            .get_or_insert_with(Default::default)
            .resolve(alias, topic, maximum);
        match resolved {
            Ok(topic) => {
                publish.topic = topic;
                Ok(())
            }
            Err(error) => {
                self.shared
                    .metrics
                    .protocol_errors
                    .with_label_values(&["topic_alias"])
                    .inc();
                gated_info!(
                    self,
                    alias,
                    maximum,
                    ?error,
                    "closing connection on a bad topic alias"
                );
                Err(match error {
                    AliasError::OutOfRange => CloseReason::TopicAliasInvalid,
                    AliasError::Unknown => CloseReason::ProtocolError,
                })
            }
        }
    }

    pub(super) fn on_publish(
        &mut self,
        out: &mut BytesMut,
        mut publish: Publish,
    ) -> Result<(), CloseReason> {
        self.resolve_alias(&mut publish)?;
        let metrics = &self.shared.metrics;
        metrics.messages_received.get(publish.qos).inc();
        let (pkid, qos, dup) = (publish.pkid, publish.qos, publish.dup);
        let limits = &self.shared.config.limits;
        let checked = std::str::from_utf8(&publish.topic)
            .map_err(|_| TopicError::Invalid)
            .and_then(|t| check_name(t, limits).map(|()| t));
        let topic = match checked {
            Ok(topic) => Arc::<str>::from(topic),
            Err(TopicError::Invalid) => {
                metrics
                    .protocol_errors
                    .with_label_values(&["topic_invalid"])
                    .inc();
                gated_info!(self, "closing connection on invalid topic name");
                return Err(CloseReason::ProtocolError);
            }
            Err(error) => {
                let limit = error.limit_label().unwrap_or("topic");
                metrics.limits_exceeded.with_label_values(&[limit]).inc();
                gated_info!(self, limit, "publish over a topic limit refused");
                return self.settle(out, pkid, qos, Settled::Refused(Refusal::TopicLimit));
            }
        };
        let user_properties = publish
            .properties
            .as_ref()
            .map_or(0, |p| p.user_properties.len());
        if user_properties > limits.max_user_properties {
            metrics
                .limits_exceeded
                .with_label_values(&["user_properties"])
                .inc();
            gated_info!(
                self,
                user_properties,
                "publish with too many user properties refused"
            );
            return self.settle(out, pkid, qos, Settled::Refused(Refusal::Quota));
        }
        if !self.shared.auth.may_publish(self.client_id(), &topic) {
            metrics.acl_denied.with_label_values(&["publish"]).inc();
            gated_info!(
                self,
                topic = clip(&topic, 128),
                "publish outside the device's namespace refused"
            );
            return self.settle(out, pkid, qos, Settled::Refused(Refusal::NotAuthorized));
        }
        if qos == QoS::ExactlyOnce {
            let awaiting = {
                let state = self.session.lock();
                if state.incoming_qos2.contains(&pkid) {
                    None
                } else {
                    Some(state.incoming_qos2.len())
                }
            };
            match awaiting {
                // A retransmission of a message the sink already confirmed.
                None => return self.settle(out, pkid, qos, Settled::Accepted),
                Some(n) if n >= limits.max_awaiting_pubrel => {
                    metrics
                        .limits_exceeded
                        .with_label_values(&["awaiting_pubrel"])
                        .inc();
                    gated_info!(
                        self,
                        awaiting = n,
                        "QoS 2 publish over the PUBREL backlog refused"
                    );
                    return self.settle(out, pkid, qos, Settled::Refused(Refusal::Quota));
                }
                Some(_) => {}
            }
        }
        let wanted = self.shared.sink.wants(&topic);
        if !wanted && !self.shared.auth.is_open() {
            // In device mode uplinks exist to reach Kafka: acknowledging one
            // that no rule takes would be a false success.
            metrics
                .messages_dropped
                .with_label_values(&["no_uplink_rule"])
                .inc();
            gated_info!(
                self,
                topic = clip(&topic, 128),
                "no uplink rule for this topic; refused"
            );
            return self.settle(out, pkid, qos, Settled::Refused(Refusal::NoRoute));
        }
        let message = Message::new(
            publish.topic,
            publish.payload,
            publish.retain,
            qos,
            publish.properties.map(Arc::new),
        );
        let congested = self.shared.route(Some(&self.session), &topic, &message);
        // Backpressure: the acknowledgement waits until the subscribers whose
        // queue this message filled have room again. Not for the client's own
        // session: it could never make room while its reading is paused.
        let max_queued = self.shared.config.max_queued_messages;
        let room: Vec<_> = congested
            .into_iter()
            .filter(|s| !Arc::ptr_eq(s, &self.session))
            .map(|s| s.room(max_queued))
            .collect();
        let room = (!room.is_empty()).then(|| futures::future::join_all(room));
        let sink_wait = if wanted {
            let uplink = message.to_uplink(self.session.client_id.clone(), topic, dup);
            self.shared.sink.submit(uplink)
        } else {
            None
        };
        let wait: UplinkAck = match (sink_wait, room) {
            (None, None) => return self.settle(out, pkid, qos, Settled::Accepted),
            (Some(sink), None) => sink,
            (sink, Some(room)) => Box::pin(async move {
                room.await;
                match sink {
                    Some(sink) => sink.await,
                    None => Ok(()),
                }
            }),
        };
        let slot = self.take_inflight_slot();
        self.pending.push_back(PendingAck {
            pkid,
            qos,
            wait: Some(wait),
            settled: None,
            _slot: slot,
        });
        Ok(())
    }

    /// Acknowledges now, or after the uplinks still waiting for the sink:
    /// acknowledgements keep the order of the PUBLISHes (MQTT §4.6).
    pub(super) fn settle(
        &mut self,
        out: &mut BytesMut,
        pkid: u16,
        qos: QoS,
        settled: Settled,
    ) -> Result<(), CloseReason> {
        if self.pending.is_empty() {
            self.acknowledge(out, pkid, qos, settled)
        } else {
            self.pending.push_back(PendingAck {
                pkid,
                qos,
                wait: None,
                settled: Some(settled),
                _slot: None,
            });
            Ok(())
        }
    }

    /// Takes the global in-flight permit reserved for the PUBLISH being handled.
    pub(super) fn take_inflight_slot(&mut self) -> Option<InflightSlot> {
        let permit = self.reserved.take();
        permit.map(|permit| {
            self.shared.metrics.uplinks_inflight.inc();
            InflightSlot {
                _permit: permit,
                gauge: self.shared.metrics.uplinks_inflight.clone(),
            }
        })
    }

    /// Sends the PUBACK/PUBREC for a settled PUBLISH. Never a success for
    /// an uplink the sink did not confirm.
    pub(super) fn acknowledge(
        &mut self,
        out: &mut BytesMut,
        pkid: u16,
        qos: QoS,
        settled: Settled,
    ) -> Result<(), CloseReason> {
        let (ack_reason, rec_reason) = match settled {
            Settled::Accepted => {
                if qos == QoS::ExactlyOnce {
                    // Once per id: a retransmission before the first PUBREC
                    // must not grow the list.
                    let mut state = self.session.lock();
                    if !state.incoming_qos2.contains(&pkid) {
                        state.incoming_qos2.push(pkid);
                    }
                }
                (PubAckReason::Success, PubRecReason::Success)
            }
            Settled::Failed(UplinkError::Rejected { kind, reason }) => {
                // Already set aside by the sink (dead letters): acknowledging
                // lets the device move on instead of retransmitting forever.
                self.shared
                    .metrics
                    .uplinks_rejected
                    .with_label_values(&[kind.as_label()])
                    .inc();
                debug!(client_id = self.client_id(), %reason, pkid, "uplink rejected for good by the sink");
                if self.version == ProtocolVersion::V311 {
                    (PubAckReason::Success, PubRecReason::Success)
                } else {
                    match kind {
                        Rejection::TooLarge => {
                            (PubAckReason::QuotaExceeded, PubRecReason::QuotaExceeded)
                        }
                        Rejection::Invalid => (
                            PubAckReason::PayloadFormatInvalid,
                            PubRecReason::PayloadFormatInvalid,
                        ),
                        Rejection::NotAuthorized => {
                            (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized)
                        }
                    }
                }
            }
            Settled::Failed(error) => {
                self.shared.metrics.uplink_failures.inc();
                warn!(client_id = self.client_id(), %error, pkid, "uplink not delivered; not acknowledging success");
                // A 3.1.1 client gets no PUBACK; closing the connection makes it
                // retransmit when it reconnects (MQTT 3.1.1 §4.4).
                if self.version == ProtocolVersion::V311 && qos != QoS::AtMostOnce {
                    return Err(CloseReason::UplinkFailed);
                }
                (
                    PubAckReason::UnspecifiedError,
                    PubRecReason::UnspecifiedError,
                )
            }
            Settled::Refused(refusal) => {
                // MQTT 3.1.1 has no negative acknowledgement: closing the
                // connection is the only refusal it knows (§3.3.5).
                if self.version == ProtocolVersion::V311 {
                    return Err(match refusal {
                        Refusal::NotAuthorized | Refusal::NoRoute => CloseReason::NotAuthorized,
                        Refusal::TopicLimit | Refusal::Quota => CloseReason::LimitExceeded,
                    });
                }
                match refusal {
                    Refusal::NotAuthorized => {
                        (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized)
                    }
                    Refusal::NoRoute | Refusal::TopicLimit => (
                        PubAckReason::TopicNameInvalid,
                        PubRecReason::TopicNameInvalid,
                    ),
                    Refusal::Quota => (PubAckReason::QuotaExceeded, PubRecReason::QuotaExceeded),
                }
            }
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(pkid, None);
                ack.reason = ack_reason;
                self.send(out, &Packet::PubAck(ack));
            }
            QoS::ExactlyOnce => {
                let mut rec = PubRec::new(pkid, None);
                rec.reason = rec_reason;
                self.send(out, &Packet::PubRec(rec));
            }
        }
        Ok(())
    }
}
