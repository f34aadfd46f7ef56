//! Topic rules: which Kafka topic an MQTT uplink goes to.

use crate::config::UplinkRule;
use crate::BridgeError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Capture(usize),
}

/// A compiled [`UplinkRule`].
#[derive(Debug, Clone)]
struct CompiledRule {
    levels: Vec<Level>,
    kafka_topic: Vec<Part>,
}

/// The uplink rules, compiled once at startup.
#[derive(Debug, Clone)]
pub struct TopicRules {
    rules: Vec<CompiledRule>,
}

fn rule_error(index: usize, reason: impl Into<String>) -> BridgeError {
    BridgeError::Config {
        key: format!("kafka.uplink_rules[{index}]"),
        reason: reason.into(),
    }
}

/// Kafka topic names: at most 249 of `[a-zA-Z0-9._-]`.
pub(crate) fn legal_kafka_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TopicRules {
    pub fn compile(rules: &[UplinkRule]) -> Result<Self, BridgeError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let mut levels = Vec::new();
            let mut names = Vec::new();
            let parts: Vec<&str> = rule.mqtt_topic.split('/').collect();
            for (i, level) in parts.iter().enumerate() {
                if *level == "#" {
                    if i + 1 != parts.len() {
                        return Err(rule_error(
                            index,
                            "`#` must be the last level of mqtt_topic",
                        ));
                    }
                    levels.push(Level::Rest);
                } else if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}'))
                {
                    if name.is_empty() || names.contains(&name) {
                        return Err(rule_error(
                            index,
                            format!("capture `{{{name}}}` is empty or repeated"),
                        ));
                    }
                    names.push(name);
                    levels.push(Level::Capture(name.into()));
                } else if level.contains(['+', '{', '}']) || level.contains('#') {
                    return Err(rule_error(
                        index,
                        format!("level `{level}`: use `{{name}}` to match one level"),
                    ));
                } else {
                    levels.push(Level::Literal((*level).into()));
                }
            }
            let mut kafka_topic = Vec::new();
            let mut rest = rule.kafka_topic.as_str();
            while let Some(open) = rest.find('{') {
                let close = rest[open..]
                    .find('}')
                    .map(|c| open + c)
                    .ok_or_else(|| rule_error(index, "unclosed `{` in kafka_topic"))?;
                if open > 0 {
                    kafka_topic.push(Part::Text(rest[..open].into()));
                }
                let name = &rest[open + 1..close];
                let position = names.iter().position(|n| *n == name).ok_or_else(|| {
                    rule_error(
                        index,
                        format!("kafka_topic uses `{{{name}}}`, which mqtt_topic does not capture"),
                    )
                })?;
                kafka_topic.push(Part::Capture(position));
                rest = &rest[close + 1..];
            }
            if !rest.is_empty() {
                kafka_topic.push(Part::Text(rest.into()));
            }
            let sample: String = kafka_topic
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.as_str(),
                    Part::Capture(_) => "x",
                })
                .collect();
            if !legal_kafka_topic(&sample) {
                return Err(rule_error(
                    index,
                    format!("`{}` is not a legal Kafka topic name", rule.kafka_topic),
                ));
            }
            compiled.push(CompiledRule {
                levels,
                kafka_topic,
            });
        }
        Ok(Self { rules: compiled })
    }

    /// The Kafka topic for an MQTT topic, or `None` if no rule matches (or
    /// the captured levels would make an illegal Kafka topic name).
    pub fn kafka_topic(&self, mqtt_topic: &str) -> Option<String> {
        let mut captures: Vec<&str> = Vec::new();
        'rules: for rule in &self.rules {
            captures.clear();
            let mut levels = mqtt_topic.split('/');
            for level in &rule.levels {
                match level {
                    Level::Rest => break,
                    Level::Literal(l) => {
                        if levels.next() != Some(l.as_str()) {
                            continue 'rules;
                        }
                    }
                    Level::Capture(_) => match levels.next() {
                        Some(value) if !value.is_empty() => captures.push(value),
                        _ => continue 'rules,
                    },
                }
            }
            if !matches!(rule.levels.last(), Some(Level::Rest)) && levels.next().is_some() {
                continue;
            }
            let topic: String = rule
                .kafka_topic
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.as_str(),
                    Part::Capture(i) => captures[*i],
                })
                .collect();
            if legal_kafka_topic(&topic) {
                return Some(topic);
            }
            // Captured levels made an illegal name: a later rule may still match.
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(mqtt: &str, kafka: &str) -> UplinkRule {
        UplinkRule {
            mqtt_topic: mqtt.into(),
            kafka_topic: kafka.into(),
        }
    }

    #[test]
    fn default_rules_route_terminal_uplinks() {
        let rules = TopicRules::compile(&UplinkRule::defaults()).unwrap();
        assert_eq!(
            rules.kafka_topic("devices/spk-1/up/scan").as_deref(),
            Some("herald.uplink.scan")
        );
        assert_eq!(
            rules.kafka_topic("devices/p-9/up/print-status").as_deref(),
            Some("herald.uplink.print-status")
        );
        assert_eq!(
            rules.kafka_topic("devices/p-9/up/ack").as_deref(),
            Some("herald.uplink.ack")
        );
        assert_eq!(rules.kafka_topic("devices/p-9/up/other"), None);
        assert_eq!(rules.kafka_topic("devices/p-9/up/scan/extra"), None);
        assert_eq!(rules.kafka_topic("devices//up/scan"), None);
    }

    #[test]
    fn templates_capture_levels() {
        let rules = TopicRules::compile(&[
            rule(
                "fleet/{region}/{device}/up/{kind}",
                "uplink.{region}.{kind}",
            ),
            rule("raw/#", "raw-all"),
        ])
        .unwrap();
        assert_eq!(
            rules.kafka_topic("fleet/cn-east/d1/up/scan").as_deref(),
            Some("uplink.cn-east.scan")
        );
        assert_eq!(
            rules.kafka_topic("fleet/bad region/d1/up/scan"),
            None,
            "illegal Kafka name"
        );
        assert_eq!(rules.kafka_topic("raw/a/b/c").as_deref(), Some("raw-all"));
        assert_eq!(rules.kafka_topic("raw").as_deref(), Some("raw-all"));
    }

    #[test]
    fn bad_rules_are_reported_with_their_index() {
        for (bad, expected) in [
            (rule("a/#/b", "t"), "last level"),
            (rule("a/{x}", "t.{y}"), "does not capture"),
            (rule("a/+", "t"), "{name}"),
            (rule("a/{x}", "bad topic!"), "legal Kafka"),
            (rule("a/{x}/{x}", "t"), "repeated"),
        ] {
            let err = TopicRules::compile(&[rule("ok", "ok"), bad])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("kafka.uplink_rules[1]") && err.contains(expected),
                "{err}"
            );
        }
    }
}
