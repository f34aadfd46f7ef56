//! Device identity for Herald.
//!
//! Herald keeps no device database. Every device secret is derived from one
//! fleet key, and a device proves who it is with a short-lived signature:
//!
//! ```text
//! device_secret = HMAC-SHA256(fleet_key, "herald-device-secret-v1\n" || device_id)
//! password      = "v1." || unix_seconds || "." || base64url(HMAC-SHA256(device_secret,
//!                  "herald-mqtt-v1\n" || device_id || "\n" || unix_seconds))
//! ```
//!
//! The broker re-derives the secret from the device id, recomputes the
//! signature and compares in constant time (`ring::hmac::verify`). The
//! timestamp must fall inside a window around the broker's clock, so a captured
//! password stops working soon after it was made.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// Longest device id Herald accepts.
pub const MAX_DEVICE_ID_LEN: usize = 64;

const SECRET_CONTEXT: &[u8] = b"herald-device-secret-v1\n";
const PASSWORD_CONTEXT: &[u8] = b"herald-mqtt-v1\n";
const PASSWORD_VERSION: &str = "v1";

/// Why a credential was refused. The variants double as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "device id is empty, longer than 64 bytes, or has characters other than A-Z a-z 0-9 - _ ."
    )]
    InvalidDeviceId,
    #[error("password is not of the form v1.<unix-seconds>.<signature>")]
    MalformedPassword,
    #[error("password timestamp is outside the accepted window")]
    Expired,
    #[error("signature does not match")]
    BadSignature,
}

impl CredentialError {
    /// Short stable name, used as a Prometheus label value.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::InvalidDeviceId => "invalid_device_id",
            Self::MalformedPassword => "malformed_password",
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// Device ids double as MQTT client ids and topic levels, so they must not
/// contain topic separators or wildcards.
pub fn validate_device_id(device_id: &str) -> Result<(), CredentialError> {
    let ok = !device_id.is_empty()
        && device_id.len() <= MAX_DEVICE_ID_LEN
        && device_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::InvalidDeviceId)
    }
}

/// The fleet key: the one secret from which every device secret is derived.
#[derive(Clone)]
pub struct FleetKey {
    key: hmac::Key,
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(<redacted>)")
    }
}

impl FleetKey {
    /// Builds a fleet key from raw bytes (at least 32 bytes are recommended).
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The secret provisioned into one device.
    pub fn device_secret(&self, device_id: &str) -> DeviceSecret {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(SECRET_CONTEXT);
        ctx.update(device_id.as_bytes());
        let tag = ctx.sign();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(tag.as_ref());
        DeviceSecret(bytes)
    }

    /// Verifies an MQTT password for `device_id` at time `now` (unix seconds),
    /// accepting timestamps at most `window_secs` away from `now`.
    pub fn verify_password(
        &self,
        device_id: &str,
        password: &[u8],
        now: u64,
        window_secs: u64,
    ) -> Result<(), CredentialError> {
        validate_device_id(device_id)?;
        let password =
            std::str::from_utf8(password).map_err(|_| CredentialError::MalformedPassword)?;
        let mut parts = password.splitn(3, '.');
        let (Some(PASSWORD_VERSION), Some(ts), Some(sig)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CredentialError::MalformedPassword);
        };
        // One spelling per timestamp, as `password` writes it: digits only,
        // no sign and no leading zero (found by fuzzing: `+1790000000` parsed).
        let canonical = !ts.is_empty()
            && ts.bytes().all(|b| b.is_ascii_digit())
            && (ts == "0" || !ts.starts_with('0'));
        if !canonical {
            return Err(CredentialError::MalformedPassword);
        }
        let timestamp: u64 = ts.parse().map_err(|_| CredentialError::MalformedPassword)?;
        let signature = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| CredentialError::MalformedPassword)?;
        // Check the signature before the clock so that an attacker learns
        // nothing about the window from forged passwords.
        let secret = self.device_secret(device_id);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
        hmac::verify(&key, &password_message(device_id, timestamp), &signature)
            .map_err(|_| CredentialError::BadSignature)?;
        if timestamp.abs_diff(now) > window_secs {
            return Err(CredentialError::Expired);
        }
        Ok(())
    }
}

