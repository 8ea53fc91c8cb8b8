//! skynet's doors on a shard: login connections served start to answer
//! (then closed), msgserver connections routed to the shard that holds
//! their user (by the subid in the first packet, see
//! [`crate::engine::skynet`]) and then read by the shard's [`MsgGate`].
//!
//! A msgserver connection owns no session and no replay window: the
//! protocol's own cache of answers is what survives reconnects, and it
//! belongs to the user in the [`MsgGate`]. Answers wait in the connection's
//! `answer` buffer; while it holds more than
//! [`SkynetSettings::max_output`](crate::engine::skynet::SkynetSettings)
//! bytes, or while a worker queue is full, the gate reads no requests.

use super::*;
use crate::engine::skynet::{
    Refusal, SkynetCommand, SkynetEvent, SkynetHub, SkynetShared, SkynetUser,
};
use crate::proto::skynet::gate::{
    Action, CloseReason as GateClose, HandshakeCode, MsgGate, UserId,
};
use crate::proto::skynet::login::{LoginEvent, LoginServer};
use crate::proto::skynet::packet::{self, HandshakeFields};
use rand::Rng;
use std::collections::VecDeque;

/// Receive room of a msgserver connection that may read.
const ROOM: usize = 65536;

/// One shard's skynet state.
pub(crate) struct SkynetShard {
    hub: Arc<SkynetHub>,
    gate: MsgGate,
    /// Events a full worker queue refused, in order. While any wait, later
    /// events queue behind them and no msgserver connection is read, so
    /// this holds at most what reads already in flight deliver.
    backlog: VecDeque<SkynetEvent>,
}

impl SkynetShard {
    pub(super) fn for_config(cfg: &Config) -> Option<Box<SkynetShard>> {
        let hub = cfg.skynet.clone()?;
        let gate = MsgGate::new(hub.settings.gate);
        Some(Box::new(SkynetShard {
            hub,
            gate,
            backlog: VecDeque::new(),
        }))
    }
}

/// The receive room of a msgserver connection with `queued` answer bytes.
pub(super) fn room(sk: Option<&SkynetShard>, queued: usize) -> usize {
    match sk {
        Some(sk) if sk.backlog.is_empty() && queued < sk.hub.settings.max_output => ROOM,
        _ => 0,
    }
}

/// The gate's name for connection `ci` (its slab index and epoch).
fn conn_id(ci: usize, epoch: u32) -> u64 {
    (ci as u64) << 32 | epoch as u64
}

fn conn_of(id: u64) -> (usize, u32) {
    ((id >> 32) as usize, id as u32)
}

/// Offers an event to its user's worker queue (see [`super::workers::offer`]).
fn offer(hub: &SkynetHub, ev: SkynetEvent) -> Result<(), SkynetEvent> {
    let w = hub.worker_of(ev.user());
    super::workers::offer(&hub.senders[w], &hub.wanted[w], ev)
}

impl Shard {
    /// A login connection starts with its challenge line.
    pub(super) fn skynet_accepted(&mut self, ci: usize) {
        let Some(limits) = self.skynet.as_ref().map(|s| s.hub.settings.login) else {
            return;
        };
        if self.conns[ci].door != Door::SkynetLogin {
            return;
        }
        let mut login = LoginServer::new(self.rng.random(), self.rng.random(), limits);
        let conn = &mut self.conns[ci];
        conn.answer = login.take_output();
        conn.state = ConnState::Greeting(Box::new(DoorGreeting::SkynetLogin(Box::new(login))));
    }

    /// Bytes of a login, or of a msgserver connection before its first
    /// packet is whole.
    pub(super) fn greet_skynet(&mut self, ci: usize, data: &[u8]) {
        let ConnState::Greeting(g) = &mut self.conns[ci].state else {
            return;
        };
        match &mut **g {
            DoorGreeting::SkynetLogin(login) => {
                login.recv(data);
                self.run_login(ci);
            }
            DoorGreeting::MsgServer(raw) => {
                raw.extend_from_slice(data);
                self.route_msgserver(ci);
            }
            _ => {}
        }
    }

