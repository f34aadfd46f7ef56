//! Runs a fleet of lean clients: connects them on an open-loop schedule,
//! lets each publish, subscribe or idle, and gathers counters and latencies.

use crate::cli::{Clients, Target};
use crate::client::{ConnectOptions, Connection, SourceAddresses};
use crate::schedule::{Latencies, Schedule};
use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::QoS;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

/// Counters shown on the progress line and in the report.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Shared state of a run.
pub struct Run {
    pub broker: SocketAddr,
    pub sources: SourceAddresses,
    pub target: Target,
    pub clients: Clients,
    pub fleet_key: Option<herald_identity::FleetKey>,
    pub counters: Counters,
    pub connect_latency: Mutex<Latencies>,
    pub ack_latency: Mutex<Latencies>,
    pub e2e_latency: Mutex<Latencies>,
    /// A fixed pair of clocks, so payload timestamps (Unix µs) and
    /// `Instant`s convert into each other.
    epoch: (Instant, u64),
    first_error: Mutex<Option<String>>,
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Run {
    pub async fn new(target: &Target, clients: &Clients) -> anyhow::Result<Arc<Run>> {
        crate::client::ensure_fd_limit(u64::from(clients.count))?;
        let broker = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .with_context(|| format!("resolving {}", target.host))?
            .next()
            .context("broker host does not resolve")?;
        let fleet_key = match &target.fleet_key {
            Some(text) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .context("--fleet-key is not base64")?;
                Some(herald_identity::FleetKey::new(&bytes))
            }
            None => None,
        };
        Ok(Arc::new(Run {
            broker,
            sources: SourceAddresses::new(target.ifaddr.clone()),
            target: target.clone(),
            clients: clients.clone(),
            fleet_key,
            counters: Counters::default(),
            connect_latency: Mutex::default(),
            ack_latency: Mutex::default(),
            e2e_latency: Mutex::default(),
            epoch: (Instant::now(), unix_micros()),
            first_error: Mutex::default(),
        }))
    }

    pub fn to_unix_micros(&self, at: Instant) -> u64 {
        let (instant, unix) = self.epoch;
        unix + at.saturating_duration_since(instant).as_micros() as u64
    }

    pub fn connect_options(&self, index: u32) -> ConnectOptions {
        let client_id = self.clients.client_id(index);
        let password = match &self.fleet_key {
            Some(key) => Some(
                key.device_secret(&client_id)
                    .password(&client_id, unix_micros() / 1_000_000),
            ),
            None => self.target.password.clone(),
        };
        ConnectOptions {
            username: self
                .target
                .username
                .clone()
                .or_else(|| self.fleet_key.as_ref().map(|_| client_id.clone())),
            client_id,
            password,
            keepalive: self.target.keepalive,
            clean_session: true,
        }
    }

