//! Scan processor: scan uplinks → validated scans for the payment backend.
//! A code that is not a recognized payment code goes to the dead-letter topic
//! with the reason, and the scan box is told it was not accepted.

use crate::config::{KafkaSettings, ScanProcessorConfig};
use crate::pipeline::{now_ms, Input, Output, Processor, Verdict};
use crate::scancode;
use herald_schemas::v1::{CommandKind, Display, DownlinkCommand, ScanResult, ValidatedScan};
use herald_schemas::Message as _;

pub struct ScanProcessor {
    config: ScanProcessorConfig,
    downlink_topic: String,
}

/// Header Herald's bridge puts on uplinks (bridge/src/producer.rs).
const RECEIVED_AT: &str = "herald-received-at";

impl ScanProcessor {
    pub fn new(config: &ScanProcessorConfig, kafka: &KafkaSettings) -> Self {
        Self {
            config: config.clone(),
            downlink_topic: kafka.downlink_topic.clone(),
        }
    }

    /// A device payload: ScanResult as protobuf or JSON, or (simple scanners)
    /// the code itself as plain text.
    fn read_scan(payload: &[u8]) -> ScanResult {
        herald_schemas::decode_device_payload::<ScanResult>(payload)
            .ok()
            .filter(|scan| !scan.code.is_empty())
            .unwrap_or_else(|| ScanResult {
                code: String::from_utf8_lossy(payload).trim().to_string(),
                ..Default::default()
            })
    }

    fn rejection_display(&self, device_id: &str, message_id: &str, now: i64) -> Output {
        let display = Display {
            text: self.config.rejection_text.clone(),
            locale: self.config.rejection_locale.clone(),
        };
        let command = DownlinkCommand {
            command_id: format!("scan-rejected:{message_id}"),
            device_id: device_id.into(),
            kind: CommandKind::Display as i32,
            payload: display.encode_to_vec(),
            created_at_ms: now,
            expires_at_ms: now + self.config.display_ttl.as_millis() as i64,
        };
        Output {
            topic: self.downlink_topic.clone(),
            key: device_id.into(),
            payload: command.encode_to_vec(),
        }
    }
}

impl Processor for ScanProcessor {
    fn name(&self) -> &'static str {
        "scan-processor"
    }

    fn process(&self, input: &Input<'_>) -> Verdict {
        let now = now_ms();
        let device_id = input.key_str();
        let scan = Self::read_scan(input.payload);
        let message_id = if scan.scan_id.is_empty() {
            format!("{device_id}:{}:{}", input.partition, input.offset)
        } else {
            format!("{device_id}:{}", scan.scan_id)
        };
        match scancode::classify(&scan.code) {
            Ok(scheme) => {
                let validated = ValidatedScan {
                    device_id: device_id.clone(),
                    message_id,
                    code: scan.code.trim().to_string(),
                    scheme: scheme as i32,
                    scanned_at_ms: scan.scanned_at_ms,
                    received_at_ms: input
                        .header(RECEIVED_AT)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(now),
                };
                Verdict::Emit(vec![Output {
                    topic: self.config.validated_topic.clone(),
                    key: device_id,
                    payload: validated.encode_to_vec(),
                }])
            }
            Err(rejection) => Verdict::Reject {
                error: format!("{}: {rejection}", rejection.as_str()),
                also: if device_id.is_empty() {
                    Vec::new()
                } else {
                    vec![self.rejection_display(&device_id, &message_id, now)]
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protobuf_json_and_plain_codes() {
        let proto = ScanResult {
            code: "134567890123456789".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(ScanProcessor::read_scan(&proto).code, "134567890123456789");
        assert_eq!(
            ScanProcessor::read_scan(br#"{"code":"281234567890123456"}"#).code,
            "281234567890123456"
        );
        assert_eq!(
            ScanProcessor::read_scan(b" 6212345678901234567\n").code,
            "6212345678901234567"
        );
    }
}
