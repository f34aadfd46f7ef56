//! `herald-loadtest`: simulated terminal fleets against Herald or any MQTT
//! broker. See `herald-loadtest --help` and docs/benchmarks.md.

use anyhow::Context as _;
use clap::Parser;
use herald_loadtest::cli::{
    AnnounceArgs, Cli, Clients, Command, ConnArgs, PubArgs, StormArgs, SubArgs, UplinkArgs,
};
use herald_loadtest::engine::{self, Behaviour, Run};
use herald_loadtest::report::{self, Report};
use herald_loadtest::schedule::{Latencies, Schedule};
use rumqttc::mqttbytes::QoS;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long the connect phase of `clients` lasts at its rate.
fn connect_phase(clients: &Clients) -> Duration {
    Duration::from_secs_f64(f64::from(clients.count) / clients.connect_rate())
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
        Command::Uplink(args) => uplink(args).await,
        Command::Announce(args) => announce(args).await,
        Command::Storm(args) => storm(args).await,
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

/// `conn` and `fleet`: connect, hold idle with keepalive, measure memory.
async fn conn(scenario: &str, args: ConnArgs) -> anyhow::Result<()> {
    let run = Run::new(&args.target, &args.clients).await?;
    let rss_before = args.broker_pid.map(rss_kib).transpose()?;
    let start = Instant::now();
    let connect_time = connect_phase(&args.clients);
    let until = start + connect_time + Duration::from_secs(args.hold);
    let behaviour = Behaviour {
        subscribe: None,
        publish: None,
        downlink_commands: false,
        scan_results: false,
        until,
    };
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
    report.emit(args.target.report.as_deref())
}

async fn sub(args: SubArgs) -> anyhow::Result<()> {
    let run = Run::new(&args.target, &args.clients).await?;
    let start = Instant::now();
    let until = start + connect_phase(&args.clients) + Duration::from_secs(args.duration);
    let behaviour = Behaviour {
        subscribe: Some((args.topic.clone(), qos(args.qos))),
        publish: None,
        downlink_commands: false,
        scan_results: false,
        until,
    };
    let _progress = run.progress(u64::from(args.clients.count));
    engine::run_clients(&run, behaviour, start, until).await;
    Report::new(
        "sub",
        &run,
        None,
        connect_phase(&args.clients),
        Duration::from_secs(args.duration),
    )
    .emit(args.target.report.as_deref())
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
    let behaviour = Behaviour {
        subscribe: args.subscribe.clone().map(|filter| (filter, qos(args.qos))),
        publish: Some((args.topic.clone(), qos(args.qos), args.size, args.rate)),
        downlink_commands: false,
        scan_results: false,
        until,
    };
    let _progress = run.progress(u64::from(args.clients.count));
    engine::run_clients(&run, behaviour, start, publish_start).await;
    Report::new(
        "pub",
        &run,
        Some(args.rate),
        connect_phase(&args.clients),
        Duration::from_secs(args.duration),
    )
    .emit(args.target.report.as_deref())
}

/// Terminals publish scans with QoS 1; a Kafka consumer in this process reads
/// them back (same clock) for the MQTT-to-Kafka latency.
async fn uplink(args: UplinkArgs) -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message as _;
    let run = Run::new(&args.target, &args.clients).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set(
            "group.id",
            format!("herald-loadtest-{}", std::process::id()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .create()
        .context("Kafka consumer")?;
    consumer.subscribe(&[&args.kafka_topic])?;
    let reader = {
        let run = run.clone();
        tokio::spawn(async move {
            use herald_schemas::Message as _;
            loop {
                let Ok(message) = consumer.recv().await else {
                    continue;
                };
                let Some(payload) = message.payload() else {
                    continue;
                };
                if let Ok(scan) = herald_schemas::v1::ScanResult::decode(payload) {
                    if let Some(sent) = engine::stamp_of(&scan.scan_id) {
                        run.record_e2e_since(sent);
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let publish_start = start + connect_phase(&args.clients) + Duration::from_secs(2);
    let until = publish_start + Duration::from_secs(args.duration);
    let behaviour = Behaviour {
        subscribe: None,
        publish: Some(("devices/%c/up/scan".into(), QoS::AtLeastOnce, 0, args.rate)),
        downlink_commands: false,
        scan_results: true,
        until,
    };
    let progress = run.progress(u64::from(args.clients.count));
    engine::run_clients(&run, behaviour, start, publish_start).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the last records reach the reader
    reader.abort();
    drop(progress);
    Report::new(
        "uplink",
        &run,
        Some(args.rate),
        connect_phase(&args.clients),
        Duration::from_secs(args.duration),
    )
    .emit(args.target.report.as_deref())
}

/// Speakers subscribe; payment events go to Kafka on schedule; latency is
/// from each event's intended production time to the speaker receiving the
/// announcement (Herald + announcer in between).
async fn announce(args: AnnounceArgs) -> anyhow::Result<()> {
    use herald_schemas::Message as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let run = Run::new(&args.target, &args.clients).await?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set("linger.ms", "1")
        .create()
        .context("Kafka producer")?;
    let start = Instant::now();
    let payments_start = start + connect_phase(&args.clients) + Duration::from_secs(2);
    let until = payments_start + Duration::from_secs(args.duration) + Duration::from_secs(5);
    let behaviour = Behaviour {
        subscribe: Some(("devices/%c/down/#".into(), QoS::AtLeastOnce)),
        publish: None,
        downlink_commands: true,
        scan_results: false,
        until,
    };
    let progress = run.progress(u64::from(args.clients.count));
    let speakers = {
        let run = run.clone();
        tokio::spawn(async move { engine::run_clients(&run, behaviour, start, until).await })
    };
    let schedule = Schedule::new(payments_start, args.rate, 1, 0);
    let total = (args.rate * args.duration as f64) as u64;
    for seq in 0..total {
        let intended = schedule.intended(seq);
        tokio::time::sleep_until(intended.into()).await;
        let speaker = args
            .clients
            .client_id((seq % u64::from(args.clients.count)) as u32);
        let sent = run.to_unix_micros(intended);
        let event = herald_schemas::v1::PaymentEvent {
            payment_id: format!("lt-{sent}-{seq}"),
            merchant_id: "loadtest".into(),
            device_id: speaker.clone(),
            amount_minor: 1250,
            currency: "CNY".into(),
            channel: herald_schemas::v1::PaymentChannel::Alipay as i32,
            locale: "zh-CN".into(),
            created_at_ms: (sent / 1000) as i64,
            expires_at_ms: 0,
        };
        let payload = event.encode_to_vec();
        match producer.send_result(
            FutureRecord::to(&args.payments_topic)
                .key(&speaker)
                .payload(&payload),
        ) {
            Ok(_) => {
                run.counters
                    .published
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err((error, _)) => run.error("produce", &anyhow::Error::new(error)),
        }
    }
    speakers.await?;
    drop(progress);
    Report::new(
        "announce",
        &run,
        Some(args.rate),
        connect_phase(&args.clients),
        Duration::from_secs(args.duration),
    )
    .emit(args.target.report.as_deref())
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
    report.emit(args.target.report.as_deref())
}
