//! Overload and shutdown over real TCP: a full subscriber queue slows its
//! publishers down instead of dropping what they were told was accepted; a
//! subscriber that stalls is disconnected with its session kept; a drain
//! closes every connection with DISCONNECT 0x8B and refuses new ones.

mod common;

use common::*;
use herald_broker::codec::*;
use herald_broker::QueueFullPolicy;
use std::time::Duration;

/// Publishes `count` QoS 1 messages numbered from 1 without waiting.
async fn publish_burst(publisher: &mut Raw, count: u16) {
    for pkid in 1..=count {
        let payload: &'static [u8] = Box::leak(pkid.to_string().into_boxed_str()).as_bytes();
        publisher
            .publish("load/t", payload, QoS::AtLeastOnce, false, pkid)
            .await;
    }
}

/// PUBACKs that arrive within `wait`.
async fn pubacks_within(client: &mut Raw, wait: Duration) -> Vec<u16> {
    let mut acked = Vec::new();
    while let Some(packet) = client.recv_within(wait).await {
        if let Packet::PubAck(ack) = packet {
            acked.push(ack.pkid);
        }
    }
    acked
}

#[tokio::test]
async fn a_full_queue_slows_the_publisher_and_drops_nothing() {
    let broker = start(|c| {
        c.max_queued_messages = 5;
        c.max_inflight_downlinks = 2;
    })
    .await;
    let (mut subscriber, _) = Raw::connect(broker.addr, "sub", true, None).await;
    subscriber.subscribe("load/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::connect(broker.addr, "pub", true, None).await;

    // The subscriber takes 2 in flight and queues 5; the rest fill its queue
    // beyond the limit, so their PUBACKs wait.
    publish_burst(&mut publisher, 20).await;
    let early = pubacks_within(&mut publisher, Duration::from_millis(500)).await;
    assert!(
        early.len() < 20,
        "the publisher must be held back, got {} PUBACKs",
        early.len()
    );

    // The subscriber now reads and acknowledges: every message arrives, in order.
    let mut received = Vec::new();
    while received.len() < 20 {
        let publish = subscriber.expect_publish().await;
        subscriber
            .send(Packet::PubAck(PubAck::new(publish.pkid, None)))
            .await;
        received.push(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
    let expected: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(received, expected, "nothing acknowledged was dropped");
    let late = pubacks_within(&mut publisher, Duration::from_millis(500)).await;
    assert_eq!(
        early.len() + late.len(),
        20,
        "every publish acknowledged once"
    );
    assert_eq!(
        broker.counter("herald_messages_dropped_total", "reason", "queue_full"),
        0
    );
}

#[tokio::test]
async fn a_stalled_subscriber_is_disconnected_and_keeps_its_messages() {
    let broker = start(|c| {
        c.max_queued_messages = 3;
        c.max_inflight_downlinks = 1;
        c.slow_subscriber_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut subscriber, _) = Raw::connect(broker.addr, "stalled", false, None).await;
    subscriber.subscribe("load/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::connect(broker.addr, "pub", true, None).await;
    publish_burst(&mut publisher, 8).await;

    // The subscriber never acknowledges: it is told why and closed.
    let disconnect = loop {
        match subscriber.recv_within(Duration::from_secs(3)).await {
            Some(Packet::Disconnect(d)) => break d,
            Some(_) => continue,
            None => panic!("the stalled subscriber was not disconnected"),
        }
    };
    assert_eq!(disconnect.reason_code, DisconnectReasonCode::QuotaExceeded);
    assert_eq!(
        broker.counter("herald_disconnects_total", "reason", "slow_subscriber"),
        1
    );
    // Its publisher goes on: all 8 acknowledged once the subscriber is away.
    let acked = pubacks_within(&mut publisher, Duration::from_millis(500)).await;
    assert_eq!(acked.len(), 8);

    // Nothing acknowledged was lost: the session kept every message.
    let (mut back, ack) = Raw::connect(broker.addr, "stalled", false, None).await;
    assert!(ack.session_present);
    let mut payloads = std::collections::BTreeSet::new();
    while payloads.len() < 8 {
        let publish = back.expect_publish().await;
        back.send(Packet::PubAck(PubAck::new(publish.pkid, None)))
            .await;
        payloads.insert(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
}

#[tokio::test]
async fn drop_oldest_remains_an_explicit_policy() {
    let broker = start(|c| {
        c.max_queued_messages = 3;
        c.max_inflight_downlinks = 1;
        c.queue_full_policy = QueueFullPolicy::DropOldest;
    })
    .await;
    let (mut subscriber, _) = Raw::connect(broker.addr, "sub", true, None).await;
    subscriber.subscribe("load/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::connect(broker.addr, "pub", true, None).await;
    publish_burst(&mut publisher, 10).await;
    let acked = pubacks_within(&mut publisher, Duration::from_millis(500)).await;
    assert_eq!(
        acked.len(),
        10,
        "drop_oldest never holds the publisher back"
    );
    assert!(broker.counter("herald_messages_dropped_total", "reason", "queue_full") > 0);
}

#[tokio::test]
async fn a_drain_closes_every_connection_with_server_shutting_down() {
    let broker = start(|c| {
        c.drain_period = Duration::from_millis(500);
        c.server_reference = Some("mqtt-2.example:1883".into());
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let will = LastWill::new("wills/x", "gone", QoS::AtLeastOnce, false, None);
        let (client, _) = Raw::connect(broker.addr, &format!("c{i}"), true, Some(will)).await;
        clients.push(client);
    }
    let (mut observer, _) = Raw::connect(broker.addr, "observer", true, None).await;
    observer.subscribe("wills/#", QoS::AtLeastOnce).await;

    broker.broker.as_ref().unwrap().drain_trigger().cancel();
    for client in &mut clients {
        match client.recv_within(Duration::from_secs(3)).await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::ServerShuttingDown);
                let reference = d.properties.and_then(|p| p.server_reference);
                assert_eq!(reference.as_deref(), Some("mqtt-2.example:1883"));
            }
            other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
        }
    }
    // No will went out for a server-initiated shutdown.
    loop {
        match observer.recv_within(Duration::from_secs(3)).await {
            Some(Packet::Publish(p)) => panic!("will published on shutdown: {p:?}"),
            Some(Packet::Disconnect(_)) | None => break,
            Some(_) => {}
        }
    }
    // New connections are refused.
    let refused = tokio::net::TcpStream::connect(broker.addr).await;
    assert!(refused.is_err(), "the listener is closed while draining");
    // And the drain ends as soon as the connections are gone, well within
    // drain_period + shutdown_grace (10.5 s here).
    let mut broker = broker;
    let drained =
        tokio::time::timeout(Duration::from_secs(3), broker.broker.take().unwrap().wait());
    assert!(
        drained.await.is_ok(),
        "the drain finished once every connection closed"
    );
}
