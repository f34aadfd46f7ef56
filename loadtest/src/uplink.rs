//! The uplink scenario: scan boxes publish ScanResults with QoS 1 on an
//! open-loop schedule, as firmware would (reconnecting, retransmitting), and
//! every scan is read back from Herald's Kafka topic, so that the report can
//! say how many were sent, acknowledged, in Kafka, acknowledged but lost,
//! duplicated and never acknowledged.

use crate::accounting::UplinkKey;
use crate::cli::UplinkArgs;
use crate::engine::{self, Run};
use crate::kafka::{self, ReadBack};
use crate::lifecycle::Behaviour;
use crate::report::Report;
use rumqttc::mqttbytes::QoS;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Header Herald sets to `1` on records of PUBLISHes that had DUP set.
use herald_schemas::headers::DUP as DUP_HEADER;

pub async fn run(args: &UplinkArgs) -> anyhow::Result<Report> {
    let run = Run::new(&args.target, &args.clients).await?;
    let read_back = ReadBack::open(&args.kafka, &args.kafka_topic).await?;
    let terminals: HashMap<String, u32> = (0..args.clients.count)
        .map(|index| (args.clients.client_id(index), index))
        .collect();
    let reader = {
        let run = run.clone();
        read_back.spawn(move |message| {
            use herald_schemas::Message as _;
            use rdkafka::Message as _;
            let Some(scan) = message
                .payload()
                .and_then(|payload| herald_schemas::v1::ScanResult::decode(payload).ok())
            else {
                return;
            };
            let Some(id) = run.run_tag.parse(&scan.scan_id) else {
                return; // another run's scan, or a real device's
            };
            let marked_dup = kafka::has_header(message, DUP_HEADER, b"1");
            let mut ledger = run.uplinks.lock().unwrap_or_else(|e| e.into_inner());
            let Some(&terminal) = terminals.get(id.client_id) else {
                ledger.unknown_read_back();
                return;
            };
            let first = ledger.read_back(
                UplinkKey {
                    terminal,
                    seq: id.seq,
                },
                marked_dup,
            );
            drop(ledger);
            if first {
                run.record_e2e_since(id.sent_unix_micros);
            }
        })
    };

    let start = Instant::now();
    let connect_time = engine::connect_phase(&args.clients);
    let publish_start = start + connect_time + Duration::from_secs(2);
    let until = publish_start + Duration::from_secs(args.duration);
    let behaviour = Behaviour {
        subscribe: None,
        publish: Some(("devices/%c/up/scan".into(), QoS::AtLeastOnce, 0, args.rate)),
        downlink_commands: false,
        scan_results: true,
        until,
        drain: Duration::from_secs(args.drain),
        leave: None,
        firmware: args.firmware.firmware(),
        impairments: Default::default(),
    };
    let progress = run.progress(u64::from(args.clients.count));
    engine::run_clients(&run, behaviour, start, publish_start).await;
    let caught_up = read_back
        .finish(
            Duration::from_secs(args.settle),
            || {
                run.uplinks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .all_sent_in_kafka()
            },
            || 0,
        )
        .await;
    reader.abort();
    drop(progress);

    let mut report = Report::new(
        "uplink",
        &run,
        Some(args.rate),
        connect_time,
        Duration::from_secs(args.duration),
    );
    let mut accounting = run
        .uplinks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .accounting();
    accounting.retransmitted = run.counters.retransmitted.load(Ordering::Relaxed);
    accounting.not_sent = run.counters.not_sent.load(Ordering::Relaxed);
    accounting.kafka_caught_up = caught_up;
    accounting.kafka_topic = args.kafka_topic.clone();
    report.uplink = Some(accounting);
    Ok(report)
}
