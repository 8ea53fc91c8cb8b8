//! One shard: a pinned thread with its own io_uring, connection and session
//! slabs, timers and provided buffers. Nothing here is shared or locked on the
//! data path; other shards reach this one only through its inbox and a ring
//! message.

mod accept;
mod client;
mod closing;
mod handoff;
mod handshake;
mod housekeeping;
mod relay;
mod upstream;
mod workers;

use super::backend::{Backend, UpstreamChoice, UpstreamPolicy};
use super::bufring::BufRing;
use super::outbound::{Outbound, PlainQueue, SendMeta};
use super::session_id::{IdAllocator, IdSpace};
use super::sys::{self, RawAddr};
use super::timer::{DeadlineQueue, Entry as TimerEntry};
use super::token::{self, Op};
use super::workers::{Command, Encoded, Event, WorkerHub};
use super::{Config, Handoff, Shared};
use crate::proto::client::{ClientEvent, ClientHandshake};
use crate::proto::frame::FrameDecoder;
use crate::proto::message::{ReuseConnReq, Status};
use crate::proto::server::{ServerEvent, ServerHandshake};
use crate::proto::session::Session;
use bytes::BytesMut;
use crossbeam_channel::TrySendError;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rand::{Rng, SeedableRng, rngs::StdRng};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Bytes a connection may deliver during its handshake before it is dropped
/// (one record of at most 2 + 512 bytes, plus what a client pipelines).
const MAX_HANDSHAKE_BYTES: usize = 4096;
/// Listen backlog: also the largest burst one multishot accept can deliver
/// before the shard looks at its table again.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;
/// Most single-shot accepts in flight near a full descriptor table.
const SINGLE_ACCEPTS: usize = 64;
/// Interval of the shard's housekeeping tick (timers, shutdown).
const TICK: Duration = Duration::from_millis(50);
/// Shutdown waits at most this long for in-flight operations to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why a session (or a connection without one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its connection (no resume possible: plain mode).
    ClientClosed,
    /// The upstream closed; what it sent was delivered first.
    UpstreamClosed,
    /// No upstream could be connected.
    UpstreamUnreachable,
    /// The upstream connection failed.
    UpstreamError,
    /// The upstream SCP handshake failed.
    UpstreamHandshake,
    /// Nobody resumed the session within `reuse_time`.
    ReuseTimeout,
    /// The resume asked for more than the replay window holds.
    ReplayExceeded,
    /// The application closed it (embedded mode).
    Kicked,
    /// The client broke the framing (a frame over the limit, a malformed
    /// header) (embedded mode).
    ProtocolError,
    /// Frames sent to the session outgrew its window and send buffer: the
    /// client was not reading, or stayed away too long (embedded mode).
    SendOverflow,
    /// The gate is shutting down.
    Shutdown,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::UpstreamClosed => "upstream closed",
            CloseReason::UpstreamUnreachable => "no upstream reachable",
            CloseReason::UpstreamError => "upstream connection failed",
            CloseReason::UpstreamHandshake => "upstream SCP handshake failed",
            CloseReason::ReuseTimeout => "reuse time ran out",
            CloseReason::ReplayExceeded => "resume beyond the replay window",
            CloseReason::Kicked => "kicked by the application",
            CloseReason::ProtocolError => "client broke the framing",
            CloseReason::SendOverflow => "outgoing frames overflowed the send buffer",
            CloseReason::Shutdown => "shutdown",
        })
    }
}

enum ConnState {
    /// Reading the first record (SCP only).
    Handshake(Box<ServerHandshake>),
    /// Carrying session `(index, epoch)`.
    Attached(usize, u32),
    /// Handing itself to another shard; waits for its receive to end first so
    /// no byte is read here after the copy that travels.
    HandingOff {
        target: usize,
        recv_ended: bool,
        sent: bool,
    },
    /// Writing a final answer, then closing.
    Finishing,
    /// Detached or failed; closing.
    Dead,
}

struct Conn {
    epoch: u32,
    slot: u32,
    peer: Option<SocketAddr>,
    addr: Box<RawAddr>,
    state: ConnState,
    /// In-flight operations that name this connection.
    ops: u32,
    recv_armed: bool,
    paused: bool,
    closing: bool,
    /// Bytes of the in-flight session send, and the session it reads from.
    send_len: usize,
    send_sess: Option<(usize, u32)>,
    send_meta: Option<Box<SendMeta>>,
    /// Handshake answer being written (sent before any session bytes).
    hs_out: Vec<u8>,
    hs_sent: usize,
    hs_sending: bool,
    /// Everything read during the handshake (travels with a hand-over).
    raw_in: Vec<u8>,
    last_rx: Instant,
}

