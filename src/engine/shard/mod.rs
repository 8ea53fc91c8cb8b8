//! One shard: a pinned thread with its own io_uring, connection and session
//! slabs, timers and provided buffers. Nothing here is shared or locked on the
//! data path; other shards reach this one only through its inbox and a ring
//! message.
//!
//! The shard is the I/O half of the engine. What a session does with its
//! bytes is decided by the session core ([`super::session::Relay`]); each
//! client connection and upstream link is an [`Endpoint`]; every operation
//! goes through the ring [`Driver`], which owns the memory the kernel uses.
//! After anything happens to a session the shard calls [`Shard::sync`],
//! which asks the core what it wants now (room to receive on each side,
//! bytes to send, notes for the workers, whether it is done) and turns the
//! answers into submissions.

mod accept;
mod conn;
mod control;
mod handoff;
mod housekeeping;
mod kcp;
mod sessions;
mod skynet;
mod stable;
mod tls;
mod upstream;
mod workers;
mod ws;

pub(crate) use kcp::KcpMsg;

use super::backend::{Backend, UpstreamChoice, UpstreamPolicy};
use super::door::{Door, DoorGreeting, StableIndex};
use super::endpoint::{Endpoint, RecvPolicy};
use super::ring::{BufRing, Completion, Driver, FOREIGN, MsgHeader, OpId};
use super::session::{Greeting, Relay};
use super::session_id::{IdAllocator, IdSpace};
use super::sys;
use super::timer::DeadlineQueue;
use super::workers::WorkerHub;
use super::{Config, Handoff, Shared};
use io_uring::{IoUring, types};
use rand::{SeedableRng, rngs::StdRng};
use slab::Slab;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

pub use super::CloseReason;
pub(crate) use tls::TlsConn;

/// Listen backlog: also the largest burst one multishot accept can deliver
/// before the shard looks at its table again.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;
/// Most single-shot accepts in flight near a full descriptor table.
const SINGLE_ACCEPTS: usize = 64;
/// Interval of the shard's housekeeping tick (timers, shutdown).
const TICK: Duration = Duration::from_millis(50);
/// Shutdown waits at most this long for in-flight operations to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// A thread driving several shards turns all of them at least this often.
const GROUP_SWEEP: Duration = Duration::from_millis(100);
/// Per-session log lines a shard writes at info per second, at most.
const SESSION_LINES: u32 = 100;
/// A hand-over message whose connection never arrived is dropped after the
/// handshake timeout, but never sooner than this (a busy target may take a
/// moment to see the connection).
const HANDOFF_STALE_MIN: Duration = Duration::from_secs(1);

/// What an operation is for; with the entry it names, its completion's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Accept,
    PeerName,
    Recv,
    Send,
    Close,
    UpSocket,
    UpConnect,
    UpRecv,
    UpSend,
    UpClose,
    Tick,
    Wake,
    HandoffIn,
    HandoffOut,
    SlotClosed,
    KcpRecv,
    KcpSend,
    KcpTick,
}

/// A completion's tag: the operation and the slab entry (with its epoch, so
/// a completion for an entry that was freed and reused is recognised).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag {
    op: Op,
    index: u32,
    epoch: u32,
}

impl Tag {
    fn new(op: Op, index: usize, epoch: u32) -> Tag {
        Tag {
            op,
            index: index as u32,
            epoch,
        }
    }

    fn shard(op: Op) -> Tag {
        Tag::new(op, 0, 0)
    }
}

/// A hand-over's completion in the target ring: sender shard (16 bits) and
/// sequence number (32 bits) in the 63 bits another ring may set.
fn handoff_user_data(from: usize, seq: u32) -> u64 {
    FOREIGN | ((from as u64) << 32) | seq as u64
}

fn decode_foreign(v: u64) -> Option<Tag> {
    Some(Tag {
        op: Op::HandoffIn,
        index: (v >> 32) as u32,
        epoch: v as u32,
    })
}

/// What a client connection is doing.
enum ConnState {
    /// Plain mode: waiting for the peer address before opening the session.
    Opening,
    /// Reading the door's greeting (SCP's first record, or the
    /// stable-connection handshake).
    Greeting(Box<DoorGreeting>),
    /// Carrying session `(index, epoch)`.
    Attached(usize, u32),
    /// Handing itself to another shard: its receive ends first, so that no
    /// byte is read here after the copy that travels.
    HandingOff {
        target: usize,
        raw: Vec<u8>,
        sent: bool,
        /// Shards that looked before the target (unmatched stable resumes
        /// walk the shards in turn).
        hops: u16,
    },
    /// Writing a final answer, then closing.
    Finishing,
    /// A skynet msgserver connection, its bytes read by the shard's
    /// [`MsgGate`](crate::proto::skynet::gate::MsgGate) (see `skynet.rs`).
    Skynet,
}

