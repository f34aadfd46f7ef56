//! What happens to one command: it is handed to the device where the device
//! is. Connected here, offline or unknown, it goes to this node's broker
//! (which holds it for an offline device until it subscribes). Connected to
//! another node, it is forwarded to that node's inbox topic, and once Kafka
//! acknowledged the forward, this node is done with it. A command waiting
//! here whose device connects to another node is forwarded then.
//!
//! A command that ends here ends with exactly one receipt: delivered (the
//! device's PUBACK), expired, or refused. The caller stores its offset only
//! once that receipt (or the forward) is acknowledged by Kafka.

use crate::presence::now_ms;
use crate::presence_view::PresenceView;
use crate::producer::HeraldProducer;
use herald_broker::{BrokerHandle, DeliveryOutcome, DeliveryTicket, Downlink};
use herald_schemas::headers;
use herald_schemas::trace::TraceContext;
use herald_schemas::v1::{
    CommandKind, DeliveryOutcome as ReceiptOutcome, DeliveryReceipt, DownlinkCommand,
};
use herald_schemas::Message as _;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Settings of the dispatcher, from `[kafka.downlink]` and `[kafka.cluster]`.
pub(crate) struct DispatchSettings {
    pub topic_prefix: String,
    pub receipts_topic: String,
    /// `<downlink topic>.inbox.`; a node's inbox is this and its id.
    pub inbox_prefix: String,
    pub default_ttl: Duration,
    pub max_forwards: u32,
}

/// Routes commands and writes their receipts.
pub(crate) struct Dispatcher {
    /// Receipts and forwards: their own producer, apart from uplinks.
    producer: HeraldProducer,
    handle: BrokerHandle,
    view: Arc<PresenceView>,
    settings: DispatchSettings,
    metrics: Metrics,
}

struct Metrics {
    outcomes: IntCounterVec,
    forwards: IntCounterVec,
    pub(crate) inflight: IntGauge,
    latency: Histogram,
}

/// How a command ended on this node.
pub(crate) enum Settled {
    /// Here, with this receipt (to be written).
    Receipt(DeliveryReceipt),
    /// Forwarded to another node's inbox, acknowledged by Kafka.
    Forwarded,
    /// Shutdown came first: left for redelivery.
    Abandoned,
}

/// A command on its way: decided synchronously, in partition order.
pub(crate) enum Pending {
    Done(DeliveryReceipt),
    Routed(Box<Routed>),
}

pub(crate) struct Routed {
    command: DownlinkCommand,
    /// The command's trace context, kept on its forward to another node.
    trace: Option<TraceContext>,
    /// Its payload is the record's value, forwarded as it is.
    downlink: Downlink,
    expires_at_ms: i64,
    forwards: u32,
    watcher: Arc<tokio::sync::Notify>,
    /// `None` only while being replaced.
    step: Option<Step>,
}

enum Step {
    /// In this node's broker.
    Waiting(DeliveryTicket),
    /// Queued for another node's inbox.
    Forwarding(DeliveryFuture),
}

