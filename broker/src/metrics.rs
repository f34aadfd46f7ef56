//! Prometheus metrics of the broker core.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges the broker updates; registered once at startup.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub connections: IntGauge,
    pub sessions: IntGauge,
    pub connection_limit: IntGauge,
    pub draining: IntGauge,
    pub connects: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub messages_received: ByQos,
    pub messages_sent: ByQos,
    pub messages_dropped: IntCounterVec,
    pub acl_denied: IntCounterVec,
    pub protocol_errors: IntCounterVec,
    pub uplinks_inflight: IntGauge,
    pub uplink_failures: IntCounter,
    pub uplinks_rejected: IntCounterVec,
    pub limits_exceeded: IntCounterVec,
    pub backpressure_waits: IntCounter,
    pub shared_redeliveries: IntCounter,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let uplink_failures = IntCounter::new(
            "herald_uplink_failures_total",
            "Uplinks the sink could not deliver (the device got a negative or no acknowledgement).",
        )?;
        registry.register(Box::new(uplink_failures.clone()))?;
        let backpressure_waits = IntCounter::new(
            "herald_backpressure_waits_total",
            "QoS 1/2 messages that filled a subscriber's queue, so their publisher's acknowledgement waited for room.",
        )?;
        registry.register(Box::new(backpressure_waits.clone()))?;
        let shared_redeliveries = IntCounter::new(
            "herald_shared_redeliveries_total",
            "Messages a shared-subscription member left unacknowledged when it disconnected, handed to another member.",
        )?;
        registry.register(Box::new(shared_redeliveries.clone()))?;
        Ok(Self {
            connections: gauge(
                "herald_connections",
                "Open MQTT connections that completed CONNECT.",
            )?,
            sessions: gauge("herald_sessions", "MQTT sessions held, connected or not.")?,
            connection_limit: gauge(
                "herald_connection_limit",
                "Most connections accepted before CONNACK server unavailable.",
            )?,
            draining: gauge(
                "herald_draining",
                "1 once the node drains its connections to stop (SIGTERM), else 0.",
            )?,
            connects: counter_vec(
                "herald_connects_total",
                "CONNECT attempts by result.",
                &["result"],
            )?,
            auth_failures: counter_vec(
                "herald_auth_failures_total",
                "Refused credentials by reason.",
                &["reason"],
            )?,
            disconnects: counter_vec(
                "herald_disconnects_total",
                "Closed connections by reason.",
                &["reason"],
            )?,
            messages_received: ByQos::new(&counter_vec(
                "herald_messages_received_total",
                "PUBLISH packets received from clients, by QoS.",
                &["qos"],
            )?),
            messages_sent: ByQos::new(&counter_vec(
                "herald_messages_sent_total",
                "PUBLISH packets sent to clients, by QoS.",
                &["qos"],
            )?),
            messages_dropped: counter_vec(
                "herald_messages_dropped_total",
                "Messages dropped by reason.",
                &["reason"],
            )?,
            acl_denied: counter_vec(
                "herald_acl_denied_total",
                "Publishes and subscriptions refused by the topic ACL.",
                &["action"],
            )?,
            protocol_errors: counter_vec(
                "herald_protocol_errors_total",
                "Connections closed for bad input, by kind.",
                &["kind"],
            )?,
            uplinks_inflight: gauge(
                "herald_uplinks_inflight",
                "Uplinks handed to the sink and not yet acknowledged.",
            )?,
            uplink_failures,
            uplinks_rejected: counter_vec(
                "herald_uplinks_rejected_total",
                "Uplinks the sink rejected for good and set aside (dead letters), by kind.",
                &["kind"],
            )?,
            limits_exceeded: counter_vec(
                "herald_limits_exceeded_total",
                "Client input refused because it exceeded a configured limit, by limit.",
                &["limit"],
            )?,
            backpressure_waits,
            shared_redeliveries,
        })
    }
}

/// A counter by QoS with its three series resolved once: counted on every
/// message, where a label lookup (hashing, a lock) would cost more than
/// the count.
#[derive(Clone)]
pub(crate) struct ByQos([IntCounter; 3]);

impl ByQos {
    fn new(vec: &IntCounterVec) -> Self {
        Self(["0", "1", "2"].map(|qos| vec.with_label_values(&[qos])))
    }

    pub fn get(&self, qos: crate::codec::QoS) -> &IntCounter {
        &self.0[qos as usize]
    }
}
