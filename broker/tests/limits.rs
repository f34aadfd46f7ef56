//! Every limit on a client's input and state, over real TCP: the client gets
//! the MQTT reason code, the node keeps serving the other sessions, and
//! `herald_limits_exceeded_total` counts it (docs/reliability.md).

mod common;

use bytes::Bytes;
use common::*;
use herald_broker::codec::*;
use std::time::Duration;

const LIMITS: &str = "herald_limits_exceeded_total";

fn subscribe_many(pkid: u16, filters: impl Iterator<Item = String>) -> Packet {
    let filters = filters
        .map(|f| Filter::new(f, QoS::AtLeastOnce))
        .collect::<Vec<_>>();
    Packet::Subscribe(Subscribe {
        pkid,
        filters,
        properties: None,
    })
}

fn will_properties(delay: Option<u32>, user_properties: usize) -> LastWillProperties {
    LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: (0..user_properties)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect(),
    }
}

#[tokio::test]
async fn a_device_cannot_grow_the_trie_or_its_subscriptions_without_bound() {
    let broker = start(device_mode).await;
    let (mut bystander, ack) = Raw::connect_as(
        broker.addr,
        "bystander-1",
        true,
        None,
        Some(device_login("bystander-1")),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let (mut device, _) = Raw::connect_as(
        broker.addr,
        "dev-1",
        true,
        None,
        Some(device_login("dev-1")),
    )
    .await;

    // The probe that aborted the process: 30,000 levels inside its namespace.
    let deep = format!("devices/dev-1/down/{}#", "a/".repeat(30_000));
    assert_eq!(
        device.subscribe(&deep, QoS::AtLeastOnce).await.return_codes,
        vec![SubscribeReasonCode::TopicFilterInvalid]
    );
    // Short enough, but too deep.
    let levels = format!("devices/dev-1/down/{}#", "a/".repeat(40));
    assert_eq!(
        device
            .subscribe(&levels, QoS::AtLeastOnce)
            .await
            .return_codes,
        vec![SubscribeReasonCode::TopicFilterInvalid]
    );
    device
        .send(Packet::Unsubscribe(Unsubscribe {
            pkid: 2,
            filters: vec![deep.clone()],
            properties: None,
        }))
        .await;
    assert!(matches!(device.recv().await, Some(Packet::UnsubAck(_))));
    assert_eq!(broker.counter(LIMITS, "limit", "topic_length"), 1);
    assert_eq!(broker.counter(LIMITS, "limit", "topic_levels"), 1);

    // 100,000 filters in one session: the first 100 (the default cap) are granted.
    let mut granted = 0;
    let mut quota = 0;
    for batch in 0..100u16 {
        let filters = (0..1000).map(|i| format!("devices/dev-1/down/f{}", batch as u32 * 1000 + i));
        device.send(subscribe_many(batch + 10, filters)).await;
        match device.recv().await {
            Some(Packet::SubAck(ack)) => {
                for code in ack.return_codes {
                    match code {
                        SubscribeReasonCode::Success(_) => granted += 1,
                        SubscribeReasonCode::QuotaExceeded => quota += 1,
                        other => panic!("{other:?}"),
                    }
                }
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    assert_eq!((granted, quota), (100, 99_900));
    assert_eq!(broker.counter(LIMITS, "limit", "subscriptions"), 99_900);
    assert!(device.is_alive().await);
    assert!(bystander.is_alive().await, "the other session is untouched");
    device
        .send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bystander.is_alive().await,
        "teardown of that session hurt nobody"
    );
}

#[tokio::test]
async fn publish_limits_get_reason_codes() {
    let broker = start(|c| c.limits.max_awaiting_pubrel = 3).await;
    let (mut client, _) = Raw::connect(broker.addr, "pub-limits", true, None).await;

    let deep = format!("t/{}x", "l/".repeat(40));
    let mut p = Publish::new(deep, QoS::AtLeastOnce, Bytes::from_static(b"x"), None);
    p.pkid = 1;
    client.send(Packet::Publish(p)).await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, PubAckReason::TopicNameInvalid),
        other => panic!("{other:?}"),
    }

    let props = PublishProperties {
        user_properties: (0..40).map(|i| (format!("k{i}"), "v".into())).collect(),
        ..Default::default()
    };
    let mut p = Publish::new(
        "t/props",
        QoS::AtLeastOnce,
        Bytes::from_static(b"x"),
        Some(props),
    );
    p.pkid = 2;
    client.send(Packet::Publish(p)).await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, PubAckReason::QuotaExceeded),
        other => panic!("{other:?}"),
    }

    // QoS 2 messages waiting for PUBREL: three, with a resend that does not count twice.
    for pkid in [10, 11, 11, 12] {
        let mut p = Publish::new("t/q2", QoS::ExactlyOnce, Bytes::from_static(b"x"), None);
        p.pkid = pkid;
        client.send(Packet::Publish(p)).await;
        match client.recv().await {
            Some(Packet::PubRec(rec)) => assert_eq!(rec.reason, PubRecReason::Success),
            other => panic!("{other:?}"),
        }
    }
    let mut p = Publish::new("t/q2", QoS::ExactlyOnce, Bytes::from_static(b"x"), None);
    p.pkid = 13;
    client.send(Packet::Publish(p)).await;
    match client.recv().await {
        Some(Packet::PubRec(rec)) => assert_eq!(rec.reason, PubRecReason::QuotaExceeded),
        other => panic!("{other:?}"),
    }
    assert!(client.is_alive().await);
    assert_eq!(broker.counter(LIMITS, "limit", "topic_levels"), 1);
    assert_eq!(broker.counter(LIMITS, "limit", "user_properties"), 1);
    assert_eq!(broker.counter(LIMITS, "limit", "awaiting_pubrel"), 1);
}

