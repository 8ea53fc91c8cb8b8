//! A client connection's receive and send paths: multishot receive with pause/resume for back-pressure, the handshake answer, session bytes from the replay window.

use super::*;

impl Shard {
    pub(super) fn arm_recv(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.recv_armed || c.closing {
            return;
        }
        c.recv_armed = true;
        c.ops += 1;
        let (slot, ud) = (c.slot, token::encode(Op::Recv, ci, c.epoch));
        self.recv_multi(slot, ud);
    }

    pub(super) fn pause_recv(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.paused || c.closing {
            return;
        }
        c.paused = true;
        self.shared.shards[self.index]
            .stats
            .paused
            .fetch_add(1, Ordering::Relaxed);
        if c.recv_armed {
            let ud = token::encode(Op::Recv, ci, c.epoch);
            self.cancel(ud);
        }
    }

    pub(super) fn resume_recv(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if !c.paused || c.closing {
            return;
        }
        c.paused = false;
        // Idle time counts from here: while paused, silence was ours.
        c.last_rx = Instant::now();
        if !c.recv_armed {
            self.arm_recv(ci);
        }
    }

    pub(super) fn on_recv(&mut self, ci: usize, epoch: u32, res: i32, flags: u32) {
        let buf = if res > 0 {
            self.bufs.take(flags, res as usize)
        } else {
            None
        };
        let valid = self.conns.get(ci).is_some_and(|c| c.epoch == epoch);
        if !valid {
            if let Some((bid, _, _)) = buf {
                self.bufs.push(bid);
            }
            return;
        }
        if !is_more(flags) {
            let c = &mut self.conns[ci];
            c.recv_armed = false;
            c.ops -= 1;
        }
        match buf {
            Some((bid, ptr, len)) => {
                // SAFETY: the kernel filled this buffer and does not touch it
                // again until it is pushed back below.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                self.conns[ci].last_rx = Instant::now();
                self.on_client_data(ci, data);
                self.bufs.push(bid);
            }
            None if res == 0 => self.client_gone(ci, "client closed the connection"),
            None if res == -libc::ENOBUFS => self.rearm_conns.push((ci, epoch)),
            None if res == -libc::ECANCELED => {}
            None if res < 0 => {
                let e = std::io::Error::from_raw_os_error(-res);
                self.client_gone(ci, &format!("receive failed: {e}"));
            }
            None => {}
        }
        if let Some(c) = self.conns.get(ci) {
            let reading = matches!(c.state, ConnState::Handshake(_) | ConnState::Attached(..));
            if c.epoch == epoch && reading && !c.recv_armed && !c.paused && !c.closing && res != 0 {
                self.rearm_conns.push((ci, epoch));
            }
        }
        self.on_handoff_recv_end(ci, epoch);
        self.maybe_free_conn(ci);
    }

    pub(super) fn on_client_data(&mut self, ci: usize, data: &mut [u8]) {
        let c = &mut self.conns[ci];
        if c.closing {
            return;
        }
        match c.state {
            ConnState::Attached(si, sg) => self.client_bytes(si, sg, data),
            ConnState::Handshake(_) => self.handshake_bytes(ci, data),
            // Read after the resume record but before the hand-over: travels
            // along, bounded like a handshake (a client has no reason to send
            // much before it sees the answer).
            ConnState::HandingOff { .. }
                if c.raw_in.len() + data.len() <= 2 * MAX_HANDSHAKE_BYTES =>
            {
                c.raw_in.extend_from_slice(data)
            }
            ConnState::HandingOff { .. } => {
                debug!(shard = self.index, peer = %Addr(c.peer), "flood during a resume hand-over: closing");
                c.state = ConnState::Dead;
                self.close_conn(ci);
            }
            ConnState::Finishing | ConnState::Dead => {}
        }
    }

    /// Starts the next send on a client connection: first any handshake
    /// answer, then the session's unsent bytes.
    pub(super) fn flush_conn(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if c.closing || c.hs_sending || c.send_len > 0 {
            return;
        }
        if c.hs_sent < c.hs_out.len() {
            let rest = &c.hs_out[c.hs_sent..];
            c.hs_sending = true;
            c.ops += 1;
            let e = opcode::Send::new(types::Fixed(c.slot), rest.as_ptr(), rest.len() as u32)
                .build()
                .user_data(token::encode(Op::HsSend, ci, c.epoch));
            self.push(e);
            return;
        }
        let ConnState::Attached(si, sg) = c.state else {
            return;
        };
        let (slot, cgen) = (c.slot, c.epoch);
        let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) else {
            return;
        };
        let Some(op) = s
            .client
            .next_send(types::Fixed(slot), 0, &mut self.meta_pool)
        else {
            return;
        };
        s.io_refs += 1;
        let c = &mut self.conns[ci];
        c.send_len = op.len;
        c.send_sess = Some((si, sg));
        c.send_meta = op.meta;
        c.ops += 1;
        self.push(op.entry.user_data(token::encode(Op::Send, ci, cgen)));
    }

    pub(super) fn on_hs_send(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        c.hs_sending = false;
        if res <= 0 {
            if !c.closing {
                self.client_gone(ci, "handshake answer could not be sent");
            }
            self.maybe_free_conn(ci);
            return;
        }
        c.hs_sent += res as usize;
        if c.hs_sent >= c.hs_out.len() {
            c.hs_out = Vec::new();
            c.hs_sent = 0;
            if matches!(c.state, ConnState::Finishing) {
                c.state = ConnState::Dead;
                self.close_conn(ci);
                self.maybe_free_conn(ci);
                return;
            }
        }
        self.flush_conn(ci);
        self.maybe_free_conn(ci);
    }

    pub(super) fn on_send(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        let len = std::mem::take(&mut c.send_len);
        if let Some(meta) = c.send_meta.take() {
            self.meta_pool.push(meta);
        }
        let sess = c.send_sess.take();
        let attached = matches!(c.state, ConnState::Attached(si, sg) if Some((si, sg)) == sess);
        let closing = c.closing;
        if let Some((si, sg)) = sess {
            if let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) {
                s.io_refs -= 1;
                if attached && !closing && res > 0 && s.conn == Some(ci) {
                    s.client.sent((res as usize).min(len));
                }
            }
        }
        if res < 0 && !closing {
            let e = std::io::Error::from_raw_os_error(-res);
            self.client_gone(ci, &format!("send failed: {e}"));
        } else if attached && !closing {
            if let Some((si, _)) = sess {
                self.after_client_progress(si);
            }
        }
        if let Some((si, _)) = sess {
            self.maybe_free_session(si);
        }
        self.maybe_free_conn(ci);
    }

    /// The client side made room: move stashed bytes along and restart
    /// whatever was paused for lack of room.
    pub(super) fn after_client_progress(&mut self, si: usize) {
        self.drain_from_peer(si);
        if matches!(self.sessions[si].peer, Peer::Echo) {
            self.drain_from_client(si);
        }
        if let Some(ci) = self.sessions[si].conn {
            self.flush_conn(ci);
        }
        self.check_finished(si);
    }
}
