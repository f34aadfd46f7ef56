//! The downlink and announce scenarios: records go to Kafka at a fixed
//! rate, each with a unique command id, for the fleet's terminals (round
//! robin); the terminals, subscribed to `devices/<id>/down/#` with QoS 1 on
//! a persistent session, acknowledge every command; Herald's delivery
//! receipts are read back. The report says how many commands were produced,
//! delivered, receipted (by outcome), lost and duplicated.
//!
//! `downlink` produces DownlinkCommands straight to Herald's downlink topic
//! (keyed by device id, docs/schemas.md); `announce` produces PaymentEvents
//! for the announcer, whose commands carry the payment id as command id, so
//! the same ledger follows a payment through the announcer and Herald.
//!
//! With `--stalled` and `--slow`, some terminals stop reading once
//! subscribed or acknowledge late (impairment.rs); the report then counts
//! the healthy, stalled and slow terminals' commands apart, since a stalled
//! terminal's commands can only end as expired or refused receipts.

use crate::accounting::{
    DownlinkAccounting, DownlinkClassAccounting, DownlinkLedger, ReceiptOutcome,
};
use crate::cli::{AnnounceArgs, Clients, DownlinkArgs, FirmwareArgs, Target};
use crate::engine::{self, Run};
use crate::impairment::{Impairment, Impairments, Stall, Stalls};
use crate::kafka::{self, ReadBack};
use crate::lifecycle::Behaviour;
use crate::report::Report;
use crate::schedule::Schedule;
use herald_schemas::v1;
use herald_schemas::Message as _;
use rumqttc::mqttbytes::QoS;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What goes to Kafka for each command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// DownlinkCommands of kind ANNOUNCE, for Herald.
    Commands,
    /// PaymentEvents, for the announcer.
    Payments,
}

/// One downlink run, from either subcommand's arguments.
struct Plan<'a> {
    scenario: &'static str,
    target: &'a Target,
    clients: &'a Clients,
    rate: f64,
    duration: u64,
    kafka: &'a str,
    topic: &'a str,
    receipts_topic: &'a str,
    ttl: Duration,
    settle: Duration,
    firmware: &'a FirmwareArgs,
    records: Records,
    impairments: Impairments,
}

pub async fn downlink(args: &DownlinkArgs) -> anyhow::Result<Report> {
    run(Plan {
        scenario: "downlink",
        target: &args.target,
        clients: &args.clients,
        rate: args.rate,
        duration: args.duration,
        kafka: &args.kafka,
        topic: &args.downlink_topic,
        receipts_topic: &args.receipts.receipts_topic,
        ttl: Duration::from_secs(args.receipts.ttl),
        settle: Duration::from_secs(args.receipts.settle),
        firmware: &args.firmware,
        records: Records::Commands,
        impairments: args.impaired.impairments(),
    })
    .await
}

pub async fn announce(args: &AnnounceArgs) -> anyhow::Result<Report> {
    run(Plan {
        scenario: "announce",
        target: &args.target,
        clients: &args.clients,
        rate: args.rate,
        duration: args.duration,
        kafka: &args.kafka,
        topic: &args.payments_topic,
        receipts_topic: &args.receipts.receipts_topic,
        ttl: Duration::from_secs(args.receipts.ttl),
        settle: Duration::from_secs(args.receipts.settle),
        firmware: &args.firmware,
        records: Records::Payments,
        impairments: Impairments::default(),
    })
    .await
}

async fn run(plan: Plan<'_>) -> anyhow::Result<Report> {
    anyhow::ensure!(
        plan.impairments.count() <= plan.clients.count,
        "--stalled plus --slow ({}) exceeds the terminals (-c {})",
        plan.impairments.count(),
        plan.clients.count
    );
    let run = Run::new(plan.target, plan.clients).await?;
    let receipts = ReadBack::open(plan.kafka, plan.receipts_topic).await?;
    let producer = kafka::producer(plan.kafka)?;
    let reader = {
        let run = run.clone();
        receipts.spawn(move |message| {
            use rdkafka::Message as _;
            let Some(receipt) = message
                .payload()
                .and_then(|payload| v1::DeliveryReceipt::decode(payload).ok())
            else {
                return;
            };
            let Some(id) = run.run_tag.parse(&receipt.command_id) else {
                return;
            };
            run.downlinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .receipt(id.seq, receipt_outcome(receipt.outcome()));
        })
    };

    let (leave, leave_signal) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let connect_time = engine::connect_phase(plan.clients);
    let produce_start = start + connect_time + Duration::from_secs(2);
    let behaviour = Behaviour {
        subscribe: Some(("devices/%c/down/#".into(), QoS::AtLeastOnce)),
        publish: None,
        downlink_commands: true,
        scan_results: false,
        until: produce_start,
        drain: Duration::ZERO,
        leave: Some(leave_signal),
        firmware: plan.firmware.firmware(),
        impairments: plan.impairments,
    };
    let progress = run.progress(u64::from(plan.clients.count));
    let terminals = {
        let run = run.clone();
        tokio::spawn(
            async move { engine::run_clients(&run, behaviour, start, produce_start).await },
        )
    };

    let schedule = Schedule::new(produce_start, plan.rate, 1, 0);
    let total = (plan.rate * plan.duration as f64) as u64;
    let mut confirmations = JoinSet::new();
    for seq in 0..total {
        let intended = schedule.intended(seq);
        tokio::time::sleep_until(intended.into()).await;
        let device = plan
            .clients
            .client_id((seq % u64::from(plan.clients.count.max(1))) as u32);
        let sent = run.to_unix_micros(intended);
        let payload = record(&plan, &run.run_tag.id(&device, seq, sent), &device, sent);
        match kafka::enqueue(&producer, plan.topic, &device, &payload).await {
            Ok(delivery) => {
                confirmations.spawn(async move { (seq, kafka::confirmed(delivery).await) });
            }
            Err(error) => {
                run.error("produce", &anyhow::Error::new(error));
                record_confirmation(&run, seq, false);
            }
        }
        while let Some(Ok((seq, confirmed))) = confirmations.try_join_next() {
            record_confirmation(&run, seq, confirmed);
        }
    }
    while let Some(joined) = confirmations.join_next().await {
        if let Ok((seq, confirmed)) = joined {
            record_confirmation(&run, seq, confirmed);
        }
    }

    let caught_up = receipts
        .finish(
            plan.settle,
            || {
                let ledger = run.downlinks.lock().unwrap_or_else(|e| e.into_inner());
                ledger.unsettled() == 0 && ledger.unreceipted() == 0
            },
            || run.counters.received.load(Ordering::Relaxed),
        )
        .await;
    let _ = leave.send(true);
    terminals.await?;
    reader.abort();
    drop(progress);

    let mut report = Report::new(
        plan.scenario,
        &run,
        Some(plan.rate),
        connect_time,
        Duration::from_secs(plan.duration),
    );
    let mut accounting = by_terminal_kind(
        &run.downlinks.lock().unwrap_or_else(|e| e.into_inner()),
        plan.clients.count,
        plan.impairments,
    );
    add_stalls(
        &mut accounting,
        &run.stalls.lock().unwrap_or_else(|e| e.into_inner()),
    );
    accounting.receipts_caught_up = caught_up;
    accounting.downlink_topic = plan.topic.to_string();
    accounting.receipts_topic = plan.receipts_topic.to_string();
    report.downlink = Some(accounting);
    Ok(report)
}

