//! MQTT sessions and the registry that holds them, sharded by client id.
//!
//! A session outlives its connections when the client asked for it: it keeps
//! the subscriptions, the messages queued for the client and the QoS 1/2
//! messages it has not acknowledged yet. At most one connection is attached;
//! each connection carries a generation number taken when its CONNECT was
//! read, and the highest generation wins, so a stale CONNECT that finishes
//! late can never take a session away from a newer connection.

use crate::codec::{PublishProperties, QoS};
use crate::config::QueueFullPolicy;
use crate::downlink::{DeliveryOutcome, DownlinkRefusal, DownlinkTag};
use crate::sink::Uplink;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A message as it travels from a publisher to subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    pub retain: bool,
    /// The QoS it was published with: no subscriber gets it at a higher one
    /// [MQTT-3.8.4-8] (retained messages keep it for later subscribers).
    pub qos: QoS,
    pub properties: Option<Arc<PublishProperties>>,
    /// From its MQTT 5 Message Expiry Interval: not delivered after this
    /// [MQTT-3.3.2-5], and sent with what is left of it [MQTT-3.3.2-6].
    pub expires_at: Option<Instant>,
}

impl Message {
    /// A message published now; its expiry counts from now.
    pub fn new(
        topic: Bytes,
        payload: Bytes,
        retain: bool,
        qos: QoS,
        properties: Option<Arc<PublishProperties>>,
    ) -> Self {
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| Instant::now() + Duration::from_secs(secs.into()));
        Self {
            topic,
            payload,
            retain,
            qos,
            properties,
            expires_at,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// This message as an uplink for the sink, with the MQTT 5 properties
    /// that travel on with it.
    pub fn to_uplink(&self, client_id: Arc<str>, topic: Arc<str>, dup: bool) -> Uplink {
        let properties = self.properties.as_deref();
        Uplink {
            client_id,
            topic,
            payload: self.payload.clone(),
            qos: self.qos as u8,
            retain: self.retain,
            dup,
            received_at: std::time::SystemTime::now(),
            user_properties: properties
                .map(|p| p.user_properties.clone())
                .unwrap_or_default(),
            content_type: properties.and_then(|p| p.content_type.clone()),
            response_topic: properties.and_then(|p| p.response_topic.clone()),
            correlation_data: properties.and_then(|p| p.correlation_data.clone()),
        }
    }
}

/// A message waiting in a session, with the QoS it is delivered at.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub message: Message,
    pub qos: QoS,
    pub retain: bool,
    /// Set for downlinks: settled when the client acknowledges.
    pub downlink: Option<Arc<DownlinkTag>>,
    /// The Subscription Identifiers of the subscriptions it matched
    /// [MQTT-3.3.4-3]; empty (no allocation) for most.
    pub subscription_ids: Box<[usize]>,
    /// The shared subscription (`$share/<group>/<filter>`) it came through:
    /// if this member goes away without acknowledging it, another gets it.
    pub shared: Option<Arc<str>>,
}

impl Queued {
    /// `message` for one subscriber at `qos`, with nothing else attached.
    pub fn plain(message: Message, qos: QoS, retain: bool) -> Self {
        Self {
            message,
            qos,
            retain,
            downlink: None,
            subscription_ids: Box::default(),
            shared: None,
        }
    }
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundStage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub pkid: u16,
    pub stage: OutboundStage,
    pub queued: Queued,
}

/// Subscription options as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier, returned with what it matches.
    pub id: Option<std::num::NonZeroU32>,
}

/// The connection attached to a session.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub generation: u64,
    /// Wakes the connection's task: new messages, or it has been replaced.
    pub wake: Arc<Notify>,
}

#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub attachment: Option<Attachment>,
    /// Generation of the last connection that attached (will-delay checks).
    pub last_generation: u64,
    /// Set when a clean start threw this session away.
    pub discarded: bool,
    pub expiry: Duration,
    pub offline_since: Option<Instant>,
    pub subscriptions: Vec<(Box<str>, SubOptions)>,
    pub queue: VecDeque<Queued>,
    pub inflight: VecDeque<Inflight>,
    pub next_pkid: u16,
    /// QoS 2 packet ids received and not yet released by PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// Publishers waiting for room in `queue` (backpressure); created the
    /// first time the queue fills, so idle sessions do not pay for it.
    pub room: Option<Arc<Notify>>,
}

