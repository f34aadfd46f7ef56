//! CONNECT decoding and device credentials: the client id, user name,
//! password and will topic of a decoded CONNECT (3.1.1 or 5) go through
//! `herald_identity::validate_device_id`, `FleetKey::verify_password` and the
//! device-mode ACL, as the broker's admission does. Bytes that are not a
//! CONNECT are read as `<device id>\n<password>` instead, so arbitrary strings
//! reach the password parser directly.
//!
//! Checked besides "no panic":
//! - `validate_device_id` agrees with the documented rule (1 to 64 bytes of
//!   `A-Z a-z 0-9 - _ .`);
//! - a password that verifies has the form `v1.<digits>.<base64url>`, and its
//!   timestamp is inside the window;
//! - a password signed for the id verifies at its own time, is `Expired` just
//!   outside the window and is refused for another device;
//! - the ACL lets a valid device publish its will only inside
//!   `devices/<id>/up` and its subtree.
#![no_main]

use bytes::BytesMut;
use herald_broker::bench_api::AclBench;
use herald_broker::codec::{self, Packet};
use herald_broker::AuthConfig;
use herald_identity::{validate_device_id, CredentialError, FleetKey, MAX_DEVICE_ID_LEN};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The fleet key the seed corpus' passwords are signed with (see
/// fuzz/examples/seeds.rs); `NOW` is the time they were signed at.
const FLEET_KEY: &[u8] = b"herald-fuzz-fleet-key-0123456789";
const FLEET_KEY_BASE64: &str = "aGVyYWxkLWZ1enotZmxlZXQta2V5LTAxMjM0NTY3ODk=";
const NOW: u64 = 1_790_000_000;
const WINDOW: u64 = 900;

fn fleet() -> &'static FleetKey {
    static FLEET: OnceLock<FleetKey> = OnceLock::new();
    FLEET.get_or_init(|| FleetKey::new(FLEET_KEY))
}

fn acl() -> &'static AclBench {
    static ACL: OnceLock<AclBench> = OnceLock::new();
    ACL.get_or_init(|| {
        AclBench::new(&AuthConfig {
            fleet_key: Some(FLEET_KEY_BASE64.into()),
            ..AuthConfig::default()
        })
    })
}

fn reference_device_id_ok(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_credentials(device_id: &str, password: &[u8]) {
    let valid_id = validate_device_id(device_id).is_ok();
    assert_eq!(valid_id, reference_device_id_ok(device_id), "{device_id:?}");

    let result = fleet().verify_password(device_id, password, NOW, WINDOW);
    if !valid_id {
        assert_eq!(result, Err(CredentialError::InvalidDeviceId));
        return;
    }
    if result.is_ok() {
        let text = std::str::from_utf8(password).expect("a verified password is UTF-8");
        let mut parts = text.splitn(3, '.');
        assert_eq!(parts.next(), Some("v1"));
        let ts = parts.next().expect("timestamp");
        let sig = parts.next().expect("signature");
        let ts: u64 = ts.parse().expect("numeric timestamp");
        assert!(ts.abs_diff(NOW) <= WINDOW, "timestamp {ts} outside the window");
        assert!(
            sig.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "signature {sig:?} is not base64url"
        );
    }

    // Sign for this id at a time taken from the input, then verify.
    let ts = password
        .iter()
        .fold(NOW, |acc, &b| acc.rotate_left(5) ^ u64::from(b));
    let secret = fleet().device_secret(device_id);
    let signed = secret.password(device_id, ts);
    assert_eq!(fleet().verify_password(device_id, signed.as_bytes(), ts, 0), Ok(()));
    // Just outside the window (a wrapped-around `now` is far outside too).
    assert_eq!(
        fleet().verify_password(device_id, signed.as_bytes(), ts.wrapping_add(WINDOW + 1), WINDOW),
        Err(CredentialError::Expired)
    );
    let other = if device_id.len() < MAX_DEVICE_ID_LEN {
        format!("{device_id}x")
    } else {
        format!("{}x", &device_id[1..])
    };
    if other != device_id {
        assert_eq!(
            fleet().verify_password(&other, signed.as_bytes(), ts, WINDOW),
            Err(CredentialError::BadSignature),
            "{device_id:?}'s password accepted for {other:?}"
        );
    }
}

fn check_will_topic(device_id: &str, topic: &[u8]) {
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    if validate_device_id(device_id).is_err() {
        return;
    }
    let namespace = format!("devices/{device_id}/up");
    let inside = topic == namespace
        || topic
            .strip_prefix(&namespace)
            .is_some_and(|rest| rest.starts_with('/'));
    assert_eq!(
        acl().may_publish(device_id, topic),
        inside,
        "{device_id:?} publishing to {topic:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(version)) = codec::sniff_protocol(data) {
        let mut buf = BytesMut::from(data);
        if let Ok(Some(Packet::Connect(connect, will, login))) =
            codec::read(version, &mut buf, 1 << 20)
        {
            let client_id = connect.client_id.as_str();
            match &login {
                Some(login) => {
                    check_credentials(client_id, login.password.as_bytes());
                    check_credentials(&login.username, login.password.as_bytes());
                }
                None => check_credentials(client_id, b""),
            }
            if let Some(will) = &will {
                check_will_topic(client_id, &will.topic);
            }
            return;
        }
    }
    // Not a CONNECT: `<device id>\n<password>`.
    let (id, password) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"scanbox-0001"[..], data),
    };
    check_credentials(&String::from_utf8_lossy(id), password);
});
