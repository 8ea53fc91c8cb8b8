//! The io_uring engine: thread per core, one ring per shard.
//!
//! A shard is one pinned thread with its own ring, connection and session
//! slabs, timers and provided buffers; it listens on the shared address with
//! SO_REUSEPORT and accepts into the ring's table of direct descriptors.
//!
//! The rooms, from the bottom:
//! - [`ring`]: the ring driver, shared with the load generator: operations
//!   own their memory until they complete, tokens name one operation, a
//!   backlog keeps linked chains whole, provided buffers are guards.
//! - [`endpoint`]: one byte-stream peer (client connection, upstream link)
//!   on a direct descriptor: receive bounded by the room its owner gives,
//!   send, pause, close — written once for every kind of peer.
//! - [`session`]: the session core, with no I/O: a connection's first
//!   record and where a resume belongs, and the relay between a session's
//!   client side and its peer side (stashes, back-pressure, worker notes,
//!   when it is done).
//! - `shard`: the event loop that turns completions into `handle_*` calls
//!   on the core and the core's answers into submissions.
//! - [`backend`], [`workers`], [`session_id`], [`timer`], [`sys`]: what a
//!   session is connected to, the worker queues of embedded mode, the shard
//!   bits in session ids, deadline queues, kernel helpers.
//! - [`skynet`]: skynet's login and msgserver doors, which keep users
//!   rather than sessions, and their queues to the embedding program.
//!
//! Session ids carry their owning shard in their low bits ([`IdSpace`]); a
//! resume that the kernel delivered to another shard is handed to the owner
//! with `IORING_OP_MSG_RING` together with every byte already read.

pub mod backend;
pub mod control;
pub mod door;
pub mod endpoint;
pub mod kcp;
pub mod outbound;
pub mod ring;
pub mod session;
pub mod session_id;
mod shard;
pub mod skynet;
pub mod stats;
pub mod sys;
pub mod timer;
pub mod workers;
pub mod ws;

pub use backend::{Backend, UpstreamChoice, UpstreamPolicy};
pub use control::{Control, Limits, SessionInfo, SessionState};
pub use door::Door;
pub use session::CloseReason;
pub use session_id::{IdSpace, SessionId};
pub use stats::{HostSnapshot, ShardSnapshot};
pub use sys::SetupError;

use crossbeam_queue::{ArrayQueue, SegQueue};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::error;
use workers::Command;

/// Everything a gate needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every shard listens on.
    pub listen: SocketAddr,
    /// Number of shards (threads, rings); 0 chooses it (see [`Config::plan_shards`]).
    pub shards: usize,
    /// Speak SCP to clients on `listen` (`false`: a plain TCP relay).
    pub scp: bool,
    /// Further listeners and the dialect each speaks (none by default).
    /// Every shard binds each with SO_REUSEPORT, like `listen`.
    pub doors: Vec<(SocketAddr, door::Door)>,
    /// A connection that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// How long a session without a connection is kept.
    pub reuse_time: Duration,
    /// Replay window size per session, bytes.
    pub reuse_buffer: usize,
    /// Close a client connection that received nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on client connections.
    pub keepalive: Option<Duration>,
    /// Live sessions across all shards.
    pub max_sessions: usize,
    /// Connections in their handshake across all shards.
    pub max_pending_handshakes: usize,
    /// Bytes buffered per direction of a relay before reading pauses.
    pub relay_buffer: usize,
    /// Provided receive buffers per shard (a power of two), or 0 to size
    /// them from the shard count (see [`Config::recv_buffers_per_shard`]).
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_size: usize,
    /// Direct descriptors per shard (client and upstream sockets); 0 derives
    /// it from `max_sessions`. The kernel caps it at the fd limit per ring.
    pub direct_table: usize,
    /// Entries of each shard's submission queue (a power of two; the
    /// completion queue holds 8 times as many). Fuller queues wait in the
    /// ring driver's backlog; an overflowing completion queue is drained by
    /// the kernel on the next enter.
    pub ring_entries: u32,
    /// Pin each shard thread to a core.
    pub pin_threads: bool,
    /// Threads that drive the shards, each turning every `shard_threads`-th
    /// ring; 0: one per core (at most one per shard).
    pub shard_threads: usize,
    /// What sessions are connected to.
    pub backend: Backend,
    /// The settings of WebSocket doors ([`Door::Ws`], [`Door::Wss`]).
    pub ws: crate::proto::ws::WsSettings,
    /// The certificate of TLS doors ([`Door::Wss`]); required when there
    /// is one. A reload may replace it ([`ws::TlsKeys::replace`]).
    pub tls: Option<Arc<ws::TlsKeys>>,
    /// The dialect of `listen` when it is not SCP or plain (a skynet door);
    /// `None`: as `scp` says.
    pub listen_door: Option<door::Door>,
    /// The skynet doors' decisions, queues and settings; required when a
    /// listener is a skynet door.
    pub skynet: Option<std::sync::Arc<skynet::SkynetHub>>,
    /// A KCP door (SCP over KCP over UDP), if any.
    pub kcp: Option<kcp::KcpListen>,
}

