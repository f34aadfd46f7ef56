//! The fan-in scenario (issue #8, item 2.8): `-c` publishers send numbered
//! messages on `<prefix>/<i>` to one subscriber of `<prefix>/#` that
//! acknowledges everything, and every message is accounted for: sent,
//! acknowledged, received, acknowledged but lost, duplicated, never
//! acknowledged. Under overload a broker that drops what it acknowledged
//! shows it here; one that pushes back shows it in the PUBACK latency.
//!
//! The phases: the subscribers connect and subscribe (the main one, and
//! the optional stalled and slow ones on persistent sessions); the
//! publishers connect at the connect rate (clean sessions, no reconnect)
//! and publish for `-d` seconds, closed loop within their window or at
//! `-r`; then the run waits until every message is acknowledged and
//! received, or nothing new has come for `--settle` seconds.

use crate::cli::FaninArgs;
use crate::engine::{self, Counters, Run};
use crate::fanin_clients::{self, Published, PublisherPlan, Subscribed, SubscriberPlan};
use crate::fanin_ledger::{FaninAccounting, FaninLedger};
use crate::impairment::{self, Stall, Stalls};
use crate::report::Report;
use crate::schedule::{Latencies, Schedule};
use anyhow::Context as _;
use rumqttc::mqttbytes::QoS;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long a subscriber may take to connect and get its SUBACK.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Once everything is acknowledged and received, how long the run still
/// waits for late duplicates.
const COMPLETE_GRACE: Duration = Duration::from_millis(500);

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub async fn run(args: &FaninArgs) -> anyhow::Result<Report> {
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "-r must be positive");
    }
    let run = Run::new(&args.target, &args.clients).await?;
    let (stop, stop_signal) = watch::channel(false);

    // Subscribers first: a message published before the subscription
    // exists would count as acknowledged but lost.
    let impairments = args.impaired.impairments();
    let slow_ids: Vec<String> = (0..impairments.slow)
        .map(|i| args.clients.client_id_named(&format!("slow-{i}")))
        .collect();
    let stalled_ids: Vec<String> = (0..impairments.stalled)
        .map(|i| args.clients.client_id_named(&format!("stalled-{i}")))
        .collect();
    let subscriber_ids: Vec<String> = std::iter::once(args.clients.client_id_named("sub"))
        .chain(slow_ids.iter().cloned())
        .chain(stalled_ids.iter().cloned())
        .collect();
    let main = spawn_subscriber(
        &run,
        SubscriberPlan {
            client_id: subscriber_ids[0].clone(),
            filter: args.filter.clone(),
            qos: qos(args.qos),
            ack_delay: None,
            main: true,
            publishers: args.clients.count,
        },
        &stop_signal,
    );
    let slow: Vec<_> = slow_ids
        .iter()
        .map(|client_id| {
            spawn_subscriber(
                &run,
                SubscriberPlan {
                    client_id: client_id.clone(),
                    filter: args.filter.clone(),
                    qos: QoS::AtLeastOnce,
                    ack_delay: Some(impairments.slow_ack),
                    main: false,
                    publishers: args.clients.count,
                },
                &stop_signal,
            )
        })
        .collect();
    let stalled: Vec<_> = stalled_ids
        .iter()
        .map(|client_id| spawn_stalled(&run, client_id.clone(), &args.filter, &stop_signal))
        .collect();
    let main = wait_subscribed(vec![main], "the subscriber")
        .await?
        .remove(0);
    let slow: Vec<JoinHandle<Subscribed>> = wait_subscribed(slow, "a slow subscriber").await?;
    let stalled: Vec<JoinHandle<Option<Stall>>> =
        wait_subscribed(stalled, "a stalled subscriber").await?;

    let start = Instant::now();
    let connect_time = engine::connect_phase(&args.clients);
    let publish_start = start + connect_time + Duration::from_secs(1);
    let duration = Duration::from_secs(args.duration);
    let until = publish_start + duration;
    let progress = run.progress(u64::from(args.clients.count));
    let publishers = spawn_publishers(&run, args, start, publish_start, until, &stop_signal);

    tokio::time::sleep_until(until.into()).await;
    let at_end_of_publishing = snapshot(&run.counters);
    let complete = settle(
        &run.counters,
        qos(args.qos),
        Duration::from_secs(args.settle),
    )
    .await;
    let _ = stop.send(true);

    let mut ledger = FaninLedger {
        publishers: Vec::new(),
        receptions: Default::default(),
    };
    let mut ack_latency = Latencies::default();
    let mut publisher_disconnects = 0;
    for publisher in publishers {
        let published: Published = publisher.await?;
        ledger.publishers.push(published.record);
        ack_latency.merge(&published.ack_latency);
        publisher_disconnects += u64::from(published.disconnected);
    }
    let subscribed = main.await?;
    ledger.receptions = subscribed.receptions;
    let mut accounting = match qos(args.qos) {
        QoS::AtMostOnce => ledger.accounting_at_most_once(),
        _ => ledger.accounting(),
    };
    for slow in slow {
        let slow = slow.await?;
        accounting.slow_received += slow.receptions.unique();
        accounting.slow_duplicates += slow.receptions.duplicates();
        accounting.slow_disconnects += slow.disconnects;
    }
    let mut stalls = Vec::new();
    for stall in stalled {
        stalls.extend(stall.await?);
    }
    let stalls = Stalls::of(stalls);
    // Leave no persistent session behind to fill up on the broker.
    for client_id in &subscriber_ids {
        if let Err(error) = fanin_clients::discard_session(&run, client_id).await {
            run.error("removing the subscribers' sessions", &error);
        }
    }
    drop(progress);

    run.ack_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .merge(&ack_latency);
    run.e2e_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .merge(&subscribed.e2e);
    let seconds = duration.as_secs_f64().max(1e-9);
    let (sent, acked, received) = at_end_of_publishing;
    accounting = FaninAccounting {
        publishers: args.clients.count,
        qos: args.qos,
        offered_rate: args.rate,
        inflight: args.inflight,
        publish_rate: sent as f64 / seconds,
        ack_rate: acked as f64 / seconds,
        receive_rate: received as f64 / seconds,
        complete,
        publisher_disconnects,
        subscriber_disconnects: subscribed.disconnects,
        stalled: impairments.stalled,
        stalled_disconnected: stalls.disconnected,
        stalled_disconnected_after_ms: stalls.disconnected_after_ms,
        stalled_unread: stalls.unread_publishes,
        slow: impairments.slow,
        slow_ack_ms: impairments.slow_ack.as_millis() as u64,
        ..accounting
    };
    let mut report = Report::new("fanin", &run, args.rate, connect_time, duration);
    report.fanin = Some(accounting);
    Ok(report)
}

