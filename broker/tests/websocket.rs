//! MQTT over WebSocket (MQTT 5.0 chapter 6), over real sockets: paho-mqtt's
//! Python "websockets" transport publishes and subscribes through the ws and
//! wss listeners with MQTT 3.1.1 and 5, a wrong path is refused with 404, and
//! a WebSocket client that shows every frame checks the framing rules.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use futures::{SinkExt, StreamExt};
use herald_broker::codec::{self, *};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A broker in open mode with a ws listener on `path` (and with `cert`,
/// TLS and wss listeners), all on ephemeral loopback ports.
async fn start_websocket(path: &str, cert: Option<&TestCert>) -> TestBroker {
    let path = path.to_string();
    let tls = cert.map(TestCert::tls_config);
    start(move |config| {
        let websocket = config.websocket.get_or_insert_with(Default::default);
        websocket.listen = Some("127.0.0.1:0".parse().unwrap());
        websocket.path = path;
        if tls.is_some() {
            websocket.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        }
        config.tls = tls;
    })
    .await
}

fn ws_addr(broker: &TestBroker) -> SocketAddr {
    let addr = broker.broker.as_ref().unwrap().websocket_local_addr();
    addr.expect("ws listener up")
}

fn handshake_errors(broker: &TestBroker) -> u64 {
    broker.counter(
        "herald_protocol_errors_total",
        "kind",
        "websocket_handshake",
    )
}

/// Asserts that `expected` failed handshakes get counted. The listener counts
/// one after it has answered or closed, so the client may see the answer
/// first: wait for the count (a few seconds at most).
async fn assert_handshake_errors(broker: &TestBroker, expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handshake_errors(broker) < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handshake_errors(broker), expected);
}

/// Runs tests/paho_websocket.py with `args`; panics with its output on failure.
async fn paho(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho_websocket.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("paho checks finish within 60 s")
        .expect("python3 runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "paho checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    print!("{stdout}");
}

/// paho over ws, MQTT 3.1.1 and 5: subscribe, publish QoS 1 (a small and a
/// 100 KiB message), receive both. paho offers the `mqtt` subprotocol
/// [MQTT-6.0.0-4] and sends binary frames [MQTT-6.0.0-1].
#[tokio::test(flavor = "multi_thread")]
async fn paho_publishes_and_subscribes_over_ws() {
    let broker = start_websocket("/mqtt", None).await;
    let port = ws_addr(&broker).port().to_string();
    paho(&["--port", &port, "--path", "/mqtt"]).await;
    assert_eq!(handshake_errors(&broker), 0);
}

/// The same over wss, with the certificate of `[broker.tls]`, on a
/// configured path.
#[tokio::test(flavor = "multi_thread")]
async fn paho_publishes_and_subscribes_over_wss() {
    let cert = TestCert::new();
    let broker = start_websocket("/herald/mqtt", Some(&cert)).await;
    let port = broker.broker.as_ref().unwrap().websocket_tls_local_addr();
    let port = port.expect("wss listener up").port().to_string();
    let cafile = cert.cert.to_str().unwrap();
    paho(&[
        "--port",
        &port,
        "--path",
        "/herald/mqtt",
        "--tls",
        "--cafile",
        cafile,
    ])
    .await;
    assert_eq!(handshake_errors(&broker), 0);
}

/// A handshake on another path is answered 404 and counted; paho cannot
/// connect there.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_path_is_refused_with_404() {
    let broker = start_websocket("/mqtt", None).await;
    let addr = ws_addr(&broker);
    let response = raw_upgrade(addr, "/not-mqtt", "").await;
    assert!(
        response.starts_with("HTTP/1.1 404"),
        "expected 404, got {response:?}"
    );
    assert_handshake_errors(&broker, 1).await;

    paho(&[
        "--port",
        &addr.port().to_string(),
        "--path",
        "/wrong",
        "--expect-refused",
    ])
    .await;
    assert_handshake_errors(&broker, 2).await;
}

/// An upgrade request larger than the listener reads is closed unanswered
/// and counted, so no client can make the broker hold more of it.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_upgrade_request_is_closed() {
    let broker = start_websocket("/mqtt", None).await;
    let padding = format!("X-Padding: {}\r\n", "a".repeat(20 * 1024));
    let response = raw_upgrade(ws_addr(&broker), "/mqtt", &padding).await;
    assert!(
        !response.starts_with("HTTP/1.1 101"),
        "upgraded: {response:?}"
    );
    assert_handshake_errors(&broker, 1).await;
}

/// Sends a WebSocket upgrade request for `path` (with `extra` header lines)
/// over raw TCP and returns what came back before the connection closed or
/// the response headers ended.
async fn raw_upgrade(addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{extra}\r\n"
    );
    // The broker may close before it read everything it was sent.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                response.extend_from_slice(&chunk[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// A WebSocket client that shows every frame, offering the `mqtt`
