//! Duplicates made harmless downstream, through the real `herald` binary, a
//! real Kafka and the scan processor: a scan box whose PUBACK was lost
//! reconnects and resends the same QoS 1 PUBLISH (same packet id, DUP set).
//! Kafka holds the scan twice, both records with the same
//! `herald-message-id` and the second marked `herald-dup: 1`; the payment
//! backend gets one `ValidatedScan`. A scan without a `scan_id` is refused.

mod common;

use bytes::BytesMut;
use common::{consume, kafka, Herald};
use herald_consumers::config::ConsumersConfig;
use herald_consumers::Service;
use herald_schemas::v1::{DeadLetter, ScanResult, ValidatedScan};
use herald_schemas::Message as _;
use rumqttc::mqttbytes::{v4, QoS};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

const WAIT: Duration = Duration::from_secs(30);

/// The scan processor on this Herald's topics, reporting to `registry`.
fn run_scan_processor(
    herald: &Herald,
    bootstrap: &str,
    registry: &prometheus::Registry,
) -> DropGuard {
    let mut c = ConsumersConfig::default();
    c.kafka.bootstrap_servers = bootstrap.into();
    c.kafka.downlink_topic = herald.topic("downlink");
    c.kafka.dead_letter_topic = herald.topic("deadletter");
    c.scan_processor.input_topic = herald.topic("scan");
    c.scan_processor.validated_topic = herald.topic("payment.scans");
    c.scan_processor.group_id = herald.topic("scan-processor");
    let shutdown = CancellationToken::new();
    let (token, registry) = (shutdown.clone(), registry.clone());
    tokio::spawn(async move {
        herald_consumers::run(Service::ScanProcessor, &c, &registry, token)
            .await
            .expect("scan processor runs");
    });
    shutdown.drop_guard()
}

/// A scan box speaking MQTT 3.1.1 packet by packet, so that it can set DUP.
struct ScanBox {
    stream: TcpStream,
    buf: BytesMut,
}

impl ScanBox {
    /// Connects with a persistent session (clean session 0), as firmware does.
    async fn connect(herald: &Herald, device: &str) -> ScanBox {
        let mut connect = v4::Connect::new(device);
        connect.keep_alive = 60;
        connect.clean_session = false;
        connect.login = Some(v4::Login::new(device, herald.password(device)));
        let mut out = BytesMut::new();
        connect.write(&mut out).unwrap();
        let mut scanbox = ScanBox {
            stream: TcpStream::connect(herald.mqtt).await.unwrap(),
            buf: BytesMut::new(),
        };
        scanbox.stream.write_all(&out).await.unwrap();
        match scanbox.next_packet().await {
            v4::Packet::ConnAck(ack) => assert_eq!(ack.code, v4::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        scanbox
    }

    async fn next_packet(&mut self) -> v4::Packet {
        loop {
            if let Ok(packet) = v4::Packet::read(&mut self.buf, 1 << 20) {
                return packet;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("Herald answers")
                .expect("connection stays open");
            assert!(n > 0, "Herald closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes `payload` to the scan topic with QoS 1 and waits for its PUBACK.
    async fn publish(&mut self, device: &str, pkid: u16, dup: bool, payload: &[u8]) {
        let mut publish = v4::Publish::new(
            format!("devices/{device}/up/scan"),
            QoS::AtLeastOnce,
            payload.to_vec(),
        );
        publish.pkid = pkid;
        publish.dup = dup;
        let mut out = BytesMut::new();
        publish.write(&mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
        loop {
            match self.next_packet().await {
                v4::Packet::PubAck(ack) if ack.pkid == pkid => return,
                _ => continue,
            }
        }
    }
}

fn scan(code: &str, scan_id: &str) -> Vec<u8> {
    ScanResult {
        code: code.into(),
        scanned_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
        scan_id: scan_id.into(),
    }
    .encode_to_vec()
}

/// The value of counter `name` with label `service` = scan-processor and,
/// if given, label `reason`.
fn counter(registry: &prometheus::Registry, name: &str, reason: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| {
            let label = |n: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_owned())
            };
            label("service").as_deref() == Some("scan-processor")
                && reason.is_none_or(|r| label("reason").as_deref() == Some(r))
        })
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retransmitted_scan_is_in_kafka_twice_and_validated_once() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let registry = prometheus::Registry::new();
    let _scans = run_scan_processor(&herald, &bootstrap, &registry);
    let device = "scanbox-dup-1";
    let first = scan("134567890123456789", "s-1");

    // The PUBACK of the first PUBLISH is "lost": the scan box drops the
    // connection, reconnects and resends the PUBLISH, same packet id, DUP set.
    let mut scanbox = ScanBox::connect(&herald, device).await;
    scanbox.publish(device, 1, false, &first).await;
    drop(scanbox);
    let mut scanbox = ScanBox::connect(&herald, device).await;
    scanbox.publish(device, 1, true, &first).await;
    // A new scan, then a bare-text code, which cannot carry a scan_id.
    scanbox
        .publish(device, 2, false, &scan("281234567890123456", "s-2"))
        .await;
    scanbox
        .publish(device, 3, false, b"281234567890123456")
        .await;

    let uplinks = consume(&bootstrap, &herald.topic("scan"), 4, WAIT).await;
    assert_eq!(uplinks.len(), 4, "Kafka holds the retransmission too");
    let id = |i: usize| uplinks[i].header("herald-message-id").unwrap_or_default();
    assert!(id(0).starts_with("scanbox-dup-1:"), "{}", id(0));
    assert_eq!(id(0), id(1), "a retransmission keeps its message id");
    assert_ne!(id(0), id(2), "another scan has another id");
    let dup = |i: usize| uplinks[i].header("herald-dup");
    assert_eq!((dup(0), dup(1), dup(2)), (Some("0"), Some("1"), Some("0")));

    // The bare-text scan is refused: it is the last input, so once its dead
    // letter is there, the scan processor has handled everything before it.
    let letters = consume(&bootstrap, &herald.topic("deadletter"), 1, WAIT).await;
    assert_eq!(letters.len(), 1);
    let letter = DeadLetter::decode(&letters[0].payload[..]).unwrap();
    assert!(
        letter.error.starts_with("missing_scan_id: "),
        "{}",
        letter.error
    );

    // One ValidatedScan per scan, in order: the retransmission was dropped.
    let validated = consume(
        &bootstrap,
        &herald.topic("payment.scans"),
        3,
        Duration::from_secs(5),
    )
    .await;
    let ids: Vec<String> = validated
        .iter()
        .map(|r| ValidatedScan::decode(&r.payload[..]).unwrap().message_id)
        .collect();
    assert_eq!(ids, ["scanbox-dup-1:s-1", "scanbox-dup-1:s-2"]);
    assert_eq!(
        counter(&registry, "herald_consumer_duplicates_dropped_total", None),
        1
    );
    assert_eq!(
        counter(
            &registry,
            "herald_consumer_rejected_total",
            Some("missing_scan_id")
        ),
        1
    );
}
