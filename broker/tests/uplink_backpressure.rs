//! The PUBACK waits for the sink, and uplinks waiting for it are bounded per
//! connection and across connections, so a stalled Kafka slows devices down
//! instead of growing memory.

use bytes::{Bytes, BytesMut};
use herald_broker::codec::*;
use herald_broker::{
    AuthMode, Broker, BrokerConfig, BrokerHooks, Uplink, UplinkAck, UplinkError, UplinkSink,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A sink that completes uplinks only when the test says so.
#[derive(Default)]
struct HeldSink {
    waiting: Mutex<Vec<oneshot::Sender<Result<(), UplinkError>>>>,
}

impl UplinkSink for HeldSink {
    fn wants(&self, topic: &str) -> bool {
        topic.starts_with("up/")
    }
    fn submit(&self, _uplink: Uplink) -> Option<UplinkAck> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().push(tx);
        Some(Box::pin(async move {
            rx.await
                .unwrap_or(Err(UplinkError::Failed("dropped".into())))
        }))
    }
}

impl HeldSink {
    fn submitted(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }
    fn complete_all(&self, result: Result<(), UplinkError>) {
        for tx in self.waiting.lock().unwrap().drain(..) {
            let _ = tx.send(result.clone());
        }
    }
}

async fn client(addr: std::net::SocketAddr, id: &str) -> (TcpStream, BytesMut) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    Packet::Connect(
        Connect {
            keep_alive: 60,
            client_id: id.into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
    .write(&mut out, None)
    .unwrap();
    for pkid in 1..=5u16 {
        let mut p = Publish::new("up/scan", QoS::AtLeastOnce, Bytes::from_static(b"x"), None);
        p.pkid = pkid;
        Packet::Publish(p).write(&mut out, None).unwrap();
    }
    stream.write_all(&out).await.unwrap();
    (stream, BytesMut::new())
}

async fn packets_within(stream: &mut TcpStream, buf: &mut BytesMut, wait: Duration) -> Vec<Packet> {
    let mut packets = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while let Ok(Some(p)) = herald_broker::codec::read(ProtocolVersion::V5, buf, 1 << 20) {
            packets.push(p);
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return packets,
        }
    }
}

#[tokio::test]
async fn pubacks_wait_for_the_sink_within_global_and_per_connection_bounds() {
    let sink = Arc::new(HeldSink::default());
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.auth.mode = AuthMode::Open;
    config.max_inflight_uplinks = 2;
    config.max_inflight_uplinks_total = 3;
    let shutdown = CancellationToken::new();
    let broker = Broker::start(
        config,
        BrokerHooks {
            uplinks: sink.clone(),
            ..Default::default()
        },
        &prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let (mut a, mut abuf) = client(broker.local_addr(), "a").await;
    let (mut b, mut bbuf) = client(broker.local_addr(), "b").await;
    let early_a = packets_within(&mut a, &mut abuf, Duration::from_millis(500)).await;
    let early_b = packets_within(&mut b, &mut bbuf, Duration::from_millis(500)).await;
    assert_eq!(
        sink.submitted(),
        3,
        "global bound: 3 uplinks in flight, the rest unread"
    );
    let acks = |ps: &[Packet]| ps.iter().filter(|p| matches!(p, Packet::PubAck(_))).count();
    assert_eq!(
        acks(&early_a) + acks(&early_b),
        0,
        "no PUBACK before the sink acknowledges"
    );

    // Completing lets the rest in, two per connection at a time.
    let mut acked = 0;
    for _ in 0..10 {
        sink.complete_all(Ok(()));
        acked += acks(&packets_within(&mut a, &mut abuf, Duration::from_millis(200)).await);
        acked += acks(&packets_within(&mut b, &mut bbuf, Duration::from_millis(200)).await);
        if acked == 10 {
            break;
        }
    }
    assert_eq!(
        acked, 10,
        "every publish acknowledged once the sink confirmed it"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_failed_delivery_is_never_acknowledged_as_success() {
    let sink = Arc::new(HeldSink::default());
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.auth.mode = AuthMode::Open;
    let shutdown = CancellationToken::new();
    let broker = Broker::start(
        config,
        BrokerHooks {
            uplinks: sink.clone(),
            ..Default::default()
        },
        &prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (mut a, mut abuf) = client(broker.local_addr(), "a").await;
    packets_within(&mut a, &mut abuf, Duration::from_millis(300)).await;
    sink.complete_all(Err(UplinkError::Timeout("kafka down".into())));
    let packets = packets_within(&mut a, &mut abuf, Duration::from_millis(500)).await;
    let reasons: Vec<PubAckReason> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![PubAckReason::UnspecifiedError; 5],
        "MQTT 5 clients get a failure reason code"
    );
    shutdown.cancel();
}
