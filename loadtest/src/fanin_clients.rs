//! The clients of the fan-in scenario: publishers that send numbered
//! messages within an in-flight window and note which were acknowledged,
//! and subscribers that acknowledge (at once, or late) and note which
//! arrived. Their payloads carry the message's id (run tag, publisher
//! index, sequence number, scheduled send time), so receptions map back to
//! the publishers' ledger.
//!
//! Each client owns its part of the ledger (fanin_ledger.rs) and its
//! latencies, and hands them over when it ends; several PUBLISHes or
//! acknowledgements go out in one write.

use crate::accounting::UplinkKey;
use crate::backoff::{Backoff, BackoffPolicy};
use crate::client::{encode, Connection};
use crate::engine::{unix_micros, Run};
use crate::fanin_ledger::{PublisherRecord, Reception, Receptions};
use crate::impairment::DelayedAcks;
use crate::message_id::RunTag;
use crate::outbox::Outbox;
use crate::schedule::{Latencies, Schedule};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    Packet, PubAck, PubComp, PubRec, PubRel, Publish, SubscribeReasonCode,
};
use rumqttc::mqttbytes::QoS;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// A batch of PUBLISHes or acknowledgements goes out once it has this many bytes.
const BATCH_BYTES: usize = 16 * 1024;

/// The payload of message `seq` of publisher `index`: its id
/// (`<run tag>-<index>-<seq>-<send time µs>`, message_id.rs), then a
/// newline and filler up to `size` bytes.
pub fn payload(tag: &RunTag, index: u32, seq: u64, sent_unix_micros: u64, size: usize) -> Bytes {
    let id = tag.id(&index.to_string(), seq, sent_unix_micros);
    let mut payload = BytesMut::with_capacity(size.max(id.len()));
    payload.extend_from_slice(id.as_bytes());
    if size > id.len() {
        payload.extend_from_slice(b"\n");
        payload.resize(size, b'x');
    }
    payload.freeze()
}

/// (publisher index, sequence number, send time µs) of a payload of this run.
pub fn parse(tag: &RunTag, payload: &[u8]) -> Option<(u32, u64, u64)> {
    let id = payload.split(|&b| b == b'\n').next()?;
    let id = tag.parse(std::str::from_utf8(id).ok()?)?;
    Some((id.client_id.parse().ok()?, id.seq, id.sent_unix_micros))
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What one publisher does.
#[derive(Debug, Clone)]
pub struct PublisherPlan {
    pub index: u32,
    pub topic: String,
    pub qos: QoS,
    pub size: usize,
    /// Open loop: this publisher's share of the offered rate. `None`: as
    /// fast as the window allows, each message's latency counted from when
    /// it was written.
    pub schedule: Option<Schedule>,
    /// Most unacknowledged messages; `None` for no limit.
    pub window: Option<usize>,
    pub publish_start: Instant,
    pub until: Instant,
}

/// What one publisher hands back.
#[derive(Default)]
pub struct Published {
    pub record: PublisherRecord,
    /// Send (scheduled time) to PUBACK or PUBCOMP.
    pub ack_latency: Latencies,
    /// The broker closed the connection before the publisher was done.
    pub disconnected: bool,
}

/// Publishes from `plan.publish_start` until `plan.until`, then waits for
/// the outstanding acknowledgements until they are all in or `stop`.
pub async fn publisher(
    run: &Run,
    mut connection: Connection,
    plan: PublisherPlan,
    mut stop: watch::Receiver<bool>,
) -> Published {
    let mut publisher = Publisher {
        run,
        plan,
        outbox: Outbox::new(None, false),
        published: Published::default(),
        out: BytesMut::new(),
    };
    publisher.outbox = Outbox::new(publisher.plan.window, false);
    match publisher.drive(&mut connection, &mut stop).await {
        Ok(()) => connection.disconnect().await,
        Err(error) => {
            run.error("publisher", &error);
            run.counters.disconnects.fetch_add(1, Ordering::Relaxed);
            publisher.published.disconnected = true;
        }
    }
    publisher.published
}

struct Publisher<'a> {
    run: &'a Run,
    plan: PublisherPlan,
    outbox: Outbox,
    published: Published,
    out: BytesMut,
}

