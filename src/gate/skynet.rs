//! skynet's login server and msgserver gate, served by the engine inside the
//! application's process: existing skynet clients (`examples/login/client.lua`)
//! work unchanged.
//!
//! [`Builder::start`] binds two listeners on every shard: the **login
//! server** (challenge, DH64, hmac, DES token; answers `200 base64(subid)`,
//! `401`, `403` or `406`, then closes) and the **msgserver gate** (handshake
//! line, then u16 packets of `payload ‖ u32 session` answered with
//! `payload ‖ u8 ok ‖ u32 session`). The application decides what the gate
//! cannot:
//!
//! - [`Auth::auth`] reads a decrypted token and names the game server and
//!   user, or refuses; [`Auth::login`] may refuse a user's login (`403`).
//!   No password logic lives in the gate. Tokens naming another game server
//!   than [`Builder::server`] get `403`.
//! - Worker threads receive [`Event`]s (one bounded queue each; all events
//!   of a user go to one worker, in order) and answer each
//!   [`Event::Request`] with [`Handle::respond`]`(user, session, payload, ok)`.
//! - [`Handle::logout`], [`Handle::kick`] and [`Handle::login`] (for users
//!   logged in by the application's own login server) act on users.
//!
//! The gate keeps skynet's rules: users stay logged in while disconnected;
//! a client that reconnects with a higher index and repeats a session gets
//! the cached answer (or the answer when it is ready) and the request does
//! not run twice; answered entries retire after `2 × expired_number`
//! answers. A second login of a uid replaces the first ([`Event::Logout`]
//! for the old user). See [`crate::proto::skynet::gate`] for the exact
//! rules and where they differ from skynet's on purpose, and
//! [`crate::engine::skynet`] for how a connection finds the shard that
//! holds its user.
//!
//! Memory stays bounded: a worker that does not keep up fills its queue and
//! the shards stop reading requests until it drains; a client that does not
//! read its answers stops being read once `max_output` bytes wait for it;
//! users, connections, requests in flight and cached bytes have limits
//! ([`GateLimits`]).
//!
//! ```no_run
//! use ringgate::gate::skynet::{Auth, Builder, Event, Refusal};
//! use ringgate::proto::skynet::login::Token;
//!
//! #[derive(Debug)]
//! struct Passwords;
//! impl Auth for Passwords {
//!     fn auth(&self, token: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
//!         let t = Token::parse(token).ok_or(Refusal::Unauthorized)?;
//!         if t.password == b"password" {
//!             Ok((t.server, t.user))
//!         } else {
//!             Err(Refusal::Unauthorized)
//!         }
//!     }
//! }
//!
//! let (handle, receivers) = Builder::new(
//!     "127.0.0.1:8001".parse().unwrap(),
//!     "127.0.0.1:8888".parse().unwrap(),
//!     Passwords,
//! )
//! .start()
//! .unwrap();
//! for rx in receivers {
//!     let handle = handle.clone();
//!     std::thread::spawn(move || {
//!         while let Some(ev) = rx.recv() {
//!             if let Event::Request { user, session, payload } = ev {
//!                 let _ = handle.respond(user, session, payload, true); // echo
//!             }
//!         }
//!     });
//! }
//! ```

use crate::engine::skynet::{SkynetCommand, SkynetHub, SkynetShared};
use crate::engine::{Config, Door, Gate, SetupError, Stats};
use crate::gate::Backend;
use crate::gate::events::{Queues, Running};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use crate::engine::skynet::{
    Refusal, SkynetAuth as Auth, SkynetEvent as Event, SkynetSettings as Settings,
    SkynetUser as User,
};
pub use crate::gate::events::RecvError;

/// One worker's queue of events (users spread by uid over the workers).
pub type EventReceiver = crate::gate::events::EventReceiver<Event>;
pub use crate::proto::skynet::gate::GateLimits;
pub use crate::proto::skynet::login::LoginLimits;

/// The gate has stopped (or is stopping): the command was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gate has stopped")]
pub struct Stopped;

/// Configures and starts the login server and msgserver gate.
#[derive(Debug, Clone)]
pub struct Builder {
    cfg: Config,
    gate: SocketAddr,
    auth: Arc<dyn Auth>,
    settings: Settings,
    workers: usize,
    queue_capacity: usize,
    command_capacity: usize,
}

impl Builder {
    /// A login server on `login` and a gate on `gate` for the game server
    /// `sample`, deciding logins with `auth`; one worker.
    pub fn new(login: SocketAddr, gate: SocketAddr, auth: impl Auth + 'static) -> Builder {
        Builder {
            cfg: Config {
                listen: login,
                ..Config::default()
            },
            gate,
            auth: Arc::new(auth),
            settings: Settings::default(),
            workers: 1,
            queue_capacity: 4096,
            command_capacity: 4096,
        }
    }

    /// The game server name logins must name (skynet's `servername`).
    pub fn server(mut self, name: impl Into<Vec<u8>>) -> Self {
        self.settings.server = name.into();
        self
    }

    /// Number of shards (threads with one ring each).
    pub fn shards(mut self, n: usize) -> Self {
        self.cfg.shards = n.max(1);
        self
    }

    /// Number of worker queues (one [`EventReceiver`] each).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Events each worker queue holds before the shards stop reading.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Commands each shard's queue holds before [`Handle`] calls wait.
    pub fn command_capacity(mut self, n: usize) -> Self {
        self.command_capacity = n.max(1);
        self
    }

