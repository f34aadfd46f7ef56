//! Poison uplinks: a QoS 1 uplink Kafka refuses for good (here: larger than
//! its topic's `max.message.bytes`) is kept in the dead-letter topic once,
//! and the device gets its PUBACK (MQTT 5: reason 0x97) instead of
//! retransmitting forever; the node keeps serving other devices.

mod common;

use common::{consume, free_port, kafka, run, unique, Herald, TempDir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Bytes Kafka accepts per record batch on the uplink topic of this test.
const TOPIC_MAX_MESSAGE_BYTES: &str = "100000";
/// The uplink of the issue: above Kafka's default 1,000,000-byte limit,
/// below Herald's 1 MiB `broker.max_packet_size`.
const POISON_SIZE: usize = 1_000_100;

async fn create_small_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("max.message.bytes", TOPIC_MAX_MESSAGE_BYTES);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .expect("create_topics");
    for result in results {
        result.expect("topic created");
    }
}

fn mosquitto_pub(herald: &Herald, device: &str, version: &str, args: &[&str]) -> Output {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &herald.mqtt.port().to_string()])
        .args(["-V", version, "-q", "1"])
        .args(["-i", device, "-u", device, "-P", &herald.password(device)])
        .args(["-t", &format!("devices/{device}/up/scan")])
        .args(args);
    tokio::task::block_in_place(|| run(&mut command))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uplink_kafka_refuses_is_dead_lettered_once_and_acknowledged() {
    let bootstrap = kafka();
    let prefix = unique("poison");
    create_small_topic(&bootstrap, &format!("{prefix}.scan")).await;
    let dead_letters = format!("{prefix}.dead-letters");
    let herald = Herald::start_with(
        &bootstrap,
        &format!("# kafka\ndead_letter_topic = \"{dead_letters}\"\n"),
        &prefix,
        free_port(),
    );
    herald.wait_ready();

    let dir = TempDir(std::env::temp_dir().join(unique("poison-payload-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let payload: Vec<u8> = (0..POISON_SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let file = dir.0.join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let file = path_arg(&file);

    // MQTT 3.1.1: a plain PUBACK, so mosquitto_pub succeeds (and stops retrying).
    let v311 = "poison-v311";
    let output = mosquitto_pub(&herald, v311, "mqttv311", &["-f", &file]);
    assert!(output.status.success(), "the 3.1.1 device got its PUBACK");

    // MQTT 5: PUBACK 0x97 (quota exceeded).
    let v5 = "poison-v5";
    let output = mosquitto_pub(&herald, v5, "mqttv5", &["-d", "-f", &file]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("received PUBACK") && stdout.contains("RC:151"),
        "the 5.0 device got PUBACK 0x97: {stdout}"
    );

    // The node keeps serving: another device's uplink goes through.
    let healthy = "healthy-scanbox";
    let output = mosquitto_pub(&herald, healthy, "mqttv311", &["-m", "a normal scan"]);
    assert!(output.status.success(), "the healthy device got its PUBACK");
    let records = consume(
        &bootstrap,
        &format!("{prefix}.scan"),
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(records.len(), 1, "only the normal scan is in the topic");
    assert_eq!(records[0].payload, b"a normal scan");

    // Exactly one dead letter per poison uplink, a few seconds later too.
    let letters = consume(&bootstrap, &dead_letters, 3, Duration::from_secs(8)).await;
    assert_eq!(letters.len(), 2, "one dead letter per message: {letters:?}");
    for device in [v311, v5] {
        // Keyed by device id (the topic may have several partitions).
        let letter = letters
            .iter()
            .find(|letter| letter.key.as_deref() == Some(device.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {device}"));
        assert_eq!(letter.header("herald-device-id"), Some(device));
        assert_eq!(
            letter.header("herald-mqtt-topic"),
            Some(format!("devices/{device}/up/scan").as_str())
        );
        assert_eq!(letter.header("herald-qos"), Some("1"));
        assert_eq!(
            letter.header("herald-kafka-topic"),
            Some(format!("{prefix}.scan").as_str())
        );
        assert_eq!(letter.header("herald-dead-letter-kind"), Some("too_large"));
        let reason = letter.header("herald-dead-letter-reason").unwrap_or("");
        assert!(reason.contains("MessageSizeTooLarge"), "{reason}");
        assert_eq!(
            letter.header("herald-original-size"),
            Some(POISON_SIZE.to_string().as_str())
        );
        // Truncated to the default dead_letter_max_payload (64 KiB).
        assert_eq!(letter.payload, payload[..65536]);
    }

    assert_eq!(
        herald.metric("herald_kafka_dead_letters_total{reason=\"too_large\"}"),
        2.0
    );
    assert_eq!(
        herald.metric(&format!(
            "herald_kafka_produced_total{{result=\"rejected\",topic=\"{prefix}.scan\"}}"
        )),
        2.0
    );
    assert_eq!(
        herald.metric(&format!(
            "herald_kafka_produced_total{{result=\"ok\",topic=\"{dead_letters}\"}}"
        )),
        2.0
    );
    // The broker answered both as rejected, and closed no connection for them.
    assert_eq!(
        herald.metric("herald_uplinks_rejected_total{kind=\"too_large\"}"),
        2.0
    );
    assert_eq!(
        herald.metric("herald_disconnects_total{reason=\"uplink_failed\"}"),
        0.0
    );
    assert_eq!(herald.metric("herald_uplink_failures_total"), 0.0);
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_string()
}
