//! Topic names and filters: what a client may publish to or subscribe to,
//! their length and depth limits, and whether a filter matches a name.
//!
//! Every name and filter passes [`check_name`] or [`check_filter`] before it
//! reaches the router, so the router's trie is never deeper than
//! `limits.max_topic_levels`.

use crate::config::LimitsConfig;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicError {
    /// Not a valid MQTT topic name or filter.
    Invalid,
    /// Longer than `limits.max_topic_length`.
    TooLong,
    /// More levels than `limits.max_topic_levels`.
    TooManyLevels,
}

impl TopicError {
    /// The `limit` label of `herald_limits_exceeded_total`, if a limit was hit.
    pub fn limit_label(self) -> Option<&'static str> {
        match self {
            Self::Invalid => None,
            Self::TooLong => Some("topic_length"),
            Self::TooManyLevels => Some("topic_levels"),
        }
    }
}

fn check_limits(topic: &str, limits: &LimitsConfig) -> Result<(), TopicError> {
    if topic.len() > limits.max_topic_length {
        return Err(TopicError::TooLong);
    }
    // Bounded by the length check above.
    if topic.bytes().filter(|&b| b == b'/').count() >= limits.max_topic_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Checks a topic name a client publishes to (or a downlink is sent on).
pub(crate) fn check_name(topic: &str, limits: &LimitsConfig) -> Result<(), TopicError> {
    check_limits(topic, limits)?;
    valid_topic_name(topic)
        .then_some(())
        .ok_or(TopicError::Invalid)
}

/// Checks a topic filter a client subscribes to.
pub(crate) fn check_filter(filter: &str, limits: &LimitsConfig) -> Result<(), TopicError> {
    check_limits(filter, limits)?;
    valid_topic_filter(filter)
        .then_some(())
        .ok_or(TopicError::Invalid)
}

/// A topic name a client may publish to: UTF-8 (checked by the caller),
/// not empty, no wildcards, no NUL.
fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65535 && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client may subscribe to.
fn valid_topic_filter(filter: &str) -> bool {
    !filter.contains('\0') && rumqttc::v5::mqttbytes::valid_filter(filter)
}

/// Splits a shared subscription `$share/<group>/<filter>` into its group
/// and filter; `None` for any other filter. The group name is at least one
/// character without `/`, `+` or `#` [MQTT-4.8.2-1], [MQTT-4.8.2-2], and
/// the filter must be a valid one.
pub(crate) fn split_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, filter)) = rest.split_once('/') else {
        return Some(Err(TopicError::Invalid));
    };
    let valid = !group.is_empty() && !group.contains(['+', '#']) && valid_topic_filter(filter);
    Some(valid.then_some((group, filter)).ok_or(TopicError::Invalid))
}

/// The part of a filter before its first wildcard level: every topic it
/// matches starts with this (used to narrow retained-message look-ups).
pub(crate) fn literal_prefix(filter: &str) -> &str {
    let end = filter
        .split('/')
        .take_while(|level| *level != "+" && *level != "#")
        .map(|level| level.len() + 1)
        .sum::<usize>();
    let prefix = &filter[..end.min(filter.len())];
    // `a/b/#` also matches `a/b` itself.
    prefix.strip_suffix('/').unwrap_or(prefix)
}

/// Does `topic` match `filter`? For retained messages and mailboxes, where a
/// scan is fine; the router matches through its trie.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_on_length_and_levels() {
        let limits = LimitsConfig {
            max_topic_length: 16,
            max_topic_levels: 3,
            ..LimitsConfig::default()
        };
        assert_eq!(check_name("a/b/c", &limits), Ok(()));
        assert_eq!(
            check_name("a/b/c/d", &limits),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(check_name("a/b/#", &limits), Err(TopicError::Invalid));
        assert_eq!(check_filter("a/b/#", &limits), Ok(()));
        assert_eq!(
            check_filter("a/+/#/", &limits),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(
            check_name(&"x".repeat(17), &limits),
            Err(TopicError::TooLong)
        );
        let deep = format!("devices/d/down/{}#", "a/".repeat(30_000));
        assert_eq!(
            check_filter(&deep, &LimitsConfig::default()),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix("devices/d1/down/#"), "devices/d1/down");
        assert_eq!(literal_prefix("a/+/c"), "a");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
        for (filter, topic) in [("a/+/c", "a/x/c"), ("a/b/#", "a/b"), ("a/b", "a/b")] {
            assert!(filter_matches(filter, topic));
            assert!(topic.starts_with(literal_prefix(filter)));
        }
    }

    #[test]
    fn shared_subscription_filters_split_into_group_and_filter() {
        assert!(split_shared("devices/#").is_none());
        assert_eq!(
            split_shared("$share/workers/devices/+/up/#").map(Result::ok),
            Some(Some(("workers", "devices/+/up/#")))
        );
        for invalid in [
            "$share/",
            "$share/g",
            "$share//t",
            "$share/g+/t",
            "$share/g/a/#/b",
        ] {
            assert!(
                matches!(split_shared(invalid), Some(Err(TopicError::Invalid))),
                "{invalid}"
            );
        }
    }

    #[test]
    fn filter_matching_rules() {
        for (filter, topic, expected) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/c", false),
        ] {
            assert_eq!(
                filter_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }
}
