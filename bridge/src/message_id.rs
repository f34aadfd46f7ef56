//! The stable identity of an uplink, written to Kafka as the
//! `herald-message-id` header: the same for every retransmission of a
//! PUBLISH, different for different messages, and computable by anyone who
//! has the record.
//!
//! Format: `<device_id>:<32 lowercase hex digits>`, the hex digits being the
//! first 16 bytes (128 bits) of SHA-256 over
//!
//! ```text
//! topic length in bytes, as 8 bytes big-endian ‖ MQTT topic (UTF-8) ‖ payload
//! ```
//!
//! The length prefix keeps `("a/b", "c…")` and `("a/bc", "…")` apart. A
//! device's retransmission (same PUBLISH resent with DUP set, or the same
//! bytes republished from its outbox after a lost session) has the same
//! topic and payload, hence the same id; two different uplinks get different
//! ids only if their payloads differ, which is why a scan must carry its
//! `scan_id` (docs/schemas.md, "Duplicates").

use ring::digest;
use std::fmt::Write as _;

/// Bytes of the SHA-256 digest kept in the id (hex-encoded: twice as many digits).
pub const DIGEST_BYTES: usize = 16;

/// The message id of an uplink from `device_id` on `topic` with `payload`.
pub fn message_id(device_id: &str, topic: &str, payload: &[u8]) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&(topic.len() as u64).to_be_bytes());
    context.update(topic.as_bytes());
    context.update(payload);
    let digest = context.finish();
    let mut id = String::with_capacity(device_id.len() + 1 + 2 * DIGEST_BYTES);
    id.push_str(device_id);
    id.push(':');
    for byte in &digest.as_ref()[..DIGEST_BYTES] {
        // Writing to a String cannot fail.
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retransmission_has_the_same_id_and_other_messages_do_not() {
        let id = message_id("scanbox-1", "devices/scanbox-1/up/scan", b"scan s-1");
        assert_eq!(
            id,
            message_id("scanbox-1", "devices/scanbox-1/up/scan", b"scan s-1")
        );
        assert_ne!(
            id,
            message_id("scanbox-1", "devices/scanbox-1/up/scan", b"scan s-2")
        );
        assert_ne!(
            id,
            message_id("scanbox-1", "devices/scanbox-1/up/ack", b"scan s-1")
        );
        assert_ne!(
            message_id("d", "a/b", b"c"),
            message_id("d", "a/bc", b""),
            "the topic length separates topic from payload"
        );
    }

    #[test]
    fn the_format_is_device_id_and_a_truncated_sha256() {
        // printf '\0\0\0\0\0\0\0\021devices/d/up/scanx' | sha256sum | cut -c1-32
        assert_eq!(
            message_id("d", "devices/d/up/scan", b"x"),
            "d:c935aab81d783fcb00ad0304b84c9111"
        );
    }
}