/// The whole ledger's counts, with those of the healthy terminals and, if
/// any, of the stalled and the slow ones (command `seq` goes to terminal
/// `seq % terminals`).
fn by_terminal_kind(
    ledger: &DownlinkLedger,
    terminals: u32,
    impairments: Impairments,
) -> DownlinkAccounting {
    let terminals = terminals.max(1);
    let kind_of = |seq: u64| impairments.of((seq % u64::from(terminals)) as u32);
    let class = |wanted: fn(Impairment) -> bool, count: u32| {
        let mut class: DownlinkClassAccounting = ledger
            .subset(|seq| wanted(kind_of(seq)))
            .accounting()
            .into();
        class.terminals = count;
        class
    };
    let mut accounting = ledger.accounting();
    let healthy = terminals.saturating_sub(impairments.count());
    accounting.healthy = Some(class(|k| k == Impairment::Healthy, healthy));
    if impairments.stalled > 0 {
        accounting.stalled = Some(class(|k| k == Impairment::Stalled, impairments.stalled));
    }
    if impairments.slow > 0 {
        accounting.slow = Some(class(
            |k| matches!(k, Impairment::Slow(_)),
            impairments.slow,
        ));
    }
    accounting
}

/// What the stalled terminals saw of the broker.
fn add_stalls(accounting: &mut DownlinkAccounting, stalls: &[Stall]) {
    let stalls = Stalls::of(stalls.iter().copied());
    accounting.stalled_disconnected = stalls.disconnected;
    accounting.stalled_disconnected_after_ms = stalls.disconnected_after_ms;
    accounting.stalled_unread = stalls.unread_publishes;
}

fn record_confirmation(run: &Run, seq: u64, confirmed: bool) {
    let mut ledger = run.downlinks.lock().unwrap_or_else(|e| e.into_inner());
    if confirmed {
        ledger.produced(seq);
        run.counters.published.fetch_add(1, Ordering::Relaxed);
    } else {
        ledger.produce_failed();
    }
}

/// The Kafka record for command `id` to `device`, meant to be produced at `sent` (Unix µs).
fn record(plan: &Plan<'_>, id: &str, device: &str, sent: u64) -> Vec<u8> {
    let created_at_ms = (sent / 1000) as i64;
    let expires_at_ms = if plan.ttl.is_zero() {
        0
    } else {
        created_at_ms + plan.ttl.as_millis() as i64
    };
    match plan.records {
        Records::Commands => {
            let announcement = v1::Announcement {
                text: "支付宝收款十二元五角".into(),
                locale: "zh-CN".into(),
                payment_id: id.into(),
                amount_minor: 1250,
                currency: "CNY".into(),
            };
            v1::DownlinkCommand {
                command_id: id.into(),
                device_id: device.into(),
                kind: v1::CommandKind::Announce as i32,
                payload: announcement.encode_to_vec(),
                created_at_ms,
                expires_at_ms,
            }
            .encode_to_vec()
        }
        Records::Payments => v1::PaymentEvent {
            payment_id: id.into(),
            merchant_id: "loadtest".into(),
            device_id: device.into(),
            amount_minor: 1250,
            currency: "CNY".into(),
            channel: v1::PaymentChannel::Alipay as i32,
            locale: "zh-CN".into(),
            created_at_ms,
            expires_at_ms,
        }
        .encode_to_vec(),
    }
}

fn receipt_outcome(outcome: v1::DeliveryOutcome) -> ReceiptOutcome {
    match outcome {
        v1::DeliveryOutcome::Delivered => ReceiptOutcome::Delivered,
        v1::DeliveryOutcome::Expired => ReceiptOutcome::Expired,
        v1::DeliveryOutcome::Refused => ReceiptOutcome::Refused,
        v1::DeliveryOutcome::Unspecified => ReceiptOutcome::Other,
    }
}
