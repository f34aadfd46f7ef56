//! Configuration of the consumer services: one TOML file, overridden by
//! `HERALD_CONSUMERS_<SECTION>__<KEY>` environment variables.

use crate::templates::Templates;
use herald_kafka::options::PassThrough;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole of consumers.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumersConfig {
    pub kafka: KafkaSettings,
    pub announcer: AnnouncerConfig,
    pub print_dispatcher: PrintDispatcherConfig,
    pub scan_processor: ScanProcessorConfig,
    /// Duplicate input records dropped by each service instance.
    pub dedup: DedupConfig,
    /// `/metrics` and `/healthz` of the running service. Default `0.0.0.0:9091`.
    pub http_listen: Option<SocketAddr>,
}

/// `[kafka]`: shared by every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Where records a service cannot process go (DeadLetter). Default `herald.deadletter`.
    pub dead_letter_topic: String,
    /// Commands for devices (DownlinkCommand), consumed by Herald. Default `herald.downlink`.
    pub downlink_topic: String,
    /// Delivery receipts written by Herald. Default `herald.receipts`.
    pub receipts_topic: String,
    /// Records processed whose outputs Kafka has not acknowledged yet; the
    /// service stops consuming past it. Default 1000.
    pub max_inflight: usize,
    /// How often librdkafka reports the statistics of the service's consumer
    /// and producer, exported as the `herald_kafka_*` metrics
    /// (`statistics.interval.ms`). `0s` disables them. Default 5s.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Extra librdkafka consumer properties, passed through. Default: empty.
    pub consumer_options: PassThrough,
    /// Extra librdkafka producer properties, passed through. Default: empty.
    pub producer_options: PassThrough,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            dead_letter_topic: "herald.deadletter".into(),
            downlink_topic: "herald.downlink".into(),
            receipts_topic: "herald.receipts".into(),
            max_inflight: 1000,
            statistics_interval: herald_kafka::stats::DEFAULT_STATISTICS_INTERVAL,
            consumer_options: PassThrough::default(),
            producer_options: PassThrough::default(),
        }
    }
}

/// `[announcer]`: payment events → announcements on speakers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnouncerConfig {
    /// PaymentEvents, keyed by speaker device id. Default `herald.payments`.
    pub input_topic: String,
    /// Default `herald-announcer`.
    pub group_id: String,
    /// How long after its creation a payment is still announced, when the
    /// event carries no expiry. Default 60s.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Announcement texts per locale and channel (see templates.rs).
    pub templates: Templates,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        Self {
            input_topic: "herald.payments".into(),
            group_id: "herald-announcer".into(),
            default_ttl: Duration::from_secs(60),
            templates: Templates::default(),
        }
    }
}

/// `[print_dispatcher]`: print jobs → chunked print commands; printer status → job status.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrintDispatcherConfig {
    /// PrintJobs, keyed by printer device id. Default `herald.print.jobs`.
    pub jobs_topic: String,
    /// Printer status uplinks (Herald's uplink topic). Default `herald.uplink.print-status`.
    pub status_uplink_topic: String,
    /// JobStatus events for the backends. Default `herald.print.status`.
    pub job_status_topic: String,
    /// Default `herald-print-dispatcher`.
    pub group_id: String,
    /// Largest MQTT packet printers accept; chunks are cut to fit it. Default 32768.
    pub device_max_packet_size: usize,
    /// Expiry of jobs that carry none. Default 10m.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
}

impl Default for PrintDispatcherConfig {
    fn default() -> Self {
        Self {
            jobs_topic: "herald.print.jobs".into(),
            status_uplink_topic: "herald.uplink.print-status".into(),
            job_status_topic: "herald.print.status".into(),
            group_id: "herald-print-dispatcher".into(),
            device_max_packet_size: 32 * 1024,
            default_ttl: Duration::from_secs(600),
        }
    }
}

/// `[scan_processor]`: scan uplinks → validated scans for the payment backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanProcessorConfig {
    /// Scan uplinks (Herald's uplink topic). Default `herald.uplink.scan`.
    pub input_topic: String,
    /// ValidatedScans. Default `herald.payment.scans`.
    pub validated_topic: String,
    /// Default `herald-scan-processor`.
    pub group_id: String,
    /// What a scan box shows when a code is not accepted. Default "Payment code not accepted".
    pub rejection_text: String,
    /// What a scan box shows when its scan carried no `scan_id` (a bare-text
    /// scan, or a `ScanResult` without one), which the scan processor
    /// refuses. Default "Scan not accepted: missing scan_id".
    pub missing_scan_id_text: String,
    /// Locale of `rejection_text` and `missing_scan_id_text`. Default `en`.
    pub rejection_locale: String,
    /// How long the rejection display command stays deliverable. Default 30s.
    #[serde(with = "humantime_serde")]
    pub display_ttl: Duration,
}

impl Default for ScanProcessorConfig {
    fn default() -> Self {
        Self {
            input_topic: "herald.uplink.scan".into(),
            validated_topic: "herald.payment.scans".into(),
            group_id: "herald-scan-processor".into(),
            rejection_text: "Payment code not accepted".into(),
            missing_scan_id_text: "Scan not accepted: missing scan_id".into(),
            rejection_locale: "en".into(),
            display_ttl: Duration::from_secs(30),
        }
    }
}

/// `[dedup]`: the window of ids each service instance remembers to drop
/// duplicate input records (see `dedup.rs` and docs/schemas.md,
/// "Duplicates"). Every running instance has its own window.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How long an id is remembered after it was first seen. `0s` disables
    /// dropping duplicates. Default 10m.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// At most this many ids are remembered (under 100 bytes each); past it
    /// the oldest is forgotten. `0` disables dropping duplicates. Default 100000.
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_entries: 100_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};
    use figment::Figment;

    #[test]
    fn the_dedup_window_has_defaults_and_can_be_set() {
        let config: ConsumersConfig = Figment::new().extract().unwrap();
        assert_eq!(config.dedup.window, Duration::from_secs(600));
        assert_eq!(config.dedup.max_entries, 100_000);
        let config: ConsumersConfig = Figment::from(Toml::string(
            "[dedup]\nwindow = \"2m\"\nmax_entries = 500\n",
        ))
        .extract()
        .unwrap();
        assert_eq!(config.dedup.window, Duration::from_secs(120));
        assert_eq!(config.dedup.max_entries, 500);
    }

    #[test]
    fn the_statistics_interval_defaults_to_5s_and_0_disables() {
        let config: ConsumersConfig = Figment::new().extract().unwrap();
        assert_eq!(config.kafka.statistics_interval, Duration::from_secs(5));
        let config: ConsumersConfig =
            Figment::from(Toml::string("[kafka]\nstatistics_interval = \"0s\"\n"))
                .extract()
                .unwrap();
        assert_eq!(config.kafka.statistics_interval, Duration::ZERO);
    }

    #[test]
    fn the_example_file_parses_with_the_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/consumers.example.toml"
        );
        let config: ConsumersConfig = Figment::from(Toml::file_exact(path)).extract().unwrap();
        let defaults = ConsumersConfig::default();
        assert_eq!(config.dedup.window, defaults.dedup.window);
        assert_eq!(config.dedup.max_entries, defaults.dedup.max_entries);
        assert_eq!(
            config.scan_processor.missing_scan_id_text,
            defaults.scan_processor.missing_scan_id_text
        );
    }
}
