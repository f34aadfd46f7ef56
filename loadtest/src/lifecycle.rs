//! One simulated terminal's life on the lean client: connect, subscribe,
//! publish on its schedule, acknowledge what arrives, keep alive, and leave.
//!
//! As firmware ([`Firmware::reliable`]) it also survives its connection:
//! after a drop or a refused connect it reconnects with jittered exponential
//! backoff, on a persistent session, subscribes again, and resends every
//! unacknowledged QoS 1/2 message with DUP set and its packet id (MQTT 3.1.1
//! §4.4). At most `max_inflight` messages wait for their PUBACK; messages
//! scheduled meanwhile wait their turn (their latency still counts from the
//! scheduled time).
//!
//! With several broker addresses (brokers.rs) a terminal starts on its own
//! and, backoff unchanged, moves to the next after a failed connect, as a
//! load balancer stops sending to a dead node; with `move_on_reconnect`
//! also after every lost connection.
//!
//! Some terminals may be impaired (impairment.rs): a stalled one stops
//! reading once subscribed and never comes back; a slow one holds each
//! acknowledgement for a while.

use crate::accounting::UplinkKey;
use crate::backoff::{Backoff, BackoffPolicy};
use crate::client::Connection;
use crate::engine::Run;
use crate::impairment::{self, DelayedAcks, Impairment, Impairments};
use crate::outbox::Outbox;
use crate::schedule::Schedule;
use bytes::Bytes;
use rumqttc::mqttbytes::v4::{Packet, PubAck, PubComp, PubRec, PubRel};
use rumqttc::mqttbytes::QoS;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a terminal deals with its connection.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// Reconnect after a drop or a failed connect, and retransmit what was
    /// not acknowledged.
    pub reconnect: bool,
    pub backoff: BackoffPolicy,
    pub clean_session: bool,
    /// Most QoS 1/2 messages waiting for their acknowledgement; `None` for no limit.
    pub max_inflight: Option<usize>,
    /// Reconnect to the next broker address after a lost connection, not
    /// to the same one.
    pub move_on_reconnect: bool,
}

impl Firmware {
    /// The benchmark client: one connection with a clean session, no
    /// in-flight limit (open loop), gone when the connection is.
    pub fn lean() -> Self {
        Self {
            reconnect: false,
            backoff: BackoffPolicy::default(),
            clean_session: true,
            max_inflight: None,
            move_on_reconnect: false,
        }
    }

    /// A terminal as real firmware behaves: reconnects, persistent session,
    /// 16 messages in flight.
    pub fn reliable() -> Self {
        Self {
            reconnect: true,
            backoff: BackoffPolicy::default(),
            clean_session: false,
            max_inflight: Some(16),
            move_on_reconnect: false,
        }
    }
}

/// What each client does once connected.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub subscribe: Option<(String, QoS)>,
    /// (topic template, QoS, payload size, total rate)
    pub publish: Option<(String, QoS, usize, f64)>,
    /// Decode received payloads as Herald DownlinkCommands of this run and
    /// count them in the run's downlink ledger.
    pub downlink_commands: bool,
    /// Publish Herald ScanResults with this run's ids, counted in the run's
    /// uplink ledger, instead of raw stamped payloads.
    pub scan_results: bool,
    /// No message is scheduled from here on. Without `leave`, clients leave
    /// once they have sent every message scheduled before it and have no
    /// acknowledgement outstanding, or when `drain` has passed since.
    pub until: Instant,
    /// How long after `until` clients may still send what they are behind
    /// with (the in-flight window was full, or they were offline) and wait
    /// for their outstanding acknowledgements. Zero for benchmark clients:
    /// they stop at `until`.
    pub drain: Duration,
    /// Clients leave when this turns true (or its sender is gone), instead
    /// of after `until`.
    pub leave: Option<watch::Receiver<bool>>,
    pub firmware: Firmware,
    /// Which clients stall or are slow (none by default).
    pub impairments: Impairments,
}

