//! Who may connect, and which topics each client may use.
//!
//! In `device` mode the client id is the device id, the password is a
//! fleet-key signature (see `herald-identity`), revoked devices are refused,
//! and a device publishes only under `<prefix>/<id>/up/` and subscribes only
//! under `<prefix>/<id>/down/`. In `open` mode everyone is let in everywhere.

use crate::config::{AuthConfig, AuthMode, ConfigError};
use herald_identity::{CredentialError, FleetKey};
use std::collections::HashSet;
use std::path::Path;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a CONNECT was refused by authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No password given in device mode.
    MissingPassword,
    /// Username given and different from the client id.
    UsernameMismatch,
    /// The device is on the revocation list.
    Revoked,
    /// The credential itself is wrong.
    Credential(CredentialError),
}

impl AuthFailure {
    /// Label for `herald_auth_failures_total{reason}`.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::MissingPassword => "missing_password",
            Self::UsernameMismatch => "username_mismatch",
            Self::Revoked => "revoked",
            Self::Credential(e) => e.as_label(),
        }
    }
}

pub(crate) struct Authenticator {
    mode: AuthMode,
    fleet_key: Option<FleetKey>,
    window_secs: u64,
    revoked: RwLock<HashSet<Box<str>>>,
    configured_revocations: Vec<String>,
    prefix: Box<str>,
}

impl Authenticator {
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let fleet_key = match config.mode {
            AuthMode::Open => None,
            AuthMode::Device => Some(FleetKey::new(&config.fleet_key_bytes()?)),
        };
        let auth = Self {
            mode: config.mode,
            fleet_key,
            window_secs: config.password_window.as_secs(),
            revoked: RwLock::default(),
            configured_revocations: config.revoked_devices.clone(),
            prefix: config.topic_prefix.clone().into_boxed_str(),
        };
        auth.set_revocations(Vec::new());
        Ok(auth)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.mode == AuthMode::Open
    }

    /// Checks a CONNECT's credentials for `client_id`.
    pub(crate) fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), AuthFailure> {
        let Some(fleet_key) = &self.fleet_key else {
            return Ok(());
        };
        herald_identity::validate_device_id(client_id).map_err(AuthFailure::Credential)?;
        if username.is_some_and(|u| !u.is_empty() && u != client_id) {
            return Err(AuthFailure::UsernameMismatch);
        }
        let password = password
            .filter(|p| !p.is_empty())
            .ok_or(AuthFailure::MissingPassword)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        fleet_key
            .verify_password(client_id, password, now, self.window_secs)
            .map_err(AuthFailure::Credential)?;
        if self.is_revoked(client_id) {
            return Err(AuthFailure::Revoked);
        }
        Ok(())
    }

    pub(crate) fn is_revoked(&self, client_id: &str) -> bool {
        !self.is_open() && self.revoked.read().is_ok_and(|set| set.contains(client_id))
    }

    /// Replaces the file-sourced revocations; the configured list always stays.
    pub(crate) fn set_revocations(&self, from_file: Vec<String>) {
        let set = self
            .configured_revocations
            .iter()
            .cloned()
            .chain(from_file)
            .map(String::into_boxed_str)
            .collect();
        if let Ok(mut guard) = self.revoked.write() {
            *guard = set;
        }
    }

    /// May `client_id` publish to `topic`?
    pub(crate) fn may_publish(&self, client_id: &str, topic: &str) -> bool {
        self.is_open() || self.in_namespace(client_id, "up", topic)
    }

    /// May `client_id` subscribe to `filter`?
    pub(crate) fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.is_open() || self.in_namespace(client_id, "down", filter)
    }

    /// Is `topic` in `device_id`'s downlink namespace? Holds in open mode
    /// too: downlinks always go to `<prefix>/<device_id>/down/...`.
    pub(crate) fn is_downlink_topic(&self, device_id: &str, topic: &str) -> bool {
        self.in_namespace(device_id, "down", topic)
    }

    /// `<prefix>/<client_id>/<direction>` itself or anything below it. The
    /// prefix and id are literal, so a wildcard can only follow them.
    fn in_namespace(&self, client_id: &str, direction: &str, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(&*self.prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let Some(rest) = rest
            .strip_prefix(client_id)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        match rest.strip_prefix(direction) {
            Some(tail) => tail.is_empty() || tail.starts_with('/'),
            None => false,
        }
    }
}