/// Receive-buffer memory all shards share when `recv_buffers` is 0.
const AUTO_RECV_BUFFER_BYTES: usize = 32 << 20;

/// How many shards a gate runs, and whether their descriptor tables hold
/// `max_sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    /// Shards (threads, each with one ring).
    pub shards: usize,
    /// Chosen by the gate (`Config::shards` was 0).
    pub auto: bool,
    /// Direct descriptors one ring may have here (`RLIMIT_NOFILE`, or
    /// `direct_table` when set lower).
    pub per_ring: usize,
    /// Descriptors each live session holds (its client socket, and its
    /// upstream socket in proxy mode).
    pub per_session: usize,
    /// Sessions the shards' tables hold together, leaving half of each
    /// table for connections in their handshake and resumes in passage (in
    /// a reconnect storm every session's new connection may arrive before
    /// the reset of its old one has been seen).
    pub holds: usize,
}

impl ShardPlan {
    /// Whether the tables hold `max_sessions`.
    pub fn enough(&self, max_sessions: usize) -> bool {
        self.holds >= max_sessions
    }
}

impl Config {
    /// The shard count: `shards` when set, otherwise at least one per core
    /// and as many more as it takes for the rings' descriptor tables
    /// (each capped at `RLIMIT_NOFILE`) to hold `max_sessions` in half
    /// their slots. More threads than cores, rather than several rings
    /// per thread, keeps one ring per thread and every session on one ring:
    /// a shard with nothing to do sleeps in its ring wait and costs only
    /// its memory, and the kernel spreads the busy ones over the cores.
    pub fn plan_shards(&self) -> ShardPlan {
        let limit = sys::direct_table_size(usize::MAX >> 1) as usize;
        let per_ring = match self.direct_table {
            0 => limit,
            n => n.min(limit),
        };
        let per_session = match self.backend {
            Backend::Proxy(_) => 2,
            _ => 1,
        };
        let usable = (per_ring / 2 / per_session).max(1);
        let (shards, auto) = match self.shards {
            0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let needed = self.max_sessions.div_ceil(usable);
                (needed.max(cores).clamp(1, 1 << 16), true)
            }
            n => (n, false),
        };
        ShardPlan {
            shards,
            auto,
            per_ring,
            per_session,
            holds: usable.saturating_mul(shards),
        }
    }

    /// Threads that drive `shards` rings: `shard_threads`, or one per core;
    /// never more than the rings. A thread per ring beyond the cores would
    /// pay a wake-up and a context switch for nearly every completion (about
    /// 2.5 times the gate's CPU per new session with 100 rings on 2 cores).
    pub fn threads_for(&self, shards: usize) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.shard_threads {
            0 => cores,
            n => n,
        }
        .clamp(1, shards.max(1))
    }

    /// Submission-queue entries per ring: `ring_entries`, shrunk when the
    /// gate chose more shards than cores (each carries a share of the load,
    /// and the rings' queues are memory the kernel keeps per ring).
    fn ring_entries_for(&self, plan: &ShardPlan) -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let entries = self.ring_entries.clamp(8, 32768).next_power_of_two();
        if plan.auto && plan.shards > cores {
            let scaled = (entries as usize * cores / plan.shards).max(512) as u32;
            scaled.next_power_of_two().min(entries)
        } else {
            entries
        }
    }

    /// Receive buffers each shard registers. With `recv_buffers` 0 the
    /// shards share about 32 MiB (at least 64 and at most 1024 buffers each):
    /// a buffer is held only while its completion is handled, so many shards
    /// need fewer each, and a touched buffer stays in RSS.
    pub fn recv_buffers_per_shard(&self) -> u16 {
        if self.recv_buffers != 0 {
            return self.recv_buffers;
        }
        let each = AUTO_RECV_BUFFER_BYTES / self.recv_buffer_size.max(1) / self.shards.max(1);
        let pow2 = if each == 0 {
            1
        } else {
            1usize << (usize::BITS - 1 - each.leading_zeros())
        };
        pow2.clamp(64, 1024) as u16
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 1248)),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scp: true,
            doors: Vec::new(),
            handshake_timeout: Duration::from_secs(30),
            reuse_time: Duration::from_secs(30),
            reuse_buffer: 65536,
            idle_timeout: None,
            keepalive: Some(Duration::from_secs(60)),
            max_sessions: 1_000_000,
            max_pending_handshakes: 65536,
            relay_buffer: 65536,
            recv_buffers: 0,
            recv_buffer_size: 16384,
            direct_table: 0,
            ring_entries: 4096,
            pin_threads: true,
            shard_threads: 0,
            backend: Backend::Echo,
            ws: crate::proto::ws::WsSettings::default(),
            tls: None,
            listen_door: None,
            skynet: None,
            kcp: None,
        }
    }
}

