//! HTTP endpoints for operators: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (the MQTT listener is up,
//! Kafka is reachable, the presence view has been replayed, and the node is
//! not draining).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use herald_bridge::{KafkaHealth, PresenceView};
use prometheus::{Encoder, TextEncoder};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Probe {
    registry: prometheus::Registry,
    kafka: KafkaHealth,
    view: Arc<PresenceView>,
    draining: CancellationToken,
}

/// Binds the HTTP listener and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    registry: prometheus::Registry,
    kafka: KafkaHealth,
    view: Arc<PresenceView>,
    draining: CancellationToken,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP listener up (/metrics, /healthz, /readyz)");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Probe {
            registry,
            kafka,
            view,
            draining,
        });
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    }))
}

async fn metrics(State(probe): State<Probe>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&probe.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// The MQTT listener is bound before this server starts, so readiness
/// depends on Kafka and on the drain: a draining node turns unready first,
/// so the load balancer sends no new connections to it.
async fn ready(State(probe): State<Probe>) -> impl IntoResponse {
    if probe.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !probe.kafka.is_reachable() {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable\n")
    } else if !probe.view.is_ready() {
        // Commands cannot be routed before the node knows where devices are.
        (StatusCode::SERVICE_UNAVAILABLE, "replaying presence\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
