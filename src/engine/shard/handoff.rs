//! Handing a resume to the shard that owns its session: the connection's
//! direct descriptor travels with `IORING_OP_MSG_RING`, the bytes already
//! read through the target's inbox.

use super::*;
use io_uring::opcode;

impl Shard {
    /// The resume in connection `ci` belongs to shard `target`: stop
    /// reading (so no byte is read here after the copy that travels), then
    /// send it over.
    /// `hops`: shards that looked for it before the target.
    pub(super) fn hand_off(&mut self, ci: usize, target: usize, hops: u16) {
        let raw = self
            .end_greeting(ci)
            .map(|mut g| g.take_raw())
            .unwrap_or_default();
        self.conns[ci].state = ConnState::HandingOff {
            target,
            raw,
            sent: false,
            hops,
        };
    }

    pub(super) fn send_handoff(&mut self, ci: usize) {
        let conn = &mut self.conns[ci];
        let ConnState::HandingOff {
            target,
            raw,
            sent,
            hops,
        } = &mut conn.state
        else {
            return;
        };
        if *sent {
            return;
        }
        *sent = true;
        let (target, hops) = (*target, *hops);
        let link = &self.shared.shards[target];
        let ring_fd = link.ring_fd.load(Ordering::Acquire);
        if ring_fd < 0 {
            // The owner has stopped.
            self.refuse_handoff(ci);
            return;
        }
        self.handoff_seq = self.handoff_seq.wrapping_add(1);
        let seq = self.handoff_seq;
        link.inbox.push(Handoff {
            from: self.index,
            seq,
            peer: conn.peer,
            door: conn.door,
            hops,
            bytes: std::mem::take(raw),
            ws: conn.ws.take(),
            tls: conn.tls.take(),
        });
        let e = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(conn.ep.slot()),
            types::DestinationSlot::auto_target(),
            handoff_user_data(self.index, seq),
        )
        .build();
        let tag = Tag::new(Op::HandoffOut, ci, conn.epoch);
        self.d.push(e, Some(tag), crate::engine::ring::Owned::None);
        self.handoff_pending.push((ci, conn.epoch, target, seq, 0));
    }

    /// Sends again the descriptors of hand-overs that found the owner's
    /// table full (in a reconnect storm, new connections can arrive before
    /// the owner has closed the old ones); their bytes wait in its inbox.
    pub(super) fn retry_handoffs(&mut self) {
        for k in 0..self.handoff_retry.len() {
            let (ci, epoch, target, seq, tries) = self.handoff_retry[k];
            let ring_fd = self.shared.shards[target].ring_fd.load(Ordering::Acquire);
            let Some(conn) = self.conn_mut(ci, epoch) else {
                continue;
            };
            if ring_fd < 0 {
                self.refuse_handoff(ci);
                self.sync_conn(ci);
                continue;
            }
            let e = opcode::MsgRingSendFd::new(
                types::Fd(ring_fd),
                types::Fixed(conn.ep.slot()),
                types::DestinationSlot::auto_target(),
                handoff_user_data(self.index, seq),
            )
            .build();
            self.d.push(
                e,
                Some(Tag::new(Op::HandoffOut, ci, epoch)),
                crate::engine::ring::Owned::None,
            );
            self.handoff_pending
                .push((ci, epoch, target, seq, tries + 1));
        }
        self.handoff_retry.clear();
    }

    pub(super) fn on_handoff_out(&mut self, ci: usize, epoch: u32, res: i32) {
        let sent = self
            .handoff_pending
            .iter()
            .position(|h| h.0 == ci && h.1 == epoch)
            .map(|k| self.handoff_pending.swap_remove(k));
        if self.conn_mut(ci, epoch).is_none() {
            return;
        }
        if res == -libc::ENFILE {
            // Until half the handshake timeout: the owner drops the
            // hand-over's bytes once the full timeout has passed.
            let limit =
                (self.hs_timers.duration().as_millis() / 2 / TICK.as_millis().max(1)) as u32;
            if let Some(h) = sent.filter(|h| h.4 < limit) {
                // The owner's table is full for now: try again next tick.
                self.handoff_retry.push(h);
                return;
            }
        }
        if res < 0 {
            // The owner's table is full (or it is gone). Its inbox entry is
            // swept there once stale.
            self.warn_limit(&format!(
                "handing a resume to its shard failed ({}): refused",
                std::io::Error::from_raw_os_error(-res)
            ));
            self.refuse_handoff(ci);
            self.sync_conn(ci);
        } else {
            self.count(|s| &s.handoffs_out);
            self.close_conn(ci);
        }
    }

    /// A resume that could not be handed over: SCP answers 501; the
    /// stable-connection dialect has no codes, so it is just closed.
    fn refuse_handoff(&mut self, ci: usize) {
        let conn = &self.conns[ci];
        let scp = conn.door == Door::Scp
            || conn.door.ws_mode() == Some(crate::engine::ws::WsMode::Scp) && conn.ws.is_some();
        if scp {
            self.finish_with(ci, b"0\n501");
        } else {
            self.count(|s| &s.resumes_failed);
            self.conns[ci].state = ConnState::Finishing;
        }
    }

    /// Moves hand-over messages from the inbox to the table they are looked
    /// up in, and drops those whose connection never came.
    pub(super) fn sweep_inbox(&mut self) {
        let now = Instant::now();
        while let Some(h) = self.shared.shards[self.index].inbox.pop() {
            self.handoffs.insert((h.from, h.seq), (now, h));
        }
        if !self.handoffs.is_empty() {
            // A connection that has not come by the handshake timeout never
            // will (its hand-over failed): the client was answered 501.
            let stale = self.hs_timers.duration().max(HANDOFF_STALE_MIN);
            self.handoffs
                .retain(|_, (at, _)| now.duration_since(*at) < stale);
        }
        self.stats()
            .handoffs_parked
            .store(self.handoffs.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn on_handoff_in(&mut self, from: usize, seq: u32, res: i32) {
        self.sweep_inbox();
        let entry = self.handoffs.remove(&(from, seq));
        if res < 0 {
            warn!(
                shard = self.index,
                "a resumed connection could not be received: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            return;
        }
        let Some((_, h)) = entry else {
            self.close_slot(res as u32);
            return;
        };
        if self.stopping.is_some() {
            self.close_slot(res as u32);
            return;
        }
        self.count(|s| &s.handoffs_in);
        let greeting = DoorGreeting::new(h.door, h.hops);
        let ci = self.new_conn(
            res as u32,
            h.peer,
            h.door,
            ConnState::Greeting(Box::new(greeting)),
        );
        self.conns[ci].ws = h.ws;
        self.conns[ci].tls = h.tls;
        let mut bytes = h.bytes;
        self.greet(ci, &mut bytes);
        match self.attached(ci) {
            Some(si) => self.sync(si),
            None => self.sync_conn(ci),
        }
    }
}
