//! librdkafka pass-through options (`producer_options`, `consumer_options`
//! maps in the configuration): [`PassThrough`] keeps secrets such as SASL
//! passwords out of every printout, and [`check_reserved`] refuses the keys a
//! client owns with a configuration error that names the key and says why.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

/// librdkafka properties passed through unchanged. Its `Debug` output (what
/// `herald check-config` prints) shows every key but replaces the value of
/// any secret (passwords, keys, secrets, JAAS configurations) with
/// `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct PassThrough(BTreeMap<String, String>);

impl PassThrough {
    /// Whether librdkafka property `key` holds a secret.
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "jaas",
            ".key.pem",
            "private.key",
            "token",
        ]
        .iter()
        .any(|word| key.contains(word))
    }
}

impl fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if Self::is_secret(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key, shown)
            }))
            .finish()
    }
}

impl Deref for PassThrough {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for PassThrough {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A pass-through option that overrides what the client sets itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{section}.\"{key}\"`: cannot be set here; {why}")]
pub struct ReservedOption {
    /// The configuration section of the map, e.g. `kafka.producer_options`.
    pub section: String,
    /// The librdkafka property.
    pub key: String,
    /// Why, and what to set instead.
    pub why: String,
}

/// Refuses any key of `reserved` (librdkafka property, why) found in
/// `options`, the map configured at `section`.
pub fn check_reserved(
    section: &str,
    options: &BTreeMap<String, String>,
    reserved: &[(&str, &str)],
) -> Result<(), ReservedOption> {
    match reserved.iter().find(|(key, _)| options.contains_key(*key)) {
        Some((key, why)) => Err(ReservedOption {
            section: section.into(),
            key: (*key).into(),
            why: (*why).into(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let mut options = PassThrough::default();
        options.insert("sasl.password".into(), "hunter2".into());
        options.insert("sasl.oauthbearer.client.secret".into(), "s3cret".into());
        options.insert("ssl.key.pem".into(), "-----BEGIN".into());
        options.insert("compression.type".into(), "lz4".into());
        let printed = format!("{options:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        assert!(!printed.contains("BEGIN"), "{printed}");
        assert!(
            printed.contains("\"sasl.password\": \"<redacted>\""),
            "{printed}"
        );
        assert!(
            printed.contains("\"compression.type\": \"lz4\""),
            "{printed}"
        );
    }

    #[test]
    fn a_reserved_key_is_refused_with_its_section_and_reason() {
        let reserved = [("acks", "Herald always uses acks=all")];
        let mut options = BTreeMap::new();
        options.insert("linger.ms".to_string(), "5".to_string());
        assert!(check_reserved("kafka.producer_options", &options, &reserved).is_ok());
        options.insert("acks".to_string(), "1".to_string());
        let error = check_reserved("kafka.producer_options", &options, &reserved).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration `kafka.producer_options.\"acks\"`: cannot be set here; Herald always uses acks=all"
        );
    }
}
