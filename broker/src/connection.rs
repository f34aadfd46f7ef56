//! One client connection: CONNECT, then the packet loop, then cleanup.
//!
//! Each connection is one tokio task. It reads packets, routes publishes,
//! hands uplinks to the sink and sends their PUBACK only when the sink's
//! acknowledgement completes (in the order the PUBLISHes came in), delivers
//! what its session queue holds, and enforces keepalive and limits.

use crate::codec::{self, *};
use crate::downlink::{DeliveryOutcome, DownlinkRefusal};
use crate::events::DisconnectReason;
use crate::io::{Io, IoEvent, WRITE_HIGH_WATER};
use crate::metrics::qos_label;
use crate::server::HandshakeGuard;
use crate::session::{Attached, Inflight, Message, OutboundStage, Queued, Session, SubOptions};
use crate::sink::{Rejection, Uplink, UplinkAck, UplinkError};
use crate::Shared;
use bytes::BytesMut;
use futures::stream::{FuturesOrdered, StreamExt};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::{debug, info, warn};

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
    PacketTooLarge,
    NotAuthorized,
    UplinkFailed,
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
            Self::PacketTooLarge => "packet_too_large",
            Self::NotAuthorized => "not_authorized",
            Self::UplinkFailed => "uplink_failed",
            Self::IoError => "io_error",
        }
    }

    fn disconnect_code(self) -> Option<DisconnectReasonCode> {
        Some(match self {
            Self::KeepaliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
            Self::TakenOver => DisconnectReasonCode::SessionTakenOver,
            Self::Revoked => DisconnectReasonCode::AdministrativeAction,
            Self::ServerShutdown => DisconnectReasonCode::ServerShuttingDown,
            Self::ProtocolError => DisconnectReasonCode::ProtocolError,
            Self::PacketTooLarge => DisconnectReasonCode::PacketTooLarge,
            Self::NotAuthorized => DisconnectReasonCode::NotAuthorized,
            Self::UplinkFailed => DisconnectReasonCode::UnspecifiedError,
            Self::Normal | Self::NormalWithWill | Self::PeerClosed | Self::IoError => return None,
        })
    }

    fn publishes_will(self) -> bool {
        !matches!(self, Self::Normal | Self::ServerShutdown)
    }
}

struct Will {
    topic: Arc<str>,
    message: Message,
    qos: QoS,
    delay: Duration,
}

/// How an inbound PUBLISH ends up, decided when its acknowledgement is due.
enum Settled {
    /// Delivered (to the sink, or locally when no sink rule takes it).
    Accepted,
    /// The sink could not deliver it.
    Failed(UplinkError),
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Outside the client's namespace.
    NotAuthorized,
    /// In device mode, no uplink rule takes the topic.
    NoRoute,
}

/// A PUBLISH whose acknowledgement waits: for the sink, or for earlier
/// PUBLISHes. Holds its share of the in-flight budget.
struct PendingAck {
    pkid: u16,
    qos: QoS,
    wait: Option<UplinkAck>,
    settled: Option<Settled>,
    _slot: Option<InflightSlot>,
}

impl Future for PendingAck {
    type Output = (u16, QoS, Settled);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let settled = match self.wait.as_mut() {
            Some(wait) => match std::task::ready!(wait.as_mut().poll(cx)) {
                Ok(()) => Settled::Accepted,
                Err(error) => Settled::Failed(error),
            },
            None => self.settled.take().unwrap_or(Settled::Accepted),
        };
        self.wait = None;
        Poll::Ready((self.pkid, self.qos, settled))
    }
}

/// A global in-flight permit, reflected in `herald_uplinks_inflight`.
struct InflightSlot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

