//! Scan processor: scan uplinks → validated scans for the payment backend.
//!
//! Every scan must carry the scan box's `scan_id`: it is the scan's identity
//! (`ValidatedScan.message_id` = `<device_id>:<scan_id>`), so that a scan the
//! device retransmitted is never taken for a new one. A scan without one (a
//! `ScanResult` with an empty `scan_id`, or a bare-text code, which cannot
//! carry one) is refused, like a code that is not a recognized payment code:
//! it goes to the dead-letter topic with the reason, and the scan box is told
//! it was not accepted. A scan seen again within the instance's dedup window
//! (same device and `scan_id`) is dropped.

use crate::config::{KafkaSettings, ScanProcessorConfig};
use crate::pipeline::{now_ms, Input, Output, Processor, Verdict};
use crate::scancode::{self, ScanRejection};
use herald_schemas::headers::{MESSAGE_ID as MESSAGE_ID_HEADER, RECEIVED_AT};
use herald_schemas::v1::{CommandKind, Display, DownlinkCommand, ScanResult, ValidatedScan};
use herald_schemas::Message as _;

pub struct ScanProcessor {
    config: ScanProcessorConfig,
    downlink_topic: String,
}

/// Why a scan is not passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanRefusal {
    /// A `ScanResult` with an empty `scan_id`.
    #[error("missing scan_id: the ScanResult has no scan_id, so a retransmission could not be told from a new scan")]
    MissingScanId,
    /// Not a `ScanResult` with a code or a scan id: a bare-text code (which
    /// cannot carry a `scan_id`), or a payload that does not decode.
    #[error("missing scan_id: the payload is not a ScanResult (a bare-text code cannot carry a scan_id)")]
    NotAScanResult,
    /// The scan is identified, but its code is not a payment code.
    #[error("{0}")]
    Code(ScanRejection),
}

impl ScanRefusal {
    /// Stable machine-readable reason, for dead letters and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingScanId | Self::NotAScanResult => "missing_scan_id",
            Self::Code(rejection) => rejection.as_str(),
        }
    }
}

impl ScanProcessor {
    pub fn new(config: &ScanProcessorConfig, kafka: &KafkaSettings) -> Self {
        Self {
            config: config.clone(),
            downlink_topic: kafka.downlink_topic.clone(),
        }
    }

    /// A device payload as a `ScanResult` (protobuf or JSON) that names
    /// itself: a code or a scan id is set, and the scan id is not empty.
    fn read_scan(payload: &[u8]) -> Result<ScanResult, ScanRefusal> {
        let scan = herald_schemas::decode_device_payload::<ScanResult>(payload)
            .ok()
            .filter(|scan| !scan.code.is_empty() || !scan.scan_id.is_empty())
            .ok_or(ScanRefusal::NotAScanResult)?;
        if scan.scan_id.is_empty() {
            return Err(ScanRefusal::MissingScanId);
        }
        Ok(scan)
    }

    /// The identity of the scan in `input`: `<device_id>:<scan_id>`, or, for
    /// a scan without a `scan_id`, Herald's `herald-message-id` header.
    fn scan_identity(device_id: &str, input: &Input<'_>) -> Option<String> {
        match Self::read_scan(input.payload) {
            Ok(scan) => Some(format!("{device_id}:{}", scan.scan_id)),
            Err(_) => input.header(MESSAGE_ID_HEADER).map(str::to_owned),
        }
    }

