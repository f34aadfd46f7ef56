//! Herald's configuration file: one TOML file, overridden by environment
//! variables (`HERALD_` + the key path joined with `__`, e.g.
//! `HERALD_BROKER__AUTH__FLEET_KEY` or `HERALD_KAFKA__BOOTSTRAP_SERVERS`).

use herald_bridge::{KafkaConfig, UplinkRule};
use herald_broker::BrokerConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// Top-level sections, the only environment variables read as configuration.
/// The sections `HERALD_<SECTION>__<KEY>` variables may set.
const SECTIONS: &[&str] = &["broker", "kafka", "http", "log"];

/// The whole of herald.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeraldConfig {
    /// The MQTT broker core.
    pub broker: BrokerConfig,
    /// Kafka connection and uplink rules.
    pub kafka: KafkaConfig,
    /// HTTP endpoints for probes and metrics.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[http]`: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP listener. Default `0.0.0.0:9090`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// tracing filter directives; `RUST_LOG` wins when set. Default `info`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl HeraldConfig {
    /// Loads `path` (if given) and the environment, then validates.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        // Only HERALD_<SECTION>__... variables are configuration; others
        // (HERALD_CONFIG, HERALD_FLEET_KEY for the load tester, ...) are not.
        let mut config: HeraldConfig = herald_kafka::layered::load(path, "HERALD_", SECTIONS)?;
        // The default uplink rules follow a non-default device namespace.
        let prefix = &config.broker.auth.topic_prefix;
        if config.kafka.uplink_rules == UplinkRule::defaults() && prefix != "devices" {
            config.kafka.uplink_rules = UplinkRule::defaults_for(prefix);
        }
        config.broker.validate()?;
        herald_bridge::validate(&config.kafka, config.broker.max_packet_size)?;
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_equals_defaults_where_commented() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/herald.example.toml");
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "HERALD_BROKER__AUTH__FLEET_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            );
            let config = HeraldConfig::load(Some(Path::new(example))).map_err(|e| e.to_string())?;
            assert_eq!(config.broker.listen.port(), 1883);
            assert_eq!(config.kafka.uplink_rules.len(), 4);
            let defaults = KafkaConfig::default();
            assert_eq!(config.kafka.dead_letter_topic, defaults.dead_letter_topic);
            assert_eq!(
                config.kafka.dead_letter_max_payload,
                defaults.dead_letter_max_payload
            );
            assert_eq!(
                config.kafka.presence.max_queued_events,
                defaults.presence.max_queued_events
            );
            assert_eq!(
                config.kafka.downlink.max_queued_receipts,
                defaults.downlink.max_queued_receipts
            );
            Ok(())
        });
    }

    #[test]
    fn unrelated_herald_variables_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "open.toml",
                "[broker.auth]\nmode = \"open\"\n[broker]\nlisten = \"127.0.0.1:1\"\n",
            )?;
            jail.set_env("HERALD_CONFIG", "open.toml");
            jail.set_env("HERALD_FLEET_KEY", "x");
            jail.set_env("HERALD_DEVICE_ID", "d");
            jail.set_env("HERALD_BROKER__MAX_QUEUED_MESSAGES", "7");
            let config =
                HeraldConfig::load(Some(Path::new("open.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.broker.max_queued_messages, 7);
            Ok(())
        });
    }

    #[test]
    fn default_uplink_rules_follow_the_device_namespace() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ns.toml",
                "[broker.auth]\nmode = \"open\"\ntopic_prefix = \"terminals\"\n",
            )?;
            let config =
                HeraldConfig::load(Some(Path::new("ns.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                config.kafka.uplink_rules[0].mqtt_topic,
                "terminals/{device_id}/up/scan"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[broker]\nmax_packet_size = \"big\"\n")?;
            let err = HeraldConfig::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(
                format!("{err:#}").contains("broker.max_packet_size"),
                "{err:#}"
            );

            jail.create_file("typo.toml", "[broker]\nlisten_addr = \"0.0.0.0:1\"\n")?;
            let err = HeraldConfig::load(Some(Path::new("typo.toml"))).unwrap_err();
            assert!(format!("{err:#}").contains("listen_addr"), "{err:#}");

            jail.create_file("rules.toml", "[broker.auth]\nmode = \"open\"\n[kafka]\nuplink_rules = [{ mqtt_topic = \"a/{x}\", kafka_topic = \"bad topic\" }]\n")?;
            let err = HeraldConfig::load(Some(Path::new("rules.toml"))).unwrap_err();
            assert!(
                format!("{err:#}").contains("kafka.uplink_rules[0]"),
                "{err:#}"
            );

            jail.create_file("short.toml", "[broker.auth]\nfleet_key = \"c2hvcnQ=\"\n")?;
            let err = HeraldConfig::load(Some(Path::new("short.toml"))).unwrap_err();
            assert!(format!("{err:#}").contains("too short"), "{err:#}");

            // A packet the broker accepts must fit in a Kafka record.
            jail.create_file(
                "kafka-small.toml",
                "[broker.auth]\nmode = \"open\"\n[kafka.producer_options]\n\"message.max.bytes\" = \"1000000\"\n",
            )?;
            let err = HeraldConfig::load(Some(Path::new("kafka-small.toml"))).unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains("kafka.producer_options.\"message.max.bytes\"")
                    && err.contains("broker.max_packet_size"),
                "{err}"
            );
            jail.create_file(
                "kafka-fits.toml",
                "[broker]\nmax_packet_size = 900000\n[broker.auth]\nmode = \"open\"\n[kafka.producer_options]\n\"message.max.bytes\" = \"1000000\"\n",
            )?;
            HeraldConfig::load(Some(Path::new("kafka-fits.toml"))).map_err(|e| e.to_string())?;

            jail.create_file(
                "dlq.toml",
                "[broker.auth]\nmode = \"open\"\n[kafka]\ndead_letter_topic = \"dead letters\"\n",
            )?;
            let err = HeraldConfig::load(Some(Path::new("dlq.toml"))).unwrap_err();
            assert!(
                format!("{err:#}").contains("kafka.dead_letter_topic"),
                "{err:#}"
            );

            jail.create_file("ok.toml", "[broker.auth]\nmode = \"open\"\n")?;
            jail.set_env("HERALD_BROKER__MAX_PACKET_SIZE", "10");
            let err = HeraldConfig::load(Some(Path::new("ok.toml"))).unwrap_err();
            assert!(
                format!("{err:#}").contains("broker.max_packet_size"),
                "{err:#}"
            );
            Ok(())
        });
    }
}
