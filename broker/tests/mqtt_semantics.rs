//! MQTT behaviour of the broker core over real TCP, with no Kafka behind it
//! (the sink is `LocalOnly`): sessions, takeover, wills, retained messages,
//! limits and bad input.

mod common;

use bytes::Bytes;
use common::*;
use herald_broker::codec::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn qos1_publish_reaches_subscriber_and_is_acknowledged() {
    let broker = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(broker.addr, "sub", true, None).await;
    assert_eq!(
        sub.subscribe("t/+", QoS::AtLeastOnce).await.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let (mut publisher, _) = Raw::connect(broker.addr, "pub", true, None).await;
    publisher
        .publish("t/1", b"hello", QoS::AtLeastOnce, false, 9)
        .await;
    match publisher.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 9),
        other => panic!("{other:?}"),
    }
    let got = sub.expect_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..], got.qos, got.retain),
        (&b"t/1"[..], &b"hello"[..], QoS::AtLeastOnce, false)
    );
    sub.send(Packet::PubAck(PubAck::new(got.pkid, None))).await;
}

#[tokio::test]
async fn qos2_exchange_delivers_once() {
    let broker = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(broker.addr, "sub2", true, None).await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let (mut publisher, _) = Raw::connect(broker.addr, "pub2", true, None).await;
    publisher
        .publish("q2", b"x", QoS::ExactlyOnce, false, 5)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(r)) if r.pkid == 5));
    // A retransmission before PUBREL must not be delivered again.
    let mut dup = Publish::new("q2", QoS::ExactlyOnce, Bytes::from_static(b"x"), None);
    dup.pkid = 5;
    dup.dup = true;
    publisher.send(Packet::Publish(dup)).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(r)) if r.pkid == 5));
    publisher.send(Packet::PubRel(PubRel::new(5, None))).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubComp(c)) if c.pkid == 5));

    let got = sub.expect_publish().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.send(Packet::PubRec(PubRec::new(got.pkid, None))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.pkid == got.pkid));
    sub.send(Packet::PubComp(PubComp::new(got.pkid, None)))
        .await;
    assert!(
        sub.recv_within(Duration::from_millis(300)).await.is_none(),
        "delivered exactly once"
    );
}

#[tokio::test]
async fn retained_message_goes_to_later_subscribers_and_can_be_cleared() {
    let broker = start(|_| {}).await;
    let (mut publisher, _) = Raw::connect(broker.addr, "p", true, None).await;
    publisher
        .publish("status/printer-1", b"online", QoS::AtLeastOnce, true, 1)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));

    let (mut sub, _) = Raw::connect(broker.addr, "s", true, None).await;
    sub.subscribe("status/#", QoS::AtLeastOnce).await;
    let got = sub.expect_publish().await;
    assert!(got.retain, "retained messages are sent with RETAIN set");
    assert_eq!(&got.payload[..], b"online");

    publisher
        .publish("status/printer-1", b"", QoS::AtLeastOnce, true, 2)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    let (mut late, _) = Raw::connect(broker.addr, "late", true, None).await;
    late.subscribe("status/#", QoS::AtLeastOnce).await;
    assert!(
        late.recv_within(Duration::from_millis(300)).await.is_none(),
        "an empty retained payload clears it"
    );
}

fn will(topic: &str) -> LastWill {
    LastWill {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        message: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
    }
}

#[tokio::test]
async fn will_is_published_on_abrupt_close_but_not_on_disconnect() {
    let broker = start(|_| {}).await;
    let (mut watcher, _) = Raw::connect(broker.addr, "watcher", true, None).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let (dying, _) = Raw::connect(broker.addr, "dying", true, Some(will("wills/dying"))).await;
    drop(dying); // TCP close without DISCONNECT
    let got = watcher.expect_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"wills/dying"[..], &b"gone"[..])
    );

    let (mut polite, _) =
        Raw::connect(broker.addr, "polite", true, Some(will("wills/polite"))).await;
    polite
        .send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
    assert!(
        watcher
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "no will after DISCONNECT"
    );
}

#[tokio::test]
async fn newest_connection_takes_over_the_session() {
    let broker = start(|_| {}).await;
    let (mut first, _) = Raw::connect(broker.addr, "dev", false, None).await;
    first.subscribe("dev/down", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect(broker.addr, "dev", false, None).await;
    assert!(ack.session_present, "the persistent session is resumed");
    match first.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::SessionTakenOver)
        }
        other => panic!("old connection should get DISCONNECT 0x8E, got {other:?}"),
    }
    assert!(first.recv().await.is_none(), "and be closed");

    // The subscription moved with the session.
    let (mut publisher, _) = Raw::connect(broker.addr, "pubber", true, None).await;
    publisher
        .publish("dev/down", b"cmd", QoS::AtLeastOnce, false, 3)
        .await;
    assert_eq!(&second.expect_publish().await.payload[..], b"cmd");
}