/// A device's own secret. Firmware stores it and signs passwords with it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSecret([u8; 32]);

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret(<redacted>)")
    }
}

impl DeviceSecret {
    /// Parses the base64url form printed by `herald credentials`.
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The base64url (no padding) form given to firmware at provisioning.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The MQTT password for `device_id` at `timestamp` (unix seconds).
    pub fn password(&self, device_id: &str, timestamp: u64) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, &password_message(device_id, timestamp));
        format!(
            "{PASSWORD_VERSION}.{timestamp}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }
}

fn password_message(device_id: &str, timestamp: u64) -> Vec<u8> {
    let mut msg = Vec::with_capacity(PASSWORD_CONTEXT.len() + device_id.len() + 21);
    msg.extend_from_slice(PASSWORD_CONTEXT);
    msg.extend_from_slice(device_id.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(timestamp.to_string().as_bytes());
    msg
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_timestamp_has_one_spelling() {
        let key = FleetKey::new(b"0123456789abcdef0123456789abcdef");
        let device = "spk-0001";
        let good = key.device_secret(device).password(device, 1_790_000_000);
        assert!(key
            .verify_password(device, good.as_bytes(), 1_790_000_000, 60)
            .is_ok());
        let sig = good.rsplit('.').next().unwrap();
        for ts in ["+1790000000", "01790000000", "", " 1790000000"] {
            let other = format!("v1.{ts}.{sig}");
            assert_eq!(
                key.verify_password(device, other.as_bytes(), 1_790_000_000, 60),
                Err(CredentialError::MalformedPassword),
                "{other}"
            );
        }
    }

    use super::*;

    const NOW: u64 = 1_790_000_000;

    fn fleet() -> FleetKey {
        FleetKey::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn password_round_trip() {
        let secret = fleet().device_secret("spk-001");
        let pw = secret.password("spk-001", NOW);
        assert!(pw.starts_with("v1.1790000000."));
        assert_eq!(
            fleet().verify_password("spk-001", pw.as_bytes(), NOW + 30, 300),
            Ok(())
        );
    }

    #[test]
    fn secret_is_stable_and_per_device() {
        let a = fleet().device_secret("spk-001");
        assert_eq!(DeviceSecret::from_base64(&a.to_base64()), Some(a.clone()));
        assert_ne!(a, fleet().device_secret("spk-002"));
        assert_ne!(a, FleetKey::new(b"other key").device_secret("spk-001"));
    }

    #[test]
    fn refuses_other_device_stale_and_garbage() {
        let pw = fleet().device_secret("spk-001").password("spk-001", NOW);
        assert_eq!(
            fleet().verify_password("spk-002", pw.as_bytes(), NOW, 300),
            Err(CredentialError::BadSignature)
        );
        assert_eq!(
            fleet().verify_password("spk-001", pw.as_bytes(), NOW + 301, 300),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            fleet().verify_password("spk-001", pw.as_bytes(), NOW - 301, 300),
            Err(CredentialError::Expired)
        );
        for bad in [
            "",
            "v1",
            "v1.x.y",
            "v2.1.AAAA",
            "v1.1790000000.!!!",
            "\u{0}",
        ] {
            assert!(
                fleet()
                    .verify_password("spk-001", bad.as_bytes(), NOW, 300)
                    .is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            fleet().verify_password("spk-001", &[0xff, 0xfe], NOW, 300),
            Err(CredentialError::MalformedPassword)
        );
    }

    #[test]
    fn device_id_rules() {
        assert!(validate_device_id("printer_42-a.b").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "ä", &"x".repeat(65)] {
            assert_eq!(
                validate_device_id(bad),
                Err(CredentialError::InvalidDeviceId),
                "{bad}"
            );
        }
    }
}
