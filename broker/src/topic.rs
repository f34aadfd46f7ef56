//! Topic names and filters: what a client may publish to or subscribe to,
//! and whether a filter matches a name.

/// A topic name a client may publish to: UTF-8 (checked by the caller),
/// not empty, no wildcards, no NUL.
pub(crate) fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65535 && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client may subscribe to.
pub(crate) fn valid_topic_filter(filter: &str) -> bool {
    !filter.contains('\0') && rumqttc::v5::mqttbytes::valid_filter(filter)
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
