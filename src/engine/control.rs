//! Operating a running gate from another thread: its counters, the limits
//! and timeouts that may change while it runs, draining, and looking at or
//! ending single sessions.
//!
//! Limits live in atomics the shards read when they decide (a line that is
//! written only when an operator changes something); requests about
//! sessions go to the owning shard's control queue with a wake-up and are
//! answered on the shard's thread, so no session state is ever shared.

use super::stats::{self, HostSnapshot, ShardSnapshot};
use super::workers::WorkerHub;
use super::{Config, Shared, Stats};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long an operator request waits for a shard's answer: a shard answers
/// within one loop turn, so only a stopped one runs this out.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The limits and timeouts that can change while the gate runs. A new
/// value applies to new connections and sessions at once, and to the
/// timers already running (they are measured from when they started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`Config::handshake_timeout`].
    pub handshake_timeout: Duration,
    /// See [`Config::reuse_time`].
    pub reuse_time: Duration,
    /// See [`Config::idle_timeout`].
    pub idle_timeout: Option<Duration>,
    /// See [`Config::max_sessions`].
    pub max_sessions: usize,
    /// See [`Config::max_pending_handshakes`].
    pub max_pending_handshakes: usize,
}

impl Limits {
    /// The limits a gate starts with.
    pub fn of(cfg: &Config) -> Limits {
        Limits {
            handshake_timeout: cfg.handshake_timeout,
            reuse_time: cfg.reuse_time,
            idle_timeout: cfg.idle_timeout,
            max_sessions: cfg.max_sessions,
            max_pending_handshakes: cfg.max_pending_handshakes,
        }
    }
}

/// [`Limits`] as the shards read them.
#[derive(Debug)]
pub(crate) struct Tunables {
    handshake_timeout_us: AtomicU64,
    reuse_time_us: AtomicU64,
    /// 0: off.
    idle_timeout_us: AtomicU64,
    max_sessions: AtomicUsize,
    max_pending_handshakes: AtomicUsize,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Tunables {
    pub(crate) fn new(l: &Limits) -> Tunables {
        let t = Tunables {
            handshake_timeout_us: AtomicU64::new(0),
            reuse_time_us: AtomicU64::new(0),
            idle_timeout_us: AtomicU64::new(0),
            max_sessions: AtomicUsize::new(0),
            max_pending_handshakes: AtomicUsize::new(0),
        };
        t.set(l);
        t
    }

    pub(crate) fn set(&self, l: &Limits) {
        let r = Ordering::Relaxed;
        self.handshake_timeout_us
            .store(micros(l.handshake_timeout).max(1), r);
        self.reuse_time_us.store(micros(l.reuse_time), r);
        self.idle_timeout_us
            .store(l.idle_timeout.map_or(0, |d| micros(d).max(1)), r);
        self.max_sessions.store(l.max_sessions.max(1), r);
        self.max_pending_handshakes
            .store(l.max_pending_handshakes.max(1), r);
    }

    pub(crate) fn get(&self) -> Limits {
        let r = Ordering::Relaxed;
        let idle = self.idle_timeout_us.load(r);
        Limits {
            handshake_timeout: Duration::from_micros(self.handshake_timeout_us.load(r)),
            reuse_time: Duration::from_micros(self.reuse_time_us.load(r)),
            idle_timeout: (idle != 0).then(|| Duration::from_micros(idle)),
            max_sessions: self.max_sessions.load(r),
            max_pending_handshakes: self.max_pending_handshakes.load(r),
        }
    }

    pub(crate) fn max_sessions(&self) -> usize {
        self.max_sessions.load(Ordering::Relaxed)
    }

    pub(crate) fn max_pending_handshakes(&self) -> usize {
        self.max_pending_handshakes.load(Ordering::Relaxed)
    }
}

/// What a session is doing, as [`Control::sessions`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// A client connection carries it.
    Connected,
    /// Its client is away; it waits for a resume.
    Detached,
    /// It is ending.
    Closing,
}

impl SessionState {
    /// The state as a word.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionState::Connected => "connected",
            SessionState::Detached => "detached",
            SessionState::Closing => "closing",
        }
    }
}