#[tokio::test]
async fn connect_burst_for_one_client_id_leaves_exactly_one_session() {
    let broker = start(|_| {}).await;
    let mut clients = Vec::new();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let addr = broker.addr;
            tokio::spawn(async move { Raw::connect(addr, "burst", false, None).await.0 })
        })
        .collect();
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    // Every loser is told and closed; one connection remains.
    let mut alive = 0;
    for client in &mut clients {
        loop {
            match client.recv_within(Duration::from_millis(500)).await {
                Some(Packet::Disconnect(_)) => continue,
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        client.send_raw(&[0xC0, 0x00]).await; // PINGREQ
        if matches!(
            client.recv_within(Duration::from_millis(500)).await,
            Some(Packet::PingResp(_))
        ) {
            alive += 1;
        }
    }
    assert_eq!(alive, 1);
    assert_eq!(broker.broker.as_ref().unwrap().connection_count(), 1);
}

#[tokio::test]
async fn offline_persistent_session_receives_queued_messages() {
    let broker = start(|_| {}).await;
    let (mut dev, _) = Raw::connect(broker.addr, "speaker-9", false, None).await;
    dev.subscribe("speaker-9/down", QoS::AtLeastOnce).await;
    dev.send(Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut publisher, _) = Raw::connect(broker.addr, "backend", true, None).await;
    publisher
        .publish("speaker-9/down", b"one", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("speaker-9/down", b"two", QoS::AtLeastOnce, false, 2)
        .await;
    let (mut dev, ack) = Raw::connect(broker.addr, "speaker-9", false, None).await;
    assert!(ack.session_present);
    assert_eq!(&dev.expect_publish().await.payload[..], b"one");
    assert_eq!(&dev.expect_publish().await.payload[..], b"two");
}

#[tokio::test]
async fn malformed_packet_closes_only_that_connection() {
    let broker = start(|_| {}).await;
    let (mut healthy, _) = Raw::connect(broker.addr, "healthy", true, None).await;
    healthy.subscribe("h", QoS::AtMostOnce).await;
    let (mut bad, _) = Raw::connect(broker.addr, "bad", true, None).await;
    bad.send_raw(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await; // remaining length too long
    let mut closed = false;
    for _ in 0..3 {
        match bad.recv().await {
            None => {
                closed = true;
                break;
            }
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::ProtocolError)
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    assert!(closed);
    let (mut publisher, _) = Raw::connect(broker.addr, "still-fine", true, None).await;
    publisher
        .publish("h", b"ok", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&healthy.expect_publish().await.payload[..], b"ok");
}

#[tokio::test]
async fn oversized_packet_gets_packet_too_large() {
    let broker = start(|c| c.max_packet_size = 1024).await;
    let (mut client, ack) = Raw::connect(broker.addr, "big", true, None).await;
    assert_eq!(ack.properties.and_then(|p| p.max_packet_size), Some(1024));
    let mut p = Publish::new("t", QoS::AtMostOnce, Bytes::from(vec![0u8; 4096]), None);
    p.pkid = 0;
    client.send(Packet::Publish(p)).await;
    match client.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::PacketTooLarge)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connection_limit_answers_server_unavailable() {
    let broker = start(|c| c.max_connections = Some(2)).await;
    let (_a, _) = Raw::connect(broker.addr, "a", true, None).await;
    let (_b, _) = Raw::connect(broker.addr, "b", true, None).await;
    let (_c, ack) = Raw::connect(broker.addr, "c", true, None).await;
    assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable);
}

#[tokio::test]
async fn garbage_instead_of_connect_and_old_protocols_are_refused() {
    let broker = start(|_| {}).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(raw.recv().await.is_none(), "closed without a reply");

    let mut old = Raw::open(broker.addr).await;
    old.send_raw(b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04abcd")
        .await;
    let mut reply = [0u8; 4];
    old.stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        reply,
        [0x20, 0x02, 0x00, 0x01],
        "3.1.1 CONNACK 'unacceptable protocol version'"
    );
}

#[tokio::test]
async fn keepalive_timeout_closes_silent_clients() {
    let broker = start(|_| {}).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(Packet::Connect(
        Connect {
            keep_alive: 1,
            client_id: "sleepy".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
    match raw.recv_within(Duration::from_secs(4)).await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::KeepAliveTimeout)
        }
        other => panic!("{other:?}"),
    }
}