/// subprotocol [MQTT-6.0.0-4]; the handshake fails unless the broker
/// answers with it.
struct Frames {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
}

impl Frames {
    async fn open(addr: SocketAddr) -> Frames {
        let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("WebSocket handshake");
        assert_eq!(
            response.headers().get(SEC_WEBSOCKET_PROTOCOL).unwrap(),
            "mqtt"
        );
        Frames {
            ws,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("frame sent");
    }

    /// The next MQTT packet, whatever frames it came in; `None` when the
    /// connection closed or nothing came in time.
    async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(packet)) = codec::read(ProtocolVersion::V5, &mut self.buf, 1 << 20) {
                return Some(packet);
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) => self.buf.extend_from_slice(&data),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(other))) => panic!("MQTT travels in binary frames, got {other:?}"),
                _ => return None,
            }
        }
    }
}

fn encode(packets: &[Packet]) -> Bytes {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.write(&mut out, None).unwrap();
    }
    out.freeze()
}

fn connect_packet(client_id: &str) -> Packet {
    Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
}

/// [MQTT-6.0.0-2]: the broker does not assume packets align with frames. A
/// CONNECT split over three binary frames is read as one packet; a SUBSCRIBE
/// and a PUBLISH in one frame are read as two.
#[tokio::test]
async fn packets_span_frames_and_frames_hold_several_packets() {
    let broker = start_websocket("/mqtt", None).await;
    let mut client = Frames::open(ws_addr(&broker)).await;

    let connect = encode(&[connect_packet("ws-frames")]);
    for part in [&connect[..1], &connect[1..4], &connect[4..]] {
        client
            .send(Message::Binary(Bytes::copy_from_slice(part)))
            .await;
    }
    match client.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    let subscribe = Subscribe::new(Filter::new("ws/frames", QoS::AtLeastOnce), None).with_pkid(1);
    let mut publish = Publish::new(
        "ws/frames",
        QoS::AtLeastOnce,
        Bytes::from_static(b"two packets, one frame"),
        None,
    );
    publish.pkid = 2;
    let both = encode(&[Packet::Subscribe(subscribe), Packet::Publish(publish)]);
    client.send(Message::Binary(both)).await;

    let (mut suback, mut puback, mut delivered) = (false, false, None);
    while !(suback && puback && delivered.is_some()) {
        match client.recv().await {
            Some(Packet::SubAck(ack)) => suback = ack.pkid == 1,
            Some(Packet::PubAck(ack)) => puback = ack.pkid == 2,
            Some(Packet::Publish(p)) => delivered = Some(p.payload),
            other => panic!("expected SUBACK, PUBACK and PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(delivered.as_deref(), Some(&b"two packets, one frame"[..]));
}

/// [MQTT-6.0.0-1]: a text frame closes the network connection.
#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let broker = start_websocket("/mqtt", None).await;
    let mut client = Frames::open(ws_addr(&broker)).await;
    client
        .send(Message::Binary(encode(&[connect_packet("ws-text")])))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::ConnAck(_))));
    client.send(Message::text("not MQTT")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("the connection stayed open after a text frame"),
        }
    }
}

/// A WebSocket message larger than `max_packet_size` plus the headroom is
/// refused by the frame layer before it is buffered whole, even when it holds
/// only small valid packets (here PINGREQs, none of which is answered).
#[tokio::test]
async fn an_oversized_message_closes_the_connection() {
    let broker = start(|config| {
        config.max_packet_size = 1024;
        let websocket = config.websocket.get_or_insert_with(Default::default);
        websocket.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut client = Frames::open(ws_addr(&broker)).await;
    client
        .send(Message::Binary(encode(&[connect_packet("ws-big")])))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::ConnAck(_))));
    // The send itself may fail once the broker has closed.
    let _ = client
        .ws
        .send(Message::Binary(Bytes::from(
            [0xC0u8, 0x00].repeat(32 * 1024),
        )))
        .await;
    assert!(client.recv().await.is_none(), "connection stayed open");
}

/// Admission is the TCP listeners': past the ws listener's connect rate a
/// client is upgraded and answered CONNACK 0x9F "connection rate exceeded".
#[tokio::test]
async fn the_connect_rate_applies_to_the_ws_listener() {
    let broker = start(|config| {
        config.admission.max_connect_rate = 1;
        config.admission.connect_burst = 1;
        let websocket = config.websocket.get_or_insert_with(Default::default);
        websocket.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut codes = Vec::new();
    for client_id in ["ws-rate-1", "ws-rate-2"] {
        let mut client = Frames::open(ws_addr(&broker)).await;
        client
            .send(Message::Binary(encode(&[connect_packet(client_id)])))
            .await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => codes.push(ack.code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    assert_eq!(
        codes,
        [
            ConnectReturnCode::Success,
            ConnectReturnCode::ConnectionRateExceeded
        ]
    );
}
