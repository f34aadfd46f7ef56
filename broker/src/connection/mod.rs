//! One client connection: admission, then the event loop, then teardown.
//!
//! Each connection is one tokio task. It reads packets, routes publishes,
//! hands uplinks to the sink and sends their PUBACK only when the sink's
//! acknowledgement completes (in the order the PUBLISHes came in), delivers
//! what its session queue holds, and enforces keepalive and limits.
//!
//! One idea a file: [`close`] (why a connection ends), [`admission`]
//! (CONNECT to CONNACK), this file (the event loop and packet dispatch),
//! [`inbound`] (PUBLISH to acknowledgement), [`outbound`] (session queue to
//! the wire), [`subscriptions`] and [`teardown`].

mod admission;
mod aliases;
mod close;
mod inbound;
mod log_gate;
mod outbound;
mod subscriptions;
mod teardown;

pub(crate) use admission::{refuse_unadmitted, Unadmitted};
pub(crate) use close::CloseReason;

use crate::codec::{self, *};
use crate::io::{Io, IoEvent};
use crate::server::HandshakeGuard;
use crate::session::Session;
use crate::{Shared, Stopping};
use admission::{read_connect, refuse_bad_connect, Will};
use bytes::BytesMut;
use futures::stream::{FuturesOrdered, StreamExt};
use inbound::{PendingAck, Settled};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;
use tracing::{debug, info, warn};

enum Event {
    /// The keepalive, slow-subscriber or drain deadline is due.
    Timer,
    Wake,
    Io(std::io::Result<IoEvent>),
    UplinkDone((u16, QoS, Settled)),
    Permit(OwnedSemaphorePermit),
}

/// A connection the listener accepted, once its transport is set up (PROXY
/// header read, TLS handshake done, WebSocket upgraded).
pub(crate) struct Accepted<S> {
    pub shared: Arc<Shared>,
    pub stream: S,
    /// The terminal's address (from the PROXY header where there is one),
    /// kept for the connection's log lines.
    pub peer: SocketAddr,
    pub handshake: HandshakeGuard,
}

/// How a listener sets a connection's transport up; `None` when that failed
/// (counted and logged by the listener).
pub(crate) type Setup<S> = Pin<Box<dyn Future<Output = Option<Accepted<S>>> + Send>>;

/// Serves one connection from its transport's setup until it closes.
///
/// The task of every connection lives as long as the connection, and its
/// size is that of its largest state. Setup and admission (the PROXY header,
/// TLS, the CONNECT packet, a refusal) are large but short-lived, so they
/// run boxed and are freed once the client is in: the task of an idle
/// connection holds the event loop's state and a pointer to its I/O and
/// [`Connection`], not the handshake's state (issue #12: memory per session).
pub(crate) async fn serve<S>(setup: Setup<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admitted = Box::pin(async move {
        let accepted = setup.await?;
        admit(accepted).await
    })
    .await;
    // Its own allocation, so that the task holds a pointer to it rather
    // than copies left behind by moves.
    let Some(mut live) = admitted else {
        return;
    };
    let Live { io, conn } = &mut *live;
    let reason = conn.run(io).await;
    conn.close(io, reason).await;
}

/// An admitted connection: its socket and its state.
struct Live<S> {
    io: Io<S>,
    conn: Connection,
}

/// CONNECT to CONNACK: `None` if the client was refused (and told why) or
/// went away.
async fn admit<S>(accepted: Accepted<S>) -> Option<Box<Live<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Accepted {
        shared,
        stream,
        peer,
        mut handshake,
    } = accepted;
    let mut io = Io::new(stream);
    // Until the client is authenticated it gets the small first-packet limit.
    let max_packet = shared.config.max_connect_packet();
    let connect = tokio::time::timeout(
        shared.config.connect_timeout,
        read_connect(&mut io, max_packet),
    )
    .await;
    let (version, packet) = match connect {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            refuse_bad_connect(&shared, &mut io, error).await;
            return None;
        }
        Err(_) => {
            shared
                .metrics
                .protocol_errors
                .with_label_values(&["connect_timeout"])
                .inc();
            debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
    };
    let Packet::Connect(connect, will, login) = packet else {
        shared
            .metrics
            .protocol_errors
            .with_label_values(&["not_connect"])
            .inc();
        return None;
    };
    let generation = shared.registry.next_generation();
    let Some(conn) = Connection::accept(
        &shared,
        &mut io,
        peer,
        version,
        generation,
        (connect, will, login),
    )
    .await
    else {
        let _ = io.flush().await;
        return None;
    };
    handshake.release();
    Some(Box::new(Live { io, conn }))
}