enum UpState {
    Connecting,
    Handshake(Box<ClientHandshake>),
    Open,
    Closed,
}

struct UpLink {
    epoch: u32,
    slot: Option<u32>,
    state: UpState,
    /// Hosts still to try, in order.
    tries: Vec<UpstreamChoice>,
    addr: Box<RawAddr>,
    addr_len: u32,
    out: Option<Outbound>,
    ops: u32,
    recv_armed: bool,
    paused: bool,
    send_len: usize,
    send_meta: Option<Box<SendMeta>>,
    hs_out: Vec<u8>,
    hs_sent: usize,
    hs_sending: bool,
    eof: bool,
}

/// A session's end of the worker queues (embedded mode).
struct WorkerLink {
    /// Index of the worker queue: `id % workers`.
    queue: usize,
    decoder: FrameDecoder,
    /// Plaintext not yet cut into frames (at most one partial frame plus
    /// one receive's worth).
    rx: BytesMut,
    /// Events the worker's queue could not take yet, in order. While any
    /// wait, no more frames are decoded, so this holds at most one frame and
    /// a few lifecycle events.
    pending: VecDeque<Event>,
    /// The framing broke; the session is closing.
    broken: bool,
}

enum Peer {
    Echo,
    Up(Box<UpLink>),
    Worker(Box<WorkerLink>),
}

struct Sess {
    epoch: u32,
    id: u32,
    client: Outbound,
    conn: Option<usize>,
    peer: Peer,
    /// Plaintext from the client the peer side could not take yet.
    from_client: Vec<u8>,
    /// Plaintext from the peer the client side could not take yet.
    from_peer: Vec<u8>,
    /// In-flight sends reading this session's memory.
    io_refs: u32,
    closing: Option<CloseReason>,
    detach_token: u32,
    client_addr: Option<SocketAddr>,
    target: Option<String>,
    flag: i32,
    client_eof: bool,
    opened: Instant,
}

/// The shard's event loop state.
pub struct Shard {
    ring: IoUring,
    bufs: BufRing,
    index: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    listener: i32,
    local: SocketAddr,
    conns: Slab<Conn>,
    sessions: Slab<Sess>,
    by_id: HashMap<u32, usize>,
    next_epoch: u32,
    ids: IdAllocator,
    handshaking: usize,
    hs_timers: DeadlineQueue,
    reuse_timers: DeadlineQueue,
    idle_timers: Option<DeadlineQueue>,
    rearm_conns: Vec<(usize, u32)>,
    rearm_ups: Vec<(usize, u32)>,
    // Boxed: the kernel reads a header by address until its send completes.
    #[allow(clippy::vec_box)]
    meta_pool: Vec<Box<SendMeta>>,
    rng: StdRng,
    tick_ts: Box<types::Timespec>,
    connect_ts: Box<types::Timespec>,
    wake_buf: Box<u64>,
    /// Accept operations in flight (one multishot, or several single-shot).
    accepts_pending: usize,
    /// Size of the ring's direct-descriptor table, and slots in use in it.
    /// Accepting pauses while fewer than `reserve` slots are free, so that
    /// resumes handed over from other shards and upstream sockets still find
    /// one, and clients wait in the listen backlog instead of being accepted
    /// only to be dropped by the kernel.
    table: usize,
    slots: usize,
    reserve: usize,
    accept_multishot: bool,
    accept_switching: bool,
    accept_paused: bool,
    stopping: Option<Instant>,
    handoff_seq: u32,
    handoffs: HashMap<(usize, u32), Handoff>,
    last_limit_warn: Option<Instant>,
    /// Embedded mode: the worker queues.
    hub: Option<Arc<WorkerHub>>,
    /// Sessions with events waiting for a full worker queue.
    worker_waiting: Vec<(usize, u32)>,
    /// Sessions whose framing broke, closed after the current batch.
    worker_broken: Vec<(usize, u32)>,
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

fn is_more(flags: u32) -> bool {
    cqueue::more(flags)
}

/// The session's worker cannot take more now (its queue is full, or the
/// framing broke): the client connection stays paused.
fn worker_holds(s: &Sess) -> bool {
    matches!(&s.peer, Peer::Worker(w) if w.broken || !w.pending.is_empty())
}

/// Offers an event to a worker queue; gives it back when the queue is full,
/// after asking the worker (`wanted`) to wake the shards once it takes one.
/// Asking before the second try means a drain between the tries is not missed.
fn offer(
    tx: &crossbeam_channel::Sender<Event>,
    wanted: &std::sync::atomic::AtomicBool,
    ev: Event,
) -> Result<(), Event> {
    match tx.try_send(ev) {
        // A dropped receiver: the application no longer listens.
        Ok(()) | Err(TrySendError::Disconnected(_)) => Ok(()),
        Err(TrySendError::Full(ev)) => {
            wanted.store(true, Ordering::SeqCst);
            match tx.try_send(ev) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => Ok(()),
                Err(TrySendError::Full(ev)) => Err(ev),
            }
        }
    }
}

