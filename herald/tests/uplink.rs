//! Device uplinks through the real `herald` binary into a real Kafka.

mod common;

use common::{consume, kafka, Herald};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
};
use std::time::Duration;

fn options(herald: &Herald, device_id: &str, password: &str) -> MqttOptions {
    let mut options = MqttOptions::new(device_id, herald.mqtt.ip().to_string(), herald.mqtt.port());
    options.set_credentials(device_id, password);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Polls until CONNACK; returns the connection error if refused.
async fn connected(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// Polls until the PUBACK for the next publish, or `wait` passes.
async fn puback_within(eventloop: &mut EventLoop, wait: Duration) -> Option<u16> {
    tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => return Some(ack.pkid),
                Ok(_) => {}
                Err(error) => {
                    eprintln!("client: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn qos1_uplink_lands_in_kafka_with_device_key_and_headers() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let device = "scanbox-0001";
    let (client, mut eventloop) =
        AsyncClient::new(options(&herald, device, &herald.password(device)), 10);
    connected(&mut eventloop).await.expect("device connects");
    client
        .publish(
            format!("devices/{device}/up/scan"),
            QoS::AtLeastOnce,
            false,
            &b"28 1234 5678 9012 3456"[..],
        )
        .await
        .unwrap();
    assert!(
        puback_within(&mut eventloop, Duration::from_secs(30))
            .await
            .is_some(),
        "PUBACK after Kafka's ack"
    );

    let records = consume(
        &bootstrap,
        &format!("{}.scan", herald.topic_prefix),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(device.as_bytes()));
    assert_eq!(record.payload, b"28 1234 5678 9012 3456");
    assert_eq!(record.header("herald-device-id"), Some(device));
    assert_eq!(
        record.header("herald-mqtt-topic"),
        Some(format!("devices/{device}/up/scan").as_str())
    );
    assert_eq!(record.header("herald-qos"), Some("1"));
    let received: u64 = record
        .header("herald-received-at")
        .unwrap()
        .parse()
        .unwrap();
    assert!(received > 1_700_000_000_000);
    let produced = format!(
        "herald_kafka_produced_total{{result=\"ok\",topic=\"{}.scan\"}}",
        herald.topic_prefix
    );
    assert_eq!(herald.metric(&produced), 1.0);
    assert_eq!(
        herald.metric("herald_connects_total{result=\"accepted\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_gets_not_authorized_and_is_counted() {
    let herald = Herald::start(&kafka(), "");
    let device = "speaker-0002";
    let forged = herald
        .password("someone-else")
        .replace("someone-else", device);
    let (_client, mut eventloop) = AsyncClient::new(options(&herald, device, &forged), 10);
    match connected(&mut eventloop).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected CONNACK not authorized, got {other:?}"),
    }
    let (_client, mut eventloop) = AsyncClient::new(options(&herald, device, "v1.1.AAAA"), 10);
    assert!(connected(&mut eventloop).await.is_err());
    let counted = herald.metric("herald_auth_failures_total{reason=\"bad_signature\"}");
    assert_eq!(counted, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_outside_namespace_is_refused_and_nothing_reaches_kafka() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();

    // MQTT 5: a PUBACK with reason "not authorized", and the connection stays.
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let device = "printer-0003";
    let mut options5 =
        rumqttc::v5::MqttOptions::new(device, herald.mqtt.ip().to_string(), herald.mqtt.port());
    options5.set_credentials(device, herald.password(device));
    let (client5, mut eventloop5) = rumqttc::v5::AsyncClient::new(options5, 10);
    let reason = publish_v5(
        &client5,
        &mut eventloop5,
        "devices/printer-9999/up/scan".into(),
    )
    .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);

    // Inside the namespace but no uplink rule: refused, not silently dropped.
    let reason = publish_v5(
        &client5,
        &mut eventloop5,
        format!("devices/{device}/up/unknown-kind"),
    )
    .await;
    assert_eq!(reason, PubAckReason::TopicNameInvalid);

    // MQTT 3.1.1 has no negative PUBACK: the connection is closed instead.
    let device4 = "printer-0004";
    let (client4, mut eventloop4) =
        AsyncClient::new(options(&herald, device4, &herald.password(device4)), 10);
    connected(&mut eventloop4).await.unwrap();
    client4
        .publish(
            "devices/printer-9999/up/scan",
            QoS::AtLeastOnce,
            false,
            &b"spoofed"[..],
        )
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop4.poll().await {
                Err(_) => return true,
                Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("a reaction");
    assert!(closed, "refused, never acknowledged");

    let records = consume(
        &bootstrap,
        &format!("{}.scan", herald.topic_prefix),
        1,
        Duration::from_secs(5),
    )
    .await;
    assert!(records.is_empty(), "nothing reached Kafka: {records:?}");
    assert_eq!(
        herald.metric("herald_acl_denied_total{action=\"publish\"}"),
        2.0
    );
}

/// Publishes with QoS 1 as an MQTT 5 client and returns the PUBACK's reason code.
async fn publish_v5(
    client: &rumqttc::v5::AsyncClient,
    eventloop: &mut rumqttc::v5::EventLoop,
    topic: String,
) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    client
        .publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            &b"payload"[..],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(rumqttc::v5::Event::Incoming(P5::PubAck(ack))) = eventloop.poll().await {
                return ack.reason;
            }
        }
    })
    .await
    .expect("a PUBACK")
}
