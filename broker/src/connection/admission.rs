//! Admission: the first packet, CONNECT, authentication, the will, session
//! takeover and the CONNACK. A connection that passes becomes a
//! [`Connection`]; one that does not is answered with the reason code.

use super::log_gate::clip;
use super::{Connection, DrainStage};
use crate::codec::{self, *};
use crate::events::DisconnectReason;
use crate::io::Io;
use crate::session::{Attached, Message};
use crate::topic::check_name;
use crate::Shared;
use futures::stream::FuturesOrdered;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::{debug, info};

/// The will of a connected client, published when it goes away uncleanly.
pub(super) struct Will {
    pub topic: Arc<str>,
    /// Its expiry is set when it is published.
    pub message: Message,
    pub delay: Duration,
}

/// Reads until a full first packet is buffered. `Ok(None)`: peer went away.
pub(super) async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    max_packet: usize,
) -> Result<Option<(ProtocolVersion, Packet)>, CodecError> {
    loop {
        if let Some(version) = codec::sniff_protocol(&io.rbuf)? {
            if let Some(packet) = codec::read(version, &mut io.rbuf, max_packet)? {
                return Ok(Some((version, packet)));
            }
        }
        match io.read_more().await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(None),
        }
    }
}

pub(super) async fn refuse_bad_connect<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
    error: CodecError,
) {
    let kind = match &error {
        CodecError::UnsupportedProtocol(_) => "unsupported_protocol",
        CodecError::TooLarge { .. } => "packet_too_large",
        CodecError::NotConnect => "not_connect",
        CodecError::Malformed(_) => "malformed",
    };
    shared
        .metrics
        .protocol_errors
        .with_label_values(&[kind])
        .inc();
    shared.metrics.connects.with_label_values(&[kind]).inc();
    debug!(%error, "refused connection before CONNECT");
    if let CodecError::TooLarge { .. } = error {
        shared
            .metrics
            .limits_exceeded
            .with_label_values(&["connect_packet_size"])
            .inc();
        // The CONNECT's header was read, so its version is known.
        if let Ok(Some(ProtocolVersion::V5)) = codec::sniff_protocol(&io.rbuf) {
            let ack = refusal(ConnectReturnCode::PacketTooLarge);
            let _ = codec::write(ProtocolVersion::V5, &ack, &mut io.wbuf);
            let _ = io.flush().await;
        }
    }
    if let CodecError::UnsupportedProtocol(_) = error {
        // A 3.1.1 CONNACK is what older clients understand (MQTT 5 §4.13).
        let ack = refusal(ConnectReturnCode::RefusedProtocolVersion);
        let _ = codec::write(ProtocolVersion::V311, &ack, &mut io.wbuf);
        let _ = io.flush().await;
    }
}

/// The CONNACK that refuses a connection with `code`.
fn refusal(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties: None,
    })
}

/// Why the listener does not admit a new connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unadmitted {
    /// At the connection limit.
    ServerFull,
    /// Over the listener's connect rate.
    RateExceeded,
}

impl Unadmitted {
    fn label(self) -> &'static str {
        match self {
            Self::ServerFull => "server_unavailable",
            Self::RateExceeded => "rate_limited",
        }
    }

    /// The `result` label when the socket is closed without an answer.
    pub(crate) fn dropped_label(self) -> &'static str {
        match self {
            Self::ServerFull => "dropped",
            Self::RateExceeded => "rate_limited_dropped",
        }
    }
}

/// Answers a connection the listener does not admit with a CONNACK that
/// says why ("server unavailable", or MQTT 5's "connection rate exceeded"),
/// so the client backs off instead of seeing a reset.
pub(crate) async fn refuse_unadmitted<S>(shared: Arc<Shared>, stream: S, why: Unadmitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    shared
        .metrics
        .connects
        .with_label_values(&[why.label()])
        .inc();
    let mut io = Io::new(stream);
    let max_packet = shared.config.max_connect_packet();
    let deadline = Duration::from_secs(2);
    if let Ok(Ok(Some((version, _)))) =
        tokio::time::timeout(deadline, read_connect(&mut io, max_packet)).await
    {
        let ack = refusal(match why {
            Unadmitted::ServerFull => ConnectReturnCode::ServerUnavailable,
            // 3.1.1 clients get "server unavailable" (codec).
            Unadmitted::RateExceeded => ConnectReturnCode::ConnectionRateExceeded,
        });
        let _ = codec::write(version, &ack, &mut io.wbuf);
        let _ = tokio::time::timeout(deadline, io.flush()).await;
    }
}

