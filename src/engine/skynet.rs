//! What the shards exchange with the embedding program for skynet's login
//! server and msgserver gate: the [`SkynetAuth`] decisions, the
//! [`SkynetEvent`]s pushed into bounded worker queues, and the commands
//! (answers, logout, kick, login) queued per shard.
//!
//! Two front doors use them ([`Door::SkynetLogin`](super::Door) and
//! [`Door::MsgServer`](super::Door)); the shard side is in
//! `shard/skynet.rs`, the application's side in `gate::skynet`.
//!
//! # Where a user lives, and how its connections get there
//!
//! A user (its secret, its handshake index, its response cache) lives on
//! the shard that ran its login, in that shard's
//! [`MsgGate`](crate::proto::skynet::gate::MsgGate). The subid the login
//! answers is a decimal number `n × shards + shard`: the gate connection's
//! first packet names the subid inside its username, so whichever shard the
//! kernel delivers the connection to reads that packet, computes the owner
//! and, if it is another shard, hands the connection over with the bytes
//! read (the same hand-over as an SCP resume). This is chosen over looking
//! the user up in a shared table because it needs nothing shared on the
//! data path and no reply: every shard can route from the bytes alone, as
//! with SCP session ids. The subid is opaque to skynet's clients (they echo
//! what they were given), so nothing on the wire changes.
//!
//! The one shared structure is a map from uid to its current login, taken
//! under a mutex only while logging in or out: a second login of a uid
//! (skynet's `gated.lua` rule) kicks the first wherever it lives.