    fn login_machine(&mut self, ci: usize) -> Option<&mut LoginServer> {
        match &mut self.conns.get_mut(ci)?.state {
            ConnState::Greeting(g) => match &mut **g {
                DoorGreeting::SkynetLogin(l) => Some(l),
                _ => None,
            },
            _ => None,
        }
    }

    /// Drives a login as far as it goes: the program's decisions are asked
    /// for on the spot.
    fn run_login(&mut self, ci: usize) {
        let Some(hub) = self.skynet.as_ref().map(|s| s.hub.clone()) else {
            return;
        };
        loop {
            let Some(login) = self.login_machine(ci) else {
                return;
            };
            let out = login.take_output();
            match login.poll() {
                LoginEvent::NeedMore => {
                    self.conns[ci].answer.extend_from_slice(&out);
                    return;
                }
                LoginEvent::Authenticate(token) => {
                    login.authenticated(hub.auth.auth(&token));
                    self.conns[ci].answer.extend_from_slice(&out);
                }
                LoginEvent::Login {
                    server,
                    user,
                    secret,
                } => {
                    self.conns[ci].answer.extend_from_slice(&out);
                    let answer = self
                        .skynet_login(&hub, &server, &user, secret)
                        .map(|subid| subid.to_string().into_bytes());
                    if let Some(login) = self.login_machine(ci) {
                        login.logged_in(answer);
                    }
                }
                LoginEvent::Done(ok) => {
                    self.end_greeting(ci);
                    let conn = &mut self.conns[ci];
                    conn.answer.extend_from_slice(&out);
                    debug!(shard = self.index, peer = %Addr(conn.peer), subid = %String::from_utf8_lossy(&ok.subid), "skynet login");
                    return;
                }
                LoginEvent::Failed(why) => {
                    let mut answer = std::mem::take(&mut self.conns[ci].answer);
                    answer.extend_from_slice(&out);
                    self.fail_greeting(ci, &format!("skynet login: {why}"), answer);
                    return;
                }
            }
        }
    }

    /// The login server's `login_handler`: lets `uid` log in to this gate
    /// with `secret` and returns its subid.
    fn skynet_login(
        &mut self,
        hub: &SkynetHub,
        server: &[u8],
        uid: &[u8],
        secret: u64,
    ) -> Result<u64, Refusal> {
        if server != hub.settings.server.as_slice() {
            return Err(Refusal::Forbidden);
        }
        hub.auth.login(server, uid)?;
        let subid = hub.shared.subid_for(self.index);
        self.skynet_register(uid, secret, subid)?;
        Ok(subid)
    }

    /// Adds a user to this shard's gate; a login of the same uid before it
    /// is kicked, wherever it lives.
    fn skynet_register(&mut self, uid: &[u8], secret: u64, subid: u64) -> Result<(), Refusal> {
        let Some(sk) = self.skynet.as_mut() else {
            return Err(Refusal::Forbidden);
        };
        let subid = subid.to_string().into_bytes();
        let name = packet::username(uid, &sk.hub.settings.server, &subid);
        let shared = sk.hub.shared.clone();
        let mut registry = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        let id = match sk.gate.login(&name, secret) {
            Ok(id) => id,
            Err(e) => {
                drop(registry);
                self.warn_limit(&format!("skynet login refused: {e}"));
                return Err(Refusal::Forbidden);
            }
        };
        let user = SkynetUser::new(self.index, id.0);
        let old = registry.insert(uid.to_vec(), user);
        drop(registry);
        if let Some(old) = old {
            self.kick_elsewhere(&shared, old);
        }
        self.skynet_emit(SkynetEvent::Login {
            user,
            uid: uid.to_vec(),
            subid,
        });
        Ok(())
    }

    /// Kicks `old`, here or on its own shard.
    fn kick_elsewhere(&mut self, shared: &SkynetShared, old: SkynetUser) {
        if old.shard() == self.index {
            self.drop_user(old, true);
        } else if let Some(q) = shared.kicks.get(old.shard()) {
            q.push(old);
            self.shared.wake(old.shard());
        }
    }

