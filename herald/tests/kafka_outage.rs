//! Nothing acknowledged is lost: while Kafka is down the PUBACK is withheld,
//! and once Kafka is back the PUBACK arrives and the message is in Kafka.
//! The outage outlasts `delivery_timeout` many times over, and the device's
//! MQTT 3.1.1 connection stays open throughout: Herald produces the uplink
//! again instead of closing the connection.
//! Uses its own Kafka instance, so stopping it disturbs no other test.

mod common;

use common::{consume, kafka_script, Herald};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::{Duration, Instant};

const PORT: u16 = 19192;

struct StopOnDrop;

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        kafka_script(PORT, "stop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn puback_waits_for_kafka_through_an_outage() {
    kafka_script(PORT, "start");
    let _stop = StopOnDrop;
    let bootstrap = format!("127.0.0.1:{PORT}");
    let herald = Herald::start(&bootstrap, "# kafka\ndelivery_timeout = \"2s\"\n");
    herald.wait_ready();

    let device = "speaker-outage";
    let mut options = MqttOptions::new(device, herald.mqtt.ip().to_string(), herald.mqtt.port());
    options.set_credentials(device, herald.password(device));
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let topic = format!("devices/{device}/up/scan");

    // Warm up: the Kafka topic exists and the producer is connected.
    client
        .publish(&topic, QoS::AtLeastOnce, false, &b"before"[..])
        .await
        .unwrap();
    wait_puback(&mut eventloop, Duration::from_secs(60))
        .await
        .expect("PUBACK while Kafka is up");

    kafka_script(PORT, "kill");
    client
        .publish(&topic, QoS::AtLeastOnce, false, &b"during"[..])
        .await
        .unwrap();
    assert!(
        wait_puback(&mut eventloop, Duration::from_secs(8))
            .await
            .is_none(),
        "no PUBACK may be sent while Kafka is down"
    );

    kafka_script(PORT, "start");
    let started = Instant::now();
    wait_puback(&mut eventloop, Duration::from_secs(150))
        .await
        .expect("PUBACK once Kafka is back");
    eprintln!("PUBACK {:?} after Kafka restarted", started.elapsed());
    assert!(
        herald.metric_sum("herald_kafka_produce_retries_total") > 0.0,
        "the uplink was produced again while Kafka was down"
    );
    assert_eq!(
        herald.metric("herald_disconnects_total{reason=\"uplink_failed\"}"),
        0.0,
        "no connection closed because of the outage"
    );

    let records = consume(
        &bootstrap,
        &format!("{}.scan", herald.topic_prefix),
        2,
        Duration::from_secs(60),
    )
    .await;
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert!(
        payloads.contains(&&b"during"[..]),
        "the acknowledged message is in Kafka: {payloads:?}"
    );
    assert!(payloads.contains(&&b"before"[..]));
}

async fn wait_puback(eventloop: &mut rumqttc::EventLoop, wait: Duration) -> Option<u16> {
    tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => return ack.pkid,
                Ok(_) => {}
                Err(error) => panic!("device connection failed: {error}"),
            }
        }
    })
    .await
    .ok()
}