#[tokio::test]
async fn connect_limits_get_reason_codes() {
    let broker = start(|_| {}).await;
    let (_, ack) = Raw::connect(broker.addr, &"c".repeat(200), true, None).await;
    assert_eq!(ack.code, ConnectReturnCode::ClientIdentifierNotValid);

    // A CONNECT larger than the pre-authentication limit (16 KiB).
    let will = LastWill::new("w/big", vec![0u8; 20_000], QoS::AtMostOnce, false, None);
    let (_, ack) = Raw::connect(broker.addr, "big-will", true, Some(will)).await;
    assert_eq!(ack.code, ConnectReturnCode::PacketTooLarge);

    let props = will_properties(None, 40);
    let will = LastWill::new("w/props", "x", QoS::AtMostOnce, false, Some(props));
    let (_, ack) = Raw::connect(broker.addr, "props-will", true, Some(will)).await;
    assert_eq!(ack.code, ConnectReturnCode::QuotaExceeded);

    assert_eq!(broker.counter(LIMITS, "limit", "client_id_length"), 1);
    assert_eq!(broker.counter(LIMITS, "limit", "connect_packet_size"), 1);
    assert_eq!(broker.counter(LIMITS, "limit", "user_properties"), 1);
    let (mut fine, ack) = Raw::connect(broker.addr, "fine", true, None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(fine.is_alive().await);
}

#[tokio::test]
async fn retained_messages_are_capped_and_off_in_device_mode() {
    let broker = start(|c| c.limits.max_retained_messages = 2).await;
    let (mut publisher, _) = Raw::connect(broker.addr, "retainer", true, None).await;
    for (i, topic) in ["r/1", "r/2", "r/3"].iter().enumerate() {
        publisher
            .publish(topic, b"kept?", QoS::AtLeastOnce, true, i as u16 + 1)
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let (mut late, _) = Raw::connect(broker.addr, "late", true, None).await;
    late.subscribe("r/#", QoS::AtMostOnce).await;
    let mut got = Vec::new();
    while let Some(Packet::Publish(p)) = late.recv_within(Duration::from_millis(500)).await {
        got.push(p.topic);
    }
    assert_eq!(got, vec![Bytes::from("r/1"), Bytes::from("r/2")]);
    assert_eq!(broker.counter(LIMITS, "limit", "retained_messages"), 1);

    let device_broker = start(device_mode).await;
    let (_, ack) = Raw::connect_as(
        device_broker.addr,
        "dev-r",
        true,
        None,
        Some(device_login("dev-r")),
    )
    .await;
    assert_eq!(ack.properties.and_then(|p| p.retain_available), Some(0));
}

#[tokio::test]
async fn a_delayed_will_is_cancelled_by_reconnecting_and_bounded_in_total() {
    let broker = start(|c| c.limits.max_delayed_wills = 1).await;
    let (mut watcher, _) = Raw::connect(broker.addr, "watcher", true, None).await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let will = |topic: &str| {
        let props = will_properties(Some(1), 0);
        LastWill::new(topic, "gone", QoS::AtMostOnce, false, Some(props))
    };
    // Two clients drop their connections; only one will fits the delayed set,
    // so the other is published at once.
    let (a, _) = Raw::connect(broker.addr, "will-a", false, Some(will("wills/a"))).await;
    let (b, _) = Raw::connect(broker.addr, "will-b", false, Some(will("wills/b"))).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(b);
    match watcher.recv_within(Duration::from_millis(500)).await {
        Some(Packet::Publish(p)) => assert_eq!(p.topic, Bytes::from("wills/b")),
        other => panic!("the will over the bound goes out at once, got {other:?}"),
    }
    assert_eq!(broker.counter(LIMITS, "limit", "delayed_wills"), 1);
    // will-a comes back before its delay: its will is never published.
    let (_a_again, ack) = Raw::connect(broker.addr, "will-a", false, None).await;
    assert!(ack.session_present);
    assert!(
        watcher
            .recv_within(Duration::from_millis(1500))
            .await
            .is_none(),
        "a cancelled will is not published"
    );
}

/// An MQTT 3.1.1 client has no reason codes: over a limit it gets SUBACK
/// failure (0x80) or its connection closed, and the node goes on.
#[tokio::test]
async fn mqtt_311_clients_get_a_failure_or_a_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = start(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    use rumqttc::mqttbytes::{v4, QoS as V4QoS};
    let mut out = bytes::BytesMut::new();
    v4::Connect::new("old-timer").write(&mut out).unwrap();
    let deep = format!("t/{}#", "l/".repeat(40));
    let mut subscribe = v4::Subscribe::new(deep, V4QoS::AtLeastOnce);
    subscribe.pkid = 1;
    subscribe.write(&mut out).unwrap();
    let mut publish = v4::Publish::new(format!("t/{}x", "l/".repeat(40)), V4QoS::AtLeastOnce, "x");
    publish.pkid = 2;
    publish.write(&mut out).unwrap();
    stream.write_all(&out).await.unwrap();

    // Read what the server sends with rumqttc's 3.1.1 decoder.
    let mut buf = bytes::BytesMut::new();
    let mut got = Vec::new();
    let closed = loop {
        while let Ok(packet) = v4::Packet::read(&mut buf, 1 << 16) {
            got.push(packet);
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    assert!(
        matches!(got.first(), Some(v4::Packet::ConnAck(a)) if a.code == v4::ConnectReturnCode::Success)
    );
    match got.get(1) {
        Some(v4::Packet::SubAck(ack)) => {
            assert_eq!(ack.return_codes, vec![v4::SubscribeReasonCode::Failure])
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(got.len(), 2, "no PUBACK for the publish over the limit");
    assert!(
        closed,
        "the 3.1.1 publish over the limit closes the connection"
    );
    assert_eq!(broker.counter(LIMITS, "limit", "topic_levels"), 2);
    assert_eq!(
        broker.counter("herald_disconnects_total", "reason", "limit_exceeded"),
        1
    );
    let (mut other, _) = Raw::connect(broker.addr, "still-served", true, None).await;
    assert!(other.is_alive().await);
}
