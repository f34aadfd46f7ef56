//! Broker configuration: listeners, limits, sessions and device auth.
//!
//! Every field has a documented default; `deploy/herald.example.toml` shows
//! them all. Values are checked once at startup by [`BrokerConfig::validate`].

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Configuration of the MQTT broker core (`[broker]` in herald.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Plain MQTT listener. Default `0.0.0.0:1883`.
    pub listen: SocketAddr,
    /// Optional MQTT-over-TLS listener. Default: none.
    pub tls: Option<TlsConfig>,
    /// Optional MQTT-over-WebSocket listeners, plain (ws) and TLS (wss).
    /// Default: none.
    pub websocket: Option<WebSocketConfig>,
    /// Most concurrent client connections; past it a CONNECT gets CONNACK
    /// "server unavailable". Default: the open-file limit minus `fd_reserve`.
    pub max_connections: Option<usize>,
    /// File descriptors kept back for Kafka, HTTP and refusing connections
    /// cleanly when `max_connections` is derived. Default 1024.
    pub fd_reserve: usize,
    /// Time a new connection has to send CONNECT. Default 10s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted from a client, in bytes. Default 1 MiB.
    pub max_packet_size: u32,
    /// Uplinks (any QoS) of one connection waiting for Kafka at once; the
    /// broker stops reading from that device past it. Advertised to MQTT 5
    /// clients as Receive Maximum. Default 32.
    pub max_inflight_uplinks: u16,
    /// Uplinks waiting for Kafka across all connections. Default 100000.
    pub max_inflight_uplinks_total: usize,
    /// QoS 1/2 messages sent to one client and not yet acknowledged. Default 32.
    pub max_inflight_downlinks: u16,
    /// Messages queued for one session (offline, or beyond the in-flight
    /// window). What happens past it is `queue_full_policy`. Default 1000.
    pub max_queued_messages: usize,
    /// What a full session queue does to new messages. `backpressure`
    /// (default): a QoS 1/2 message is never dropped for lack of room: it is
    /// queued, and the publisher's PUBACK (PUBREC) waits until the connected
    /// subscriber's queue is below `max_queued_messages` again, which stops
    /// the publisher at its in-flight window. QoS 0 messages drop the oldest
    /// QoS 0 message queued (or themselves). An offline session's queue
    /// stores `max_queued_messages` and refuses further messages (counted as
    /// `offline_queue_full`): a session that is away cannot make room, and
    /// waiting for it would stall every publisher. `drop_oldest`: the
    /// oldest message of any QoS is dropped (Mosquitto's and EMQX's behaviour).
    pub queue_full_policy: QueueFullPolicy,
    /// A connected subscriber whose queue stays full this long without
    /// acknowledging anything is disconnected (`slow_subscriber`; its
    /// session and queue stay), so one stalled client cannot hold its
    /// publishers back for longer. Default 30s.
    #[serde(with = "humantime_serde")]
    pub slow_subscriber_timeout: Duration,
    /// How long an offline persistent session is kept: the session expiry of
    /// 3.1.1 clients with clean session = 0 and the cap on what MQTT 5
    /// clients ask for. Default 2h.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Longest keepalive accepted; longer requests are lowered (MQTT 5 gets
    /// Server Keep Alive). 0 = no cap. Default 0.
    pub max_keepalive_secs: u16,
    /// Whether retained messages are stored. Default: `true` in open mode,
    /// `false` in device mode, where uplinks exist to reach Kafka and a
    /// retained uplink would be broker state that any device could grow.
    pub retain_available: Option<bool>,
    /// How long a graceful shutdown (SIGTERM) spreads the closing of its
    /// connections over, at most: each connection closes at a random moment
    /// within `min(drain_period, connections / drain_rate)`, after its
    /// uplinks already handed to Kafka are acknowledged. Default 20s.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// Connections closed per second during a drain, on average; with few
    /// connections the drain ends sooner than `drain_period`. Default 1000.
    pub drain_rate: u32,
    /// MQTT 5 Server Reference sent with DISCONNECT 0x8B "server shutting
    /// down" (another node or the load balancer's name). Default: none.
    pub server_reference: Option<String>,
    /// How long shutdown waits for connections to close after the drain
    /// (or at once, without a drain) before dropping them. Default 10s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Whether every connection on the MQTT listeners (plain and TLS) starts
    /// with a PROXY protocol v2 header from a load balancer; Herald then logs
    /// the terminal's address it carries. Connections without one are closed.
    /// Turn on only behind a load balancer that sends it. Default false.
    pub proxy_protocol: bool,
    /// MQTT 5 Topic Alias Maximum: the most topic aliases a client may use
    /// on one connection (a higher alias closes it with 0x94), and the most
    /// the broker assigns to the topics it sends a client that allows them.
    /// 0 turns topic aliases off; at most 1024, since each alias a client
    /// sets holds a topic name (up to `max_topic_length`) while it is
    /// connected. Default 10.
    pub topic_alias_maximum: u16,
    /// How a message on a shared subscription (`$share/<group>/<filter>`)
    /// picks one member of the group: `round_robin` (default) or
    /// `least_busy` (the member with the fewest messages queued and in flight).
    pub shared_subscription_strategy: SharedSubscriptionStrategy,
    /// Device authentication and topic ACL.
    pub auth: AuthConfig,
    /// Limits on what one client may send or make the broker hold.
    pub limits: LimitsConfig,
    /// Connect-rate limiting and flapping detection.
    pub admission: AdmissionConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls: None,
            websocket: None,
            max_connections: None,
            fd_reserve: 1024,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1024 * 1024,
            max_inflight_uplinks: 32,
            max_inflight_uplinks_total: 100_000,
            max_inflight_downlinks: 32,
            max_queued_messages: 1000,
            queue_full_policy: QueueFullPolicy::Backpressure,
            slow_subscriber_timeout: Duration::from_secs(30),
            session_expiry: Duration::from_secs(2 * 3600),
            max_keepalive_secs: 0,
            retain_available: None,
            drain_period: Duration::from_secs(20),
            drain_rate: 1000,
            server_reference: None,
            shutdown_grace: Duration::from_secs(10),
            proxy_protocol: false,
            topic_alias_maximum: 10,
            shared_subscription_strategy: SharedSubscriptionStrategy::RoundRobin,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

/// What a full session queue does (`broker.queue_full_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Slow the publishers down; never drop a QoS 1/2 message of a connected
    /// subscriber. The default.
    Backpressure,
    /// Drop the oldest queued message.
    DropOldest,
}

