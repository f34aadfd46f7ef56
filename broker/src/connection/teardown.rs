//! Teardown after the socket closed: connection counts, presence, the
//! session's detachment, and the will (now, or after its delay).

use super::{CloseReason, Connection};
use crate::events::DisconnectReason;
use tracing::debug;

impl Connection {
    /// Cleanup after the socket closed: session bookkeeping, will, metrics.
    pub(super) fn finish(self, reason: CloseReason) {
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