/// The part of a terminal that outlives its connections.
struct Terminal {
    index: u32,
    client_id: String,
    filter: Option<(String, QoS)>,
    publishing: Option<Publishing>,
    /// Messages created so far (the next one's sequence number).
    seq: u64,
    outbox: Outbox,
    ever_connected: bool,
    impairment: Impairment,
    /// The broker address it connects to next (an index into `Run::brokers`).
    node: usize,
}

struct Publishing {
    topic: String,
    qos: QoS,
    size: usize,
    schedule: Schedule,
}

impl Terminal {
    fn new(run: &Run, index: u32, publish_start: Instant, behaviour: &Behaviour) -> Self {
        let client_id = run.clients.client_id(index);
        let number = run.clients.start_number + index;
        let filter = behaviour
            .subscribe
            .as_ref()
            .map(|(template, qos)| (crate::cli::topic(template, number, &client_id), *qos));
        let publishing = behaviour
            .publish
            .as_ref()
            .map(|(template, qos, size, rate)| Publishing {
                topic: crate::cli::topic(template, number, &client_id),
                qos: *qos,
                size: *size,
                schedule: Schedule::new(publish_start, *rate, run.clients.count, index),
            });
        Self {
            index,
            client_id,
            filter,
            publishing,
            seq: 0,
            outbox: Outbox::new(
                behaviour.firmware.max_inflight,
                behaviour.firmware.reconnect,
            ),
            ever_connected: false,
            impairment: behaviour.impairments.of(index),
            node: run.first_node(index),
        }
    }

    /// When the next message is due, if there is one before `until` and room for it.
    fn next_publish(&self, until: Instant) -> Option<Instant> {
        let publishing = self.publishing.as_ref()?;
        let intended = publishing.schedule.intended(self.seq);
        (intended < until && (publishing.qos == QoS::AtMostOnce || self.outbox.has_room()))
            .then_some(intended)
    }

    /// Whether every message scheduled before `until` has been sent.
    fn published_all(&self, until: Instant) -> bool {
        self.publishing
            .as_ref()
            .is_none_or(|p| p.schedule.intended(self.seq) >= until)
    }

    fn topic(&self) -> &str {
        self.publishing.as_ref().map_or("", |p| p.topic.as_str())
    }
}

/// Whether the terminal is done at `now`.
fn should_leave(behaviour: &Behaviour, terminal: &Terminal, now: Instant) -> bool {
    if let Some(leave) = &behaviour.leave {
        return *leave.borrow() || leave.has_changed().is_err();
    }
    let drained = terminal.outbox.is_empty() && terminal.published_all(behaviour.until);
    now >= behaviour.until + behaviour.drain || (now >= behaviour.until && drained)
}

/// Resolves when the leave signal says so; never without one.
async fn leave_signal(leave: &mut Option<watch::Receiver<bool>>) {
    match leave {
        Some(leave) => {
            let _ = leave.wait_for(|leave| *leave).await;
        }
        None => std::future::pending().await,
    }
}

enum SessionEnd {
    Leave,
    Lost(anyhow::Error),
}