impl Shard {
    /// Sets up a shard's ring resources (in the shard's own thread, which
    /// becomes the ring's single issuer).
    pub fn new(
        index: usize,
        ring: IoUring,
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        listener: i32,
        local: SocketAddr,
    ) -> Result<Shard, sys::SetupError> {
        let wanted = match cfg.direct_table {
            0 => cfg.max_sessions / cfg.shards.max(1) * 2 + 1024,
            n => n,
        };
        let table = sys::register_direct_table(&ring, wanted)?;
        let bufs =
            sys::register_buffers(&ring, cfg.recv_buffers_per_shard(), cfg.recv_buffer_size)?;
        Ok(Shard {
            ring,
            bufs,
            index,
            hs_timers: DeadlineQueue::new(cfg.handshake_timeout),
            reuse_timers: DeadlineQueue::new(cfg.reuse_time),
            idle_timers: cfg.idle_timeout.map(DeadlineQueue::new),
            tick_ts: Box::new(types::Timespec::from(TICK)),
            connect_ts: Box::new(types::Timespec::from(match &cfg.backend {
                Backend::Proxy(p) => p.connect_timeout(),
                Backend::Echo | Backend::Workers(_) => Duration::from_secs(5),
            })),
            hub: match &cfg.backend {
                Backend::Workers(hub) => Some(hub.clone()),
                _ => None,
            },
            worker_waiting: Vec::new(),
            worker_broken: Vec::new(),
            ids: IdAllocator::new(IdSpace::new(cfg.shards), index),
            cfg,
            shared,
            listener,
            local,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_id: HashMap::new(),
            next_epoch: 1,
            handshaking: 0,
            rearm_conns: Vec::new(),
            rearm_ups: Vec::new(),
            meta_pool: Vec::new(),
            rng: StdRng::from_os_rng(),
            wake_buf: Box::new(0),
            accepts_pending: 0,
            table: table as usize,
            slots: 0,
            reserve: (table as usize / 16).max(32),
            accept_multishot: false,
            accept_switching: false,
            accept_paused: false,
            stopping: None,
            handoff_seq: 0,
            handoffs: HashMap::new(),
            last_limit_warn: None,
        })
    }

