//! Stage 2: skynet's msgserver gate as a sans-IO machine.
//!
//! One [`MsgGate`] holds the logged-in users and the connections a shard
//! gives it. The shard reports transport facts ([`connect`](MsgGate::connect),
//! [`recv`](MsgGate::recv), [`closed`](MsgGate::closed)), the embedding
//! program reports user facts ([`login`](MsgGate::login),
//! [`logout`](MsgGate::logout), [`kick`](MsgGate::kick)) and answers
//! ([`respond`](MsgGate::respond)); both drain [`poll`](MsgGate::poll) for
//! what to do: bytes to send, connections to close, requests to run.
//!
//! ## Rules (skynet's `msgserver.lua`)
//!
//! - The first packet is the handshake; checks run 404 → 400 → 403 → 401,
//!   the answer is one packet and any answer but `200 OK` is followed by a
//!   close. A failed handshake does not use up the index.
//! - A request is `payload ‖ u32 session`; shorter than 4 bytes closes.
//! - Per user, responses are cached by session. A session seen on an
//!   earlier connection gets the cached answer (or the answer when it is
//!   ready) and its payload is not run again. On the same connection an
//!   answered session is a new request; a pending one is merged once and a
//!   second repeat closes the connection ("conflict session").
//! - After `2 × expired_number` answers, answered entries older than the
//!   last `expired_number` are dropped.
//! - A disconnected user stays logged in ([`Action::Afk`]).
//!
//! ## Where this differs from skynet, on purpose
//!
//! - An answer computed after the client reconnected stays marked with the
//!   connection that asked for it, so a repeat on the new connection gets it
//!   instead of running the request again (skynet marks it with the new
//!   connection and runs it twice).
//! - A second successful handshake closes the user's previous connection
//!   (skynet leaves both attached).
//! - Memory is bounded: users, connections, requests in flight per user and
//!   cached bytes per user all have limits ([`GateLimits`]); over the byte
//!   limit the oldest answers are retired early.
//! - An answer too long for a packet is sent as a failure (`ok` 0).

use super::b64;
use super::packet::{self, HandshakeFields, Index};
use crate::proto::crypt;
use std::collections::{HashMap, VecDeque};

/// The shard's name for a connection (its slab token, for example).
pub type ConnId = u64;

/// A logged-in user. Ids are never reused, so an answer for a user who
/// logged out and in again cannot reach the new login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u64);

/// Limits and skynet's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// skynet's `expired_number` (default 128): answers kept per user.
    pub expired_number: u64,
    /// Logged-in users (default 100 000); [`MsgGate::login`] fails beyond.
    pub max_users: usize,
    /// Connections (default 65 536; skynet's `maxclient`); beyond,
    /// [`MsgGate::connect`] refuses.
    pub max_connections: usize,
    /// Largest packet content accepted from a client (default 65 535, the
    /// format's maximum); a longer one closes the connection.
    pub max_packet: usize,
    /// Requests of one user running at once (default 1024); one more closes
    /// the connection.
    pub max_pending: usize,
    /// Bytes of cached answers per user (default 1 MiB).
    pub max_cache_bytes: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            expired_number: 128,
            max_users: 100_000,
            max_connections: 65_536,
            max_packet: packet::MAX_CONTENT,
            max_pending: 1024,
            max_cache_bytes: 1 << 20,
        }
    }
}

/// The handshake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeCode {
    /// 200 OK.
    Ok,
    /// 400: the index is not a number or the hmac not base64.
    BadRequest,
    /// 401: the hmac does not match the user's secret.
    Unauthorized,
    /// 403: the index is not above the last accepted one.
    IndexExpired,
    /// 404: no such user logged in (or the line does not split).
    UserNotFound,
}

