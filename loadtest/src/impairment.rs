//! Impaired clients for the fault scenarios (issue #8, item 2.7): a device
//! that stops reading its socket after it subscribed (stalled), and one that
//! acknowledges each message only some time after it arrived (slow).
//!
//! A stalled client keeps its TCP connection open and keeps sending
//! PINGREQ (its reader hangs, not its keepalive), so that only the broker's
//! handling of a subscriber that makes no progress can end the connection.
//! Whether the broker closed it is seen on the socket without reading, and
//! confirmed by reading what is left once the run is over.

use crate::client::Connection;
use rumqttc::mqttbytes::v4::{Packet, SubscribeReasonCode};
use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

/// How one client of a run misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impairment {
    Healthy,
    /// Subscribes, then never reads from the socket again.
    Stalled,
    /// Sends each PUBACK (PUBREC) this long after its PUBLISH arrived.
    Slow(Duration),
}

/// Which clients of a run are impaired: indices `0..stalled` stall, the next
/// `slow` are slow, the rest are healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairments {
    pub stalled: u32,
    pub slow: u32,
    pub slow_ack: Duration,
}

impl Impairments {
    pub fn of(&self, index: u32) -> Impairment {
        if index < self.stalled {
            Impairment::Stalled
        } else if index - self.stalled < self.slow {
            Impairment::Slow(self.slow_ack)
        } else {
            Impairment::Healthy
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stalled == 0 && self.slow == 0
    }

    /// Impaired clients in all.
    pub fn count(&self) -> u32 {
        self.stalled.saturating_add(self.slow)
    }
}

/// Acknowledgements held back: each is due `delay` after its PUBLISH
/// arrived, and goes out in arrival order.
#[derive(Debug)]
pub struct DelayedAcks {
    delay: Duration,
    queue: VecDeque<(Instant, Packet)>,
}

impl DelayedAcks {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            queue: VecDeque::new(),
        }
    }

    /// Holds `ack` for a PUBLISH that arrived at `arrived`.
    pub fn hold(&mut self, arrived: Instant, ack: Packet) {
        self.queue.push_back((arrived + self.delay, ack));
    }

    /// When the next acknowledgement is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// The acknowledgements due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Packet> {
        let due = self.queue.iter().take_while(|(at, _)| *at <= now).count();
        self.queue.drain(..due).map(|(_, ack)| ack).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What a stalled client saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    /// From the stall to when the client noticed that the broker closed the
    /// connection; `None` if it was still open at the end.
    pub closed_after: Option<Duration>,
    /// PUBLISHes found unread in the socket at the end.
    pub unread_publishes: u64,
}