use super::Shared;
use crate::proto::skynet::gate::GateLimits;
use crate::proto::skynet::login::LoginLimits;
use bytes::Bytes;
use crossbeam_channel::Sender;
use crossbeam_queue::{ArrayQueue, SegQueue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::proto::skynet::login::Refusal;

/// A logged-in user of a skynet gate. Its low 16 bits name the shard that
/// holds it; ids are never reused while the gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SkynetUser(pub u64);

impl SkynetUser {
    pub(crate) fn new(shard: usize, local: u64) -> Self {
        SkynetUser(local << 16 | shard as u64)
    }

    /// The shard that holds the user.
    pub fn shard(self) -> usize {
        (self.0 & 0xffff) as usize
    }

    /// The id in that shard's gate.
    pub(crate) fn local(self) -> u64 {
        self.0 >> 16
    }
}

/// The embedding program's decisions at login (no password logic lives in
/// the gate). Called on a shard's thread while the login connection waits:
/// it must answer quickly and never block on the gate itself.
pub trait SkynetAuth: Send + Sync + std::fmt::Debug {
    /// Checks a decrypted token (skynet's example sends
    /// `base64(user)@base64(server):base64(password)`, see
    /// [`Token::parse`](crate::proto::skynet::login::Token::parse)); returns
    /// the game server name and the user id, or a refusal (normally
    /// [`Refusal::Unauthorized`], answered `401`).
    fn auth(&self, token: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Refusal>;

    /// Whether `uid` may log in to `server` now (skynet's `login_handler`):
    /// a refusal is answered with its code (normally `403`). Called only
    /// when `server` is this gate's name; any other name gets `403` first.
    fn login(&self, server: &[u8], uid: &[u8]) -> Result<(), Refusal> {
        let _ = (server, uid);
        Ok(())
    }
}

/// What happened at the gate, for the worker that serves the user. A user's
/// events arrive in order at one worker: `Login`, then `Online`, `Request`s
/// and `Afk` as its connections come and go, then one `Logout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkynetEvent {
    /// A login succeeded (through the login door, or
    /// `Handle::login`): the client will connect with this subid.
    Login {
        /// The user.
        user: SkynetUser,
        /// Its uid, as the token named it.
        uid: Vec<u8>,
        /// The subid sent to the client.
        subid: Vec<u8>,
    },
    /// A gate handshake succeeded: the user is connected.
    Online {
        /// The user.
        user: SkynetUser,
    },
    /// A request to run; answer with `Handle::respond(user, session, ..)`.
    Request {
        /// The user.
        user: SkynetUser,
        /// The client's session number.
        session: u32,
        /// The request.
        payload: Bytes,
    },
    /// The user's connection ended; it stays logged in (skynet's `afk`).
    Afk {
        /// The user.
        user: SkynetUser,
    },
    /// The user is gone (logged out, kicked, or replaced by a new login of
    /// its uid); answers for it are dropped.
    Logout {
        /// The user.
        user: SkynetUser,
    },
}

impl SkynetEvent {
    /// The user the event is about.
    pub fn user(&self) -> SkynetUser {
        match self {
            SkynetEvent::Login { user, .. }
            | SkynetEvent::Online { user }
            | SkynetEvent::Request { user, .. }
            | SkynetEvent::Afk { user }
            | SkynetEvent::Logout { user } => *user,
        }
    }
}

/// A command from the application to the shard holding a user.
#[derive(Debug)]
pub(crate) enum SkynetCommand {
    Respond {
        user: SkynetUser,
        session: u32,
        payload: Bytes,
        ok: bool,
    },
    Logout(SkynetUser),
    Kick(SkynetUser),
    Login {
        uid: Vec<u8>,
        secret: u64,
        subid: u64,
    },
}

/// Settings of the skynet doors.
#[derive(Debug, Clone)]
pub struct SkynetSettings {
    /// The game server name tokens must name (skynet's example: `sample`).
    pub server: Vec<u8>,
    /// Login line limits.
    pub login: LoginLimits,
    /// Gate limits and skynet's `expired_number`.
    pub gate: GateLimits,
    /// Longest handshake packet (content bytes); a longer one closes the
    /// connection unanswered. skynet's clients send about 50 bytes.
    pub max_handshake: usize,
    /// Answer bytes queued for one gate connection before the gate stops
    /// reading its requests (the client is not reading its answers).
    pub max_output: usize,
}

impl Default for SkynetSettings {
    fn default() -> Self {
        SkynetSettings {
            server: b"sample".to_vec(),
            login: LoginLimits::default(),
            gate: GateLimits::default(),
            max_handshake: 1024,
            max_output: 256 << 10,
        }
    }
}

/// What the application's handle and every shard share: the command queues,
/// the uid map, subid numbering.
#[derive(Debug)]
pub struct SkynetShared {
    pub(crate) commands: Vec<ArrayQueue<SkynetCommand>>,
    /// Users to kick because their uid logged in on another shard.
    pub(crate) kicks: Vec<SegQueue<SkynetUser>>,
    /// uid → its current login.
    pub(crate) registry: Mutex<HashMap<Vec<u8>, SkynetUser>>,
    next_subid: AtomicU64,
}

impl SkynetShared {
    /// Queues for `shards` shards, `capacity` commands each.
    pub fn new(shards: usize, capacity: usize) -> Self {
        let shards = shards.max(1);
        SkynetShared {
            commands: (0..shards)
                .map(|_| ArrayQueue::new(capacity.max(1)))
                .collect(),
            kicks: (0..shards).map(|_| SegQueue::new()).collect(),
            registry: Mutex::new(HashMap::new()),
            next_subid: AtomicU64::new(1),
        }
    }

    /// A fresh subid for a login on `shard` (see the module documentation).
    pub(crate) fn subid_for(&self, shard: usize) -> u64 {
        let n = self.next_subid.fetch_add(1, Ordering::Relaxed);
        n * self.commands.len() as u64 + shard as u64
    }

    /// The shard a subid names, if it is one of ours.
    pub(crate) fn shard_of_subid(&self, subid: &[u8]) -> Option<usize> {
        let n: u64 = std::str::from_utf8(subid).ok()?.parse().ok()?;
        Some((n % self.commands.len() as u64) as usize)
    }

    /// Queues a command for `shard`, waiting while its queue is full; gives
    /// it back once the gate is stopping.
    pub(crate) fn command(
        &self,
        engine: &Shared,
        shard: usize,
        mut cmd: SkynetCommand,
    ) -> Result<(), SkynetCommand> {
        let Some(q) = self.commands.get(shard) else {
            return Err(cmd);
        };
        let mut spins = 0u32;
        loop {
            if engine.stop.load(Ordering::Acquire) {
                return Err(cmd);
            }
            match q.push(cmd) {
                Ok(()) => break,
                Err(back) => cmd = back,
            }
            engine.wake(shard);
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        engine.wake(shard);
        Ok(())
    }
}

/// The shards' side of the skynet doors: the program's decisions, the
/// worker queues' senders, the settings. Only the shards hold it, so the
/// worker queues disconnect once the last shard has exited.
#[derive(Debug)]
pub struct SkynetHub {
    pub(crate) auth: Arc<dyn SkynetAuth>,
    pub(crate) senders: Vec<Sender<SkynetEvent>>,
    /// Per worker: a shard found its queue full and wants a wake-up.
    pub(crate) wanted: Arc<[AtomicBool]>,
    pub(crate) settings: SkynetSettings,
    pub(crate) shared: Arc<SkynetShared>,
}

impl SkynetHub {
    /// The worker queue that serves `user`.
    pub(crate) fn worker_of(&self, user: SkynetUser) -> usize {
        ((user.local() as usize).wrapping_add(user.shard())) % self.senders.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_subids_name_their_shard() {
        let u = SkynetUser::new(3, 77);
        assert_eq!((u.shard(), u.local()), (3, 77));
        let s = SkynetShared::new(4, 8);
        for shard in 0..4 {
            let subid = s.subid_for(shard).to_string();
            assert_eq!(s.shard_of_subid(subid.as_bytes()), Some(shard));
        }
        assert_eq!(s.shard_of_subid(b"x1"), None);
        assert_eq!(s.shard_of_subid(b""), None);
    }
}