impl HandshakeCode {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            HandshakeCode::Ok => 200,
            HandshakeCode::BadRequest => 400,
            HandshakeCode::Unauthorized => 401,
            HandshakeCode::IndexExpired => 403,
            HandshakeCode::UserNotFound => 404,
        }
    }

    /// The answer packet's content.
    pub fn text(self) -> &'static [u8] {
        match self {
            HandshakeCode::Ok => b"200 OK",
            HandshakeCode::BadRequest => b"400 Bad Request",
            HandshakeCode::Unauthorized => b"401 Unauthorized",
            HandshakeCode::IndexExpired => b"403 Index Expired",
            HandshakeCode::UserNotFound => b"404 User Not Found",
        }
    }

    /// Reads an answer's content back (for clients).
    pub fn from_text(text: &[u8]) -> Option<Self> {
        [
            HandshakeCode::Ok,
            HandshakeCode::BadRequest,
            HandshakeCode::Unauthorized,
            HandshakeCode::IndexExpired,
            HandshakeCode::UserNotFound,
        ]
        .into_iter()
        .find(|c| c.text() == text)
    }
}

/// Why the gate closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The handshake failed with this answer (sent before the close).
    Handshake(HandshakeCode),
    /// A request shorter than its 4-byte session.
    ShortRequest,
    /// A packet over [`GateLimits::max_packet`].
    PacketTooLarge,
    /// A session repeated twice on one connection while still running.
    ConflictSession(u32),
    /// More than [`GateLimits::max_pending`] requests running.
    TooManyPending,
    /// The user completed a handshake on another connection.
    Replaced,
    /// [`MsgGate::logout`].
    LoggedOut,
    /// [`MsgGate::kick`].
    Kicked,
}

/// What the caller has to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// Whole packets.
        bytes: Vec<u8>,
    },
    /// Close the connection once what was sent before is written. The gate
    /// has forgotten it; a later [`MsgGate::closed`] for it is ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A handshake succeeded: `user` is on `conn` now.
    Online {
        /// The user.
        user: UserId,
        /// Its connection.
        conn: ConnId,
    },
    /// Run a request and answer with [`MsgGate::respond`].
    Request {
        /// Who asked.
        user: UserId,
        /// The client's session number.
        session: u32,
        /// The request.
        payload: Vec<u8>,
    },
    /// The user's connection ended; it stays logged in (skynet's `afk`).
    Afk {
        /// The user.
        user: UserId,
    },
}

/// Why [`MsgGate::login`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The username is logged in already: log it out (or kick it) first.
    #[error("user already logged in")]
    AlreadyOnline,
    /// [`GateLimits::max_users`] reached.
    #[error("too many users")]
    Full,
}

/// Why [`MsgGate::respond`] did not take an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    /// The user is not logged in (any more).
    #[error("no such user")]
    UnknownUser,
    /// No request with that session is running (answered already, or
    /// dropped by a conflict).
    #[error("no such request running")]
    NotPending,
    /// The answer does not fit in a packet; a failure was sent instead.
    #[error("answer too large for a packet")]
    TooLarge,
}

/// [`MsgGate::connect`] refused: [`GateLimits::max_connections`] reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many connections")]
pub struct Full;

/// One cached or running request of a user.
#[derive(Debug)]
struct Entry {
    /// Where the answer goes when ready (while running).
    conn: Option<ConnId>,
    /// The response packet, once answered.
    packet: Option<Vec<u8>>,
    /// The index of the connection that last claimed or answered it (skynet
    /// `version`); `None` while running unclaimed.
    version: Option<u64>,
    /// The index of the connection that made or last claimed it.
    bound: u64,
    /// Answer order, for retirement.
    order: u64,
}

#[derive(Debug)]
struct User {
    name: Box<[u8]>,
    secret: u64,
    /// The index of the last accepted handshake.
    version: u64,
    /// Answers counted since the last retirement (skynet `index`).
    order: u64,
    conn: Option<ConnId>,
    cache: HashMap<u32, Entry>,
    pending: usize,
    cached_bytes: usize,
}

#[derive(Debug)]
enum Phase {
    Handshake,
    Active(UserId),
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    /// An incomplete packet.
    buf: Vec<u8>,
}