    /// Time a login has to reach its answer, and a gate connection to send
    /// its whole handshake packet.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.cfg.handshake_timeout = t;
        self
    }

    /// Close a gate connection that sent nothing for this long (its user
    /// stays logged in).
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.cfg.idle_timeout = t;
        self
    }

    /// Login line limits.
    pub fn login_limits(mut self, limits: LoginLimits) -> Self {
        self.settings.login = limits;
        self
    }

    /// Gate limits, including skynet's `expired_number`.
    pub fn gate_limits(mut self, limits: GateLimits) -> Self {
        self.settings.gate = limits;
        self
    }

    /// Longest handshake packet; a longer one closes the connection.
    pub fn max_handshake(mut self, bytes: usize) -> Self {
        self.settings.max_handshake = bytes;
        self
    }

    /// Answer bytes waiting for one client before its requests stop being
    /// read.
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.settings.max_output = bytes.max(1);
        self
    }

    /// Any other engine setting (buffers, keepalive, pinning...). The
    /// listeners and the backend are always the skynet doors'.
    pub fn engine(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.cfg);
        self
    }

    /// Binds and starts the shards; returns the handle and one receiver per
    /// worker.
    pub fn start(self) -> Result<(Handle, Vec<EventReceiver>), SetupError> {
        let shards = self.cfg.shards.max(1);
        let mut queues = Queues::new(self.workers, self.queue_capacity);
        let skynet = Arc::new(SkynetShared::new(shards, self.command_capacity));
        let hub = Arc::new(SkynetHub {
            auth: self.auth,
            senders: std::mem::take(&mut queues.senders),
            wanted: queues.wanted.clone(),
            settings: self.settings,
            shared: skynet.clone(),
        });
        let gate = Gate::start(Config {
            shards,
            listen_door: Some(Door::SkynetLogin),
            doors: vec![(self.gate, Door::MsgServer)],
            backend: Backend::Echo,
            skynet: Some(hub),
            ..self.cfg
        })?;
        let handle = Handle {
            inner: Arc::new(Inner {
                login: gate.local_addr(),
                gate_addr: gate.door_addrs()[0],
                skynet,
                next_shard: AtomicUsize::new(0),
                run: Running::new(gate),
            }),
        };
        let receivers = queues.receivers(&handle.inner.run.shared);
        Ok((handle, receivers))
    }
}

struct Inner {
    login: SocketAddr,
    gate_addr: SocketAddr,
    skynet: Arc<SkynetShared>,
    next_shard: AtomicUsize,
    run: Running,
}

/// Answers requests and acts on users, from any thread. Commands about one
/// user are applied in the order one thread made them.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("login", &self.inner.login)
            .field("gate", &self.inner.gate_addr)
            .finish()
    }
}

impl Handle {
    /// The login server's address (with the real port when 0 was asked).
    pub fn login_addr(&self) -> SocketAddr {
        self.inner.login
    }

    /// The msgserver gate's address.
    pub fn gate_addr(&self) -> SocketAddr {
        self.inner.gate_addr
    }

    fn command(&self, shard: usize, cmd: SkynetCommand) -> Result<(), Stopped> {
        self.inner
            .skynet
            .command(&self.inner.run.shared, shard, cmd)
            .map_err(|_| Stopped)
    }

    /// Answers request `session` of `user` (skynet's failure answer, empty,
    /// when `ok` is false). The answer is cached for a repeat after a
    /// reconnect. Answers for users gone meanwhile are dropped. Waits only
    /// while the shard's command queue is full.
    pub fn respond(
        &self,
        user: User,
        session: u32,
        payload: impl Into<Bytes>,
        ok: bool,
    ) -> Result<(), Stopped> {
        self.command(
            user.shard(),
            SkynetCommand::Respond {
                user,
                session,
                payload: payload.into(),
                ok,
            },
        )
    }

    /// Logs `user` out: its connection closes and its cache is dropped.
    pub fn logout(&self, user: User) -> Result<(), Stopped> {
        self.command(user.shard(), SkynetCommand::Logout(user))
    }

    /// Kicks `user` (as logout; what a login elsewhere asks for).
    pub fn kick(&self, user: User) -> Result<(), Stopped> {
        self.command(user.shard(), SkynetCommand::Kick(user))
    }

    /// Lets `uid` connect to the gate with `secret` (skynet's
    /// `msgserver.login`, for a login server of the application's own) and
    /// returns the subid to give the client. The user arrives as
    /// [`Event::Login`]; a previous login of `uid` is kicked.
    pub fn login(&self, uid: &[u8], secret: u64) -> Result<Vec<u8>, Stopped> {
        let shards = self.inner.skynet.commands.len();
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % shards;
        let subid = self.inner.skynet.subid_for(shard);
        self.command(
            shard,
            SkynetCommand::Login {
                uid: uid.to_vec(),
                secret,
                subid,
            },
        )?;
        Ok(subid.to_string().into_bytes())
    }

    /// The engine's counters (connections accepted, handshakes failed...).
    pub fn stats(&self) -> Stats {
        self.inner.run.stats()
    }

    /// Closes every connection and stops the shards; each
    /// [`EventReceiver`] ends after the last events.
    pub fn shutdown(&self) {
        self.inner.run.shutdown();
    }

    /// Waits until every shard has exited (after [`shutdown`](Self::shutdown)).
    pub fn join(&self) {
        self.inner.run.join();
    }
}
