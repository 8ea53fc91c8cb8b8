//! The periodic tick (timers), wake-ups from other threads, and shutdown.

use super::*;

impl Shard {
    pub(super) fn on_tick(&mut self, flags: u32) {
        if !is_more(flags) && self.stopping.is_none() {
            self.arm_tick();
        }
        let now = Instant::now();
        while let Some(e) = self.hs_timers.pop_expired(now) {
            let stalled = self.conns.get(e.index).is_some_and(|c| {
                c.epoch == e.epoch && !c.closing && matches!(c.state, ConnState::Handshake(_))
            });
            if stalled {
                self.client_gone(e.index, "handshake timeout");
            }
        }
        while let Some(e) = self.reuse_timers.pop_expired(now) {
            let expired = self.sessions.get(e.index).is_some_and(|s| {
                s.detach_token == e.epoch && s.conn.is_none() && s.closing.is_none()
            });
            if expired {
                self.close_session(e.index, CloseReason::ReuseTimeout);
            }
        }
        if let Some(mut idle) = self.idle_timers.take() {
            while let Some(e) = idle.pop_expired(now) {
                let Some(c) = self
                    .conns
                    .get(e.index)
                    .filter(|c| c.epoch == e.epoch && !c.closing)
                else {
                    continue;
                };
                // A paused connection is not idle: the gate stopped reading it.
                if now.duration_since(c.last_rx) >= idle.duration() && !c.paused {
                    self.client_gone(e.index, "idle timeout");
                } else {
                    idle.push(now, e);
                }
            }
            self.idle_timers = Some(idle);
        }
        self.check_stop();
    }

    pub(super) fn arm_wake(&mut self) {
        let fd = self.shared.shards[self.index].eventfd;
        let e = opcode::Read::new(types::Fd(fd), &mut *self.wake_buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(token::encode(Op::Wake, 0, 0));
        self.push(e);
    }

    pub(super) fn on_wake(&mut self) {
        if self.stopping.is_none() {
            self.arm_wake();
        }
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
        if self.accepts_pending > 0 {
            let every_accept =
                types::CancelBuilder::user_data(token::encode(Op::Accept, 0, 0)).all();
            self.push(
                opcode::AsyncCancel2::new(every_accept)
                    .build()
                    .user_data(token::encode(Op::Ignore, 0, 0)),
            );
        }
        let sessions: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for si in sessions {
            self.close_session(si, CloseReason::Shutdown);
        }
        let conns: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for ci in conns {
            if !self.conns[ci].closing {
                self.client_gone(ci, "shutdown");
            }
        }
    }
}
