//! SUBSCRIBE and UNSUBSCRIBE: validation, the ACL, the session's
//! subscription list, the router, and retained messages after the SUBACK.

use super::log_gate::{clip, gated_info};
use super::{CloseReason, Connection};
use crate::codec::*;
use crate::compact;
use crate::session::{Queued, SubOptions};
use crate::topic::{check_filter, split_shared};
use bytes::BytesMut;
use std::num::NonZeroU32;

impl Connection {
    pub(super) fn on_subscribe(
        &mut self,
        out: &mut BytesMut,
        subscribe: Subscribe,
    ) -> Result<(), CloseReason> {
        // [MQTT-3.8.2.1.2]: a Subscription Identifier of 0 is a protocol error.
        let id = match subscribe.properties.as_ref().and_then(|p| p.id) {
            None => None,
            Some(id) => match u32::try_from(id).ok().and_then(NonZeroU32::new) {
                Some(id) => Some(id),
                None => return Err(self.protocol_error("Subscription Identifier 0")),
            },
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for filter in subscribe.filters {
            let path = filter.path.as_str();
            let checked = check_filter(path, &self.shared.config.limits);
            // `$share/<group>/<filter>`: the ACL looks at the filter.
            let shared = split_shared(path);
            if shared.is_some() && filter.nolocal {
                return Err(self.protocol_error("No Local on a shared subscription"));
                // [MQTT-3.8.3-4]
            }
            let acl_filter = match shared {
                Some(Ok((_, inner))) => inner,
                _ => path,
            };
            let code = if let Err(error) = checked {
                if let Some(limit) = error.limit_label() {
                    self.shared
                        .metrics
                        .limits_exceeded
                        .with_label_values(&[limit])
                        .inc();
                    gated_info!(
                        self,
                        limit,
                        "subscription over a topic filter limit refused"
                    );
                }
                SubscribeReasonCode::TopicFilterInvalid
            } else if let Some(Err(_)) = shared {
                SubscribeReasonCode::TopicFilterInvalid
            } else if !self.shared.auth.may_subscribe(self.client_id(), acl_filter) {
                self.shared
                    .metrics
                    .acl_denied
                    .with_label_values(&["subscribe"])
                    .inc();
                gated_info!(
                    self,
                    filter = clip(path, 128),
                    "subscription outside the device's namespace refused"
                );
                SubscribeReasonCode::NotAuthorized
            } else {
                let options = SubOptions {
                    qos: filter.qos,
                    no_local: filter.nolocal,
                    retain_as_published: filter.preserve_retain,
                    id,
                };
                let max_subscriptions = self.shared.config.limits.max_subscriptions_per_session;
                let existed = {
                    let mut state = self.session.lock();
                    let count = state.subscriptions.len();
                    match state.subscriptions.iter_mut().find(|(f, _)| &**f == path) {
                        Some(entry) => {
                            entry.1 = options;
                            Some(true)
                        }
                        None if count >= max_subscriptions => None,
                        None => {
                            compact::push(&mut state.subscriptions, (path.into(), options));
                            Some(false)
                        }
                    }
                };
                let Some(existed) = existed else {
                    self.shared
                        .metrics
                        .limits_exceeded
                        .with_label_values(&["subscriptions"])
                        .inc();
                    gated_info!(
                        self,
                        max_subscriptions,
                        "subscription over the session's limit refused"
                    );
                    codes.push(SubscribeReasonCode::QuotaExceeded);
                    continue;
                };
                self.shared.router.subscribe(path, &self.session, options);
                // Retain Handling 0/1/2 [MQTT-3.3.1-9], [MQTT-3.3.1-10],
                // [MQTT-3.3.1-11]; none for a shared subscription (§4.8.2).
                let send_retained = shared.is_none()
                    && match filter.retain_forward_rule {
                        RetainForwardRule::OnEverySubscribe => true,
                        RetainForwardRule::OnNewSubscribe => !existed,
                        RetainForwardRule::Never => false,
                    };
                // More than the queue holds would only be dropped again.
                let room = self
                    .shared
                    .config
                    .max_queued_messages
                    .saturating_sub(retained.len());
                if send_retained && room > 0 {
                    let ids: Box<[usize]> = id.map(|id| id.get() as usize).into_iter().collect();
                    retained.extend(
                        self.shared
                            .retained
                            .matching(path, filter.qos, room)
                            .into_iter()
                            .map(|queued| Queued {
                                subscription_ids: ids.clone(),
                                ..queued
                            }),
                    );
                }
                SubscribeReasonCode::Success(filter.qos)
            };
            codes.push(code);
        }
        let ack = SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
            properties: None,
        };
        self.send(out, &Packet::SubAck(ack));
        let config = &self.shared.config;
        for queued in retained {
            let offer =
                self.session
                    .offer(queued, config.max_queued_messages, config.queue_full_policy);
            self.shared.count_offer(&offer);
        }
        // Downlinks that waited for this subscription.
        self.shared.flush_mailbox(&self.session);
        self.drain_session(out);
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, out: &mut BytesMut, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let removed = {
                let mut state = self.session.lock();
                let before = state.subscriptions.len();
                state.subscriptions.retain(|(f, _)| **f != **filter);
                before != state.subscriptions.len()
            };
            if removed {
                self.shared.router.unsubscribe(filter, &self.session);
            }
            reasons.push(if removed {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
        }
        let ack = UnsubAck {
            pkid: unsubscribe.pkid,
            reasons,
            properties: None,
        };
        self.send(out, &Packet::UnsubAck(ack));
    }
}
