//! `herald-consumers <service>`: runs one of Herald's stateless Kafka
//! services. Scale a service out by starting more instances: they share the
//! work as one consumer group.

use anyhow::Context as _;
use axum::routing::get;
use clap::Parser;
use herald_consumers::config::ConsumersConfig;
use herald_consumers::Service;
use prometheus::{Encoder, TextEncoder};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "herald-consumers",
    version = herald_build_info::VERSION,
    about = "Herald's stateless Kafka services"
)]
struct Cli {
    /// Which service to run.
    #[arg(value_enum)]
    service: Service,
    /// Configuration file (TOML); HERALD_CONSUMERS_<SECTION>__<KEY> variables override it.
    #[arg(short, long, env = "HERALD_CONSUMERS_CONFIG")]
    config: Option<PathBuf>,
}

/// What `HERALD_CONSUMERS_<KEY>` variables may set: a section (followed by
/// `__` and its field) or a top-level key.
const KEYS: &[&str] = &[
    "kafka",
    "announcer",
    "print_dispatcher",
    "scan_processor",
    "dedup",
    "http_listen",
];

fn load(path: Option<&std::path::Path>) -> anyhow::Result<ConsumersConfig> {
    let config: ConsumersConfig = herald_kafka::layered::load(path, "HERALD_CONSUMERS_", KEYS)?;
    config
        .announcer
        .templates
        .validate()
        .context("invalid configuration `announcer.templates`")?;
    herald_consumers::pipeline::validate(&config.kafka)?;
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = load(cli.config.as_deref())?;
    let registry = prometheus::Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    herald_build_info::register(&registry)?;
    let shutdown = CancellationToken::new();

    let listen = config
        .http_listen
        .unwrap_or_else(|| ([0, 0, 0, 0], 9091).into());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (http_listen)"))?;
    let metrics_registry = registry.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = metrics_registry.clone();
                async move {
                    let mut body = Vec::new();
                    let _ = TextEncoder::new().encode(&registry.gather(), &mut body);
                    body
                }
            }),
        );
    let http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await;
    });

    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        signal_shutdown.cancel();
    });
    herald_consumers::run(cli.service, &config, &registry, shutdown).await?;
    Ok(())
}
