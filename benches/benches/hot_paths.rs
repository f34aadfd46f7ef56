//! Micro-benchmarks of the per-message and per-connection hot paths:
//! MQTT decode/encode, credential verification, routing and ACL checks,
//! protobuf and JSON contracts, spoken amounts, the TLS record path, and a
//! connection's event loop end to end over loopback TCP.
//!
//! `cargo bench -p herald-benches` (results in target/criterion/).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald_broker::bench_api::{tls_server, AclBench, RouterBench};
use herald_broker::codec::{self, ProtocolVersion, Publish, QoS};
use herald_broker::AuthConfig;
use herald_schemas::v1::{Announcement, CommandKind, DownlinkCommand, ScanResult};
use herald_schemas::Message as _;

const FLEET_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn codec_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("mqtt_codec");
    let payload = Bytes::from(vec![7u8; 256]);
    let mut publish = Publish::new(
        "devices/scanbox-000123/up/scan",
        QoS::AtLeastOnce,
        payload.clone(),
        None,
    );
    publish.pkid = 42;
    let packet = codec::Packet::Publish(publish);
    let mut v5 = BytesMut::new();
    codec::write(ProtocolVersion::V5, &packet, &mut v5).unwrap();
    let mut v4 = BytesMut::new();
    codec::write(ProtocolVersion::V311, &packet, &mut v4).unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_publish_256B_v311", |b| {
        b.iter_batched(
            || v4.clone(),
            |mut buf| black_box(codec::read(ProtocolVersion::V311, &mut buf, 1 << 20)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode_publish_256B_v5", |b| {
        b.iter_batched(
            || v5.clone(),
            |mut buf| black_box(codec::read(ProtocolVersion::V5, &mut buf, 1 << 20)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode_publish_256B_v311", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(300);
            codec::write(ProtocolVersion::V311, black_box(&packet), &mut out).unwrap();
            out
        })
    });
    group.finish();
}

fn auth_benches(c: &mut Criterion) {
    let key = herald_identity::FleetKey::new(b"0123456789abcdef0123456789abcdef");
    let now = 1_790_000_000;
    let password = key
        .device_secret("speaker-000123")
        .password("speaker-000123", now);
    c.bench_function("verify_device_password", |b| {
        b.iter(|| {
            key.verify_password(
                black_box("speaker-000123"),
                black_box(password.as_bytes()),
                now,
                900,
            )
        })
    });
    let acl = AclBench::new(&AuthConfig {
        fleet_key: Some(FLEET_KEY.into()),
        ..AuthConfig::default()
    });
    c.bench_function("acl_may_publish", |b| {
        b.iter(|| {
            acl.may_publish(
                black_box("speaker-000123"),
                black_box("devices/speaker-000123/up/scan"),
            )
        })
    });
    c.bench_function("acl_may_subscribe", |b| {
        b.iter(|| {
            acl.may_subscribe(
                black_box("speaker-000123"),
                black_box("devices/speaker-000123/down/#"),
            )
        })
    });
}

fn routing_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing_100k_devices");
    let mut router = RouterBench::default();
    for i in 0..100_000 {
        let id = format!("dev-{i:06}");
        router.subscribe(&format!("devices/{id}/down/#"), &id);
        router.subscribe(&format!("status/{id}"), &id);
    }
    group.bench_function("wildcard_device_namespace", |b| {
        b.iter(|| router.route(black_box("devices/dev-054321/down/announce")))
    });
    group.bench_function("exact_topic", |b| {
        b.iter(|| router.route(black_box("status/dev-054321")))
    });
    group.bench_function("no_subscriber", |b| {
        b.iter(|| router.route(black_box("devices/unknown/up/scan")))
    });
    group.finish();
}

fn schema_benches(c: &mut Criterion) {
    let announcement = Announcement {
        text: "支付宝收款十二元五角".into(),
        locale: "zh-CN".into(),
        payment_id: "pay-0000000001".into(),
        amount_minor: 1250,
        currency: "CNY".into(),
    };
    let command = DownlinkCommand {
        command_id: "pay-0000000001".into(),
        device_id: "speaker-000123".into(),
        kind: CommandKind::Announce as i32,
        payload: announcement.encode_to_vec(),
        created_at_ms: 1_790_000_000_000,
        expires_at_ms: 1_790_000_060_000,
    };
    let encoded = command.encode_to_vec();
    c.bench_function("protobuf_encode_downlink_command", |b| {
        b.iter(|| black_box(&command).encode_to_vec())
    });
    c.bench_function("protobuf_decode_downlink_command", |b| {
        b.iter(|| DownlinkCommand::decode(black_box(&encoded[..])))
    });
    let json = br#"{"code":"134567890123456789","scannedAtMs":"1790000000000","scanId":"s-1"}"#;
    c.bench_function("json_decode_scan_result", |b| {
        b.iter(|| herald_schemas::decode_device_payload::<ScanResult>(black_box(&json[..])))
    });
    c.bench_function("speak_amount_chinese", |b| {
        b.iter(|| herald_consumers::amount::chinese(black_box(100_530), "CNY"))
    });
}

