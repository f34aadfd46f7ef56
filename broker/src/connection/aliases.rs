//! MQTT 5 topic aliases of one connection, in both directions (§3.3.2.3.4).
//!
//! A client may name a topic once and then send a two-byte alias instead;
//! Herald does the same towards clients that allow it. Both maps live only
//! as long as the connection [MQTT-3.3.2-7] and are bounded by the Topic
//! Alias Maximum of the side that receives the aliases.

use bytes::Bytes;
use std::collections::HashMap;

/// Why a client's topic alias cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AliasError {
    /// 0, or above the Topic Alias Maximum Herald sent: DISCONNECT 0x94
    /// [MQTT-3.3.2-8], [MQTT-3.3.2-9].
    OutOfRange,
    /// An alias with an empty topic that the client never set: a protocol
    /// error.
    Unknown,
}

/// The aliases of one connection; allocated on first use, so connections
/// that never use aliases pay one pointer for them.
#[derive(Debug, Default)]
pub(super) struct TopicAliases {
    /// Client → Herald: alias → topic name.
    inbound: HashMap<u16, Bytes>,
    /// Herald → client: topic name → alias.
    outbound: HashMap<Bytes, u16>,
}

impl TopicAliases {
    /// The topic of an incoming PUBLISH that carries `alias`: with a topic
    /// name, the alias is (re)set to it; with an empty one, the topic is
    /// the one the alias was set to.
    pub fn resolve(&mut self, alias: u16, topic: Bytes, maximum: u16) -> Result<Bytes, AliasError> {
        if alias == 0 || alias > maximum {
            return Err(AliasError::OutOfRange);
        }
        if topic.is_empty() {
            return self.inbound.get(&alias).cloned().ok_or(AliasError::Unknown);
        }
        // At most `maximum` entries: the key is a valid alias.
        self.inbound.insert(alias, topic.clone());
        Ok(topic)
    }

    /// The alias to send `topic` with, and whether the client already knows
    /// it (then the topic name is left out). A new topic takes the next
    /// free alias while fewer than `maximum` are in use; past that, topics
    /// go out in full (no eviction: a terminal has a handful of topics).
    pub fn outgoing(&self, topic: &Bytes, maximum: u16) -> Option<(u16, bool)> {
        match self.outbound.get(topic) {
            Some(&alias) => Some((alias, true)),
            None if self.outbound.len() < usize::from(maximum) => {
                Some((self.outbound.len() as u16 + 1, false))
            }
            None => None,
        }
    }

    /// Records that `alias` was sent with `topic`'s full name.
    pub fn assigned(&mut self, topic: Bytes, alias: u16) {
        self.outbound.insert(topic, alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_aliases_are_set_used_and_bounded() {
        let mut aliases = TopicAliases::default();
        let topic = Bytes::from_static(b"devices/a/up/scan");
        assert_eq!(aliases.resolve(1, topic.clone(), 2), Ok(topic.clone()));
        assert_eq!(aliases.resolve(1, Bytes::new(), 2), Ok(topic));
        assert_eq!(
            aliases.resolve(2, Bytes::new(), 2),
            Err(AliasError::Unknown)
        );
        assert_eq!(
            aliases.resolve(3, Bytes::new(), 2),
            Err(AliasError::OutOfRange)
        );
        assert_eq!(
            aliases.resolve(0, Bytes::from_static(b"t"), 2),
            Err(AliasError::OutOfRange)
        );
    }

    #[test]
    fn outbound_aliases_are_assigned_until_the_clients_maximum() {
        let mut aliases = TopicAliases::default();
        let (a, b, c) = (
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        );
        assert_eq!(aliases.outgoing(&a, 2), Some((1, false)));
        aliases.assigned(a.clone(), 1);
        assert_eq!(aliases.outgoing(&a, 2), Some((1, true)));
        assert_eq!(aliases.outgoing(&b, 2), Some((2, false)));
        aliases.assigned(b, 2);
        assert_eq!(aliases.outgoing(&c, 2), None, "full: sent in full");
    }
}
