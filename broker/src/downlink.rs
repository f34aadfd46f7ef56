//! Downlinks: messages addressed to one device, each with a ticket that
//! settles when the device acknowledged it (PUBACK), when it expired, or when
//! it was refused. The Kafka bridge commits a command's offset only once its
//! ticket settled, so a downlink is never acknowledged upstream before the
//! device has it.
//!
//! A downlink goes to the device's session if the device subscribed to a
//! filter matching its topic; otherwise it waits in the device's mailbox until
//! such a subscription arrives (a device that connects with a clean session
//! subscribes again) or it expires.

use crate::codec::{PublishProperties, QoS};
use crate::config::QueueFullPolicy;
use crate::session::{Message, Queued};
use bytes::Bytes;
use dashmap::DashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tokio::sync::oneshot;

/// A message for one device.
#[derive(Debug, Clone)]
pub struct Downlink {
    pub device_id: String,
    /// MQTT topic, inside the device's downlink namespace.
    pub topic: String,
    pub payload: Bytes,
    /// Not delivered after this time.
    pub expires_at: Option<SystemTime>,
    /// MQTT 5 user properties sent with the PUBLISH (e.g. `traceparent`);
    /// MQTT 3.1.1 devices get the message without them.
    pub user_properties: Vec<(String, String)>,
}

/// How a downlink ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The device acknowledged it (PUBACK; for a QoS 0 subscription: sent).
    Acknowledged,
    /// Its expiry passed before it was sent.
    Expired,
    Refused(DownlinkRefusal),
}

/// Why a downlink cannot be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkRefusal {
    #[error("invalid device id")]
    InvalidDeviceId,
    #[error("device is revoked")]
    Revoked,
    #[error("topic is outside the device's downlink namespace")]
    TopicOutsideNamespace,
    #[error("the device's queue is full")]
    QueueFull,
    #[error("larger than the device's maximum packet size")]
    PacketTooLarge,
}

impl DownlinkRefusal {
    /// Stable name for receipts and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidDeviceId => "invalid_device_id",
            Self::Revoked => "revoked",
            Self::TopicOutsideNamespace => "topic_outside_namespace",
            Self::QueueFull => "queue_full",
            Self::PacketTooLarge => "packet_too_large",
        }
    }
}

/// Settles with the downlink's outcome. `None` means the broker let go of it
/// without an outcome (its session was discarded or expired): deliver it again.
pub struct DeliveryTicket(oneshot::Receiver<DeliveryOutcome>);

impl DeliveryTicket {
    pub(crate) fn settled(outcome: DeliveryOutcome) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(outcome);
        Self(rx)
    }
}

impl Future for DeliveryTicket {
    type Output = Option<DeliveryOutcome>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

/// The broker's side of a ticket, carried with the queued message.
#[derive(Debug)]
pub(crate) struct DownlinkTag {
    settle: Mutex<Option<oneshot::Sender<DeliveryOutcome>>>,
    expires_at: Option<Instant>,
}

impl DownlinkTag {
    pub(crate) fn new(expires_at: Option<SystemTime>) -> (Arc<Self>, DeliveryTicket) {
        let (tx, rx) = oneshot::channel();
        // Convert the wall-clock expiry to the monotonic clock once.
        let expires_at = expires_at.map(|at| match at.duration_since(SystemTime::now()) {
            Ok(left) => Instant::now() + left,
            Err(_) => Instant::now(),
        });
        (
            Arc::new(Self {
                settle: Mutex::new(Some(tx)),
                expires_at,
            }),
            DeliveryTicket(rx),
        )
    }

    pub(crate) fn settle(&self, outcome: DeliveryOutcome) {
        if let Some(tx) = self.settle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(outcome);
        }
    }

    /// Expired, or nobody waits for it any more (the bridge gave up on it):
    /// either way it must not be sent.
    pub(crate) fn is_stale(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
            || self
                .settle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(|tx| tx.is_closed())
    }
}

/// Downlinks waiting for their device to subscribe.
#[derive(Default)]
pub(crate) struct Mailbox {
    waiting: DashMap<Arc<str>, Vec<(Box<str>, Queued)>>,
}

