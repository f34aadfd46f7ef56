//! Listeners and lifecycle: binding, accepting, limits, background chores,
//! and graceful shutdown.

use crate::config::{BrokerConfig, ConfigError};
use crate::connection::{self, Accepted};
use crate::proxy_protocol;
use crate::tls::{TlsAcceptor, TlsStream};
use crate::websocket::{Upgrader, WebSocketError, WsStream};
use crate::{
    Authenticator, BrokerHandle, BrokerHooks, DelayedWills, FlappingDetector, Metrics, Registry,
    RetainedStore, Router, Shared,
};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running broker.
pub struct Broker {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    websocket_local_addr: Option<SocketAddr>,
    websocket_tls_local_addr: Option<SocketAddr>,
}

impl Broker {
    /// Validates `config`, raises the open-file limit, binds the listeners and
    /// starts accepting. Runs until `shutdown` is cancelled.
    pub async fn start(
        config: BrokerConfig,
        hooks: BrokerHooks,
        registry: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        let auth = Authenticator::new(&config.auth)?;
        let max_connections = connection_limit(&config);
        let metrics = Metrics::new(registry)?;
        metrics.connection_limit.set(max_connections as i64);
        let tls = config.tls.as_ref().map(TlsAcceptor::new).transpose()?;

        let listener = bind(config.listen).await?;
        let local_addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;
        let tls_listener = match &config.tls {
            Some(tls_config) => Some(bind(tls_config.listen).await?),
            None => None,
        };
        let tls_local_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
        let websocket = config.websocket.clone().unwrap_or_default();
        let upgrader = Arc::new(Upgrader::new(&websocket.path, &config));
        let ws_listener = match websocket.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        // validate() made sure [broker.tls] (so `tls`) is there for wss.
        let wss_listener = match (websocket.tls_listen, &tls) {
            (Some(addr), Some(_)) => Some(bind(addr).await?),
            _ => None,
        };
        let websocket_local_addr = ws_listener.as_ref().and_then(|l| l.local_addr().ok());
        let websocket_tls_local_addr = wss_listener.as_ref().and_then(|l| l.local_addr().ok());

        let retained = RetainedStore::new(&config.limits);
        let flapping = FlappingDetector::new(&config.admission);
        let shared = Arc::new(Shared {
            uplink_permits: Arc::new(Semaphore::new(config.max_inflight_uplinks_total)),
            config,
            auth,
            registry: Registry::default(),
            router: Router::default(),
            retained,
            wills: DelayedWills::default(),
            flapping,
            admission_log: RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(ADMISSION_LOG_LINES_PER_SEC).unwrap_or(NonZeroU32::MIN),
            )),
            sink: hooks.uplinks,
            events: hooks.session_events,
            mailbox: Default::default(),
            metrics,
            max_connections,
            connected: AtomicUsize::new(0),
            revocations: AtomicU64::new(0),
            drain: shutdown.child_token(),
            stopping: std::sync::atomic::AtomicU8::new(0),
            shutdown,
        });
        if let Some(path) = &shared.config.auth.revocation_file {
            // Loaded before the first accept, so no revoked device slips in.
            match crate::auth::read_revocation_file(path) {
                Ok(ids) => shared.auth.set_revocations(ids),
                Err(error) => {
                    warn!(path = %path.display(), %error, "cannot read the revocation file")
                }
            }
        }
        let tracker = TaskTracker::new();
        info!(%local_addr, max_connections, "MQTT listener up");
        tracker.spawn(accept_loop(
            shared.clone(),
            listener,
            Transport::Mqtt,
            tracker.clone(),
        ));
        if let (Some(listener), Some(acceptor)) = (tls_listener, tls.clone()) {
            info!(addr = ?tls_local_addr, "MQTT TLS listener up");
            tracker.spawn(accept_loop(
                shared.clone(),
                listener,
                Transport::Tls(acceptor),
                tracker.clone(),
            ));
        }
        if let Some(listener) = ws_listener {
            info!(addr = ?websocket_local_addr, path = %websocket.path, "MQTT WebSocket listener up");
            tracker.spawn(accept_loop(
                shared.clone(),
                listener,
                Transport::WebSocket(upgrader.clone()),
                tracker.clone(),
            ));
        }
        if let (Some(listener), Some(acceptor)) = (wss_listener, tls) {
            info!(addr = ?websocket_tls_local_addr, path = %websocket.path, "MQTT WebSocket TLS listener up");
            tracker.spawn(accept_loop(
                shared.clone(),
                listener,
                Transport::WebSocketTls(acceptor, upgrader),
                tracker.clone(),
            ));
        }
        tracker.spawn(sweep_sessions(shared.clone()));
        // Not tracked: it waits for the shutdown token, which `wait` cancels
        // only once the tracked tasks are done.
        tokio::spawn({
            let shared = shared.clone();
            async move {
                shared.drain.cancelled().await;
                shared.metrics.draining.set(1);
                shared.stop(crate::Stopping::Draining);
                shared.shutdown.cancelled().await;
                shared.stop(crate::Stopping::Now);
            }
        });
        if let Some(path) = shared.config.auth.revocation_file.clone() {
            tracker.spawn(watch_revocations(shared.clone(), path));
        }
        Ok(Broker {
            shared,
            tracker,
            local_addr,
            tls_local_addr,
            websocket_local_addr,
            websocket_tls_local_addr,
        })
    }

    /// A handle for delivering downlinks.
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Address of the plain MQTT listener (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address of the TLS listener, if any.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// Address of the MQTT-over-WebSocket (ws) listener, if any.
    pub fn websocket_local_addr(&self) -> Option<SocketAddr> {
        self.websocket_local_addr
    }

    /// Address of the MQTT-over-WebSocket TLS (wss) listener, if any.
    pub fn websocket_tls_local_addr(&self) -> Option<SocketAddr> {
        self.websocket_tls_local_addr
    }

    /// Most connections accepted at once.
    pub fn connection_limit(&self) -> usize {
        self.shared.max_connections
    }

    /// Connections currently past CONNECT.
    pub fn connection_count(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// A token that starts a graceful shutdown when cancelled (what SIGTERM
    /// does): the listeners stop accepting, and every connection closes at
    /// its moment within the drain time (`drain_period`, `drain_rate`),
    /// once the uplinks it has in flight are answered. Wills are not
    /// published. [`Broker::wait`] returns when all are closed.
    pub fn drain_trigger(&self) -> CancellationToken {
        self.shared.drain.clone()
    }

    /// Waits for a drain or the shutdown token, then for connections to
    /// close: after a drain within `drain_period + shutdown_grace`, after a
    /// plain shutdown within `shutdown_grace`. Cancels the shutdown token
    /// for what is left.
    pub async fn wait(self) {
        let config = &self.shared.config;
        let limit = tokio::select! {
            biased;
            _ = self.shared.shutdown.cancelled() => config.shutdown_grace,
            _ = self.shared.drain.cancelled() => {
                info!(
                    connections = self.shared.connected.load(Ordering::Relaxed),
                    drain_period = ?config.drain_period,
                    "draining: listeners closed, connections closing"
                );
                config.drain_period + config.shutdown_grace
            }
        };
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tracker.len(),
                "shutdown grace period over; dropping connections"
            );
        }
        self.shared.shutdown.cancel();
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let listener = socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(4096)
        })
        .map_err(|source| BrokerError::Bind { addr, source })?;
    Ok(listener)
}

