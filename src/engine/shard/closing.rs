//! How connections and sessions end: detaching, finishing, closing, and freeing entries once no operation refers to them.

use super::*;

impl Shard {
    /// The client's connection ended (or must end).
    pub(super) fn client_gone(&mut self, ci: usize, why: &str) {
        let c = &mut self.conns[ci];
        let state = std::mem::replace(&mut c.state, ConnState::Dead);
        let peer = c.peer;
        match state {
            ConnState::Handshake(_) => {
                self.handshaking -= 1;
                self.shared.shards[self.index]
                    .stats
                    .handshake_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(shard = self.index, peer = %Addr(peer), "connection closed during handshake: {why}");
            }
            ConnState::Attached(si, sg) => {
                if let Some(s) = self
                    .sessions
                    .get_mut(si)
                    .filter(|s| s.epoch == sg && s.conn == Some(ci))
                {
                    s.conn = None;
                    if s.client.session().is_some() && s.closing.is_none() {
                        let token = self.next_epoch.wrapping_add(1).max(1);
                        self.next_epoch = token;
                        let s = &mut self.sessions[si];
                        s.detach_token = token;
                        debug!(
                            shard = self.index,
                            session = s.id,
                            "session detached: {why}"
                        );
                        self.reuse_timers.push(
                            Instant::now(),
                            TimerEntry {
                                index: si,
                                epoch: token,
                            },
                        );
                        let id = s.id;
                        self.worker_emit(si, Event::Detached { session: id });
                        self.check_finished(si);
                    } else {
                        s.client_eof = true;
                        self.check_finished(si);
                    }
                }
            }
            _ => {}
        }
        self.close_conn(ci);
    }

    /// Ends a session whose work is done: the upstream finished and the
    /// client has everything, or (plain mode) the client left and the
    /// upstream has everything.
    pub(super) fn check_finished(&mut self, si: usize) {
        let Some(s) = self.sessions.get(si) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        let peer_done = match &s.peer {
            Peer::Up(up) => up.eof,
            Peer::Echo | Peer::Worker(_) => false,
        };
        if peer_done && s.from_peer.is_empty() && s.client.unsent() == 0 {
            self.close_session(si, CloseReason::UpstreamClosed);
            return;
        }
        if s.client_eof {
            let up_drained = match &s.peer {
                Peer::Up(up) => up.out.as_ref().is_none_or(|o| o.unsent() == 0) || up.eof,
                Peer::Echo | Peer::Worker(_) => true,
            };
            if up_drained && s.from_client.is_empty() {
                self.close_session(si, CloseReason::ClientClosed);
            }
        }
    }

    pub(super) fn close_session(&mut self, si: usize, reason: CloseReason) {
        let s = &mut self.sessions[si];
        if s.closing.is_some() {
            return;
        }
        s.closing = Some(reason);
        self.shared.shards[self.index]
            .stats
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        let s = &self.sessions[si];
        if s.id != 0 {
            self.by_id.remove(&s.id);
            info!(
                shard = self.index,
                session = s.id,
                peer = %Addr(s.client_addr),
                lived_ms = s.opened.elapsed().as_millis() as u64,
                "session closed: {reason}"
            );
        } else {
            debug!(shard = self.index, peer = %Addr(s.client_addr), "plain connection closed: {reason}");
        }
        self.worker_closed(si, reason);
        let s = &mut self.sessions[si];
        s.from_client = Vec::new();
        s.from_peer = Vec::new();
        if let Some(ci) = s.conn.take() {
            self.conns[ci].state = ConnState::Dead;
            self.close_conn(ci);
        }
        self.close_up(si);
        self.maybe_free_session(si);
    }

    pub(super) fn maybe_free_session(&mut self, si: usize) {
        let Some(s) = self.sessions.get(si) else {
            return;
        };
        if s.closing.is_none() || s.io_refs > 0 || s.conn.is_some() {
            return;
        }
        match &s.peer {
            Peer::Up(up) if up.ops > 0 || up.slot.is_some() => return,
            // The worker must still get this session's last events (its
            // slot counts against max_sessions until then).
            Peer::Worker(w) if !w.pending.is_empty() => return,
            _ => {}
        }
        self.sessions.remove(si);
    }

    pub(super) fn close_conn(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.closing {
            return;
        }
        c.closing = true;
        c.ops += 1;
        let (slot, ud) = (c.slot, token::encode(Op::Close, ci, c.epoch));
        self.cancel_and_close(slot, ud);
    }

    pub(super) fn close_slot(&mut self, slot: u32) {
        let close = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(token::encode(Op::SlotClosed, 0, 0));
        self.push(close);
    }

    pub(super) fn on_conn_closed(&mut self, ci: usize, epoch: u32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        self.maybe_free_conn(ci);
    }

    pub(super) fn maybe_free_conn(&mut self, ci: usize) {
        let Some(c) = self.conns.get(ci) else { return };
        if c.closing && c.ops == 0 {
            self.conns.remove(ci);
        }
    }
}
