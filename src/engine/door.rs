//! Front doors: what dialect a listener speaks, and how a connection's
//! greeting goes for each, with no I/O.
//!
//! A gate has a primary listener ([`Config::listen`](super::Config), SCP or
//! plain) and any number of further ones ([`Config::doors`](super::Config)).
//! Every shard binds every listener with SO_REUSEPORT; an accept's tag names
//! the listener, so each connection knows its [`Door`], and its greeting is
//! the door's ([`DoorGreeting`]). After the greeting a session is a
//! [`Relay`](super::session::Relay) whatever the door, and its client side's
//! bytes go through the door's codec ([`Outbound`](super::outbound::Outbound)).
//!
//! A door that needs its own sans-IO greeting adds a variant to
//! [`DoorGreeting`]; one that needs its own codec adds one to `Outbound`.
//!
//! skynet's two doors ([`Door::SkynetLogin`], [`Door::MsgServer`]) open no
//! session: a login is served within its greeting and closed; a msgserver
//! connection's greeting is its first packet, which names the shard holding
//! its user (see [`super::skynet`]), and after it the shard's msgserver
//! gate reads the connection.
//!
//! # The stable-connection door and its resume index
//!
//! cloudwu's stable-connection dialect names no session on the wire: a
//! resume carries only the count of bytes the client received, `r`, and the
//! fingerprint of the plaintext it received up to the last 256-byte boundary
//! `k = r / 256`. Each shard keeps a [`StableIndex`] from `(k, fingerprint)`
//! to the sessions whose sent plaintext had that fingerprint at boundary `k`,
//! for every boundary their replay window still covers (a session's entries
//! are added as its sends cross boundaries and removed as its window moves
//! past them: at most `reuse_buffer / 256 + 2` per session). A lookup is one
//! hash probe plus a check of each candidate, which is almost always one.
//!
//! A resume may land on any shard. The shard that accepts it looks in its
//! own index; on a miss it hands the connection to the next shard (the same
//! hand-over as an SCP resume), which looks in its own, until every shard
//! has looked once: a resume costs at most one probe per shard and
//! `shards - 1` hand-overs, whatever the number of sessions, and nothing is
//! shared or locked on the data path. A resume that matches nowhere is
//! closed (the dialect has no error codes).
//!
//! Two sessions may share a fingerprint at a boundary (32 bits). The server
//! answers for one candidate and attaches the connection only if the client
//! then proves that candidate's secret (the hmac of the challenge) and the
//! candidate has received exactly what the answer said; otherwise it closes
//! the connection and moves that candidate to the back of its key, so that
//! the client's next attempt tries the other. A collision therefore costs
//! the colliding client a failed attempt, never another session's bytes.

use super::session::{Greeted, Greeting};
use super::session_id::IdSpace;
use crate::proto::skynet::login::{LoginLimits, LoginServer};
use crate::proto::stable::{ServerHandshake, ServerStep, StableError};
use std::collections::HashMap;

/// The dialect a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// goscon's SCP.
    Scp,
    /// A plain TCP relay.
    Plain,
    /// cloudwu's stable-connection dialect.
    Stable,
    /// A WebSocket (see [`super::ws`]), carrying packets or SCP.
    Ws(super::ws::WsMode),
    /// A WebSocket over TLS (`wss://`), with the gate's certificate
    /// ([`Config::tls`](super::Config)); otherwise as [`Door::Ws`].
    Wss(super::ws::WsMode),
    /// skynet's login server (see [`super::skynet`]).
    SkynetLogin,
    /// skynet's msgserver gate (see [`super::skynet`]).
    MsgServer,
}

impl Door {
    /// Whether connections through this door have a greeting before their
    /// session (and count against `max_pending_handshakes`).
    pub fn greets(self) -> bool {
        !matches!(self, Door::Plain)
    }

    /// Whether this is one of skynet's doors.
    pub fn is_skynet(self) -> bool {
        matches!(self, Door::SkynetLogin | Door::MsgServer)
    }

    /// What a WebSocket door's messages carry (`None`: not a WebSocket).
    pub fn ws_mode(self) -> Option<super::ws::WsMode> {
        match self {
            Door::Ws(m) | Door::Wss(m) => Some(m),
            _ => None,
        }
    }

    /// Whether connections through this door speak TLS first.
    pub fn tls(self) -> bool {
        matches!(self, Door::Wss(_))
    }
}