struct Conn {
    epoch: u32,
    ep: Endpoint,
    peer: Option<SocketAddr>,
    /// The listener's dialect.
    door: Door,
    state: ConnState,
    /// A handshake answer to write before any session byte.
    answer: Vec<u8>,
    /// The send in flight carries session bytes (not the answer).
    sending_session: bool,
    last_rx: Instant,
    /// A WebSocket door's connection: its upgrade and frames.
    ws: Option<Box<crate::proto::ws::WsConn>>,
    /// A TLS door's connection: its TLS stage, below the WebSocket.
    tls: Option<Box<TlsConn>>,
    /// A KCP conversation's stream: the conversation (its endpoint is
    /// detached; see `kcp.rs`).
    kcp: Option<usize>,
}

/// How an upstream link is coming along.
enum Link {
    /// The socket is being created.
    Socket,
    /// Connecting on `ep`.
    Connecting(Endpoint),
    /// Connected.
    Open(Endpoint),
    /// Closed (or never opened).
    Gone,
}

struct UpLink {
    epoch: u32,
    link: Link,
    /// Hosts still to try, last first.
    tries: Vec<UpstreamChoice>,
    /// The address being connected to (owned by the connect operation while
    /// it runs; kept here for log lines).
    addr: Option<SocketAddr>,
    /// The send in flight carries stream bytes (not the SCP prelude).
    sending_stream: bool,
    /// When the current connect attempt started (for its latency).
    started: Instant,
}

struct Sess {
    epoch: u32,
    /// 0 for plain sessions nobody addresses by id.
    id: u32,
    relay: Relay,
    conn: Option<usize>,
    up: Option<Box<UpLink>>,
    /// Sends in flight that read this session's memory (its window or its
    /// upstream queue): a session freed before they complete gives them its
    /// memory to keep.
    reads: smallvec::SmallVec<[OpId; 2]>,
    /// Epoch of the reuse timer that may close it while detached.
    detach_token: u32,
    client_addr: Option<SocketAddr>,
    target: Option<Box<str>>,
    flag: i32,
    opened: Instant,
    /// Embedded mode: its worker queue, and whether it waits for room there.
    queue: usize,
    waiting: bool,
    /// Counted in `sessions_closed` and logged.
    ended: bool,
    /// Stable-connection sessions: the next boundary whose fingerprint is
    /// not yet in the shard's index.
    indexed: u64,
}

/// One listening socket of the shard and its accepts.
struct Listener {
    fd: i32,
    door: Door,
    /// Accept operations in flight (one multishot, or several single-shot).
    accepts: Vec<OpId>,
    multishot: bool,
    switching: bool,
}

/// The shard's event loop state.
pub struct Shard {
    d: Driver<Tag>,
    bufs: BufRing,
    recv_policy: RecvPolicy,
    index: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    local: SocketAddr,
    conns: Slab<Conn>,
    sessions: Slab<Sess>,
    by_id: HashMap<u32, usize>,
    ids: IdAllocator,
    next_epoch: u32,
    greeting: usize,
    hs_timers: DeadlineQueue,
    reuse_timers: DeadlineQueue,
    idle_timers: Option<DeadlineQueue>,
    // Boxed: the kernel reads a header by address until its send completes.
    #[allow(clippy::vec_box)]
    meta_pool: Vec<Box<MsgHeader>>,
    rng: StdRng,
    proxy: Option<Arc<dyn UpstreamPolicy>>,
    accept_paused: bool,
    /// Stable-connection sessions by fingerprint at each boundary.
    stable_index: StableIndex,
    /// Size of the ring's direct-descriptor table, and slots in use in it.
    /// Accepting pauses while fewer than `reserve` slots are free, so that
    /// resumes handed over from other shards and upstream sockets still find
    /// one, and clients wait in the listen backlog instead of being accepted
    /// only to be dropped by the kernel.
    table: usize,
    slots: usize,
    reserve: usize,
    stopping: Option<Instant>,
    handoff_seq: u32,
    handoffs: HashMap<(usize, u32), (Instant, Handoff)>,
    /// Hand-overs in flight, and those to send again because the owner's
    /// table was full: (connection, epoch, owner, sequence, tries).
    handoff_pending: Vec<(usize, u32, usize, u32, u32)>,
    handoff_retry: Vec<(usize, u32, usize, u32, u32)>,
    last_limit_warn: Option<Instant>,
    /// When the current batch of completions was reaped (read only while an
    /// idle timeout is set: a receive's time is then that of its batch,
    /// rather than a clock read per receive).
    clock: Instant,
    /// Per-session log lines at info in the current second, and those
    /// left out because there were too many.
    log_second: Option<Instant>,
    log_lines: u32,
    log_skipped: u64,
    /// Embedded mode: the worker queues.
    hub: Option<Arc<WorkerHub>>,
    /// Sessions with notes waiting for a full worker queue.
    worker_waiting: Vec<(usize, u32)>,
    /// The skynet doors' users and connections, when the gate has them.
    skynet: Option<Box<skynet::SkynetShard>>,
    /// Plaintext of TLS connections, decrypted here between a receive and
    /// the WebSocket that reads it (kept to reuse its memory).
    tls_plain: Vec<u8>,
    /// The KCP door, when the gate has one.
    kcp: Option<Box<kcp::KcpSide>>,
}