    /// Logs `user` out (or kicks it): its connection closes, its cache goes,
    /// and its uid forgets it unless a newer login has taken the uid.
    fn drop_user(&mut self, user: SkynetUser, kick: bool) {
        let Some(sk) = self.skynet.as_mut() else {
            return;
        };
        if user.shard() != self.index {
            return;
        }
        let id = UserId(user.local());
        let uid = sk
            .gate
            .username(id)
            .and_then(packet::parse_username)
            .map(|(uid, _, _)| uid);
        let gone = if kick {
            sk.gate.kick(id)
        } else {
            sk.gate.logout(id)
        };
        if !gone {
            return;
        }
        if let Some(uid) = uid {
            let mut registry = sk
                .hub
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if registry.get(&uid) == Some(&user) {
                registry.remove(&uid);
            }
        }
        self.skynet_emit(SkynetEvent::Logout { user });
        self.skynet_actions();
    }

    /// A msgserver connection's first packet names its user's shard: hand
    /// the connection there, or serve it here.
    fn route_msgserver(&mut self, ci: usize) {
        let Some(sk) = self.skynet.as_ref() else {
            return;
        };
        let (max, shared) = (sk.hub.settings.max_handshake, sk.hub.shared.clone());
        let ConnState::Greeting(g) = &mut self.conns[ci].state else {
            return;
        };
        let DoorGreeting::MsgServer(raw) = &mut **g else {
            return;
        };
        let Some(head) = raw.first_chunk::<2>() else {
            return;
        };
        let len = u16::from_be_bytes(*head) as usize;
        if len > max {
            self.fail_greeting(ci, "msgserver handshake too long", Vec::new());
            return;
        }
        if raw.len() < 2 + len {
            return;
        }
        let owner = HandshakeFields::split(&raw[2..2 + len])
            .and_then(|f| packet::parse_username(f.username))
            .and_then(|(_, _, subid)| shared.shard_of_subid(&subid))
            .filter(|&s| s < self.cfg.shards);
        if let Some(owner) = owner.filter(|&s| s != self.index) {
            self.hand_off(ci, owner, 0);
            return;
        }
        // A handshake naming no shard of ours is answered here (404).
        let raw = std::mem::take(raw);
        // A login or kick queued before the client sent this must be in
        // force before its bytes are read, even when both woke the shard in
        // the same batch.
        self.skynet_round();
        self.end_greeting(ci);
        let conn = &mut self.conns[ci];
        conn.state = ConnState::Skynet;
        let id = conn_id(ci, conn.epoch);
        let Some(sk) = self.skynet.as_mut() else {
            return;
        };
        if sk.gate.connect(id).is_err() {
            self.conns[ci].state = ConnState::Finishing;
            self.warn_limit("msgserver connection limit reached: connections are being closed");
            return;
        }
        sk.gate.recv(id, &raw);
        self.skynet_actions();
    }

    /// Bytes on a msgserver connection past its first packet.
    pub(super) fn msgserver_data(&mut self, ci: usize, data: &[u8]) {
        let id = conn_id(ci, self.conns[ci].epoch);
        // As for a handshake: what was queued before these bytes were sent
        // (a kick by a newer login) applies first; it may close this
        // connection, whose bytes the gate then ignores.
        self.skynet_round();
        if let Some(sk) = self.skynet.as_mut() {
            sk.gate.recv(id, data);
        }
        self.skynet_actions();
    }

    /// A msgserver connection ended: its user stays logged in.
    pub(super) fn msgserver_gone(&mut self, ci: usize, why: &str) {
        let id = conn_id(ci, self.conns[ci].epoch);
        debug!(shard = self.index, peer = %Addr(self.conns[ci].peer), "msgserver connection closed: {why}");
        if let Some(sk) = self.skynet.as_mut() {
            sk.gate.closed(id);
        }
        self.skynet_actions();
    }