impl std::fmt::Display for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Door::Scp => "scp",
            Door::Plain => "plain",
            Door::Stable => "stable-connection",
            Door::Ws(super::ws::WsMode::Packets) => "websocket-packets",
            Door::Ws(super::ws::WsMode::Scp) => "websocket-scp",
            Door::Wss(super::ws::WsMode::Packets) => "websocket-tls-packets",
            Door::Wss(super::ws::WsMode::Scp) => "websocket-tls-scp",
            Door::SkynetLogin => "skynet-login",
            Door::MsgServer => "msgserver",
        })
    }
}

/// A connection's greeting, by door.
// Connections hold it boxed, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DoorGreeting {
    /// SCP's first record.
    Scp(Greeting),
    /// The stable-connection handshake.
    Stable(StableGreeting),
    /// A skynet login, start to answer.
    SkynetLogin(Box<LoginServer>),
    /// The bytes of a msgserver connection up to its first (handshake)
    /// packet, which names the shard that holds the user.
    MsgServer(Vec<u8>),
}

impl DoorGreeting {
    /// The greeting for a connection through `door`, which has been looked
    /// at by `hops` shards before this one (hand-overs of unmatched stable
    /// resumes).
    pub fn new(door: Door, hops: u16) -> Self {
        match door {
            Door::Stable => DoorGreeting::Stable(StableGreeting::new(hops)),
            Door::SkynetLogin => DoorGreeting::SkynetLogin(Box::new(LoginServer::new(
                rand::random(),
                rand::random(),
                LoginLimits::default(),
            ))),
            Door::MsgServer => DoorGreeting::MsgServer(Vec::new()),
            // A WebSocket's upgrade is read by the connection's WebSocket
            // state; in SCP mode this greeting then reads the messages'
            // bytes, in packets mode it only marks the connection as
            // greeting until the upgrade is done (handshake timeout, limit
            // of pending handshakes).
            Door::Scp | Door::Plain | Door::Ws(_) | Door::Wss(_) => {
                DoorGreeting::Scp(Greeting::default())
            }
        }
    }

    /// Takes every byte read so far (for a hand-over).
    pub fn take_raw(&mut self) -> Vec<u8> {
        match self {
            DoorGreeting::Scp(g) => g.take_raw(),
            DoorGreeting::Stable(g) => std::mem::take(&mut g.raw),
            DoorGreeting::MsgServer(raw) => std::mem::take(raw),
            // A login is never handed over: it is served where it landed.
            DoorGreeting::SkynetLogin(_) => Vec::new(),
        }
    }

    /// Bytes for an SCP greeting (see [`Greeting::handle_bytes`]).
    pub fn handle_scp(&mut self, data: &[u8], ids: IdSpace, shards: usize, here: usize) -> Greeted {
        match self {
            DoorGreeting::Scp(g) => g.handle_bytes(data, ids, shards, here),
            _ => Greeted::NeedMore,
        }
    }
}

/// What a stable-connection greeting wants now.
#[derive(Debug, PartialEq, Eq)]
pub enum StableGreeted {
    /// More bytes.
    NeedMore,
    /// A new-session request: answer with [`StableGreeting::accept_new`].
    AnswerNew,
    /// A resume request: find a candidate (see [`StableIndex`]) and answer
    /// with [`StableGreeting::answer_resume`], hand it on, or close.
    Lookup {
        /// Bytes the client received.
        received: u64,
        /// Its fingerprint at boundary `received / 256`.
        fingerprint: u32,
    },
    /// Waiting for the client's proof.
    AwaitingProof,
    /// A new session whose client proved the secret; `rest` is stream.
    New {
        /// The shared secret.
        secret: u64,
        /// Bytes after the proof.
        rest: Vec<u8>,
    },
    /// A resume's proof arrived: check it with [`StableGreeting::proves`]
    /// against the candidate answered for; `rest` is the client's replay
    /// and new stream.
    Proof {
        /// Bytes after the proof.
        rest: Vec<u8>,
    },
    /// Close the connection.
    Refused(StableError),
}

/// The candidate a resume was answered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Session slab index and epoch on this shard.
    pub session: (usize, u32),
    /// What the client said it received.
    pub received: u64,
    /// The fingerprint it named.
    pub fingerprint: u32,
    /// What the answer said the server received.
    pub server_received: u64,
}

/// A stable-connection handshake on the server, read on whichever shard
/// has the connection. Keeps every byte read (bounded by the greeting's
/// receive room) so that an unmatched resume can travel to the next shard
/// and be read again from the start there.
#[derive(Debug)]
pub struct StableGreeting {
    hs: ServerHandshake,
    raw: Vec<u8>,
    used: usize,
    hops: u16,
    /// Set once a resume was answered.
    pub candidate: Option<Candidate>,
}