    fn new_epoch(&mut self) -> u32 {
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        self.next_epoch
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every pointer an entry carries refers to memory that
            // outlives the operation (boxed or owned by a live slab entry
            // whose `ops` count keeps it alive).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                warn!(shard = self.index, "io_uring submit failed: {e}");
            }
        }
    }

    /// A multishot receive on `slot` into the shard's buffer ring.
    fn recv_multi(&mut self, slot: u32, ud: u64) {
        let bgid = self.bufs.bgid();
        self.push(
            opcode::RecvMulti::new(types::Fixed(slot), bgid)
                .build()
                .user_data(ud),
        );
    }

    /// Cancels the operation submitted with user data `ud` (its completion
    /// still arrives, with `-ECANCELED`).
    fn cancel(&mut self, ud: u64) {
        self.push(
            opcode::AsyncCancel::new(ud)
                .build()
                .user_data(token::encode(Op::Ignore, 0, 0)),
        );
    }

    /// Cancels everything pending on a direct descriptor, then closes it; the
    /// close completes with `ud`. A pending multishot receive would otherwise
    /// keep the socket open after the slot is gone.
    fn cancel_and_close(&mut self, slot: u32, ud: u64) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(slot)).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(token::encode(Op::Ignore, 0, 0));
        self.push(cancel);
        self.push(opcode::Close::new(types::Fixed(slot)).build().user_data(ud));
    }

    /// The housekeeping tick: one multishot timeout for the shard's life.
    fn arm_tick(&mut self) {
        let tick = opcode::Timeout::new(&*self.tick_ts as *const _)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(token::encode(Op::Tick, 0, 0));
        self.push(tick);
    }

    /// A new session entry attached to connection `ci`.
    fn insert_session(
        &mut self,
        id: u32,
        client: Outbound,
        ci: usize,
        target: Option<String>,
        flag: i32,
    ) -> (usize, u32) {
        let epoch = self.new_epoch();
        let client_addr = self.conns[ci].peer;
        let si = self.sessions.insert(Sess {
            epoch,
            id,
            client,
            conn: Some(ci),
            peer: Peer::Echo,
            from_client: Vec::new(),
            from_peer: Vec::new(),
            io_refs: 0,
            closing: None,
            detach_token: 0,
            client_addr,
            target,
            flag,
            client_eof: false,
            opened: Instant::now(),
        });
        self.conns[ci].state = ConnState::Attached(si, epoch);
        (si, epoch)
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        self.arm_accept();
        self.arm_tick();
        self.arm_wake();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            self.worker_round();
            let link = &self.shared.shards[self.index];
            let want = usize::from(link.prepare_sleep());
            sys::submit_and_reap(&mut self.ring, want, &mut cqes);
            self.shared.shards[self.index].woke();
            for &(ud, res, flags) in &cqes {
                self.dispatch(ud, res, flags);
            }
            self.after_batch();
            if let Some(since) = self.stopping {
                let drained =
                    self.conns.is_empty() && self.sessions.is_empty() && self.accepts_pending == 0;
                if drained || since.elapsed() > SHUTDOWN_GRACE {
                    break;
                }
            }
        }
        debug!(shard = self.index, "shard stopped");
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        let Some((op, idx, epoch)) = token::decode(ud) else {
            return;
        };
        // Count table slots where the kernel hands them out and takes them
        // back, whatever becomes of the entry that asked.
        match op {
            Op::Accept | Op::HandoffIn | Op::UpSocket if res >= 0 => self.slots += 1,
            Op::Close | Op::UpClose | Op::SlotClosed => self.slots = self.slots.saturating_sub(1),
            _ => {}
        }
        match op {
            Op::Accept => self.on_accept(res, flags),
            Op::PeerName => self.on_peername(idx, epoch, res),
            Op::Recv => self.on_recv(idx, epoch, res, flags),
            Op::Send => self.on_send(idx, epoch, res),
            Op::HsSend => self.on_hs_send(idx, epoch, res),
            Op::Close => self.on_conn_closed(idx, epoch),
            Op::UpSocket => self.on_up_socket(idx, epoch, res),
            Op::UpConnect => self.on_up_connect(idx, epoch, res),
            Op::UpRecv => self.on_up_recv(idx, epoch, res, flags),
            Op::UpSend => self.on_up_send(idx, epoch, res),
            Op::UpClose => self.on_up_closed(idx, epoch),
            Op::Tick => self.on_tick(flags),
            Op::Wake => self.on_wake(),
            Op::HandoffIn => self.on_handoff_in(idx, epoch, res),
            Op::HandoffOut => self.on_handoff_out(idx, epoch, res),
            Op::SlotClosed | Op::Ignore => {}
        }
    }

    fn after_batch(&mut self) {
        self.bufs.publish();
        for (ci, epoch) in std::mem::take(&mut self.rearm_conns) {
            if self
                .conns
                .get(ci)
                .is_some_and(|c| c.epoch == epoch && !c.closing && !c.paused && !c.recv_armed)
            {
                self.arm_recv(ci);
            }
        }
        for (si, epoch) in std::mem::take(&mut self.rearm_ups) {
            self.arm_up_recv_if(si, epoch);
        }
        if self.stopping.is_none() && self.listener >= 0 {
            let free = self.table.saturating_sub(self.slots);
            if !self.accept_multishot {
                self.arm_accept();
            } else if self.accept_multishot
                && !self.accept_switching
                && free <= self.reserve + LISTEN_BACKLOG as usize
            {
                // Too close for a burst: end the multishot accept; the next
                // arm takes connections one at a time.
                self.accept_switching = true;
                self.cancel(token::encode(Op::Accept, 0, 0));
            }
        }
    }
}
