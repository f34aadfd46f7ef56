//! Kafka bridge configuration (`[kafka]` in herald.toml).

use herald_kafka::options::PassThrough;
use serde::Deserialize;
use std::time::Duration;

/// How Herald talks to Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma separated. Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Kafka client id. Default `herald`.
    pub client_id: String,
    /// How long the producer keeps trying to deliver an uplink before the
    /// device gets a failure (librdkafka `message.timeout.ms`). Default 30s.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How often Kafka's reachability is checked for `/readyz`. Default 5s.
    #[serde(with = "humantime_serde")]
    pub healthcheck_interval: Duration,
    /// Rules mapping MQTT uplink topics to Kafka topics, tried in order.
    /// Default: the four terminal uplinks, see [`UplinkRule::defaults`].
    pub uplink_rules: Vec<UplinkRule>,
    /// Extra librdkafka producer properties, passed through as they are
    /// (e.g. `"compression.type" = "lz4"`, `"security.protocol" = "ssl"`).
    /// Properties Herald sets itself are refused here. Default: empty.
    pub producer_options: PassThrough,
    /// Extra librdkafka consumer properties for the downlink consumer, passed
    /// through (e.g. security settings). Default: empty.
    pub consumer_options: PassThrough,
    /// Where uplinks Kafka refuses for good (too large, invalid, not
    /// authorized) are kept, keyed by device id, with the reason in a header;
    /// the device then gets its PUBACK (MQTT 5: with the reason code).
    /// Default `herald.uplink.dead-letters`.
    pub dead_letter_topic: String,
    /// Largest payload a dead letter carries, in bytes: longer payloads are
    /// truncated (the `herald-original-size` header keeps the real size).
    /// MQTT 5 user properties are kept up to the same total. Default 65536.
    pub dead_letter_max_payload: usize,
    /// Commands from Kafka to devices.
    pub downlink: DownlinkConfig,
    /// Device presence events.
    pub presence: PresenceConfig,
}

/// `[kafka.downlink]`: commands from Kafka to devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownlinkConfig {
    /// Consume commands (DownlinkCommand, keyed by device id) from `topic`. Default true.
    pub enabled: bool,
    /// Default `herald.downlink`.
    pub topic: String,
    /// Consumer group of the Herald instances. Default `herald-downlink`.
    pub group_id: String,
    /// Where delivery receipts (DeliveryReceipt, keyed by device id) go.
    /// Default `herald.receipts`.
    pub receipts_topic: String,
    /// Commands handed to devices and not yet settled; consumption pauses
    /// past it. Commands for offline devices hold a slot until they are
    /// delivered or expire, so size it for the commands that may wait
    /// (about 1 KiB each). Default 100000.
    pub max_inflight: usize,
    /// Expiry of commands that carry none (expires_at_ms = 0). Default 1h.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Receipts waiting in their producer's queue (their own queue, apart
    /// from uplinks). Receipts are never dropped: past it, the command waits
    /// for room, and consumption pauses once `max_inflight` commands wait.
    /// Default 10000.
    pub max_queued_receipts: usize,
}

impl Default for DownlinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "herald.downlink".into(),
            group_id: "herald-downlink".into(),
            receipts_topic: "herald.receipts".into(),
            max_inflight: 100_000,
            default_ttl: Duration::from_secs(3600),
            max_queued_receipts: 10_000,
        }
    }
}

/// `[kafka.presence]`: connects and disconnects of devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Write PresenceEvents. Default true.
    pub enabled: bool,
    /// Compacted topic (created with cleanup.policy=compact if missing),
    /// keyed by device id. Default `herald.presence`.
    pub topic: String,
    /// This instance's name in presence events. Default: the host name.
    pub node: Option<String>,
    /// Presence events waiting in their producer's queue (their own queue,
    /// apart from uplinks). Past it, events are shed and counted in
    /// `herald_presence_events_shed_total`, so connection churn during a
    /// Kafka outage cannot grow memory or delay uplinks. Default 10000.
    pub max_queued_events: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "herald.presence".into(),
            node: None,
            max_queued_events: 10_000,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "herald".into(),
            delivery_timeout: Duration::from_secs(30),
            healthcheck_interval: Duration::from_secs(5),
            uplink_rules: UplinkRule::defaults(),
            producer_options: PassThrough::default(),
            consumer_options: PassThrough::default(),
            dead_letter_topic: "herald.uplink.dead-letters".into(),
            dead_letter_max_payload: 64 * 1024,
            downlink: DownlinkConfig::default(),
            presence: PresenceConfig::default(),
        }
    }
}

/// One uplink rule: MQTT topics matching `mqtt_topic` go to `kafka_topic`.
///
/// `mqtt_topic` is a topic pattern whose levels are literals, `{name}`
/// (captures one level) or a final `#`. `kafka_topic` may use the captures,
/// e.g. `devices/{device_id}/up/{kind}` → `herald.uplink.{kind}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UplinkRule {
    pub mqtt_topic: String,
    pub kafka_topic: String,
}

impl UplinkRule {
    /// The terminal uplinks under the default `devices` namespace.
    pub fn defaults() -> Vec<UplinkRule> {
        Self::defaults_for("devices")
    }

    /// The terminal uplinks: scan results, print status, command acks and
    /// telemetry, under `<prefix>/<device_id>/up/`.
    pub fn defaults_for(prefix: &str) -> Vec<UplinkRule> {
        [
            ("scan", "herald.uplink.scan"),
            ("print-status", "herald.uplink.print-status"),
            ("ack", "herald.uplink.ack"),
            ("telemetry", "herald.uplink.telemetry"),
        ]
        .into_iter()
        .map(|(kind, topic)| UplinkRule {
            mqtt_topic: format!("{prefix}/{{device_id}}/up/{kind}"),
            kafka_topic: topic.into(),
        })
        .collect()
    }
}

/// Room left in a Kafka record beyond the largest MQTT packet Herald accepts:
/// the record key and Herald's headers repeat the device id and add the QoS
/// and reception time, and record framing adds a few dozen bytes. 64 KiB
/// covers device ids far beyond Herald's 64-byte limit.
pub const RECORD_MARGIN: u32 = 64 * 1024;

/// librdkafka properties that Herald owns, with the setting to use instead
/// (checked by `herald_kafka::options::check_reserved`).
pub(crate) const RESERVED_PRODUCER_OPTIONS: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "Herald sets this itself; use kafka.bootstrap_servers",
    ),
    ("client.id", "Herald sets this itself; use kafka.client_id"),
    (
        "message.timeout.ms",
        "Herald sets this itself; use kafka.delivery_timeout",
    ),
    (
        "delivery.timeout.ms",
        "Herald sets this itself; use kafka.delivery_timeout",
    ),
    ("enable.idempotence", "Herald always produces idempotently"),
    ("acks", "Herald always uses acks=all"),
    ("request.required.acks", "Herald always uses acks=all"),
];

/// librdkafka consumer properties that Herald owns for the downlink consumer.
pub(crate) const RESERVED_CONSUMER_OPTIONS: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "Herald sets this itself; use kafka.bootstrap_servers",
    ),
    (
        "group.id",
        "Herald sets this itself; use kafka.downlink.group_id",
    ),
    (
        "enable.auto.offset.store",
        "Herald stores an offset only once the command is settled",
    ),
    (
        "enable.auto.commit",
        "Herald commits stored offsets every second",
    ),
];