impl Dispatcher {
    pub(crate) fn new(
        producer: HeraldProducer,
        handle: BrokerHandle,
        view: Arc<PresenceView>,
        settings: DispatchSettings,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = Metrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "herald_downlinks_total",
                    "Downlink commands settled, by outcome.",
                ),
                &["outcome"],
            )?,
            forwards: IntCounterVec::new(
                Opts::new(
                    "herald_cluster_forwards_total",
                    "Commands forwarded to another node's inbox, by result (ok, retried).",
                ),
                &["result"],
            )?,
            inflight: IntGauge::new(
                "herald_downlinks_inflight",
                "Downlink commands handed to devices and not settled.",
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "herald_downlink_delivery_seconds",
                    "From a command's creation to the device's PUBACK.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                ]),
            )?,
        };
        registry.register(Box::new(metrics.outcomes.clone()))?;
        registry.register(Box::new(metrics.forwards.clone()))?;
        registry.register(Box::new(metrics.inflight.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        Ok(Self {
            producer,
            handle,
            view,
            settings,
            metrics,
        })
    }

    pub(crate) fn producer(&self) -> &HeraldProducer {
        &self.producer
    }

    pub(crate) fn inflight(&self) -> &IntGauge {
        &self.metrics.inflight
    }

    /// Decodes a command and sends it on its way: to this node's broker or
    /// to another node's inbox. Synchronous, so commands keep their order.
    /// `trace` ([`command_trace`]) goes out with it: as MQTT 5 user
    /// properties to the device, as headers to another node's inbox.
    pub(crate) fn start(&self, message: &OwnedMessage, trace: Option<&TraceContext>) -> Pending {
        let key = message.key().unwrap_or_default();
        let payload = message.payload().unwrap_or_default();
        let now = now_ms();
        let command = match DownlinkCommand::decode(payload) {
            Ok(command) => command,
            Err(error) => {
                return Pending::Done(DeliveryReceipt {
                    device_id: String::from_utf8_lossy(key).into_owned(),
                    outcome: ReceiptOutcome::Refused as i32,
                    reason: format!("undecodable command: {error}"),
                    at_ms: now,
                    ..Default::default()
                })
            }
        };
        let expires_at_ms = match command.expires_at_ms {
            0 => (if command.created_at_ms > 0 {
                command.created_at_ms
            } else {
                now
            })
            .saturating_add(self.settings.default_ttl.as_millis() as i64),
            at => at,
        };
        if expires_at_ms <= now {
            return Pending::Done(receipt(
                &command,
                ReceiptOutcome::Expired,
                "expired before delivery".into(),
                now,
            ));
        }
        let kind = match command.kind() {
            CommandKind::Announce => "announce",
            CommandKind::PrintChunk => "print",
            CommandKind::Display => "display",
            CommandKind::Unspecified => "command",
        };
        let downlink = Downlink {
            device_id: command.device_id.clone(),
            topic: format!(
                "{}/{}/down/{kind}",
                self.settings.topic_prefix, command.device_id
            ),
            payload: payload.to_vec().into(),
            expires_at: Some(UNIX_EPOCH + Duration::from_millis(expires_at_ms.max(0) as u64)),
            // The broker leaves them out for an MQTT 3.1.1 device.
            user_properties: trace
                .iter()
                .flat_map(|trace| trace.pairs())
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        };
        let forwards = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == headers::FORWARDS))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
            .unwrap_or(0);
        // Watched before it is located, so that no move goes unnoticed.
        let watcher = self.view.watch(&command.device_id);
        let mut routed = Routed {
            command,
            trace: trace.cloned(),
            downlink,
            expires_at_ms,
            forwards,
            watcher,
            step: None,
        };
        routed.step = Some(self.route(&routed));
        Pending::Routed(Box::new(routed))
    }

    /// Where the command goes now.
    fn route(&self, routed: &Routed) -> Step {
        match self.destination(routed) {
            Some(node) => match self.forward(routed, &node) {
                Some(delivery) => Step::Forwarding(delivery),
                // The forward producer's queue is full: deliver from here.
                None => Step::Waiting(self.handle.deliver(routed.downlink.clone())),
            },
            None => Step::Waiting(self.handle.deliver(routed.downlink.clone())),
        }
    }

    /// The node to forward to, if the device is connected to another one
    /// (and not here).
    fn destination(&self, routed: &Routed) -> Option<Arc<str>> {
        let device_id = &routed.command.device_id;
        if routed.forwards >= self.settings.max_forwards || self.handle.is_connected(device_id) {
            return None;
        }
        self.view.locate(device_id)
    }

    fn forward(&self, routed: &Routed, node: &str) -> Option<DeliveryFuture> {
        let topic = format!("{}{node}", self.settings.inbox_prefix);
        let forwards = (routed.forwards + 1).to_string();
        let record = FutureRecord::to(&topic)
            .key(&routed.command.device_id)
            .payload(&routed.downlink.payload[..])
            .headers(with_trace(
                OwnedHeaders::new()
                    .insert(Header {
                        key: headers::FORWARDS,
                        value: Some(&forwards),
                    })
                    .insert(Header {
                        key: headers::FORWARDED_BY,
                        value: Some(self.view.node().as_ref()),
                    }),
                routed.trace.as_ref(),
            ));
        match self.producer.send_result(record) {
            Ok(delivery) => Some(delivery),
            Err((error, _)) => {
                self.metrics.forwards.with_label_values(&["retried"]).inc();
                debug!(%error, node, "forward not queued");
                None
            }
        }
    }

    /// Waits for the command's end on this node: its outcome here, or its
    /// forward acknowledged. A command whose device connects to another
    /// node meanwhile is forwarded there; a downlink the broker let go of
    /// (its session ended) is routed again.
    pub(crate) async fn settle(&self, pending: Pending, shutdown: &CancellationToken) -> Settled {
        let mut routed = match pending {
            Pending::Done(receipt) => return Settled::Receipt(receipt),
            Pending::Routed(routed) => routed,
        };
        let settled = self.follow(&mut routed, shutdown).await;
        let Routed {
            command, watcher, ..
        } = *routed;
        self.view.unwatch(&command.device_id, watcher);
        settled
    }

    async fn follow(&self, routed: &mut Routed, shutdown: &CancellationToken) -> Settled {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((routed.expires_at_ms - now_ms()).max(0) as u64);
        let expired = || {
            Settled::Receipt(receipt(
                &routed.command,
                ReceiptOutcome::Expired,
                "expired before the device acknowledged".into(),
                now_ms(),
            ))
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let watcher = routed.watcher.clone();
            let mut moved = pin!(watcher.notified());
            moved.as_mut().enable();
            let step = match routed.step.take() {
                // Decided before `moved` listened (in `start`, or before a
                // wake-up that found the device here): a move in between
                // woke nobody, so look again now that one would.
                Some(Step::Waiting(ticket)) if self.destination(routed).is_some() => {
                    debug!(device_id = %routed.command.device_id, "device moved before its command waited: forwarding it");
                    drop(ticket);
                    self.route(routed)
                }
                Some(step) => step,
                None => self.route(routed),
            };
            match step {
                Step::Forwarding(delivery) => match delivery.await {
                    Ok(Ok(_)) => {
                        self.metrics.forwards.with_label_values(&["ok"]).inc();
                        return Settled::Forwarded;
                    }
                    failure => {
                        self.metrics.forwards.with_label_values(&["retried"]).inc();
                        let error = match failure {
                            Ok(Err((error, _))) => error.to_string(),
                            _ => "producer shut down".into(),
                        };
                        warn!(command_id = %routed.command.command_id, %error, "forward not written; routing again");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Settled::Abandoned,
                            _ = tokio::time::sleep_until(deadline) => return expired(),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
                Step::Waiting(mut ticket) => {
                    tokio::select! {
                        outcome = &mut ticket => {
                            if let Some(outcome) = outcome {
                                return Settled::Receipt(self.outcome_receipt(&routed.command, outcome));
                            }
                            // Let go of by the broker (its session ended): route again.
                        }
                        // Dropping the ticket tells the broker not to send it any more.
                        _ = tokio::time::sleep_until(deadline) => return expired(),
                        _ = &mut moved => {
                            if self.destination(routed).is_none() {
                                routed.step = Some(Step::Waiting(ticket));
                                continue;
                            }
                            debug!(device_id = %routed.command.device_id, "device moved: forwarding its waiting command");
                        }
                    }
                }
            }
            routed.step = Some(self.route(routed));
        }
    }

    fn outcome_receipt(
        &self,
        command: &DownlinkCommand,
        outcome: DeliveryOutcome,
    ) -> DeliveryReceipt {
        let now = now_ms();
        let (outcome, reason) = match outcome {
            DeliveryOutcome::Acknowledged => {
                if command.created_at_ms > 0 {
                    let latency = (now - command.created_at_ms).max(0) as f64 / 1000.0;
                    self.metrics.latency.observe(latency);
                }
                (ReceiptOutcome::Delivered, String::new())
            }
            DeliveryOutcome::Expired => (
                ReceiptOutcome::Expired,
                "expired before the device acknowledged".into(),
            ),
            DeliveryOutcome::Refused(refusal) => (ReceiptOutcome::Refused, refusal.as_str().into()),
        };
        receipt(command, outcome, reason, now)
    }

    /// Writes a receipt, retrying until Kafka acknowledges it; while the
    /// producer's queue is full, waits for room. Returns false if shutdown
    /// came first. The receipt carries its command's `trace`, so that its
    /// readers (the print dispatcher) stay in the command's trace.
    pub(crate) async fn write_receipt(
        &self,
        receipt: &DeliveryReceipt,
        trace: Option<&TraceContext>,
        shutdown: &CancellationToken,
    ) -> bool {
        let label = match receipt.outcome() {
            ReceiptOutcome::Delivered => "delivered",
            ReceiptOutcome::Expired => "expired",
            ReceiptOutcome::Refused => "refused",
            ReceiptOutcome::Unspecified => "unspecified",
        };
        self.metrics.outcomes.with_label_values(&[label]).inc();
        let payload = receipt.encode_to_vec();
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(&self.settings.receipts_topic)
                .key(&receipt.device_id)
                .payload(&payload)
                .headers(with_trace(OwnedHeaders::new(), trace));
            let failure = match self.producer.send_result(record) {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => return true,
                    Ok(Err((error, _))) => Some(error.to_string()),
                    Err(_canceled) => Some("producer shut down".to_string()),
                },
                // Full: wait for room, without backing off or warning.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
                Err((error, _)) => Some(error.to_string()),
            };
            let pause = match failure {
                None => Duration::from_millis(20),
                Some(error) => {
                    warn!(command_id = %receipt.command_id, %error, "receipt not written; retrying");
                    let pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The trace context of a command record (W3C Trace Context, see
/// `herald_schemas::trace`). An invalid `traceparent` is not passed on.
pub(crate) fn command_trace(message: &OwnedMessage) -> Option<TraceContext> {
    let headers = message.headers()?;
    match TraceContext::from_headers(headers.iter().map(|h| (h.key, h.value)))? {
        Ok(trace) => Some(trace),
        Err(error) => {
            debug!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %error,
                "command's traceparent header is not W3C trace context; not passed on");
            None
        }
    }
}

/// `headers` and then `trace`'s headers, if any.
fn with_trace(mut headers: OwnedHeaders, trace: Option<&TraceContext>) -> OwnedHeaders {
    for (key, value) in trace.iter().flat_map(|trace| trace.pairs()) {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

fn receipt(
    command: &DownlinkCommand,
    outcome: ReceiptOutcome,
    reason: String,
    now: i64,
) -> DeliveryReceipt {
    DeliveryReceipt {
        command_id: command.command_id.clone(),
        device_id: command.device_id.clone(),
        outcome: outcome as i32,
        reason,
        latency_ms: if command.created_at_ms > 0 {
            now - command.created_at_ms
        } else {
            0
        },
        at_ms: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn command_record(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(Vec::new()),
            Some(b"spk-1".to_vec()),
            "herald.downlink".into(),
            Timestamp::NotAvailable,
            0,
            9,
            Some(headers),
        )
    }

    #[test]
    fn a_commands_valid_trace_context_is_taken_and_written_again() {
        let record = command_record(
            OwnedHeaders::new()
                .insert(Header {
                    key: "traceparent",
                    value: Some(TRACEPARENT),
                })
                .insert(Header {
                    key: "tracestate",
                    value: Some("rojo=1"),
                }),
        );
        let trace = command_trace(&record).expect("a valid traceparent");
        assert_eq!(
            (trace.traceparent(), trace.tracestate()),
            (TRACEPARENT, Some("rojo=1"))
        );
        // On an inbox forward or a receipt: after the record's own headers.
        let headers = with_trace(
            OwnedHeaders::new().insert(Header {
                key: headers::FORWARDS,
                value: Some("1"),
            }),
            Some(&trace),
        );
        let written: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default()))
            .collect();
        assert_eq!(
            written,
            [
                ("herald-forwards", &b"1"[..]),
                ("traceparent", TRACEPARENT.as_bytes()),
                ("tracestate", b"rojo=1"),
            ]
        );
    }

    #[test]
    fn an_invalid_or_missing_traceparent_is_not_passed_on() {
        let invalid = command_record(OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
        }));
        assert_eq!(command_trace(&invalid), None);
        assert_eq!(command_trace(&command_record(OwnedHeaders::new())), None);
        assert_eq!(with_trace(OwnedHeaders::new(), None).count(), 0);
    }
}
