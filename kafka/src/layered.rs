//! Configuration in layers: the defaults of the config structs, then one
//! TOML file, then environment variables `<PREFIX><SECTION>__<KEY>` (double
//! underscore between levels). Only variables that name a known section or
//! top-level key are configuration, so a binary's other variables (its
//! config file path, a load tester's key) never collide with it. Errors say
//! which key was wrong and where its value came from.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("configuration file {} does not exist", .0.display())]
    Missing(PathBuf),
    /// One line per wrong key: `key` (from source): what is wrong.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from its defaults, the TOML file at `path` (if any) and the
/// environment variables `<prefix><KEY>` where KEY is one of `keys` (a
/// section, followed by `__` and its fields, or a top-level key alone).
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    prefix: &str,
    keys: &'static [&'static str],
) -> Result<T, LoadError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(LoadError::Missing(path.to_owned()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(
            Env::prefixed(prefix)
                .filter(move |key| {
                    let key = key.as_str().to_ascii_lowercase();
                    keys.iter().any(|k| {
                        key == *k
                            || key
                                .strip_prefix(k)
                                .is_some_and(|rest| rest.starts_with("__"))
                    })
                })
                .split("__"),
        )
        .extract()
        .map_err(|error| LoadError::Invalid(describe(error)))
}

/// One line per error, naming the key and where the value came from.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_string()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (from {s})"))
                .unwrap_or_default();
            format!("`{key}`{source}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        listen: Option<String>,
        kafka: Kafka,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Kafka {
        topic: String,
        max_inflight: u32,
    }

    const KEYS: &[&str] = &["kafka", "listen"];

    #[test]
    fn file_then_known_environment_keys_and_nothing_else() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[kafka]\ntopic = \"from-file\"\nmax_inflight = 5\n",
            )?;
            jail.set_env("T_KAFKA__MAX_INFLIGHT", "7");
            jail.set_env("T_LISTEN", "0.0.0.0:1");
            jail.set_env("T_CONFIG", "not a key"); // a binary's own variable
            let config: Config = load(Some(Path::new("c.toml")), "T_", KEYS).unwrap();
            assert_eq!(config.kafka.topic, "from-file");
            assert_eq!(config.kafka.max_inflight, 7);
            assert_eq!(config.listen.as_deref(), Some("0.0.0.0:1"));
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("T_KAFKA__MAX_INFLIGHT", "many");
            let error = load::<Config>(None, "T_", KEYS).unwrap_err().to_string();
            assert!(error.contains("`kafka.max_inflight`"), "{error}");
            let missing = load::<Config>(Some(Path::new("nope.toml")), "T_", KEYS).unwrap_err();
            assert!(matches!(missing, LoadError::Missing(_)));
            Ok(())
        });
    }
}