/// Runs one client from its first connect until it leaves.
pub async fn client(
    run: Arc<Run>,
    index: u32,
    connect_at: Instant,
    publish_start: Instant,
    behaviour: Arc<Behaviour>,
) {
    let mut terminal = Terminal::new(&run, index, publish_start, &behaviour);
    let mut leave = behaviour.leave.clone();
    let mut backoff = Backoff::new(behaviour.firmware.backoff, u64::from(index));
    let mut connection = match run
        .connect_on(
            terminal.node,
            index,
            connect_at,
            behaviour.firmware.clean_session,
        )
        .await
    {
        Some(connection) => Some(connection),
        None if behaviour.firmware.reconnect => {
            terminal.node = run.brokers.after(terminal.node);
            reconnect(
                &run,
                &mut terminal,
                &behaviour,
                &mut leave,
                &mut backoff,
                connect_at,
            )
            .await
        }
        None => None,
    };
    if connection.is_some() {
        terminal.ever_connected = true;
    }
    while let Some(mut open) = connection.take() {
        match serve(&run, &mut terminal, &mut open, &behaviour, &mut leave).await {
            SessionEnd::Leave => open.disconnect().await,
            SessionEnd::Lost(error) => {
                let lost_at = Instant::now();
                open.drop_connection();
                if should_leave(&behaviour, &terminal, lost_at) {
                    break;
                }
                run.error("connection", &error);
                run.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                if behaviour.firmware.move_on_reconnect {
                    terminal.node = run.brokers.after(terminal.node);
                }
                if behaviour.firmware.reconnect {
                    connection = reconnect(
                        &run,
                        &mut terminal,
                        &behaviour,
                        &mut leave,
                        &mut backoff,
                        lost_at,
                    )
                    .await;
                }
            }
        }
    }
    if let Some(publishing) = &terminal.publishing {
        let scheduled = publishing.schedule.count_before(behaviour.until);
        run.counters
            .not_sent
            .fetch_add(scheduled.saturating_sub(terminal.seq), Ordering::Relaxed);
    }
}

/// Waits out the backoff and connects again, until it works or the terminal
/// should leave; each failed attempt moves on to the next broker address.
/// Records the reconnect latency from `lost_at`.
async fn reconnect(
    run: &Run,
    terminal: &mut Terminal,
    behaviour: &Behaviour,
    leave: &mut Option<watch::Receiver<bool>>,
    backoff: &mut Backoff,
    lost_at: Instant,
) -> Option<Connection> {
    loop {
        let retry_at = Instant::now() + backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep_until(retry_at.into()) => {}
            _ = leave_signal(leave) => return None,
        }
        if should_leave(behaviour, terminal, Instant::now()) {
            return None;
        }
        match run
            .open_on(
                terminal.node,
                &terminal.client_id,
                behaviour.firmware.clean_session,
            )
            .await
        {
            Ok(connection) => {
                backoff.reset();
                let counters = &run.counters;
                if terminal.ever_connected {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    run.reconnect_latency
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(lost_at, Instant::now());
                } else {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                }
                if connection.session_present {
                    counters.sessions_resumed.fetch_add(1, Ordering::Relaxed);
                }
                terminal.ever_connected = true;
                return Some(connection);
            }
            Err(_) => {
                run.counters
                    .reconnect_failures
                    .fetch_add(1, Ordering::Relaxed);
                terminal.node = run.brokers.after(terminal.node);
            }
        }
    }
}

