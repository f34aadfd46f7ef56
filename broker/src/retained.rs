//! Retained messages: the last retained message of each topic, capped in
//! count and bytes, each kept until cleared, replaced or expired.
//!
//! Topics are kept in order, so the messages a filter can match are found by
//! a range scan over the filter's literal prefix (`devices/d1/down/#` looks
//! only at `devices/d1/down…`), not by a scan of every retained message.

use crate::codec::QoS;
use crate::config::LimitsConfig;
use crate::session::{Message, Queued};
use crate::topic::{filter_matches, literal_prefix};
use crate::MinQos;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;
use std::time::{Duration, Instant};

struct Stored {
    message: Message,
    expires_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    messages: BTreeMap<Box<str>, Stored>,
    bytes: usize,
}

/// Why a retained message was not stored; the `limit` label of
/// `herald_limits_exceeded_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetainRefused {
    Count,
    Bytes,
}

impl RetainRefused {
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Count => "retained_messages",
            Self::Bytes => "retained_bytes",
        }
    }
}

pub(crate) struct RetainedStore {
    inner: RwLock<Inner>,
    max_messages: usize,
    max_bytes: usize,
    max_age: Option<Duration>,
}

impl RetainedStore {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            inner: RwLock::default(),
            max_messages: limits.max_retained_messages,
            max_bytes: limits.max_retained_bytes,
            max_age: (!limits.retained_expiry.is_zero()).then_some(limits.retained_expiry),
        }
    }

    /// Stores (or with an empty payload, clears) the retained message of a
    /// topic. A new topic past the count or byte cap is refused; replacing
    /// a stored one only has to fit the byte cap.
    pub fn retain(&self, topic: &str, message: &Message) -> Result<(), RetainRefused> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let previous = inner
            .messages
            .get(topic)
            .map_or(0, |s| s.message.payload.len());
        if message.payload.is_empty() {
            if inner.messages.remove(topic).is_some() {
                inner.bytes -= previous;
            }
            return Ok(());
        }
        if previous == 0 && inner.messages.len() >= self.max_messages {
            return Err(RetainRefused::Count);
        }
        let bytes = inner.bytes - previous + message.payload.len();
        if bytes > self.max_bytes {
            return Err(RetainRefused::Bytes);
        }
        // The message's own expiry (MQTT 5 Message Expiry Interval, from
        // when it was published [MQTT-3.3.2-5]) or the store's cap, whichever
        // comes first.
        let cap = self.max_age.map(|age| Instant::now() + age);
        let expires_at = match (message.expires_at, cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut stored = message.clone();
        stored.retain = true;
        inner.bytes = bytes;
        inner.messages.insert(
            topic.into(),
            Stored {
                message: stored,
                expires_at,
            },
        );
        Ok(())
    }

    /// Up to `limit` unexpired retained messages matching `filter`, to send
    /// after a SUBACK.
    ///
    /// Each comes at the lower of `qos`, the subscription's, and its own.
    pub fn matching(&self, filter: &str, qos: QoS, limit: usize) -> Vec<Queued> {
        let now = Instant::now();
        let prefix = literal_prefix(filter);
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .messages
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(topic, _)| topic.starts_with(prefix))
            .filter(|(topic, stored)| {
                stored.expires_at.is_none_or(|at| at > now) && filter_matches(filter, topic)
            })
            // [MQTT-3.8.4-8]: at most the QoS it was published with.
            .map(|(_, stored)| {
                let qos = qos.min_qos(stored.message.qos);
                Queued::plain(stored.message.clone(), qos, true)
            })
            .take(limit)
            .collect()
    }

    /// Drops expired messages; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Inner { messages, bytes } = &mut *inner;
        let before = messages.len();
        messages.retain(|_, stored| {
            let keep = stored.expires_at.is_none_or(|at| at > now);
            if !keep {
                *bytes -= stored.message.payload.len();
            }
            keep
        });
        before - messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(payload: &'static [u8]) -> Message {
        Message::new(
            Bytes::new(),
            Bytes::from_static(payload),
            true,
            QoS::AtLeastOnce,
            None,
        )
    }

    fn store(max_messages: usize, max_bytes: usize) -> RetainedStore {
        RetainedStore::new(&LimitsConfig {
            max_retained_messages: max_messages,
            max_retained_bytes: max_bytes,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn stores_matches_and_clears() {
        let store = store(10, 100);
        store.retain("a/b", &msg(b"1")).unwrap();
        store.retain("a/c", &msg(b"2")).unwrap();
        store.retain("ab", &msg(b"3")).unwrap();
        assert_eq!(store.matching("a/+", QoS::AtLeastOnce, 10).len(), 2);
        assert_eq!(store.matching("a/b", QoS::AtLeastOnce, 10).len(), 1);
        assert_eq!(store.matching("a/#", QoS::AtLeastOnce, 10).len(), 2);
        assert_eq!(store.matching("#", QoS::AtLeastOnce, 10).len(), 3);
        store.retain("a/b", &msg(b"")).unwrap();
        assert_eq!(store.matching("#", QoS::AtMostOnce, 10).len(), 2);
    }

    #[test]
    fn caps_count_and_bytes_but_allows_replacing() {
        let store = store(2, 10);
        store.retain("a", &msg(b"1234")).unwrap();
        store.retain("b", &msg(b"1234")).unwrap();
        assert_eq!(store.retain("c", &msg(b"1")), Err(RetainRefused::Count));
        assert_eq!(
            store.retain("a", &msg(b"1234567")),
            Err(RetainRefused::Bytes)
        );
        store.retain("a", &msg(b"123456")).unwrap();
        store.retain("b", &msg(b"")).unwrap();
        store.retain("c", &msg(b"1234")).unwrap();
    }

    #[test]
    fn expired_messages_are_not_sent_and_are_swept() {
        let store = RetainedStore::new(&LimitsConfig {
            retained_expiry: Duration::from_millis(1),
            ..LimitsConfig::default()
        });
        store.retain("a", &msg(b"1")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.matching("a", QoS::AtMostOnce, 10).is_empty());
        assert_eq!(store.sweep(Instant::now()), 1);
        store.retain("b", &msg(b"1")).unwrap();
    }
}
