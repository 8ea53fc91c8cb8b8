//! A client connection: its greeting (the first SCP record), the answer
//! written before any session byte, and its endpoint kept in line with
//! what its session wants.

use super::*;
use crate::engine::session::Greeted;
use crate::proto::message::{Status, encode_record};

impl Shard {
    pub(super) fn on_recv(&mut self, ci: usize, epoch: u32, c: Completion<Tag>) {
        if c.result == -libc::ENOBUFS {
            self.count(|s| &s.recv_nobufs);
        }
        let Some(conn) = self.conns.get_mut(ci).filter(|x| x.epoch == epoch) else {
            // A late receive on a closed connection: its buffer goes back.
            drop(self.bufs.take(c.result, c.flags));
            return;
        };
        match conn.ep.on_recv(&c, &self.bufs) {
            super::super::endpoint::Received::Data(mut buf) => {
                conn.last_rx = self.clock;
                self.count_n(|s| &s.client_rx_bytes, buf.len() as u64);
                self.client_data(ci, &mut buf);
            }
            super::super::endpoint::Received::Eof => {
                self.client_gone(ci, "client closed the connection")
            }
            super::super::endpoint::Received::Failed(e) => {
                let e = std::io::Error::from_raw_os_error(-e);
                self.client_gone(ci, &format!("receive failed: {e}"))
            }
            super::super::endpoint::Received::Ended => {}
        }
        if let Some(si) = self.attached(ci) {
            self.sync(si);
        } else if self.conns.contains(ci) {
            self.sync_conn(ci);
        }
    }

    /// The session `ci` carries, if any.
    pub(super) fn attached(&self, ci: usize) -> Option<usize> {
        match self.conns.get(ci)?.state {
            ConnState::Attached(si, sg) if self.sessions.get(si)?.epoch == sg => Some(si),
            _ => None,
        }
    }

    fn client_data(&mut self, ci: usize, data: &mut [u8]) {
        if self.conns[ci].tls.is_some() {
            self.tls_data(ci, data);
        } else if self.conns[ci].ws.is_some() {
            self.ws_data(ci, data);
        } else {
            self.client_stream(ci, data);
        }
    }