/// A client's task and the channel that says whether it subscribed.
type Spawned<T> = (JoinHandle<T>, oneshot::Receiver<anyhow::Result<()>>);

fn spawn_subscriber(
    run: &Arc<Run>,
    plan: SubscriberPlan,
    stop: &watch::Receiver<bool>,
) -> Spawned<Subscribed> {
    let (ready, subscribed) = oneshot::channel();
    let task = tokio::spawn(fanin_clients::subscriber(
        run.clone(),
        plan,
        ready,
        stop.clone(),
    ));
    (task, subscribed)
}

/// A subscriber that stops reading once subscribed; `None` if it could not
/// subscribe (said through its ready channel).
fn spawn_stalled(
    run: &Arc<Run>,
    client_id: String,
    filter: &str,
    stop: &watch::Receiver<bool>,
) -> Spawned<Option<Stall>> {
    let (ready, subscribed) = oneshot::channel();
    let (run, filter, mut stop) = (run.clone(), filter.to_string(), stop.clone());
    let task = tokio::spawn(async move {
        let opened = async {
            fanin_clients::discard_session(&run, &client_id).await?;
            let mut connection = run.open_as(&client_id, false).await?;
            connection.subscribe(&filter, QoS::AtLeastOnce).await?;
            impairment::await_suback(&mut connection, SUBSCRIBE_TIMEOUT).await?;
            anyhow::Ok(connection)
        };
        let mut connection = match opened.await {
            Ok(connection) => connection,
            Err(error) => {
                let _ = ready.send(Err(error));
                return None;
            }
        };
        let _ = ready.send(Ok(()));
        let keepalive = Duration::from_secs(u64::from(run.target.keepalive.max(1)));
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let stall = impairment::stall(&mut connection, keepalive, stopped).await;
        if stall.closed_after.is_none() {
            connection.disconnect().await;
        }
        Some(stall)
    });
    (task, subscribed)
}

