//! MQTT 5 as the specification says, checked over real TCP with clients
//! nobody here wrote: paho-mqtt 2.x in its MQTT 5 mode (broker/tests/
//! paho_mqtt5.py, one case per test) and mosquitto_pub/mosquitto_sub -V 5.
//! Each test names the normative statements it checks; the few that paho
//! cannot express use the raw client of tests/common.

mod common;

use common::*;
use herald_broker::codec::*;
use std::process::{Command, Output};

/// Runs `case` of paho_mqtt5.py against the broker on `port`.
async fn paho(case: &str, port: u16, extra: &[String]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_mqtt5.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(case)
        .arg(port.to_string())
        .args(extra);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("python3 runs");
    assert_success(case, &output);
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A broker in open mode (a general MQTT broker) and `case` run against it.
async fn open_mode(case: &str) {
    let broker = start(|_| {}).await;
    paho(case, broker.addr.port(), &[]).await;
}

/// [MQTT-3.8.4-8]: the minimum of the message's and the subscription's QoS,
/// for retained, live, and queued-then-resumed deliveries.
#[tokio::test]
async fn qos_is_never_upgraded_on_any_delivery_path() {
    open_mode("qos_downgrade").await;
}

/// [MQTT-3.3.2-5], [MQTT-3.3.2-6]: expired messages are not delivered, and
/// the others carry what is left of their expiry (queued and retained).
#[tokio::test]
async fn message_expiry_drops_stale_messages_and_forwards_the_remaining_interval() {
    open_mode("message_expiry").await;
}

/// [MQTT-3.1.2-23], [MQTT-3.2.2-2], §3.14.2.2.2: Session Expiry, including
/// the one set at DISCONNECT.
#[tokio::test]
async fn session_expiry_is_kept_and_can_be_changed_at_disconnect() {
    open_mode("session_expiry").await;
}

/// [MQTT-3.14.2-2]: a DISCONNECT may not give a session a non-zero expiry
/// when its CONNECT asked for 0; the server answers with DISCONNECT 0x82.
#[tokio::test]
async fn a_session_expiry_at_disconnect_after_zero_is_a_protocol_error() {
    let broker = start(|_| {}).await;
    let (mut raw, _) = Raw::connect(broker.addr, "se-zero", true, None).await;
    let mut disconnect = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
    disconnect.properties = Some(DisconnectProperties {
        session_expiry_interval: Some(30),
        reason_string: None,
        user_properties: Vec::new(),
        server_reference: None,
    });
    raw.send(Packet::Disconnect(disconnect)).await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::ProtocolError)
        }
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
}

/// §3.1.3.2, [MQTT-3.3.2-15..20]: a will goes out with its properties.
#[tokio::test]
async fn a_will_is_delivered_with_its_properties() {
    open_mode("will_properties").await;
}

/// [MQTT-3.3.4-3], [MQTT-3.3.4-4]: Subscription Identifiers come back with
/// what they match, retained messages included.
#[tokio::test]
async fn subscription_identifiers_are_returned_with_matching_messages() {
    open_mode("subscription_identifiers").await;
}

/// [MQTT-3.2.2-17], [MQTT-3.3.2-9], [MQTT-4.13.2-1]: client aliases within
/// the advertised maximum work; one above it closes with 0x94.
#[tokio::test]
async fn topic_aliases_from_the_client_work_within_the_maximum() {
    open_mode("topic_alias_from_client").await;
}

/// A configurable maximum: with `topic_alias_maximum = 3`, alias 4 is refused.
#[tokio::test]
async fn the_topic_alias_maximum_is_configurable() {
    let broker = start(|config| config.topic_alias_maximum = 3).await;
    let (mut raw, ack) = Raw::connect(broker.addr, "ta-max", true, None).await;
    assert_eq!(ack.properties.and_then(|p| p.topic_alias_max), Some(3));
    let mut publish = Publish::new("ta/t", QoS::AtMostOnce, "x", None);
    publish.properties = Some(PublishProperties {
        topic_alias: Some(4),
        ..Default::default()
    });
    raw.send(Packet::Publish(publish)).await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::TopicAliasInvalid)
        }
        other => panic!("expected DISCONNECT 0x94, got {other:?}"),
    }
    assert_eq!(
        broker.counter("herald_protocol_errors_total", "kind", "topic_alias"),
        1
    );
}

/// §3.3.2.3.4, [MQTT-3.3.2-10]: Herald assigns aliases to a client that
/// allows them, never above its maximum.
#[tokio::test]
async fn herald_assigns_topic_aliases_to_clients_that_allow_them() {
    open_mode("topic_alias_to_client").await;
}