impl Publisher<'_> {
    /// Ok when done or stopped; an error when the connection was lost.
    async fn drive(
        &mut self,
        connection: &mut Connection,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let keepalive = Duration::from_secs(u64::from(self.run.target.keepalive.max(1)));
        let mut next_ping = Instant::now() + keepalive / 2;
        loop {
            let now = Instant::now();
            let at_most_once = self.plan.qos == QoS::AtMostOnce;
            if now >= self.plan.until && (at_most_once || self.outbox.is_empty()) {
                return Ok(());
            }
            let publishing = now >= self.plan.publish_start && now < self.plan.until;
            if publishing {
                self.encode_due(now)?;
            }
            if !self.out.is_empty() {
                tokio::select! {
                    written = connection.send_encoded(&self.out) => written?,
                    () = stopped(stop) => return Ok(()),
                }
                self.out.clear();
                next_ping = Instant::now() + keepalive / 2;
            }
            let mut wake = next_ping;
            if now < self.plan.publish_start {
                wake = wake.min(self.plan.publish_start);
            } else if publishing {
                wake = wake.min(self.plan.until);
                if self.outbox.has_room() {
                    let next = match &self.plan.schedule {
                        Some(schedule) => schedule.intended(self.published.record.sent),
                        None => now,
                    };
                    wake = wake.min(next);
                }
            }
            tokio::select! {
                packet = connection.recv() => {
                    self.handle(packet?)?;
                    while let Some(packet) = connection.next_buffered()? {
                        self.handle(packet)?;
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= next_ping {
                        encode(&Packet::PingReq, &mut self.out)?;
                        next_ping = Instant::now() + keepalive / 2;
                    }
                }
                () = stopped(stop) => return Ok(()),
            }
        }
    }

    /// Encodes the messages due by `now` that fit in the window.
    fn encode_due(&mut self, now: Instant) -> anyhow::Result<()> {
        let plan = &self.plan;
        let mut batch = 0;
        while self.outbox.has_room() && self.out.len() < BATCH_BYTES {
            let seq = self.published.record.sent;
            let intended = match &plan.schedule {
                Some(schedule) => {
                    let at = schedule.intended(seq);
                    if at > now || at >= plan.until {
                        break;
                    }
                    at
                }
                None => now,
            };
            let payload = payload(
                &self.run.run_tag,
                plan.index,
                seq,
                self.run.to_unix_micros(intended),
                plan.size,
            );
            let pkid = match plan.qos {
                QoS::AtMostOnce => 0,
                qos => {
                    let key = UplinkKey {
                        terminal: plan.index,
                        seq,
                    };
                    self.outbox.push(qos, &payload, intended, Some(key))
                }
            };
            let mut publish = Publish::from_bytes(&plan.topic, plan.qos, payload);
            publish.pkid = pkid;
            encode(&Packet::Publish(publish), &mut self.out)?;
            self.published.record.sent += 1;
            batch += 1;
        }
        self.run
            .counters
            .published
            .fetch_add(batch, Ordering::Relaxed);
        Ok(())
    }

    fn handle(&mut self, packet: Packet) -> anyhow::Result<()> {
        match packet {
            Packet::PubAck(ack) if self.plan.qos == QoS::AtLeastOnce => self.acknowledged(ack.pkid),
            Packet::PubComp(comp) if self.plan.qos == QoS::ExactlyOnce => {
                self.acknowledged(comp.pkid)
            }
            // PUBREC of a message in flight: release it.
            Packet::PubRec(rec) if self.outbox.release(rec.pkid) => {
                encode(&Packet::PubRel(PubRel::new(rec.pkid)), &mut self.out)?
            }
            Packet::Disconnect => anyhow::bail!("DISCONNECT from the broker"),
            _ => {}
        }
        Ok(())
    }

    fn acknowledged(&mut self, pkid: u16) {
        let Some(done) = self.outbox.complete(pkid) else {
            return;
        };
        if let Some(key) = done.key {
            self.published.record.acked.insert(key.seq);
        }
        self.published
            .ack_latency
            .record(done.intended, Instant::now());
        self.run.counters.acked.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects once with a clean session and leaves, so that the broker
/// forgets the session (and its queue) an earlier run left under `client_id`.
pub async fn discard_session(run: &Run, client_id: &str) -> anyhow::Result<()> {
    run.open_as(client_id, true).await?.disconnect().await;
    Ok(())
}

/// What one subscriber does.
#[derive(Debug, Clone)]
pub struct SubscriberPlan {
    pub client_id: String,
    pub filter: String,
    pub qos: QoS,
    /// A slow subscriber: each acknowledgement this long after its PUBLISH.
    pub ack_delay: Option<Duration>,
    /// The subscriber whose receptions the run's counters and e2e latency follow.
    pub main: bool,
    pub publishers: u32,
}

/// What one subscriber hands back.
#[derive(Default)]
pub struct Subscribed {
    pub receptions: Receptions,
    /// Scheduled send time to first reception.
    pub e2e: Latencies,
    /// Times the broker closed the connection.
    pub disconnects: u64,
}

/// Subscribes on a new persistent session and acknowledges what arrives
/// until `stop`, reconnecting (with backoff) to that session if the broker
/// closes the connection. `ready` gets the first SUBACK, or why there was none.
pub async fn subscriber(
    run: Arc<Run>,
    plan: SubscriberPlan,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
) -> Subscribed {
    let mut subscriber = Subscriber {
        run: &run,
        plan,
        subscribed: Subscribed::default(),
        ready: Some(ready),
        out: BytesMut::new(),
    };
    subscriber.subscribed.receptions = Receptions::new(subscriber.plan.publishers);
    let mut backoff = Backoff::new(BackoffPolicy::default(), unix_micros());
    if let Err(error) = discard_session(&run, &subscriber.plan.client_id).await {
        if let Some(ready) = subscriber.ready.take() {
            let _ = ready.send(Err(error));
        }
        return subscriber.subscribed;
    }
    loop {
        let result = match run.open_as(&subscriber.plan.client_id, false).await {
            Ok(mut connection) => {
                backoff.reset();
                let served = subscriber.serve(&mut connection, &mut stop).await;
                if served.is_ok() {
                    connection.disconnect().await;
                }
                served.map_err(|error| (error, true))
            }
            Err(error) => Err((error, false)),
        };
        let (error, was_connected) = match result {
            Ok(()) => break,
            Err(failure) => failure,
        };
        if *stop.borrow() {
            break;
        }
        if let Some(ready) = subscriber.ready.take() {
            let _ = ready.send(Err(error)); // the run cannot start without it
            break;
        }
        run.error("subscriber", &error);
        if was_connected {
            subscriber.subscribed.disconnects += 1;
            run.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stopped(&mut stop) => break,
        }
    }
    subscriber.subscribed
}

struct Subscriber<'a> {
    run: &'a Run,
    plan: SubscriberPlan,
    subscribed: Subscribed,
    ready: Option<oneshot::Sender<anyhow::Result<()>>>,
    out: BytesMut,
}

impl Subscriber<'_> {
    /// One connection's worth; Ok when stopped.
    async fn serve(
        &mut self,
        connection: &mut Connection,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        connection
            .subscribe(&self.plan.filter, self.plan.qos)
            .await?;
        let mut delayed = self.plan.ack_delay.map(DelayedAcks::new);
        let keepalive = Duration::from_secs(u64::from(self.run.target.keepalive.max(1)));
        let mut next_ping = Instant::now() + keepalive / 2;
        loop {
            let mut wake = next_ping;
            if let Some(due) = delayed.as_ref().and_then(DelayedAcks::next_due) {
                wake = wake.min(due);
            }
            tokio::select! {
                packet = connection.recv() => {
                    let now = Instant::now();
                    self.handle(packet?, now, &mut delayed)?;
                    while let Some(packet) = connection.next_buffered()? {
                        self.handle(packet, now, &mut delayed)?;
                        if self.out.len() >= BATCH_BYTES {
                            connection.send_encoded(&self.out).await?;
                            self.out.clear();
                        }
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
                () = stopped(stop) => return Ok(()),
            }
            let now = Instant::now();
            if let Some(delayed) = &mut delayed {
                for ack in delayed.take_due(now) {
                    encode(&ack, &mut self.out)?;
                }
            }
            if now >= next_ping {
                encode(&Packet::PingReq, &mut self.out)?;
                next_ping = now + keepalive / 2;
            }
            if !self.out.is_empty() {
                connection.send_encoded(&self.out).await?;
                self.out.clear();
            }
        }
    }

    fn handle(
        &mut self,
        packet: Packet,
        now: Instant,
        delayed: &mut Option<DelayedAcks>,
    ) -> anyhow::Result<()> {
        match packet {
            Packet::Publish(publish) => {
                self.received(&publish.payload);
                let ack = match publish.qos {
                    QoS::AtMostOnce => return Ok(()),
                    QoS::AtLeastOnce => Packet::PubAck(PubAck::new(publish.pkid)),
                    QoS::ExactlyOnce => Packet::PubRec(PubRec::new(publish.pkid)),
                };
                match delayed {
                    Some(delayed) => delayed.hold(now, ack),
                    None => encode(&ack, &mut self.out)?,
                }
            }
            Packet::PubRel(rel) => encode(&Packet::PubComp(PubComp::new(rel.pkid)), &mut self.out)?,
            Packet::SubAck(ack) => {
                anyhow::ensure!(
                    !ack.return_codes.contains(&SubscribeReasonCode::Failure),
                    "subscription to {} refused",
                    self.plan.filter
                );
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Packet::Disconnect => anyhow::bail!("DISCONNECT from the broker"),
            _ => {}
        }
        Ok(())
    }

    fn received(&mut self, payload: &[u8]) {
        let subscribed = &mut self.subscribed;
        let Some((publisher, seq, sent)) = parse(&self.run.run_tag, payload) else {
            subscribed.receptions.other_run();
            return;
        };
        let reception = subscribed.receptions.record(publisher, seq);
        if self.plan.main && reception == Reception::First {
            subscribed
                .e2e
                .record_micros(unix_micros().saturating_sub(sent));
            self.run.counters.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::{run_against, Peer};
    use rumqttc::mqttbytes::v4::{SubAck, SubscribeReasonCode};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_publisher_keeps_to_its_window_and_notes_what_was_acknowledged() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = run_against(listener.local_addr().unwrap().port(), 1, "pub-%i").await;
        let (stop, stop_signal) = watch::channel(false);
        let now = Instant::now();
        let plan = PublisherPlan {
            index: 0,
            topic: "bench/in/0".into(),
            qos: QoS::AtLeastOnce,
            size: 64,
            schedule: None,
            window: Some(4),
            publish_start: now,
            until: now + Duration::from_millis(300),
        };
        let publisher = {
            let run = run.clone();
            tokio::spawn(async move {
                let connection = run.connect(0, now).await.unwrap();
                publisher(&run, connection, plan, stop_signal).await
            })
        };
        let mut broker = Peer::accept(&listener).await;
        broker.handshake().await;
        // A full window, closed loop: four at once, then nothing until a PUBACK.
        let mut first = Vec::new();
        for _ in 0..4 {
            first.push(broker.publish().await);
        }
        for publish in &first[..2] {
            broker
                .write(Packet::PubAck(PubAck::new(publish.pkid)))
                .await;
        }
        let more = [broker.publish().await, broker.publish().await];
        let ids: Vec<_> = first
            .iter()
            .chain(&more)
            .map(|p| parse(&run.run_tag, &p.payload).map(|(i, seq, _)| (i, seq)))
            .collect();
        let expected: Vec<_> = (0..6).map(|seq| Some((0, seq))).collect();
        assert_eq!(ids, expected);
        assert!(first.iter().all(|p| p.payload.len() == 64 && !p.dup));
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.send(true).unwrap();
        let published = publisher.await.unwrap();
        assert!(!published.disconnected);
        assert_eq!(published.record.sent, 6);
        assert_eq!(published.record.acked.len(), 2);
        assert!(published.record.acked.contains(0) && published.record.acked.contains(1));
        assert_eq!(published.ack_latency.percentiles().count, 2);
        assert_eq!(run.counters.published.load(Ordering::Relaxed), 6);
        assert_eq!(run.counters.acked.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_subscriber_acknowledges_everything_and_counts_each_message_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = run_against(listener.local_addr().unwrap().port(), 2, "pub-%i").await;
        let (stop, stop_signal) = watch::channel(false);
        let (ready, subscribed) = oneshot::channel();
        let plan = SubscriberPlan {
            client_id: "sub".into(),
            filter: "bench/in/#".into(),
            qos: QoS::AtLeastOnce,
            ack_delay: None,
            main: true,
            publishers: 2,
        };
        let subscriber = tokio::spawn(subscriber(run.clone(), plan, ready, stop_signal));
        // First a clean session, to drop what an earlier run left ...
        let mut broker = Peer::accept(&listener).await;
        assert!(broker.handshake().await, "clean session");
        assert!(matches!(broker.read().await, Packet::Disconnect));
        // ... then the persistent session the subscriber keeps.
        let mut broker = Peer::accept(&listener).await;
        assert!(!broker.handshake().await, "persistent session");
        let Packet::Subscribe(subscribe) = broker.read().await else {
            panic!("expected SUBSCRIBE")
        };
        broker
            .write(Packet::SubAck(SubAck::new(
                subscribe.pkid,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            )))
            .await;
        subscribed.await.unwrap().unwrap();
        let tag = &run.run_tag;
        let payloads = [
            payload(tag, 0, 0, unix_micros(), 100),
            payload(tag, 0, 0, unix_micros(), 100), // a duplicate
            payload(tag, 1, 5, unix_micros(), 100),
            payload(&RunTag::from_number(7), 0, 1, 0, 100), // an earlier run's
        ];
        for (pkid, payload) in (1..).zip(payloads) {
            let mut publish = Publish::from_bytes("bench/in/0", QoS::AtLeastOnce, payload);
            publish.pkid = pkid;
            broker.write(Packet::Publish(publish)).await;
        }
        for pkid in 1..=4 {
            match broker.read().await {
                Packet::PubAck(ack) => assert_eq!(ack.pkid, pkid),
                other => panic!("{other:?}"),
            }
        }
        stop.send(true).unwrap();
        let subscribed = subscriber.await.unwrap();
        assert_eq!(subscribed.receptions.unique(), 2);
        assert_eq!(subscribed.receptions.duplicates(), 1);
        assert_eq!(subscribed.e2e.percentiles().count, 2);
        assert_eq!(subscribed.disconnects, 0);
        assert_eq!(run.counters.received.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn payloads_carry_the_id_first_and_are_padded_to_size() {
        let tag = RunTag::from_number(42);
        let bytes = payload(&tag, 17, 123_456, 1_790_000_000_000_001, 256);
        assert_eq!(bytes.len(), 256);
        assert!(bytes.starts_with(tag.as_str().as_bytes()));
        assert_eq!(
            parse(&tag, &bytes),
            Some((17, 123_456, 1_790_000_000_000_001))
        );
        // Shorter than the id: the id whole, no filler.
        let short = payload(&tag, 3, 0, 5, 8);
        assert_eq!(short.as_ref(), tag.id("3", 0, 5).as_bytes());
        assert_eq!(parse(&tag, &short), Some((3, 0, 5)));
        // Another run's message, or anything else.
        assert_eq!(parse(&RunTag::from_number(43), &bytes), None);
        assert_eq!(parse(&tag, b"hello"), None);
        assert_eq!(parse(&tag, &[0xff, 0xfe, b'\n']), None);
        let not_an_index = tag.id("box-1", 0, 5);
        assert_eq!(parse(&tag, not_an_index.as_bytes()), None);
    }
}
