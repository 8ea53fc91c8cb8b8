//! Sessions: opening (new SCP sessions and plain connections), resuming,
//! detaching, closing, and [`Shard::sync`], which turns what a session's
//! core wants into submissions.

use super::*;
use crate::engine::outbound::{Outbound, PlainQueue};
use crate::engine::session::Peer;
use crate::proto::message::ReuseConnReq;
use crate::proto::session::Session;
use rand::Rng;
use std::sync::atomic::Ordering;
use tracing::info;

impl Shard {
    /// Makes the far side of a new session, by backend.
    fn make_peer(&mut self, client: Option<SocketAddr>, flag: i32) -> Peer {
        if let Some(hub) = &self.hub {
            return Relay::workers(crate::proto::frame::FrameDecoder::new(
                hub.format,
                hub.max_frame,
            ));
        }
        let Some(proxy) = &self.proxy else {
            return Peer::Echo;
        };
        let announce = match client {
            Some(client) if flag & 1 == 0 => proxy.announcement(client, self.local),
            _ => Vec::new(),
        };
        let random: u64 = self.rng.random();
        Relay::upstream(
            proxy.scp(),
            random,
            announce,
            self.cfg.relay_buffer,
            self.cfg.reuse_buffer,
        )
    }

    /// A new session entry attached to connection `ci`.
    pub(super) fn insert_session(
        &mut self,
        id: u32,
        client: Outbound,
        ci: usize,
        target: Option<String>,
        flag: i32,
    ) -> usize {
        let epoch = self.new_epoch();
        let client_addr = self.conns[ci].peer;
        let peer = self.make_peer(client_addr, flag);
        let queue = self
            .hub
            .as_ref()
            .map_or(0, |h| id as usize % h.senders.len());
        let si = self.sessions.insert(Sess {
            epoch,
            id,
            relay: Relay::new(client, peer, self.cfg.relay_buffer),
            conn: Some(ci),
            up: None,
            reads: smallvec::SmallVec::new(),
            detach_token: 0,
            client_addr,
            target: target.map(String::into_boxed_str),
            flag,
            opened: Instant::now(),
            queue,
            waiting: false,
            ended: false,
            indexed: 0,
        });
        if id != 0 {
            self.by_id.insert(id, si);
        }
        self.conns[ci].state = ConnState::Attached(si, epoch);
        self.count(|s| &s.sessions_opened);
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        self.note_peer(si);
        if self.proxy.is_some() {
            self.start_upstream(si);
        }
        si
    }

    pub(super) fn new_session(
        &mut self,
        ci: usize,
        target: Option<String>,
        flag: i32,
        mut rest: Vec<u8>,
    ) {
        let Some(id) = self.admit_new_session(ci) else {
            return;
        };
        let random: u64 = self.rng.random();
        let Some(DoorGreeting::Scp(mut g)) = self.end_greeting(ci).map(|g| *g) else {
            return;
        };
        let (ns, answer) = g.accept_new(id, random);
        let conn = &mut self.conns[ci];
        conn.answer = answer;
        let peer = conn.peer;
        let session = Session::new(id, ns.secret, self.cfg.reuse_buffer);
        let si = self.insert_session(id, Outbound::Scp(Box::new(session)), ci, target, flag);
        if self.loud() {
            info!(shard = self.index, session = id, peer = %Addr(peer), target = ?self.sessions[si].target, "session opened");
        }
        if !rest.is_empty() {
            self.sessions[si].relay.handle_client_bytes(&mut rest);
        }
        self.sync(si);
    }

    /// Whether connection `ci` may open a new session (not draining, under
    /// `max_sessions`, an id free), and its id; otherwise the greeting fails
    /// and the connection closes.
    pub(super) fn admit_new_session(&mut self, ci: usize) -> Option<u32> {
        use crate::proto::ws::code;
        if self.draining() {
            self.count(|s| &s.new_refused_draining);
            self.ws_refuse(ci, code::GOING_AWAY, "draining: new sessions refused");
            self.fail_greeting(ci, "draining: new sessions refused", Vec::new());
            return None;
        }
        if self.max_sessions_reached() {
            self.warn_limit("max_sessions reached: new sessions are being refused");
            self.ws_refuse(ci, code::TRY_AGAIN_LATER, "session limit reached");
            self.fail_greeting(ci, "session limit reached", Vec::new());
            return None;
        }
        let by_id = &self.by_id;
        let id = self.ids.next(|id| by_id.contains_key(&id));
        if id.is_none() {
            self.fail_greeting(ci, "no free session id", Vec::new());
        }
        id
    }