/// Reads until the SUBACK of the subscription just sent, leaving anything
/// else unanswered (for a client about to stall); an error if the broker
/// refused the subscription or closed the connection.
pub async fn await_suback(connection: &mut Connection, timeout: Duration) -> anyhow::Result<()> {
    let wait = async {
        loop {
            if let Packet::SubAck(ack) = connection.recv().await? {
                anyhow::ensure!(
                    !ack.return_codes.contains(&SubscribeReasonCode::Failure),
                    "subscription refused"
                );
                return Ok(());
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow::anyhow!("no SUBACK within {timeout:?}"))?
}

/// What the stalled clients of a run saw, in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stalls {
    /// Connections the broker closed.
    pub disconnected: u64,
    /// For each of those, ms from the stall to the close (as noticed), ascending.
    pub disconnected_after_ms: Vec<u64>,
    pub unread_publishes: u64,
}

impl Stalls {
    pub fn of(stalls: impl IntoIterator<Item = Stall>) -> Self {
        let mut all = Stalls::default();
        for stall in stalls {
            all.unread_publishes += stall.unread_publishes;
            if let Some(after) = stall.closed_after {
                all.disconnected += 1;
                all.disconnected_after_ms.push(after.as_millis() as u64);
            }
        }
        all.disconnected_after_ms.sort_unstable();
        all
    }
}

/// How often a stalled client looks at its socket.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// The final read stops after this long without a byte (the broker keeps
/// the connection and has nothing more to send) ...
const FINAL_READ_IDLE: Duration = Duration::from_secs(1);
/// ... or after this long in all.
const FINAL_READ_MAX: Duration = Duration::from_secs(5);

/// Holds `connection` without reading from it until `stop` resolves or the
/// broker closes it, sending PINGREQ every half `keepalive`; then reads
/// what is left, to count what the broker had sent and to see the close.
pub async fn stall(
    connection: &mut Connection,
    keepalive: Duration,
    stop: impl Future<Output = ()>,
) -> Stall {
    let started = Instant::now();
    let ping_every = (keepalive / 2).max(Duration::from_secs(1));
    let mut next_ping = started + ping_every;
    let mut closed_after = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if connection.peer_closed().await {
            closed_after = Some(started.elapsed());
            break;
        }
        if Instant::now() >= next_ping {
            next_ping += ping_every;
            if connection.send(&Packet::PingReq).await.is_err() {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let mut unread_publishes = 0;
    let read_until = Instant::now() + FINAL_READ_MAX;
    loop {
        let left = read_until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(FINAL_READ_IDLE), connection.recv()).await {
            Ok(Ok(Packet::Publish(_))) => unread_publishes += 1,
            Ok(Ok(Packet::Disconnect)) | Ok(Err(_)) => {
                closed_after.get_or_insert_with(|| started.elapsed());
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => break, // still open, nothing more to read
        }
    }
    Stall {
        closed_after,
        unread_publishes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{encode, ConnectOptions};
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, PubAck, Publish};
    use rumqttc::mqttbytes::QoS;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn the_first_clients_stall_the_next_are_slow() {
        let impairments = Impairments {
            stalled: 2,
            slow: 1,
            slow_ack: Duration::from_millis(200),
        };
        let kinds: Vec<Impairment> = (0..5).map(|i| impairments.of(i)).collect();
        let slow = Impairment::Slow(Duration::from_millis(200));
        assert_eq!(
            kinds,
            [
                Impairment::Stalled,
                Impairment::Stalled,
                slow,
                Impairment::Healthy,
                Impairment::Healthy
            ]
        );
        assert_eq!(impairments.count(), 3);
        let stalls = Stalls::of([
            Stall {
                closed_after: Some(Duration::from_millis(900)),
                unread_publishes: 2,
            },
            Stall {
                closed_after: None,
                unread_publishes: 32,
            },
            Stall {
                closed_after: Some(Duration::from_millis(300)),
                unread_publishes: 0,
            },
        ]);
        assert_eq!(
            stalls,
            Stalls {
                disconnected: 2,
                disconnected_after_ms: vec![300, 900],
                unread_publishes: 34
            }
        );
        assert!(Impairments::default().is_empty());
        assert_eq!(Impairments::default().of(0), Impairment::Healthy);
    }

    #[test]
    fn delayed_acks_leave_in_order_when_due() {
        let mut acks = DelayedAcks::new(Duration::from_millis(100));
        let t0 = Instant::now();
        acks.hold(t0, Packet::PubAck(PubAck::new(1)));
        acks.hold(
            t0 + Duration::from_millis(30),
            Packet::PubAck(PubAck::new(2)),
        );
        assert_eq!(acks.next_due(), Some(t0 + Duration::from_millis(100)));
        assert!(acks.take_due(t0 + Duration::from_millis(99)).is_empty());
        let due = acks.take_due(t0 + Duration::from_millis(100));
        assert!(matches!(due.as_slice(), [Packet::PubAck(a)] if a.pkid == 1));
        assert_eq!(acks.len(), 1);
        let due = acks.take_due(t0 + Duration::from_secs(1));
        assert!(matches!(due.as_slice(), [Packet::PubAck(a)] if a.pkid == 2));
        assert!(acks.is_empty() && acks.next_due().is_none());
    }

    async fn connected_pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut broker = accepted.unwrap().0;
        let mut ack = BytesMut::new();
        encode(
            &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
            &mut ack,
        )
        .unwrap();
        broker.write_all(&ack).await.unwrap();
        let options = ConnectOptions {
            client_id: "stalled-0".into(),
            username: None,
            password: None,
            keepalive: 60,
            clean_session: false,
        };
        let connection = Connection::open(client.unwrap(), &options, Duration::from_secs(5))
            .await
            .unwrap();
        (connection, broker)
    }

    async fn send_publishes(broker: &mut TcpStream, n: u16) {
        let mut out = BytesMut::new();
        for pkid in 1..=n {
            let mut publish = Publish::new("bench/in/1", QoS::AtLeastOnce, vec![b'x'; 100]);
            publish.pkid = pkid;
            encode(&Packet::Publish(publish), &mut out).unwrap();
        }
        broker.write_all(&out).await.unwrap();
    }

    #[tokio::test]
    async fn a_stalled_client_sees_the_broker_close_without_reading() {
        let (mut connection, mut broker) = connected_pair().await;
        let closer = tokio::spawn(async move {
            send_publishes(&mut broker, 3).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(broker); // the broker gives up on the subscriber
        });
        let stall = stall(
            &mut connection,
            Duration::from_secs(60),
            std::future::pending(),
        )
        .await;
        closer.await.unwrap();
        let closed_after = stall.closed_after.expect("closure seen");
        assert!(closed_after >= Duration::from_millis(300), "{stall:?}");
        assert!(closed_after < Duration::from_secs(2), "{stall:?}");
        assert_eq!(stall.unread_publishes, 3);
    }

    #[tokio::test]
    async fn a_stalled_client_left_open_reports_it_at_the_end() {
        let (mut connection, mut broker) = connected_pair().await;
        send_publishes(&mut broker, 2).await;
        let stall = stall(
            &mut connection,
            Duration::from_secs(2), // a PINGREQ every second
            tokio::time::sleep(Duration::from_millis(1500)),
        )
        .await;
        assert_eq!(
            stall,
            Stall {
                closed_after: None,
                unread_publishes: 2
            }
        );
        // CONNECT, then the PINGREQ: the stalled client still keeps alive.
        let mut received = vec![0u8; 256];
        let n = broker.read(&mut received).await.unwrap();
        assert_eq!(&received[n - 2..n], &[0xC0, 0x00], "{:?}", &received[..n]);
    }
}