impl SessionState {
    /// Whether a publisher waiting on this session may go on: the queue is
    /// below `max`, or nobody is attached to drain it (the messages stay
    /// queued for the session; waiting could only stall the publisher).
    pub fn has_room(&self, max: usize) -> bool {
        self.queue.len() < max || self.attachment.is_none() || self.discarded
    }

    /// Wakes the publishers waiting for room, if the session has some now.
    pub fn release_waiters(&self, max: usize) {
        if let Some(room) = self.room.as_ref().filter(|_| self.has_room(max)) {
            room.notify_waiters();
        }
    }

    pub fn allocate_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.iter().any(|i| i.pkid == self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
}

/// What happened to a message offered to a session.
#[derive(Debug)]
pub(crate) enum Offer {
    Queued,
    /// Queued at or over the limit (backpressure): the publisher's
    /// acknowledgement waits for [`Session::room`].
    QueuedFull,
    /// The session's queue was full; the oldest message (of QoS 0 under
    /// backpressure, or the new QoS 0 message itself) was dropped.
    DroppedOldest,
    /// QoS 0 message for an offline session: not kept.
    DroppedOffline,
    /// Backpressure, queue full, and nobody attached to make room (or a
    /// downlink, which waits in Kafka instead): not queued.
    RefusedFull,
}

impl Session {
    fn new(client_id: Arc<str>) -> Self {
        Self {
            client_id,
            state: Mutex::new(SessionState::default()),
        }
    }

