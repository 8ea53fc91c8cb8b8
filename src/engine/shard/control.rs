//! Operator requests answered on the shard's thread (kicking a session,
//! listing sessions), and limits changed while the gate runs.

use super::*;
use crate::engine::control::{Request, SessionInfo, SessionState};

impl Shard {
    /// Once per loop, before waiting: the operator's requests.
    pub(super) fn control_round(&mut self) {
        while let Some(req) = self.shared.shards[self.index].control.pop() {
            match req {
                Request::Kick { id, reply } => {
                    let found = match self.by_id.get(&id) {
                        Some(&si) => {
                            self.close_session(si, CloseReason::Kicked);
                            self.sync(si);
                            true
                        }
                        None => false,
                    };
                    let _ = reply.send(found);
                }
                Request::Sessions { limit, reply } => {
                    let _ = reply.send(self.session_list(limit));
                }
            }
        }
    }

    fn session_list(&self, limit: usize) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .take(limit)
            .map(|(_, s)| {
                let state = if s.ended {
                    SessionState::Closing
                } else if s.conn.is_none() {
                    SessionState::Detached
                } else {
                    SessionState::Connected
                };
                let (bytes_in, bytes_out) =
                    s.relay.scp().map_or((0, 0), |x| (x.received(), x.sent()));
                SessionInfo {
                    id: s.id,
                    shard: self.index,
                    peer: s.client_addr,
                    state,
                    upstream: s.up.as_ref().and_then(|u| u.addr),
                    target: s.target.as_deref().map(str::to_owned),
                    age: s.opened.elapsed(),
                    bytes_in,
                    bytes_out,
                }
            })
            .collect()
    }

    /// Brings the shard's timers in line with the limits in force (each
    /// tick: a few relaxed loads), and publishes its descriptor-table use.
    pub(super) fn apply_limits(&mut self) {
        let l = self.shared.tunables.get();
        self.hs_timers.set_duration(l.handshake_timeout);
        self.reuse_timers.set_duration(l.reuse_time);
        match (&mut self.idle_timers, l.idle_timeout) {
            (Some(q), Some(d)) => q.set_duration(d),
            (Some(_), None) => self.idle_timers = None,
            // Connections accepted from now on are watched.
            (None, Some(d)) => self.idle_timers = Some(DeadlineQueue::new(d)),
            (None, None) => {}
        }
        let st = self.stats();
        st.table_used.store(self.slots as u64, Ordering::Relaxed);
        st.table_size.store(self.table as u64, Ordering::Relaxed);
    }

    /// Whether new sessions are refused now (draining).
    pub(super) fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Adds `n` to a counter of this shard.
    pub(super) fn count_n(
        &self,
        counter: impl Fn(&crate::engine::ShardStats) -> &std::sync::atomic::AtomicU64,
        n: u64,
    ) {
        counter(self.stats()).fetch_add(n, Ordering::Relaxed);
    }

    /// Lowers a gauge of this shard (only this shard writes it).
    pub(super) fn uncount(
        &self,
        gauge: impl Fn(&crate::engine::ShardStats) -> &std::sync::atomic::AtomicU64,
    ) {
        let g = gauge(self.stats());
        g.store(
            g.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }
}
