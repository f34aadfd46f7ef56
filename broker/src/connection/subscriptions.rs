//! SUBSCRIBE and UNSUBSCRIBE: validation, the ACL, the session's
//! subscription list, the router, and retained messages after the SUBACK.

use super::Connection;
use crate::codec::*;
use crate::session::SubOptions;
use crate::topic::valid_topic_filter;
use bytes::BytesMut;
use tracing::info;

impl Connection {
    pub(super) fn on_subscribe(&mut self, out: &mut BytesMut, subscribe: Subscribe) {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for filter in subscribe.filters {
            let path = filter.path.as_str();
            let code = if !valid_topic_filter(path) {
                SubscribeReasonCode::TopicFilterInvalid
            } else if path.starts_with("$share/") {
                SubscribeReasonCode::SharedSubscriptionsNotSupported
            } else if !self.shared.auth.may_subscribe(self.client_id(), path) {
                self.shared
                    .metrics
                    .acl_denied
                    .with_label_values(&["subscribe"])
                    .inc();
                info!(
                    client_id = self.client_id(),
                    filter = path,
                    "subscription outside the device's namespace refused"
                );
                SubscribeReasonCode::NotAuthorized
            } else {
                let options = SubOptions {
                    qos: filter.qos,
                    no_local: filter.nolocal,
                    retain_as_published: filter.preserve_retain,
                };
                let existed = {
                    let mut state = self.session.lock();
                    match state.subscriptions.iter_mut().find(|(f, _)| &**f == path) {
                        Some(entry) => {
                            entry.1 = options;
                            true
                        }
                        None => {
                            state.subscriptions.push((path.into(), options));
                            false
                        }
                    }
                };
                self.shared.router.subscribe(path, &self.session, options);
                let send_retained = match filter.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => !existed,
                    RetainForwardRule::Never => false,
                };
                if send_retained {
                    retained.extend(self.shared.router.retained_for(path, filter.qos));
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
        for queued in retained {
            self.session
                .offer(queued, self.shared.config.max_queued_messages);
        }
        // Downlinks that waited for this subscription.
        self.shared.flush_mailbox(&self.session);
        self.drain_session(out);
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