/// The gate: users, their response caches, and their connections.
#[derive(Debug)]
pub struct MsgGate {
    limits: GateLimits,
    users: HashMap<UserId, User>,
    by_name: HashMap<Box<[u8]>, UserId>,
    conns: HashMap<ConnId, Conn>,
    next_user: u64,
    actions: VecDeque<Action>,
}

impl Default for MsgGate {
    fn default() -> Self {
        Self::new(GateLimits::default())
    }
}

impl MsgGate {
    /// An empty gate.
    pub fn new(limits: GateLimits) -> Self {
        MsgGate {
            limits,
            users: HashMap::new(),
            by_name: HashMap::new(),
            conns: HashMap::new(),
            next_user: 1,
            actions: VecDeque::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &GateLimits {
        &self.limits
    }

    // ---- the embedding program's side -------------------------------------

    /// Lets `username` (see [`packet::username`]) log in with `secret`, the
    /// secret of its login; skynet's `msgserver.login`.
    pub fn login(&mut self, username: &[u8], secret: u64) -> Result<UserId, LoginError> {
        if self.by_name.contains_key(username) {
            return Err(LoginError::AlreadyOnline);
        }
        if self.users.len() >= self.limits.max_users {
            return Err(LoginError::Full);
        }
        let id = UserId(self.next_user);
        self.next_user += 1;
        let name: Box<[u8]> = username.into();
        self.by_name.insert(name.clone(), id);
        self.users.insert(
            id,
            User {
                name,
                secret,
                version: 0,
                order: 0,
                conn: None,
                cache: HashMap::new(),
                pending: 0,
                cached_bytes: 0,
            },
        );
        Ok(id)
    }

    /// Logs `user` out: forgets it and its cache and closes its connection.
    /// Returns whether it was logged in.
    pub fn logout(&mut self, user: UserId) -> bool {
        self.remove_user(user, CloseReason::LoggedOut)
    }

    /// Like [`logout`](Self::logout), closing with [`CloseReason::Kicked`]:
    /// what the login server asks for when the user logs in again elsewhere.
    pub fn kick(&mut self, user: UserId) -> bool {
        self.remove_user(user, CloseReason::Kicked)
    }

    fn remove_user(&mut self, user: UserId, reason: CloseReason) -> bool {
        let Some(u) = self.users.remove(&user) else {
            return false;
        };
        self.by_name.remove(&u.name);
        if let Some(conn) = u.conn {
            self.conns.remove(&conn);
            self.actions.push_back(Action::Close { conn, reason });
        }
        true
    }

    /// The id of a logged-in username.
    pub fn user_id(&self, username: &[u8]) -> Option<UserId> {
        self.by_name.get(username).copied()
    }

    /// A logged-in user's name.
    pub fn username(&self, user: UserId) -> Option<&[u8]> {
        self.users.get(&user).map(|u| &*u.name)
    }

    /// The connection a user is on, if any.
    pub fn connection_of(&self, user: UserId) -> Option<ConnId> {
        self.users.get(&user).and_then(|u| u.conn)
    }

    /// Logged-in users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Entries (running and answered) in a user's response cache.
    pub fn cached_entries(&self, user: UserId) -> usize {
        self.users.get(&user).map_or(0, |u| u.cache.len())
    }

    /// Answers the request `session` of `user`. `ok = false` sends skynet's
    /// failure answer (empty payload). The answer is cached and sent to the
    /// connection that asked, if it is still the user's.
    pub fn respond(
        &mut self,
        user: UserId,
        session: u32,
        payload: &[u8],
        ok: bool,
    ) -> Result<(), RespondError> {
        let limits = self.limits;
        let u = self.users.get_mut(&user).ok_or(RespondError::UnknownUser)?;
        let e = match u.cache.get_mut(&session) {
            Some(e) if e.packet.is_none() => e,
            _ => return Err(RespondError::NotPending),
        };
        let mut p = Vec::with_capacity(payload.len() + 7);
        let mut result = Ok(());
        if packet::write_response(if ok { payload } else { b"" }, ok, session, &mut p).is_err() {
            p.clear();
            let _ = packet::write_response(b"", false, session, &mut p);
            result = Err(RespondError::TooLarge);
        }
        e.version = Some(e.bound);
        e.order = u.order;
        u.order += 1;
        u.pending -= 1;
        u.cached_bytes += p.len();
        if let Some(conn) = e.conn.take()
            && u.conn == Some(conn)
        {
            push_send(&mut self.actions, conn, &p);
        }
        e.packet = Some(p);
        retire(u, &limits);
        result
    }

    // ---- the shard's side --------------------------------------------------

    /// A new connection; its first packet must be the handshake.
    pub fn connect(&mut self, conn: ConnId) -> Result<(), Full> {
        if self.conns.len() >= self.limits.max_connections && !self.conns.contains_key(&conn) {
            return Err(Full);
        }
        self.conns.insert(
            conn,
            Conn {
                phase: Phase::Handshake,
                buf: Vec::new(),
            },
        );
        Ok(())
    }

    /// Bytes received on `conn` (all consumed; ignored for a connection the
    /// gate does not know or has closed).
    pub fn recv(&mut self, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut buf = std::mem::take(&mut c.buf);
        buf.extend_from_slice(data);
        let mut used = 0;
        while self.conns.contains_key(&conn) {
            let rest = &buf[used..];
            if let Some(h) = rest.first_chunk::<2>()
                && u16::from_be_bytes(*h) as usize > self.limits.max_packet
            {
                self.close(conn, CloseReason::PacketTooLarge);
                break;
            }
            let Some((content, n)) = packet::read_packet(rest) else {
                break;
            };
            let content = content.to_vec();
            used += n;
            self.on_packet(conn, &content);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            buf.drain(..used);
            c.buf = buf;
        }
    }

    /// The transport lost `conn` (peer close, reset, timeout).
    pub fn closed(&mut self, conn: ConnId) {
        self.forget_conn(conn);
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if self.forget_conn(conn) {
            // Afk comes after the close, as skynet's disconnect handler runs
            // once the socket is gone.
            let afk = self.actions.pop_back();
            self.actions.push_back(Action::Close { conn, reason });
            self.actions.extend(afk);
        } else {
            self.actions.push_back(Action::Close { conn, reason });
        }
    }

    /// Drops `conn`; returns whether that queued an [`Action::Afk`].
    fn forget_conn(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(&conn) else {
            return false;
        };
        if let Phase::Active(user) = c.phase
            && let Some(u) = self.users.get_mut(&user)
            && u.conn == Some(conn)
        {
            u.conn = None;
            self.actions.push_back(Action::Afk { user });
            return true;
        }
        false
    }

    fn on_packet(&mut self, conn: ConnId, content: &[u8]) {
        let phase = match self.conns.get(&conn) {
            Some(c) => match c.phase {
                Phase::Handshake => None,
                Phase::Active(user) => Some(user),
            },
            None => return,
        };
        match phase {
            None => self.handshake(conn, content),
            Some(user) => self.request(conn, user, content),
        }
    }

    fn check_handshake(&self, content: &[u8]) -> Result<(UserId, u64), HandshakeCode> {
        let f = HandshakeFields::split(content).ok_or(HandshakeCode::UserNotFound)?;
        let id = self
            .user_id(f.username)
            .ok_or(HandshakeCode::UserNotFound)?;
        let u = &self.users[&id];
        let index = packet::parse_index(f.index).ok_or(HandshakeCode::BadRequest)?;
        let hmac = b64::decode(f.hmac).map_err(|_| HandshakeCode::BadRequest)?;
        let index = match index {
            Index::Value(i) if i > u.version => i,
            _ => return Err(HandshakeCode::IndexExpired),
        };
        if hmac != crypt::hmac_hash(u.secret, f.signed).to_le_bytes() {
            return Err(HandshakeCode::Unauthorized);
        }
        Ok((id, index))
    }

    fn handshake(&mut self, conn: ConnId, content: &[u8]) {
        match self.check_handshake(content) {
            Ok((user, index)) => {
                let u = self.users.get_mut(&user).expect("checked");
                u.version = index;
                let old = u.conn.replace(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.phase = Phase::Active(user);
                }
                if let Some(old) = old.filter(|&o| o != conn) {
                    self.conns.remove(&old);
                    self.actions.push_back(Action::Close {
                        conn: old,
                        reason: CloseReason::Replaced,
                    });
                }
                let mut p = Vec::new();
                let _ = packet::write_packet(HandshakeCode::Ok.text(), &mut p);
                push_send(&mut self.actions, conn, &p);
                self.actions.push_back(Action::Online { user, conn });
            }
            Err(code) => {
                let mut p = Vec::new();
                let _ = packet::write_packet(code.text(), &mut p);
                push_send(&mut self.actions, conn, &p);
                self.close(conn, CloseReason::Handshake(code));
            }
        }
    }

    fn request(&mut self, conn: ConnId, user: UserId, content: &[u8]) {
        let Some((payload, session)) = packet::parse_request(content) else {
            self.close(conn, CloseReason::ShortRequest);
            return;
        };
        let limits = self.limits;
        let Some(u) = self.users.get_mut(&user) else {
            return;
        };
        let version = u.version;
        match u.cache.get_mut(&session) {
            // Seen on this very connection and answered: a new request.
            Some(e) if e.version == Some(version) && e.packet.is_some() => {
                let freed = e.packet.as_ref().map_or(0, Vec::len);
                u.cache.remove(&session);
                u.cached_bytes -= freed;
            }
            // Repeated twice on this connection while running.
            Some(e) if e.version == Some(version) => {
                u.cache.remove(&session);
                u.pending -= 1;
                self.close(conn, CloseReason::ConflictSession(session));
                return;
            }
            // Asked on an earlier connection (or a first repeat of a running
            // one here): the cached answer, now or when ready.
            Some(e) => {
                e.version = Some(version);
                e.bound = version;
                e.order = u.order;
                match &e.packet {
                    Some(p) => {
                        u.order += 1;
                        push_send(&mut self.actions, conn, p);
                        retire(u, &limits);
                    }
                    None => e.conn = Some(conn),
                }
                return;
            }
            None => {}
        }
        if u.pending >= limits.max_pending {
            self.close(conn, CloseReason::TooManyPending);
            return;
        }
        u.pending += 1;
        u.cache.insert(
            session,
            Entry {
                conn: Some(conn),
                packet: None,
                version: None,
                bound: version,
                order: 0,
            },
        );
        self.actions.push_back(Action::Request {
            user,
            session,
            payload: payload.to_vec(),
        });
    }
}

/// Queues bytes for `conn`, joining them to a send already queued last.
fn push_send(actions: &mut VecDeque<Action>, conn: ConnId, bytes: &[u8]) {
    if let Some(Action::Send { conn: c, bytes: b }) = actions.back_mut()
        && *c == conn
    {
        b.extend_from_slice(bytes);
        return;
    }
    actions.push_back(Action::Send {
        conn,
        bytes: bytes.to_vec(),
    });
}

/// skynet's `retire_response`, plus the byte limit.
fn retire(u: &mut User, limits: &GateLimits) {
    let e = limits.expired_number.max(1);
    if u.order >= 2 * e {
        let mut max = 0;
        let mut freed = 0;
        u.cache.retain(|_, p| {
            if p.packet.is_none() {
                return true;
            }
            if p.order < e {
                freed += p.packet.as_ref().map_or(0, Vec::len);
                return false;
            }
            p.order -= e;
            max = max.max(p.order);
            true
        });
        u.cached_bytes -= freed;
        u.order = max + 1;
    }
    if u.cached_bytes > limits.max_cache_bytes {
        let mut answered: Vec<(u64, u32)> = u
            .cache
            .iter()
            .filter(|(_, p)| p.packet.is_some())
            .map(|(&s, p)| (p.order, s))
            .collect();
        answered.sort_unstable();
        for (_, s) in answered {
            if u.cached_bytes <= limits.max_cache_bytes {
                break;
            }
            if let Some(p) = u.cache.remove(&s).and_then(|p| p.packet) {
                u.cached_bytes -= p.len();
            }
        }
    }
}