    /// Carries out what the gate asked for.
    fn skynet_actions(&mut self) {
        let mut touched = Vec::new();
        while let Some(action) = self.skynet.as_mut().and_then(|sk| sk.gate.poll()) {
            let user = |u: UserId| SkynetUser::new(self.index, u.0);
            match action {
                Action::Send { conn, bytes } => {
                    let (ci, epoch) = conn_of(conn);
                    if let Some(c) = self.conn_mut(ci, epoch) {
                        c.answer.extend_from_slice(&bytes);
                        touched.push(ci);
                    }
                }
                Action::Close { conn, reason } => {
                    let (ci, epoch) = conn_of(conn);
                    if let GateClose::Handshake(code) = reason {
                        if code != HandshakeCode::Ok {
                            self.count(|s| &s.handshake_failed);
                        }
                    }
                    let shard = self.index;
                    if let Some(c) = self.conn_mut(ci, epoch) {
                        if matches!(c.state, ConnState::Skynet) {
                            c.state = ConnState::Finishing;
                        }
                        debug!(shard, peer = %Addr(c.peer), ?reason, "msgserver connection closed by the gate");
                        touched.push(ci);
                    }
                }
                Action::Online { user: u, .. } => {
                    self.skynet_emit(SkynetEvent::Online { user: user(u) })
                }
                Action::Request {
                    user: u,
                    session,
                    payload,
                } => self.skynet_emit(SkynetEvent::Request {
                    user: user(u),
                    session,
                    payload: payload.into(),
                }),
                Action::Afk { user: u } => self.skynet_emit(SkynetEvent::Afk { user: user(u) }),
            }
        }
        touched.dedup();
        for ci in touched {
            self.sync_conn(ci);
        }
    }

    fn skynet_emit(&mut self, ev: SkynetEvent) {
        let Some(sk) = self.skynet.as_mut() else {
            return;
        };
        if !sk.backlog.is_empty() {
            sk.backlog.push_back(ev);
            return;
        }
        if let Err(ev) = offer(&sk.hub, ev) {
            sk.backlog.push_back(ev);
            self.count(|s| &s.worker_full);
        }
    }

    /// Once per loop: kicks from other shards, the application's commands,
    /// and events waiting for room in a worker queue.
    pub(super) fn skynet_round(&mut self) {
        let Some(sk) = self.skynet.as_ref() else {
            return;
        };
        let shared = sk.hub.shared.clone();
        while let Some(user) = shared.kicks[self.index].pop() {
            self.drop_user(user, true);
        }
        // At most one queue's worth per loop, so I/O is not starved.
        let budget = shared.commands[self.index].capacity();
        for _ in 0..budget {
            let Some(cmd) = shared.commands[self.index].pop() else {
                break;
            };
            match cmd {
                SkynetCommand::Respond {
                    user,
                    session,
                    payload,
                    ok,
                } => {
                    if user.shard() != self.index {
                        continue;
                    }
                    if let Some(sk) = self.skynet.as_mut() {
                        if let Err(e) = sk.gate.respond(UserId(user.local()), session, &payload, ok)
                        {
                            debug!(shard = self.index, session, "answer not taken: {e}");
                        }
                    }
                    self.skynet_actions();
                }
                SkynetCommand::Logout(user) => self.drop_user(user, false),
                SkynetCommand::Kick(user) => self.drop_user(user, true),
                SkynetCommand::Login { uid, secret, subid } => {
                    // Refused only when the gate is full; the client then
                    // gets 404 at its handshake.
                    let _ = self.skynet_register(&uid, secret, subid);
                }
            }
        }
        self.flush_backlog();
    }

    fn flush_backlog(&mut self) {
        let Some(sk) = self.skynet.as_mut() else {
            return;
        };
        if sk.backlog.is_empty() {
            return;
        }
        while let Some(ev) = sk.backlog.pop_front() {
            if let Err(ev) = offer(&sk.hub, ev) {
                sk.backlog.push_front(ev);
                return;
            }
        }
        // Room again: every msgserver connection may read.
        let conns: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Skynet))
            .map(|(i, _)| i)
            .collect();
        for ci in conns {
            self.sync_conn(ci);
        }
    }
}