pub(crate) use stats::ShardStats;

/// A snapshot of the gate's counters, summed over shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Sessions opened (new-session handshakes, or plain connections).
    pub sessions_opened: u64,
    /// Successful resumes.
    pub sessions_resumed: u64,
    /// Sessions closed.
    pub sessions_closed: u64,
    /// Resume requests answered with an error code.
    pub resumes_failed: u64,
    /// Handshakes that failed (garbage, timeout, bad key...).
    pub handshake_failed: u64,
    /// Resumes handed to the owning shard.
    pub handoffs: u64,
    /// Sessions closed because no upstream could be reached.
    pub upstream_failed: u64,
    /// Times a shard stopped accepting because its descriptor table was nearly full.
    pub accept_pauses: u64,
    /// Times reading from a peer paused because the other side was full.
    pub backpressure_pauses: u64,
    /// Embedded mode: times a session's events found its worker's queue
    /// full (the session then waits, not reading, until the worker catches up).
    pub worker_queue_full: u64,
    /// Sessions open now (connected or waiting for a resume).
    pub sessions_live: u64,
    /// Sessions waiting for their client to resume, now.
    pub sessions_detached: u64,
    /// Bytes replayed to clients on resume.
    pub resend_bytes: u64,
    /// Bytes received from clients.
    pub client_rx_bytes: u64,
    /// Bytes sent to clients.
    pub client_tx_bytes: u64,
    /// Bytes received from upstreams.
    pub upstream_rx_bytes: u64,
    /// Bytes sent to upstreams.
    pub upstream_tx_bytes: u64,
    /// Receives re-armed because no provided buffer was free (ENOBUFS).
    pub recv_nobufs: u64,
    /// New sessions refused because the gate is draining.
    pub new_refused_draining: u64,
}

/// A resume connection travelling to its owning shard.
pub(crate) struct Handoff {
    from: usize,
    seq: u32,
    peer: Option<SocketAddr>,
    door: door::Door,
    /// Shards that looked for a stable-connection resume before the target.
    hops: u16,
    bytes: Vec<u8>,
    /// A WebSocket connection's state (its upgrade is done; `bytes` are
    /// message payload).
    ws: Option<Box<crate::proto::ws::WsConn>>,
    /// A TLS connection's state (records not yet read, keys).
    tls: Option<Box<shard::TlsConn>>,
}

