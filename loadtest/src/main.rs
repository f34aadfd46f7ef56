//! `herald-loadtest`: simulated terminal fleets against Herald or any MQTT broker.
//!
//! `fleet` connects N terminals at a fixed rate (open loop: connects start on
//! schedule whether or not earlier ones finished), keeps them idle with
//! keepalive pings, and reports connect latency, failures and, given the
//! broker's pid, the broker's resident memory per session.
//!
//! Each simulated terminal is a raw TCP socket and a small task: no MQTT
//! client-library object per idle terminal.

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::mqttbytes::v4::{self, Packet};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Simulate payment-terminal fleets against an MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect a fleet of idle terminals and measure connects and memory per session.
    Fleet(FleetArgs),
}

#[derive(Args, Clone)]
struct FleetArgs {
    /// Broker host.
    #[arg(short = 'H', long = "host", default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short, long, default_value_t = 1883)]
    port: u16,
    /// Number of terminals.
    #[arg(short = 'c', long, default_value_t = 1000)]
    clients: u32,
    /// Connects started per second (open loop).
    #[arg(short = 'r', long, default_value_t = 1000)]
    rate: u32,
    /// Client id template: %i is the terminal's index.
    #[arg(long, default_value = "lt-%i")]
    client_id: String,
    /// Fleet key (base64): sign device passwords as Herald expects. Without it,
    /// terminals connect without credentials.
    #[arg(long, env = "HERALD_FLEET_KEY")]
    fleet_key: Option<String>,
    /// MQTT keepalive in seconds.
    #[arg(short = 'k', long, default_value_t = 60)]
    keepalive: u16,
    /// How long to hold the fleet after the last connect, in seconds.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Pid of the broker, to report its resident memory per session (Linux /proc).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct FleetReport {
    clients: u32,
    connected: u64,
    failed: u64,
    target_rate: u32,
    achieved_connects_per_sec: f64,
    connect_latency_us: Percentiles,
    broker_rss_before_kib: Option<u64>,
    broker_rss_after_kib: Option<u64>,
    broker_rss_per_session_bytes: Option<f64>,
}

#[derive(Serialize)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Raises the open-file limit as far as allowed and says clearly when the
/// fleet cannot fit.
fn check_fd_limit(needed: u64) -> anyhow::Result<()> {
    let wanted = needed + 64;
    let raised = rlimit::increase_nofile_limit(wanted).context("raising the open-file limit")?;
    if raised < wanted {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        bail!("{needed} terminals need {wanted} open files but this process may open {raised} (hard limit {hard}); lower -c or raise the limit");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fleet(args) => fleet(args).await,
    }
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    check_fd_limit(u64::from(args.clients))?;
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await?
        .next()
        .context("broker host does not resolve")?;
    let fleet_key = match &args.fleet_key {
        Some(text) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .context("--fleet-key is not base64")?;
            Some(herald_identity::FleetKey::new(&bytes))
        }
        None => None,
    };
    let rss_before = args.broker_pid.map(rss_kib).transpose()?;
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = ProgressBar::new(u64::from(args.clients));
    progress.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} connected {msg}",
    )?);

    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients {
        // Open loop: terminal i starts at started + i * interval, and its
        // latency counts from that intended time.
        let intended = started + interval * i;
        tokio::time::sleep_until(intended.into()).await;
        let client_id = args.client_id.replace("%i", &i.to_string());
        let password = fleet_key.as_ref().map(|key| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            key.device_secret(&client_id).password(&client_id, now)
        });
        let (latency, connected, failed, progress) = (
            latency.clone(),
            connected.clone(),
            failed.clone(),
            progress.clone(),
        );
        let keepalive = args.keepalive;
        tasks.push(tokio::spawn(async move {
            match terminal_connect(addr, &client_id, password, keepalive).await {
                Ok(stream) => {
                    let micros = intended.elapsed().as_micros() as u64;
                    let _ = latency
                        .lock()
                        .map(|mut h| h.saturating_record(micros.max(1)));
                    connected.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    Some(stream)
                }
                Err(error) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        progress.println(format!("{client_id}: {error:#}"));
                    }
                    progress.set_message(format!("failed {}", failed.load(Ordering::Relaxed)));
                    None
                }
            }
        }));
    }
    let mut streams = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Some(stream) = task.await? {
            streams.push(stream);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    progress.finish();
    // Hold the fleet idle; keep the sessions alive with PINGREQs.
    let keepalive = Duration::from_secs(u64::from(args.keepalive.max(1)));
    let hold_until = Instant::now() + Duration::from_secs(args.hold);
    let holders: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                while Instant::now() + keepalive / 2 < hold_until {
                    tokio::time::sleep(keepalive / 2).await;
                    if stream.write_all(&[0xC0, 0x00]).await.is_err() {
                        return;
                    }
                    let mut pong = [0u8; 2];
                    if stream.read_exact(&mut pong).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep_until(hold_until.into()).await;
                drop(stream);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.hold.min(5))).await;
    let rss_after = args.broker_pid.map(rss_kib).transpose()?;
    for holder in holders {
        holder.await?;
    }
    let connected = connected.load(Ordering::Relaxed);
    let histogram = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let report = FleetReport {
        clients: args.clients,
        connected,
        failed: failed.load(Ordering::Relaxed),
        target_rate: args.rate,
        achieved_connects_per_sec: connected as f64 / connect_secs,
        connect_latency_us: Percentiles::of(&histogram),
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_rss_per_session_bytes: match (rss_before, rss_after) {
            (Some(before), Some(after)) if connected > 0 => {
                Some((after.saturating_sub(before) * 1024) as f64 / connected as f64)
            }
            _ => None,
        },
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Opens one terminal's MQTT 3.1.1 session; returns the socket after CONNACK.
async fn terminal_connect(
    addr: SocketAddr,
    client_id: &str,
    password: Option<String>,
    keepalive: u16,
) -> anyhow::Result<TcpStream> {
    let mut stream = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = keepalive;
    connect.clean_session = true;
    if let Some(password) = password {
        connect.set_login(client_id, password);
    }
    let mut buf = BytesMut::new();
    Packet::Connect(connect).write(&mut buf, usize::MAX)?;
    stream.write_all(&buf).await?;
    let mut reply = BytesMut::with_capacity(8);
    loop {
        if tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut reply))
            .await
            .context("CONNACK timed out")??
            == 0
        {
            bail!("connection closed before CONNACK");
        }
        match Packet::read(&mut reply, 1024) {
            Ok(Packet::ConnAck(ack)) if ack.code == v4::ConnectReturnCode::Success => {
                return Ok(stream)
            }
            Ok(Packet::ConnAck(ack)) => bail!("refused: {:?}", ack.code),
            Ok(other) => bail!("expected CONNACK, got {other:?}"),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => continue,
            Err(e) => bail!("bad CONNACK: {e}"),
        }
    }
}
