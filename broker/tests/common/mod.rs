//! Test harness shared by the broker's TCP tests: a broker on an ephemeral
//! port with a tweaked configuration, and a minimal MQTT 5 client that shows
//! every packet for exact assertions.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use herald_broker::codec::{self, *};
use herald_broker::{AuthMode, Broker, BrokerConfig, BrokerHooks};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestBroker {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub broker: Option<Broker>,
    pub registry: prometheus::Registry,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start(tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    start_with(BrokerHooks::default(), tweak).await
}

/// The fleet key of device-mode test brokers.
pub const FLEET_KEY: &[u8] = b"herald-test-fleet-key-0123456789";

/// Switches `config` to device mode with [`FLEET_KEY`].
pub fn device_mode(config: &mut BrokerConfig) {
    use base64::Engine as _;
    config.auth.mode = AuthMode::Device;
    config.auth.fleet_key = Some(base64::engine::general_purpose::STANDARD.encode(FLEET_KEY));
}

/// A valid MQTT login for `device_id` under [`FLEET_KEY`].
pub fn device_login(device_id: &str) -> Login {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret = herald_identity::FleetKey::new(FLEET_KEY).device_secret(device_id);
    Login::new(device_id, secret.password(device_id, now))
}

pub async fn start_with(hooks: BrokerHooks, tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.auth.mode = AuthMode::Open;
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let broker = Broker::start(config, hooks, &registry, shutdown.clone())
        .await
        .expect("broker starts");
    TestBroker {
        addr: broker.local_addr(),
        shutdown,
        broker: Some(broker),
        registry,
    }
}

impl TestBroker {
    /// The value of counter `name` with label `label`=`value` (0 if absent).
    pub fn counter(&self, name: &str, label: &str, value: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == label && l.value() == value)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The value of counter `name`, summed over its labels.
    pub fn counter_total(&self, name: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

/// A minimal MQTT 5 client that shows every packet, for exact assertions,
/// over TCP or any other stream (TLS).
pub struct Raw<S = TcpStream> {
    pub stream: S,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
        will: Option<LastWill>,
    ) -> (Raw, ConnAck) {
        Raw::connect_as(addr, client_id, clean, will, None).await
    }

    pub async fn connect_as(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
        will: Option<LastWill>,
        login: Option<Login>,
    ) -> (Raw, ConnAck) {
        Raw::open(addr)
            .await
            .handshake(client_id, clean, will, login)
            .await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn over(stream: S) -> Raw<S> {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Sends CONNECT on an open connection and waits for the CONNACK.
    pub async fn handshake(
        self,
        client_id: &str,
        clean: bool,
        will: Option<LastWill>,
        login: Option<Login>,
    ) -> (Raw<S>, ConnAck) {
        let mut raw = self;
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(if clean { 0 } else { 300 });
        raw.send(Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: client_id.into(),
                clean_start: clean,
                properties: Some(props),
            },
            will,
            login,
        ))
        .await;
        match raw.recv().await {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends PINGREQ and tells whether PINGRESP came: the connection is alive.
    pub async fn is_alive(&mut self) -> bool {
        self.send(Packet::PingReq(PingReq)).await;
        loop {
            match self.recv().await {
                Some(Packet::PingResp(_)) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Next packet, or `None` if the connection closed or nothing came in time.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(p)) = codec::read(ProtocolVersion::V5, &mut self.buf, 1 << 20) {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.send(Packet::Subscribe(
            Subscribe::new(Filter::new(filter, qos), None).with_pkid(1),
        ))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        retain: bool,
        pkid: u16,
    ) {
        let mut p = Publish::new(topic, qos, Bytes::from_static(payload), None);
        p.retain = retain;
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await;
    }

    pub async fn expect_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(Packet::PubAck(_)) => continue,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }
}

pub trait WithPkid {
    fn with_pkid(self, pkid: u16) -> Self;
}

impl WithPkid for Subscribe {
    fn with_pkid(mut self, pkid: u16) -> Self {
        self.pkid = pkid;
        self
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the
/// `openssl` command line, in a directory removed on drop.
pub struct TestCert {
    pub dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCert {
    pub fn new() -> TestCert {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-broker-cert-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-addext"])
            .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
            // Not a CA: rustls's client refuses a CA as the server's own certificate.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "openssl makes a test certificate: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        TestCert { dir, cert, key }
    }

    /// A `[broker.tls]` on an ephemeral loopback port with this certificate.
    pub fn tls_config(&self) -> herald_broker::TlsConfig {
        herald_broker::TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_path: self.cert.clone(),
            key_path: self.key.clone(),
        }
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
