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
    /// How often each Kafka client reports librdkafka statistics, exported
    /// as `herald_kafka_*` metrics (queue depth, broker round trip, consumer
    /// lag); 0s turns them off. Default 5s.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
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
    /// Several Herald nodes on one Kafka.
    pub cluster: ClusterConfig,
}

/// `[kafka.cluster]`: Herald nodes cooperating through Kafka alone. A single
/// node needs none of these set.
///
/// Every node follows the compacted presence topic, so it knows which node
/// holds each device. Commands are consumed by one group shared by all
/// nodes; a command for a device held by another node is forwarded to that
/// node's inbox topic, `<kafka.downlink.topic>.inbox.<node_id>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's stable id: in presence events, in its inbox topic's name,
    /// and its Kafka static group membership (`group.instance.id`), so a
    /// restart within `session_timeout` moves no partition. Must be unique
    /// among the nodes; in Kubernetes, the StatefulSet pod name. Default:
    /// `$HOSTNAME`, else `/etc/hostname`, else `herald`.
    pub node_id: Option<String>,
    /// How long Kafka waits for a node that stopped heartbeating before its
    /// partitions go to the others (`session.timeout.ms`). A node restarted
    /// within it keeps its partitions; a node that died delays its
    /// partitions' commands by up to this much. Default 30s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often a node checks for inboxes nobody consumes (a node died or
    /// was scaled in) and takes over the ones assigned to it. Default 5s.
    #[serde(with = "humantime_serde")]
    pub orphan_check_interval: Duration,
    /// Forwards of one command between nodes before it waits where it is
    /// (guards against views that disagree for a moment). Default 4.
    pub max_forwards: u32,
    /// Create missing topics at startup (downlink, receipts, presence,
    /// inbox, dead letters, uplink topics named literally in the rules),
    /// where the Kafka ACLs allow it. Default true.
    pub create_topics: bool,
    /// Partitions of topics Herald creates (the presence topic, the
    /// downlink and uplink topics); inboxes get one. Default 12.
    pub topic_partitions: i32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            session_timeout: Duration::from_secs(30),
            orphan_check_interval: Duration::from_secs(5),
            max_forwards: 4,
            create_topics: true,
            topic_partitions: 12,
        }
    }
}

impl ClusterConfig {
    /// The configured node id, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(host_name)
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into())
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
            statistics_interval: herald_kafka::stats::DEFAULT_STATISTICS_INTERVAL,
            uplink_rules: UplinkRule::defaults(),
            producer_options: PassThrough::default(),
            consumer_options: PassThrough::default(),
            dead_letter_topic: "herald.uplink.dead-letters".into(),
            dead_letter_max_payload: 64 * 1024,
            downlink: DownlinkConfig::default(),
            presence: PresenceConfig::default(),
            cluster: ClusterConfig::default(),
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
    (
        "statistics.interval.ms",
        "Herald sets this itself; use kafka.statistics_interval",
    ),
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
    (
        "group.instance.id",
        "Herald sets this itself; use kafka.cluster.node_id",
    ),
    (
        "session.timeout.ms",
        "Herald sets this itself; use kafka.cluster.session_timeout",
    ),
    (
        "statistics.interval.ms",
        "Herald sets this itself; use kafka.statistics_interval",
    ),
    (
        "partition.assignment.strategy",
        "Herald uses cooperative-sticky: all members of a group must agree",
    ),
];