impl Connection {
    /// Says goodbye (MQTT 5 DISCONNECT with the reason, where it has one),
    /// closes the socket and tears the connection down.
    async fn close<S>(&mut self, io: &mut Io<S>, reason: CloseReason)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = &self.shared;
        if let Some(code) = reason
            .disconnect_code()
            .filter(|_| self.version == ProtocolVersion::V5)
        {
            let mut disconnect = Disconnect::new(code);
            if reason == CloseReason::ServerShutdown {
                disconnect.properties =
                    shared
                        .config
                        .server_reference
                        .clone()
                        .map(|reference| DisconnectProperties {
                            session_expiry_interval: None,
                            reason_string: None,
                            user_properties: Vec::new(),
                            server_reference: Some(reference),
                        });
            }
            self.send(&mut io.wbuf, &Packet::Disconnect(disconnect));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
        io.shutdown().await;
        self.finish(reason);
    }
}

struct Connection {
    shared: Arc<Shared>,
    session: Arc<Session>,
    /// The terminal's address, for log lines.
    peer: SocketAddr,
    generation: u64,
    version: ProtocolVersion,
    wake: Arc<Notify>,
    will: Option<Box<Will>>,
    /// 1.5 × the keepalive in milliseconds, 0 for none. Milliseconds in a
    /// `u32` rather than a `Duration`, like `timer_armed` rather than an
    /// `Option<Instant>`: they keep [`Live`] within jemalloc's 384-byte size
    /// class, 64 B of every session (docs/benchmarks.md, "The connection's
    /// timer").
    keepalive_ms: u32,
    last_activity: Instant,
    /// The connection's one timer, for the earliest of its deadlines
    /// ([`Connection::next_deadline`]), when `timer_armed`. It lives as long
    /// as the connection and is reset only when a deadline comes earlier than
    /// it; the keepalive deadline moving later with every packet does not
    /// touch it: when it fires too early it is armed again (`on_timer`). So a
    /// packet costs no timer-wheel work.
    timer: Pin<Box<Sleep>>,
    timer_armed: bool,
    pending: FuturesOrdered<PendingAck>,
    reserved: Option<OwnedSemaphorePermit>,
    /// Set while reading waits for a global in-flight permit: boxed, and
    /// only then, so idle connections hold no semaphore future.
    permit_wait: Option<Box<PollSemaphore>>,
    /// The client's Receive Maximum, within `max_inflight_downlinks`.
    outbound_limit: u16,
    /// The client's Maximum Packet Size.
    client_max_packet: u32,
    /// The most topic aliases the client takes from Herald (its Topic Alias
    /// Maximum, within `topic_alias_maximum`); 0 for none.
    client_alias_max: u16,
    aliases: Option<Box<aliases::TopicAliases>>,
    revocation_epoch: u64,
    log_gate: log_gate::LogGate,
    /// Since when the session's queue has been full without the client
    /// acknowledging anything (slow-subscriber detection).
    congested_since: Option<Instant>,
    drain: DrainStage,
}

/// Where a connection stands in a drain of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainStage {
    Serving,
    /// The node drains; this connection closes at the given moment.
    ClosesAt(Instant),
    /// Reading stopped; closing once the uplinks in flight are answered.
    Closing,
}