    pub(super) fn open_plain_session(&mut self, ci: usize) {
        // Workers address sessions by id, so plain ones need one too.
        let id = if self.hub.is_some() {
            let by_id = &self.by_id;
            match self.ids.next(|id| by_id.contains_key(&id)) {
                Some(id) => id,
                None => {
                    self.client_gone(ci, "no free session id");
                    return;
                }
            }
        } else {
            0
        };
        let queue = Outbound::Plain(Box::new(PlainQueue::new(self.cfg.relay_buffer)));
        let si = self.insert_session(id, queue, ci, None, 0);
        debug!(shard = self.index, peer = %Addr(self.conns[ci].peer), "plain connection opened");
        self.sync(si);
    }

    pub(super) fn resume(&mut self, ci: usize, req: ReuseConnReq, mut rest: Vec<u8>) {
        let peer = self.conns[ci].peer;
        let Some(&si) = self.by_id.get(&req.id) else {
            if self.loud() {
                info!(shard = self.index, session = req.id, peer = %Addr(peer), "resume refused: 404 no such session");
            }
            self.refuse_resume(ci, crate::proto::message::Status::NotFound);
            return;
        };
        let result = self.sessions[si].relay.handle_resume(&req);
        let (received, resend) = match result {
            Ok(r) => r,
            Err(status) => {
                if self.loud() {
                    info!(shard = self.index, session = req.id, peer = %Addr(peer), "resume refused: {}", status as u16);
                }
                self.refuse_resume(ci, status);
                // A resume beyond the window ends the session.
                self.sync(si);
                return;
            }
        };
        self.count_n(|s| &s.resend_bytes, resend as u64);
        if let Some(old) = self.sessions[si].conn.take() {
            debug!(
                shard = self.index,
                session = req.id,
                "resume takes over a live connection"
            );
            self.dismiss_conn(
                old,
                crate::proto::ws::code::NORMAL,
                "session resumed on another connection",
            );
        } else {
            self.uncount(|s| &s.detached);
        }
        let Some(DoorGreeting::Scp(mut g)) = self.end_greeting(ci).map(|g| *g) else {
            return;
        };
        let answer = g.answer_resume(received, crate::proto::message::Status::Ok);
        let epoch = self.sessions[si].epoch;
        let conn = &mut self.conns[ci];
        conn.answer = answer;
        conn.state = ConnState::Attached(si, epoch);
        let s = &mut self.sessions[si];
        s.conn = Some(ci);
        s.detach_token = 0;
        s.client_addr = peer.or(s.client_addr);
        self.count(|s| &s.sessions_resumed);
        if self.loud() {
            info!(shard = self.index, session = req.id, peer = %Addr(peer), resend, "session resumed");
        }
        self.note_peer(si);
        if !rest.is_empty() {
            self.sessions[si].relay.handle_client_bytes(&mut rest);
        }
        self.sync(si);
    }

    /// The connection carrying session `(si, sg)` is gone: an SCP session
    /// waits `reuse_time` for a resume; a plain one ends once its peer side
    /// has everything.
    pub(super) fn detach(&mut self, si: usize, sg: u32, ci: usize, why: &str) {
        let Some(s) = self
            .sessions
            .get_mut(si)
            .filter(|s| s.epoch == sg && s.conn == Some(ci))
        else {
            return;
        };
        s.conn = None;
        if s.relay.resumable() && s.relay.closing().is_none() {
            let token = self.next_epoch.wrapping_add(1).max(1);
            self.next_epoch = token;
            let s = &mut self.sessions[si];
            s.detach_token = token;
            s.relay.handle_detached();
            debug!(
                shard = self.index,
                session = s.id,
                "session detached: {why}"
            );
            let timer = crate::engine::timer::Entry {
                index: si,
                epoch: token,
            };
            self.reuse_timers.push(Instant::now(), timer);
            self.count(|s| &s.detached);
        } else {
            s.relay.handle_client_eof();
        }
        self.sync(si);
    }