enum Event {
    Shutdown,
    Wake,
    Io(std::io::Result<IoEvent>),
    UplinkDone((u16, QoS, Settled)),
    Permit(OwnedSemaphorePermit),
    KeepaliveCheck,
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<S>(shared: Arc<Shared>, stream: S, mut handshake: HandshakeGuard)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut io = Io::new(stream);
    let max_packet = shared.config.max_packet_size as usize;
    let connect = tokio::time::timeout(
        shared.config.connect_timeout,
        read_connect(&mut io, max_packet),
    )
    .await;
    let (version, packet) = match connect {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            refuse_bad_connect(&shared, &mut io, error).await;
            return;
        }
        Err(_) => {
            shared
                .metrics
                .protocol_errors
                .with_label_values(&["connect_timeout"])
                .inc();
            debug!("no CONNECT within the connect timeout");
            return;
        }
    };
    let Packet::Connect(connect, will, login) = packet else {
        shared
            .metrics
            .protocol_errors
            .with_label_values(&["not_connect"])
            .inc();
        return;
    };
    let generation = shared.registry.next_generation();
    let Some(mut conn) =
        Connection::accept(&shared, &mut io, version, generation, connect, will, login).await
    else {
        let _ = io.flush().await;
        return;
    };
    handshake.release();
    let reason = conn.run(&mut io).await;
    if let Some(code) = reason
        .disconnect_code()
        .filter(|_| version == ProtocolVersion::V5)
    {
        conn.send(&mut io.wbuf, &Packet::Disconnect(Disconnect::new(code)));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
    io.shutdown().await;
    conn.finish(reason);
}

/// Reads until a full first packet is buffered. `Ok(None)`: peer went away.
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
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

async fn refuse_bad_connect<S: AsyncRead + AsyncWrite + Unpin>(
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
    if let CodecError::UnsupportedProtocol(_) = error {
        // A 3.1.1 CONNACK is what older clients understand (MQTT 5 §4.13).
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::RefusedProtocolVersion,
            properties: None,
        };
        let _ = codec::write(ProtocolVersion::V311, &Packet::ConnAck(ack), &mut io.wbuf);
        let _ = io.flush().await;
    }
}

/// Answers a connection the broker has no room for with CONNACK
/// "server unavailable", so the client backs off instead of seeing a reset.
pub(crate) async fn refuse_server_unavailable<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    shared
        .metrics
        .connects
        .with_label_values(&["server_unavailable"])
        .inc();
    let mut io = Io::new(stream);
    let max_packet = shared.config.max_packet_size as usize;
    let deadline = Duration::from_secs(2);
    if let Ok(Ok(Some((version, _)))) =
        tokio::time::timeout(deadline, read_connect(&mut io, max_packet)).await
    {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServerUnavailable,
            properties: None,
        };
        let _ = codec::write(version, &Packet::ConnAck(ack), &mut io.wbuf);
        let _ = tokio::time::timeout(deadline, io.flush()).await;
    }
}

struct Connection {
    shared: Arc<Shared>,
    session: Arc<Session>,
    generation: u64,
    version: ProtocolVersion,
    wake: Arc<Notify>,
    will: Option<Box<Will>>,
    keepalive: Duration,
    last_activity: Instant,
    pending: FuturesOrdered<PendingAck>,
    reserved: Option<OwnedSemaphorePermit>,
    waiting_for_permit: bool,
    outbound_limit: usize,
    client_max_packet: usize,
    revocation_epoch: u64,
}