/// Raises the soft open-file limit to the hard limit and derives how many
/// connections fit, keeping `fd_reserve` descriptors for everything else.
fn connection_limit(config: &BrokerConfig) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let fits = (limit as usize).saturating_sub(config.fd_reserve).max(1);
    let max = match config.max_connections {
        Some(configured) if configured > fits => {
            warn!(
                configured,
                fits,
                open_file_limit = limit,
                "broker.max_connections exceeds what the open-file limit allows"
            );
            configured
        }
        Some(configured) => configured,
        None => fits,
    };
    info!(
        open_file_limit = limit,
        max_connections = max,
        "open-file limit raised; sessions this process can hold"
    );
    max
}

/// Runs the TLS handshake on `stream`; a failed one is counted and logged.
async fn tls_handshake(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Option<TlsStream<TcpStream>> {
    let accepted = acceptor.accept(stream).await;
    accepted
        .map_err(|error| tls_handshake_failed(shared, Some(&error)))
        .ok()
}

/// Counts a TLS handshake that failed (`error`) or ran out of time (`None`).
fn tls_handshake_failed(shared: &Shared, error: Option<&io::Error>) {
    shared
        .metrics
        .protocol_errors
        .with_label_values(&["tls_handshake"])
        .inc();
    if let Some(error) = error {
        tracing::debug!(%error, "TLS handshake failed");
    }
}

/// What a listener runs on an accepted socket before MQTT.
enum Transport {
    Mqtt,
    Tls(TlsAcceptor),
    /// MQTT over WebSocket (ws).
    WebSocket(Arc<Upgrader>),
    /// MQTT over WebSocket over TLS (wss).
    WebSocketTls(TlsAcceptor, Arc<Upgrader>),
}

/// How long a plain WebSocket connection the listener does not admit has for
/// its upgrade request before it is closed unanswered.
const REFUSAL_UPGRADE_TIMEOUT: Duration = Duration::from_secs(2);

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    transport: Transport,
    tracker: TaskTracker,
) {
    // Sockets accepted but not yet through CONNECT, or being refused.
    let handshaking = Arc::new(AtomicUsize::new(0));
    let mut last_fd_warning: Option<Instant> = None;
    let rate_limit = connect_rate_limiter(&shared.config);
    loop {
        let accepted = tokio::select! {
            _ = shared.drain.cancelled() => return, // also on shutdown
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE/ENFILE: out of descriptors. Back off instead of spinning.
                if last_fd_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!(%error, "accept failed");
                    last_fd_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let busy = shared.connected.load(Ordering::Relaxed) + handshaking.load(Ordering::Relaxed);
        let shared_conn = shared.clone();
        let over_rate = rate_limit.as_ref().is_some_and(|l| l.check().is_err());
        let refusal = if over_rate {
            Some(connection::Unadmitted::RateExceeded)
        } else if busy >= shared.max_connections {
            Some(connection::Unadmitted::ServerFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // Refusals are cheap but still take a descriptor: cap them.
            // A TLS refusal would cost the handshake it is meant to spare;
            // so would a wss one, which is never answered.
            if handshaking.load(Ordering::Relaxed) > shared.config.fd_reserve / 2
                || (over_rate && matches!(transport, Transport::Tls(_)))
                || matches!(transport, Transport::WebSocketTls(..))
            {
                shared
                    .metrics
                    .connects
                    .with_label_values(&[refusal.dropped_label()])
                    .inc();
                continue;
            }
            let guard = HandshakeGuard::new(&handshaking);
            if let Transport::WebSocket(upgrader) = &transport {
                // The CONNACK that says why travels over the WebSocket.
                let upgrader = upgrader.clone();
                tracker.spawn(async move {
                    let _guard = guard;
                    if terminal_address(&shared_conn, &mut stream, peer)
                        .await
                        .is_none()
                    {
                        return;
                    }
                    let upgrade = upgrader.accept(stream);
                    if let Ok(Ok(ws)) = tokio::time::timeout(REFUSAL_UPGRADE_TIMEOUT, upgrade).await
                    {
                        connection::refuse_unadmitted(shared_conn, ws, refusal).await;
                    }
                });
                continue;
            }
            tracker.spawn(async move {
                let _guard = guard;
                if terminal_address(&shared_conn, &mut stream, peer)
                    .await
                    .is_some()
                {
                    connection::refuse_unadmitted(shared_conn, stream, refusal).await;
                }
            });
            continue;
        }
        let guard = HandshakeGuard::new(&handshaking);
        match &transport {
            // Each setup runs boxed inside `serve`, so that its state does not
            // size the task of the connection for the connection's whole life.
            Transport::Mqtt => {
                tracker.spawn(connection::serve(Box::pin(async move {
                    let peer = terminal_address(&shared_conn, &mut stream, peer).await?;
                    Some(Accepted {
                        shared: shared_conn,
                        stream,
                        peer,
                        handshake: guard,
                    })
                })));
            }
            Transport::Tls(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(connection::serve(Box::pin(async move {
                    let peer = terminal_address(&shared_conn, &mut stream, peer).await?;
                    let timeout = shared_conn.config.connect_timeout;
                    let handshake = tls_handshake(&shared_conn, &acceptor, stream);
                    let Ok(tls_stream) = tokio::time::timeout(timeout, handshake).await else {
                        tls_handshake_failed(&shared_conn, None);
                        return None;
                    };
                    Some(Accepted {
                        shared: shared_conn,
                        stream: tls_stream?,
                        peer,
                        handshake: guard,
                    })
                })));
            }
            Transport::WebSocket(upgrader) => {
                let upgrader = upgrader.clone();
                tracker.spawn(connection::serve(Box::pin(async move {
                    let peer = terminal_address(&shared_conn, &mut stream, peer).await?;
                    let timeout = shared_conn.config.connect_timeout;
                    let upgraded = tokio::time::timeout(timeout, upgrader.accept(stream)).await;
                    let ws = upgraded_or_counted(&shared_conn, upgraded, peer)?;
                    Some(Accepted {
                        shared: shared_conn,
                        stream: ws,
                        peer,
                        handshake: guard,
                    })
                })));
            }
            Transport::WebSocketTls(acceptor, upgrader) => {
                let (acceptor, upgrader) = (acceptor.clone(), upgrader.clone());
                tracker.spawn(connection::serve(Box::pin(async move {
                    let peer = terminal_address(&shared_conn, &mut stream, peer).await?;
                    // One connect timeout for the TLS handshake and the upgrade.
                    let timeout = shared_conn.config.connect_timeout;
                    let upgraded = tokio::time::timeout(timeout, async {
                        let tls_stream = tls_handshake(&shared_conn, &acceptor, stream).await?;
                        Some(upgrader.accept(tls_stream).await)
                    })
                    .await;
                    // None: the TLS handshake failed, counted as such.
                    let upgraded = upgraded.transpose()?;
                    let ws = upgraded_or_counted(&shared_conn, upgraded, peer)?;
                    Some(Accepted {
                        shared: shared_conn,
                        stream: ws,
                        peer,
                        handshake: guard,
                    })
                })));
            }
        }
    }
}

/// The upgraded WebSocket connection, or `None` after counting a failed or
/// timed-out upgrade as a `websocket_handshake` protocol error.
fn upgraded_or_counted<S>(
    shared: &Shared,
    upgraded: Result<Result<WsStream<S>, WebSocketError>, tokio::time::error::Elapsed>,
    peer: SocketAddr,
) -> Option<WsStream<S>> {
    let error = match upgraded {
        Ok(Ok(ws)) => return Some(ws),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no WebSocket upgrade within the connect timeout".to_string(),
    };
    shared
        .metrics
        .protocol_errors
        .with_label_values(&["websocket_handshake"])
        .inc();
    tracing::debug!(%peer, %error, "WebSocket upgrade refused");
    None
}

/// The terminal's address: the socket's `peer`, or with `proxy_protocol` on,
/// the address in the PROXY header the load balancer sent first (read from
/// `stream` within the connect timeout). `None`: the connection had no valid
/// header and is to be closed; counted as a `proxy_header` protocol error.
/// (It borrows the stream: a connection task holds one copy of it, not two.)
async fn terminal_address(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    if !shared.config.proxy_protocol {
        return Some(peer);
    }
    let timeout = shared.config.connect_timeout;
    let error = match tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok(source)) => return Some(source.unwrap_or(peer)),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no PROXY header within the connect timeout".to_string(),
    };
    shared
        .metrics
        .protocol_errors
        .with_label_values(&["proxy_header"])
        .inc();
    if shared.admission_log.check().is_ok() {
        info!(%peer, %error, "closing connection without a valid PROXY header");
    }
    None
}

