//! MQTT 5 properties and W3C trace context through the real `herald`
//! binary, a real Kafka and the scan processor, driven by paho-mqtt's MQTT 5
//! mode (`paho_properties.py`) with device credentials:
//!
//! - an uplink's Content Type, Response Topic, Correlation Data and user
//!   properties reach the Kafka record as headers, byte for byte, its
//!   `traceparent` as the `traceparent` header;
//! - a command's `traceparent` header reaches an MQTT 5 device as a user
//!   property (an MQTT 3.1.1 device gets the command without it), and its
//!   receipt carries it;
//! - the scan processor keeps the scan's trace on what it produces, back to
//!   the scan box's screen.
//!
//! The normative statements: MQTT 5.0 [MQTT-3.3.2-15]/[MQTT-3.3.2-16] (the
//! server forwards Response Topic and Correlation Data unaltered),
//! [MQTT-3.3.2-17]/[MQTT-3.3.2-18] (user properties forwarded, in order),
//! [MQTT-3.3.2-20] (Content Type forwarded unaltered); W3C Trace Context
//! §3.2 (`traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`).

mod common;

use common::{kafka, run_service, services_config, Herald};
use herald_consumers::Service;
use herald_schemas::v1::{
    CommandKind, DeliveryOutcome, DeliveryReceipt, Display, DownlinkCommand, ValidatedScan,
};
use herald_schemas::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The example of W3C Trace Context §3.2.3, and a second trace.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Herald's own headers, first on every uplink record.
const HERALD_HEADERS: [&str; 6] = [
    "herald-device-id",
    "herald-mqtt-topic",
    "herald-qos",
    "herald-received-at",
    "herald-message-id",
    "herald-dup",
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// One message a paho device received.
#[derive(Debug)]
struct Received {
    topic: String,
    payload: Vec<u8>,
    /// `None`: the PUBLISH had no properties at all (MQTT 3.1.1).
    user_properties: Option<Vec<(String, String)>>,
}

/// A device played by `paho_properties.py`.
struct Paho {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Paho {
    fn start(herald: &Herald, device: &str, args: &[&str]) -> Paho {
        let mut child = Command::new("python3")
            .arg(common::repo_root().join("herald/tests/paho_properties.py"))
            .args(["--port", &herald.mqtt.port().to_string()])
            .args(["--device", device, "--password", &herald.password(device)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs paho_properties.py (scripts/install-deps.sh installs paho-mqtt)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Paho { child, lines }
    }

    async fn line(&mut self) -> String {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("paho said something within 60 s")
            .expect("paho's stdout")
            .expect("paho did not exit early");
        eprintln!("paho: {line}");
        line
    }

    async fn message(&mut self) -> Received {
        let line = self.line().await;
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "a MESSAGE line: {line:?}");
        assert_eq!(fields[0], "MESSAGE");
        let user_properties = (fields[3] != "-").then(|| {
            fields[3]
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once(':').expect("name:value");
                    let text = |hex| String::from_utf8(unhex(hex)).expect("UTF-8");
                    (text(name), text(value))
                })
                .collect()
        });
        Received {
            topic: fields[1].to_string(),
            payload: unhex(fields[2]),
            user_properties,
        }
    }

    async fn succeeded(mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("paho exits")
            .expect("paho's status")
            .success()
    }
}

/// A Kafka record with its headers as raw bytes, in order.
#[derive(Debug)]
struct RawRecord {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl RawRecord {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }
}

/// Reads `topic` from the beginning until `want` records arrived or 60 s passed.
async fn raw_records(bootstrap: &str, topic: &str, want: usize) -> Vec<RawRecord> {
    let consumer = common::reader(bootstrap, topic);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < want {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(error)) => eprintln!("consumer: {error}"),
            Ok(Ok(message)) => records.push(RawRecord {
                key: message.key().unwrap_or_default().to_vec(),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    records
}

/// Produces one record with `headers` and waits for Kafka's acknowledgement.
async fn produce_with_headers(
    bootstrap: &str,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let headers = headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, &(key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

fn command(command_id: &str, device_id: &str) -> Vec<u8> {
    DownlinkCommand {
        command_id: command_id.into(),
        device_id: device_id.into(),
        kind: CommandKind::Announce as i32,
        payload: b"announcement".to_vec(),
        created_at_ms: now_ms(),
        expires_at_ms: now_ms() + 60_000,
    }
    .encode_to_vec()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// [MQTT-3.3.2-15]/[MQTT-3.3.2-16], [MQTT-3.3.2-17]/[MQTT-3.3.2-18] and
/// [MQTT-3.3.2-20]: what the server must forward unaltered, Herald forwards
/// into the Kafka record: Content Type, Response Topic, Correlation Data
/// (binary) and the user properties in order, byte for byte, after Herald's
/// own headers. A valid `traceparent` (W3C Trace Context §3.2) and its
/// `tracestate` are the record's `traceparent` and `tracestate` headers.
#[tokio::test(flavor = "multi_thread")]
async fn uplink_properties_reach_kafka_as_headers_byte_exact() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let device = "mqtt5-scanbox-1";
    let topic = format!("devices/{device}/up/scan");
    let traceparent = format!("traceparent={TRACEPARENT}");
    let mut paho = Paho::start(
        &herald,
        device,
        &[
            "--publish",
            &topic,
            "--payload",
            r#"{"code":"134567890123456789","scanId":"s-1"}"#,
            "--user-property",
            "shop=7",
            "--user-property",
            &traceparent,
            "--user-property",
            "k=first",
            "--user-property",
            "tracestate=rojo=00f067aa0ba902b7",
            "--user-property",
            "k=second",
            "--user-property",
            "收款=十二元五角",
            "--content-type",
            "application/json; charset=utf-8",
            "--response-topic",
            &format!("devices/{device}/down/reply"),
            "--correlation-hex",
            "00ff1080",
        ],
    );
    assert_eq!(
        paho.line().await,
        "PUBACK 0",
        "acknowledged after Kafka's ack"
    );
    assert!(paho.succeeded().await);

    let records = raw_records(&bootstrap, &herald.topic("scan"), 1).await;
    assert_eq!(records.len(), 1, "the uplink is in Kafka");
    let record = &records[0];
    assert_eq!(record.key, device.as_bytes());
    assert_eq!(
        record.payload,
        br#"{"code":"134567890123456789","scanId":"s-1"}"#
    );
    let names: Vec<&str> = record.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names[..6], HERALD_HEADERS, "Herald's own headers first");
    let bytes = |name: &str, value: &[u8]| (name.to_string(), value.to_vec());
    assert_eq!(
        record.headers[6..],
        [
            bytes("traceparent", TRACEPARENT.as_bytes()),
            bytes("tracestate", b"rojo=00f067aa0ba902b7"),
            bytes("mqtt-content-type", b"application/json; charset=utf-8"),
            bytes(
                "mqtt-response-topic",
                format!("devices/{device}/down/reply").as_bytes()
            ),
            bytes("mqtt-correlation-data", &[0x00, 0xff, 0x10, 0x80]),
            bytes("mqtt-user-shop", b"7"),
            bytes("mqtt-user-k", b"first"),
            bytes("mqtt-user-k", b"second"),
            bytes("mqtt-user-收款", "十二元五角".as_bytes()),
        ]
    );
    assert_eq!(record.header("mqtt-user-traceparent"), None, "written once");

    // An invalid traceparent is not trace context: it stays a plain user property.
    let mut paho = Paho::start(
        &herald,
        device,
        &[
            "--publish",
            &topic,
            "--payload",
            "second",
            "--user-property",
            "traceparent=00-not-a-trace-01",
        ],
    );
    assert_eq!(paho.line().await, "PUBACK 0");
    assert!(paho.succeeded().await);
    let records = raw_records(&bootstrap, &herald.topic("scan"), 2).await;
    let second = &records[1];
    assert_eq!(second.payload, b"second");
    assert_eq!(second.header("traceparent"), None);
    assert_eq!(
        second.header("mqtt-user-traceparent"),
        Some(&b"00-not-a-trace-01"[..])
    );
}

/// A command's `traceparent` header (W3C Trace Context §3.2) goes out as a
/// user property on the PUBLISH to an MQTT 5 device, with its
/// `tracestate`; an MQTT 3.1.1 device, which has no properties, gets the
/// same command without. Each receipt carries its command's trace; an
/// invalid `traceparent` is not passed on.
#[tokio::test(flavor = "multi_thread")]
async fn command_traceparent_reaches_an_mqtt5_device_as_a_user_property() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let (v5, v311) = ("mqtt5-speaker-1", "mqtt311-speaker-1");
    let mut speaker5 = Paho::start(&herald, v5, &["--subscribe", "--count", "2"]);
    let mut speaker311 = Paho::start(
        &herald,
        v311,
        &["--protocol", "311", "--subscribe", "--count", "1"],
    );
    assert_eq!(speaker5.line().await, "SUBSCRIBED");
    assert_eq!(speaker311.line().await, "SUBSCRIBED");

    let downlink = herald.topic("downlink");
    let trace = [("traceparent", TRACEPARENT), ("tracestate", "rojo=1")];
    produce_with_headers(&bootstrap, &downlink, v5, &command("cmd-5", v5), &trace).await;
    produce_with_headers(
        &bootstrap,
        &downlink,
        v311,
        &command("cmd-311", v311),
        &trace,
    )
    .await;
    produce_with_headers(
        &bootstrap,
        &downlink,
        v5,
        &command("cmd-5-untraced", v5),
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        )],
    )
    .await;

    let first = speaker5.message().await;
    assert_eq!(first.topic, format!("devices/{v5}/down/announce"));
    assert_eq!(
        DownlinkCommand::decode(&first.payload[..])
            .unwrap()
            .command_id,
        "cmd-5"
    );
    assert_eq!(
        first.user_properties,
        Some(pairs(&[
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=1")
        ]))
    );
    let second = speaker5.message().await;
    assert_eq!(
        DownlinkCommand::decode(&second.payload[..])
            .unwrap()
            .command_id,
        "cmd-5-untraced"
    );
    assert!(
        second.user_properties.unwrap_or_default().is_empty(),
        "an invalid traceparent is not passed on"
    );
    let old = speaker311.message().await;
    assert_eq!(
        DownlinkCommand::decode(&old.payload[..])
            .unwrap()
            .command_id,
        "cmd-311"
    );
    assert_eq!(old.user_properties, None, "MQTT 3.1.1 has no properties");
    assert!(speaker5.succeeded().await && speaker311.succeeded().await);

    let receipts = raw_records(&bootstrap, &herald.topic("receipts"), 3).await;
    assert_eq!(receipts.len(), 3);
    for record in &receipts {
        let receipt = DeliveryReceipt::decode(&record.payload[..]).unwrap();
        assert_eq!(receipt.outcome(), DeliveryOutcome::Delivered, "{receipt:?}");
        let expected = (receipt.command_id != "cmd-5-untraced").then_some(TRACEPARENT.as_bytes());
        assert_eq!(
            record.header("traceparent"),
            expected,
            "{}",
            receipt.command_id
        );
    }
}

/// One trace from the scan box to the payment backend, and from the scan
/// box to its own screen: the scan processor keeps each scan's
/// `traceparent` (W3C Trace Context §3.2) on the validated scan, on the
/// dead letter of a refused one and on the display command Herald then
/// delivers to the MQTT 5 scan box as a user property.
#[tokio::test(flavor = "multi_thread")]
async fn the_scan_processor_keeps_the_trace_of_each_scan() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let _scans = run_service(
        Service::ScanProcessor,
        &services_config(&herald, &bootstrap),
    );
    let device = "mqtt5-scanbox-2";
    let topic = format!("devices/{device}/up/scan");
    let accepted = format!("traceparent={TRACEPARENT}");
    let mut paho = Paho::start(
        &herald,
        device,
        &[
            "--publish",
            &topic,
            "--payload",
            r#"{"code":"134567890123456789","scanId":"s-1"}"#,
            "--user-property",
            &accepted,
        ],
    );
    assert_eq!(paho.line().await, "PUBACK 0");
    assert!(paho.succeeded().await);

    // Refused (not a payment code): the scan box is told, in the same trace.
    let refused = format!("traceparent={OTHER_TRACEPARENT}");
    let mut scanbox = Paho::start(
        &herald,
        device,
        &[
            "--subscribe",
            "--publish",
            &topic,
            "--payload",
            r#"{"code":"99999","scanId":"s-2"}"#,
            "--user-property",
            &refused,
            "--user-property",
            "tracestate=herald=scanbox",
            "--count",
            "1",
        ],
    );
    assert_eq!(scanbox.line().await, "SUBSCRIBED");
    assert_eq!(scanbox.line().await, "PUBACK 0");
    let display = scanbox.message().await;
    assert_eq!(display.topic, format!("devices/{device}/down/display"));
    let command = DownlinkCommand::decode(&display.payload[..]).unwrap();
    assert_eq!(command.command_id, format!("scan-rejected:{device}:s-2"));
    assert_eq!(
        Display::decode(&command.payload[..]).unwrap().text,
        "Payment code not accepted"
    );
    assert_eq!(
        display.user_properties,
        Some(pairs(&[
            ("traceparent", OTHER_TRACEPARENT),
            ("tracestate", "herald=scanbox")
        ]))
    );
    assert!(scanbox.succeeded().await);

    let validated = raw_records(&bootstrap, &herald.topic("payment.scans"), 1).await;
    assert_eq!(validated.len(), 1);
    let scan = ValidatedScan::decode(&validated[0].payload[..]).unwrap();
    assert_eq!(scan.message_id, format!("{device}:s-1"));
    assert_eq!(
        validated[0].header("traceparent"),
        Some(TRACEPARENT.as_bytes())
    );
    let letters = raw_records(&bootstrap, &herald.topic("deadletter"), 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header("traceparent"),
        Some(OTHER_TRACEPARENT.as_bytes())
    );
    assert_eq!(
        letters[0].header("tracestate"),
        Some(&b"herald=scanbox"[..])
    );
}