/// Parses a revocation file: one device id per line, `#` comments.
pub(crate) fn read_revocation_file(path: &Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            fleet_key: Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
            revoked_devices: vec!["stolen-1".into()],
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn namespace_acl() {
        let auth = device_auth();
        assert!(auth.may_publish("spk-1", "devices/spk-1/up/scan"));
        assert!(auth.may_publish("spk-1", "devices/spk-1/up"));
        assert!(!auth.may_publish("spk-1", "devices/spk-1/upx"));
        assert!(!auth.may_publish("spk-1", "devices/spk-2/up/scan"));
        assert!(!auth.may_publish("spk-1", "devices/spk-1/down/cmd"));
        assert!(!auth.may_publish("spk-1", "devices/spk-10/up/scan"));
        assert!(!auth.may_publish("spk-1", "other/spk-1/up/scan"));
        assert!(auth.may_subscribe("spk-1", "devices/spk-1/down/#"));
        assert!(auth.may_subscribe("spk-1", "devices/spk-1/down/+"));
        assert!(!auth.may_subscribe("spk-1", "devices/+/down/#"));
        assert!(!auth.may_subscribe("spk-1", "#"));
        assert!(!auth.may_subscribe("spk-1", "devices/spk-1/up/#"));
    }

    #[test]
    fn credentials_and_revocation() {
        let auth = device_auth();
        let fleet = FleetKey::new(b"0123456789abcdef0123456789abcdef");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let pw = fleet.device_secret("spk-1").password("spk-1", now);
        assert_eq!(
            auth.authenticate("spk-1", None, Some(pw.as_bytes())),
            Ok(())
        );
        assert_eq!(
            auth.authenticate("spk-1", Some("spk-1"), Some(pw.as_bytes())),
            Ok(())
        );
        assert_eq!(
            auth.authenticate("spk-1", Some("admin"), Some(pw.as_bytes())),
            Err(AuthFailure::UsernameMismatch)
        );
        assert_eq!(
            auth.authenticate("spk-1", None, None),
            Err(AuthFailure::MissingPassword)
        );
        assert_eq!(
            auth.authenticate("spk-1", None, Some(b"v1.1.AAAA")),
            Err(AuthFailure::Credential(CredentialError::BadSignature))
        );
        let stolen = fleet.device_secret("stolen-1").password("stolen-1", now);
        assert_eq!(
            auth.authenticate("stolen-1", None, Some(stolen.as_bytes())),
            Err(AuthFailure::Revoked)
        );
        auth.set_revocations(vec!["spk-1".into()]);
        assert_eq!(
            auth.authenticate("spk-1", None, Some(pw.as_bytes())),
            Err(AuthFailure::Revoked)
        );
        assert!(
            auth.is_revoked("stolen-1"),
            "configured revocations survive file reloads"
        );
    }

    #[test]
    fn open_mode_allows_everything() {
        let auth = Authenticator::new(&AuthConfig {
            mode: AuthMode::Open,
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(auth.authenticate("anything/goes", None, None), Ok(()));
        assert!(auth.may_publish("x", "a/b"));
        assert!(auth.may_subscribe("x", "#"));
    }

    #[test]
    fn rejects_short_or_garbage_keys() {
        for key in ["c2hvcnQ=", "not base64!"] {
            let err = Authenticator::new(&AuthConfig {
                fleet_key: Some(key.into()),
                ..AuthConfig::default()
            });
            assert_eq!(err.err().map(|e| e.key), Some("broker.auth.fleet_key"));
        }
    }
}
