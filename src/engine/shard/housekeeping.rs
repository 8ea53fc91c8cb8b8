//! The periodic tick (timers, stale hand-overs), wake-ups from other
//! threads, and shutdown. The tick and the wake-up read stay armed until
//! the shard exits: a shard that is stopping still needs something to wake
//! it while its last operations drain.

use super::*;
use crate::engine::ring::Owned;
use io_uring::opcode;
use tracing::info;

impl Shard {
    /// The housekeeping tick: one multishot timeout, re-armed if it ends.
    pub(super) fn arm_tick(&mut self) {
        let ts = Box::new(types::Timespec::from(TICK));
        let tick = opcode::Timeout::new(&*ts)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build();
        self.d
            .push(tick, Some(Tag::shard(Op::Tick)), Owned::Time(ts));
    }

    pub(super) fn on_tick(&mut self, c: &Completion<Tag>) {
        if !c.more() {
            self.arm_tick();
        }
        self.apply_limits();
        self.retry_handoffs();
        let now = Instant::now();
        while let Some(e) = self.hs_timers.pop_expired(now) {
            // A greeting that did not finish in time, or a WebSocket whose
            // close frame could not be sent in as long.
            let stalled = match self.conns.get(e.index).filter(|c| c.epoch == e.epoch) {
                Some(c) if matches!(c.state, ConnState::Greeting(_)) => Some("handshake timeout"),
                Some(c) if matches!(c.state, ConnState::Finishing) => {
                    Some("closing took longer than the handshake timeout")
                }
                _ => None,
            };
            if let Some(why) = stalled {
                self.client_gone(e.index, why);
            }
        }
        while let Some(e) = self.reuse_timers.pop_expired(now) {
            let expired = self
                .sessions
                .get(e.index)
                .is_some_and(|s| s.detach_token == e.epoch && s.conn.is_none() && !s.ended);
            if expired {
                self.close_session(e.index, CloseReason::ReuseTimeout);
                self.sync(e.index);
            }
        }
        if let Some(mut idle) = self.idle_timers.take() {
            while let Some(e) = idle.pop_expired(now) {
                let Some(c) = self.conns.get(e.index).filter(|c| c.epoch == e.epoch) else {
                    continue;
                };
                // A connection the gate stopped reading is not idle.
                let held = match c.state {
                    ConnState::Attached(si, _) => self
                        .sessions
                        .get(si)
                        .is_some_and(|s| s.relay.client_room() == 0),
                    _ => false,
                };
                if now.duration_since(c.last_rx) >= idle.duration() && !held {
                    let si = self.attached(e.index);
                    self.dismiss_conn(e.index, crate::proto::ws::code::GOING_AWAY, "idle timeout");
                    if let Some(si) = si {
                        self.sync(si);
                    }
                } else {
                    idle.push(now, e);
                }
            }
            self.idle_timers = Some(idle);
        }
        self.sweep_inbox();
        self.kcp_expire();
        if self.log_skipped > 0 && self.log_lines < SESSION_LINES {
            info!(
                shard = self.index,
                "{} session lines not logged (more than {SESSION_LINES} a second); the counters have them all",
                self.log_skipped
            );
            self.log_skipped = 0;
        }
        self.check_stop();
    }

    pub(super) fn arm_wake(&mut self) {
        let fd = self.shared.shards[self.index].eventfd;
        let mut word = Box::new(0u64);
        let e = opcode::Read::new(types::Fd(fd), &mut *word as *mut u64 as *mut u8, 8).build();
        self.d
            .push(e, Some(Tag::shard(Op::Wake)), Owned::Word(word));
    }

    pub(super) fn on_wake(&mut self) {
        self.arm_wake();
        self.check_stop();
    }

    pub(super) fn check_stop(&mut self) {
        if self.stopping.is_some() || !self.shared.stop.load(Ordering::Acquire) {
            return;
        }
        self.stopping = Some(Instant::now());
        info!(
            shard = self.index,
            sessions = self.by_id.len(),
            "shutting down"
        );
        self.kcp_stop();
        for li in 0..self.listeners.len() {
            for op in std::mem::take(&mut self.listeners[li].accepts) {
                self.d.cancel(op);
            }
            self.listeners[li].multishot = false;
        }
        let sessions: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for si in sessions {
            self.close_session(si, CloseReason::Shutdown);
            self.sync(si);
        }
        // WebSockets sending their close frame finish by themselves (the
        // grace period bounds them).
        let conns: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !(matches!(c.state, ConnState::Finishing) && c.ws.is_some()))
            .map(|(i, _)| i)
            .collect();
        for ci in conns {
            self.client_gone(ci, "shutdown");
        }
    }
}
