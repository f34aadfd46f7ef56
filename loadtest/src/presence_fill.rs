//! `presence-fill`: writes a synthetic fleet into a presence topic (one
//! online `PresenceEvent` per device, spread over a number of node names),
//! to measure what a Herald node pays at start to replay the cluster-wide
//! device → node view: replay time and memory, at fleet sizes no single
//! machine can connect.

use crate::cli::PresenceFillArgs;
use crate::kafka::{confirmed, enqueue, producer};
use herald_schemas::v1::{PresenceEvent, PresenceReason};
use herald_schemas::Message as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Writes the records; returns how many Kafka confirmed.
pub async fn run(args: &PresenceFillArgs) -> anyhow::Result<u64> {
    let producer = producer(&args.bootstrap_servers)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    let mut confirmed_count = 0u64;
    let mut bytes = 0u64;
    for i in 0..args.devices {
        let device_id = format!("{}{i:08}", args.prefix);
        let event = PresenceEvent {
            device_id: device_id.clone(),
            online: true,
            reason: PresenceReason::Connected as i32,
            at_ms: now_ms,
            // Before any real connection, so real nodes' records win.
            generation: 1 + i,
            node: format!("fill-node-{}", i % args.nodes.max(1)),
        };
        let payload = event.encode_to_vec();
        bytes += (payload.len() + device_id.len()) as u64;
        pending.push(enqueue(&producer, &args.topic, &device_id, &payload).await?);
        if pending.len() == pending.capacity() {
            for delivery in pending.drain(..) {
                confirmed_count += u64::from(confirmed(delivery).await);
            }
        }
    }
    for delivery in pending {
        confirmed_count += u64::from(confirmed(delivery).await);
    }
    let took = started.elapsed();
    println!(
        "presence-fill: {confirmed_count} of {} records confirmed in {:.1} s ({:.0}/s), {:.1} MB of keys and values, {} nodes",
        args.devices,
        took.as_secs_f64(),
        confirmed_count as f64 / took.as_secs_f64().max(0.001),
        bytes as f64 / 1e6,
        args.nodes
    );
    Ok(confirmed_count)
}