    pub fn error(&self, context: &str, error: &anyhow::Error) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("{context}: {error:#}"));
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connects client `index` at its intended time; records the connect latency.
    pub async fn connect(&self, index: u32, intended: Instant) -> Option<Connection> {
        tokio::time::sleep_until(intended.into()).await;
        let opened = async {
            let stream = self.sources.connect(self.broker).await?;
            Connection::open(
                stream,
                &self.connect_options(index),
                Duration::from_secs(30),
            )
            .await
        }
        .await;
        match opened {
            Ok(connection) => {
                self.connect_latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(intended, Instant::now());
                self.counters.connected.fetch_add(1, Ordering::Relaxed);
                Some(connection)
            }
            Err(error) => {
                self.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                self.error("connect", &error);
                None
            }
        }
    }

    /// Intended connect time of client `index`.
    pub fn connect_schedule(&self, start: Instant) -> Schedule {
        Schedule::new(start, self.clients.connect_rate(), 1, 0)
    }

    /// A payload of `size` bytes starting with the intended send time (Unix µs) and `seq`.
    pub fn stamped_payload(&self, intended: Instant, seq: u64, size: usize) -> Bytes {
        let mut payload = BytesMut::with_capacity(size.max(16));
        payload.put_u64(self.to_unix_micros(intended));
        payload.put_u64(seq);
        payload.resize(size.max(16), b'x');
        payload.freeze()
    }

    /// Records end-to-end latency from a payload stamped by [`Run::stamped_payload`].
    pub fn record_stamp(&self, payload: &[u8]) {
        if payload.len() >= 8 {
            let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
            self.record_e2e_since(sent);
        }
    }

    pub fn record_e2e_since(&self, sent_unix_micros: u64) {
        let latency = unix_micros().saturating_sub(sent_unix_micros);
        self.e2e_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_micros(latency);
        self.counters.received.fetch_add(1, Ordering::Relaxed);
    }

    /// A live progress line, refreshed every second, until the guard drops.
    pub fn progress(self: &Arc<Self>, total: u64) -> ProgressGuard {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} connected | {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let run = self.clone();
        let ticker_bar = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_published = 0;
            loop {
                tick.tick().await;
                let c = &run.counters;
                let published = Counters::get(&c.published);
                ticker_bar.set_position(Counters::get(&c.connected));
                ticker_bar.set_message(format!(
                    "failed {} | pub {} ({}/s) | acked {} | recv {} | errors {}",
                    Counters::get(&c.connect_failed),
                    published,
                    published - last_published,
                    Counters::get(&c.acked),
                    Counters::get(&c.received),
                    Counters::get(&c.errors),
                ));
                last_published = published;
            }
        });
        ProgressGuard { bar, task }
    }
}

pub struct ProgressGuard {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish();
    }
}

/// What each client does once connected.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub subscribe: Option<(String, QoS)>,
    /// (topic template, QoS, payload size, total rate)
    pub publish: Option<(String, QoS, usize, f64)>,
    /// Decode received payloads as Herald DownlinkCommands (announce scenario).
    pub downlink_commands: bool,
    /// Publish Herald ScanResults instead of raw stamped payloads (uplink scenario).
    pub scan_results: bool,
    pub until: Instant,
}