impl StableGreeting {
    /// A greeting that `hops` shards have looked at before.
    pub fn new(hops: u16) -> Self {
        StableGreeting {
            hs: ServerHandshake::default(),
            raw: Vec::new(),
            used: 0,
            hops,
            candidate: None,
        }
    }

    /// Shards that looked for this resume before this one.
    pub fn hops(&self) -> u16 {
        self.hops
    }

    /// Bytes from the connection (may be empty: to go on after answering).
    pub fn handle_bytes(&mut self, data: &[u8]) -> StableGreeted {
        self.raw.extend_from_slice(data);
        self.used += self.hs.recv(&self.raw[self.used..]);
        match self.hs.poll() {
            ServerStep::NeedMore => StableGreeted::NeedMore,
            ServerStep::AwaitingProof => StableGreeted::AwaitingProof,
            ServerStep::NewSession { .. } => StableGreeted::AnswerNew,
            ServerStep::Resume {
                received,
                fingerprint,
            } => StableGreeted::Lookup {
                received,
                fingerprint,
            },
            ServerStep::Established { secret } => StableGreeted::New {
                secret,
                rest: self.take_rest(),
            },
            ServerStep::Proof => StableGreeted::Proof {
                rest: self.take_rest(),
            },
            ServerStep::Failed(e) => StableGreeted::Refused(e),
        }
    }

    fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.raw.split_off(self.used.min(self.raw.len()));
        self.raw = Vec::new();
        self.used = 0;
        rest
    }

    /// Answers a new-session request; returns the bytes to write.
    pub fn accept_new(&mut self, private_random: u64, challenge: u64) -> Vec<u8> {
        self.hs.accept_new(private_random, challenge).to_vec()
    }

    /// Answers a resume for `candidate`; returns the bytes to write.
    pub fn answer_resume(&mut self, candidate: Candidate, challenge: u64) -> Vec<u8> {
        self.candidate = Some(candidate);
        self.hs
            .answer_resume(candidate.server_received, challenge)
            .to_vec()
    }

    /// After [`StableGreeted::Proof`]: whether the client proved `secret`.
    pub fn proves(&self, secret: u64) -> bool {
        self.hs.proves(secret)
    }
}

/// A session in the index: slab index and epoch.
pub type SessionRef = (usize, u32);

#[derive(Debug)]
enum Bucket {
    One(SessionRef),
    Many(Vec<SessionRef>),
}

/// One shard's index of stable-connection sessions by `(boundary,
/// fingerprint)` (see the module documentation). Sans-IO: the shard keeps
/// it in step with its sessions' fingerprints.
#[derive(Debug, Default)]
pub struct StableIndex {
    map: HashMap<(u64, u32), Bucket>,
    entries: usize,
    probes: u64,
    examined: u64,
}

