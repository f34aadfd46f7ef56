//! Teardown after the socket closed: connection counts, presence, the
//! session's detachment, and the will (now, or after its delay).

use super::{CloseReason, Connection};
use crate::events::DisconnectReason;
use tracing::debug;

impl Connection {
    /// Cleanup after the socket closed: session bookkeeping, will, metrics.
    pub(super) fn finish(&mut self, reason: CloseReason) {
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
        let ended = shared.registry.detach(&self.session, self.generation);
        if reason != CloseReason::TakenOver {
            shared.redistribute_shared(&self.session);
        }
        if let Some(ended) = ended {
            shared.router.remove_session(&ended);
            shared.metrics.sessions.dec();
        }
        let Some(will) = self.will.take().filter(|_| reason.publishes_will()) else {
            return;
        };
        let session_expiry = self.session.lock().expiry;
        let delay = will.delay.min(session_expiry);
        if reason == CloseReason::TakenOver && !delay.is_zero() {
            return; // the client is back before the will delay passed
        }
        let room = shared.wills.len() < shared.config.limits.max_delayed_wills;
        if !delay.is_zero() && !room {
            shared
                .metrics
                .limits_exceeded
                .with_label_values(&["delayed_wills"])
                .inc();
        }
        if delay.is_zero() || !room {
            shared.publish_will(&self.session, &will.topic, &will.message);
            return;
        }
        let shared = shared.clone();
        let session = self.session.clone();
        let generation = self.generation;
        let cancelled = shared.wills.track(session.client_id.clone(), generation);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Reconnected, or a newer will replaced this one.
                _ = cancelled.cancelled() => return,
                // Wills are not published on shutdown.
                _ = shared.shutdown.cancelled() => return,
            }
            if shared.wills.take_due(&session.client_id, generation) {
                shared.publish_will(&session, &will.topic, &will.message);
            }
        });
    }
}
