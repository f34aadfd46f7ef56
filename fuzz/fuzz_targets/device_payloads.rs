//! The payloads devices send, as the consumer services read them:
//! `herald_schemas::decode_device_payload` (protobuf, or its proto3 JSON
//! mapping) for every uplink message a device produces (ScanResult,
//! PrintStatus, CommandAck), then the scan processor's reading of a scan
//! (consumers/src/scan.rs `read_scan`: a decoded ScanResult with a code or a
//! scan_id; a scan without scan_id is refused) and its payment-code rules (consumers/src/scancode.rs,
//! compiled in from its source file: the herald-consumers crate itself links
//! librdkafka, which this build leaves out).
//!
//! Checked besides "no panic":
//! - a decoded message re-encodes to protobuf and decodes back equal, and to
//!   JSON (pbjson) and back through `decode_device_payload` equal;
//! - `scancode::classify` agrees with the documented rules (trimmed; ASCII
//!   digits only, the first other character reported at its 1-based
//!   character position; prefix and length per scheme).
#![no_main]

use herald_schemas::v1::{CommandAck, PaymentScheme, PrintStatus, ScanResult};
use herald_schemas::{decode_device_payload, Message};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;

#[allow(dead_code)]
#[path = "../../consumers/src/scancode.rs"]
mod scancode;

use scancode::ScanRejection;

fn round_trips<T>(payload: &[u8]) -> Option<T>
where
    T: Message + Default + PartialEq + Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let message: T = decode_device_payload(payload).ok()?;
    let proto = message.encode_to_vec();
    let again = T::decode(&proto[..]).expect("re-encoded protobuf decodes");
    assert_eq!(again, message, "protobuf round trip");
    // An enum field with a value this reader does not know has no JSON
    // name; pbjson refuses to write it, which is fine.
    if let Ok(json) = serde_json::to_vec(&message) {
        let again: T = decode_device_payload(&json).unwrap_or_else(|e| {
            panic!("{} does not decode: {e}", String::from_utf8_lossy(&json))
        });
        assert_eq!(again, message, "JSON round trip via {}", String::from_utf8_lossy(&json));
    }
    Some(message)
}

/// consumers/src/scan.rs `ScanProcessor::read_scan`: `None` for what it
/// refuses (not a scan, or no scan_id).
fn read_scan(payload: &[u8]) -> Option<ScanResult> {
    decode_device_payload::<ScanResult>(payload)
        .ok()
        .filter(|scan| !scan.code.is_empty() || !scan.scan_id.is_empty())
        .filter(|scan| !scan.scan_id.is_empty())
}

/// The rules of consumers/src/scancode.rs, written out again.
fn reference_classify(code: &str) -> Result<PaymentScheme, ScanRejection> {
    let code = code.trim();
    if code.is_empty() {
        return Err(ScanRejection::Empty);
    }
    for (i, c) in code.chars().enumerate() {
        if !c.is_ascii_digit() {
            return Err(ScanRejection::NonDigit {
                position: i + 1,
                character: c,
            });
        }
    }
    let prefix: u32 = code[..code.len().min(2)].parse().unwrap();
    let two_digits = code.len() >= 2;
    let (scheme, min, max) = match prefix {
        10..=15 if two_digits => (PaymentScheme::WechatPay, 18, 18),
        25..=30 if two_digits => (PaymentScheme::Alipay, 16, 24),
        62 if two_digits => (PaymentScheme::Unionpay, 19, 19),
        _ => {
            return Err(ScanRejection::UnknownPrefix {
                prefix: code[..code.len().min(2)].to_string(),
            })
        }
    };
    if code.len() < min || code.len() > max {
        return Err(ScanRejection::WrongLength {
            scheme,
            length: code.len(),
        });
    }
    Ok(scheme)
}

fuzz_target!(|data: &[u8]| {
    round_trips::<ScanResult>(data);
    if let Some(status) = round_trips::<PrintStatus>(data) {
        // What the print dispatcher does with it.
        let _ = status.state();
    }
    round_trips::<CommandAck>(data);

    // The code of a scan the processor accepts, and (for the code rules'
    // sake) the raw bytes as text, which reach every branch of them.
    let text = String::from_utf8_lossy(data).into_owned();
    for code in read_scan(data).map(|scan| scan.code).into_iter().chain([text]) {
        let verdict = scancode::classify(&code);
        assert_eq!(verdict, reference_classify(&code), "{code:?}");
        if let Err(rejection) = &verdict {
            let _ = (rejection.as_str(), rejection.to_string());
        }
    }
});
