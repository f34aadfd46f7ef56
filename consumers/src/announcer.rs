//! Announcer: payment events → announcement commands for the merchant's
//! speaker. The payment id is the command id, so a replayed event never
//! announces twice on a speaker that drops duplicates; an event past its TTL
//! is not announced and gets an "expired" receipt instead. A payment event
//! seen again within the instance's dedup window (same `payment_id`) is
//! dropped before it reaches the speaker.

use crate::config::{AnnouncerConfig, KafkaSettings};
use crate::pipeline::{now_ms, Input, Output, Processor, Verdict};
use herald_schemas::v1::{
    Announcement, CommandKind, DeliveryOutcome, DeliveryReceipt, DownlinkCommand, PaymentEvent,
};
use herald_schemas::Message as _;

pub struct Announcer {
    config: AnnouncerConfig,
    downlink_topic: String,
    receipts_topic: String,
}

impl Announcer {
    pub fn new(config: &AnnouncerConfig, kafka: &KafkaSettings) -> Self {
        Self {
            config: config.clone(),
            downlink_topic: kafka.downlink_topic.clone(),
            receipts_topic: kafka.receipts_topic.clone(),
        }
    }

    /// The outputs for one payment event at time `now` (Unix ms).
    pub fn announce(&self, event: &PaymentEvent, now: i64) -> Result<Vec<Output>, String> {
        if event.payment_id.is_empty() {
            return Err("payment_id is empty".into());
        }
        if event.device_id.is_empty() || event.device_id.contains(['/', '+', '#']) {
            return Err(format!("invalid speaker device id {:?}", event.device_id));
        }
        let created = if event.created_at_ms > 0 {
            event.created_at_ms
        } else {
            now
        };
        let expires = match event.expires_at_ms {
            0 => created.saturating_add(self.config.default_ttl.as_millis() as i64),
            at => at,
        };
        if expires <= now {
            let receipt = DeliveryReceipt {
                command_id: event.payment_id.clone(),
                device_id: event.device_id.clone(),
                outcome: DeliveryOutcome::Expired as i32,
                reason: "payment event older than its TTL; not announced".into(),
                latency_ms: now - created,
                at_ms: now,
            };
            return Ok(vec![Output {
                topic: self.receipts_topic.clone(),
                key: event.device_id.clone(),
                payload: receipt.encode_to_vec(),
            }]);
        }
        let text = self
            .config
            .templates
            .render(
                &event.locale,
                event.channel(),
                event.amount_minor,
                &event.currency,
            )
            .map_err(|e| format!("cannot render the announcement: {e}"))?;
        let announcement = Announcement {
            text,
            locale: event.locale.clone(),
            payment_id: event.payment_id.clone(),
            amount_minor: event.amount_minor,
            currency: event.currency.clone(),
        };
        let command = DownlinkCommand {
            command_id: event.payment_id.clone(),
            device_id: event.device_id.clone(),
            kind: CommandKind::Announce as i32,
            payload: announcement.encode_to_vec(),
            created_at_ms: created,
            expires_at_ms: expires,
        };
        Ok(vec![Output {
            topic: self.downlink_topic.clone(),
            key: event.device_id.clone(),
            payload: command.encode_to_vec(),
        }])
    }
}

impl Processor for Announcer {
    fn name(&self) -> &'static str {
        "announcer"
    }

    fn process(&self, input: &Input<'_>) -> Verdict {
        let result = PaymentEvent::decode(input.payload)
            .map_err(|e| format!("not a PaymentEvent: {e}"))
            .and_then(|event| self.announce(&event, now_ms()));
        match result {
            Ok(outputs) => Verdict::Emit(outputs),
            Err(error) => Verdict::Reject {
                reason: "invalid",
                error,
                also: Vec::new(),
            },
        }
    }

    /// The payment id: the payment backend's own identity of the event, and
    /// already the announcement's command id. A replayed event is the same
    /// payment, whatever else changed in the record.
    fn dedup_key(&self, input: &Input<'_>) -> Option<String> {
        PaymentEvent::decode(input.payload)
            .ok()
            .map(|event| event.payment_id)
            .filter(|id| !id.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::v1::PaymentChannel;

    fn event(expires_at_ms: i64) -> PaymentEvent {
        PaymentEvent {
            payment_id: "pay-1".into(),
            merchant_id: "m-1".into(),
            device_id: "spk-1".into(),
            amount_minor: 1250,
            currency: "CNY".into(),
            channel: PaymentChannel::Alipay as i32,
            locale: "zh-CN".into(),
            created_at_ms: 1_000,
            expires_at_ms,
        }
    }

    fn announcer() -> Announcer {
        Announcer::new(&AnnouncerConfig::default(), &KafkaSettings::default())
    }

    #[test]
    fn payment_becomes_an_announcement_with_the_payment_id() {
        let outputs = announcer().announce(&event(0), 2_000).unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(
            (outputs[0].topic.as_str(), outputs[0].key.as_str()),
            ("herald.downlink", "spk-1")
        );
        let command = DownlinkCommand::decode(&outputs[0].payload[..]).unwrap();
        assert_eq!(command.command_id, "pay-1");
        assert_eq!(command.kind(), CommandKind::Announce);
        assert_eq!(command.expires_at_ms, 61_000, "created + default TTL");
        let announcement = Announcement::decode(&command.payload[..]).unwrap();
        assert_eq!(announcement.text, "支付宝收款十二元五角");
    }

    #[test]
    fn expired_payment_gets_a_receipt_not_an_announcement() {
        let outputs = announcer().announce(&event(1_500), 2_000).unwrap();
        assert_eq!(outputs[0].topic, "herald.receipts");
        let receipt = DeliveryReceipt::decode(&outputs[0].payload[..]).unwrap();
        assert_eq!(
            (receipt.command_id.as_str(), receipt.outcome()),
            ("pay-1", DeliveryOutcome::Expired)
        );
    }

    #[test]
    fn a_payment_is_identified_by_its_payment_id() {
        use rdkafka::message::{OwnedMessage, Timestamp};
        let record = |payload: Vec<u8>| {
            OwnedMessage::new(
                Some(payload),
                Some(b"spk-1".to_vec()),
                "herald.payments".into(),
                Timestamp::NotAvailable,
                0,
                7,
                None,
            )
        };
        let a = announcer();
        let replayed = PaymentEvent {
            created_at_ms: 5_000,
            ..event(0)
        };
        for payload in [event(0).encode_to_vec(), replayed.encode_to_vec()] {
            let message = record(payload);
            assert_eq!(a.dedup_key(&Input::new(&message)).as_deref(), Some("pay-1"));
        }
        let message = record(b"not a payment".to_vec());
        assert_eq!(a.dedup_key(&Input::new(&message)), None);
    }

    #[test]
    fn poison_events_are_rejected() {
        let a = announcer();
        assert!(a
            .announce(
                &PaymentEvent {
                    payment_id: String::new(),
                    ..event(0)
                },
                2_000
            )
            .is_err());
        assert!(a
            .announce(
                &PaymentEvent {
                    currency: "XYZ".into(),
                    ..event(0)
                },
                2_000
            )
            .is_err());
        assert!(a
            .announce(
                &PaymentEvent {
                    amount_minor: -5,
                    ..event(0)
                },
                2_000
            )
            .is_err());
    }
}