pub(crate) struct ShardLink {
    ring_fd: AtomicI32,
    eventfd: i32,
    inbox: SegQueue<Handoff>,
    /// KCP conversations moving here, and datagrams for them.
    kcp_inbox: SegQueue<shard::KcpMsg>,
    stats: ShardStats,
    /// Requests from the operator (kick, list sessions), answered by the
    /// shard on its own thread.
    control: SegQueue<control::Request>,
    /// The shard is (about to be) blocked in the ring wait: a thread that
    /// queues a command must write the eventfd. While it is false the shard
    /// looks at its queue before it next waits, so no syscall is needed.
    sleeping: AtomicBool,
    /// Someone asked this shard to look at its work again (see `wake`).
    nudged: AtomicBool,
    /// Embedded mode: commands from the application's threads.
    commands: ArrayQueue<Command>,
    /// Embedded mode: client address of each live session (read by
    /// `Handle::peer_addr`; written only on open, resume and close).
    peers: Mutex<HashMap<u32, SocketAddr>>,
}

pub(crate) struct Shared {
    stop: AtomicBool,
    /// Live sessions of all shards (what `max_sessions` limits).
    live: AtomicUsize,
    /// New sessions are refused; resumes are still served.
    draining: AtomicBool,
    /// Limits and timeouts that may change while the gate runs.
    tunables: control::Tunables,
    shards: Vec<ShardLink>,
}

impl Shared {
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Asks every shard to stop.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for l in &self.shards {
            sys::eventfd_signal(l.eventfd);
        }
    }

    /// Wakes `shard` if it sleeps (or is about to).
    pub(crate) fn wake(&self, shard: usize) {
        let link = &self.shards[shard];
        // A shard that is awake now may be about to sleep on work this wake
        // is about (a worker queue that drained): it finds the nudge before
        // it sleeps. SeqCst pairs with the shard's store + fence before it
        // re-checks: either it sees the nudge or we see it sleeping.
        link.nudged.store(true, Ordering::SeqCst);
        if link.sleeping.load(Ordering::SeqCst) && link.sleeping.swap(false, Ordering::SeqCst) {
            sys::eventfd_signal(link.eventfd);
        }
    }

    /// Wakes every sleeping shard.
    pub(crate) fn wake_all(&self) {
        for shard in 0..self.shards.len() {
            self.wake(shard);
        }
    }

    /// Queues a command for `shard`. While its queue is full, waits for the
    /// shard to drain it; gives the command back once the gate is stopping.
    pub(crate) fn command(&self, shard: usize, mut cmd: Command) -> Result<(), Command> {
        let link = &self.shards[shard];
        let mut spins = 0u32;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(cmd);
            }
            match link.commands.push(cmd) {
                Ok(()) => break,
                Err(back) => cmd = back,
            }
            self.wake(shard);
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.wake(shard);
        Ok(())
    }

    /// The client address of a live session owned by `shard`.
    pub(crate) fn peer_addr(&self, shard: usize, id: u32) -> Option<SocketAddr> {
        let peers = self.shards.get(shard)?.peers.lock().ok()?;
        peers.get(&id).copied()
    }

    /// Each shard's counters.
    pub(crate) fn shard_snapshots(&self) -> Vec<ShardSnapshot> {
        self.shards
            .iter()
            .map(|l| {
                let mut snap = l.stats.snapshot();
                snap.commands_queued = l.commands.len() as u64;
                snap
            })
            .collect()
    }

    /// Counters summed over all shards.
    pub(crate) fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for st in self.shard_snapshots() {
            s.accepted += st.accepted;
            s.sessions_opened += st.sessions_opened;
            s.sessions_resumed += st.sessions_resumed;
            s.sessions_closed += st.sessions_closed;
            s.resumes_failed += st.resumes_failed;
            s.handshake_failed += st.handshake_failed;
            s.handoffs += st.handoffs_in;
            s.upstream_failed += st.upstream_failed;
            s.backpressure_pauses += st.backpressure_pauses;
            s.accept_pauses += st.accept_pauses;
            s.worker_queue_full += st.worker_queue_full;
            s.sessions_live += st.live();
            s.sessions_detached += st.detached;
            s.resend_bytes += st.resend_bytes;
            s.client_rx_bytes += st.client_rx_bytes;
            s.client_tx_bytes += st.client_tx_bytes;
            s.upstream_rx_bytes += st.upstream_rx_bytes;
            s.upstream_tx_bytes += st.upstream_tx_bytes;
            s.recv_nobufs += st.recv_nobufs;
            s.new_refused_draining += st.new_refused_draining;
        }
        s
    }
}