/// One connection's worth: subscribe, resend what is unacknowledged, then
/// publish, acknowledge and keep alive until leaving or losing it.
async fn serve(
    run: &Run,
    terminal: &mut Terminal,
    connection: &mut Connection,
    behaviour: &Behaviour,
    leave: &mut Option<watch::Receiver<bool>>,
) -> SessionEnd {
    // Subscribing after every CONNACK: a restarted broker kept no session.
    if let Some((filter, qos)) = &terminal.filter {
        if let Err(error) = connection.subscribe(filter, *qos).await {
            return SessionEnd::Lost(error);
        }
    }
    if terminal.impairment == Impairment::Stalled {
        return stall(run, connection, behaviour, leave).await;
    }
    let mut delayed = match terminal.impairment {
        Impairment::Slow(delay) => Some(DelayedAcks::new(delay)),
        _ => None,
    };
    let resend: Vec<Packet> = terminal.outbox.retransmissions(terminal.topic()).collect();
    for packet in resend {
        if let Err(error) = connection.send(&packet).await {
            return SessionEnd::Lost(error);
        }
        run.counters.retransmitted.fetch_add(1, Ordering::Relaxed);
    }
    let keepalive = Duration::from_secs(u64::from(run.target.keepalive.max(1)));
    let mut next_ping = Instant::now() + keepalive / 2;
    let mut ping_sent_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if should_leave(behaviour, terminal, now) {
            return SessionEnd::Leave;
        }
        let next_publish = terminal.next_publish(behaviour.until);
        let mut wake = match ping_sent_at {
            Some(sent) => sent + keepalive,
            None => next_ping,
        };
        if let Some(at) = next_publish {
            wake = wake.min(at);
        }
        if let Some(due) = delayed.as_ref().and_then(DelayedAcks::next_due) {
            wake = wake.min(due);
        }
        if now < behaviour.until {
            wake = wake.min(behaviour.until);
        } else if behaviour.leave.is_none() {
            wake = wake.min(behaviour.until + behaviour.drain);
        }
        tokio::select! {
            packet = connection.recv() => {
                let handled = match packet {
                    Ok(packet) => handle(run, terminal, connection, behaviour, packet, &mut ping_sent_at, &mut delayed).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = handled {
                    return SessionEnd::Lost(error);
                }
            }
            _ = leave_signal(leave) => return SessionEnd::Leave,
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if let Some(delayed) = &mut delayed {
                    for ack in delayed.take_due(now) {
                        if let Err(error) = connection.send(&ack).await {
                            return SessionEnd::Lost(error);
                        }
                    }
                }
                if ping_sent_at.is_some_and(|sent| now >= sent + keepalive) {
                    return SessionEnd::Lost(anyhow::anyhow!(
                        "no PINGRESP within the keepalive ({}s)",
                        keepalive.as_secs()
                    ));
                }
                if let Some(intended) = next_publish {
                    if now >= intended {
                        if let Err(error) = publish_next(run, terminal, connection, behaviour, intended).await {
                            return SessionEnd::Lost(error);
                        }
                        next_ping = now + keepalive / 2; // any packet counts as activity
                        continue;
                    }
                }
                if ping_sent_at.is_none() && now >= next_ping {
                    if let Err(error) = connection.send(&Packet::PingReq).await {
                        return SessionEnd::Lost(error);
                    }
                    ping_sent_at = Some(now);
                    next_ping = now + keepalive / 2;
                }
            }
        }
    }
}