impl Connection {
    /// Admits the CONNECT (`connect`, its will and login) of the terminal at
    /// `peer`, or refuses it with the CONNACK that says why.
    pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        shared: &Arc<Shared>,
        io: &mut Io<S>,
        peer: SocketAddr,
        version: ProtocolVersion,
        generation: u64,
        (connect, will, login): (Connect, Option<LastWill>, Option<Login>),
    ) -> Option<Connection> {
        let metrics = &shared.metrics;
        let config = &shared.config;
        let refuse = |io: &mut Io<S>, code: ConnectReturnCode, result: &str| {
            metrics.connects.with_label_values(&[result]).inc();
            let _ = codec::write(version, &refusal(code), &mut io.wbuf);
        };

        let limits = &config.limits;
        let over_limit = |io: &mut Io<S>, limit: &str, code: ConnectReturnCode| {
            metrics.limits_exceeded.with_label_values(&[limit]).inc();
            refuse(io, code, "limit_exceeded");
        };
        let mut client_id = connect.client_id;
        let mut assigned_id = false;
        let props = connect.properties.unwrap_or_default();
        let clean_start = connect.clean_start;
        if client_id.len() > limits.max_client_id_length {
            over_limit(
                io,
                "client_id_length",
                ConnectReturnCode::ClientIdentifierNotValid,
            );
            return None;
        }
        let will_properties = will
            .as_ref()
            .and_then(|w| w.properties.as_ref())
            .map_or(0, |p| p.user_properties.len());
        if props.user_properties.len().max(will_properties) > limits.max_user_properties {
            over_limit(io, "user_properties", ConnectReturnCode::QuotaExceeded);
            return None;
        }
        let now = Instant::now();
        // Before the password check: a banned client costs no HMAC.
        if shared.flapping.is_banned(&client_id, now) {
            refuse(io, ConnectReturnCode::Banned, "banned");
            return None;
        }
        if client_id.is_empty() {
            // MQTT lets the server name a client that sends no id, but a
            // device must say who it is.
            if !shared.auth.is_open() || (version == ProtocolVersion::V311 && !clean_start) {
                refuse(
                    io,
                    ConnectReturnCode::ClientIdentifierNotValid,
                    "client_id_invalid",
                );
                return None;
            }
            client_id = format!("herald-{generation:x}");
            assigned_id = true;
        }
        if let Err(failure) = shared.auth.authenticate(
            &client_id,
            login.as_ref().map(|l| l.username.as_str()),
            login.as_ref().map(|l| l.password.as_bytes()),
        ) {
            metrics
                .auth_failures
                .with_label_values(&[failure.as_label()])
                .inc();
            if shared.admission_log.check().is_ok() {
                info!(client_id = %clip(&client_id, 128), %peer, reason = failure.as_label(), "authentication failed");
            }
            use crate::auth::AuthFailure;
            let (code, result) = match failure {
                AuthFailure::Revoked => (ConnectReturnCode::Banned, "not_authorized"),
                AuthFailure::Credential(herald_identity::CredentialError::InvalidDeviceId) => (
                    ConnectReturnCode::ClientIdentifierNotValid,
                    "client_id_invalid",
                ),
                _ => (ConnectReturnCode::NotAuthorized, "not_authorized"),
            };
            refuse(io, code, result);
            return None;
        }
        if shared.flapping.record_connect(&client_id, now) {
            metrics
                .limits_exceeded
                .with_label_values(&["flapping"])
                .inc();
            if shared.admission_log.check().is_ok() {
                info!(
                    client_id = %clip(&client_id, 128),
                    %peer,
                    ban = ?config.admission.flapping_ban,
                    "client reconnects too often; refusing it for a while"
                );
            }
            refuse(io, ConnectReturnCode::Banned, "banned");
            return None;
        }
        let will = match will {
            None => None,
            Some(w) => {
                let Ok(topic) = std::str::from_utf8(&w.topic) else {
                    refuse(io, ConnectReturnCode::TopicNameInvalid, "will_invalid");
                    return None;
                };
                match check_name(topic, limits) {
                    Ok(()) => {}
                    Err(error) => {
                        if let Some(limit) = error.limit_label() {
                            metrics.limits_exceeded.with_label_values(&[limit]).inc();
                        }
                        refuse(io, ConnectReturnCode::TopicNameInvalid, "will_invalid");
                        return None;
                    }
                }
                if !shared.auth.may_publish(&client_id, topic) {
                    metrics.acl_denied.with_label_values(&["will"]).inc();
                    refuse(io, ConnectReturnCode::NotAuthorized, "not_authorized");
                    return None;
                }
                let delay = w
                    .properties
                    .as_ref()
                    .and_then(|p| p.delay_interval)
                    .unwrap_or(0);
                // The will's properties travel with it when it is published
                // [MQTT-3.1.3-9] (its expiry counts from then).
                let properties = w.properties.map(|p| {
                    Arc::new(PublishProperties {
                        payload_format_indicator: p.payload_format_indicator,
                        message_expiry_interval: p.message_expiry_interval,
                        content_type: p.content_type,
                        response_topic: p.response_topic,
                        correlation_data: p.correlation_data,
                        user_properties: p.user_properties,
                        ..Default::default()
                    })
                });
                Some(Box::new(Will {
                    topic: topic.into(),
                    delay: Duration::from_secs(delay.into()),
                    message: Message {
                        topic: w.topic,
                        payload: w.message,
                        retain: w.retain,
                        qos: w.qos,
                        properties,
                        expires_at: None,
                    },
                }))
            }
        };
        // Past the connection limit (checked only now, so that the client is
        // told why) the CONNECT is refused rather than the socket dropped.
        if shared.connected.load(std::sync::atomic::Ordering::Relaxed) >= shared.max_connections {
            refuse(
                io,
                ConnectReturnCode::ServerUnavailable,
                "server_unavailable",
            );
            return None;
        }

        let max_expiry = config.session_expiry;
        let (expiry, expiry_capped) = match version {
            ProtocolVersion::V311 if clean_start => (Duration::ZERO, false),
            ProtocolVersion::V311 => (max_expiry, false),
            ProtocolVersion::V5 => {
                let asked = Duration::from_secs(props.session_expiry_interval.unwrap_or(0).into());
                (asked.min(max_expiry), asked > max_expiry)
            }
        };
        let wake = Arc::new(Notify::new());
        let (session, present, discarded) =
            match shared
                .registry
                .attach(&client_id, generation, clean_start, expiry, wake.clone())
            {
                Attached::Ok {
                    session,
                    present,
                    discarded,
                    replaced,
                } => {
                    // Reported here, before `connected`, so that the last
                    // presence event of a device is always the newest.
                    if let Some(old) = replaced {
                        shared
                            .events
                            .disconnected(&client_id, old, DisconnectReason::Takeover);
                    }
                    (session, present, discarded)
                }
                Attached::Superseded => {
                    metrics.connects.with_label_values(&["superseded"]).inc();
                    debug!(client_id = %client_id, "a newer connection already took this session");
                    return None;
                }
            };
        if let Some(old) = discarded {
            shared.router.remove_session(&old);
            metrics.sessions.dec();
        }
        if !present {
            metrics.sessions.inc();
        }
        // Back before its will's delay passed: the will is not published.
        shared.wills.cancel(&client_id);
        shared
            .connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.connections.inc();
        metrics.connects.with_label_values(&["accepted"]).inc();
        shared.events.connected(&client_id, generation);

        let mut keepalive = connect.keep_alive;
        let mut server_keepalive = None;
        if config.max_keepalive_secs > 0
            && (keepalive == 0 || keepalive > config.max_keepalive_secs)
        {
            keepalive = config.max_keepalive_secs;
            server_keepalive = Some(keepalive);
        }
        let mut conn = Connection {
            peer,
            shared: shared.clone(),
            session,
            generation,
            version,
            wake,
            will,
            // MQTT: the server may close after 1.5 keepalive periods of silence.
            keepalive_ms: u32::from(keepalive) * 1500,
            last_activity: Instant::now(),
            // Armed by the event loop; a Sleep is registered on its first poll.
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_armed: false,
            pending: FuturesOrdered::new(),
            reserved: None,
            permit_wait: None,
            // [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 PUBLISHes
            // than the client's Receive Maximum.
            outbound_limit: props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(config.max_inflight_downlinks)
                .max(1),
            // [MQTT-3.1.2-24]: nothing larger than the client's Maximum Packet Size.
            client_max_packet: props.max_packet_size.unwrap_or(u32::MAX),
            client_alias_max: match version {
                ProtocolVersion::V5 => props
                    .topic_alias_max
                    .unwrap_or(0)
                    .min(config.topic_alias_maximum),
                ProtocolVersion::V311 => 0,
            },
            aliases: None,
            revocation_epoch: shared.revocation_epoch(),
            log_gate: super::log_gate::LogGate::new(),
            congested_since: None,
            drain: DrainStage::Serving,
        };
        let properties = (version == ProtocolVersion::V5).then(|| ConnAckProperties {
            session_expiry_interval: expiry_capped.then_some(expiry.as_secs() as u32),
            receive_max: Some(config.max_inflight_uplinks),
            max_qos: None,
            retain_available: Some(u8::from(config.retain_enabled())),
            max_packet_size: Some(config.max_packet_size),
            assigned_client_identifier: assigned_id.then(|| client_id.clone()),
            // Aliases above it close the connection with 0x94 [MQTT-3.2.2-17].
            topic_alias_max: Some(config.topic_alias_maximum),
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            server_keep_alive: server_keepalive,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        let ack = ConnAck {
            session_present: present,
            code: ConnectReturnCode::Success,
            properties,
        };
        conn.send(&mut io.wbuf, &Packet::ConnAck(ack));
        debug!(client_id = %client_id, %peer, ?version, present, "client connected");
        if present {
            conn.resend_inflight(&mut io.wbuf);
        }
        conn.drain_session(&mut io.wbuf);
        Some(conn)
    }
}