/// How a shared subscription picks the member that gets a message
/// (`broker.shared_subscription_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedSubscriptionStrategy {
    /// Each connected member in turn. The default.
    RoundRobin,
    /// The connected member with the fewest messages queued and in flight.
    LeastBusy,
}

/// Limits on one client's input and on the state it makes the broker hold
/// (`[broker.limits]`). Past each one the client gets the MQTT reason code
/// (or, on MQTT 3.1.1 where there is none, its connection is closed), and
/// `herald_limits_exceeded_total{limit}` counts it. docs/reliability.md lists
/// them with the reason codes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest topic name or filter, in bytes. Default 1024.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter. Default 32.
    pub max_topic_levels: usize,
    /// Most subscriptions one session holds. Default 100.
    pub max_subscriptions_per_session: usize,
    /// Longest client id, in bytes. Default 128.
    pub max_client_id_length: usize,
    /// Most MQTT 5 user properties in one CONNECT, will or PUBLISH. Default 32.
    pub max_user_properties: usize,
    /// Largest first packet (CONNECT, will included) accepted before the
    /// client is authenticated, in bytes (`max_packet_size` if that is
    /// smaller). Default 16384.
    pub max_connect_packet_size: u32,
    /// QoS 2 messages received from one client and waiting for its PUBREL.
    /// Default 100.
    pub max_awaiting_pubrel: usize,
    /// Most retained messages stored; past it a new retained topic is not
    /// stored (its message is still delivered). Default 100000.
    pub max_retained_messages: usize,
    /// Most payload bytes of retained messages stored. Default 64 MiB.
    pub max_retained_bytes: usize,
    /// How long a retained message is kept at most (a shorter MQTT 5 message
    /// expiry wins); 0 keeps it until it is cleared. Default 24h.
    #[serde(with = "humantime_serde")]
    pub retained_expiry: Duration,
    /// Delayed wills (MQTT 5 Will Delay Interval) waiting at once across the
    /// broker; past it a will is published without its delay. Default 10000.
    pub max_delayed_wills: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_subscriptions_per_session: 100,
            max_client_id_length: 128,
            max_user_properties: 32,
            max_connect_packet_size: 16 * 1024,
            max_awaiting_pubrel: 100,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            retained_expiry: Duration::from_secs(24 * 3600),
            max_delayed_wills: 10_000,
        }
    }
}

