//! The SCP handshake on the server side: new sessions, resumes and their answers, session ids.

use super::*;

impl Shard {
    pub(super) fn handshake_bytes(&mut self, ci: usize, data: &mut [u8]) {
        let c = &mut self.conns[ci];
        let ConnState::Handshake(hs) = &mut c.state else {
            return;
        };
        if c.raw_in.len() + data.len() > MAX_HANDSHAKE_BYTES {
            debug!(shard = self.index, peer = %Addr(c.peer), "handshake flood: closing");
            self.fail_handshake(
                ci,
                "too many bytes before the handshake completed",
                Vec::new(),
            );
            return;
        }
        c.raw_in.extend_from_slice(data);
        let used = hs.recv(data);
        let event = hs.poll();
        let rest_start = used;
        match event {
            ServerEvent::NeedMore | ServerEvent::Done => {}
            ServerEvent::Failed(err) => {
                let out = hs.take_output();
                let msg = err.to_string();
                self.fail_handshake(ci, &msg, out);
            }
            ServerEvent::NewSession(req) => {
                let rest = data[rest_start..].to_vec();
                self.new_session(ci, req.target, req.flag.unwrap_or(0), rest);
            }
            ServerEvent::Resume(req) => {
                let rest = data[rest_start..].to_vec();
                self.resume(ci, req, rest);
            }
        }
    }

    pub(super) fn end_handshake(&mut self, ci: usize) {
        if matches!(self.conns[ci].state, ConnState::Handshake(_)) {
            self.handshaking -= 1;
        }
    }

    pub(super) fn fail_handshake(&mut self, ci: usize, why: &str, answer: Vec<u8>) {
        self.end_handshake(ci);
        self.shared.shards[self.index]
            .stats
            .handshake_failed
            .fetch_add(1, Ordering::Relaxed);
        let c = &mut self.conns[ci];
        debug!(shard = self.index, peer = %Addr(c.peer), "handshake failed: {why}");
        c.raw_in = Vec::new();
        if answer.is_empty() {
            c.state = ConnState::Dead;
            self.close_conn(ci);
        } else {
            c.state = ConnState::Finishing;
            c.hs_out = answer;
            self.flush_conn(ci);
        }
    }

    pub(super) fn alloc_id(&mut self) -> Option<u32> {
        let by_id = &self.by_id;
        self.ids.next(|id| by_id.contains_key(&id))
    }

    pub(super) fn owner_of(&self, id: u32) -> usize {
        self.ids.space().owner(id)
    }

    pub(super) fn new_session(
        &mut self,
        ci: usize,
        target: Option<String>,
        flag: i32,
        rest: Vec<u8>,
    ) {
        if self.sessions.len() >= self.max_sessions_here() {
            self.warn_limit("max_sessions reached: new sessions are being refused");
            self.fail_handshake(ci, "session limit reached", Vec::new());
            return;
        }
        let Some(id) = self.alloc_id() else {
            self.fail_handshake(ci, "no free session id", Vec::new());
            return;
        };
        self.end_handshake(ci);
        let random: u64 = self.rng.random();
        let c = &mut self.conns[ci];
        let ConnState::Handshake(hs) = &mut c.state else {
            return;
        };
        let ns = hs.accept_new(id, random);
        c.hs_out = hs.take_output();
        c.raw_in = Vec::new();
        let peer = c.peer;
        let session = Session::new(id, ns.secret, self.cfg.reuse_buffer);
        let target = target.filter(|t| !t.is_empty());
        let (si, epoch) =
            self.insert_session(id, Outbound::Scp(Box::new(session)), ci, target, flag);
        self.by_id.insert(id, si);
        self.shared.shards[self.index]
            .stats
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        info!(shard = self.index, session = id, peer = %Addr(peer), target = ?self.sessions[si].target, "session opened");
        self.start_peer(si);
        self.flush_conn(ci);
        if !rest.is_empty() {
            let mut rest = rest;
            self.client_bytes(si, epoch, &mut rest);
        }
    }

    pub(super) fn open_plain_session(&mut self, ci: usize) {
        // Workers address sessions by id, so plain ones need one too.
        let id = match self.hub {
            Some(_) => match self.alloc_id() {
                Some(id) => id,
                None => {
                    self.client_gone(ci, "no free session id");
                    return;
                }
            },
            None => 0,
        };
        let queue = Outbound::Plain(PlainQueue::new(self.cfg.relay_buffer));
        let (si, _) = self.insert_session(id, queue, ci, None, 0);
        if id != 0 {
            self.by_id.insert(id, si);
        }
        self.shared.shards[self.index]
            .stats
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        debug!(shard = self.index, peer = %Addr(self.conns[ci].peer), "plain connection opened");
        self.start_peer(si);
    }

    pub(super) fn resume(&mut self, ci: usize, req: ReuseConnReq, rest: Vec<u8>) {
        let owner = self.owner_of(req.id);
        if owner != self.index && owner < self.cfg.shards {
            self.hand_off(ci, owner);
            return;
        }
        self.end_handshake(ci);
        let peer = self.conns[ci].peer;
        let Some(&si) = self.by_id.get(&req.id) else {
            info!(shard = self.index, session = req.id, peer = %Addr(peer), "resume refused: 404 no such session");
            self.refuse_resume(ci, Status::NotFound);
            return;
        };
        let sg = self.sessions[si].epoch;
        let result = match self.sessions[si].client.session_mut() {
            Some(s) => s.accept_resume(&req),
            None => Err(Status::NotFound),
        };
        match result {
            Err(status) => {
                info!(shard = self.index, session = req.id, peer = %Addr(peer), "resume refused: {}", status as u16);
                self.refuse_resume(ci, status);
                if status == Status::NotAcceptable {
                    self.close_session(si, CloseReason::ReplayExceeded);
                }
            }
            Ok(resend) => {
                if let Some(old) = self.sessions[si].conn.take() {
                    debug!(
                        shard = self.index,
                        session = req.id,
                        "resume takes over a live connection"
                    );
                    self.conns[old].state = ConnState::Dead;
                    self.close_conn(old);
                }
                let s = &mut self.sessions[si];
                let received = s.client.session().map_or(0, |x| x.received() as u32);
                s.conn = Some(ci);
                s.detach_token = 0;
                s.client_addr = peer.or(s.client_addr);
                let c = &mut self.conns[ci];
                let ConnState::Handshake(hs) = &mut c.state else {
                    return;
                };
                hs.answer_resume(received, Status::Ok);
                c.hs_out = hs.take_output();
                c.raw_in = Vec::new();
                c.state = ConnState::Attached(si, sg);
                self.shared.shards[self.index]
                    .stats
                    .sessions_resumed
                    .fetch_add(1, Ordering::Relaxed);
                info!(shard = self.index, session = req.id, peer = %Addr(peer), resend, "session resumed");
                self.worker_resumed(si);
                self.flush_conn(ci);
                if !rest.is_empty() {
                    let mut rest = rest;
                    self.client_bytes(si, sg, &mut rest);
                }
                self.drain_from_peer(si);
            }
        }
    }

    pub(super) fn refuse_resume(&mut self, ci: usize, status: Status) {
        self.shared.shards[self.index]
            .stats
            .resumes_failed
            .fetch_add(1, Ordering::Relaxed);
        let c = &mut self.conns[ci];
        let ConnState::Handshake(hs) = &mut c.state else {
            return;
        };
        hs.answer_resume(0, status);
        let out = hs.take_output();
        c.state = ConnState::Finishing;
        c.hs_out = out;
        c.raw_in = Vec::new();
        self.flush_conn(ci);
    }
}
