//! librdkafka pass-through options (`producer_options`, `consumer_options`
//! maps in the configuration) and the keys a client owns: setting one of
//! those is a configuration error that names the key and says why.

use std::collections::BTreeMap;

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