/// A stalled terminal: once its subscription is in place it stops reading
/// and waits to leave (or for the broker to close the connection), then
/// leaves for good: no reconnect.
async fn stall(
    run: &Run,
    connection: &mut Connection,
    behaviour: &Behaviour,
    leave: &mut Option<watch::Receiver<bool>>,
) -> SessionEnd {
    if let Err(error) = impairment::await_suback(connection, Duration::from_secs(30)).await {
        run.error("stalled terminal", &error);
        return SessionEnd::Leave;
    }
    let keepalive = Duration::from_secs(u64::from(run.target.keepalive.max(1)));
    let end = behaviour
        .leave
        .is_none()
        .then_some(behaviour.until + behaviour.drain);
    let stop = async {
        tokio::select! {
            _ = leave_signal(leave) => {}
            _ = async {
                match end {
                    Some(end) => tokio::time::sleep_until(end.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    let stall = impairment::stall(connection, keepalive, stop).await;
    run.stalls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(stall);
    SessionEnd::Leave
}

/// Creates the next message, puts it in the outbox and sends it. If the
/// write fails it stays in the outbox, to be resent after reconnecting.
async fn publish_next(
    run: &Run,
    terminal: &mut Terminal,
    connection: &mut Connection,
    behaviour: &Behaviour,
    intended: Instant,
) -> anyhow::Result<()> {
    let Some(publishing) = &terminal.publishing else {
        return Ok(());
    };
    let seq = terminal.seq;
    let key = behaviour.scan_results.then_some(UplinkKey {
        terminal: terminal.index,
        seq,
    });
    let payload = if behaviour.scan_results {
        scan_result(run, &terminal.client_id, seq, run.to_unix_micros(intended))
    } else {
        run.stamped_payload(intended, seq, publishing.size)
    };
    let pkid = match publishing.qos {
        QoS::AtMostOnce => 0,
        qos => terminal.outbox.push(qos, &payload, intended, key),
    };
    if let Some(key) = key {
        run.uplinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sent(key);
    }
    terminal.seq += 1;
    run.counters.published.fetch_add(1, Ordering::Relaxed);
    connection
        .publish(&publishing.topic, publishing.qos, pkid, payload)
        .await
}

/// Answers one packet from the broker.
async fn handle(
    run: &Run,
    terminal: &mut Terminal,
    connection: &mut Connection,
    behaviour: &Behaviour,
    packet: Packet,
    ping_sent_at: &mut Option<Instant>,
    delayed: &mut Option<DelayedAcks>,
) -> anyhow::Result<()> {
    match packet {
        Packet::PubAck(ack) => acknowledged(run, terminal, ack.pkid),
        Packet::PubComp(comp) => acknowledged(run, terminal, comp.pkid),
        Packet::PubRec(rec) => {
            terminal.outbox.release(rec.pkid);
            connection
                .send(&Packet::PubRel(PubRel::new(rec.pkid)))
                .await?;
        }
        Packet::Publish(publish) => {
            if behaviour.downlink_commands {
                record_command(run, &publish.payload);
            } else {
                run.record_stamp(&publish.payload);
            }
            let ack = match publish.qos {
                QoS::AtLeastOnce => Packet::PubAck(PubAck::new(publish.pkid)),
                QoS::ExactlyOnce => Packet::PubRec(PubRec::new(publish.pkid)),
                QoS::AtMostOnce => return Ok(()),
            };
            match delayed {
                Some(delayed) => delayed.hold(Instant::now(), ack),
                None => connection.send(&ack).await?,
            }
        }
        Packet::PubRel(rel) => {
            connection
                .send(&Packet::PubComp(PubComp::new(rel.pkid)))
                .await?
        }
        Packet::PingResp => *ping_sent_at = None,
        _ => {}
    }
    Ok(())
}

/// PUBACK or PUBCOMP: the message is done; its latency counts from its
/// scheduled time, across reconnects.
fn acknowledged(run: &Run, terminal: &mut Terminal, pkid: u16) {
    let Some(done) = terminal.outbox.complete(pkid) else {
        return;
    };
    run.ack_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(done.intended, Instant::now());
    run.counters.acked.fetch_add(1, Ordering::Relaxed);
    if let Some(key) = done.key {
        run.uplinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acked(key);
    }
}

/// A valid WeChat Pay scan whose scan id is this run's id of the message.
fn scan_result(run: &Run, client_id: &str, seq: u64, intended_unix_micros: u64) -> Bytes {
    use herald_schemas::Message as _;
    let scan = herald_schemas::v1::ScanResult {
        code: "134567890123456789".into(),
        scanned_at_ms: (intended_unix_micros / 1000) as i64,
        scan_id: run.run_tag.id(client_id, seq, intended_unix_micros),
    };
    scan.encode_to_vec().into()
}

/// A terminal got a DownlinkCommand: the first delivery of each of this
/// run's command ids counts, with its end-to-end latency; the others are
/// duplicates. Commands of other runs are acknowledged and ignored.
fn record_command(run: &Run, payload: &[u8]) {
    use herald_schemas::Message as _;
    let Ok(command) = herald_schemas::v1::DownlinkCommand::decode(payload) else {
        return;
    };
    let Some(id) = run.run_tag.parse(&command.command_id) else {
        return;
    };
    let first = run
        .downlinks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .delivered(id.seq);
    if first {
        run.record_e2e_since(id.sent_unix_micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::Peer;
    use rumqttc::mqttbytes::v4::Publish;
    use tokio::net::TcpListener;

    async fn fleet_of_one(port: u16) -> Arc<Run> {
        crate::test_broker::run_against(port, 1, "box-%i").await
    }

    fn scans(until: Instant, firmware: Firmware) -> Arc<Behaviour> {
        Arc::new(Behaviour {
            subscribe: None,
            publish: Some(("devices/%c/up/scan".into(), QoS::AtLeastOnce, 0, 50.0)),
            downlink_commands: false,
            scan_results: true,
            until,
            drain: Duration::from_secs(5),
            leave: None,
            firmware,
            impairments: Impairments::default(),
        })
    }

    #[tokio::test]
    async fn a_dropped_terminal_reconnects_and_resends_unacknowledged_messages_with_dup() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = fleet_of_one(listener.local_addr().unwrap().port()).await;
        let now = Instant::now();
        let firmware = Firmware {
            backoff: BackoffPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            ..Firmware::reliable()
        };
        let terminal = tokio::spawn(client(
            run.clone(),
            0,
            now,
            now,
            scans(now + Duration::from_millis(300), firmware),
        ));

        // First connection: two scans arrive; the broker dies before acknowledging.
        let mut broker = Peer::accept(&listener).await;
        assert!(!broker.handshake().await, "persistent session");
        let first = broker.publish().await;
        let second = broker.publish().await;
        assert!(!first.dup && !second.dup);
        drop(broker);

        // Second connection: both again, DUP set, same packet ids and bytes,
        // oldest first; then everything is acknowledged.
        let mut broker = Peer::accept(&listener).await;
        broker.handshake().await;
        for original in [&first, &second] {
            let again = broker.publish().await;
            assert!(again.dup, "{again:?}");
            assert_eq!(
                (again.pkid, &again.payload),
                (original.pkid, &original.payload)
            );
        }
        let acknowledger = tokio::spawn(async move {
            broker.write(Packet::PubAck(PubAck::new(first.pkid))).await;
            broker.write(Packet::PubAck(PubAck::new(second.pkid))).await;
            loop {
                let publish = broker.publish().await;
                assert!(!publish.dup);
                broker
                    .write(Packet::PubAck(PubAck::new(publish.pkid)))
                    .await;
            }
        });
        terminal.await.unwrap();
        acknowledger.abort();

        let counters = &run.counters;
        assert_eq!(counters.reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(counters.retransmitted.load(Ordering::Relaxed), 2);
        assert_eq!(run.reconnect_latency.lock().unwrap().percentiles().count, 1);
        let accounting = run.uplinks.lock().unwrap().accounting();
        assert!(accounting.sent >= 10, "{accounting:?}");
        assert_eq!(
            accounting.acked, accounting.sent,
            "all acknowledged in the end"
        );
        assert_eq!(
            counters.published.load(Ordering::Relaxed),
            accounting.sent,
            "a retransmission is not a new message"
        );
    }

    fn downlink_terminal(impairments: Impairments, leave: watch::Receiver<bool>) -> Arc<Behaviour> {
        Arc::new(Behaviour {
            subscribe: Some(("devices/%c/down/#".into(), QoS::AtLeastOnce)),
            publish: None,
            downlink_commands: true,
            scan_results: false,
            until: Instant::now(),
            drain: Duration::ZERO,
            leave: Some(leave),
            firmware: Firmware::reliable(),
            impairments,
        })
    }

    fn command(pkid: u16) -> Packet {
        let mut publish = Publish::new("devices/box-0/down/announce", QoS::AtLeastOnce, vec![1]);
        publish.pkid = pkid;
        Packet::Publish(publish)
    }

    #[tokio::test]
    async fn a_slow_terminal_holds_each_acknowledgement() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = fleet_of_one(listener.local_addr().unwrap().port()).await;
        let (leave, leave_signal) = watch::channel(false);
        let impairments = Impairments {
            stalled: 0,
            slow: 1,
            slow_ack: Duration::from_millis(300),
        };
        let now = Instant::now();
        let terminal = tokio::spawn(client(
            run.clone(),
            0,
            now,
            now,
            downlink_terminal(impairments, leave_signal),
        ));
        let mut broker = Peer::accept(&listener).await;
        broker.handshake().await;
        assert!(matches!(broker.read().await, Packet::Subscribe(_)));
        let sent = Instant::now();
        broker.write(command(7)).await;
        broker.write(command(8)).await;
        for pkid in [7, 8] {
            match broker.read().await {
                Packet::PubAck(ack) => assert_eq!(ack.pkid, pkid),
                other => panic!("{other:?}"),
            }
        }
        let held = sent.elapsed();
        assert!(held >= Duration::from_millis(300), "{held:?}");
        assert!(held < Duration::from_secs(2), "{held:?}");
        leave.send(true).unwrap();
        terminal.await.unwrap();
    }

    #[tokio::test]
    async fn a_stalled_terminal_stops_reading_and_does_not_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = fleet_of_one(listener.local_addr().unwrap().port()).await;
        let (_leave, leave_signal) = watch::channel(false);
        let impairments = Impairments {
            stalled: 1,
            slow: 0,
            slow_ack: Duration::ZERO,
        };
        let now = Instant::now();
        let terminal = tokio::spawn(client(
            run.clone(),
            0,
            now,
            now,
            downlink_terminal(impairments, leave_signal),
        ));
        let mut broker = Peer::accept(&listener).await;
        broker.handshake().await;
        let Packet::Subscribe(subscribe) = broker.read().await else {
            panic!("expected SUBSCRIBE")
        };
        broker
            .write(Packet::SubAck(rumqttc::mqttbytes::v4::SubAck::new(
                subscribe.pkid,
                vec![rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(
                    QoS::AtLeastOnce,
                )],
            )))
            .await;
        broker.write(command(1)).await;
        broker.write(command(2)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(broker); // a slow-subscriber disconnect
        tokio::time::timeout(Duration::from_secs(5), terminal)
            .await
            .expect("the stalled terminal leaves once the broker closed it")
            .unwrap();
        let stalls = run.stalls.lock().unwrap().clone();
        assert_eq!(stalls.len(), 1);
        assert!(stalls[0].closed_after.is_some(), "{stalls:?}");
        assert_eq!(stalls[0].unread_publishes, 2);
        assert_eq!(run.counters.received.load(Ordering::Relaxed), 0);
        assert_eq!(run.counters.reconnects.load(Ordering::Relaxed), 0);
        let no_reconnect =
            tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(no_reconnect.is_err(), "no reconnect");
    }

    /// Two broker addresses: a listener, and a port nothing listens on
    /// any more (a dead node).
    async fn live_and_dead_node() -> (TcpListener, u16) {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        (live, dead_port)
    }

    fn listening_terminal(firmware: Firmware, leave: watch::Receiver<bool>) -> Arc<Behaviour> {
        let mut behaviour = (*downlink_terminal(Impairments::default(), leave)).clone();
        behaviour.firmware = Firmware {
            backoff: BackoffPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            ..firmware
        };
        Arc::new(behaviour)
    }

    async fn accept_within(listener: &TcpListener, wait: Duration) -> Option<Peer> {
        let accepted = tokio::time::timeout(wait, Peer::accept(listener)).await;
        accepted.ok()
    }

    #[tokio::test]
    async fn a_terminal_whose_node_refuses_moves_on_to_the_next() {
        let (live, dead_port) = live_and_dead_node().await;
        let hosts = format!("127.0.0.1:{dead_port},{}", live.local_addr().unwrap());
        let run = crate::test_broker::run_against_nodes(&hosts, 1, "box-%i").await;
        assert_eq!(run.first_node(0), 0, "terminal 0 starts on the dead node");
        let (leave, leave_signal) = watch::channel(false);
        let now = Instant::now();
        let terminal = tokio::spawn(client(
            run.clone(),
            0,
            now,
            now,
            listening_terminal(Firmware::reliable(), leave_signal),
        ));
        let mut broker = accept_within(&live, Duration::from_secs(5))
            .await
            .expect("the terminal came to the live node");
        broker.handshake().await;
        assert!(matches!(broker.read().await, Packet::Subscribe(_)));
        leave.send(true).unwrap();
        terminal.await.unwrap();
        let counters = &run.counters;
        assert_eq!(counters.connect_failed.load(Ordering::Relaxed), 1);
        assert_eq!(counters.connected.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_terminal_goes_back_to_its_node_or_moves_on_if_told_to() {
        for move_on_reconnect in [false, true] {
            let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let hosts = format!(
                "{},{}",
                first.local_addr().unwrap(),
                second.local_addr().unwrap()
            );
            let run = crate::test_broker::run_against_nodes(&hosts, 1, "box-%i").await;
            let (leave, leave_signal) = watch::channel(false);
            let firmware = Firmware {
                move_on_reconnect,
                ..Firmware::reliable()
            };
            let now = Instant::now();
            let terminal = tokio::spawn(client(
                run.clone(),
                0,
                now,
                now,
                listening_terminal(firmware, leave_signal),
            ));
            let mut broker = accept_within(&first, Duration::from_secs(5)).await.unwrap();
            broker.handshake().await;
            drop(broker); // the connection drops; the node stays up
            let (expected, other) = if move_on_reconnect {
                (&second, &first)
            } else {
                (&first, &second)
            };
            let mut broker = accept_within(expected, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("move_on_reconnect {move_on_reconnect}"));
            broker.handshake().await;
            assert!(accept_within(other, Duration::from_millis(200))
                .await
                .is_none());
            leave.send(true).unwrap();
            terminal.await.unwrap();
            assert_eq!(run.counters.reconnects.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test]
    async fn a_terminal_whose_node_died_reconnects_to_the_next() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hosts = format!(
            "{},{}",
            first.local_addr().unwrap(),
            second.local_addr().unwrap()
        );
        let run = crate::test_broker::run_against_nodes(&hosts, 1, "box-%i").await;
        let (leave, leave_signal) = watch::channel(false);
        let now = Instant::now();
        let terminal = tokio::spawn(client(
            run.clone(),
            0,
            now,
            now,
            listening_terminal(Firmware::reliable(), leave_signal),
        ));
        let mut broker = accept_within(&first, Duration::from_secs(5)).await.unwrap();
        broker.handshake().await;
        drop((broker, first)); // the node dies: connection and listener gone
        let mut broker = accept_within(&second, Duration::from_secs(5))
            .await
            .expect("the terminal reconnected to the live node");
        broker.handshake().await;
        leave.send(true).unwrap();
        terminal.await.unwrap();
        let counters = &run.counters;
        assert_eq!(counters.reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(counters.reconnect_failures.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_stalled_broker_gets_no_more_than_the_in_flight_window() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = fleet_of_one(listener.local_addr().unwrap().port()).await;
        let now = Instant::now();
        let firmware = Firmware {
            max_inflight: Some(4),
            ..Firmware::reliable()
        };
        let mut behaviour = (*scans(now + Duration::from_millis(400), firmware)).clone();
        behaviour.drain = Duration::from_millis(100);
        let terminal = tokio::spawn(client(run.clone(), 0, now, now, Arc::new(behaviour)));
        let mut broker = Peer::accept(&listener).await;
        broker.handshake().await;
        for _ in 0..4 {
            broker.publish().await;
        }
        terminal.await.unwrap(); // leaves after the drain, nothing acknowledged
        let accounting = run.uplinks.lock().unwrap().accounting();
        assert_eq!((accounting.sent, accounting.never_acked), (4, 4));
        let not_sent = run.counters.not_sent.load(Ordering::Relaxed);
        assert!(not_sent >= 15, "scheduled at 50/s for 0.4 s: {not_sent}");
    }
}