    /// The connection's stream (for a WebSocket, its messages' bytes).
    pub(super) fn client_stream(&mut self, ci: usize, data: &mut [u8]) {
        let conn = &mut self.conns[ci];
        match &mut conn.state {
            ConnState::Attached(si, sg) => {
                let (si, sg) = (*si, *sg);
                if let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) {
                    s.relay.handle_client_bytes(data);
                }
            }
            ConnState::Greeting(_) => self.greet(ci, data),
            // Read after the resume record but before the hand-over: travels
            // along (bounded by the greeting's receive room).
            ConnState::HandingOff { raw, .. } => raw.extend_from_slice(data),
            ConnState::Skynet => self.msgserver_data(ci, data),
            ConnState::Opening | ConnState::Finishing => {}
        }
    }

    /// Bytes of a connection's first record (and what follows it).
    pub(super) fn greet(&mut self, ci: usize, data: &mut [u8]) {
        let (ids, shards, here) = (self.ids.space(), self.cfg.shards, self.index);
        let ConnState::Greeting(g) = &mut self.conns[ci].state else {
            return;
        };
        if let DoorGreeting::Stable(_) = **g {
            self.greet_stable(ci, data);
            return;
        }
        if let DoorGreeting::SkynetLogin(_) | DoorGreeting::MsgServer(_) = **g {
            self.greet_skynet(ci, data);
            return;
        }
        match g.handle_scp(data, ids, shards, here) {
            Greeted::NeedMore => {}
            Greeted::Refused { answer, why } => self.fail_greeting(ci, &why, answer),
            Greeted::New { target, flag, rest } => self.new_session(ci, target, flag, rest),
            Greeted::HandOver { to } => self.hand_off(ci, to, 0),
            Greeted::Resume { req, rest } => self.resume(ci, req, rest),
        }
    }

    /// The greeting is over, one way or the other.
    pub(super) fn end_greeting(&mut self, ci: usize) -> Option<Box<DoorGreeting>> {
        let conn = &mut self.conns[ci];
        if !matches!(conn.state, ConnState::Greeting(_)) {
            return None;
        }
        self.greeting -= 1;
        match std::mem::replace(&mut conn.state, ConnState::Finishing) {
            ConnState::Greeting(g) => Some(g),
            _ => None,
        }
    }

    /// A greeting that failed: write `answer` (if any), then close.
    pub(super) fn fail_greeting(&mut self, ci: usize, why: &str, answer: Vec<u8>) {
        self.end_greeting(ci);
        self.count(|s| &s.handshake_failed);
        let conn = &mut self.conns[ci];
        debug!(shard = self.index, peer = %Addr(conn.peer), "handshake failed: {why}");
        conn.answer = answer;
        conn.state = ConnState::Finishing;
    }

    /// Answers a resume with an error `status`, then closes.
    pub(super) fn refuse_resume(&mut self, ci: usize, status: Status) {
        self.count(|s| &s.resumes_failed);
        self.stats().refused(status);
        let answer = match self.end_greeting(ci).map(|g| *g) {
            Some(DoorGreeting::Scp(mut g)) => g.answer_resume(0, status),
            _ => Greeting::default().answer_resume(0, status),
        };
        let conn = &mut self.conns[ci];
        conn.answer = answer;
        conn.state = ConnState::Finishing;
    }

    /// Answers with a bare status record (for a resume that could not be
    /// handed over), then closes.
    pub(super) fn finish_with(&mut self, ci: usize, status: &[u8]) {
        let conn = &mut self.conns[ci];
        let mut out = Vec::new();
        encode_record(status, &mut out);
        conn.answer = out;
        conn.state = ConnState::Finishing;
    }

    /// The client's connection ended (or must end).
    pub(super) fn client_gone(&mut self, ci: usize, why: &str) {
        let conn = &mut self.conns[ci];
        let peer = conn.peer;
        match std::mem::replace(&mut conn.state, ConnState::Finishing) {
            ConnState::Greeting(_) => {
                self.greeting -= 1;
                self.count(|s| &s.handshake_failed);
                debug!(shard = self.index, peer = %Addr(peer), "connection closed during handshake: {why}");
            }
            ConnState::Attached(si, sg) => self.detach(si, sg, ci, why),
            ConnState::Skynet => self.msgserver_gone(ci, why),
            _ => {}
        }
        self.close_conn(ci);
    }

    /// Closes the connection and forgets it: what its operations still use
    /// they own, and their late completions find no entry.
    pub(super) fn close_conn(&mut self, ci: usize) {
        let Some(mut conn) = self.conns.try_remove(ci) else {
            return;
        };
        if matches!(conn.state, ConnState::Greeting(_)) {
            self.greeting -= 1;
        }
        if let Some(k) = conn.kcp {
            self.kcp_conn_closed(k);
            return;
        }
        conn.ep
            .close(&mut self.d, Some(Tag::new(Op::Close, ci, conn.epoch)));
    }

    /// The bytes connection `ci` may receive now: its greeting's room, or
    /// its session's, or none.
    pub(super) fn conn_room(&self, ci: usize) -> usize {
        let Some(conn) = self.conns.get(ci) else {
            return 0;
        };
        match conn.state {
            ConnState::Greeting(_) => match &conn.ws {
                Some(ws) if !ws.is_open() => ws.request_room(&self.cfg.ws).max(1),
                _ => Greeting::ROOM,
            },
            ConnState::Attached(si, sg) => self
                .sessions
                .get(si)
                .filter(|s| s.epoch == sg)
                .map_or(0, |s| s.relay.client_room()),
            ConnState::Skynet => skynet::room(self.skynet.as_deref(), conn.answer.len()),
            ConnState::HandingOff { .. } | ConnState::Opening | ConnState::Finishing => 0,
        }
    }

    /// Keeps connection `ci`'s endpoint in line with its state: the room it
    /// may receive, the answer or session bytes to send, the close after a
    /// final answer, the hand-over once its receive has ended.
    pub(super) fn sync_conn(&mut self, ci: usize) {
        if self.conns.get(ci).is_some_and(|c| c.kcp.is_some()) {
            self.kcp_sync_conn(ci);
            return;
        }
        let room = self.conn_room(ci);
        let Some(conn) = self.conns.get_mut(ci) else {
            return;
        };
        let epoch = conn.epoch;
        if let ConnState::HandingOff { .. } = conn.state {
            // What is in flight ends here first: nothing may be written
            // on the connection by two shards at once.
            if !conn.ep.stop_recv(&mut self.d) && !conn.ep.sending() {
                self.send_handoff(ci);
            }
            return;
        }
        let paused = conn.ep.sync_recv(
            &mut self.d,
            &self.bufs,
            &self.recv_policy,
            room,
            Tag::new(Op::Recv, ci, epoch),
        );
        if paused && matches!(conn.state, ConnState::Attached(..)) {
            self.count(|s| &s.paused);
        }
        let conn = &mut self.conns[ci];
        if conn.ep.sending() {
            return;
        }
        if conn.ws.is_some() {
            self.ws_send(ci);
            return;
        }
        if !conn.answer.is_empty() {
            let answer = std::mem::take(&mut conn.answer);
            conn.sending_session = false;
            conn.ep
                .send_owned(&mut self.d, answer, Tag::new(Op::Send, ci, epoch));
            return;
        }
        match conn.state {
            ConnState::Finishing => self.close_conn(ci),
            ConnState::Attached(si, sg) => {
                let Shard {
                    d,
                    sessions,
                    conns,
                    meta_pool,
                    ..
                } = self;
                let conn = &mut conns[ci];
                let Some(s) = sessions.get_mut(si).filter(|s| s.epoch == sg) else {
                    return;
                };
                // Most syncs find nothing new to send: skip building pieces.
                if s.relay.client_out().unsent() == 0 {
                    return;
                }
                let tag = Tag::new(Op::Send, ci, epoch);
                let sent = conn
                    .ep
                    .send_pieces(d, s.relay.client_pieces(), meta_pool, tag);
                match conn.ep.send_op() {
                    Some(op) if sent > 0 => {
                        conn.sending_session = true;
                        // Prune finished sends only when the inline room is
                        // used up: most sessions never get that far.
                        if s.reads.len() == s.reads.inline_size() {
                            s.reads.retain(|r| d.is_in_flight(*r));
                        }
                        s.reads.push(op);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_send(&mut self, ci: usize, epoch: u32, c: Completion<Tag>) {
        let Some(conn) = self.conns.get_mut(ci).filter(|x| x.epoch == epoch) else {
            self.recycle(c.mem);
            return;
        };
        let res = conn.ep.on_send(&c);
        let session = std::mem::take(&mut conn.sending_session);
        if res < 0 {
            self.recycle(c.mem);
            let e = std::io::Error::from_raw_os_error(-res);
            self.client_gone(ci, &format!("send failed: {e}"));
            return;
        }
        let n = res as usize;
        self.count_n(|s| &s.client_tx_bytes, n as u64);
        if self.conns[ci].ws.is_some() {
            self.ws_sent(ci, n, c.mem);
            return;
        }
        if session {
            self.recycle(c.mem);
            if let Some(si) = self.attached(ci) {
                self.sessions[si].relay.handle_client_sent(n);
                self.sync(si);
            }
            return;
        }
        // An answer: a short send leaves the rest to go first next time.
        if let crate::engine::ring::Owned::Bytes(b) = c.mem {
            if n < b.len() {
                let conn = &mut self.conns[ci];
                let mut rest = b[n..].to_vec();
                rest.append(&mut conn.answer);
                conn.answer = rest;
            }
        }
        match self.attached(ci) {
            Some(si) => self.sync(si),
            None => self.sync_conn(ci),
        }
    }
}
