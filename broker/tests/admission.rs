//! Admission control under a reconnect storm: 1,000 devices flapping at once
//! meet the listener's connect-rate token bucket and the flapping ban, while
//! a well-behaved device's uplinks keep flowing.

mod common;

use bytes::BytesMut;
use common::*;
use herald_broker::codec::*;
use herald_broker::{BrokerHooks, Uplink, UplinkAck, UplinkSink};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A sink that takes every device uplink at once and counts it.
#[derive(Default)]
struct Counting(AtomicU64);

impl UplinkSink for Counting {
    fn wants(&self, topic: &str) -> bool {
        topic.contains("/up/")
    }
    fn submit(&self, _uplink: Uplink) -> Option<UplinkAck> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Some(Box::pin(async { Ok(()) }))
    }
}

/// Connects as `device`, returns the CONNACK code and drops the connection.
async fn flap_once(addr: std::net::SocketAddr, device: &str) -> Option<ConnectReturnCode> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut out = BytesMut::new();
    let connect = Connect {
        keep_alive: 30,
        client_id: device.into(),
        clean_start: true,
        properties: None,
    };
    Packet::Connect(connect, None, Some(device_login(device)))
        .write(&mut out, None)
        .ok()?;
    stream.write_all(&out).await.ok()?;
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(Packet::ConnAck(ack))) = read(ProtocolVersion::V5, &mut buf, 1 << 16) {
            return Some(ack.code);
        }
        let mut chunk = [0u8; 256];
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_fleet_is_throttled_and_banned_while_a_steady_device_keeps_sending() {
    let sink = Arc::new(Counting::default());
    let hooks = BrokerHooks {
        uplinks: sink.clone(),
        ..BrokerHooks::default()
    };
    let broker = start_with(hooks, |c| {
        device_mode(c);
        c.admission.max_connect_rate = 500;
        c.admission.connect_burst = 500;
        c.admission.flapping_max_connects = 3;
        c.admission.flapping_window = Duration::from_secs(60);
        c.admission.flapping_ban = Duration::from_secs(60);
    })
    .await;
    let addr = broker.addr;

    let (mut steady, ack) =
        Raw::connect_as(addr, "steady-1", true, None, Some(device_login("steady-1"))).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);

    // 1,000 devices, each reconnecting 6 times, 5 times a second.
    let storm = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..1000 {
            tasks.push(tokio::spawn(async move {
                let device = format!("flapper-{i}");
                let mut codes = Vec::new();
                for _ in 0..6 {
                    codes.push(flap_once(addr, &device).await);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                codes
            }));
        }
        let mut codes = Vec::new();
        for task in tasks {
            codes.extend(task.await.unwrap());
        }
        codes
    });

    // Meanwhile the steady device sends QoS 1 uplinks; every one is acknowledged.
    let started = Instant::now();
    let mut sent = 0u16;
    while !storm.is_finished() || sent < 20 {
        sent += 1;
        steady
            .publish(
                "devices/steady-1/up/scan",
                b"ok",
                QoS::AtLeastOnce,
                false,
                sent,
            )
            .await;
        match steady.recv().await {
            Some(Packet::PubAck(ack)) => {
                assert_eq!((ack.pkid, ack.reason), (sent, PubAckReason::Success))
            }
            other => panic!("uplink {sent} not acknowledged during the storm: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "storm did not end"
        );
    }
    let codes = storm.await.unwrap();
    let count = |code| codes.iter().filter(|c| **c == Some(code)).count();
    let (accepted, rate_limited, banned) = (
        count(ConnectReturnCode::Success),
        count(ConnectReturnCode::ConnectionRateExceeded),
        count(ConnectReturnCode::Banned),
    );
    println!(
        "storm: {} connects, {accepted} accepted, {rate_limited} rate limited, {banned} banned; \
         steady device: {sent} uplinks acknowledged",
        codes.len()
    );
    assert!(rate_limited > 0, "the token bucket refused some connects");
    assert!(banned > 0, "flapping devices were banned");
    assert!(
        accepted <= 1000 * 3,
        "no device got more than 3 connects through"
    );
    assert_eq!(sink.0.load(Ordering::Relaxed), u64::from(sent));
    assert!(broker.counter("herald_connects_total", "result", "rate_limited") > 0);
    assert!(broker.counter("herald_limits_exceeded_total", "limit", "flapping") > 0);
    assert!(steady.is_alive().await);
}
