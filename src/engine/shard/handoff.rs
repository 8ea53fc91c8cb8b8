//! Handing a resume to the shard that owns its session: the connection's direct descriptor travels with `IORING_OP_MSG_RING`, the bytes already read through the target's inbox.

use super::*;

impl Shard {
    pub(super) fn hand_off(&mut self, ci: usize, target: usize) {
        self.end_handshake(ci);
        let c = &mut self.conns[ci];
        c.state = ConnState::HandingOff {
            target,
            recv_ended: !c.recv_armed,
            sent: false,
        };
        if c.recv_armed {
            let ud = token::encode(Op::Recv, ci, c.epoch);
            self.cancel(ud);
        } else {
            self.send_handoff(ci);
        }
    }

    pub(super) fn on_handoff_recv_end(&mut self, ci: usize, epoch: u32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        if let ConnState::HandingOff { recv_ended, .. } = &mut c.state {
            if !c.recv_armed && !*recv_ended {
                *recv_ended = true;
                self.send_handoff(ci);
            }
        }
    }

    pub(super) fn send_handoff(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        let ConnState::HandingOff { target, sent, .. } = &mut c.state else {
            return;
        };
        if *sent || c.closing {
            return;
        }
        *sent = true;
        let target = *target;
        self.handoff_seq = self.handoff_seq.wrapping_add(1);
        let seq = self.handoff_seq;
        let msg = Handoff {
            from: self.index,
            seq,
            peer: c.peer,
            bytes: std::mem::take(&mut c.raw_in),
        };
        let link = &self.shared.shards[target];
        link.inbox.push(msg);
        let ring_fd = link.ring_fd.load(Ordering::Acquire);
        c.ops += 1;
        let e = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(c.slot),
            types::DestinationSlot::auto_target(),
            token::encode(Op::HandoffIn, self.index, seq),
        )
        .build()
        .user_data(token::encode(Op::HandoffOut, ci, c.epoch));
        self.push(e);
    }

    pub(super) fn on_handoff_out(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        if res < 0 {
            warn!(
                shard = self.index,
                "handing a resume to its shard failed: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            c.state = ConnState::Finishing;
            let mut out = Vec::new();
            crate::proto::message::encode_record(b"0\n501", &mut out);
            c.hs_out = out;
            self.flush_conn(ci);
        } else {
            self.shared.shards[self.index]
                .stats
                .handoffs_out
                .fetch_add(1, Ordering::Relaxed);
            c.state = ConnState::Dead;
            self.close_conn(ci);
        }
    }

    pub(super) fn on_handoff_in(&mut self, from: usize, seq: u32, res: i32) {
        while let Some(h) = self.shared.shards[self.index].inbox.pop() {
            self.handoffs.insert((h.from, h.seq), h);
        }
        let Some(h) = self.handoffs.remove(&(from, seq)) else {
            if res >= 0 {
                self.close_slot(res as u32);
            }
            return;
        };
        if res < 0 {
            warn!(
                shard = self.index,
                "a resumed connection could not be received: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            return;
        }
        self.shared.shards[self.index]
            .stats
            .handoffs_in
            .fetch_add(1, Ordering::Relaxed);
        let ci = self.new_conn(res as u32, h.peer, ConnState::Handshake(Box::default()));
        self.handshaking += 1;
        let epoch = self.conns[ci].epoch;
        self.hs_timers
            .push(Instant::now(), TimerEntry { index: ci, epoch });
        let mut bytes = h.bytes;
        self.handshake_bytes(ci, &mut bytes);
        if self.conns.get(ci).is_some_and(|c| {
            !c.closing && matches!(c.state, ConnState::Attached(..) | ConnState::Handshake(_))
        }) {
            self.arm_recv(ci);
        }
    }
}