impl StableIndex {
    /// Records that `session` had `fingerprint` at `boundary`.
    pub fn insert(&mut self, boundary: u64, fingerprint: u32, session: SessionRef) {
        self.entries += 1;
        match self.map.entry((boundary, fingerprint)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Bucket::One(session));
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let b = o.get_mut();
                match b {
                    Bucket::One(first) => *b = Bucket::Many(vec![*first, session]),
                    Bucket::Many(v) => v.push(session),
                }
            }
        }
    }

    /// Forgets one entry for `session` at `(boundary, fingerprint)`.
    pub fn remove(&mut self, boundary: u64, fingerprint: u32, session: SessionRef) {
        let key = (boundary, fingerprint);
        let Some(b) = self.map.get_mut(&key) else {
            return;
        };
        match b {
            Bucket::One(s) if *s == session => {
                self.map.remove(&key);
                self.entries -= 1;
            }
            Bucket::One(_) => {}
            Bucket::Many(v) => {
                if let Some(i) = v.iter().position(|s| *s == session) {
                    v.remove(i);
                    self.entries -= 1;
                }
                if v.len() == 1 {
                    *b = Bucket::One(v[0]);
                }
            }
        }
    }

    /// The first candidate for a resume naming `(received, fingerprint)`
    /// that `fits` accepts (the caller checks it is alive and its window
    /// covers `received`).
    pub fn find(
        &mut self,
        received: u64,
        fingerprint: u32,
        mut fits: impl FnMut(SessionRef) -> bool,
    ) -> Option<SessionRef> {
        self.probes += 1;
        let b = self
            .map
            .get(&(received / crate::proto::stable::CHUNK, fingerprint))?;
        let list: &[SessionRef] = match b {
            Bucket::One(s) => std::slice::from_ref(s),
            Bucket::Many(v) => v,
        };
        for &s in list {
            self.examined += 1;
            if fits(s) {
                return Some(s);
            }
        }
        None
    }

    /// A resume answered for `session` was not proven: the next attempt
    /// with the same key tries the other candidates first.
    pub fn demote(&mut self, boundary: u64, fingerprint: u32, session: SessionRef) {
        if let Some(Bucket::Many(v)) = self.map.get_mut(&(boundary, fingerprint)) {
            if let Some(i) = v.iter().position(|s| *s == session) {
                let s = v.remove(i);
                v.push(s);
            }
        }
    }

    /// Entries held (one per session and boundary its window covers).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Lookups made, and candidates examined by them: what a storm of
    /// resumes costs, independent of how many sessions there are.
    pub fn cost(&self) -> (u64, u64) {
        (self.probes, self.examined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stable::{ClientHandshake, Role, StableSession, hmac};

    #[test]
    fn new_session_greeting_byte_by_byte() {
        let (_, req) = ClientHandshake::new_session(3);
        let mut g = StableGreeting::new(0);
        for b in &req[..15] {
            assert_eq!(
                g.handle_bytes(std::slice::from_ref(b)),
                StableGreeted::NeedMore
            );
        }
        assert_eq!(g.handle_bytes(&req[15..]), StableGreeted::AnswerNew);
        let answer = g.accept_new(4, 5);
        assert_eq!(g.handle_bytes(&[]), StableGreeted::AwaitingProof);
        let b = u64::from_le_bytes(answer[..8].try_into().unwrap());
        let secret = crate::proto::dh64::secret(3, b);
        let proof = hmac(5, secret).to_le_bytes();
        for b in &proof[..7] {
            assert_eq!(
                g.handle_bytes(std::slice::from_ref(b)),
                StableGreeted::AwaitingProof
            );
        }
        let mut last = vec![proof[7]];
        last.extend_from_slice(b"stream");
        assert_eq!(
            g.handle_bytes(&last),
            StableGreeted::New {
                secret,
                rest: b"stream".to_vec()
            }
        );
    }

    #[test]
    fn resume_greeting_keeps_raw_for_a_hand_over() {
        let mut g = StableGreeting::new(1);
        let mut req = 7u64.to_le_bytes().to_vec();
        req.extend_from_slice(&9u32.to_le_bytes());
        assert_eq!(g.handle_bytes(&req[..5]), StableGreeted::NeedMore);
        assert_eq!(
            g.handle_bytes(&req[5..]),
            StableGreeted::Lookup {
                received: 7,
                fingerprint: 9
            }
        );
        let mut dg = DoorGreeting::Stable(g);
        assert_eq!(dg.take_raw(), req);
    }

    #[test]
    fn index_tracks_boundaries_and_collisions() {
        let mut ix = StableIndex::default();
        ix.insert(1, 42, (1, 1));
        ix.insert(1, 42, (2, 1));
        ix.insert(2, 42, (3, 1));
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.find(300, 42, |_| true), Some((1, 1)));
        assert_eq!(ix.find(300, 42, |s| s.0 == 2), Some((2, 1)));
        ix.demote(1, 42, (1, 1));
        assert_eq!(ix.find(300, 42, |_| true), Some((2, 1)));
        assert_eq!(ix.find(200, 42, |_| true), None);
        ix.remove(1, 42, (2, 1));
        ix.remove(1, 42, (1, 1));
        ix.remove(2, 42, (3, 1));
        assert!(ix.is_empty());
        assert!(ix.map.is_empty());
    }

    /// A storm of resumes with random counts and fingerprints against many
    /// indexed sessions: each costs one probe and examines almost nothing.
    #[test]
    fn resume_storm_is_cheap() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ix = StableIndex::default();
        let mut sessions = Vec::new();
        for i in 0..2000usize {
            let mut s = StableSession::new(Role::Server, rng.random(), 65536);
            let n = rng.random_range(0..3000usize);
            s.encrypt(&vec![i as u8; n]);
            for k in s.boundaries() {
                ix.insert(k, s.fingerprint_at(k).unwrap(), (i, 1));
            }
            sessions.push(s);
        }
        let storm = 100_000u64;
        let mut hits = 0;
        for _ in 0..storm {
            let (r, fp) = (rng.random_range(1..4000u64), rng.random::<u32>());
            if ix
                .find(r, fp, |(i, _)| sessions[i].matches(r, fp))
                .is_some()
            {
                hits += 1;
            }
        }
        let (probes, examined) = ix.cost();
        assert_eq!(probes, storm);
        // Random 32-bit fingerprints almost never meet an entry.
        assert!(examined < 10, "examined {examined}");
        assert!(hits <= examined);
    }
}