    #[cfg(feature = "bench-internals")]
    pub(crate) fn new_for_bench(client_id: &str) -> Self {
        Self::new(client_id.into())
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters more than losing the session, so recover.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a message for the client and wakes its connection; a full
    /// queue is handled by `policy` (see `broker.queue_full_policy`).
    pub fn offer(&self, queued: Queued, max_queued: usize, policy: QueueFullPolicy) -> Offer {
        let mut state = self.lock();
        if state.attachment.is_none() && queued.qos == QoS::AtMostOnce {
            return Offer::DroppedOffline;
        }
        let mut outcome = Offer::Queued;
        if state.queue.len() >= max_queued {
            match policy {
                QueueFullPolicy::DropOldest => {
                    if let Some(tag) = state.queue.pop_front().and_then(|dropped| dropped.downlink)
                    {
                        tag.settle(DeliveryOutcome::Refused(DownlinkRefusal::QueueFull));
                    }
                    outcome = Offer::DroppedOldest;
                }
                QueueFullPolicy::Backpressure if queued.qos == QoS::AtMostOnce => {
                    let oldest_qos0 = state.queue.iter().position(|q| q.qos == QoS::AtMostOnce);
                    match oldest_qos0.and_then(|at| state.queue.remove(at)) {
                        Some(dropped) => {
                            if let Some(tag) = dropped.downlink {
                                tag.settle(DeliveryOutcome::Refused(DownlinkRefusal::QueueFull));
                            }
                        }
                        None => return Offer::DroppedOldest,
                    }
                    outcome = Offer::DroppedOldest;
                }
                QueueFullPolicy::Backpressure => {
                    if state.attachment.is_none() || queued.downlink.is_some() {
                        if let Some(tag) = queued.downlink {
                            tag.settle(DeliveryOutcome::Refused(DownlinkRefusal::QueueFull));
                        }
                        return Offer::RefusedFull;
                    }
                    outcome = Offer::QueuedFull;
                }
            }
        }
        state.queue.push_back(queued);
        if let Some(attachment) = &state.attachment {
            attachment.wake.notify_one();
        }
        outcome
    }

    /// Completes once the session has room for more messages (see
    /// [`SessionState::has_room`]): what a publisher's acknowledgement waits
    /// for under backpressure.
    pub async fn room(self: Arc<Self>, max_queued: usize) {
        loop {
            let room = {
                let mut state = self.lock();
                if state.has_room(max_queued) {
                    return;
                }
                state.room.get_or_insert_with(Default::default).clone()
            };
            let notified = room.notified();
            tokio::pin!(notified);
            // Registered before the second look, so a release in between is not missed.
            notified.as_mut().enable();
            if self.lock().has_room(max_queued) {
                return;
            }
            notified.await;
        }
    }
}

/// What [`Registry::attach`] did.
pub(crate) enum Attached {
    /// The connection now owns `session`; `present` tells whether it resumed one.
    Ok {
        session: Arc<Session>,
        present: bool,
        /// A session thrown away by a clean start, whose subscriptions the
        /// caller must remove from the router.
        discarded: Option<Arc<Session>>,
        /// Generation of the connection this one took over, if any.
        replaced: Option<u64>,
    },
    /// A newer connection for this client id got there first.
    Superseded,
}

/// All sessions, by client id.
pub(crate) struct Registry {
    sessions: DashMap<Arc<str>, Arc<Session>>,
    generations: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        // Generations follow the wall clock in microseconds, so they keep
        // increasing across restarts and order connections across nodes,
        // which lets presence consumers tell a stale event from a newer one.
        Self {
            sessions: DashMap::new(),
            generations: AtomicU64::new(unix_micros()),
        }
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Registry {
    /// Generation number for a CONNECT just read: a hybrid logical clock,
    /// the wall clock in microseconds unless that is not past the last one.
    /// Across nodes (clocks kept in sync by NTP) a connection made later has
    /// the higher generation, which decides a takeover between nodes.
    pub fn next_generation(&self) -> u64 {
        let now = unix_micros();
        let previous = self
            .generations
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        now.max(previous + 1)
    }

    /// Ends the session of `client_id` if its newest connection is older
    /// than `generation`, a connection accepted by another node: the device
    /// is there now, so its attached connection here closes (taken over)
    /// and what was queued is let go of. Returns the ended session.
    pub fn evict_older(&self, client_id: &str, generation: u64) -> Option<Arc<Session>> {
        self.sessions
            .remove_if(client_id, |_, session| {
                let mut state = session.lock();
                if state.last_generation >= generation {
                    return false;
                }
                state.discarded = true;
                state.release_waiters(usize::MAX);
                if let Some(old) = state.attachment.take() {
                    old.wake.notify_one();
                }
                true
            })
            .map(|(_, session)| session)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions
            .get(client_id)
            .map(|entry| entry.value().clone())
    }

    /// Attaches connection `generation` to the session of `client_id`,
    /// taking it over from an older connection if there is one.
    pub fn attach(
        &self,
        client_id: &str,
        generation: u64,
        clean_start: bool,
        expiry: Duration,
        wake: Arc<Notify>,
    ) -> Attached {
        let fresh = |id: Arc<str>| {
            let session = Arc::new(Session::new(id));
            {
                let mut state = session.lock();
                state.attachment = Some(Attachment {
                    generation,
                    wake: wake.clone(),
                });
                state.last_generation = generation;
                state.expiry = expiry;
            }
            session
        };
        match self.sessions.entry(Arc::from(client_id)) {
            Entry::Vacant(entry) => {
                let session = fresh(entry.key().clone());
                entry.insert(session.clone());
                Attached::Ok {
                    session,
                    present: false,
                    discarded: None,
                    replaced: None,
                }
            }
            Entry::Occupied(mut entry) => {
                let existing = entry.get().clone();
                let mut state = existing.lock();
                if state.last_generation > generation {
                    return Attached::Superseded;
                }
                // Offline past its expiry but not swept yet: it no longer
                // exists, so the client starts afresh [MQTT-3.1.2-23].
                let expired = state.attachment.is_none()
                    && state
                        .offline_since
                        .is_some_and(|since| since.elapsed() >= state.expiry);
                let replaced = state.attachment.take().map(|old| {
                    old.wake.notify_one();
                    old.generation
                });
                if clean_start || expired {
                    state.discarded = true;
                    state.release_waiters(usize::MAX);
                    drop(state);
                    let session = fresh(entry.key().clone());
                    entry.insert(session.clone());
                    return Attached::Ok {
                        session,
                        present: false,
                        discarded: Some(existing),
                        replaced,
                    };
                }
                state.attachment = Some(Attachment { generation, wake });
                state.last_generation = generation;
                state.expiry = expiry;
                state.offline_since = None;
                drop(state);
                Attached::Ok {
                    session: existing,
                    present: true,
                    discarded: None,
                    replaced,
                }
            }
        }
    }

    /// Detaches connection `generation`. Returns the session if it ended
    /// (expiry 0) and was removed, so the caller can unsubscribe it.
    pub fn detach(&self, session: &Arc<Session>, generation: u64) -> Option<Arc<Session>> {
        {
            let mut state = session.lock();
            match &state.attachment {
                Some(a) if a.generation == generation => {}
                _ => return None, // taken over or discarded: not ours to touch
            }
            state.attachment = None;
            state.offline_since = Some(Instant::now());
            state.release_waiters(usize::MAX);
            if !state.expiry.is_zero() {
                return None;
            }
        }
        self.remove_if_offline(session, |_| true)
    }

    fn remove_if_offline(
        &self,
        session: &Arc<Session>,
        expired: impl Fn(&SessionState) -> bool,
    ) -> Option<Arc<Session>> {
        self.sessions
            .remove_if(&session.client_id, |_, current| {
                if !Arc::ptr_eq(current, session) {
                    return false;
                }
                let state = current.lock();
                state.attachment.is_none() && expired(&state)
            })
            .map(|(_, s)| s)
    }

    /// Removes offline sessions whose expiry has passed.
    pub fn sweep_expired(&self, now: Instant) -> Vec<Arc<Session>> {
        let is_expired = |state: &SessionState| {
            state
                .offline_since
                .is_some_and(|since| now.saturating_duration_since(since) >= state.expiry)
        };
        let candidates: Vec<Arc<Session>> = self
            .sessions
            .iter()
            .filter(|entry| {
                let state = entry.value().lock();
                state.attachment.is_none() && is_expired(&state)
            })
            .map(|entry| entry.value().clone())
            .collect();
        candidates
            .iter()
            .filter_map(|session| self.remove_if_offline(session, is_expired))
            .collect()
    }

    /// Visits every attached connection (revocation wakes the revoked ones).
    pub fn for_each_attached(&self, mut f: impl FnMut(&Arc<Session>, &Attachment)) {
        for entry in self.sessions.iter() {
            let state = entry.value().lock();
            if let Some(attachment) = &state.attachment {
                f(entry.value(), attachment);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(reg: &Registry, id: &str, generation: u64, clean: bool) -> Attached {
        reg.attach(
            id,
            generation,
            clean,
            Duration::from_secs(60),
            Arc::new(Notify::new()),
        )
    }

    #[test]
    fn newest_generation_wins_even_when_it_attaches_first() {
        let reg = Registry::default();
        assert!(matches!(
            attach(&reg, "d", 5, false),
            Attached::Ok { present: false, .. }
        ));
        // A CONNECT read earlier (generation 3) that finishes late must lose.
        assert!(matches!(attach(&reg, "d", 3, false), Attached::Superseded));
        let Attached::Ok {
            session, present, ..
        } = attach(&reg, "d", 7, false)
        else {
            panic!()
        };
        assert!(present);
        assert_eq!(
            session.lock().attachment.as_ref().map(|a| a.generation),
            Some(7)
        );
        // The replaced connection's detach must not touch the session.
        assert!(reg.detach(&session, 5).is_none());
        assert!(session.lock().attachment.is_some());
    }

    #[test]
    fn generations_increase_and_follow_the_clock() {
        let reg = Registry::default();
        let first = reg.next_generation();
        let second = reg.next_generation();
        assert!(second > first);
        assert!(
            first >= unix_micros() - 60_000_000,
            "{first} is wall-clock micros"
        );
    }

    #[test]
    fn a_newer_connection_elsewhere_evicts_an_older_session_only() {
        let reg = Registry::default();
        let Attached::Ok { session, .. } = attach(&reg, "d", 10, false) else {
            panic!()
        };
        assert!(reg.evict_older("d", 9).is_none(), "ours is newer");
        assert!(reg.evict_older("d", 10).is_none(), "the same connection");
        let evicted = reg.evict_older("d", 11).expect("older: evicted");
        assert!(Arc::ptr_eq(&evicted, &session));
        let state = session.lock();
        assert!(state.attachment.is_none() && state.discarded);
        assert!(reg.session("d").is_none());
        assert!(reg.evict_older("unknown", 1).is_none());
    }

    #[test]
    fn clean_start_discards_and_expiry_zero_removes() {
        let reg = Registry::default();
        let Attached::Ok { session: first, .. } = attach(&reg, "d", 1, false) else {
            panic!()
        };
        let Attached::Ok {
            session: second,
            discarded,
            present,
            replaced,
        } = attach(&reg, "d", 2, true)
        else {
            panic!()
        };
        assert!(!present);
        assert_eq!(replaced, Some(1));
        assert!(Arc::ptr_eq(&discarded.unwrap(), &first));
        assert!(first.lock().discarded);
        second.lock().expiry = Duration::ZERO;
        assert!(reg.detach(&second, 2).is_some());
        assert_eq!(reg.len(), 0);
    }

    #[test]
    fn offline_sessions_expire() {
        let reg = Registry::default();
        let Attached::Ok { session, .. } = attach(&reg, "d", 1, false) else {
            panic!()
        };
        assert!(reg.detach(&session, 1).is_none());
        assert!(reg.sweep_expired(Instant::now()).is_empty());
        assert_eq!(
            reg.sweep_expired(Instant::now() + Duration::from_secs(61))
                .len(),
            1
        );
        assert_eq!(reg.len(), 0);
    }

    #[test]
    fn a_session_past_its_expiry_is_not_resumed_even_before_the_sweep() {
        // MQTT 5 [MQTT-3.1.2-23]: the session is gone once its expiry has
        // passed, so the CONNACK says Session Present 0.
        let reg = Registry::default();
        let short = |generation| {
            reg.attach(
                "d",
                generation,
                false,
                Duration::from_millis(1),
                Arc::new(Notify::new()),
            )
        };
        let Attached::Ok { session, .. } = short(1) else {
            panic!()
        };
        assert!(reg.detach(&session, 1).is_none());
        std::thread::sleep(Duration::from_millis(5));
        let Attached::Ok {
            present, discarded, ..
        } = short(2)
        else {
            panic!()
        };
        assert!(!present);
        assert!(discarded.is_some_and(|old| Arc::ptr_eq(&old, &session)));
    }

    #[test]
    fn offline_sessions_keep_qos1_but_not_qos0() {
        let session = Session::new("d".into());
        let msg = |qos| {
            Queued::plain(
                Message::new(Bytes::from_static(b"t"), Bytes::new(), false, qos, None),
                qos,
                false,
            )
        };
        assert!(matches!(
            session.offer(msg(QoS::AtMostOnce), 2, QueueFullPolicy::DropOldest),
            Offer::DroppedOffline
        ));
        assert!(matches!(
            session.offer(msg(QoS::AtLeastOnce), 2, QueueFullPolicy::DropOldest),
            Offer::Queued
        ));
        assert!(matches!(
            session.offer(msg(QoS::AtLeastOnce), 2, QueueFullPolicy::DropOldest),
            Offer::Queued
        ));
        assert!(matches!(
            session.offer(msg(QoS::AtLeastOnce), 2, QueueFullPolicy::DropOldest),
            Offer::DroppedOldest
        ));
        assert_eq!(session.lock().queue.len(), 2);
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    pub(crate) fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into()))
    }
}