/// [MQTT-3.2.2-21]: Server Keep Alive when the client's keepalive is capped.
#[tokio::test]
async fn a_capped_keepalive_is_announced_as_server_keep_alive() {
    let broker = start(|config| config.max_keepalive_secs = 30).await;
    paho("server_keep_alive", broker.addr.port(), &[]).await;
}

/// [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 messages than the
/// client's Receive Maximum.
#[tokio::test]
async fn the_clients_receive_maximum_is_respected() {
    open_mode("receive_maximum").await;
}

/// [MQTT-3.1.2-24], [MQTT-3.1.2-25]: nothing larger than the client's
/// Maximum Packet Size; such a message is dropped for that client.
#[tokio::test]
async fn the_clients_maximum_packet_size_is_respected() {
    open_mode("maximum_packet_size").await;
}

/// [MQTT-3.8.3-3]: No Local.
#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    open_mode("no_local").await;
}

/// [MQTT-3.3.1-12], [MQTT-3.3.1-13]: Retain As Published.
#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() {
    open_mode("retain_as_published").await;
}

/// [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]: Retain Handling 0/1/2.
#[tokio::test]
async fn retain_handling_0_1_2() {
    open_mode("retain_handling").await;
}

/// [MQTT-3.3.2-4], [MQTT-3.3.2-15..18], [MQTT-3.3.2-20]: request/response
/// and user properties pass through untouched.
#[tokio::test]
async fn request_response_and_user_properties_pass_through() {
    open_mode("properties_pass_through").await;
}

/// §4.8.2: one member of a shared subscription's group gets each message.
#[tokio::test]
async fn shared_subscriptions_spread_messages_over_the_group() {
    open_mode("shared_subscriptions").await;
}

/// §4.8.2: unacknowledged messages of a member that leaves go to another.
#[tokio::test]
async fn a_shared_member_that_leaves_hands_its_unacknowledged_messages_on() {
    let broker = start(|_| {}).await;
    paho("shared_redelivery", broker.addr.port(), &[]).await;
    assert_eq!(
        broker.counter_total("herald_shared_redeliveries_total"),
        3,
        "counted"
    );
}

/// `least_busy`: the member with the least queued and in flight.
#[tokio::test]
async fn least_busy_shared_subscriptions_spread_messages_too() {
    let broker = start(|config| {
        config.shared_subscription_strategy = herald_broker::SharedSubscriptionStrategy::LeastBusy
    })
    .await;
    paho("shared_least_busy", broker.addr.port(), &[]).await;
}

/// The device ACL honours `$share/<group>/<filter>`: it checks the filter.
#[tokio::test]
async fn the_acl_applies_to_the_filter_of_a_shared_subscription() {
    let broker = start(device_mode).await;
    let login = device_login("speaker-00042");
    paho(
        "shared_acl",
        broker.addr.port(),
        &[login.username, login.password],
    )
    .await;
}

/// The same QoS rule seen by mosquitto_pub/mosquitto_sub -V 5: retained
/// messages published at QoS 0, 1 and 2 reach a QoS 2 subscription at
/// their own QoS [MQTT-3.8.4-8], and a Message Expiry Interval set by
/// mosquitto_pub arrives lowered [MQTT-3.3.2-6].
#[tokio::test]
async fn mosquitto_clients_see_retained_qos_and_expiry_as_published() {
    let broker = start(|_| {}).await;
    let port = broker.addr.port().to_string();
    for qos in ["0", "1", "2"] {
        let mut publish = Command::new("mosquitto_pub");
        publish.args(["-V", "5", "-h", "127.0.0.1", "-p", &port, "-r", "-q", qos]);
        publish.args(["-t", &format!("mq/{qos}"), "-m", qos]);
        publish.args(["-D", "publish", "message-expiry-interval", "3600"]);
        let output = tokio::task::spawn_blocking(move || publish.output())
            .await
            .unwrap()
            .expect("mosquitto_pub runs");
        assert_success("mosquitto_pub", &output);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut subscribe = Command::new("mosquitto_sub");
    subscribe.args(["-V", "5", "-h", "127.0.0.1", "-p", &port, "-q", "2"]);
    subscribe.args(["-t", "mq/+", "-C", "3", "-W", "5", "-F", "%t %q %r %E"]);
    let output = tokio::task::spawn_blocking(move || subscribe.output())
        .await
        .unwrap()
        .expect("mosquitto_sub runs");
    assert_success("mosquitto_sub", &output);
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, qos) in lines.iter().zip(["0", "1", "2"]) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(&fields[..3], [&*format!("mq/{qos}"), qos, "1"], "{line}");
        let left: u32 = fields[3].parse().expect("an expiry interval");
        assert!((3500..3600).contains(&left), "{line}: remaining expiry");
    }
}