/// Admission control for reconnect storms (`[broker.admission]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// New connections accepted per second on each listener; past it a
    /// connection is answered CONNACK 0x9F "connection rate exceeded" (MQTT
    /// 3.1.1: "server unavailable"; TLS: closed before the handshake).
    /// 0 = unlimited. Default 5000 (about a quarter of what one 2-core node
    /// authenticates per second, docs/benchmarks.md, leaving the rest to the
    /// sessions already connected).
    pub max_connect_rate: u32,
    /// Connections a listener accepts in one burst above the rate. Default 5000.
    pub connect_burst: u32,
    /// Authenticated connects of one client id within `flapping_window`
    /// that make it a flapping client; 0 turns detection off. Default 15.
    pub flapping_max_connects: u32,
    /// The window flapping is counted in. Default 1m.
    #[serde(with = "humantime_serde")]
    pub flapping_window: Duration,
    /// How long a flapping client id is refused (CONNACK 0x8A "banned";
    /// MQTT 3.1.1: "not authorized"). Default 5m.
    #[serde(with = "humantime_serde")]
    pub flapping_ban: Duration,
    /// Client ids tracked for flapping at once; past it new ids are not
    /// tracked until the sweep frees room. Default 1000000.
    pub flapping_max_tracked: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_connect_rate: 5000,
            connect_burst: 5000,
            flapping_max_connects: 15,
            flapping_window: Duration::from_secs(60),
            flapping_ban: Duration::from_secs(300),
            flapping_max_tracked: 1_000_000,
        }
    }
}

/// TLS listener (`[broker.tls]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener, e.g. `0.0.0.0:8883`. Required.
    pub listen: SocketAddr,
    /// PEM file with the server certificate chain. Required.
    pub cert_path: PathBuf,
    /// PEM file with the server's private key. Required.
    pub key_path: PathBuf,
}

/// MQTT over WebSocket (`[broker.websocket]`): RFC 6455 with the `mqtt`
/// subprotocol, served by the same broker core, limits and admission as the
/// TCP listeners (`broker.proxy_protocol` applies to these listeners too).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Plain WebSocket (ws://) listener, e.g. `0.0.0.0:8083`. Default: none.
    pub listen: Option<SocketAddr>,
    /// WebSocket over TLS (wss://) listener, e.g. `0.0.0.0:8084`, with the
    /// certificate and key of `[broker.tls]`, which must be set. Default: none.
    pub tls_listen: Option<SocketAddr>,
    /// HTTP path of the upgrade request; any other path is answered 404.
    /// Default `/mqtt`.
    pub path: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: None,
            path: "/mqtt".into(),
        }
    }
}

/// How clients are authenticated (`[broker.auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Devices sign in with fleet-key credentials and are confined to their
    /// own topic namespace. The default.
    Device,
    /// No authentication and no ACL: for development, or as a general broker.
    Open,
}

