//! Kafka reachability, checked in the background for `/readyz`.

use crate::producer::HeraldProducer;
use prometheus::{IntGauge, Registry};
use rdkafka::producer::Producer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether the last metadata request to Kafka succeeded.
#[derive(Clone)]
pub struct KafkaHealth {
    reachable: Arc<AtomicBool>,
}

impl KafkaHealth {
    /// Starts checking every `interval` with a metadata request on `producer`'s connection.
    pub fn spawn(
        producer: HeraldProducer,
        interval: Duration,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> Result<Self, prometheus::Error> {
        let gauge = IntGauge::new(
            "herald_kafka_reachable",
            "1 when the last Kafka metadata request succeeded.",
        )?;
        registry.register(Box::new(gauge.clone()))?;
        let reachable = Arc::new(AtomicBool::new(false));
        let flag = reachable.clone();
        tokio::spawn(async move {
            loop {
                let client = producer.clone();
                let timeout = interval.max(Duration::from_secs(1));
                let ok = tokio::task::spawn_blocking(move || {
                    client.client().fetch_metadata(None, timeout).is_ok()
                })
                .await
                .unwrap_or(false);
                if flag.swap(ok, Ordering::Relaxed) != ok {
                    if ok {
                        tracing::info!("Kafka is reachable");
                    } else {
                        tracing::warn!("Kafka is not reachable");
                    }
                }
                gauge.set(i64::from(ok));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        Ok(Self { reachable })
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}
