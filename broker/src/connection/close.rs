//! Why a connection ended, and what each ending means on the wire: the
//! MQTT 5 DISCONNECT reason code, the metric label, whether the will goes out.

use crate::codec::DisconnectReasonCode;

/// Why a connection ended; also the `reason` label of `herald_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// DISCONNECT with reason 0x00: the will is discarded.
    Normal,
    /// MQTT 5 DISCONNECT 0x04: close normally but publish the will.
    NormalWithWill,
    PeerClosed,
    KeepaliveTimeout,
    TakenOver,
    Revoked,
    ServerShutdown,
    ProtocolError,
    /// An MQTT 5 topic alias of 0 or above the maximum Herald allows.
    TopicAliasInvalid,
    PacketTooLarge,
    NotAuthorized,
    /// An MQTT 3.1.1 client went over a limit its protocol has no code for.
    LimitExceeded,
    UplinkFailed,
    /// Its queue stayed full without progress for `slow_subscriber_timeout`.
    SlowSubscriber,
    IoError,
}

impl CloseReason {
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::NormalWithWill => "normal_with_will",
            Self::PeerClosed => "peer_closed",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::TakenOver => "taken_over",
            Self::Revoked => "auth_revoked",
            Self::ServerShutdown => "server_shutdown",
            Self::ProtocolError => "protocol_error",
            Self::TopicAliasInvalid => "topic_alias_invalid",
            Self::PacketTooLarge => "packet_too_large",
            Self::NotAuthorized => "not_authorized",
            Self::LimitExceeded => "limit_exceeded",
            Self::UplinkFailed => "uplink_failed",
            Self::SlowSubscriber => "slow_subscriber",
            Self::IoError => "io_error",
        }
    }

    pub(super) fn disconnect_code(self) -> Option<DisconnectReasonCode> {
        Some(match self {
            Self::KeepaliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
            Self::TakenOver => DisconnectReasonCode::SessionTakenOver,
            Self::Revoked => DisconnectReasonCode::AdministrativeAction,
            Self::ServerShutdown => DisconnectReasonCode::ServerShuttingDown,
            Self::ProtocolError => DisconnectReasonCode::ProtocolError,
            Self::TopicAliasInvalid => DisconnectReasonCode::TopicAliasInvalid,
            Self::PacketTooLarge => DisconnectReasonCode::PacketTooLarge,
            Self::NotAuthorized => DisconnectReasonCode::NotAuthorized,
            Self::LimitExceeded => DisconnectReasonCode::QuotaExceeded,
            Self::UplinkFailed => DisconnectReasonCode::UnspecifiedError,
            Self::SlowSubscriber => DisconnectReasonCode::QuotaExceeded,
            Self::Normal | Self::NormalWithWill | Self::PeerClosed | Self::IoError => return None,
        })
    }

    pub(super) fn publishes_will(self) -> bool {
        !matches!(self, Self::Normal | Self::ServerShutdown)
    }
}
