//! Embedded mode: the gate inside the application's own process, its frames
//! handed to the application's worker threads.
//!
//! [`Builder::start`] runs the same shards as `serve` and returns a
//! [`Handle`] and one [`EventReceiver`] per worker. Each shard decodes the
//! frames of its sessions' plaintext (u16-BE packets by default) and pushes
//! [`Event`]s into bounded queues; all events of a session go to worker
//! `session % workers`, in order. Workers answer through the [`Handle`],
//! whose commands travel to the owning shard through a per-shard lock-free
//! queue; the shard is woken with a write to its eventfd only when it sleeps.
//!
//! Memory stays bounded in both directions:
//! - a worker that does not keep up fills its queue; the shard then stops
//!   reading from that worker's sessions (the bytes wait in the kernel's
//!   socket buffers) and resumes when the worker drains its queue. Other
//!   workers' sessions are not held back.
//! - frames sent to a session go into its replay window (the send buffer,
//!   kept across reconnects) plus at most `send_buffer` more bytes; a session
//!   that would need more is closed with [`CloseReason::SendOverflow`].
//!
//! ```no_run
//! use ringgate::gate::embedded::{Builder, Event};
//!
//! let (handle, receivers) = Builder::new("127.0.0.1:1248".parse().unwrap())
//!     .workers(2)
//!     .start()
//!     .unwrap();
//! let threads: Vec<_> = receivers
//!     .into_iter()
//!     .map(|rx| {
//!         let handle = handle.clone();
//!         std::thread::spawn(move || {
//!             while let Some(ev) = rx.recv() {
//!                 if let Event::Frame { session, data } = ev {
//!                     let _ = handle.send(session, data); // echo
//!                 }
//!             }
//!         })
//!     })
//!     .collect();
//! # handle.shutdown();
//! for t in threads {
//!     t.join().unwrap();
//! }
//! ```

use crate::engine::workers::{Command, Encoded};
use crate::engine::{Config, Gate, IdSpace, SetupError, Stats};
use crate::gate::Backend;
use crate::gate::events::{Queues, Running};
use crate::proto::frame::{FrameError, FrameFormat};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::engine::workers::{Event, WorkerHub};
pub use crate::engine::{CloseReason, SessionId};
pub use crate::gate::events::RecvError;

/// One worker's queue of events (sessions with `id % workers == index`).
pub type EventReceiver = crate::gate::events::EventReceiver<Event>;

/// Why a command from the application was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The frame is longer than the framing can express.
    #[error("frame too large: {0}")]
    TooLarge(#[from] FrameError),
    /// The gate is shutting down or gone.
    #[error("the gate has stopped")]
    Stopped,
}

/// Configures and starts an embedded gate.
#[derive(Debug, Clone)]
pub struct Builder {
    cfg: Config,
    format: FrameFormat,
    max_frame: usize,
    workers: usize,
    queue_capacity: usize,
    command_capacity: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new(Config::default().listen)
    }
}

impl Builder {
    /// A gate listening on `listen`, speaking SCP, one worker, u16-BE frames.
    pub fn new(listen: SocketAddr) -> Builder {
        Builder {
            cfg: Config {
                listen,
                ..Config::default()
            },
            format: FrameFormat::U16Be,
            max_frame: u16::MAX as usize,
            workers: 1,
            queue_capacity: 4096,
            command_capacity: 4096,
        }
    }

    /// Address to listen on (port 0 picks one; see [`Handle::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.cfg.listen = addr;
        self
    }

    /// Number of shards (threads with one ring each).
    pub fn shards(mut self, n: usize) -> Self {
        self.cfg.shards = n.max(1);
        self
    }

    /// Speak SCP (resumable sessions, the default) or plain TCP.
    pub fn scp(mut self, scp: bool) -> Self {
        self.cfg.scp = scp;
        self
    }

    /// How frames are delimited inside the stream (both directions).
    pub fn framing(mut self, format: FrameFormat) -> Self {
        self.format = format;
        self
    }

    /// Largest frame a client may send; a longer one closes its session
    /// with [`CloseReason::ProtocolError`]. For raw framing, the largest
    /// piece handed over at once.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Time a connection has to complete its SCP handshake.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.cfg.handshake_timeout = t;
        self
    }

    /// How long a detached session waits for its client to resume.
    pub fn reuse_time(mut self, t: Duration) -> Self {
        self.cfg.reuse_time = t;
        self
    }

    /// Replay window per session, bytes: what a resume can recover, and
    /// what is buffered for a detached client.
    pub fn reuse_buffer(mut self, bytes: usize) -> Self {
        self.cfg.reuse_buffer = bytes;
        self
    }

    /// Bytes of outgoing frames a session may queue beyond its window (or,
    /// plain, its send queue) before it is closed with
    /// [`CloseReason::SendOverflow`].
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.cfg.relay_buffer = bytes;
        self
    }

    /// Live sessions across all shards.
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.cfg.max_sessions = n;
        self
    }

    /// Drop a connection that received nothing for this long (an SCP
    /// session detaches; a plain one closes).
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.cfg.idle_timeout = t;
        self
    }

    /// Number of worker queues (one [`EventReceiver`] each).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Events each worker queue holds before its sessions are held back.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Commands each shard's queue holds before senders wait.
    pub fn command_capacity(mut self, n: usize) -> Self {
        self.command_capacity = n.max(1);
        self
    }

    /// Any other engine setting (buffers, keepalive, pinning...). The
    /// backend is always replaced by the worker queues.
    pub fn engine(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.cfg);
        self
    }

    /// Binds and starts the shards; returns the handle and one receiver per
    /// worker (receiver `i` gets the sessions with `id % workers == i`).
    pub fn start(self) -> Result<(Handle, Vec<EventReceiver>), SetupError> {
        let mut queues = Queues::new(self.workers, self.queue_capacity);
        let hub = Arc::new(WorkerHub {
            senders: std::mem::take(&mut queues.senders),
            wanted: queues.wanted.clone(),
            format: self.format,
            max_frame: self.max_frame,
            command_capacity: self.command_capacity,
        });
        let gate = Gate::start(Config {
            backend: Backend::Workers(hub),
            ..self.cfg
        })?;
        let handle = Handle {
            inner: Arc::new(Inner {
                ids: IdSpace::new(gate.shards()),
                local: gate.local_addr(),
                doors: gate.door_addrs().to_vec(),
                format: self.format,
                run: Running::new(gate),
            }),
        };
        let receivers = queues.receivers(&handle.inner.run.shared);
        Ok((handle, receivers))
    }
}