/// Device authentication and ACL (`[broker.auth]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `device` (default) or `open`.
    pub mode: AuthMode,
    /// The fleet key, base64 (standard or URL-safe). Prefer `fleet_key_file`
    /// or the `HERALD_BROKER__AUTH__FLEET_KEY` environment variable. Default: none.
    pub fleet_key: Option<String>,
    /// File holding the fleet key in base64. Default: none.
    pub fleet_key_file: Option<PathBuf>,
    /// How far a password's timestamp may be from the broker's clock. Default 15m.
    #[serde(with = "humantime_serde")]
    pub password_window: Duration,
    /// Device ids that may not connect. Default: empty.
    pub revoked_devices: Vec<String>,
    /// File with one revoked device id per line (`#` starts a comment),
    /// re-read when it changes. Default: none.
    pub revocation_file: Option<PathBuf>,
    /// First topic level of the device namespaces: devices publish under
    /// `<prefix>/<device-id>/up/` and subscribe under `<prefix>/<device-id>/down/`.
    /// Default `devices`.
    pub topic_prefix: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Device,
            fleet_key: None,
            fleet_key_file: None,
            password_window: Duration::from_secs(15 * 60),
            revoked_devices: Vec::new(),
            revocation_file: None,
            topic_prefix: "devices".into(),
        }
    }
}

/// A configuration value that cannot work, with the key it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        reason: reason.into(),
    }
}

impl BrokerConfig {
    /// Largest first packet read before authentication, in bytes.
    pub(crate) fn max_connect_packet(&self) -> usize {
        self.limits
            .max_connect_packet_size
            .min(self.max_packet_size) as usize
    }