impl ShardLink {
    /// Marks the shard as going to sleep; returns false (and stays awake)
    /// when commands arrived, or a wake-up was asked for, meanwhile.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let nudged = self.nudged.swap(false, Ordering::SeqCst);
        if !nudged
            && self.commands.is_empty()
            && self.control.is_empty()
            && self.kcp_inbox.is_empty()
        {
            return true;
        }
        self.sleeping.store(false, Ordering::Relaxed);
        false
    }

    /// The shard is awake again.
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for s in &self.shards {
            // SAFETY: we created these eventfds and nothing uses them any more.
            unsafe { libc::close(s.eventfd) };
        }
    }
}

/// An exited shard's ring (and the receive buffers its operations may still
/// name), kept open until every shard has exited. Dropped in field order:
/// the ring first.
struct ShardRing(
    #[allow(dead_code)] ring::Driver<shard::Tag>,
    #[allow(dead_code)] ring::BufRing,
    #[allow(dead_code)] Option<ring::BufRing>,
);

// SAFETY: the shard thread that used these has exited and kept no other
// handle to them (no buffer guard outlives a completion), so moving them to
// the joining thread, which only drops them, shares nothing.
unsafe impl Send for ShardRing {}

/// Closes the KCP sockets of a start that failed.
fn close_all(fds: &[Option<i32>]) {
    for fd in fds.iter().flatten() {
        // SAFETY: sockets we just opened and nobody else holds.
        unsafe { libc::close(*fd) };
    }
}

/// A running gate.
pub struct Gate {
    shared: Arc<Shared>,
    /// Weak: the shards own the worker queues' senders, so that the
    /// workers' receivers end when the shards have stopped, even while the
    /// application still holds the gate (to join it after its workers).
    hub: Option<std::sync::Weak<workers::WorkerHub>>,
    threads: Vec<JoinHandle<Vec<ShardRing>>>,
    local: SocketAddr,
    door_addrs: Vec<SocketAddr>,
    kcp_addr: Option<SocketAddr>,
}