    fn rejection_display(&self, device_id: &str, text: &str, message_id: &str, now: i64) -> Output {
        let display = Display {
            text: text.into(),
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

    /// The refusal of the scan in `input`: a dead letter with the reason,
    /// and a display command for the scan box.
    fn refuse(
        &self,
        device_id: &str,
        input: &Input<'_>,
        refusal: ScanRefusal,
        now: i64,
    ) -> Verdict {
        let text = match refusal {
            ScanRefusal::Code(_) => &self.config.rejection_text,
            ScanRefusal::MissingScanId | ScanRefusal::NotAScanResult => {
                &self.config.missing_scan_id_text
            }
        };
        // A command id for the display: the scan's identity when it has one.
        let message_id = Self::scan_identity(device_id, input)
            .unwrap_or_else(|| format!("{device_id}:{}:{}", input.partition, input.offset));
        Verdict::Reject {
            reason: refusal.as_str(),
            error: format!("{}: {refusal}", refusal.as_str()),
            also: if device_id.is_empty() {
                Vec::new()
            } else {
                vec![self.rejection_display(device_id, text, &message_id, now)]
            },
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
        let scan = match Self::read_scan(input.payload) {
            Ok(scan) => scan,
            Err(refusal) => return self.refuse(&device_id, input, refusal, now),
        };
        let scheme = match scancode::classify(&scan.code) {
            Ok(scheme) => scheme,
            Err(rejection) => {
                return self.refuse(&device_id, input, ScanRefusal::Code(rejection), now)
            }
        };
        let validated = ValidatedScan {
            device_id: device_id.clone(),
            message_id: format!("{device_id}:{}", scan.scan_id),
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

    /// `<device_id>:<scan_id>`, the `ValidatedScan.message_id`: it names the
    /// scan itself, so a retransmission is caught even if the scan box
    /// re-encoded it; the uplink's `herald-message-id` for a scan without a
    /// `scan_id` (refused, but its refusal is not repeated).
    fn dedup_key(&self, input: &Input<'_>) -> Option<String> {
        Self::scan_identity(&input.key_str(), input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    /// A record as Herald's bridge writes it: keyed by device id, with the
    /// message id and reception time headers.
    fn record(device_id: &str, payload: &[u8], message_id: Option<&str>) -> OwnedMessage {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: RECEIVED_AT,
            value: Some("1790000000000"),
        });
        if let Some(id) = message_id {
            headers = headers.insert(Header {
                key: MESSAGE_ID_HEADER,
                value: Some(id),
            });
        }
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(device_id.as_bytes().to_vec()),
            "herald.uplink.scan".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(headers),
        )
    }

    fn scan(code: &str, scan_id: &str) -> Vec<u8> {
        ScanResult {
            code: code.into(),
            scanned_at_ms: 1_789_999_999_000,
            scan_id: scan_id.into(),
        }
        .encode_to_vec()
    }

    fn processor() -> ScanProcessor {
        ScanProcessor::new(&ScanProcessorConfig::default(), &KafkaSettings::default())
    }

    #[test]
    fn reads_protobuf_and_json_scans_with_their_scan_id() {
        let proto = ScanProcessor::read_scan(&scan("134567890123456789", "s-1")).unwrap();
        assert_eq!(
            (proto.code.as_str(), proto.scan_id.as_str()),
            ("134567890123456789", "s-1")
        );
        let json =
            ScanProcessor::read_scan(br#"{"code":"281234567890123456","scanId":"s-2"}"#).unwrap();
        assert_eq!(
            (json.code.as_str(), json.scan_id.as_str()),
            ("281234567890123456", "s-2")
        );
    }

    #[test]
    fn a_scan_without_scan_id_is_refused() {
        assert_eq!(
            ScanProcessor::read_scan(&scan("134567890123456789", "")),
            Err(ScanRefusal::MissingScanId)
        );
        assert_eq!(
            ScanProcessor::read_scan(br#"{"code":"281234567890123456"}"#),
            Err(ScanRefusal::MissingScanId)
        );
        // Bare text cannot carry a scan_id.
        assert_eq!(
            ScanProcessor::read_scan(b" 6212345678901234567\n"),
            Err(ScanRefusal::NotAScanResult)
        );
        assert_eq!(ScanRefusal::NotAScanResult.as_str(), "missing_scan_id");

        let message = record("scanbox-1", b"281234567890123456", Some("scanbox-1:ab12"));
        let Verdict::Reject {
            reason,
            error,
            also,
        } = processor().process(&Input::new(&message))
        else {
            panic!("a scan without scan_id is not passed on");
        };
        assert_eq!(reason, "missing_scan_id");
        assert!(error.starts_with("missing_scan_id: "), "{error}");
        assert_eq!(also.len(), 1, "only the display command, no ValidatedScan");
        assert_eq!(also[0].topic, "herald.downlink");
        let command = DownlinkCommand::decode(&also[0].payload[..]).unwrap();
        assert_eq!(command.command_id, "scan-rejected:scanbox-1:ab12");
        assert_eq!(command.kind(), CommandKind::Display);
        let display = Display::decode(&command.payload[..]).unwrap();
        assert_eq!(display.text, "Scan not accepted: missing scan_id");
    }

    #[test]
    fn a_scan_is_validated_with_its_device_and_scan_id() {
        let message = record("scanbox-1", &scan("134567890123456789", "s-1"), None);
        let Verdict::Emit(outputs) = processor().process(&Input::new(&message)) else {
            panic!("a valid scan is passed on");
        };
        let validated = ValidatedScan::decode(&outputs[0].payload[..]).unwrap();
        assert_eq!(validated.message_id, "scanbox-1:s-1");
        assert_eq!(validated.received_at_ms, 1_790_000_000_000);
        assert_eq!(outputs[0].topic, "herald.payment.scans");
    }

    #[test]
    fn a_rejected_code_is_told_with_the_scan_id() {
        let message = record("scanbox-1", &scan("99999", "s-9"), None);
        let Verdict::Reject { reason, also, .. } = processor().process(&Input::new(&message))
        else {
            panic!("not a payment code");
        };
        assert_eq!(reason, "unknown_prefix");
        let command = DownlinkCommand::decode(&also[0].payload[..]).unwrap();
        assert_eq!(command.command_id, "scan-rejected:scanbox-1:s-9");
        let display = Display::decode(&command.payload[..]).unwrap();
        assert_eq!(display.text, "Payment code not accepted");
    }

    #[test]
    fn a_scan_is_identified_by_device_and_scan_id_however_encoded() {
        let p = processor();
        let proto = record("scanbox-1", &scan("134567890123456789", "s-1"), Some("x:1"));
        let json = record(
            "scanbox-1",
            br#"{"code":"134567890123456789","scanId":"s-1"}"#,
            Some("x:2"),
        );
        assert_eq!(
            p.dedup_key(&Input::new(&proto)).as_deref(),
            Some("scanbox-1:s-1")
        );
        assert_eq!(
            p.dedup_key(&Input::new(&json)).as_deref(),
            Some("scanbox-1:s-1")
        );
        let other_box = record("scanbox-2", &scan("134567890123456789", "s-1"), None);
        assert_eq!(
            p.dedup_key(&Input::new(&other_box)).as_deref(),
            Some("scanbox-2:s-1")
        );
        // Without a scan_id: Herald's message id, if the record has one.
        let bare = record("scanbox-1", b"134567890123456789", Some("scanbox-1:ab12"));
        assert_eq!(
            p.dedup_key(&Input::new(&bare)).as_deref(),
            Some("scanbox-1:ab12")
        );
        let bare = record("scanbox-1", b"134567890123456789", None);
        assert_eq!(p.dedup_key(&Input::new(&bare)), None);
    }
}
