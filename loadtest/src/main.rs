//! `herald-loadtest`: simulated terminal fleets against Herald or any MQTT
//! broker. See `herald-loadtest --help` and docs/benchmarks.md.

use anyhow::Context as _;
use clap::Parser;
use herald_loadtest::cli::{Cli, Command, ConnArgs, PubArgs, StormArgs, SubArgs};
use herald_loadtest::engine::{self, connect_phase, Run};
use herald_loadtest::lifecycle::{Behaviour, Firmware};
use herald_loadtest::report::{self, Report};
use herald_loadtest::schedule::Latencies;
use rumqttc::mqttbytes::QoS;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code of a run that measured loss (acknowledged uplinks missing from
/// Kafka, downlink commands lost, acknowledged fan-in messages the
/// subscriber never got); errors of the tool itself exit with 1.
const EXIT_LOSS: i32 = 2;

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Conn(args) => conn("conn", args).await,
        Command::Fleet(args) => {
            conn(
                "fleet",
                ConnArgs {
                    target: args.target,
                    clients: args.clients,
                    hold: args.hold,
                    broker_pid: args.broker_pid,
                },
            )
            .await
        }
        Command::Sub(args) => sub(args).await,
        Command::Pub(args) => publish(args).await,
        Command::Uplink(args) => {
            gate_on_loss(herald_loadtest::uplink::run(&args).await?, &args.target)
        }
        Command::Announce(args) => gate_on_loss(
            herald_loadtest::downlink::announce(&args).await?,
            &args.target,
        ),
        Command::Downlink(args) => gate_on_loss(
            herald_loadtest::downlink::downlink(&args).await?,
            &args.target,
        ),
        Command::Fanin(args) => {
            gate_on_loss(herald_loadtest::fanin::run(&args).await?, &args.target)
        }
        Command::Storm(args) => storm(args).await,
        Command::PresenceFill(args) => {
            herald_loadtest::presence_fill::run(&args).await?;
            Ok(())
        }
        Command::Plot(args) => {
            let mut reports = Vec::new();
            for path in &args.reports {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let report: Report = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let label = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                reports.push((label, report));
            }
            report::plot(&reports, &args.output, &args.title)?;
            eprintln!("wrote {}", args.output.display());
            Ok(())
        }
    }
}

/// Emits the report; exits with [`EXIT_LOSS`], saying why, if it measured loss.
fn gate_on_loss(report: Report, target: &herald_loadtest::cli::Target) -> anyhow::Result<()> {
    report.emit(target)?;
    let losses = report.losses();
    if losses.is_empty() {
        return Ok(());
    }
    for loss in &losses {
        eprintln!("LOSS: {loss}");
    }
    std::process::exit(EXIT_LOSS);
}

/// A lean (benchmark) client's behaviour: no reconnects, no window.
fn lean(
    subscribe: Option<(String, QoS)>,
    publish: Option<(String, QoS, usize, f64)>,
    until: Instant,
) -> Behaviour {
    Behaviour {
        subscribe,
        publish,
        downlink_commands: false,
        scan_results: false,
        until,
        drain: Duration::ZERO,
        leave: None,
        firmware: Firmware::lean(),
        impairments: Default::default(),
    }
}