impl Gate {
    /// Binds, builds every shard's ring and starts the shard threads.
    pub fn start(cfg: Config) -> Result<Gate, SetupError> {
        let plan = cfg.plan_shards();
        let shards = plan.shards.max(1);
        if shards > 1 << 16 {
            return Err(SetupError::Other("at most 65536 shards".into()));
        }
        if !plan.enough(cfg.max_sessions) {
            tracing::warn!(
                "{shards} shards hold about {} sessions, not max_sessions {}: each ring's \
                 direct-descriptor table has at most {} slots here (RLIMIT_NOFILE), {} per \
                 session; use at least {} shards, or leave the shard count to the gate",
                plan.holds,
                cfg.max_sessions,
                plan.per_ring,
                plan.per_session,
                cfg.max_sessions
                    .div_ceil((plan.per_ring / 2 / plan.per_session).max(1))
            );
        }
        let ring_entries = cfg.ring_entries_for(&plan);
        // The first listener of each address fixes its port (the address
        // may ask for port 0).
        let opts = sys::ListenOptions {
            keepalive: cfg.keepalive,
            backlog: shard::LISTEN_BACKLOG,
        };
        let primary = match cfg.listen_door {
            Some(d) => d,
            None if cfg.scp => door::Door::Scp,
            None => door::Door::Plain,
        };
        let wanted: Vec<(SocketAddr, door::Door)> = std::iter::once((cfg.listen, primary))
            .chain(cfg.doors.iter().copied())
            .collect();
        if cfg.tls.is_none() && wanted.iter().any(|(_, d)| d.tls()) {
            return Err(SetupError::Other(
                "a TLS door needs a certificate (Config::tls)".into(),
            ));
        }
        if cfg.skynet.is_none() && wanted.iter().any(|(_, d)| d.is_skynet()) {
            return Err(SetupError::Other(
                "a skynet door needs the skynet settings (Config::skynet)".into(),
            ));
        }
        let mut bound = Vec::with_capacity(wanted.len());
        let mut firsts = Vec::with_capacity(wanted.len());
        for &(addr, d) in &wanted {
            let first = sys::listener(addr, opts)?;
            let local = first
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| SetupError::Other("listener has no address".into()))?;
            bound.push((local, d));
            firsts.push(first);
        }
        let local = bound[0].0;
        let door_addrs: Vec<SocketAddr> = bound[1..].iter().map(|(a, _)| *a).collect();
        // One UDP socket per shard for the KCP door, the first fixing the port.
        let mut kcp_fds: Vec<Option<i32>> = vec![None; shards];
        let mut kcp_addr = None;
        if let Some(k) = &cfg.kcp {
            k.settings
                .validate()
                .map_err(|e| SetupError::Other(format!("kcp: {e}")))?;
            let mut addr = k.addr;
            for slot in kcp_fds.iter_mut() {
                let sock = match sys::udp_socket(addr, k.recv_buffer, k.send_buffer) {
                    Ok(s) => s,
                    Err(e) => {
                        close_all(&kcp_fds);
                        return Err(e);
                    }
                };
                if kcp_addr.is_none() {
                    addr = sock
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .ok_or_else(|| SetupError::Other("kcp socket has no address".into()))?;
                    kcp_addr = Some(addr);
                }
                *slot = Some(sock.into_raw_fd());
            }
        }
        // listeners[shard] = that shard's socket for each address, in order.
        let mut listeners: Vec<Vec<(i32, door::Door)>> = vec![
            firsts
                .into_iter()
                .zip(&bound)
                .map(|(sock, &(_, d))| (sock.into_raw_fd(), d))
                .collect(),
        ];
        for _ in 1..shards {
            let mut mine = Vec::with_capacity(bound.len());
            for &(addr, d) in &bound {
                match sys::listener(addr, opts) {
                    Ok(sock) => mine.push((sock.into_raw_fd(), d)),
                    Err(e) => {
                        for fd in listeners.iter().flatten().chain(&mine).map(|l| l.0) {
                            // SAFETY: fds we just opened and nobody else holds.
                            unsafe { libc::close(fd) };
                        }
                        close_all(&kcp_fds);
                        return Err(e);
                    }
                }
            }
            listeners.push(mine);
        }
        let command_capacity = match &cfg.backend {
            Backend::Workers(hub) => hub.command_capacity.max(1),
            _ => 1,
        };
        let mut links = Vec::with_capacity(shards);
        for _ in 0..shards {
            let eventfd = sys::eventfd().map_err(|e| SetupError::Other(format!("eventfd: {e}")))?;
            links.push(ShardLink {
                ring_fd: AtomicI32::new(-1),
                eventfd,
                inbox: SegQueue::new(),
                kcp_inbox: SegQueue::new(),
                stats: ShardStats::default(),
                control: SegQueue::new(),
                sleeping: AtomicBool::new(false),
                nudged: AtomicBool::new(false),
                commands: ArrayQueue::new(command_capacity),
                peers: Mutex::new(HashMap::new()),
            });
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            tunables: control::Tunables::new(&Limits::of(&cfg)),
            shards: links,
        });
        let hub = match &cfg.backend {
            Backend::Workers(hub) => Some(Arc::downgrade(hub)),
            _ => None,
        };
        let cfg = Arc::new(Config {
            shards,
            ring_entries,
            ..cfg
        });
        let cores = if cfg.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        // Threads: one per core (or `shard_threads`), each driving every
        // `threads`-th shard. Each ring is created in the thread that drives
        // it (it becomes the ring's only submitter); the threads wait until
        // all rings exist, since any shard may message any other. A shard
        // gives its ring back when it exits: it stays open until every shard
        // has stopped, so a late hand-over never reaches a closed (or
        // reused) descriptor number.
        let nthreads = cfg.threads_for(shards);
        // Each thread's shards: (index, its listening sockets, its KCP socket).
        type Members = Vec<(usize, Vec<(i32, door::Door)>, Option<i32>)>;
        let mut groups: Vec<Members> = (0..nthreads).map(|_| Vec::new()).collect();
        for (index, listener) in listeners.into_iter().enumerate() {
            groups[index % nthreads].push((index, listener, kcp_fds[index]));
        }
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), SetupError>>();
        let mut go = Vec::with_capacity(nthreads);
        let mut threads = Vec::with_capacity(nthreads);
        for (g, members) in groups.into_iter().enumerate() {
            let (go_tx, go_rx) = mpsc::channel::<bool>();
            go.push(go_tx);
            let (cfg, shared, ready_tx) = (cfg.clone(), shared.clone(), ready_tx.clone());
            let core = (!cores.is_empty()).then(|| cores[g % cores.len()]);
            let t = std::thread::Builder::new()
                .name(format!("ringgate-shard-{g}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let alone = members.len() == 1;
                    // A thread with several rings sleeps on one eventfd they all signal.
                    let group_fd = if alone {
                        Ok(-1)
                    } else {
                        sys::eventfd().map_err(|e| format!("eventfd: {e}"))
                    };
                    let mut built = Vec::with_capacity(members.len());
                    let mut all_fds = Vec::new();
                    for (index, listener, kcp_fd) in members {
                        let listen_fds: Vec<i32> =
                            listener.iter().map(|l| l.0).chain(kcp_fd).collect();
                        all_fds.push((index, listen_fds.clone()));
                        let made =
                            group_fd
                                .clone()
                                .map_err(SetupError::Other)
                                .and_then(|group_fd| {
                                    let ring = ring::build(
                                        cfg.ring_entries.clamp(8, 32768).next_power_of_two(),
                                    )
                                    .map_err(|e| {
                                        if ring::is_unavailable(&e) {
                                            SetupError::Unavailable(e)
                                        } else {
                                            SetupError::Other(format!(
                                                "cannot create an io_uring: {e}"
                                            ))
                                        }
                                    })?;
                                    if group_fd >= 0 {
                                        ring.submitter().register_eventfd(group_fd).map_err(
                                            |err| SetupError::Missing {
                                                what: "eventfd notification of rings",
                                                err,
                                            },
                                        )?;
                                    }
                                    shared.shards[index]
                                        .ring_fd
                                        .store(ring.as_raw_fd(), Ordering::Release);
                                    shard::Shard::new(
                                        index,
                                        ring,
                                        cfg.clone(),
                                        shared.clone(),
                                        listener,
                                        local,
                                        kcp_fd,
                                    )
                                });
                        match made {
                            Ok(s) => {
                                let _ = ready_tx.send(Ok(()));
                                built.push(s);
                            }
                            Err(e) => {
                                shared.shards[index].ring_fd.store(-1, Ordering::Release);
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    }
                    let go = go_rx.recv() == Ok(true) && built.len() == all_fds.len();
                    let rings = match (go, &group_fd) {
                        (false, _) => Vec::new(),
                        (true, Ok(fd)) if *fd >= 0 => shard::Shard::run_group(built, *fd),
                        (true, _) => built.into_iter().map(shard::Shard::run).collect(),
                    };
                    for (index, listen_fds) in all_fds {
                        // Other shards stop handing connections to this one.
                        shared.shards[index].ring_fd.store(-1, Ordering::Release);
                        for fd in listen_fds {
                            // SAFETY: our listener fds, unused elsewhere; the
                            // ring that used them no longer accepts.
                            unsafe { libc::close(fd) };
                        }
                    }
                    if let Ok(fd) = group_fd {
                        if fd >= 0 {
                            // SAFETY: our eventfd, which nothing reads any more;
                            // the rings registered with it hold the kernel's
                            // object itself, not this descriptor number.
                            unsafe { libc::close(fd) };
                        }
                    }
                    rings
                        .into_iter()
                        .map(|(d, bufs, kbufs)| ShardRing(d, bufs, kbufs))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| SetupError::Other(format!("cannot start a shard thread: {e}")))?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    failure = failure.or(Some(SetupError::Other(
                        "a shard thread died during setup".into(),
                    )))
                }
            }
        }
        let ok = failure.is_none();
        for tx in &go {
            let _ = tx.send(ok);
        }
        if let Some(e) = failure {
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(Gate {
            shared,
            hub,
            threads,
            local,
            door_addrs,
            kcp_addr,
        })
    }

    /// The address the gate listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The addresses of [`Config::doors`], in order, with the real ports.
    pub fn door_addrs(&self) -> &[SocketAddr] {
        &self.door_addrs
    }

    /// The KCP door's UDP address (with the real port), if there is one.
    pub fn kcp_addr(&self) -> Option<SocketAddr> {
        self.kcp_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    /// Counters summed over all shards.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Asks every shard to stop accepting, close its sessions and exit.
    pub fn shutdown(&self) {
        self.shared.stop();
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A handle for operating the gate from another thread: counters,
    /// limits, draining, sessions.
    pub fn control(&self) -> Control {
        Control::new(self.shared.clone(), self.hub.clone())
    }

    /// A handle that can stop the gate from another thread (a signal handler thread).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
        }
    }

    /// Waits until every shard has exited.
    pub fn join(mut self) {
        self.join_all();
    }

    fn join_all(&mut self) {
        // Rings are dropped only once every shard has stopped (see `start`).
        let mut rings = Vec::with_capacity(self.threads.len());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(ring) => rings.push(ring),
                Err(_) => error!("a shard thread panicked"),
            }
        }
        drop(rings);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            self.join_all();
        }
    }
}