/// Runs one client: connect, subscribe, publish on schedule, keep alive.
pub async fn client(
    run: Arc<Run>,
    index: u32,
    connect_at: Instant,
    publish_start: Instant,
    behaviour: Arc<Behaviour>,
) {
    let Some(mut connection) = run.connect(index, connect_at).await else {
        return;
    };
    let client_id = run.clients.client_id(index);
    if let Some((template, qos)) = &behaviour.subscribe {
        let filter = crate::cli::topic(template, run.clients.start_number + index, &client_id);
        if let Err(error) = connection.subscribe(&filter, *qos).await {
            run.error("subscribe", &error);
            return;
        }
    }
    let lanes = run.clients.count;
    let publishing = behaviour
        .publish
        .as_ref()
        .map(|(template, qos, size, rate)| {
            let topic = crate::cli::topic(template, run.clients.start_number + index, &client_id);
            (
                topic,
                *qos,
                *size,
                Schedule::new(publish_start, *rate, lanes, index),
            )
        });
    let keepalive = Duration::from_secs(u64::from(run.target.keepalive.max(1)));
    let mut next_ping = Instant::now() + keepalive / 2;
    let mut seq: u64 = 0;
    let mut pkid: u16 = 0;
    let mut waiting: VecDeque<(u16, Instant)> = VecDeque::new();
    loop {
        let next_publish = publishing
            .as_ref()
            .map(|(_, _, _, schedule)| schedule.intended(seq));
        let wake = next_publish
            .unwrap_or(behaviour.until)
            .min(next_ping)
            .min(behaviour.until);
        tokio::select! {
            packet = connection.recv() => match packet {
                Ok(Packet::PubAck(ack)) => {
                    if let Some(at) = waiting.iter().position(|(p, _)| *p == ack.pkid) {
                        if let Some((_, intended)) = waiting.remove(at) {
                            run.ack_latency.lock().unwrap_or_else(|e| e.into_inner()).record(intended, Instant::now());
                            run.counters.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Packet::PubRec(rec)) => {
                    let _ = connection.send(&Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(rec.pkid))).await;
                }
                Ok(Packet::PubComp(comp)) => {
                    if let Some(at) = waiting.iter().position(|(p, _)| *p == comp.pkid) {
                        if let Some((_, intended)) = waiting.remove(at) {
                            run.ack_latency.lock().unwrap_or_else(|e| e.into_inner()).record(intended, Instant::now());
                            run.counters.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Packet::Publish(publish)) => {
                    if behaviour.downlink_commands {
                        record_announcement(&run, &publish.payload);
                    } else {
                        run.record_stamp(&publish.payload);
                    }
                    match publish.qos {
                        QoS::AtLeastOnce => {
                            let _ = connection.send(&Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(publish.pkid))).await;
                        }
                        QoS::ExactlyOnce => {
                            let _ = connection.send(&Packet::PubRec(rumqttc::mqttbytes::v4::PubRec::new(publish.pkid))).await;
                        }
                        QoS::AtMostOnce => {}
                    }
                }
                Ok(Packet::PubRel(rel)) => {
                    let _ = connection.send(&Packet::PubComp(rumqttc::mqttbytes::v4::PubComp::new(rel.pkid))).await;
                }
                Ok(_) => {}
                Err(error) => {
                    if Instant::now() < behaviour.until {
                        run.error("connection", &error);
                    }
                    return;
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now >= behaviour.until {
                    break;
                }
                if let (Some(intended), Some((topic, qos, size, _))) = (next_publish, &publishing) {
                    if now >= intended {
                        let payload = if behaviour.scan_results {
                            scan_result(run.to_unix_micros(intended), seq)
                        } else {
                            run.stamped_payload(intended, seq, *size)
                        };
                        let id = if *qos == QoS::AtMostOnce { 0 } else {
                            pkid = pkid.checked_add(1).filter(|p| *p != 0).unwrap_or(1);
                            waiting.push_back((pkid, intended));
                            pkid
                        };
                        if let Err(error) = connection.publish(topic, *qos, id, payload).await {
                            run.error("publish", &error);
                            return;
                        }
                        run.counters.published.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                        next_ping = now + keepalive / 2; // any packet counts as activity
                        continue;
                    }
                }
                if now >= next_ping {
                    if let Err(error) = connection.send(&Packet::PingReq).await {
                        run.error("ping", &error);
                        return;
                    }
                    next_ping = now + keepalive / 2;
                }
            }
        }
    }
    connection.disconnect().await;
}

/// A valid WeChat Pay scan whose scan id carries the intended send time.
fn scan_result(intended_unix_micros: u64, seq: u64) -> Bytes {
    use herald_schemas::Message as _;
    let scan = herald_schemas::v1::ScanResult {
        code: "134567890123456789".into(),
        scanned_at_ms: (intended_unix_micros / 1000) as i64,
        scan_id: format!("lt-{intended_unix_micros}-{seq}"),
    };
    scan.encode_to_vec().into()
}

/// Parses `lt-<Unix µs>-<seq>` ids.
pub fn stamp_of(id: &str) -> Option<u64> {
    id.strip_prefix("lt-")?.split('-').next()?.parse().ok()
}

/// Announce scenario: a speaker got a DownlinkCommand whose command id is
/// `lt-<intended Unix µs>-<seq>`.
fn record_announcement(run: &Run, payload: &[u8]) {
    use herald_schemas::Message as _;
    let Ok(command) = herald_schemas::v1::DownlinkCommand::decode(payload) else {
        return;
    };
    if let Some(sent) = stamp_of(&command.command_id) {
        run.record_e2e_since(sent);
    }
}

/// Starts `count` clients on the connect schedule and waits for them all.
pub async fn run_clients(
    run: &Arc<Run>,
    behaviour: Behaviour,
    start: Instant,
    publish_start: Instant,
) {
    let behaviour = Arc::new(behaviour);
    let schedule = run.connect_schedule(start);
    let mut tasks = JoinSet::new();
    for index in 0..run.clients.count {
        tasks.spawn(client(
            run.clone(),
            index,
            schedule.intended(u64::from(index)),
            publish_start,
            behaviour.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}
