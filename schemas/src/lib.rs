//! Herald's message contracts: protobuf (prost) types for everything that
//! crosses Kafka or reaches a device, with the proto3 JSON mapping (pbjson)
//! for devices that cannot run protobuf. The `.proto` files in `proto/` are
//! the source of truth; docs/schemas.md states the evolution rules.

/// Version 1 of the contracts (`package herald.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/herald.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/herald.v1.serde.rs"));
}

pub mod chunking;
pub mod headers;
pub mod trace;

pub use prost::Message;

/// Decodes a device payload that is either protobuf or its JSON mapping
/// (a JSON payload starts with `{` after optional whitespace).
pub fn decode_device_payload<T>(payload: &[u8]) -> Result<T, DecodeError>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        return serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()));
    }
    T::decode(payload).map_err(DecodeError::Protobuf)
}

/// A payload that is neither valid protobuf nor valid JSON for its type.
#[derive(Debug)]
pub enum DecodeError {
    Protobuf(prost::DecodeError),
    Json(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protobuf(e) => write!(f, "invalid protobuf: {e}"),
            Self::Json(e) => write!(f, "invalid JSON: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::v1::*;
    use super::*;

    #[test]
    fn device_payloads_decode_from_protobuf_and_json() {
        let scan = ScanResult {
            code: "134567890123456789".into(),
            scanned_at_ms: 1_790_000_000_000,
            scan_id: "s-1".into(),
        };
        let from_proto: ScanResult = decode_device_payload(&scan.encode_to_vec()).unwrap();
        assert_eq!(from_proto, scan);
        // proto3 JSON mapping: lowerCamelCase or original names, int64 as string or number.
        let json =
            br#" {"code": "134567890123456789", "scannedAtMs": "1790000000000", "scan_id": "s-1"}"#;
        let from_json: ScanResult = decode_device_payload(json).unwrap();
        assert_eq!(from_json, scan);
        let status: PrintStatus = decode_device_payload(
            br#"{"jobId":"j1","state":"PRINT_STATE_FAILED","reason":"out_of_paper"}"#,
        )
        .unwrap();
        assert_eq!(status.state(), PrintState::Failed);
        assert!(decode_device_payload::<ScanResult>(b"{not json").is_err());
        let newer: ScanResult =
            decode_device_payload(br#"{"code":"x","fieldFromTheFuture":1}"#).unwrap();
        assert_eq!(newer.code, "x", "unknown JSON fields are skipped");
        assert!(decode_device_payload::<ScanResult>(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn unknown_fields_are_skipped_by_old_readers() {
        // A newer writer adds field 99; this reader still decodes the rest.
        let mut bytes = ScanResult {
            code: "x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x9a, 0x06, 0x01, b'z']); // field 99, length-delimited "z"
        assert_eq!(ScanResult::decode(&bytes[..]).unwrap().code, "x");
    }
}