/// Log lines per second about refused CONNECTs, across the node.
const ADMISSION_LOG_LINES_PER_SEC: u32 = 10;

/// The token bucket of one listener's connect rate, if one is set.
fn connect_rate_limiter(config: &BrokerConfig) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(config.admission.max_connect_rate)?;
    let burst = NonZeroU32::new(config.admission.connect_burst).unwrap_or(rate);
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// Counts a socket as handshaking until CONNECT is through (or it closed).
pub(crate) struct HandshakeGuard(Option<Arc<AtomicUsize>>);

impl HandshakeGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(Some(counter.clone()))
    }

    /// The connection completed CONNECT and is now counted as connected.
    pub(crate) fn release(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.release();
    }
}

async fn sweep_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shared.drain.cancelled() => return, // also on shutdown
            _ = tick.tick() => {}
        }
        shared.mailbox.sweep(Instant::now());
        shared.retained.sweep(Instant::now());
        shared.flapping.sweep(Instant::now());
        let expired = shared.registry.sweep_expired(Instant::now());
        for session in &expired {
            shared.router.remove_session(session);
        }
        shared.metrics.sessions.sub(expired.len() as i64);
    }
}

/// Re-reads the revocation file when it changes and disconnects devices
/// that are now revoked. A missing or unreadable file keeps the current list
/// and is reported once per change.
async fn watch_revocations(shared: Arc<Shared>, path: std::path::PathBuf) {
    let mut last_seen: Option<Result<std::time::SystemTime, String>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shared.drain.cancelled() => return, // also on shutdown
            _ = tick.tick() => {}
        }
        let current = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|e| e.to_string());
        if last_seen.as_ref() == Some(&current) {
            continue;
        }
        last_seen = Some(current.clone());
        let loaded = current
            .and_then(|_| crate::auth::read_revocation_file(&path).map_err(|e| e.to_string()));
        match loaded {
            Ok(ids) => {
                info!(path = %path.display(), revoked = ids.len(), "revocation list loaded");
                shared.auth.set_revocations(ids);
                shared.revocations.fetch_add(1, Ordering::Relaxed);
                shared.registry.for_each_attached(|session, attachment| {
                    if shared.auth.is_revoked(&session.client_id) {
                        attachment.wake.notify_one();
                    }
                });
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read the revocation file; keeping the current list")
            }
        }
    }
}