/// Whether deadline `a` comes before `b`; `None` is never.
fn sooner(a: Option<Instant>, b: Option<Instant>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl Connection {
    pub(super) fn client_id(&self) -> &str {
        &self.session.client_id
    }

    pub(super) fn send(&self, out: &mut BytesMut, packet: &Packet) {
        if let Err(error) = codec::write(self.version, packet, out) {
            warn!(client_id = self.client_id(), %error, "could not encode packet");
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> CloseReason {
        // Clients may send packets right behind CONNECT without waiting for
        // the CONNACK; they are already buffered.
        if let Err(reason) = self.on_stopping().and_then(|()| self.process_input(io)) {
            return reason;
        }
        loop {
            let closing = self.drain == DrainStage::Closing;
            if closing && self.pending.is_empty() {
                return CloseReason::ServerShutdown;
            }
            let can_read = self.pending.len()
                < usize::from(self.shared.config.max_inflight_uplinks)
                && self.permit_wait.is_none()
                && !closing;
            // Every select branch lives in the task of every idle connection,
            // so each one adds to the memory per session: the timer lives in
            // the connection, and a drain or shutdown arrives as a wake-up.
            let next = self.next_deadline();
            if sooner(next, self.timer_at()) {
                self.arm_timer(next);
            }
            let timer_armed = self.timer_armed;
            let event = tokio::select! {
                biased;
                _ = self.wake.notified() => Event::Wake,
                result = poll_fn(|cx| io.poll_io(cx, can_read)) => Event::Io(result),
                Some(done) = self.pending.next(), if !self.pending.is_empty() => Event::UplinkDone(done),
                Some(permit) = poll_fn(|cx| match self.permit_wait.as_deref_mut() {
                    Some(wait) => wait.poll_acquire(cx),
                    None => std::task::Poll::Pending,
                }), if self.permit_wait.is_some() => Event::Permit(permit),
                () = self.timer.as_mut(), if timer_armed => Event::Timer,
            };
            let outcome = match event {
                Event::Timer => self.on_timer(can_read),
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
                    self.permit_wait = None;
                    self.process_input(io)
                }
            };
            if let Err(reason) = outcome {
                return reason;
            }
        }
    }

    /// The earliest of the deadlines this connection keeps: keepalive, the
    /// slow-subscriber timeout while its queue is full, its drain moment.
    fn next_deadline(&self) -> Option<Instant> {
        let keepalive = self.keepalive().map(|period| self.last_activity + period);
        let slow = self
            .congested_since
            .map(|since| since + self.shared.config.slow_subscriber_timeout);
        let close = match self.drain {
            DrainStage::ClosesAt(at) => Some(at),
            _ => None,
        };
        [keepalive, slow, close].into_iter().flatten().min()
    }

    /// The silence after which the client is gone (1.5 × its keepalive).
    fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_ms > 0).then(|| Duration::from_millis(self.keepalive_ms.into()))
    }

    /// When the timer fires, if it is armed.
    fn timer_at(&self) -> Option<Instant> {
        self.timer_armed.then(|| self.timer.deadline().into_std())
    }

    fn arm_timer(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
        }
        self.timer_armed = at.is_some();
    }

    /// Acts on whichever deadlines have passed; the loop arms the timer
    /// again for the next one.
    fn on_timer(&mut self, reading: bool) -> Result<(), CloseReason> {
        self.timer_armed = false;
        let now = Instant::now();
        if matches!(self.drain, DrainStage::ClosesAt(at) if now >= at) {
            // Its moment in the drain: finish the uplinks in flight, then close.
            self.drain = DrainStage::Closing;
        }
        let timeout = self.shared.config.slow_subscriber_timeout;
        if self
            .congested_since
            .is_some_and(|since| now >= since + timeout)
        {
            info!(
                client_id = self.client_id(),
                "subscriber made no progress with a full queue; disconnecting"
            );
            return Err(CloseReason::SlowSubscriber);
        }
        if self
            .keepalive()
            .is_some_and(|period| now >= self.last_activity + period)
        {
            if !reading {
                // Herald stopped reading (backpressure): the client's
                // PINGREQs may be waiting unread in the socket.
                self.last_activity = now;
            } else {
                return Err(CloseReason::KeepaliveTimeout);
            }
        }
        Ok(())
    }

    /// Acts on the node stopping: at once, or at this connection's moment
    /// of a drain, so the fleet reconnects elsewhere as a stream.
    fn on_stopping(&mut self) -> Result<(), CloseReason> {
        match self.shared.stopping() {
            Stopping::No => Ok(()),
            Stopping::Draining if self.drain == DrainStage::Serving => {
                let delay = self.shared.drain_delay(self.generation);
                self.drain = DrainStage::ClosesAt(Instant::now() + delay);
                Ok(())
            }
            Stopping::Draining => Ok(()),
            Stopping::Now => Err(CloseReason::ServerShutdown),
        }
    }

    fn on_wake(&mut self, out: &mut BytesMut) -> Result<(), CloseReason> {
        self.on_stopping()?;
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

    pub(super) fn protocol_error(&self, what: &str) -> CloseReason {
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
                self.on_pubrec(out, rec);
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.complete_outbound(comp.pkid, QoS::ExactlyOnce);
                self.drain_session(out);
                Ok(())
            }
            Packet::PubRel(rel) => {
                self.on_pubrel(out, rel);
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(out, subscribe),
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
                    // [MQTT-3.14.2-2]: a session that was to end with the
                    // connection cannot be given an expiry now.
                    if state.expiry.is_zero() && expiry != 0 {
                        drop(state);
                        return Err(self.protocol_error("Session Expiry set at DISCONNECT after 0"));
                    }
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
}