impl Mailbox {
    pub(crate) fn push(
        &self,
        device_id: &str,
        topic: &str,
        queued: Queued,
        max: usize,
        policy: QueueFullPolicy,
    ) {
        let mut entry = self.waiting.entry(Arc::from(device_id)).or_default();
        if entry.len() >= max {
            // Refused with a receipt either way: the new command (it waits in
            // order behind the others) or, by choice, the oldest.
            let refused = match policy {
                QueueFullPolicy::Backpressure => queued,
                QueueFullPolicy::DropOldest => {
                    let (_, oldest) = entry.remove(0);
                    entry.push((topic.into(), queued));
                    oldest
                }
            };
            if let Some(tag) = &refused.downlink {
                tag.settle(DeliveryOutcome::Refused(DownlinkRefusal::QueueFull));
            }
            return;
        }
        entry.push((topic.into(), queued));
    }

    /// Takes, in arrival order, the waiting downlinks whose topic `matches`.
    pub(crate) fn take_matching(
        &self,
        device_id: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<Queued> {
        let Some(mut entry) = self.waiting.get_mut(device_id) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        entry.retain(|(topic, queued)| {
            if matches(topic) {
                taken.push(queued.clone());
                false
            } else {
                true
            }
        });
        let empty = entry.is_empty();
        drop(entry);
        if empty {
            self.waiting.remove_if(device_id, |_, list| list.is_empty());
        }
        taken
    }

    /// Settles expired downlinks and forgets abandoned ones.
    pub(crate) fn sweep(&self, now: Instant) {
        self.waiting.retain(|_, list| {
            list.retain(|(_, queued)| match &queued.downlink {
                Some(tag) if tag.is_stale(now) => {
                    tag.settle(DeliveryOutcome::Expired);
                    false
                }
                _ => true,
            });
            !list.is_empty()
        });
    }
}

/// Builds the queued form of a downlink.
pub(crate) fn queued(downlink: Downlink, tag: Arc<DownlinkTag>) -> (Box<str>, Queued) {
    let topic: Box<str> = downlink.topic.into_boxed_str();
    // Its expiry is the tag's (settled as expired, not just dropped).
    let message = Message::new(
        Bytes::copy_from_slice(topic.as_bytes()),
        downlink.payload,
        false,
        QoS::AtLeastOnce,
        (!downlink.user_properties.is_empty()).then(|| {
            Arc::new(PublishProperties {
                user_properties: downlink.user_properties,
                ..Default::default()
            })
        }),
    );
    (
        topic,
        Queued {
            downlink: Some(tag),
            ..Queued::plain(message, QoS::AtLeastOnce, false)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stale_when_expired_or_abandoned() {
        let (tag, ticket) = DownlinkTag::new(Some(SystemTime::now() + Duration::from_secs(60)));
        assert!(!tag.is_stale(Instant::now()));
        assert!(tag.is_stale(Instant::now() + Duration::from_secs(61)));
        drop(ticket);
        assert!(tag.is_stale(Instant::now()), "nobody waits for it");
    }

    #[tokio::test]
    async fn mailbox_keeps_order_and_bounds() {
        for policy in [QueueFullPolicy::Backpressure, QueueFullPolicy::DropOldest] {
            let mailbox = Mailbox::default();
            let mut tickets = Vec::new();
            for i in 0..3 {
                let (tag, ticket) = DownlinkTag::new(None);
                tickets.push(ticket);
                let (topic, q) = queued(
                    Downlink {
                        device_id: "d".into(),
                        topic: format!("devices/d/down/{i}"),
                        payload: Bytes::new(),
                        expires_at: None,
                        user_properties: Vec::new(),
                    },
                    tag,
                );
                mailbox.push("d", &topic, q, 2, policy);
            }
            // Backpressure refuses the newcomer; drop_oldest the oldest.
            let (refused, kept) = match policy {
                QueueFullPolicy::Backpressure => (2, [0, 1]),
                QueueFullPolicy::DropOldest => (0, [1, 2]),
            };
            assert_eq!(
                tickets.remove(refused).await,
                Some(DeliveryOutcome::Refused(DownlinkRefusal::QueueFull))
            );
            let taken = mailbox.take_matching("d", |t| t.starts_with("devices/d/down/"));
            let topics: Vec<String> = taken
                .iter()
                .map(|q| String::from_utf8_lossy(&q.message.topic).into_owned())
                .collect();
            let expected: Vec<String> =
                kept.iter().map(|i| format!("devices/d/down/{i}")).collect();
            assert_eq!(topics, expected, "{policy:?}");
            assert!(mailbox.take_matching("d", |_| true).is_empty());
        }
    }
}
