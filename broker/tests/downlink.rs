//! Downlinks into a running broker: delivered to the subscribed device and
//! settled by its PUBACK, held until the device subscribes, expired, refused.

use bytes::{Bytes, BytesMut};
use herald_broker::codec::{self, *};
use herald_broker::{
    AuthMode, Broker, BrokerConfig, BrokerHooks, DeliveryOutcome, DisconnectReason, Downlink,
    DownlinkRefusal, SessionEvents,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

impl SessionEvents for Recorded {
    fn connected(&self, client_id: &str, generation: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{client_id} up {generation}"));
    }
    fn disconnected(&self, client_id: &str, generation: u64, reason: DisconnectReason) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{client_id} down {generation} {reason:?}"));
    }
}

async fn start(events: Arc<Recorded>) -> (Broker, CancellationToken) {
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.auth.mode = AuthMode::Open;
    let shutdown = CancellationToken::new();
    let hooks = BrokerHooks {
        session_events: events,
        ..Default::default()
    };
    let broker = Broker::start(
        config,
        hooks,
        &prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (broker, shutdown)
}

struct Device {
    stream: TcpStream,
    buf: BytesMut,
}

impl Device {
    async fn connect(broker: &Broker, id: &str, clean: bool) -> Device {
        let mut device = Device {
            stream: TcpStream::connect(broker.local_addr()).await.unwrap(),
            buf: BytesMut::new(),
        };
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(if clean { 0 } else { 600 });
        device
            .send(Packet::Connect(
                Connect {
                    keep_alive: 60,
                    client_id: id.into(),
                    clean_start: clean,
                    properties: Some(props),
                },
                None,
                None,
            ))
            .await;
        assert!(matches!(device.recv().await, Some(Packet::ConnAck(_))));
        device
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            if let Ok(Some(p)) = codec::read(ProtocolVersion::V5, &mut self.buf, 1 << 20) {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        let mut subscribe = Subscribe::new(Filter::new(filter, QoS::AtLeastOnce), None);
        subscribe.pkid = 1;
        self.send(Packet::Subscribe(subscribe)).await;
        assert!(matches!(self.recv().await, Some(Packet::SubAck(_))));
    }
}

fn downlink(device: &str, body: &'static [u8], ttl: Option<Duration>) -> Downlink {
    Downlink {
        device_id: device.into(),
        topic: format!("devices/{device}/down/announce"),
        payload: Bytes::from_static(body),
        expires_at: ttl.map(|ttl| SystemTime::now() + ttl),
        user_properties: Vec::new(),
    }
}

#[tokio::test]
async fn ticket_settles_only_on_the_devices_puback() {
    let (broker, shutdown) = start(Arc::default()).await;
    let mut device = Device::connect(&broker, "spk-1", true).await;
    device.subscribe("devices/spk-1/down/#").await;
    let mut ticket = broker.handle().deliver(downlink("spk-1", b"12.50", None));
    let Some(Packet::Publish(publish)) = device.recv().await else {
        panic!("no PUBLISH")
    };
    assert_eq!(&publish.payload[..], b"12.50");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut ticket)
            .await
            .is_err(),
        "not before PUBACK"
    );
    device
        .send(Packet::PubAck(PubAck::new(publish.pkid, None)))
        .await;
    assert_eq!(ticket.await, Some(DeliveryOutcome::Acknowledged));
    shutdown.cancel();
}

#[tokio::test]
async fn waits_for_the_subscription_in_order_and_expires() {
    let (broker, shutdown) = start(Arc::default()).await;
    let handle = broker.handle();
    let first = handle.deliver(downlink("spk-2", b"one", None));
    let second = handle.deliver(downlink("spk-2", b"two", None));
    let late = handle.deliver(downlink("spk-2", b"late", Some(Duration::from_millis(200))));
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut device = Device::connect(&broker, "spk-2", false).await;
    device.subscribe("devices/spk-2/down/#").await;
    for expected in [&b"one"[..], b"two"] {
        let Some(Packet::Publish(p)) = device.recv().await else {
            panic!()
        };
        assert_eq!(&p.payload[..], expected);
        device.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
    }
    assert_eq!(first.await, Some(DeliveryOutcome::Acknowledged));
    assert_eq!(second.await, Some(DeliveryOutcome::Acknowledged));
    assert_eq!(
        late.await,
        Some(DeliveryOutcome::Expired),
        "past its expiry: not sent"
    );
    assert!(device.recv().await.is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn refusals_settle_at_once() {
    let (broker, shutdown) = start(Arc::default()).await;
    let handle = broker.handle();
    assert_eq!(
        handle.deliver(downlink("bad/id", b"x", None)).await,
        Some(DeliveryOutcome::Refused(DownlinkRefusal::InvalidDeviceId))
    );
    let mut wrong_topic = downlink("spk-3", b"x", None);
    wrong_topic.topic = "devices/spk-4/down/announce".into();
    assert_eq!(
        handle.deliver(wrong_topic).await,
        Some(DeliveryOutcome::Refused(
            DownlinkRefusal::TopicOutsideNamespace
        ))
    );
    shutdown.cancel();
}

#[tokio::test]
async fn session_events_report_takeover_before_the_new_connection() {
    let events = Arc::new(Recorded::default());
    let (broker, shutdown) = start(events.clone()).await;
    let first = Device::connect(&broker, "spk-5", false).await;
    let _second = Device::connect(&broker, "spk-5", false).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = events.0.lock().unwrap().clone();
    let gens: Vec<&str> = log.iter().map(|l| l.as_str()).collect();
    assert_eq!(gens.len(), 3, "{gens:?}");
    assert!(gens[0].starts_with("spk-5 up "));
    assert!(
        gens[1].starts_with("spk-5 down ") && gens[1].ends_with("Takeover"),
        "{gens:?}"
    );
    assert!(gens[2].starts_with("spk-5 up "));
    shutdown.cancel();
}