/// One 256-byte message from a rustls client to the server and back, over an
/// in-memory pipe: the TLS listener's stream (rustls unbuffered, its buffers
/// freed when empty) against tokio-rustls's server stream, which it replaced.
fn tls_benches(c: &mut Criterion) {
    use std::sync::Arc;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::ServerName};

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let cert_pem = std::fs::read(fixtures.join("tls-cert.pem")).unwrap();
    let key_pem = std::fs::read(fixtures.join("tls-key.pem")).unwrap();
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)
        .unwrap();
    let server = Arc::new(server);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    async fn echo<S, C>(server: &mut S, client: &mut C)
    where
        S: AsyncRead + AsyncWrite + Unpin,
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = [7u8; 256];
        client.write_all(&buf).await.unwrap();
        client.flush().await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(&buf).await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
    }

    let mut group = c.benchmark_group("tls_echo_256B");
    group.throughput(Throughput::Bytes(512));
    let (mut ours, mut ours_client) = rt.block_on(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) =
            tokio::join!(tls_server(server.clone(), a), connector.connect(name, b));
        (server.unwrap(), client.unwrap())
    });
    group.bench_function("herald_unbuffered", |b| {
        b.iter(|| rt.block_on(echo(&mut ours, &mut ours_client)))
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let (mut theirs, mut theirs_client) = rt.block_on(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        (server.unwrap(), client.unwrap())
    });
    group.bench_function("tokio_rustls", |b| {
        b.iter(|| rt.block_on(echo(&mut theirs, &mut theirs_client)))
    });
    group.finish();
}

/// A connection's event loop end to end: a broker in open mode and its
/// clients on one thread over loopback TCP, so one iteration is the CPU of
/// one message through Herald plus the system calls that carry it. QoS 1: a
/// PUBLISH to its PUBACK; QoS 0: a PUBLISH to its delivery to a subscriber
/// (fan-in's two rows).
fn connection_benches(c: &mut Criterion) {
    use herald_broker::{AuthMode, Broker, BrokerConfig, BrokerHooks};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// An MQTT 3.1.1 client in, clean session, keepalive 60 s.
    async fn connect(addr: std::net::SocketAddr, client_id: &str) -> TcpStream {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        body.extend((client_id.len() as u16).to_be_bytes());
        body.extend(client_id.as_bytes());
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&[0x10, body.len() as u8]).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
        stream
    }
    fn publish(topic: &str, qos: QoS) -> Vec<u8> {
        let mut publish = Publish::new(topic, qos, Bytes::from(vec![7u8; 256]), None);
        publish.pkid = u16::from(qos != QoS::AtMostOnce);
        let mut out = BytesMut::new();
        codec::write(
            ProtocolVersion::V311,
            &codec::Packet::Publish(publish),
            &mut out,
        )
        .unwrap();
        out.to_vec()
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = prometheus::Registry::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_broker, mut publisher, mut subscriber) = rt.block_on(async {
        let mut config = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        config.auth.mode = AuthMode::Open;
        let broker = Broker::start(config, BrokerHooks::default(), &registry, shutdown.clone())
            .await
            .unwrap();
        let publisher = connect(broker.local_addr(), "bench-publisher").await;
        let mut subscriber = connect(broker.local_addr(), "bench-subscriber").await;
        let filter = b"bench/down";
        let mut subscribe = vec![
            0x82,
            (2 + 2 + filter.len() + 1) as u8,
            0,
            1,
            0,
            filter.len() as u8,
        ];
        subscribe.extend(filter);
        subscribe.push(0);
        subscriber.write_all(&subscribe).await.unwrap();
        let mut suback = [0u8; 5];
        subscriber.read_exact(&mut suback).await.unwrap();
        assert_eq!(suback, [0x90, 3, 0, 1, 0]);
        (broker, publisher, subscriber)
    });
    let qos1 = publish("bench/up", QoS::AtLeastOnce);
    let qos0 = publish("bench/down", QoS::AtMostOnce);
    let mut group = c.benchmark_group("connection_256B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("qos1_publish_to_puback", |b| {
        let mut puback = [0u8; 4];
        b.iter(|| {
            rt.block_on(async {
                publisher.write_all(&qos1).await.unwrap();
                publisher.read_exact(&mut puback).await.unwrap();
            })
        })
    });
    group.bench_function("qos0_publish_to_delivery", |b| {
        let mut delivered = vec![0u8; qos0.len()];
        b.iter(|| {
            rt.block_on(async {
                publisher.write_all(&qos0).await.unwrap();
                subscriber.read_exact(&mut delivered).await.unwrap();
            })
        })
    });
    group.finish();
    shutdown.cancel();
}

criterion_group!(
    benches,
    codec_benches,
    auth_benches,
    routing_benches,
    schema_benches,
    tls_benches,
    connection_benches
);
criterion_main!(benches);