/// One session, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its id (0 for plain sessions, which nobody addresses by id).
    pub id: u32,
    /// The shard that owns it.
    pub shard: usize,
    /// The client's address, when known.
    pub peer: Option<SocketAddr>,
    /// What it is doing.
    pub state: SessionState,
    /// The upstream it is connected (or connecting) to, in proxy mode.
    pub upstream: Option<SocketAddr>,
    /// The `targetServer` it asked for.
    pub target: Option<String>,
    /// Time since it opened.
    pub age: Duration,
    /// Stream bytes received from the client (SCP sessions).
    pub bytes_in: u64,
    /// Stream bytes sent to the client (SCP sessions).
    pub bytes_out: u64,
}

/// A request answered by a shard on its own thread.
pub(crate) enum Request {
    /// Close the session with this id; answers whether it existed.
    Kick { id: u32, reply: mpsc::Sender<bool> },
    /// Up to `limit` of the shard's sessions.
    Sessions {
        limit: usize,
        reply: mpsc::Sender<Vec<SessionInfo>>,
    },
}

/// A handle for operating a running gate from any thread (see
/// [`super::Gate::control`]). Cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    hub: Option<std::sync::Weak<WorkerHub>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("shards", &self.shared.shard_count())
            .finish()
    }
}

impl Control {
    pub(crate) fn new(shared: Arc<Shared>, hub: Option<std::sync::Weak<WorkerHub>>) -> Control {
        Control { shared, hub }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.shard_count()
    }

    /// Counters summed over all shards.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Each shard's counters.
    pub fn shard_stats(&self) -> Vec<ShardSnapshot> {
        self.shared.shard_snapshots()
    }

    /// Counters of every upstream address the gate connected to (or tried
    /// to), summed over shards, in address order.
    pub fn upstream_stats(&self) -> Vec<(SocketAddr, HostSnapshot)> {
        stats::sum_hosts(self.shared.shards.iter().map(|l| &l.stats))
    }

    /// Embedded mode: events waiting in each worker's queue (none once
    /// the shards have stopped).
    pub fn worker_queue_depths(&self) -> Vec<usize> {
        self.hub
            .as_ref()
            .and_then(|h| h.upgrade())
            .map(|h| h.senders.iter().map(|s| s.len()).collect())
            .unwrap_or_default()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.shared.tunables.get()
    }

    /// Changes the limits; the shards pick them up within one tick.
    pub fn set_limits(&self, limits: &Limits) {
        self.shared.tunables.set(limits);
        self.shared.wake_all();
    }

    /// Starts (`true`) or ends draining: while draining, new sessions are
    /// refused and resumes of existing ones are still served.
    pub fn set_draining(&self, on: bool) {
        self.shared.draining.store(on, Ordering::Relaxed);
    }

    /// Whether the gate is draining.
    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Sends `req` to `shard` and wakes it; false when the shard has exited.
    fn ask(&self, shard: usize, req: Request) -> bool {
        let link = &self.shared.shards[shard];
        if link.ring_fd.load(Ordering::Acquire) < 0 {
            return false;
        }
        link.control.push(req);
        self.shared.wake(shard);
        true
    }

    /// Closes session `id` (as [`super::CloseReason::Kicked`]); false when
    /// no live session has that id.
    pub fn kick(&self, id: u32) -> bool {
        let shard = super::IdSpace::new(self.shards()).owner(id);
        if shard >= self.shards() {
            return false;
        }
        let (tx, rx) = mpsc::channel();
        if !self.ask(shard, Request::Kick { id, reply: tx }) {
            return false;
        }
        rx.recv_timeout(ANSWER_WAIT).unwrap_or(false)
    }

    /// Up to `limit` sessions, a fair share from each shard first (shards
    /// that have fewer leave their share to the others).
    pub fn sessions(&self, limit: usize) -> Vec<SessionInfo> {
        let mut out = Vec::new();
        let mut waiting = Vec::new();
        for shard in 0..self.shards() {
            let (tx, rx) = mpsc::channel();
            if self.ask(shard, Request::Sessions { limit, reply: tx }) {
                waiting.push(rx);
            }
        }
        let mut per_shard: Vec<Vec<SessionInfo>> = waiting
            .into_iter()
            .map(|rx| rx.recv_timeout(ANSWER_WAIT).unwrap_or_default())
            .collect();
        // Round-robin over shards, so one busy shard cannot fill the list.
        for list in &mut per_shard {
            list.reverse();
        }
        while out.len() < limit {
            let mut any = false;
            for list in &mut per_shard {
                if out.len() < limit {
                    if let Some(s) = list.pop() {
                        out.push(s);
                        any = true;
                    }
                }
            }
            if !any {
                break;
            }
        }
        out
    }
}
