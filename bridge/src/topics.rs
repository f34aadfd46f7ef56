//! The topics a node needs, checked at startup: each is present, created
//! (where `kafka.cluster.create_topics` is on and the ACLs allow it, with the
//! partitions and cleanup policy it needs), or reported missing with what to
//! create; a presence topic that is not compacted is reported too. A node does not subscribe before this check ended,
//! so a fresh Kafka never sees it fail on a topic nobody created yet.

use crate::consumers::inbox_topic;
use crate::rules::legal_kafka_topic;
use crate::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// A topic Herald uses, and how to create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NeededTopic {
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
    /// What it is for, in the log.
    pub role: &'static str,
}

/// Every topic this node reads or writes, by configuration.
pub(crate) fn needed(config: &KafkaConfig) -> Vec<NeededTopic> {
    let partitions = config.cluster.topic_partitions.max(1);
    let topic = |name: &str, partitions: i32, compacted: bool, role: &'static str| NeededTopic {
        name: name.to_string(),
        partitions,
        compacted,
        role,
    };
    let mut topics = Vec::new();
    for rule in &config.uplink_rules {
        // A topic named by a capture ({kind}) is only known per uplink.
        if legal_kafka_topic(&rule.kafka_topic) {
            topics.push(topic(&rule.kafka_topic, partitions, false, "uplinks"));
        }
    }
    topics.push(topic(
        &config.dead_letter_topic,
        partitions,
        false,
        "uplink dead letters",
    ));
    if config.downlink.enabled {
        topics.push(topic(&config.downlink.topic, partitions, false, "commands"));
        topics.push(topic(
            &config.downlink.receipts_topic,
            partitions,
            false,
            "receipts",
        ));
        let inbox = inbox_topic(config, &config.cluster.node_id());
        topics.push(topic(&inbox, 1, false, "this node's inbox"));
    }
    if config.presence.enabled {
        topics.push(topic(&config.presence.topic, partitions, true, "presence"));
    }
    topics.dedup_by(|a, b| a.name == b.name);
    topics
}

/// Creates what is missing (where `create_topics` allows), then says what
/// is still missing and whether the presence topic is compacted. Retries
/// while Kafka is unreachable, until `give_up`.
pub(crate) async fn ensure(config: &KafkaConfig, give_up: Duration) {
    let topics = needed(config);
    // The producers' pass-through options carry the cluster's security settings.
    let mut admin_config = rdkafka::ClientConfig::new();
    admin_config.set("bootstrap.servers", &config.bootstrap_servers);
    herald_kafka::clients::with_options(&mut admin_config, &config.producer_options);
    let admin: Arc<AdminClient<DefaultClientContext>> = match admin_config.create() {
        Ok(admin) => Arc::new(admin),
        Err(e) => {
            error!(error = %e, "cannot create a Kafka admin client to check the topics");
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + give_up;
    let existing = loop {
        match existing_topics(&admin).await {
            Ok(existing) => break existing,
            Err(e) if tokio::time::Instant::now() < deadline => {
                info!(error = %e, "Kafka not reachable yet to check the topics; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                error!(error = %e, "cannot check the topics Herald needs");
                return;
            }
        }
    };
    let missing: Vec<&NeededTopic> = topics
        .iter()
        .filter(|t| !existing.contains(&t.name))
        .collect();
    let still_missing = if config.cluster.create_topics && !missing.is_empty() {
        let failed = create(&admin, &missing).await;
        // Subscribing before the metadata lists a new topic fails the
        // subscription ("Subscribed topic not available") until a refresh.
        let created: Vec<&str> = missing
            .iter()
            .filter(|t| !failed.iter().any(|f| f.name == t.name))
            .map(|t| t.name.as_str())
            .collect();
        for _ in 0..50 {
            match existing_topics(&admin).await {
                Ok(now) if created.iter().all(|t| now.contains(*t)) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        failed
    } else {
        missing
    };
    for topic in still_missing {
        error!(
            topic = %topic.name,
            role = topic.role,
            "topic missing: create it (partitions: {}{}){}",
            topic.partitions,
            if topic.compacted { ", cleanup.policy=compact" } else { "" },
            if config.cluster.create_topics { "" } else { " (kafka.cluster.create_topics is off)" },
        );
    }
    if let Some(presence) = topics.iter().find(|t| t.compacted) {
        check_compacted(&admin, &presence.name).await;
    }
}

async fn existing_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
) -> Result<HashSet<String>, rdkafka::error::KafkaError> {
    let admin = admin.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_string())
            .collect())
    })
    .await
    .unwrap_or_else(|_| Err(rdkafka::error::KafkaError::Canceled))
}

/// Creates `missing`; returns those that could not be created.
async fn create<'a>(
    admin: &AdminClient<DefaultClientContext>,
    missing: &[&'a NeededTopic],
) -> Vec<&'a NeededTopic> {
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1));
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = match admin.create_topics(&new_topics, &options).await {
        Ok(results) => results,
        Err(e) => {
            error!(error = %e, "cannot create topics");
            return missing.to_vec();
        }
    };
    let mut failed = Vec::new();
    for (topic, result) in missing.iter().zip(results) {
        match result {
            Ok(_) => {
                info!(topic = %topic.name, role = topic.role, partitions = topic.partitions, compacted = topic.compacted, "created topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                error!(topic = %topic.name, ?code, "cannot create topic");
                failed.push(*topic);
            }
        }
    }
    failed
}

/// Warns if `topic` exists without `cleanup.policy=compact` (e.g. it was
/// auto-created before Herald could create it).
async fn check_compacted(admin: &AdminClient<DefaultClientContext>, topic: &str) {
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await;
    let policy = match described.as_deref() {
        Ok([Ok(resource)]) => resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone()),
        _ => return, // not allowed to describe it, or gone: nothing to say
    };
    if let Some(policy) = policy.filter(|p| !p.contains("compact")) {
        warn!(
            topic,
            policy,
            "the presence topic is not compacted: it grows without bound and every node replays all of it at start; set cleanup.policy=compact"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_a_node_uses() {
        let mut config = KafkaConfig::default();
        config.cluster.node_id = Some("herald-0".into());
        let topics = needed(&config);
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"herald.uplink.scan"));
        assert!(names.contains(&"herald.downlink.inbox.herald-0"));
        let presence = topics.iter().find(|t| t.name == "herald.presence").unwrap();
        assert!(presence.compacted);
        let inbox = topics
            .iter()
            .find(|t| t.role == "this node's inbox")
            .unwrap();
        assert_eq!(inbox.partitions, 1);
        config.presence.enabled = false;
        config.downlink.enabled = false;
        assert!(needed(&config)
            .iter()
            .all(|t| !t.compacted && t.role != "commands"));
    }
}