/// `conn` and `fleet`: connect, hold idle with keepalive, measure memory.
async fn conn(scenario: &str, args: ConnArgs) -> anyhow::Result<()> {
    let run = Run::new(&args.target, &args.clients).await?;
    let rss_before = args.broker_pid.map(rss_kib).transpose()?;
    let start = Instant::now();
    let connect_time = connect_phase(&args.clients);
    let until = start + connect_time + Duration::from_secs(args.hold);
    let behaviour = lean(None, None, until);
    let progress = run.progress(u64::from(args.clients.count));
    let clients = {
        let run = run.clone();
        tokio::spawn(async move { engine::run_clients(&run, behaviour, start, until).await })
    };
    // Memory is read while the whole fleet is connected and idle.
    tokio::time::sleep_until((start + connect_time + Duration::from_secs(args.hold.min(5))).into())
        .await;
    let rss_after = args.broker_pid.map(rss_kib).transpose()?;
    let connected_by = run
        .counters
        .connected
        .load(std::sync::atomic::Ordering::Relaxed);
    clients.await?;
    drop(progress);
    let mut report = Report::new(
        scenario,
        &run,
        None,
        connect_time,
        Duration::from_secs(args.hold),
    );
    report.broker_rss_before_kib = rss_before;
    report.broker_rss_after_kib = rss_after;
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        if connected_by > 0 {
            report.broker_rss_per_connection_bytes =
                Some((after.saturating_sub(before) * 1024) as f64 / connected_by as f64);
        }
    }
    report.emit(&args.target)
}

async fn sub(args: SubArgs) -> anyhow::Result<()> {
    let run = Run::new(&args.target, &args.clients).await?;
    let start = Instant::now();
    let until = start + connect_phase(&args.clients) + Duration::from_secs(args.duration);
    let behaviour = lean(Some((args.topic.clone(), qos(args.qos))), None, until);
    let _progress = run.progress(u64::from(args.clients.count));
    engine::run_clients(&run, behaviour, start, until).await;
    Report::new(
        "sub",
        &run,
        None,
        connect_phase(&args.clients),
        Duration::from_secs(args.duration),
    )
    .emit(&args.target)
}

async fn publish(args: PubArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size >= 16,
        "-s must be at least 16 bytes (send time and sequence number)"
    );
    let run = Run::new(&args.target, &args.clients).await?;
    let start = Instant::now();
    // Publishing starts once every client had time to connect.
    let publish_start = start + connect_phase(&args.clients) + Duration::from_secs(1);
    let until = publish_start + Duration::from_secs(args.duration);
    let behaviour = lean(
        args.subscribe.clone().map(|filter| (filter, qos(args.qos))),
        Some((args.topic.clone(), qos(args.qos), args.size, args.rate)),
        until,
    );
    let _progress = run.progress(u64::from(args.clients.count));
    engine::run_clients(&run, behaviour, start, publish_start).await;
    Report::new(
        "pub",
        &run,
        Some(args.rate),
        connect_phase(&args.clients),
        Duration::from_secs(args.duration),
    )
    .emit(&args.target)
}

/// Connect the fleet, hold, then drop every connection at once and
/// reconnect all: reconnect latency counts from the moment of the storm.
async fn storm(args: StormArgs) -> anyhow::Result<()> {
    let run = Run::new(&args.target, &args.clients).await?;
    let progress = run.progress(u64::from(args.clients.count));
    let start = Instant::now();
    let schedule = run.connect_schedule(start);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients.count {
        let run = run.clone();
        let at = schedule.intended(u64::from(index));
        tasks.spawn(async move { (index, run.connect(index, at).await) });
    }
    let mut connections = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let (index, Some(connection)) = joined? {
            connections.push((index, connection));
        }
    }
    let connect_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;

    let storm_at = Instant::now();
    let reconnect = Arc::new(std::sync::Mutex::new(Latencies::default()));
    let dropped = connections.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, connection) in connections {
        connection.drop_connection();
        let (run, reconnect) = (run.clone(), reconnect.clone());
        tasks.spawn(async move {
            if let Some(connection) = run.connect(index, storm_at).await {
                reconnect
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(storm_at, Instant::now());
                connection.disconnect().await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let storm_time = storm_at.elapsed();
    drop(progress);
    let mut report = Report::new("storm", &run, None, connect_time, storm_time);
    report.add_series(
        "reconnect",
        &reconnect.lock().unwrap_or_else(|e| e.into_inner()),
    );
    eprintln!("storm: {dropped} connections dropped at once, all back in {storm_time:?}");
    report.emit(&args.target)
}
