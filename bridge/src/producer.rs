//! The uplink sink: MQTT publishes into Kafka, acknowledged by Kafka.

use crate::config::{KafkaConfig, RESERVED_PRODUCER_OPTIONS};
use crate::rules::TopicRules;
use crate::BridgeError;
use herald_broker::{Uplink, UplinkAck, UplinkError, UplinkSink};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::{Instant, UNIX_EPOCH};

/// Names of the Kafka headers Herald puts on every uplink record.
pub mod header {
    /// The device (MQTT client) id; also the record key.
    pub const DEVICE_ID: &str = "herald-device-id";
    /// The MQTT topic the device published to.
    pub const MQTT_TOPIC: &str = "herald-mqtt-topic";
    /// The MQTT QoS, `0`, `1` or `2`.
    pub const QOS: &str = "herald-qos";
    /// When Herald read the PUBLISH, milliseconds since the Unix epoch.
    pub const RECEIVED_AT: &str = "herald-received-at";
    /// Prefix of headers carrying MQTT 5 user properties.
    pub const USER_PROPERTY_PREFIX: &str = "mqtt-user-";
}

/// Produces device uplinks to Kafka.
pub struct KafkaUplinkSink {
    producer: FutureProducer,
    rules: TopicRules,
    produce_latency: Histogram,
    produced: IntCounterVec,
}

/// Builds the librdkafka producer configuration, refusing pass-through
/// options that would override what Herald guarantees.
pub(crate) fn producer_config(config: &KafkaConfig) -> Result<ClientConfig, BridgeError> {
    for (key, instead) in RESERVED_PRODUCER_OPTIONS {
        if config.producer_options.contains_key(*key) {
            return Err(BridgeError::Config {
                key: format!("kafka.producer_options.\"{key}\""),
                reason: format!("Herald sets this itself; use {instead}"),
            });
        }
    }
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", &config.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "2")
        // Small produce requests must not wait for TCP's delayed ACK: with
        // Nagle on, the uplink PUBACK p99 tripled (docs/benchmarks.md).
        .set("socket.nagle.disable", "true");
    for (key, value) in &config.producer_options {
        client.set(key, value);
    }
    Ok(client)
}

impl KafkaUplinkSink {
    pub fn new(config: &KafkaConfig, registry: &Registry) -> Result<Self, BridgeError> {
        let rules = TopicRules::compile(&config.uplink_rules)?;
        let producer: FutureProducer = producer_config(config)?.create()?;
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "herald_kafka_produce_duration_seconds",
                "Time from handing an uplink to the Kafka producer to Kafka's acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let produced = IntCounterVec::new(
            Opts::new(
                "herald_kafka_produced_total",
                "Uplink records produced to Kafka, by Kafka topic and result.",
            ),
            &["topic", "result"],
        )?;
        registry.register(Box::new(produce_latency.clone()))?;
        registry.register(Box::new(produced.clone()))?;
        Ok(Self {
            producer,
            rules,
            produce_latency,
            produced,
        })
    }

    /// Waits up to `timeout` for records still queued in the producer.
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "Kafka producer did not flush every record before shutdown");
        }
    }

    /// The producer, for components that share its connection (health checks).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

fn failure(error: KafkaError) -> UplinkError {
    match error {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => {
            UplinkError::Timeout(error.to_string())
        }
        other => UplinkError::Failed(other.to_string()),
    }
}

impl UplinkSink for KafkaUplinkSink {
    fn wants(&self, topic: &str) -> bool {
        self.rules.kafka_topic(topic).is_some()
    }

    fn submit(&self, uplink: Uplink) -> Option<UplinkAck> {
        let kafka_topic = self.rules.kafka_topic(&uplink.topic)?;
        let received_ms = uplink
            .received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let qos = uplink.qos.to_string();
        let received = received_ms.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(4 + uplink.user_properties.len())
            .insert(Header {
                key: header::DEVICE_ID,
                value: Some(uplink.client_id.as_bytes()),
            })
            .insert(Header {
                key: header::MQTT_TOPIC,
                value: Some(uplink.topic.as_bytes()),
            })
            .insert(Header {
                key: header::QOS,
                value: Some(qos.as_bytes()),
            })
            .insert(Header {
                key: header::RECEIVED_AT,
                value: Some(received.as_bytes()),
            });
        for (name, value) in &uplink.user_properties {
            let key = format!("{}{name}", header::USER_PROPERTY_PREFIX);
            headers = headers.insert(Header {
                key: &key,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(&kafka_topic)
            .key(uplink.client_id.as_bytes())
            .payload(&uplink.payload[..])
            .timestamp(received_ms)
            .headers(headers);
        let started = Instant::now();
        let sent = self
            .producer
            .send_result(record)
            .map_err(|(error, _)| error);
        let latency = self.produce_latency.clone();
        let produced = self.produced.clone();
        Some(Box::pin(async move {
            let result = match sent {
                Err(error) => Err(failure(error)),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _message))) => Err(failure(error)),
                    Err(_canceled) => Err(UplinkError::Failed("producer shut down".into())),
                },
            };
            latency.observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(()) => "ok",
                Err(UplinkError::Timeout(_)) => "timeout",
                Err(UplinkError::Failed(_)) => "error",
                Err(UplinkError::Rejected { .. }) => "rejected",
            };
            produced.with_label_values(&[&kafka_topic, outcome]).inc();
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_options_are_refused_with_the_key_to_use() {
        let mut config = KafkaConfig::default();
        config.producer_options.insert("acks".into(), "1".into());
        let err = producer_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("kafka.producer_options.\"acks\"") && err.contains("acks=all"),
            "{err}"
        );
        config.producer_options.clear();
        config
            .producer_options
            .insert("compression.type".into(), "lz4".into());
        let client = producer_config(&config).unwrap();
        assert_eq!(client.get("compression.type"), Some("lz4"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("message.timeout.ms"), Some("30000"));
        assert_eq!(client.get("socket.nagle.disable"), Some("true"));
    }
}