/// Stops a gate from anywhere.
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
}

impl Stopper {
    /// Same as [`Gate::shutdown`].
    pub fn stop(&self) {
        self.shared.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, Gate};
    use std::sync::atomic::Ordering;

    #[test]
    fn shutdown_finishes_when_the_completion_queue_overflows() {
        // 8 submission entries, 64 completions: hundreds of connections
        // closing at once overflow it, which ends multishot operations (the
        // tick among them) early. The shard keeps re-arming its tick and
        // wake-up until it exits, so it still notices the grace period end.
        let gate = Gate::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 1,
            recv_buffers: 64,
            ring_entries: 8,
            pin_threads: false,
            ..Config::default()
        })
        .unwrap();
        let addr = gate.local_addr();
        let conns: Vec<_> = (0..400)
            .filter_map(|_| std::net::TcpStream::connect(addr).ok())
            .collect();
        assert!(crate::engine::tests::wait(|| gate.stats().accepted >= 400));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            gate.shutdown();
            gate.join();
            let _ = done_tx.send(());
        });
        // A liveness cap far above the 3 s grace: a hang, not a slow exit.
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .is_ok(),
            "the gate stopped"
        );
        drop(conns);
    }

    /// Polls `cond` for up to 30 s.
    pub(super) fn wait(mut cond: impl FnMut() -> bool) -> bool {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        cond()
    }

    #[test]
    fn a_stopped_shard_is_not_handed_connections() {
        // A shard's ring stays open until every shard has stopped, and its
        // published descriptor goes first: a late hand-over finds -1 (and
        // answers 501) instead of a number the process may have reused.
        let gate = Gate::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            recv_buffers: 64,
            pin_threads: false,
            ..Config::default()
        })
        .unwrap();
        let shared = gate.shared().clone();
        assert!(
            shared
                .shards
                .iter()
                .all(|l| l.ring_fd.load(Ordering::Acquire) >= 0)
        );
        gate.shutdown();
        gate.join();
        assert!(
            shared
                .shards
                .iter()
                .all(|l| l.ring_fd.load(Ordering::Acquire) == -1)
        );
    }

    #[test]
    fn receive_buffers_shrink_as_shards_grow() {
        let with = |shards, recv_buffers| {
            Config {
                shards,
                recv_buffers,
                ..Config::default()
            }
            .recv_buffers_per_shard()
        };
        assert_eq!(with(1, 0), 1024);
        assert_eq!(with(2, 0), 1024);
        assert_eq!(with(8, 0), 256);
        assert_eq!(with(25, 0), 64);
        assert_eq!(with(200, 0), 64);
        assert_eq!(with(25, 512), 512, "an explicit count wins");
    }
}
