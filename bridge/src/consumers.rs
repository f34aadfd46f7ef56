//! The one place where Herald's librdkafka consumers are configured: the
//! downlink group, this node's inbox, inboxes taken over from nodes that are
//! gone, and the presence follower.
//!
//! The downlink and inbox consumers are static group members
//! (`group.instance.id` = the node id) with cooperative-sticky assignment,
//! so a node restarted within `kafka.cluster.session_timeout` gets its
//! partitions back without a rebalance, and a rebalance moves only the
//! partitions that must move.

use crate::config::{KafkaConfig, RESERVED_CONSUMER_OPTIONS};
use crate::BridgeError;
use herald_kafka::clients::{at_least_once_consumer, with_options};
use herald_kafka::options::check_reserved;
use herald_kafka::stats::{with_statistics, KafkaStatsMetrics, StatsContext};
use rdkafka::consumer::StreamConsumer;
use rdkafka::ClientConfig;

/// A Herald consumer: its librdkafka statistics become `herald_kafka_*` metrics.
pub(crate) type Consumer = StreamConsumer<StatsContext>;

/// Creates the consumer for `role` (not yet subscribed or assigned).
pub(crate) fn create_consumer(
    config: &KafkaConfig,
    role: ConsumerRole<'_>,
    stats: &KafkaStatsMetrics,
) -> Result<Consumer, BridgeError> {
    let label = match role {
        ConsumerRole::Downlink => "downlink".to_string(),
        ConsumerRole::Inbox => "inbox".to_string(),
        ConsumerRole::Adopted(node) => format!("adopted-{node}"),
        ConsumerRole::PresenceView => "presence-view".to_string(),
    };
    let context = StatsContext::new(stats.clone(), label);
    Ok(consumer_config(config, role)?.create_with_context(context)?)
}

/// Which consumer of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumerRole<'a> {
    /// The command topic, one group shared by all nodes.
    Downlink,
    /// This node's inbox: commands other nodes forward to it.
    Inbox,
    /// The inbox of node `.0`, which is gone: taken over until it is back.
    Adopted(&'a str),
    /// The presence topic, read whole by every node (assigned, not subscribed).
    PresenceView,
}

/// The inbox topic of `node`: `<kafka.downlink.topic>.inbox.<node>`.
pub(crate) fn inbox_topic(config: &KafkaConfig, node: &str) -> String {
    format!("{}{node}", inbox_topic_prefix(config))
}

/// What every inbox topic's name starts with.
pub(crate) fn inbox_topic_prefix(config: &KafkaConfig) -> String {
    format!("{}.inbox.", config.downlink.topic)
}

/// The consumer group of `node`'s inbox.
pub(crate) fn inbox_group(config: &KafkaConfig, node: &str) -> String {
    format!("{}.inbox.{node}", config.downlink.group_id)
}

/// Checks every consumer's configuration (the pass-through options).
pub(crate) fn validate(config: &KafkaConfig) -> Result<(), BridgeError> {
    for role in [
        ConsumerRole::Downlink,
        ConsumerRole::Inbox,
        ConsumerRole::PresenceView,
    ] {
        consumer_config(config, role)?;
    }
    Ok(())
}

pub(crate) fn consumer_config(
    config: &KafkaConfig,
    role: ConsumerRole<'_>,
) -> Result<ClientConfig, BridgeError> {
    check_reserved(
        "kafka.consumer_options",
        &config.consumer_options,
        RESERVED_CONSUMER_OPTIONS,
    )?;
    let node = config.cluster.node_id();
    let client_id = |what: &str| format!("{}-{node}-{what}", config.client_id);
    // Every member of a group must speak the same assignment protocol, and
    // a dead member (an adopter too) must not hold partitions longer than
    // the cluster's session timeout.
    let session_timeout_ms = config.cluster.session_timeout.as_millis().max(1);
    let group_member = |client: &mut ClientConfig| {
        client
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_timeout_ms.to_string());
    };
    let static_member = |client: &mut ClientConfig| {
        group_member(client);
        client.set("group.instance.id", &node);
    };
    let mut client = match role {
        ConsumerRole::Downlink => {
            let mut client = at_least_once_consumer(
                &config.bootstrap_servers,
                &client_id("downlink"),
                &config.downlink.group_id,
            );
            static_member(&mut client);
            client
        }
        ConsumerRole::Inbox => {
            let mut client = at_least_once_consumer(
                &config.bootstrap_servers,
                &client_id("inbox"),
                &inbox_group(config, &node),
            );
            static_member(&mut client);
            client
        }
        ConsumerRole::Adopted(gone) => {
            let mut client = at_least_once_consumer(
                &config.bootstrap_servers,
                &client_id(&format!("adopted-{gone}")),
                &inbox_group(config, gone),
            );
            group_member(&mut client);
            client
        }
        ConsumerRole::PresenceView => {
            let mut client = ClientConfig::new();
            // librdkafka assigns partitions only with a group id; this one
            // is never joined (no subscribe) and nothing is committed to it.
            client
                .set("bootstrap.servers", &config.bootstrap_servers)
                .set("client.id", client_id("presence-view"))
                .set(
                    "group.id",
                    format!("{}.presence-view.{node}", config.downlink.group_id),
                )
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
            client
        }
    };
    // Topics are created (or reported missing) by the startup check, with
    // the partitions and cleanup policy they need; a subscription must not
    // auto-create them otherwise.
    client.set("allow.auto.create.topics", "false");
    with_statistics(&mut client, config.statistics_interval);
    with_options(&mut client, &config.consumer_options);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_static_members_with_their_own_inbox() {
        let mut config = KafkaConfig::default();
        config.cluster.node_id = Some("herald-1".into());
        let downlink = consumer_config(&config, ConsumerRole::Downlink).unwrap();
        assert_eq!(downlink.get("group.instance.id"), Some("herald-1"));
        assert_eq!(
            downlink.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(downlink.get("session.timeout.ms"), Some("30000"));
        let inbox = consumer_config(&config, ConsumerRole::Inbox).unwrap();
        assert_eq!(
            inbox.get("group.id"),
            Some("herald-downlink.inbox.herald-1")
        );
        assert_eq!(
            inbox_topic(&config, "herald-1"),
            "herald.downlink.inbox.herald-1"
        );
        let adopted = consumer_config(&config, ConsumerRole::Adopted("herald-2")).unwrap();
        assert_eq!(
            adopted.get("group.id"),
            Some("herald-downlink.inbox.herald-2")
        );
        assert_eq!(adopted.get("group.instance.id"), None, "a dynamic member");
        assert_eq!(
            adopted.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(adopted.get("session.timeout.ms"), Some("30000"));
        let view = consumer_config(&config, ConsumerRole::PresenceView).unwrap();
        assert_eq!(view.get("enable.auto.commit"), Some("false"));
    }
}
