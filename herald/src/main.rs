//! The `herald` command: runs the server, and helps provision devices.

mod config;
mod http;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use config::{HeraldConfig, LogFormat};
use herald_bridge::{
    DownlinkBridge, KafkaHealth, KafkaPresence, KafkaUplinkSink, PresenceFollower, PresenceView,
};
use herald_broker::{Broker, BrokerHooks};
use std::path::PathBuf;
use std::sync::Arc;

/// jemalloc, as Vector and TiKV use: a million small per-connection
/// allocations of a few sizes are what Herald holds, and jemalloc's size
/// classes keep them closer together than glibc's malloc (memory per
/// session in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "herald",
    version = herald_build_info::VERSION,
    about = "MQTT broker and Kafka bridge for payment terminals"
)]
struct Cli {
    /// Configuration file (TOML). Environment variables HERALD_<SECTION>__<KEY> override it.
    #[arg(short, long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker and the Kafka bridge.
    Run,
    /// Check the configuration and print it with every default filled in.
    CheckConfig,
    /// Print a device's provisioning secret and a password valid now.
    Credentials {
        /// The device id (also its MQTT client id).
        device_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = CredentialFormat::Text)]
        format: CredentialFormat,
    },
    /// Generate a new random fleet key (base64).
    FleetKey,
}

#[derive(Clone, Copy, ValueEnum)]
enum CredentialFormat {
    /// Human-readable, with a mosquitto_pub example.
    Text,
    /// Shell variable assignments: HERALD_DEVICE_ID, HERALD_DEVICE_SECRET, HERALD_PASSWORD.
    Env,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::FleetKey => {
            use base64::Engine as _;
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| anyhow::anyhow!("no system randomness"))?;
            println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
            Ok(())
        }
        Command::CheckConfig => {
            let mut config = HeraldConfig::load(cli.config.as_deref())?;
            if config.broker.auth.fleet_key.is_some() {
                config.broker.auth.fleet_key = Some("<redacted>".into());
            }
            println!("{config:#?}");
            println!("configuration is valid");
            Ok(())
        }
        Command::Credentials { device_id, format } => {
            let config = HeraldConfig::load(cli.config.as_deref())?;
            print_credentials(&config, &device_id, format)
        }
        Command::Run => {
            let config = HeraldConfig::load(cli.config.as_deref())?;
            init_tracing(&config.log);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?
                .block_on(run(config))
        }
    }
}