impl Connection {
    async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        shared: &Arc<Shared>,
        io: &mut Io<S>,
        version: ProtocolVersion,
        generation: u64,
        connect: Connect,
        will: Option<LastWill>,
        login: Option<Login>,
    ) -> Option<Connection> {
        let metrics = &shared.metrics;
        let config = &shared.config;
        let refuse = |io: &mut Io<S>, code: ConnectReturnCode, result: &str| {
            metrics.connects.with_label_values(&[result]).inc();
            let ack = ConnAck {
                session_present: false,
                code,
                properties: None,
            };
            let _ = codec::write(version, &Packet::ConnAck(ack), &mut io.wbuf);
        };

        let mut client_id = connect.client_id;
        let mut assigned_id = false;
        let props = connect.properties.unwrap_or_default();
        let clean_start = connect.clean_start;
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
            info!(client_id = %client_id, reason = failure.as_label(), "authentication failed");
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
        let will = match will {
            None => None,
            Some(w) => {
                let topic = std::str::from_utf8(&w.topic)
                    .ok()
                    .filter(|t| valid_topic_name(t));
                let Some(topic) = topic else {
                    refuse(io, ConnectReturnCode::TopicNameInvalid, "will_invalid");
                    return None;
                };
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
                Some(Box::new(Will {
                    topic: topic.into(),
                    qos: w.qos,
                    delay: Duration::from_secs(delay.into()),
                    message: Message {
                        topic: w.topic,
                        payload: w.message,
                        retain: w.retain,
                        properties: None,
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
        let conn = Connection {
            shared: shared.clone(),
            session,
            generation,
            version,
            wake,
            will,
            // MQTT: the server may close after 1.5 keepalive periods of silence.
            keepalive: Duration::from_millis(u64::from(keepalive) * 1500),
            last_activity: Instant::now(),
            pending: FuturesOrdered::new(),
            reserved: None,
            waiting_for_permit: false,
            outbound_limit: usize::from(
                props
                    .receive_maximum
                    .unwrap_or(u16::MAX)
                    .min(config.max_inflight_downlinks)
                    .max(1),
            ),
            client_max_packet: props.max_packet_size.map_or(usize::MAX, |m| m as usize),
            revocation_epoch: shared.revocation_epoch(),
        };
        let properties = (version == ProtocolVersion::V5).then(|| ConnAckProperties {
            session_expiry_interval: expiry_capped.then(|| expiry.as_secs() as u32),
            receive_max: Some(config.max_inflight_uplinks),
            max_qos: None,
            retain_available: Some(u8::from(config.retain_available)),
            max_packet_size: Some(config.max_packet_size),
            assigned_client_identifier: assigned_id.then(|| client_id.clone()),
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(0),
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
        debug!(client_id = %client_id, ?version, present, "client connected");
        if present {
            conn.resend_inflight(&mut io.wbuf);
        }
        conn.drain_session(&mut io.wbuf);
        Some(conn)
    }

    fn client_id(&self) -> &str {
        &self.session.client_id
    }

    fn send(&self, out: &mut BytesMut, packet: &Packet) {
        if let Err(error) = codec::write(self.version, packet, out) {
            warn!(client_id = self.client_id(), %error, "could not encode packet");
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> CloseReason {
        // Clients may send packets right behind CONNECT without waiting for
        // the CONNACK; they are already buffered.
        if let Err(reason) = self.process_input(io) {
            return reason;
        }
        loop {
            let can_read = self.pending.len()
                < usize::from(self.shared.config.max_inflight_uplinks)
                && !self.waiting_for_permit;
            let keepalive_on = !self.keepalive.is_zero();
            let deadline = tokio::time::Instant::from_std(self.last_activity + self.keepalive);
            let event = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => Event::Shutdown,
                _ = self.wake.notified() => Event::Wake,
                result = poll_fn(|cx| io.poll_io(cx, can_read)) => Event::Io(result),
                Some(done) = self.pending.next(), if !self.pending.is_empty() => Event::UplinkDone(done),
                Ok(permit) = self.shared.uplink_permits.clone().acquire_owned(), if self.waiting_for_permit => Event::Permit(permit),
                _ = tokio::time::sleep_until(deadline), if keepalive_on => Event::KeepaliveCheck,
            };
            let outcome = match event {
                Event::Shutdown => Err(CloseReason::ServerShutdown),
                Event::Wake => self.on_wake(&mut io.wbuf),
                Event::Io(Ok(IoEvent::Read)) => {
                    self.last_activity = Instant::now();
                    self.process_input(io)
                }
                Event::Io(Ok(IoEvent::Eof)) => Err(CloseReason::PeerClosed),
                Event::Io(Ok(IoEvent::Flushed)) => {
                    self.drain_session(&mut io.wbuf);
                    Ok(())
                }
                Event::Io(Err(error)) => {
                    debug!(client_id = self.client_id(), %error, "connection error");
                    Err(CloseReason::IoError)
                }
                Event::UplinkDone((pkid, qos, settled)) => self
                    .acknowledge(&mut io.wbuf, pkid, qos, settled)
                    .and_then(|()| self.process_input(io)),
                Event::Permit(permit) => {
                    self.reserved = Some(permit);
                    self.waiting_for_permit = false;
                    self.process_input(io)
                }
                Event::KeepaliveCheck => {
                    if !can_read {
                        // Herald stopped reading (backpressure): the client's
                        // PINGREQs may be waiting unread in the socket.
                        self.last_activity = Instant::now();
                        Ok(())
                    } else if self.last_activity.elapsed() >= self.keepalive {
                        Err(CloseReason::KeepaliveTimeout)
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(reason) = outcome {
                return reason;
            }
        }
    }

    fn on_wake(&mut self, out: &mut BytesMut) -> Result<(), CloseReason> {
        {
            let state = self.session.lock();
            let ours = state
                .attachment
                .as_ref()
                .is_some_and(|a| a.generation == self.generation);
            if !ours {
                return Err(CloseReason::TakenOver);
            }
        }
        let epoch = self.shared.revocation_epoch();
        if epoch != self.revocation_epoch {
            self.revocation_epoch = epoch;
            if self.shared.auth.is_revoked(self.client_id()) {
                return Err(CloseReason::Revoked);
            }
        }
        self.drain_session(out);
        Ok(())
    }

    /// Decodes and handles every complete packet buffered, unless uplinks
    /// are at their in-flight limit.
    fn process_input<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
    ) -> Result<(), CloseReason> {
        let max_packet = self.shared.config.max_packet_size as usize;
        while self.pending.len() < usize::from(self.shared.config.max_inflight_uplinks)
            && !self.waiting_for_permit
        {
            // A PUBLISH may go to the sink: hold a global in-flight permit
            // before decoding it, or stop reading until one is free.
            let is_publish = io.rbuf.first().is_some_and(|b| b >> 4 == 3);
            if is_publish && self.reserved.is_none() {
                match self.shared.uplink_permits.clone().try_acquire_owned() {
                    Ok(permit) => self.reserved = Some(permit),
                    Err(_) => {
                        self.waiting_for_permit = true;
                        break;
                    }
                }
            }
            match codec::read(self.version, &mut io.rbuf, max_packet) {
                Ok(Some(packet)) => self.handle(&mut io.wbuf, packet)?,
                Ok(None) => break,
                Err(error) => {
                    let (kind, reason) = match error {
                        CodecError::TooLarge { .. } => {
                            ("packet_too_large", CloseReason::PacketTooLarge)
                        }
                        _ => ("malformed", CloseReason::ProtocolError),
                    };
                    self.shared
                        .metrics
                        .protocol_errors
                        .with_label_values(&[kind])
                        .inc();
                    info!(client_id = self.client_id(), %error, "closing connection on bad packet");
                    return Err(reason);
                }
            }
        }
        // An idle connection holds no permit.
        if !self.waiting_for_permit {
            self.reserved = None;
        }
        io.release_read_buffer();
        Ok(())
    }

    fn protocol_error(&self, what: &str) -> CloseReason {
        self.shared
            .metrics
            .protocol_errors
            .with_label_values(&["protocol"])
            .inc();
        info!(
            client_id = self.client_id(),
            what, "closing connection on protocol error"
        );
        CloseReason::ProtocolError
    }

    fn handle(&mut self, out: &mut BytesMut, packet: Packet) -> Result<(), CloseReason> {
        match packet {
            Packet::Publish(publish) => self.on_publish(out, publish),
            Packet::PubAck(ack) => {
                self.complete_outbound(ack.pkid, QoS::AtLeastOnce);
                self.drain_session(out);
                Ok(())
            }
            Packet::PubRec(rec) => {
                let mut state = self.session.lock();
                let found = state
                    .inflight
                    .iter_mut()
                    .find(|i| i.pkid == rec.pkid && i.stage == OutboundStage::Published);
                let mut rel = PubRel::new(rec.pkid, None);
                match found {
                    Some(inflight) if (rec.reason as u8) < 0x80 => {
                        inflight.stage = OutboundStage::Released
                    }
                    Some(_) => {
                        // A negative PUBREC ends the exchange.
                        state.inflight.retain(|i| i.pkid != rec.pkid);
                        return Ok(());
                    }
                    None => rel.reason = PubRelReason::PacketIdentifierNotFound,
                }
                drop(state);
                self.send(out, &Packet::PubRel(rel));
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.complete_outbound(comp.pkid, QoS::ExactlyOnce);
                self.drain_session(out);
                Ok(())
            }
            Packet::PubRel(rel) => {
                let mut comp = PubComp::new(rel.pkid, None);
                let mut state = self.session.lock();
                let before = state.incoming_qos2.len();
                state.incoming_qos2.retain(|&p| p != rel.pkid);
                if state.incoming_qos2.len() == before {
                    comp.reason = PubCompReason::PacketIdentifierNotFound;
                }
                drop(state);
                self.send(out, &Packet::PubComp(comp));
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                self.on_subscribe(out, subscribe);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(out, unsubscribe);
                Ok(())
            }
            Packet::PingReq(_) => {
                self.send(out, &Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                {
                    let mut state = self.session.lock();
                    state.expiry =
                        Duration::from_secs(expiry.into()).min(self.shared.config.session_expiry);
                }
                Err(match disconnect.reason_code {
                    DisconnectReasonCode::NormalDisconnection => CloseReason::Normal,
                    DisconnectReasonCode::DisconnectWithWillMessage => CloseReason::NormalWithWill,
                    _ => CloseReason::PeerClosed,
                })
            }
            Packet::Connect(..) => Err(self.protocol_error("second CONNECT")),
            Packet::Auth(_) => Err(self.protocol_error("AUTH is not supported")),
            other => Err(self.protocol_error(&format!("unexpected {other:?}"))),
        }
    }

    fn on_publish(&mut self, out: &mut BytesMut, publish: Publish) -> Result<(), CloseReason> {
        let metrics = &self.shared.metrics;
        metrics
            .messages_received
            .with_label_values(&[qos_label(publish.qos)])
            .inc();
        let Some(topic) = std::str::from_utf8(&publish.topic)
            .ok()
            .filter(|t| valid_topic_name(t))
            .map(Arc::<str>::from)
        else {
            // Also an empty topic with a topic alias: none are granted.
            metrics
                .protocol_errors
                .with_label_values(&["topic_invalid"])
                .inc();
            info!(
                client_id = self.client_id(),
                "closing connection on invalid topic name"
            );
            return Err(CloseReason::ProtocolError);
        };
        let (pkid, qos) = (publish.pkid, publish.qos);
        if !self.shared.auth.may_publish(self.client_id(), &topic) {
            metrics.acl_denied.with_label_values(&["publish"]).inc();
            info!(
                client_id = self.client_id(),
                topic = &*topic,
                "publish outside the device's namespace refused"
            );
            return self.settle(out, pkid, qos, Settled::Refused(Refusal::NotAuthorized));
        }
        if qos == QoS::ExactlyOnce && self.session.lock().incoming_qos2.contains(&pkid) {
            // A retransmission of a message the sink already confirmed.
            return self.settle(out, pkid, qos, Settled::Accepted);
        }
        let wanted = self.shared.sink.wants(&topic);
        if !wanted && !self.shared.auth.is_open() {
            // In device mode uplinks exist to reach Kafka: acknowledging one
            // that no rule takes would be a false success.
            metrics
                .messages_dropped
                .with_label_values(&["no_uplink_rule"])
                .inc();
            info!(
                client_id = self.client_id(),
                topic = &*topic,
                "no uplink rule for this topic; refused"
            );
            return self.settle(out, pkid, qos, Settled::Refused(Refusal::NoRoute));
        }
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
            properties: publish.properties.map(Arc::new),
        };
        self.shared
            .route(Some(&self.session), &topic, &message, qos);
        if !wanted {
            return self.settle(out, pkid, qos, Settled::Accepted);
        }
        let slot = self.take_inflight_slot();
        let user_properties = message
            .properties
            .as_ref()
            .map(|p| p.user_properties.clone())
            .unwrap_or_default();
        let uplink = Uplink {
            client_id: self.session.client_id.clone(),
            topic,
            payload: message.payload,
            qos: qos as u8,
            retain: message.retain,
            received_at: SystemTime::now(),
            user_properties,
        };
        match self.shared.sink.submit(uplink) {
            Some(wait) => {
                self.pending.push_back(PendingAck {
                    pkid,
                    qos,
                    wait: Some(wait),
                    settled: None,
                    _slot: slot,
                });
                Ok(())
            }
            None => self.settle(out, pkid, qos, Settled::Accepted),
        }
    }

    /// Acknowledges now, or after the uplinks still waiting for the sink:
    /// acknowledgements keep the order of the PUBLISHes (MQTT §4.6).
    fn settle(
        &mut self,
        out: &mut BytesMut,
        pkid: u16,
        qos: QoS,
        settled: Settled,
    ) -> Result<(), CloseReason> {
        if self.pending.is_empty() {
            self.acknowledge(out, pkid, qos, settled)
        } else {
            self.pending.push_back(PendingAck {
                pkid,
                qos,
                wait: None,
                settled: Some(settled),
                _slot: None,
            });
            Ok(())
        }
    }

    /// Takes the global in-flight permit reserved for the PUBLISH being handled.
    fn take_inflight_slot(&mut self) -> Option<InflightSlot> {
        let permit = self.reserved.take();
        permit.map(|permit| {
            self.shared.metrics.uplinks_inflight.inc();
            InflightSlot {
                _permit: permit,
                gauge: self.shared.metrics.uplinks_inflight.clone(),
            }
        })
    }

    /// Sends the PUBACK/PUBREC for a settled PUBLISH. Never a success for
    /// an uplink the sink did not confirm.
    fn acknowledge(
        &mut self,
        out: &mut BytesMut,
        pkid: u16,
        qos: QoS,
        settled: Settled,
    ) -> Result<(), CloseReason> {
        let (ack_reason, rec_reason) = match settled {
            Settled::Accepted => {
                if qos == QoS::ExactlyOnce {
                    self.session.lock().incoming_qos2.push(pkid);
                }
                (PubAckReason::Success, PubRecReason::Success)
            }
            Settled::Failed(UplinkError::Rejected { kind, reason }) => {
                // Already set aside by the sink (dead letters): acknowledging
                // lets the device move on instead of retransmitting forever.
                self.shared
                    .metrics
                    .uplinks_rejected
                    .with_label_values(&[kind.as_label()])
                    .inc();
                debug!(client_id = self.client_id(), %reason, pkid, "uplink rejected for good by the sink");
                if self.version == ProtocolVersion::V311 {
                    (PubAckReason::Success, PubRecReason::Success)
                } else {
                    match kind {
                        Rejection::TooLarge => (PubAckReason::QuotaExceeded, PubRecReason::QuotaExceeded),
                        Rejection::Invalid => (PubAckReason::PayloadFormatInvalid, PubRecReason::PayloadFormatInvalid),
                        Rejection::NotAuthorized => (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized),
                    }
                }
            }
            Settled::Failed(error) => {
                self.shared.metrics.uplink_failures.inc();
                warn!(client_id = self.client_id(), %error, pkid, "uplink not delivered; not acknowledging success");
                // A 3.1.1 client gets no PUBACK; closing the connection makes it
                // retransmit when it reconnects (MQTT 3.1.1 §4.4).
                if self.version == ProtocolVersion::V311 && qos != QoS::AtMostOnce {
                    return Err(CloseReason::UplinkFailed);
                }
                (
                    PubAckReason::UnspecifiedError,
                    PubRecReason::UnspecifiedError,
                )
            }
            Settled::Refused(refusal) => {
                // MQTT 3.1.1 has no negative acknowledgement: closing the
                // connection is the only refusal it knows (§3.3.5).
                if self.version == ProtocolVersion::V311 {
                    return Err(CloseReason::NotAuthorized);
                }
                match refusal {
                    Refusal::NotAuthorized => {
                        (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized)
                    }
                    Refusal::NoRoute => (
                        PubAckReason::TopicNameInvalid,
                        PubRecReason::TopicNameInvalid,
                    ),
                }
            }
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(pkid, None);
                ack.reason = ack_reason;
                self.send(out, &Packet::PubAck(ack));
            }
            QoS::ExactlyOnce => {
                let mut rec = PubRec::new(pkid, None);
                rec.reason = rec_reason;
                self.send(out, &Packet::PubRec(rec));
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, out: &mut BytesMut, subscribe: Subscribe) {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for filter in subscribe.filters {
            let path = filter.path.as_str();
            let code = if !valid_topic_filter(path) {
                SubscribeReasonCode::TopicFilterInvalid
            } else if path.starts_with("$share/") {
                SubscribeReasonCode::SharedSubscriptionsNotSupported
            } else if !self.shared.auth.may_subscribe(self.client_id(), path) {
                self.shared
                    .metrics
                    .acl_denied
                    .with_label_values(&["subscribe"])
                    .inc();
                info!(
                    client_id = self.client_id(),
                    filter = path,
                    "subscription outside the device's namespace refused"
                );
                SubscribeReasonCode::NotAuthorized
            } else {
                let options = SubOptions {
                    qos: filter.qos,
                    no_local: filter.nolocal,
                    retain_as_published: filter.preserve_retain,
                };
                let existed = {
                    let mut state = self.session.lock();
                    match state.subscriptions.iter_mut().find(|(f, _)| &**f == path) {
                        Some(entry) => {
                            entry.1 = options;
                            true
                        }
                        None => {
                            state.subscriptions.push((path.into(), options));
                            false
                        }
                    }
                };
                self.shared.router.subscribe(path, &self.session, options);
                let send_retained = match filter.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => !existed,
                    RetainForwardRule::Never => false,
                };
                if send_retained {
                    retained.extend(self.shared.router.retained_for(path, filter.qos));
                }
                SubscribeReasonCode::Success(filter.qos)
            };
            codes.push(code);
        }
        let ack = SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
            properties: None,
        };
        self.send(out, &Packet::SubAck(ack));
        for queued in retained {
            self.session
                .offer(queued, self.shared.config.max_queued_messages);
        }
        // Downlinks that waited for this subscription.
        self.shared.flush_mailbox(&self.session);
        self.drain_session(out);
    }

    fn on_unsubscribe(&mut self, out: &mut BytesMut, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let removed = {
                let mut state = self.session.lock();
                let before = state.subscriptions.len();
                state.subscriptions.retain(|(f, _)| **f != **filter);
                before != state.subscriptions.len()
            };
            if removed {
                self.shared.router.unsubscribe(filter, &self.session);
            }
            reasons.push(if removed {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
        }
        let ack = UnsubAck {
            pkid: unsubscribe.pkid,
            reasons,
            properties: None,
        };
        self.send(out, &Packet::UnsubAck(ack));
    }

    fn complete_outbound(&mut self, pkid: u16, qos: QoS) {
        let stage = match qos {
            QoS::ExactlyOnce => OutboundStage::Released,
            _ => OutboundStage::Published,
        };
        let mut state = self.session.lock();
        let Some(at) = state
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.stage == stage && i.queued.qos == qos)
        else {
            return;
        };
        if let Some(done) = state.inflight.remove(at) {
            if let Some(tag) = done.queued.downlink {
                tag.settle(DeliveryOutcome::Acknowledged);
            }
        }
    }

    fn publish_packet(queued: &Queued, pkid: u16, dup: bool) -> Packet {
        Packet::Publish(Publish {
            dup,
            qos: queued.qos,
            retain: queued.retain,
            topic: queued.message.topic.clone(),
            pkid,
            payload: queued.message.payload.clone(),
            properties: queued.message.properties.as_deref().cloned(),
        })
    }

    /// On a resumed session, repeats what the client never acknowledged,
    /// except downlinks that expired (or were given up) meanwhile.
    fn resend_inflight(&self, out: &mut BytesMut) {
        let mut state = self.session.lock();
        let now = Instant::now();
        state
            .inflight
            .retain(|inflight| match &inflight.queued.downlink {
                Some(tag) if inflight.stage == OutboundStage::Published && tag.is_stale(now) => {
                    tag.settle(DeliveryOutcome::Expired);
                    false
                }
                _ => true,
            });
        for inflight in &state.inflight {
            let packet = match inflight.stage {
                OutboundStage::Published => {
                    Self::publish_packet(&inflight.queued, inflight.pkid, true)
                }
                OutboundStage::Released => Packet::PubRel(PubRel::new(inflight.pkid, None)),
            };
            self.send(out, &packet);
        }
    }

    /// Moves queued messages to the wire, within the client's in-flight window.
    fn drain_session(&self, out: &mut BytesMut) {
        let metrics = &self.shared.metrics;
        let mut state = self.session.lock();
        while out.len() < WRITE_HIGH_WATER && state.inflight.len() < self.outbound_limit {
            let Some(queued) = state.queue.pop_front() else {
                break;
            };
            if let Some(tag) = queued
                .downlink
                .as_ref()
                .filter(|tag| tag.is_stale(Instant::now()))
            {
                tag.settle(DeliveryOutcome::Expired);
                metrics
                    .messages_dropped
                    .with_label_values(&["expired"])
                    .inc();
                continue;
            }
            let pkid = if queued.qos == QoS::AtMostOnce {
                0
            } else {
                state.allocate_pkid()
            };
            let packet = Self::publish_packet(&queued, pkid, false);
            if packet.size() > self.client_max_packet {
                metrics
                    .messages_dropped
                    .with_label_values(&["client_max_packet_size"])
                    .inc();
                if let Some(tag) = &queued.downlink {
                    tag.settle(DeliveryOutcome::Refused(DownlinkRefusal::PacketTooLarge));
                }
                continue;
            }
            self.send(out, &packet);
            metrics
                .messages_sent
                .with_label_values(&[qos_label(queued.qos)])
                .inc();
            if queued.qos == QoS::AtMostOnce {
                // No acknowledgement will come: sent is as far as it goes.
                if let Some(tag) = &queued.downlink {
                    tag.settle(DeliveryOutcome::Acknowledged);
                }
            } else {
                state.inflight.push_back(Inflight {
                    pkid,
                    stage: OutboundStage::Published,
                    queued,
                });
            }
        }
    }

    /// Cleanup after the socket closed: session bookkeeping, will, metrics.
    fn finish(self, reason: CloseReason) {
        let shared = &self.shared;
        shared
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.connections.dec();
        shared
            .metrics
            .disconnects
            .with_label_values(&[reason.as_label()])
            .inc();
        debug!(
            client_id = self.client_id(),
            reason = reason.as_label(),
            "client disconnected"
        );
        let presence = match reason {
            CloseReason::Normal | CloseReason::NormalWithWill => Some(DisconnectReason::Normal),
            CloseReason::KeepaliveTimeout => Some(DisconnectReason::KeepaliveTimeout),
            CloseReason::TakenOver => None, // reported by the connection that took over
            CloseReason::Revoked => Some(DisconnectReason::AuthRevoked),
            CloseReason::ServerShutdown => Some(DisconnectReason::ServerShutdown),
            _ => Some(DisconnectReason::ConnectionLost),
        };
        if let Some(presence) = presence {
            shared
                .events
                .disconnected(self.client_id(), self.generation, presence);
        }
        if let Some(ended) = shared.registry.detach(&self.session, self.generation) {
            shared.router.remove_session(&ended);
            shared.metrics.sessions.dec();
        }
        let Some(will) = self.will.filter(|_| reason.publishes_will()) else {
            return;
        };
        let session_expiry = self.session.lock().expiry;
        let delay = will.delay.min(session_expiry);
        if delay.is_zero() {
            shared.publish_will(&self.session, &will.topic, &will.message, will.qos);
            return;
        }
        if reason == CloseReason::TakenOver {
            return; // the client is back before the will delay passed
        }
        let shared = shared.clone();
        let session = self.session.clone();
        let generation = self.generation;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let reconnected = session.lock().last_generation != generation;
            if !reconnected {
                shared.publish_will(&session, &will.topic, &will.message, will.qos);
            }
        });
    }
}

/// A topic name a client may publish to: UTF-8 (checked by the caller),
/// not empty, no wildcards, no NUL.
pub(crate) fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65535 && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client may subscribe to.
pub(crate) fn valid_topic_filter(filter: &str) -> bool {
    !filter.contains('\0') && rumqttc::v5::mqttbytes::valid_filter(filter)
}
