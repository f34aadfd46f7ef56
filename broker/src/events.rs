//! Session events for presence: who connected, who left and why.

/// Why a client's connection ended, as reported to [`SessionEvents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Normal,
    KeepaliveTimeout,
    /// A newer connection with the same client id took the session.
    Takeover,
    /// The device was revoked while connected.
    AuthRevoked,
    ServerShutdown,
    /// Network or protocol error, or the client closed the socket.
    ConnectionLost,
}

/// Told about every connect and disconnect, in order per client.
///
/// `generation` increases with every connection the broker accepts, so a
/// consumer can discard an event older than one it already saw. On takeover
/// the replaced connection's `disconnected(.., Takeover)` is reported before
/// the new connection's `connected`.
pub trait SessionEvents: Send + Sync + 'static {
    fn connected(&self, client_id: &str, generation: u64);
    fn disconnected(&self, client_id: &str, generation: u64, reason: DisconnectReason);
}

/// Ignores session events.
pub struct NoSessionEvents;

impl SessionEvents for NoSessionEvents {
    fn connected(&self, _client_id: &str, _generation: u64) {}
    fn disconnected(&self, _client_id: &str, _generation: u64, _reason: DisconnectReason) {}
}