    /// Ends a session: its connection and upstream close, its workers are
    /// told, and it is freed once nothing refers to it.
    pub(super) fn close_session(&mut self, si: usize, reason: CloseReason) {
        let s = &mut self.sessions[si];
        if s.ended {
            return;
        }
        s.ended = true;
        s.relay.close(reason);
        let (id, addr, lived) = (s.id, s.client_addr, s.opened.elapsed());
        let conn = s.conn.take();
        if conn.is_none() && s.detach_token != 0 {
            self.uncount(|s| &s.detached);
        }
        self.count(|s| &s.sessions_closed);
        self.shared.live.fetch_sub(1, Ordering::Relaxed);
        self.stats().closed(reason);
        if id != 0 {
            self.by_id.remove(&id);
            if self.loud() {
                info!(
                    shard = self.index,
                    session = id,
                    peer = %Addr(addr),
                    lived_ms = lived.as_millis() as u64,
                    "session closed: {reason}"
                );
            }
        } else {
            debug!(shard = self.index, peer = %Addr(addr), "plain connection closed: {reason}");
        }
        if self.hub.is_some() {
            if let Ok(mut peers) = self.shared.shards[self.index].peers.lock() {
                peers.remove(&id);
            }
        }
        if let Some(ci) = conn {
            self.end_conn(ci, reason);
        }
        self.close_up(si);
        self.reindex(si);
    }

    /// Frees a closed session once its connection and upstream are gone
    /// and its workers have heard the end. Sends still reading its memory
    /// keep that memory until they complete.
    pub(super) fn maybe_free_session(&mut self, si: usize) {
        let Some(s) = self.sessions.get(si) else {
            return;
        };
        if !s.ended || s.conn.is_some() || s.up.is_some() || s.relay.notes_waiting() {
            return;
        }
        let s = self.sessions.remove(si);
        let reads: Vec<OpId> = s
            .reads
            .iter()
            .copied()
            .filter(|&op| self.d.is_in_flight(op))
            .collect();
        if !reads.is_empty() {
            let relay = std::rc::Rc::new(s.relay);
            for op in reads {
                self.d.keep_alive(op, Box::new(relay.clone()));
            }
        }
    }

    /// Asks session `si`'s core what it wants now and makes it so: its
    /// close when its work is done, its connection's and upstream's receives
    /// and sends, its notes for the workers, its entry freed at the end.
    pub(super) fn sync(&mut self, si: usize) {
        // Every completion of every session comes here: each step below is
        // skipped with a field test when it has nothing to do (no workers,
        // no upstream, not a stable-connection session, not ended).
        let workers = self.hub.is_some();
        // Notes first: the workers taking them gives the client room again,
        // which the endpoint below must see.
        if workers {
            self.offer_notes(si);
        }
        let Some(s) = self.sessions.get(si) else {
            return;
        };
        if !s.ended {
            if let Some(reason) = s.relay.closing().or_else(|| s.relay.poll_close()) {
                self.close_session(si, reason);
            }
        }
        if self.sessions[si].relay.is_stable() {
            self.reindex(si);
        }
        let s = &self.sessions[si];
        let (conn, up) = (s.conn, s.up.is_some());
        if let Some(ci) = conn {
            self.sync_conn(ci);
        }
        if up {
            self.sync_up(si);
        }
        // A close above leaves its note for the workers.
        if workers {
            self.offer_notes(si);
        }
        if self.sessions[si].ended {
            self.maybe_free_session(si);
        }
    }

    /// Publishes the session's client address for `Handle::peer_addr`.
    pub(super) fn note_peer(&self, si: usize) {
        if self.hub.is_none() {
            return;
        }
        let s = &self.sessions[si];
        if let Ok(mut peers) = self.shared.shards[self.index].peers.lock() {
            match s.client_addr {
                Some(addr) => peers.insert(s.id, addr),
                None => peers.remove(&s.id),
            };
        }
    }
}