/// A peer address for log lines: the address, or `?` when the kernel did
/// not tell (kernels before 6.7 cannot for direct descriptors).
struct Addr(Option<SocketAddr>);

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("?"),
        }
    }
}

impl Shard {
    /// Sets up a shard's ring resources (in the shard's own thread, which
    /// becomes the ring's single issuer).
    pub fn new(
        index: usize,
        mut ring: IoUring,
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        listeners: Vec<(i32, Door)>,
        local: SocketAddr,
        kcp_fd: Option<i32>,
    ) -> Result<Shard, sys::SetupError> {
        let wanted = match cfg.direct_table {
            0 => cfg.max_sessions / cfg.shards.max(1) * 3 + 1024,
            n => n,
        };
        let table = sys::register_direct_table(&ring, wanted)?;
        let bufs = BufRing::new(&ring, 0, cfg.recv_buffers_per_shard(), cfg.recv_buffer_size)
            .map_err(|err| sys::SetupError::Missing {
                what: "provided buffer rings",
                err,
            })?;
        let recv_policy = RecvPolicy {
            buf_size: cfg.recv_buffer_size,
            capped_multishot: super::endpoint::probe_capped_multishot(&bufs, &mut ring),
        };
        let kcp = match (kcp_fd, &cfg.kcp) {
            (Some(fd), Some(k)) => Some(Box::new(kcp::KcpSide::new(&ring, fd, k.clone())?)),
            _ => None,
        };
        let space = IdSpace::new(cfg.shards);
        let (proxy, hub) = match &cfg.backend {
            Backend::Proxy(p) => (Some(p.clone()), None),
            Backend::Workers(h) => (None, Some(h.clone())),
            Backend::Echo => (None, None),
        };
        Ok(Shard {
            d: Driver::with_foreign(ring, decode_foreign),
            bufs,
            recv_policy,
            index,
            hs_timers: DeadlineQueue::new(cfg.handshake_timeout),
            reuse_timers: DeadlineQueue::new(cfg.reuse_time),
            idle_timers: cfg.idle_timeout.map(DeadlineQueue::new),
            proxy,
            hub,
            worker_waiting: Vec::new(),
            skynet: skynet::SkynetShard::for_config(&cfg),
            kcp,
            cfg,
            shared,
            listeners: listeners
                .into_iter()
                .map(|(fd, door)| Listener {
                    fd,
                    door,
                    accepts: Vec::new(),
                    multishot: false,
                    switching: false,
                })
                .collect(),
            local,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_id: HashMap::new(),
            ids: IdAllocator::new(space, index),
            next_epoch: 1,
            greeting: 0,
            meta_pool: Vec::new(),
            rng: StdRng::from_os_rng(),
            accept_paused: false,
            stable_index: StableIndex::default(),
            table: table as usize,
            slots: 0,
            reserve: (table as usize / 16).max(32),
            stopping: None,
            handoff_seq: 0,
            handoffs: HashMap::new(),
            handoff_pending: Vec::new(),
            handoff_retry: Vec::new(),
            last_limit_warn: None,
            clock: Instant::now(),
            log_second: None,
            log_lines: 0,
            log_skipped: 0,
            tls_plain: Vec::new(),
        })
    }