fn init_tracing(log: &config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: HeraldConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    herald_build_info::register(&registry)?;
    tracing::info!(version = herald_build_info::VERSION, "starting Herald");

    // One set of librdkafka statistics metrics, labelled by client.
    let kafka_stats = herald_kafka::stats::KafkaStatsMetrics::register(&registry)?;
    let sink = Arc::new(
        KafkaUplinkSink::new(
            &config.kafka,
            config.broker.max_packet_size,
            &kafka_stats,
            &registry,
        )
        .context("cannot create the Kafka producer")?,
    );
    let kafka_health = KafkaHealth::spawn(
        sink.producer().clone(),
        config.kafka.healthcheck_interval,
        &registry,
        shutdown.clone(),
    )?;
    // Where every device is, cluster-wide; filled from the presence topic.
    let view = Arc::new(PresenceView::new(&config.kafka.cluster.node_id()));
    let presence = Arc::new(
        KafkaPresence::new(&config.kafka, view.clone(), &kafka_stats, &registry)
            .context("cannot create the Kafka presence producer")?,
    );
    let hooks = BrokerHooks {
        uplinks: sink.clone(),
        session_events: presence.clone(),
    };
    let broker = Broker::start(config.broker.clone(), hooks, &registry, shutdown.clone()).await?;
    let drain = broker.drain_trigger();
    let follower = if config.kafka.presence.enabled {
        Some(
            PresenceFollower::new(
                &config.kafka,
                view.clone(),
                broker.handle(),
                presence.clone(),
                &kafka_stats,
                &registry,
            )
            .context("cannot create the Kafka presence consumer")?,
        )
    } else {
        None
    };
    {
        // In the background: an unreachable Kafka must not delay the listeners.
        let (kafka, view, shutdown) = (config.kafka.clone(), view.clone(), shutdown.clone());
        tokio::spawn(async move {
            herald_bridge::ensure_topics(&kafka, Duration::from_secs(120)).await;
            match follower {
                Some(follower) => follower.run(shutdown).await,
                // Without presence, every device counts as this node's.
                None => view.set_ready(),
            }
        });
    }
    let downlinks = DownlinkBridge::new(
        &config.kafka,
        &config.broker.auth.topic_prefix,
        broker.handle(),
        view.clone(),
        &kafka_stats,
        &registry,
    )
    .context("cannot create the Kafka downlink consumer")?;
    let receipts = downlinks.receipts_flusher();
    let downlink_task = tokio::spawn(downlinks.run(drain.clone(), shutdown.clone()));
    let http = http::serve(
        config.http.listen,
        registry,
        kafka_health,
        view,
        drain.clone(),
        shutdown.clone(),
    )
    .await?;

    tokio::spawn(wait_for_signal(drain));
    // A drain (SIGTERM) ends here once every connection closed, or after
    // drain_period + shutdown_grace; then `shutdown` stops everything else.
    broker.wait().await;
    exit_if_stuck(config.broker.shutdown_grace + Duration::from_secs(30));
    let _ = downlink_task.await;
    tracing::info!("flushing the Kafka producers");
    let flusher = sink.clone();
    tokio::task::spawn_blocking(move || {
        flusher.flush(Duration::from_secs(10));
        presence.flush(Duration::from_secs(5));
        if let Some(receipts) = receipts {
            receipts.flush(Duration::from_secs(5));
        }
    })
    .await?;
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

/// The rest of a shutdown (downlink commits, producer flushes, closing
/// the Kafka clients) is bounded: librdkafka can block for good while
/// closing a consumer whose group coordinator does not answer, and a pod
/// must not hang until Kubernetes kills it. After `limit`, the process exits.
fn exit_if_stuck(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            ?limit,
            "shutdown did not finish (Kafka clients not closing); exiting"
        );
        std::process::exit(1);
    });
}

/// SIGTERM or Ctrl-C starts the drain (docs/operations.md, "Shutdown").
async fn wait_for_signal(drain: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested; draining");
    drain.cancel();
}

fn print_credentials(
    config: &HeraldConfig,
    device_id: &str,
    format: CredentialFormat,
) -> anyhow::Result<()> {
    herald_identity::validate_device_id(device_id)
        .map_err(|e| anyhow::anyhow!("{device_id:?}: {e}"))?;
    let auth = &config.broker.auth;
    let key = auth.fleet_key_bytes()?;
    let secret = herald_identity::FleetKey::new(&key).device_secret(device_id);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let password = secret.password(device_id, now);
    let prefix = &auth.topic_prefix;
    match format {
        CredentialFormat::Env => {
            println!("HERALD_DEVICE_ID={device_id}");
            println!("HERALD_DEVICE_SECRET={}", secret.to_base64());
            println!("HERALD_PASSWORD={password}");
        }
        CredentialFormat::Text => {
            let window = humantime::format_duration(auth.password_window);
            println!("device id / MQTT client id / username: {device_id}");
            println!(
                "device secret (provision into the device): {}",
                secret.to_base64()
            );
            println!("MQTT password (valid for {window} around now): {password}");
            println!("uplink namespace:   {prefix}/{device_id}/up/...");
            println!("downlink namespace: {prefix}/{device_id}/down/...");
            println!();
            println!("mosquitto_pub -h 127.0.0.1 -p {} -q 1 -i {device_id} -u {device_id} -P '{password}' -t {prefix}/{device_id}/up/scan -m 'hello'", config.broker.listen.port());
        }
    }
    Ok(())
}
