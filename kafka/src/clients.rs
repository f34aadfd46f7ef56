//! The librdkafka settings every Herald client of a kind starts from, so
//! that the bridge and the services cannot drift apart again: an idempotent
//! producer whose acknowledgement means the record is durable, and a group
//! consumer that commits only what the caller stored as handled. Callers add
//! their role's settings, then the operator's pass-through options (checked
//! with [`crate::options::check_reserved`]).

use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// An idempotent producer with `acks=all`: a delivery report means every
/// in-sync replica has the record, and a retried batch is never written twice.
/// `delivery_timeout` bounds one attempt (`message.timeout.ms`).
pub fn idempotent_producer(
    bootstrap_servers: &str,
    client_id: &str,
    delivery_timeout: Duration,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        )
        .set("linger.ms", "2")
        // Small produce requests must not wait for TCP's delayed ACK: with
        // Nagle on, the uplink PUBACK p99 tripled (docs/benchmarks.md).
        .set("socket.nagle.disable", "true");
    client
}

/// A consumer in group `group_id` that never stores an offset by itself:
/// the caller stores a record's offset once it is handled, and the stored
/// offsets are committed every second. New groups start at the earliest
/// offset, so nothing produced before the first start is skipped.
pub fn at_least_once_consumer(
    bootstrap_servers: &str,
    client_id: &str,
    group_id: &str,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", client_id)
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A topic nobody produced to yet is created (where the brokers allow
        // it) instead of failing the subscription; production clusters
        // usually create topics up front and may override this.
        .set("allow.auto.create.topics", "true")
        .set("topic.metadata.refresh.interval.ms", "5000");
    client
}

/// Applies the operator's pass-through `options` on top of `client`.
pub fn with_options(client: &mut ClientConfig, options: &BTreeMap<String, String>) {
    for (key, value) in options {
        client.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_are_idempotent_and_consumers_store_offsets_themselves() {
        let producer = idempotent_producer("k:9092", "herald", Duration::from_secs(30));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("message.timeout.ms"), Some("30000"));
        assert_eq!(producer.get("client.id"), Some("herald"));
        let mut consumer = at_least_once_consumer("k:9092", "svc", "group");
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some("group"));
        let mut options = BTreeMap::new();
        options.insert("fetch.wait.max.ms".to_string(), "50".to_string());
        with_options(&mut consumer, &options);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("50"));
    }
}