/// Waits for each client's SUBACK; the first failure ends the run.
async fn wait_subscribed<T>(
    spawned: Vec<Spawned<T>>,
    what: &str,
) -> anyhow::Result<Vec<JoinHandle<T>>> {
    let mut tasks = Vec::with_capacity(spawned.len());
    for (task, ready) in spawned {
        tokio::time::timeout(SUBSCRIBE_TIMEOUT + Duration::from_secs(5), ready)
            .await
            .map_err(|_| anyhow::anyhow!("{what} got no SUBACK within {SUBSCRIBE_TIMEOUT:?}"))?
            .map_err(|_| anyhow::anyhow!("{what} ended before subscribing"))?
            .with_context(|| format!("{what} could not subscribe"))?;
        tasks.push(task);
    }
    Ok(tasks)
}

fn spawn_publishers(
    run: &Arc<Run>,
    args: &FaninArgs,
    start: Instant,
    publish_start: Instant,
    until: Instant,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<Published>> {
    let connect_schedule = run.connect_schedule(start);
    (0..args.clients.count)
        .map(|index| {
            let client_id = args.clients.client_id(index);
            let plan = PublisherPlan {
                index,
                topic: crate::cli::topic(
                    &args.topic,
                    args.clients.start_number + index,
                    &client_id,
                ),
                qos: qos(args.qos),
                size: args.size,
                schedule: args
                    .rate
                    .map(|rate| Schedule::new(publish_start, rate, args.clients.count, index)),
                window: (args.inflight > 0).then_some(args.inflight),
                publish_start,
                until,
            };
            let (run, stop) = (run.clone(), stop.clone());
            let connect_at = connect_schedule.intended(u64::from(index));
            tokio::spawn(async move {
                match run.connect(index, connect_at).await {
                    Some(connection) => {
                        fanin_clients::publisher(&run, connection, plan, stop).await
                    }
                    None => Published::default(),
                }
            })
        })
        .collect()
}

/// (sent, acknowledged, received) so far.
fn snapshot(counters: &Counters) -> (u64, u64, u64) {
    (
        Counters::get(&counters.published),
        Counters::get(&counters.acked),
        Counters::get(&counters.received),
    )
}

/// Waits until everything sent is acknowledged and received (then a short
/// grace for late duplicates), or until nothing new has been acknowledged
/// or received for `settle`. Returns whether everything came.
async fn settle(counters: &Counters, qos: QoS, settle: Duration) -> bool {
    let mut seen = snapshot(counters);
    let mut quiet_since = Instant::now();
    let mut complete_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let now_seen = snapshot(counters);
        let (sent, acked, received) = now_seen;
        if now_seen != seen {
            seen = now_seen;
            quiet_since = now;
        }
        let complete = received >= sent && (qos == QoS::AtMostOnce || acked >= sent);
        if complete {
            let since = *complete_since.get_or_insert(now);
            if now.duration_since(since) >= COMPLETE_GRACE.min(settle) {
                return true;
            }
        } else if now.duration_since(quiet_since) >= settle {
            return false;
        }
    }
}
