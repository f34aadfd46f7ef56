//! Runs a fleet of lean clients: connects them on an open-loop schedule,
//! lets each publish, subscribe or idle (lifecycle.rs), and gathers
//! counters, latencies and the run's loss ledger.

use crate::accounting::{DownlinkLedger, UplinkLedger};
use crate::brokers::Brokers;
use crate::cli::{Clients, Target};
use crate::client::{ConnectOptions, Connection, SourceAddresses};
use crate::impairment::Stall;
use crate::lifecycle::{client, Behaviour};
use crate::message_id::RunTag;
use crate::schedule::{Latencies, Schedule};
use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use indicatif::{ProgressBar, ProgressStyle};
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
    /// Connections lost while the terminal meant to stay.
    pub disconnects: AtomicU64,
    /// Connections re-established after a loss (or after a failed first connect).
    pub reconnects: AtomicU64,
    /// Reconnect attempts that failed (refused, timed out, CONNACK refused).
    pub reconnect_failures: AtomicU64,
    /// Reconnects whose CONNACK said session present.
    pub sessions_resumed: AtomicU64,
    /// PUBLISHes (and PUBRELs) sent again after a reconnect.
    pub retransmitted: AtomicU64,
    /// Messages scheduled in the publishing phase but never sent.
    pub not_sent: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Shared state of a run.
pub struct Run {
    /// The broker addresses of `-h`, which clients spread over (brokers.rs).
    pub brokers: Brokers,
    pub sources: SourceAddresses,
    pub target: Target,
    pub clients: Clients,
    pub fleet_key: Option<herald_identity::FleetKey>,
    pub counters: Counters,
    pub connect_latency: Mutex<Latencies>,
    pub ack_latency: Mutex<Latencies>,
    pub e2e_latency: Mutex<Latencies>,
    /// From a connection loss to the next CONNACK.
    pub reconnect_latency: Mutex<Latencies>,
    /// The tag of this run's message ids.
    pub run_tag: RunTag,
    pub uplinks: Mutex<UplinkLedger>,
    pub downlinks: Mutex<DownlinkLedger>,
    /// What each stalled client saw (impairment.rs).
    pub stalls: Mutex<Vec<Stall>>,
    /// A fixed pair of clocks, so payload timestamps (Unix µs) and
    /// `Instant`s convert into each other.
    epoch: (Instant, u64),
    first_error: Mutex<Option<String>>,
}

/// How long the connect phase of `clients` lasts at its rate.
pub fn connect_phase(clients: &Clients) -> Duration {
    Duration::from_secs_f64(f64::from(clients.count) / clients.connect_rate())
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
        let brokers = Brokers::resolve(&target.host, target.port).await?;
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
            brokers,
            sources: SourceAddresses::new(target.ifaddr.clone()),
            target: target.clone(),
            clients: clients.clone(),
            fleet_key,
            counters: Counters::default(),
            connect_latency: Mutex::default(),
            ack_latency: Mutex::default(),
            e2e_latency: Mutex::default(),
            reconnect_latency: Mutex::default(),
            run_tag: RunTag::new(),
            uplinks: Mutex::default(),
            downlinks: Mutex::default(),
            stalls: Mutex::default(),
            epoch: (Instant::now(), unix_micros()),
            first_error: Mutex::default(),
        }))
    }

    pub fn to_unix_micros(&self, at: Instant) -> u64 {
        let (instant, unix) = self.epoch;
        unix + at.saturating_duration_since(instant).as_micros() as u64
    }

    pub fn connect_options(&self, index: u32, clean_session: bool) -> ConnectOptions {
        self.connect_options_as(self.clients.client_id(index), clean_session)
    }

    /// CONNECT settings for any client id (a scenario's extra clients).
    pub fn connect_options_as(&self, client_id: String, clean_session: bool) -> ConnectOptions {
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
            clean_session,
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

    /// The broker address (an index into [`Run::brokers`]) client `index`
    /// connects to first.
    pub fn first_node(&self, index: u32) -> usize {
        self.brokers
            .for_terminal(self.clients.start_number.wrapping_add(index))
    }

    /// Opens a connection for client `index` to its first node: TCP,
    /// CONNECT, CONNACK.
    pub async fn open(&self, index: u32, clean_session: bool) -> anyhow::Result<Connection> {
        self.open_on(
            self.first_node(index),
            &self.clients.client_id(index),
            clean_session,
        )
        .await
    }

    /// Opens a connection for any client id, to the node its id hashes to.
    pub async fn open_as(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> anyhow::Result<Connection> {
        self.open_on(
            self.brokers.for_client_id(client_id),
            client_id,
            clean_session,
        )
        .await
    }

    /// Opens a connection for `client_id` to broker address `node`.
    pub async fn open_on(
        &self,
        node: usize,
        client_id: &str,
        clean_session: bool,
    ) -> anyhow::Result<Connection> {
        let stream = self.sources.connect(self.brokers.address(node)).await?;
        Connection::open(
            stream,
            &self.connect_options_as(client_id.to_string(), clean_session),
            Duration::from_secs(30),
        )
        .await
    }

    /// Connects client `index` (clean session) at its intended time; records
    /// the connect latency.
    pub async fn connect(&self, index: u32, intended: Instant) -> Option<Connection> {
        self.connect_on(self.first_node(index), index, intended, true)
            .await
    }

    /// [`Run::connect`] to broker address `node`, with a choice of clean or
    /// persistent session.
    pub async fn connect_on(
        &self,
        node: usize,
        index: u32,
        intended: Instant,
        clean_session: bool,
    ) -> Option<Connection> {
        tokio::time::sleep_until(intended.into()).await;
        match self
            .open_on(node, &self.clients.client_id(index), clean_session)
            .await
        {
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
                    "failed {} | pub {} ({}/s) | acked {} | recv {} | reconnects {} | errors {}",
                    Counters::get(&c.connect_failed),
                    published,
                    published - last_published,
                    Counters::get(&c.acked),
                    Counters::get(&c.received),
                    Counters::get(&c.reconnects),
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
