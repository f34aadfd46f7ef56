//! The TLS listener over real TCP: rustls's own client (TLS 1.2 and 1.3, a
//! key update, close_notify) and the mosquitto clients exchange small and
//! large messages byte for byte, and bytes that are not TLS are refused and
//! counted. The listener's stream holds no buffer while idle
//! (broker/src/tls/stream.rs); these tests hold it to what tokio-rustls did.

mod common;

use bytes::Bytes;
use common::*;
use herald_broker::codec::*;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_rustls::TlsConnector;

async fn start_tls(cert: &TestCert) -> (TestBroker, SocketAddr) {
    let tls = cert.tls_config();
    let broker = start(move |config| config.tls = Some(tls)).await;
    let addr = broker.broker.as_ref().unwrap().tls_local_addr();
    (broker, addr.expect("TLS listener up"))
}

fn tls_errors(broker: &TestBroker) -> u64 {
    broker.counter("herald_protocol_errors_total", "kind", "tls_handshake")
}

/// A rustls client that trusts `cert` and speaks only `version`.
fn connector(cert: &TestCert, version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let pem = std::fs::read(&cert.cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A payload of `len` bytes that is not a repetition of a short pattern.
fn payload(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// Messages of 10 B to 300 KiB go out and come back over one TLS
/// connection, before and after the client rolls its keys (TLS 1.3); a
/// close_notify from the client ends the connection cleanly.
#[tokio::test]
async fn a_rustls_client_exchanges_messages_over_tls_1_2_and_1_3() {
    let cert = TestCert::new();
    let (broker, addr) = start_tls(&cert).await;
    for (name, version) in [
        ("1.2", &rustls::version::TLS12),
        ("1.3", &rustls::version::TLS13),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let server_name = ServerName::try_from("localhost").unwrap();
        let tls = connector(&cert, version)
            .connect(server_name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS {name} handshake: {e}"));
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(version.version),
            "TLS {name}"
        );
        let client_id = format!("tls-{name}");
        let (mut raw, ack) = Raw::over(tls).handshake(&client_id, true, None, None).await;
        assert_eq!(ack.code, ConnectReturnCode::Success, "TLS {name}");
        raw.subscribe("tls/#", QoS::AtLeastOnce).await;
        for (round, len) in [10, 16 * 1024 + 1, 300 * 1024].into_iter().enumerate() {
            if version == &rustls::version::TLS13 && round == 1 {
                // The server must answer with a key update of its own.
                raw.stream.get_mut().1.refresh_traffic_keys().unwrap();
            }
            let sent = payload(len);
            let mut publish = Publish::new("tls/echo", QoS::AtLeastOnce, sent.clone(), None);
            publish.pkid = round as u16 + 1;
            raw.send(Packet::Publish(publish)).await;
            let got = raw.expect_publish().await;
            assert_eq!(got.payload.len(), len, "TLS {name}");
            assert!(
                got.payload == sent,
                "TLS {name}: {len} bytes came back changed"
            );
            raw.send(Packet::PubAck(PubAck::new(got.pkid, None))).await;
        }
        assert!(raw.is_alive().await, "TLS {name}");
        raw.stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "TLS {name}: the broker closes after close_notify with its own: {read:?}"
        );
    }
    assert_eq!(tls_errors(&broker), 0);
}

/// mosquitto_pub and mosquitto_sub over TLS, each version: a 200 KiB message
/// and 200 small ones, queued for a persistent session while its subscriber
/// is away, arrive whole and in order when it comes back.
#[tokio::test]
async fn mosquitto_clients_exchange_messages_over_tls() {
    let cert = TestCert::new();
    let (broker, addr) = start_tls(&cert).await;
    let port = addr.port().to_string();
    let big: String = payload(200 * 1024)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    let big_file = cert.dir.join("big.txt");
    std::fs::write(&big_file, &big).unwrap();
    let lines: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    for version in ["tlsv1.2", "tlsv1.3"] {
        let tls = |command: &mut Command| {
            command.args(["-h", "127.0.0.1", "-p", &port, "-q", "1"]);
            command.args(["--tls-version", version, "--cafile"]);
            command.arg(&cert.cert);
        };
        let session = format!("tls-sub-{version}");
        let mut subscribe = Command::new("mosquitto_sub");
        tls(&mut subscribe);
        // Subscribes in a persistent session and leaves once acknowledged.
        subscribe.args(["-c", "-i", &session, "-t", "tls/+", "-E"]);
        let output = subscribe.output().await.expect("mosquitto_sub runs");
        assert_success("mosquitto_sub -E", &output);
        let mut publish = Command::new("mosquitto_pub");
        tls(&mut publish);
        publish.args(["-t", "tls/big", "-f"]).arg(&big_file);
        let output = publish.output().await.expect("mosquitto_pub runs");
        assert_success("mosquitto_pub -f", &output);
        let mut publish = Command::new("mosquitto_pub");
        tls(&mut publish);
        publish.args(["-t", "tls/line", "-l"]).stdin(Stdio::piped());
        let mut child = publish.spawn().expect("mosquitto_pub runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(lines.join("\n").as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        drop(stdin);
        assert!(child.wait().await.unwrap().success(), "mosquitto_pub -l");
        let mut subscribe = Command::new("mosquitto_sub");
        tls(&mut subscribe);
        subscribe.args(["-c", "-i", &session, "-t", "tls/+", "-C", "201", "-W", "20"]);
        let output = subscribe.args(["-F", "%t %p"]).output().await.unwrap();
        assert_success("mosquitto_sub", &output);
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut got = stdout.lines();
        assert_eq!(got.next(), Some(&*format!("tls/big {big}")), "{version}");
        for line in &lines {
            assert_eq!(got.next(), Some(&*format!("tls/line {line}")), "{version}");
        }
    }
    assert_eq!(tls_errors(&broker), 0);
}

/// Plain MQTT sent to the TLS port, and a handshake cut off after its first
/// bytes, are closed and counted; the listener goes on serving.
#[tokio::test]
async fn bytes_that_are_not_tls_are_refused_and_counted() {
    let cert = TestCert::new();
    let (broker, addr) = start_tls(&cert).await;
    let mut plain = Raw::open(addr).await;
    plain
        .send(Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: "plain".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ))
        .await;
    assert!(
        plain.recv().await.is_none(),
        "a plain CONNECT is not answered"
    );
    let mut cut = TcpStream::connect(addr).await.unwrap();
    // A handshake record header announcing 512 bytes, then nothing.
    cut.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    drop(cut);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tls_errors(&broker) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(tls_errors(&broker), 2);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from("localhost").unwrap();
    let tls = connector(&cert, &rustls::version::TLS13)
        .connect(server_name, tcp)
        .await
        .expect("the listener still serves");
    let (_raw, ack) = Raw::over(tls).handshake("after", true, None, None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
}

fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