struct Inner {
    ids: IdSpace,
    local: SocketAddr,
    doors: Vec<SocketAddr>,
    format: FrameFormat,
    run: Running,
}

/// Sends frames to sessions and controls the gate, from any thread.
///
/// Commands for one session are applied in the order they were made from
/// one thread. Frames for a session that has closed are dropped.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("local", &self.inner.local)
            .finish()
    }
}

impl Handle {
    /// The address the gate listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The addresses of the engine's further listeners (its `doors`), in
    /// order, with the real ports.
    pub fn door_addrs(&self) -> &[SocketAddr] {
        &self.inner.doors
    }

    fn owner(&self, session: SessionId) -> Option<usize> {
        let owner = self.inner.ids.owner(session);
        (owner < self.inner.run.shared.shard_count()).then_some(owner)
    }

    fn encode(&self, frame: Bytes) -> Result<Encoded, SendError> {
        Ok(Encoded::new(self.inner.format, frame)?)
    }

    fn command(&self, shard: usize, cmd: Command) -> Result<(), SendError> {
        self.inner
            .run
            .shared
            .command(shard, cmd)
            .map_err(|_| SendError::Stopped)
    }

    /// Sends one frame (framed as configured) to a session. It goes into
    /// the session's replay window, so a detached client gets it after its
    /// resume. Waits only while the owning shard's command queue is full.
    pub fn send(&self, session: SessionId, frame: impl Into<Bytes>) -> Result<(), SendError> {
        let frame = self.encode(frame.into())?;
        match self.owner(session) {
            Some(shard) => self.command(shard, Command::Send(session, frame)),
            None => Ok(()), // not an id this gate hands out: no such session
        }
    }

    /// Sends the same frame to several sessions (one command per shard).
    pub fn send_many(
        &self,
        sessions: &[SessionId],
        frame: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let frame = self.encode(frame.into())?;
        let mut per_shard: Vec<Vec<SessionId>> =
            vec![Vec::new(); self.inner.run.shared.shard_count()];
        for &s in sessions {
            if let Some(shard) = self.owner(s) {
                per_shard[shard].push(s);
            }
        }
        for (shard, ids) in per_shard.into_iter().enumerate() {
            if !ids.is_empty() {
                self.command(shard, Command::SendMany(ids, frame.clone()))?;
            }
        }
        Ok(())
    }

    /// Sends a frame to every live session.
    pub fn broadcast(&self, frame: impl Into<Bytes>) -> Result<(), SendError> {
        let frame = self.encode(frame.into())?;
        for shard in 0..self.inner.run.shared.shard_count() {
            self.command(shard, Command::Broadcast(frame.clone()))?;
        }
        Ok(())
    }

    /// Closes a session ([`CloseReason::Kicked`]); unknown ids are ignored.
    pub fn kick(&self, session: SessionId) -> Result<(), SendError> {
        match self.owner(session) {
            Some(shard) => self.command(shard, Command::Kick(session)),
            None => Ok(()),
        }
    }

    /// The address of a live session's client (the latest connection's).
    pub fn peer_addr(&self, session: SessionId) -> Option<SocketAddr> {
        self.inner
            .run
            .shared
            .peer_addr(self.owner(session)?, session)
    }

    /// The gate's counters.
    pub fn stats(&self) -> Stats {
        self.inner.run.stats()
    }

    /// Closes every session ([`CloseReason::Shutdown`]) and stops the shards;
    /// each [`EventReceiver`] ends after the last events.
    pub fn shutdown(&self) {
        self.inner.run.shutdown();
    }

    /// Waits until every shard has exited (after [`shutdown`](Self::shutdown)).
    pub fn join(&self) {
        self.inner.run.join();
    }
}