    fn new_epoch(&mut self) -> u32 {
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        self.next_epoch
    }

    fn stats(&self) -> &super::ShardStats {
        &self.shared.shards[self.index].stats
    }

    fn count(&self, counter: impl Fn(&super::ShardStats) -> &std::sync::atomic::AtomicU64) {
        counter(self.stats()).fetch_add(1, Ordering::Relaxed);
    }

    /// Logs a warning about a limit an operator must act on, at most once
    /// per 10 s per shard (it may be hit once per connection).
    pub(super) fn warn_limit(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last_limit_warn
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.last_limit_warn = Some(now);
            warn!(shard = self.index, "{what}");
        }
    }

    /// Whether a per-session line (opened, resumed, closed) may be logged at
    /// info now: at most [`SESSION_LINES`] a second per shard. At a million
    /// sessions a line each would itself be a load; the tick reports how
    /// many were left out, and the counters always have them all.
    pub(super) fn loud(&mut self) -> bool {
        if !tracing::enabled!(tracing::Level::INFO) {
            return false;
        }
        let now = Instant::now();
        if self
            .log_second
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.log_second = Some(now);
            self.log_lines = 0;
        }
        self.log_lines += 1;
        if self.log_lines <= SESSION_LINES {
            true
        } else {
            self.log_skipped += 1;
            false
        }
    }

    /// Runs until shutdown completes; returns the ring, which must outlive
    /// every shard that may still message it (the gate drops it after
    /// joining them all), and the receive buffers its operations may name.
    pub fn run(mut self) -> (Driver<Tag>, BufRing, Option<BufRing>) {
        self.start();
        let mut done: Vec<Completion<Tag>> = Vec::with_capacity(1024);
        while !self.turn(true, &mut done) {}
        self.into_ring()
    }

    /// Runs several shards on the calling thread until every one has shut
    /// down; returns their rings (see [`Shard::run`]). `eventfd` must be
    /// registered with every shard's ring ([`Driver::register_eventfd`]):
    /// the thread sleeps on it while none of the rings has work.
    ///
    /// This is how a gate holds more rings than it has cores (each ring's
    /// descriptor table is capped at `RLIMIT_NOFILE`): one thread per core
    /// turning the rings that have work, rather than a thread per ring,
    /// which would pay a wake-up and a context switch for nearly every
    /// completion once the threads outnumber the cores.
    pub fn run_group(
        mut shards: Vec<Shard>,
        eventfd: i32,
    ) -> Vec<(Driver<Tag>, BufRing, Option<BufRing>)> {
        for s in &mut shards {
            s.start();
        }
        let mut done: Vec<Completion<Tag>> = Vec::with_capacity(1024);
        let mut finished = vec![false; shards.len()];
        // Shards to turn whether or not they look ready: all of them at
        // start and after a wait that timed out (a safety net; each ring's
        // own tick signals anyway), and any a waker nudged as the thread
        // was going to sleep.
        let mut due = vec![true; shards.len()];
        while finished.iter().any(|f| !f) {
            let mut busy = false;
            for ((s, fin), due) in shards.iter_mut().zip(&mut finished).zip(&mut due) {
                if !*fin && (std::mem::take(due) || s.ready()) {
                    busy = true;
                    *fin = s.turn(false, &mut done);
                }
            }
            if busy {
                continue;
            }
            // Nothing to do: tell the wakers, and sleep unless one of them
            // was quicker.
            let mut sleep = true;
            for ((s, fin), due) in shards.iter().zip(&finished).zip(&mut due) {
                if !*fin && !s.shared.shards[s.index].prepare_sleep() {
                    *due = true;
                    sleep = false;
                }
            }
            if sleep && !sys::eventfd_wait(eventfd, GROUP_SWEEP) {
                due.fill(true);
            }
            for s in &shards {
                s.shared.shards[s.index].woke();
            }
        }
        shards.into_iter().map(Shard::into_ring).collect()
    }

    /// The operations a shard always has in flight.
    fn start(&mut self) {
        self.arm_accept();
        self.arm_kcp_recv();
        self.arm_tick();
        self.arm_wake();
    }

    /// Whether a turn would find work: completions or submissions on the
    /// ring, or something queued for the shard by another thread.
    fn ready(&mut self) -> bool {
        let link = &self.shared.shards[self.index];
        link.nudged.load(Ordering::SeqCst)
            || !link.commands.is_empty()
            || !link.control.is_empty()
            || !link.kcp_inbox.is_empty()
            || self.d.has_work()
    }

    /// One round of the event loop: queued requests, submit, reap (waiting
    /// for a completion if `may_wait` and nothing is queued), dispatch.
    /// Returns true once the shard has shut down.
    fn turn(&mut self, may_wait: bool, done: &mut Vec<Completion<Tag>>) -> bool {
        if !may_wait {
            // The rounds below see whatever was queued before the nudge.
            self.shared.shards[self.index]
                .nudged
                .store(false, Ordering::SeqCst);
        }
        self.worker_round();
        self.skynet_round();
        self.control_round();
        self.kcp_round();
        let wait = may_wait && self.shared.shards[self.index].prepare_sleep();
        self.d.submit_and_reap(wait, done);
        self.shared.shards[self.index].woke();
        if self.idle_timers.is_some() {
            self.clock = Instant::now();
        }
        for c in done.drain(..) {
            self.dispatch(c);
        }
        self.after_batch();
        if let Some(since) = self.stopping {
            let drained = self.conns.is_empty() && self.sessions.is_empty();
            if drained || since.elapsed() > SHUTDOWN_GRACE {
                debug!(shard = self.index, "shard stopped");
                return true;
            }
        }
        false
    }

    fn into_ring(self) -> (Driver<Tag>, BufRing, Option<BufRing>) {
        let Shard { d, bufs, kcp, .. } = self;
        (d, bufs, kcp.map(|k| k.into_bufs()))
    }

    fn dispatch(&mut self, c: Completion<Tag>) {
        let Tag { op, index, epoch } = c.tag;
        let index = index as usize;
        // Count table slots where the kernel hands them out and takes them
        // back, whatever becomes of the entry that asked.
        match op {
            Op::Accept | Op::HandoffIn | Op::UpSocket if c.result >= 0 => self.slots += 1,
            Op::Close | Op::UpClose | Op::SlotClosed => self.slots = self.slots.saturating_sub(1),
            _ => {}
        }
        match op {
            Op::Accept => self.on_accept(index, &c),
            Op::PeerName => self.on_peername(index, epoch, c),
            Op::Recv => self.on_recv(index, epoch, c),
            Op::Send => self.on_send(index, epoch, c),
            Op::UpSocket => self.on_up_socket(index, epoch, c.result),
            Op::UpConnect => self.on_up_connect(index, epoch, c.result),
            Op::UpRecv => self.on_up_recv(index, epoch, c),
            Op::UpSend => self.on_up_send(index, epoch, c),
            Op::Tick => self.on_tick(&c),
            Op::Wake => self.on_wake(),
            Op::HandoffIn => self.on_handoff_in(index, epoch, c.result),
            Op::HandoffOut => self.on_handoff_out(index, epoch, c.result),
            Op::KcpRecv => self.on_kcp_recv(c),
            Op::KcpSend => self.on_kcp_send(c),
            Op::KcpTick => self.on_kcp_tick(&c),
            Op::Close | Op::UpClose | Op::SlotClosed => {}
        }
    }

    fn after_batch(&mut self) {
        self.kcp_after_batch();
        if self.stopping.is_none() && !self.listeners.is_empty() {
            let free = self.table.saturating_sub(self.slots);
            let burst = LISTEN_BACKLOG as usize * self.listeners.len();
            if !self.listeners.iter().any(|l| l.multishot) {
                self.arm_accept();
            } else if free <= self.reserve + burst {
                // Too close for a burst: end the multishot accepts; the next
                // arm takes connections one at a time.
                for li in 0..self.listeners.len() {
                    let l = &mut self.listeners[li];
                    if l.multishot && !l.switching {
                        l.switching = true;
                        for op in l.accepts.clone() {
                            self.d.cancel(op);
                        }
                    }
                }
            } else if self.listeners.iter().any(|l| l.accepts.is_empty()) {
                self.arm_accept();
            }
        }
    }

    /// Puts a send's memory back in the pool.
    fn recycle(&mut self, mem: super::ring::Owned) {
        if let super::ring::Owned::Msg(m) = mem {
            if self.meta_pool.len() < 256 {
                self.meta_pool.push(m);
            }
        }
    }

    /// Closes a descriptor no entry tracks (refused at accept, or left over).
    fn close_slot(&mut self, slot: u32) {
        let close = io_uring::opcode::Close::new(types::Fixed(slot)).build();
        self.d.push(
            close,
            Some(Tag::shard(Op::SlotClosed)),
            super::ring::Owned::None,
        );
    }
}