    /// Whether retained messages are stored (see `retain_available`).
    pub fn retain_enabled(&self) -> bool {
        self.retain_available
            .unwrap_or(self.auth.mode == AuthMode::Open)
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_topic_length == 0 || limits.max_topic_length > 65535 {
            return Err(invalid(
                "broker.limits.max_topic_length",
                "must be between 1 and 65535 bytes",
            ));
        }
        if limits.max_topic_levels == 0 || limits.max_topic_levels > 1024 {
            return Err(invalid(
                "broker.limits.max_topic_levels",
                "must be between 1 and 1024",
            ));
        }
        if limits.max_client_id_length == 0 || limits.max_client_id_length > 65535 {
            return Err(invalid(
                "broker.limits.max_client_id_length",
                "must be between 1 and 65535 bytes",
            ));
        }
        if limits.max_connect_packet_size < 64 {
            return Err(invalid(
                "broker.limits.max_connect_packet_size",
                "must be at least 64 bytes",
            ));
        }
        // Each alias a client sets holds a topic name for the connection's
        // life: at most this many × max_topic_length bytes per connection.
        if self.topic_alias_maximum > 1024 {
            return Err(invalid(
                "broker.topic_alias_maximum",
                "must be at most 1024 (each alias holds a topic for the connection's life)",
            ));
        }
        let admission = &self.admission;
        if admission.max_connect_rate > 0 && admission.connect_burst == 0 {
            return Err(invalid(
                "broker.admission.connect_burst",
                "must be at least 1 when max_connect_rate is set",
            ));
        }
        if admission.flapping_max_connects > 0
            && (admission.flapping_window.is_zero() || admission.flapping_ban.is_zero())
        {
            return Err(invalid(
                "broker.admission.flapping_window",
                "flapping_window and flapping_ban must be positive when flapping_max_connects is set",
            ));
        }
        if self.max_packet_size < 64 {
            return Err(invalid(
                "broker.max_packet_size",
                "must be at least 64 bytes",
            ));
        }
        if self.max_packet_size > 268_435_455 {
            return Err(invalid(
                "broker.max_packet_size",
                "MQTT packets cannot exceed 268435455 bytes",
            ));
        }
        if self.max_inflight_uplinks == 0 {
            return Err(invalid("broker.max_inflight_uplinks", "must be at least 1"));
        }
        if self.max_inflight_downlinks == 0 {
            return Err(invalid(
                "broker.max_inflight_downlinks",
                "must be at least 1",
            ));
        }
        if self.max_inflight_uplinks_total < self.max_inflight_uplinks as usize {
            return Err(invalid(
                "broker.max_inflight_uplinks_total",
                "must be at least broker.max_inflight_uplinks",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(invalid("broker.max_connections", "must be at least 1"));
        }
        if self.slow_subscriber_timeout.is_zero() {
            return Err(invalid(
                "broker.slow_subscriber_timeout",
                "must be positive",
            ));
        }
        if self.drain_rate == 0 {
            return Err(invalid("broker.drain_rate", "must be at least 1"));
        }
        if self.max_queued_messages == 0 {
            return Err(invalid("broker.max_queued_messages", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("broker.connect_timeout", "must be positive"));
        }
        let prefix = &self.auth.topic_prefix;
        if prefix.is_empty() || prefix.contains(['/', '+', '#']) {
            return Err(invalid(
                "broker.auth.topic_prefix",
                "must be one non-empty topic level without / + #",
            ));
        }
        if self.auth.mode == AuthMode::Device {
            self.auth.fleet_key_bytes()?;
        }
        if let Some(websocket) = &self.websocket {
            self.validate_websocket(websocket)?;
        }
        Ok(())
    }

    /// `[broker.websocket]`: a listener to open, a usable path, TLS material
    /// for wss, and no address that another listener already binds.
    fn validate_websocket(&self, websocket: &WebSocketConfig) -> Result<(), ConfigError> {
        if websocket.listen.is_none() && websocket.tls_listen.is_none() {
            return Err(invalid(
                "broker.websocket",
                "set listen (ws) and/or tls_listen (wss), or remove the table",
            ));
        }
        if websocket.tls_listen.is_some() && self.tls.is_none() {
            return Err(invalid(
                "broker.websocket.tls_listen",
                "wss uses the certificate and key of [broker.tls], which is not set",
            ));
        }
        let path = &websocket.path;
        if !path.starts_with('/')
            || path.len() > 256
            || !path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        {
            return Err(invalid(
                "broker.websocket.path",
                "must start with / and be at most 256 printable ASCII characters without ? or #",
            ));
        }
        // Port 0 picks a free port, so only fixed ports can collide.
        let mut taken = vec![("broker.listen", self.listen)];
        taken.extend(
            self.tls
                .as_ref()
                .map(|tls| ("broker.tls.listen", tls.listen)),
        );
        for (key, addr) in [
            ("broker.websocket.listen", websocket.listen),
            ("broker.websocket.tls_listen", websocket.tls_listen),
        ] {
            let Some(addr) = addr else { continue };
            if addr.port() != 0 {
                if let Some((other, _)) = taken.iter().find(|(_, a)| same_socket(*a, addr)) {
                    return Err(invalid(key, format!("{addr} is already {other}")));
                }
            }
            taken.push((key, addr));
        }
        Ok(())
    }
}

/// Whether binding `a` and `b` would collide: the same port on the same
/// address, or on any address when either is unspecified (0.0.0.0, ::).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl AuthConfig {
    /// Reads and decodes the fleet key (from `fleet_key` or `fleet_key_file`).
    pub fn fleet_key_bytes(&self) -> Result<Vec<u8>, ConfigError> {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine as _;
        let text = match (&self.fleet_key, &self.fleet_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("broker.auth.fleet_key", "set either fleet_key or fleet_key_file, not both"))
            }
            (Some(key), None) => key.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                invalid("broker.auth.fleet_key_file", format!("cannot read {}: {e}", path.display()))
            })?,
            (None, None) => {
                return Err(invalid(
                    "broker.auth.fleet_key",
                    "device auth needs a fleet key (fleet_key, fleet_key_file or HERALD_BROKER__AUTH__FLEET_KEY); set broker.auth.mode = \"open\" to run without auth",
                ))
            }
        };
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|e| invalid("broker.auth.fleet_key", format!("not valid base64: {e}")))?;
        if bytes.len() < 16 {
            return Err(invalid(
                "broker.auth.fleet_key",
                format!(
                    "{} bytes is too short; use at least 32 random bytes (herald fleet-key)",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod websocket_tests {
    use super::*;

    fn open_with(websocket: WebSocketConfig) -> BrokerConfig {
        let mut config = BrokerConfig::default();
        config.auth.mode = AuthMode::Open;
        config.websocket = Some(websocket);
        config
    }

    fn tls() -> TlsConfig {
        TlsConfig {
            listen: "0.0.0.0:8883".parse().unwrap(),
            cert_path: "server.crt".into(),
            key_path: "server.key".into(),
        }
    }

    fn key_of(config: &BrokerConfig) -> Option<&'static str> {
        config.validate().err().map(|e| e.key)
    }

    #[test]
    fn a_ws_listener_with_the_default_path_is_valid() {
        let websocket = WebSocketConfig {
            listen: Some("0.0.0.0:8083".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(websocket.path, "/mqtt");
        assert_eq!(key_of(&open_with(websocket)), None);
    }

    #[test]
    fn wss_needs_the_tls_section() {
        let websocket = WebSocketConfig {
            tls_listen: Some("0.0.0.0:8084".parse().unwrap()),
            ..Default::default()
        };
        let mut config = open_with(websocket);
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "broker.websocket.tls_listen");
        assert!(error.to_string().contains("[broker.tls]"), "{error}");
        config.tls = Some(tls());
        assert_eq!(key_of(&config), None);
    }

    #[test]
    fn a_table_without_a_listener_is_refused() {
        assert_eq!(
            key_of(&open_with(WebSocketConfig::default())),
            Some("broker.websocket")
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for path in ["mqtt", "", "/mq tt", "/mqtt?x=1", "/a#b", "/\u{e9}"] {
            let websocket = WebSocketConfig {
                listen: Some("0.0.0.0:8083".parse().unwrap()),
                path: path.into(),
                ..Default::default()
            };
            assert_eq!(
                key_of(&open_with(websocket)),
                Some("broker.websocket.path"),
                "{path:?}"
            );
        }
    }

    #[test]
    fn addresses_another_listener_binds_are_refused() {
        let cases = [
            // The MQTT listener's port, on 0.0.0.0 or on one address of it.
            ("0.0.0.0:1883", None, "broker.websocket.listen"),
            ("127.0.0.1:1883", None, "broker.websocket.listen"),
            // The TLS listener's.
            ("0.0.0.0:8883", None, "broker.websocket.listen"),
            // ws and wss on one port.
            (
                "0.0.0.0:8083",
                Some("127.0.0.1:8083"),
                "broker.websocket.tls_listen",
            ),
        ];
        for (listen, tls_listen, key) in cases {
            let mut config = open_with(WebSocketConfig {
                listen: Some(listen.parse().unwrap()),
                tls_listen: tls_listen.map(|a| a.parse().unwrap()),
                ..Default::default()
            });
            config.tls = Some(tls());
            assert_eq!(key_of(&config), Some(key), "{listen} {tls_listen:?}");
        }
        // Port 0 (a free port each) never collides.
        let mut config = open_with(WebSocketConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        });
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.tls = Some(tls());
        assert_eq!(key_of(&config), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_alias_maximum_is_bounded() {
        let mut config = BrokerConfig::default();
        config.auth.mode = AuthMode::Open;
        config.topic_alias_maximum = 1024;
        assert!(config.validate().is_ok());
        config.topic_alias_maximum = 1025;
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "broker.topic_alias_maximum");
    }
}
