//! One shard: a pinned thread with its own io_uring, connection and session
//! slabs, timers and provided buffers. Nothing here is shared or locked on the
//! data path; other shards reach this one only through its inbox and a ring
//! message.

use super::bufring::BufRing;
use super::outbound::{Outbound, PlainQueue, SendMeta};
use super::sys::{self, RawAddr};
use super::timer::{DeadlineQueue, Entry as TimerEntry};
use super::token::{self, Op};
use super::{Config, Handoff, Shared};
use crate::gate::embedded::{Command, Encoded, Event, WorkerHub};
use crate::gate::{Backend, Proxy, UpstreamNet};
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
    tries: Vec<usize>,
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
    next_id: u32,
    id_bits: u32,
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
    accept_armed: bool,
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
        let table = sys::direct_table_size(cfg.max_sessions / cfg.shards.max(1) * 2 + 1024);
        ring.submitter()
            .register_files_sparse(table)
            .map_err(|err| sys::SetupError::Missing {
                what: "a direct descriptor table",
                err,
            })?;
        let bufs =
            BufRing::new(&ring, 0, cfg.recv_buffers, cfg.recv_buffer_size).map_err(|err| {
                sys::SetupError::Missing {
                    what: "provided buffer rings",
                    err,
                }
            })?;
        let id_bits = usize::BITS - (cfg.shards.max(1) - 1).leading_zeros();
        Ok(Shard {
            ring,
            bufs,
            index,
            hs_timers: DeadlineQueue::new(cfg.handshake_timeout),
            reuse_timers: DeadlineQueue::new(cfg.reuse_time),
            idle_timers: cfg.idle_timeout.map(DeadlineQueue::new),
            tick_ts: Box::new(types::Timespec::from(TICK)),
            connect_ts: Box::new(types::Timespec::from(match &cfg.backend {
                Backend::Proxy(p) => p.connect_timeout,
                Backend::Echo | Backend::Workers(_) => Duration::from_secs(5),
            })),
            hub: match &cfg.backend {
                Backend::Workers(hub) => Some(hub.clone()),
                _ => None,
            },
            worker_waiting: Vec::new(),
            worker_broken: Vec::new(),
            cfg,
            shared,
            listener,
            local,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_id: HashMap::new(),
            next_epoch: 1,
            next_id: 1,
            id_bits,
            handshaking: 0,
            rearm_conns: Vec::new(),
            rearm_ups: Vec::new(),
            meta_pool: Vec::new(),
            rng: StdRng::from_os_rng(),
            wake_buf: Box::new(0),
            accept_armed: false,
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

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        self.arm_accept();
        let tick = opcode::Timeout::new(&*self.tick_ts as *const _)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(token::encode(Op::Tick, 0, 0));
        self.push(tick);
        self.arm_wake();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            self.worker_round();
            let link = &self.shared.shards[self.index];
            let want = usize::from(link.prepare_sleep());
            if let Err(e) = self.ring.submit_and_wait(want) {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    warn!(shard = self.index, "io_uring wait failed: {e}");
                }
            }
            self.shared.shards[self.index].woke();
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(ud, res, flags) in &cqes {
                self.dispatch(ud, res, flags);
            }
            self.after_batch();
            if let Some(since) = self.stopping {
                let drained =
                    self.conns.is_empty() && self.sessions.is_empty() && !self.accept_armed;
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
            Op::Ignore => {}
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
        if self.stopping.is_none() && !self.accept_armed && self.listener >= 0 {
            self.arm_accept();
        }
    }

    // ---- accept ------------------------------------------------------------

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener))
            .allocate_file_index(true)
            .build()
            .user_data(token::encode(Op::Accept, 0, 0));
        self.push(e);
        self.accept_armed = true;
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !is_more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENFILE | libc::EMFILE => {
                    self.warn_limit("direct descriptor table full: connections are being refused; raise the fd limit or add shards")
                }
                e => debug!(shard = self.index, "accept failed: {}", std::io::Error::from_raw_os_error(e)),
            }
            return;
        }
        let slot = res as u32;
        self.shared.shards[self.index]
            .stats
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        if self.stopping.is_some() {
            self.close_slot(slot);
            return;
        }
        let scp = self.cfg.scp;
        if scp
            && self.handshaking >= (self.cfg.max_pending_handshakes / self.cfg.shards.max(1)).max(1)
        {
            self.warn_limit("max_pending_handshakes reached: new connections are being closed");
            self.close_slot(slot);
            return;
        }
        if !scp && self.sessions.len() >= self.max_sessions_here() {
            self.warn_limit("max_sessions reached: new connections are being closed");
            self.close_slot(slot);
            return;
        }
        let ci = self.new_conn(
            slot,
            None,
            if scp {
                ConnState::Handshake(Box::default())
            } else {
                ConnState::Dead
            },
        );
        if scp {
            self.handshaking += 1;
            let epoch = self.conns[ci].epoch;
            self.hs_timers
                .push(Instant::now(), TimerEntry { index: ci, epoch });
        }
        // Reading starts once the peer address is known, so that a session
        // (and its upstream announcement) always has it.
        self.request_peername(ci);
    }

    fn max_sessions_here(&self) -> usize {
        (self.cfg.max_sessions / self.cfg.shards.max(1)).max(1)
    }

    fn warn_limit(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last_limit_warn
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.last_limit_warn = Some(now);
            warn!(shard = self.index, "{what}");
        }
    }

    fn new_conn(&mut self, slot: u32, peer: Option<SocketAddr>, state: ConnState) -> usize {
        let epoch = self.new_epoch();
        let ci = self.conns.insert(Conn {
            epoch,
            slot,
            peer,
            addr: Box::default(),
            state,
            ops: 0,
            recv_armed: false,
            paused: false,
            closing: false,
            send_len: 0,
            send_sess: None,
            send_meta: None,
            hs_out: Vec::new(),
            hs_sent: 0,
            hs_sending: false,
            raw_in: Vec::new(),
            last_rx: Instant::now(),
        });
        if let Some(idle) = self.idle_timers.as_mut() {
            idle.push(Instant::now(), TimerEntry { index: ci, epoch });
        }
        ci
    }

    fn request_peername(&mut self, ci: usize) {
        let len = RawAddr::len_for(&self.local);
        let c = &mut self.conns[ci];
        c.ops += 1;
        let e = sys::peername_entry(types::Fixed(c.slot), c.addr.as_mut_ptr(), len)
            .user_data(token::encode(Op::PeerName, ci, c.epoch));
        self.push(e);
    }

    fn on_peername(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        if res > 0 {
            c.peer = c.addr.to_socket_addr();
        }
        if !c.closing {
            if !self.cfg.scp {
                self.open_plain_session(ci);
            }
            self.arm_recv(ci);
        }
        self.maybe_free_conn(ci);
    }

    // ---- client receive ----------------------------------------------------

    fn arm_recv(&mut self, ci: usize) {
        let bgid = self.bufs.bgid();
        let c = &mut self.conns[ci];
        if c.recv_armed || c.closing {
            return;
        }
        c.recv_armed = true;
        c.ops += 1;
        let e = opcode::RecvMulti::new(types::Fixed(c.slot), bgid)
            .build()
            .user_data(token::encode(Op::Recv, ci, c.epoch));
        self.push(e);
    }

    fn pause_recv(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.paused || c.closing {
            return;
        }
        c.paused = true;
        self.shared.shards[self.index]
            .stats
            .paused
            .fetch_add(1, Ordering::Relaxed);
        if c.recv_armed {
            let ud = token::encode(Op::Recv, ci, c.epoch);
            self.push(
                opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(token::encode(Op::Ignore, 0, 0)),
            );
        }
    }

    fn resume_recv(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if !c.paused || c.closing {
            return;
        }
        c.paused = false;
        // Idle time counts from here: while paused, silence was ours.
        c.last_rx = Instant::now();
        if !c.recv_armed {
            self.arm_recv(ci);
        }
    }

    fn on_recv(&mut self, ci: usize, epoch: u32, res: i32, flags: u32) {
        let buf = if res > 0 {
            self.bufs.take(flags, res as usize)
        } else {
            None
        };
        let valid = self.conns.get(ci).is_some_and(|c| c.epoch == epoch);
        if !valid {
            if let Some((bid, _, _)) = buf {
                self.bufs.push(bid);
            }
            return;
        }
        if !is_more(flags) {
            let c = &mut self.conns[ci];
            c.recv_armed = false;
            c.ops -= 1;
        }
        match buf {
            Some((bid, ptr, len)) => {
                // SAFETY: the kernel filled this buffer and does not touch it
                // again until it is pushed back below.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                self.conns[ci].last_rx = Instant::now();
                self.on_client_data(ci, data);
                self.bufs.push(bid);
            }
            None if res == 0 => self.client_gone(ci, "client closed the connection"),
            None if res == -libc::ENOBUFS => self.rearm_conns.push((ci, epoch)),
            None if res == -libc::ECANCELED => {}
            None if res < 0 => {
                let e = std::io::Error::from_raw_os_error(-res);
                self.client_gone(ci, &format!("receive failed: {e}"));
            }
            None => {}
        }
        if let Some(c) = self.conns.get(ci) {
            let reading = matches!(c.state, ConnState::Handshake(_) | ConnState::Attached(..));
            if c.epoch == epoch && reading && !c.recv_armed && !c.paused && !c.closing && res != 0 {
                self.rearm_conns.push((ci, epoch));
            }
        }
        self.on_handoff_recv_end(ci, epoch);
        self.maybe_free_conn(ci);
    }

    fn on_client_data(&mut self, ci: usize, data: &mut [u8]) {
        let c = &mut self.conns[ci];
        if c.closing {
            return;
        }
        match c.state {
            ConnState::Attached(si, sg) => self.client_bytes(si, sg, data),
            ConnState::Handshake(_) => self.handshake_bytes(ci, data),
            // Read after the resume record but before the hand-over: travels
            // along, bounded like a handshake (a client has no reason to send
            // much before it sees the answer).
            ConnState::HandingOff { .. }
                if c.raw_in.len() + data.len() <= 2 * MAX_HANDSHAKE_BYTES =>
            {
                c.raw_in.extend_from_slice(data)
            }
            ConnState::HandingOff { .. } => {
                debug!(shard = self.index, peer = ?c.peer, "flood during a resume hand-over: closing");
                c.state = ConnState::Dead;
                self.close_conn(ci);
            }
            ConnState::Finishing | ConnState::Dead => {}
        }
    }

    // ---- handshake -----------------------------------------------------------

    fn handshake_bytes(&mut self, ci: usize, data: &mut [u8]) {
        let c = &mut self.conns[ci];
        let ConnState::Handshake(hs) = &mut c.state else {
            return;
        };
        if c.raw_in.len() + data.len() > MAX_HANDSHAKE_BYTES {
            debug!(shard = self.index, peer = ?c.peer, "handshake flood: closing");
            self.fail_handshake(
                ci,
                "too many bytes before the handshake completed",
                Vec::new(),
            );
            return;
        }
        c.raw_in.extend_from_slice(data);
        let used = hs.recv(data);
        let event = hs.poll();
        let rest_start = used;
        match event {
            ServerEvent::NeedMore | ServerEvent::Done => {}
            ServerEvent::Failed(err) => {
                let out = hs.take_output();
                let msg = err.to_string();
                self.fail_handshake(ci, &msg, out);
            }
            ServerEvent::NewSession(req) => {
                let rest = data[rest_start..].to_vec();
                self.new_session(ci, req.target, req.flag.unwrap_or(0), rest);
            }
            ServerEvent::Resume(req) => {
                let rest = data[rest_start..].to_vec();
                self.resume(ci, req, rest);
            }
        }
    }

    fn end_handshake(&mut self, ci: usize) {
        if matches!(self.conns[ci].state, ConnState::Handshake(_)) {
            self.handshaking -= 1;
        }
    }

    fn fail_handshake(&mut self, ci: usize, why: &str, answer: Vec<u8>) {
        self.end_handshake(ci);
        self.shared.shards[self.index]
            .stats
            .handshake_failed
            .fetch_add(1, Ordering::Relaxed);
        let c = &mut self.conns[ci];
        debug!(shard = self.index, peer = ?c.peer, "handshake failed: {why}");
        c.raw_in = Vec::new();
        if answer.is_empty() {
            c.state = ConnState::Dead;
            self.close_conn(ci);
        } else {
            c.state = ConnState::Finishing;
            c.hs_out = answer;
            self.flush_conn(ci);
        }
    }

    fn alloc_id(&mut self) -> Option<u32> {
        // Low bits name the shard; the rest count. Skip ids still in use after wrap.
        let max_counter = u32::MAX >> self.id_bits;
        for _ in 0..1024 {
            let counter = self.next_id;
            self.next_id = if self.next_id >= max_counter {
                1
            } else {
                self.next_id + 1
            };
            let id = (counter << self.id_bits) | self.index as u32;
            if id != 0 && !self.by_id.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn owner_of(&self, id: u32) -> usize {
        (id & ((1u32 << self.id_bits) - 1)) as usize
    }

    fn new_session(&mut self, ci: usize, target: Option<String>, flag: i32, rest: Vec<u8>) {
        if self.sessions.len() >= self.max_sessions_here() {
            self.warn_limit("max_sessions reached: new sessions are being refused");
            self.fail_handshake(ci, "session limit reached", Vec::new());
            return;
        }
        let Some(id) = self.alloc_id() else {
            self.fail_handshake(ci, "no free session id", Vec::new());
            return;
        };
        self.end_handshake(ci);
        let random: u64 = self.rng.random();
        let c = &mut self.conns[ci];
        let ConnState::Handshake(hs) = &mut c.state else {
            return;
        };
        let ns = hs.accept_new(id, random);
        c.hs_out = hs.take_output();
        c.raw_in = Vec::new();
        let peer = c.peer;
        let session = Session::new(id, ns.secret, self.cfg.reuse_buffer);
        let epoch = self.new_epoch();
        let si = self.sessions.insert(Sess {
            epoch,
            id,
            client: Outbound::Scp(Box::new(session)),
            conn: Some(ci),
            peer: Peer::Echo,
            from_client: Vec::new(),
            from_peer: Vec::new(),
            io_refs: 0,
            closing: None,
            detach_token: 0,
            client_addr: peer,
            target: target.filter(|t| !t.is_empty()),
            flag,
            client_eof: false,
            opened: Instant::now(),
        });
        self.by_id.insert(id, si);
        self.conns[ci].state = ConnState::Attached(si, epoch);
        self.shared.shards[self.index]
            .stats
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        info!(shard = self.index, session = id, peer = ?peer, target = ?self.sessions[si].target, "session opened");
        self.start_peer(si);
        self.flush_conn(ci);
        if !rest.is_empty() {
            let mut rest = rest;
            self.client_bytes(si, epoch, &mut rest);
        }
    }

    fn open_plain_session(&mut self, ci: usize) {
        // Workers address sessions by id, so plain ones need one too.
        let id = match self.hub {
            Some(_) => match self.alloc_id() {
                Some(id) => id,
                None => {
                    self.client_gone(ci, "no free session id");
                    return;
                }
            },
            None => 0,
        };
        let epoch = self.new_epoch();
        let limit = self.cfg.relay_buffer;
        let peer = self.conns[ci].peer;
        let si = self.sessions.insert(Sess {
            epoch,
            id,
            client: Outbound::Plain(PlainQueue::new(limit)),
            conn: Some(ci),
            peer: Peer::Echo,
            from_client: Vec::new(),
            from_peer: Vec::new(),
            io_refs: 0,
            closing: None,
            detach_token: 0,
            client_addr: peer,
            target: None,
            flag: 0,
            client_eof: false,
            opened: Instant::now(),
        });
        if id != 0 {
            self.by_id.insert(id, si);
            self.shared.shards[self.index]
                .stats
                .sessions_opened
                .fetch_add(1, Ordering::Relaxed);
        }
        self.conns[ci].state = ConnState::Attached(si, epoch);
        self.shared.shards[self.index]
            .stats
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        debug!(shard = self.index, peer = ?peer, "plain connection opened");
        self.start_peer(si);
    }

    fn resume(&mut self, ci: usize, req: ReuseConnReq, rest: Vec<u8>) {
        let owner = self.owner_of(req.id);
        if owner != self.index && owner < self.cfg.shards {
            self.hand_off(ci, owner);
            return;
        }
        self.end_handshake(ci);
        let peer = self.conns[ci].peer;
        let Some(&si) = self.by_id.get(&req.id) else {
            info!(shard = self.index, session = req.id, peer = ?peer, "resume refused: 404 no such session");
            self.refuse_resume(ci, Status::NotFound);
            return;
        };
        let sg = self.sessions[si].epoch;
        let result = match self.sessions[si].client.session_mut() {
            Some(s) => s.accept_resume(&req),
            None => Err(Status::NotFound),
        };
        match result {
            Err(status) => {
                info!(shard = self.index, session = req.id, peer = ?peer, "resume refused: {}", status as u16);
                self.refuse_resume(ci, status);
                if status == Status::NotAcceptable {
                    self.close_session(si, CloseReason::ReplayExceeded);
                }
            }
            Ok(resend) => {
                if let Some(old) = self.sessions[si].conn.take() {
                    debug!(
                        shard = self.index,
                        session = req.id,
                        "resume takes over a live connection"
                    );
                    self.conns[old].state = ConnState::Dead;
                    self.close_conn(old);
                }
                let s = &mut self.sessions[si];
                let received = s.client.session().map_or(0, |x| x.received() as u32);
                s.conn = Some(ci);
                s.detach_token = 0;
                s.client_addr = peer.or(s.client_addr);
                let c = &mut self.conns[ci];
                let ConnState::Handshake(hs) = &mut c.state else {
                    return;
                };
                hs.answer_resume(received, Status::Ok);
                c.hs_out = hs.take_output();
                c.raw_in = Vec::new();
                c.state = ConnState::Attached(si, sg);
                self.shared.shards[self.index]
                    .stats
                    .sessions_resumed
                    .fetch_add(1, Ordering::Relaxed);
                info!(shard = self.index, session = req.id, peer = ?peer, resend, "session resumed");
                self.worker_resumed(si);
                self.flush_conn(ci);
                if !rest.is_empty() {
                    let mut rest = rest;
                    self.client_bytes(si, sg, &mut rest);
                }
                self.drain_from_peer(si);
            }
        }
    }

    fn refuse_resume(&mut self, ci: usize, status: Status) {
        self.shared.shards[self.index]
            .stats
            .resumes_failed
            .fetch_add(1, Ordering::Relaxed);
        let c = &mut self.conns[ci];
        let ConnState::Handshake(hs) = &mut c.state else {
            return;
        };
        hs.answer_resume(0, status);
        let out = hs.take_output();
        c.state = ConnState::Finishing;
        c.hs_out = out;
        c.raw_in = Vec::new();
        self.flush_conn(ci);
    }

    // ---- hand-over between shards -----------------------------------------

    fn hand_off(&mut self, ci: usize, target: usize) {
        self.end_handshake(ci);
        let c = &mut self.conns[ci];
        c.state = ConnState::HandingOff {
            target,
            recv_ended: !c.recv_armed,
            sent: false,
        };
        if c.recv_armed {
            let ud = token::encode(Op::Recv, ci, c.epoch);
            self.push(
                opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(token::encode(Op::Ignore, 0, 0)),
            );
        } else {
            self.send_handoff(ci);
        }
    }

    fn on_handoff_recv_end(&mut self, ci: usize, epoch: u32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        if let ConnState::HandingOff { recv_ended, .. } = &mut c.state {
            if !c.recv_armed && !*recv_ended {
                *recv_ended = true;
                self.send_handoff(ci);
            }
        }
    }

    fn send_handoff(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        let ConnState::HandingOff { target, sent, .. } = &mut c.state else {
            return;
        };
        if *sent || c.closing {
            return;
        }
        *sent = true;
        let target = *target;
        self.handoff_seq = self.handoff_seq.wrapping_add(1);
        let seq = self.handoff_seq;
        let msg = Handoff {
            from: self.index,
            seq,
            peer: c.peer,
            bytes: std::mem::take(&mut c.raw_in),
        };
        let link = &self.shared.shards[target];
        link.inbox.push(msg);
        let ring_fd = link.ring_fd.load(Ordering::Acquire);
        c.ops += 1;
        let e = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(c.slot),
            types::DestinationSlot::auto_target(),
            token::encode(Op::HandoffIn, self.index, seq),
        )
        .build()
        .user_data(token::encode(Op::HandoffOut, ci, c.epoch));
        self.push(e);
    }

    fn on_handoff_out(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        if res < 0 {
            warn!(
                shard = self.index,
                "handing a resume to its shard failed: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            c.state = ConnState::Finishing;
            let mut out = Vec::new();
            crate::proto::message::encode_record(b"0\n501", &mut out);
            c.hs_out = out;
            self.flush_conn(ci);
        } else {
            self.shared.shards[self.index]
                .stats
                .handoffs_out
                .fetch_add(1, Ordering::Relaxed);
            c.state = ConnState::Dead;
            self.close_conn(ci);
        }
    }

    fn on_handoff_in(&mut self, from: usize, seq: u32, res: i32) {
        while let Some(h) = self.shared.shards[self.index].inbox.pop() {
            self.handoffs.insert((h.from, h.seq), h);
        }
        let Some(h) = self.handoffs.remove(&(from, seq)) else {
            if res >= 0 {
                self.close_slot(res as u32);
            }
            return;
        };
        if res < 0 {
            warn!(
                shard = self.index,
                "a resumed connection could not be received: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            return;
        }
        self.shared.shards[self.index]
            .stats
            .handoffs_in
            .fetch_add(1, Ordering::Relaxed);
        let ci = self.new_conn(res as u32, h.peer, ConnState::Handshake(Box::default()));
        self.handshaking += 1;
        let epoch = self.conns[ci].epoch;
        self.hs_timers
            .push(Instant::now(), TimerEntry { index: ci, epoch });
        let mut bytes = h.bytes;
        self.handshake_bytes(ci, &mut bytes);
        if self.conns.get(ci).is_some_and(|c| {
            !c.closing && matches!(c.state, ConnState::Attached(..) | ConnState::Handshake(_))
        }) {
            self.arm_recv(ci);
        }
    }

    // ---- client send ---------------------------------------------------------

    /// Starts the next send on a client connection: first any handshake
    /// answer, then the session's unsent bytes.
    fn flush_conn(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if c.closing || c.hs_sending || c.send_len > 0 {
            return;
        }
        if c.hs_sent < c.hs_out.len() {
            let rest = &c.hs_out[c.hs_sent..];
            c.hs_sending = true;
            c.ops += 1;
            let e = opcode::Send::new(types::Fixed(c.slot), rest.as_ptr(), rest.len() as u32)
                .build()
                .user_data(token::encode(Op::HsSend, ci, c.epoch));
            self.push(e);
            return;
        }
        let ConnState::Attached(si, sg) = c.state else {
            return;
        };
        let (slot, cgen) = (c.slot, c.epoch);
        let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) else {
            return;
        };
        let Some(op) = s
            .client
            .next_send(types::Fixed(slot), 0, &mut self.meta_pool)
        else {
            return;
        };
        s.io_refs += 1;
        let c = &mut self.conns[ci];
        c.send_len = op.len;
        c.send_sess = Some((si, sg));
        c.send_meta = op.meta;
        c.ops += 1;
        self.push(op.entry.user_data(token::encode(Op::Send, ci, cgen)));
    }

    fn on_hs_send(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        c.hs_sending = false;
        if res <= 0 {
            if !c.closing {
                self.client_gone(ci, "handshake answer could not be sent");
            }
            self.maybe_free_conn(ci);
            return;
        }
        c.hs_sent += res as usize;
        if c.hs_sent >= c.hs_out.len() {
            c.hs_out = Vec::new();
            c.hs_sent = 0;
            if matches!(c.state, ConnState::Finishing) {
                c.state = ConnState::Dead;
                self.close_conn(ci);
                self.maybe_free_conn(ci);
                return;
            }
        }
        self.flush_conn(ci);
        self.maybe_free_conn(ci);
    }

    fn on_send(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        let len = std::mem::take(&mut c.send_len);
        if let Some(meta) = c.send_meta.take() {
            self.meta_pool.push(meta);
        }
        let sess = c.send_sess.take();
        let attached = matches!(c.state, ConnState::Attached(si, sg) if Some((si, sg)) == sess);
        let closing = c.closing;
        if let Some((si, sg)) = sess {
            if let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) {
                s.io_refs -= 1;
                if attached && !closing && res > 0 && s.conn == Some(ci) {
                    s.client.sent((res as usize).min(len));
                }
            }
        }
        if res < 0 && !closing {
            let e = std::io::Error::from_raw_os_error(-res);
            self.client_gone(ci, &format!("send failed: {e}"));
        } else if attached && !closing {
            if let Some((si, _)) = sess {
                self.after_client_progress(si);
            }
        }
        if let Some((si, _)) = sess {
            self.maybe_free_session(si);
        }
        self.maybe_free_conn(ci);
    }

    /// The client side made room: move stashed bytes along and restart
    /// whatever was paused for lack of room.
    fn after_client_progress(&mut self, si: usize) {
        self.drain_from_peer(si);
        if matches!(self.sessions[si].peer, Peer::Echo) {
            self.drain_from_client(si);
        }
        if let Some(ci) = self.sessions[si].conn {
            self.flush_conn(ci);
        }
        self.check_finished(si);
    }

    // ---- data paths ----------------------------------------------------------

    /// Bytes from the client (ciphertext for SCP, decrypted here in place).
    fn client_bytes(&mut self, si: usize, sg: u32, data: &mut [u8]) {
        let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        if let Some(session) = s.client.session_mut() {
            session.decrypt(data);
        }
        if !s.from_client.is_empty() {
            s.from_client.extend_from_slice(data);
            // A connection that resumed the session is not paused yet.
            if let Some(ci) = s.conn {
                self.pause_recv(ci);
            }
            return;
        }
        let taken = self.deliver_to_peer(si, data);
        if taken < data.len() {
            let s = &mut self.sessions[si];
            s.from_client.extend_from_slice(&data[taken..]);
            if let Some(ci) = s.conn {
                self.pause_recv(ci);
            }
        }
    }

    /// Hands plaintext to the session's peer side; returns how much it took.
    fn deliver_to_peer(&mut self, si: usize, data: &[u8]) -> usize {
        let s = &mut self.sessions[si];
        match &mut s.peer {
            Peer::Echo => {
                let n = s.client.push(data);
                if let Some(ci) = s.conn {
                    self.flush_conn(ci);
                }
                n
            }
            Peer::Up(up) => {
                let Some(out) = up.out.as_mut() else { return 0 };
                if matches!(up.state, UpState::Closed) {
                    return data.len(); // nowhere to go; the session is ending
                }
                let n = out.push(data);
                self.flush_up(si);
                n
            }
            Peer::Worker(_) => self.deliver_to_worker(si, data),
        }
    }

    /// Hands plaintext from the peer side to the client; returns how much it took.
    fn deliver_to_client(&mut self, si: usize, data: &[u8]) -> usize {
        let s = &mut self.sessions[si];
        let n = s.client.push(data);
        if let Some(ci) = s.conn {
            self.flush_conn(ci);
        }
        n
    }

    fn drain_from_client(&mut self, si: usize) {
        let s = &mut self.sessions[si];
        if s.from_client.is_empty() {
            if let Some(ci) = s.conn.filter(|_| !worker_holds(s)) {
                self.resume_recv(ci);
            }
            return;
        }
        let stash = std::mem::take(&mut s.from_client);
        let n = self.deliver_to_peer(si, &stash);
        let s = &mut self.sessions[si];
        if n < stash.len() {
            s.from_client = stash[n..].to_vec();
        } else if let Some(ci) = s.conn.filter(|_| !worker_holds(s)) {
            self.resume_recv(ci);
        }
    }

    fn drain_from_peer(&mut self, si: usize) {
        let s = &mut self.sessions[si];
        if s.from_peer.is_empty() {
            let epoch = s.epoch;
            self.resume_up_recv(si, epoch);
            return;
        }
        let stash = std::mem::take(&mut s.from_peer);
        let n = self.deliver_to_client(si, &stash);
        let s = &mut self.sessions[si];
        if n < stash.len() {
            s.from_peer = stash[n..].to_vec();
        } else {
            let epoch = s.epoch;
            self.resume_up_recv(si, epoch);
        }
    }

    // ---- upstream --------------------------------------------------------------

    fn proxy(&self) -> Option<Arc<Proxy>> {
        match &self.cfg.backend {
            Backend::Proxy(p) => Some(p.clone()),
            Backend::Echo | Backend::Workers(_) => None,
        }
    }

    fn start_peer(&mut self, si: usize) {
        if self.hub.is_some() {
            self.start_worker(si);
            return;
        }
        let Some(proxy) = self.proxy() else { return };
        let s = &self.sessions[si];
        let tries: Vec<usize> = proxy
            .upstreams
            .order(s.target.as_deref(), &mut self.rng)
            .into_iter()
            .rev()
            .collect();
        let epoch = self.new_epoch();
        let plain = matches!(proxy.net, UpstreamNet::Tcp);
        let mut up = Box::new(UpLink {
            epoch,
            slot: None,
            state: UpState::Connecting,
            tries,
            addr: Box::default(),
            addr_len: 0,
            out: plain.then(|| Outbound::Plain(PlainQueue::new(self.cfg.relay_buffer))),
            ops: 0,
            recv_armed: false,
            paused: false,
            send_len: 0,
            send_meta: None,
            hs_out: Vec::new(),
            hs_sent: 0,
            hs_sending: false,
            eof: false,
        });
        if let Some(out) = up.out.as_mut() {
            self.announce_into(si, out, &proxy);
        }
        self.sessions[si].peer = Peer::Up(up);
        self.connect_next(si);
    }

    fn announce_into(&self, si: usize, out: &mut Outbound, proxy: &Proxy) {
        let s = &self.sessions[si];
        if s.flag & 1 != 0 {
            return;
        }
        let Some(client) = s.client_addr else { return };
        let bytes = proxy.announce.bytes(client, self.local);
        out.push(&bytes);
    }

    fn up(&mut self, si: usize, epoch: u32) -> Option<&mut UpLink> {
        match self.sessions.get_mut(si) {
            Some(Sess {
                peer: Peer::Up(up), ..
            }) if up.epoch == epoch => Some(up),
            _ => None,
        }
    }

    fn connect_next(&mut self, si: usize) {
        let Some(proxy) = self.proxy() else { return };
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        let Some(host) = up.tries.pop() else {
            warn!(
                shard = self.index,
                session = self.sessions[si].id,
                "no upstream reachable"
            );
            self.shared.shards[self.index]
                .stats
                .upstream_failed
                .fetch_add(1, Ordering::Relaxed);
            self.close_session(si, CloseReason::UpstreamUnreachable);
            return;
        };
        let addr = proxy.upstreams.hosts()[host].addr;
        let (raw, len) = RawAddr::from_socket_addr(addr);
        *up.addr = raw;
        up.addr_len = len;
        up.ops += 1;
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let e = opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
            .file_index(Some(types::DestinationSlot::auto_target()))
            .build()
            .user_data(token::encode(Op::UpSocket, si, up.epoch));
        self.push(e);
    }

    fn on_up_socket(&mut self, si: usize, epoch: u32, res: i32) {
        let closing = self.sessions.get(si).is_some_and(|s| s.closing.is_some());
        let connect_ts = &*self.connect_ts as *const types::Timespec;
        let Some(up) = self.up(si, epoch) else {
            if res >= 0 {
                self.close_slot(res as u32);
            }
            return;
        };
        up.ops -= 1;
        if res < 0 {
            warn!(
                "cannot create an upstream socket: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            self.close_session(si, CloseReason::UpstreamError);
            self.maybe_free_session(si);
            return;
        }
        let slot = res as u32;
        up.slot = Some(slot);
        if closing {
            self.close_up(si);
            self.maybe_free_session(si);
            return;
        }
        static ONE: i32 = 1;
        let nodelay = opcode::SetSockOpt::new(
            types::Fixed(slot),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            &ONE as *const i32 as *const libc::c_void,
            4,
        )
        .build()
        .user_data(token::encode(Op::Ignore, 0, 0));
        up.ops += 1;
        let connect = opcode::Connect::new(types::Fixed(slot), up.addr.as_sockaddr(), up.addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(token::encode(Op::UpConnect, si, epoch));
        let timeout = opcode::LinkTimeout::new(connect_ts)
            .build()
            .user_data(token::encode(Op::Ignore, 0, 0));
        self.push(nodelay);
        self.push(connect);
        self.push(timeout);
    }

    fn on_up_connect(&mut self, si: usize, epoch: u32, res: i32) {
        let Some(proxy) = self.proxy() else { return };
        let Some(up) = self.up(si, epoch) else { return };
        up.ops -= 1;
        let (shard, id) = (self.index, self.sessions[si].id);
        if self.sessions[si].closing.is_some() {
            self.close_up(si);
            self.maybe_free_session(si);
            return;
        }
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if res < 0 {
            let e = if res == -libc::ECANCELED {
                "timed out".to_string()
            } else {
                std::io::Error::from_raw_os_error(-res).to_string()
            };
            let addr = up.addr.to_socket_addr();
            debug!(shard, session = id, upstream = ?addr, "upstream connect failed: {e}");
            // Close this attempt's socket, then try the next host.
            if let Some(slot) = up.slot.take() {
                self.close_slot(slot);
            }
            self.connect_next(si);
            return;
        }
        debug!(shard, session = id, "upstream connected");
        match proxy.net {
            UpstreamNet::Tcp => up.state = UpState::Open,
            UpstreamNet::Scp => {
                let random: u64 = self.rng.random();
                let mut hs = Box::new(ClientHandshake::new_session(random, None, None));
                up.hs_out = hs.take_output();
                up.state = UpState::Handshake(hs);
            }
        }
        self.arm_up_recv_if(si, epoch);
        self.flush_up(si);
        self.drain_from_client(si);
    }

    fn arm_up_recv_if(&mut self, si: usize, epoch: u32) {
        let bgid = self.bufs.bgid();
        let closing = self.sessions.get(si).is_none_or(|s| s.closing.is_some());
        let Some(up) = self.up(si, epoch) else { return };
        if up.recv_armed
            || up.paused
            || closing
            || up.eof
            || matches!(up.state, UpState::Connecting | UpState::Closed)
        {
            return;
        }
        let Some(slot) = up.slot else { return };
        up.recv_armed = true;
        up.ops += 1;
        let e = opcode::RecvMulti::new(types::Fixed(slot), bgid)
            .build()
            .user_data(token::encode(Op::UpRecv, si, epoch));
        self.push(e);
    }

    fn pause_up_recv(&mut self, si: usize) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if up.paused {
            return;
        }
        up.paused = true;
        self.shared.shards[self.index]
            .stats
            .paused
            .fetch_add(1, Ordering::Relaxed);
        if up.recv_armed {
            let ud = token::encode(Op::UpRecv, si, up.epoch);
            self.push(
                opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(token::encode(Op::Ignore, 0, 0)),
            );
        }
    }

    fn resume_up_recv(&mut self, si: usize, _sess_gen: u32) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if !up.paused {
            return;
        }
        up.paused = false;
        let epoch = up.epoch;
        self.arm_up_recv_if(si, epoch);
    }

    fn on_up_recv(&mut self, si: usize, epoch: u32, res: i32, flags: u32) {
        let buf = if res > 0 {
            self.bufs.take(flags, res as usize)
        } else {
            None
        };
        let (shard, id) = (self.index, self.sessions.get(si).map_or(0, |s| s.id));
        let Some(up) = self.up(si, epoch) else {
            if let Some((bid, _, _)) = buf {
                self.bufs.push(bid);
            }
            return;
        };
        if !is_more(flags) {
            up.recv_armed = false;
            up.ops -= 1;
        }
        match buf {
            Some((bid, ptr, len)) => {
                // SAFETY: see `on_recv`.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                self.upstream_bytes(si, data);
                self.bufs.push(bid);
            }
            None if res == 0 => {
                up.eof = true;
                debug!(shard, session = id, "upstream closed");
                self.close_up(si);
                self.check_finished(si);
            }
            None if res == -libc::ENOBUFS => self.rearm_ups.push((si, epoch)),
            None if res == -libc::ECANCELED => {}
            None if res < 0 => {
                let e = std::io::Error::from_raw_os_error(-res);
                debug!(shard, session = id, "upstream receive failed: {e}");
                up.eof = true;
                self.close_up(si);
                self.check_finished(si);
            }
            None => {}
        }
        if let Some(up) = self.up(si, epoch) {
            if !up.recv_armed && !up.paused && !up.eof {
                self.rearm_ups.push((si, epoch));
            }
        }
        self.maybe_free_session(si);
    }

    fn upstream_bytes(&mut self, si: usize, data: &mut [u8]) {
        let s = &mut self.sessions[si];
        if s.closing.is_some() {
            return;
        }
        let Peer::Up(up) = &mut s.peer else { return };
        // A chained SCP upstream: finish its handshake first, then decrypt.
        let mut start = 0;
        if let UpState::Handshake(hs) = &mut up.state {
            start = hs.recv(data);
            match hs.poll() {
                ClientEvent::NeedMore => return,
                ClientEvent::Established { id, secret } => {
                    let session = Session::new(id, secret, self.cfg.reuse_buffer);
                    let mut out = Outbound::Scp(Box::new(session));
                    up.state = UpState::Open;
                    if let Some(proxy) = self.proxy() {
                        self.announce_into(si, &mut out, &proxy);
                    }
                    let Peer::Up(up) = &mut self.sessions[si].peer else {
                        return;
                    };
                    up.out = Some(out);
                    self.drain_from_client(si);
                    self.flush_up(si);
                }
                _ => {
                    warn!(
                        shard = self.index,
                        session = self.sessions[si].id,
                        "upstream SCP handshake failed"
                    );
                    self.close_session(si, CloseReason::UpstreamHandshake);
                    return;
                }
            }
        }
        let data = &mut data[start..];
        if data.is_empty() {
            return;
        }
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if let Some(session) = up.out.as_mut().and_then(|o| o.session_mut()) {
            session.decrypt(data);
        }
        let s = &mut self.sessions[si];
        if !s.from_peer.is_empty() {
            s.from_peer.extend_from_slice(data);
            return;
        }
        let n = self.deliver_to_client(si, data);
        if n < data.len() {
            self.sessions[si].from_peer.extend_from_slice(&data[n..]);
            self.pause_up_recv(si);
        }
    }

    fn flush_up(&mut self, si: usize) {
        let Some(s) = self.sessions.get_mut(si) else {
            return;
        };
        let Peer::Up(up) = &mut s.peer else { return };
        let Some(slot) = up.slot else { return };
        if up.hs_sending
            || up.send_len > 0
            || matches!(up.state, UpState::Connecting | UpState::Closed)
        {
            return;
        }
        let epoch = up.epoch;
        if up.hs_sent < up.hs_out.len() {
            let rest = &up.hs_out[up.hs_sent..];
            up.hs_sending = true;
            up.ops += 1;
            s.io_refs += 1;
            let e = opcode::Send::new(types::Fixed(slot), rest.as_ptr(), rest.len() as u32)
                .build()
                .user_data(token::encode(Op::UpSend, si, epoch));
            self.push(e);
            return;
        }
        let Some(out) = up.out.as_mut() else { return };
        let Some(op) = out.next_send(types::Fixed(slot), 0, &mut self.meta_pool) else {
            return;
        };
        up.send_len = op.len;
        up.send_meta = op.meta;
        up.ops += 1;
        s.io_refs += 1;
        self.push(op.entry.user_data(token::encode(Op::UpSend, si, epoch)));
    }

    fn on_up_send(&mut self, si: usize, epoch: u32, res: i32) {
        let Some(up) = self.up(si, epoch) else { return };
        up.ops -= 1;
        let meta = up.send_meta.take();
        let was_hs = std::mem::take(&mut up.hs_sending);
        let len = std::mem::take(&mut up.send_len);
        if let Some(meta) = meta {
            self.meta_pool.push(meta);
        }
        let s = &mut self.sessions[si];
        s.io_refs -= 1;
        let Peer::Up(up) = &mut s.peer else { return };
        if res < 0 {
            if !matches!(up.state, UpState::Closed) {
                debug!(
                    shard = self.index,
                    session = s.id,
                    "upstream send failed: {}",
                    std::io::Error::from_raw_os_error(-res)
                );
                up.eof = true;
                self.close_up(si);
                self.check_finished(si);
            }
            self.maybe_free_session(si);
            return;
        }
        if was_hs {
            up.hs_sent += res as usize;
            if up.hs_sent >= up.hs_out.len() {
                up.hs_out = Vec::new();
            }
        } else if let Some(out) = up.out.as_mut() {
            out.sent((res as usize).min(len));
        }
        self.flush_up(si);
        self.drain_from_client(si);
        self.check_finished(si);
        self.maybe_free_session(si);
    }

    fn close_up(&mut self, si: usize) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if matches!(up.state, UpState::Closed) && up.slot.is_none() {
            return;
        }
        up.state = UpState::Closed;
        let epoch = up.epoch;
        if let Some(slot) = up.slot.take() {
            up.ops += 1;
            let cancel =
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(slot)).all())
                    .build()
                    .flags(squeue::Flags::IO_HARDLINK)
                    .user_data(token::encode(Op::Ignore, 0, 0));
            let close = opcode::Close::new(types::Fixed(slot))
                .build()
                .user_data(token::encode(Op::UpClose, si, epoch));
            self.push(cancel);
            self.push(close);
        }
    }

    fn on_up_closed(&mut self, si: usize, epoch: u32) {
        if let Some(up) = self.up(si, epoch) {
            up.ops -= 1;
        }
        self.maybe_free_session(si);
    }

    // ---- workers ---------------------------------------------------------------
    //
    // Embedded mode. Client plaintext is cut into frames (one decoder per
    // session) and offered to the session's worker queue; when it is full the
    // events wait in the session (`WorkerLink::pending`), the client's recv is
    // paused, and `worker_round` retries once per loop. Commands from the
    // application arrive in `ShardLink::commands`.

    /// Connects a new session to its worker queue and announces it.
    fn start_worker(&mut self, si: usize) {
        let Some(hub) = &self.hub else { return };
        let s = &mut self.sessions[si];
        s.peer = Peer::Worker(Box::new(WorkerLink {
            queue: s.id as usize % hub.senders.len(),
            decoder: FrameDecoder::new(hub.format, hub.max_frame),
            rx: BytesMut::new(),
            pending: VecDeque::new(),
            broken: false,
        }));
        let opened = Event::Opened {
            session: s.id,
            peer: s.client_addr,
            target: s.target.clone(),
            flag: s.flag,
        };
        self.note_peer(si);
        self.worker_emit(si, opened);
    }

    /// Publishes the session's client address for `Handle::peer_addr`.
    fn note_peer(&self, si: usize) {
        let s = &self.sessions[si];
        if let Ok(mut peers) = self.shared.shards[self.index].peers.lock() {
            match s.client_addr {
                Some(addr) => peers.insert(s.id, addr),
                None => peers.remove(&s.id),
            };
        }
    }

    /// Queues an event for the session's worker, behind any already waiting.
    fn worker_emit(&mut self, si: usize, ev: Event) {
        let Some(hub) = &self.hub else { return };
        let Some(s) = self.sessions.get_mut(si) else {
            return;
        };
        let Peer::Worker(w) = &mut s.peer else { return };
        if !w.pending.is_empty() {
            w.pending.push_back(ev);
        } else if let Err(ev) = offer(&hub.senders[w.queue], &hub.wanted[w.queue], ev) {
            w.pending.push_back(ev);
            let epoch = s.epoch;
            self.worker_wait(si, epoch);
        }
    }

    /// The session's worker queue is full: stop reading from its client
    /// until `retry_workers` has delivered what waits.
    fn worker_wait(&mut self, si: usize, epoch: u32) {
        self.worker_waiting.push((si, epoch));
        self.shared.shards[self.index]
            .stats
            .worker_full
            .fetch_add(1, Ordering::Relaxed);
        if let Some(ci) = self.sessions[si].conn {
            self.pause_recv(ci);
        }
    }

    /// Plaintext for the worker; takes nothing while events wait (the
    /// caller stashes it and pauses the client).
    fn deliver_to_worker(&mut self, si: usize, data: &[u8]) -> usize {
        let Peer::Worker(w) = &mut self.sessions[si].peer else {
            return data.len();
        };
        if w.broken {
            return data.len(); // the session is closing; drop it
        }
        if !w.pending.is_empty() {
            return 0;
        }
        w.rx.extend_from_slice(data);
        self.decode_frames(si);
        data.len()
    }

    /// Offers every complete frame to the worker until its queue is full.
    /// A broken frame marks the session for closing after this batch (its
    /// callers still hold its slab index).
    fn decode_frames(&mut self, si: usize) {
        let Some(hub) = &self.hub else { return };
        let s = &mut self.sessions[si];
        let (id, epoch) = (s.id, s.epoch);
        let Peer::Worker(w) = &mut s.peer else { return };
        if w.broken || !w.pending.is_empty() {
            return;
        }
        let (tx, wanted) = (&hub.senders[w.queue], &hub.wanted[w.queue]);
        loop {
            match w.decoder.decode(&mut w.rx) {
                Ok(Some(data)) => {
                    if let Err(ev) = offer(tx, wanted, Event::Frame { session: id, data }) {
                        w.pending.push_back(ev);
                        self.worker_wait(si, epoch);
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    info!(
                        shard = self.index,
                        session = id,
                        "bad frame from the client: {e}"
                    );
                    w.broken = true;
                    w.rx = BytesMut::new();
                    self.worker_broken.push((si, epoch));
                    return;
                }
            }
        }
    }

    /// A resume. A worker that has not yet seen the detach is spared both,
    /// and one waiting `Resumed` stands for several (so a client resuming
    /// in a loop cannot grow `pending` while its worker is stalled).
    fn worker_resumed(&mut self, si: usize) {
        if self.hub.is_none() {
            return;
        }
        self.note_peer(si);
        let s = &mut self.sessions[si];
        let id = s.id;
        if let Peer::Worker(w) = &mut s.peer {
            match w.pending.back() {
                Some(Event::Detached { .. }) => {
                    w.pending.pop_back();
                    return;
                }
                Some(Event::Resumed { .. }) => return,
                _ => {}
            }
        }
        self.worker_emit(si, Event::Resumed { session: id });
    }

    fn worker_closed(&mut self, si: usize, reason: CloseReason) {
        if self.hub.is_none() {
            return;
        }
        let id = self.sessions[si].id;
        if let Ok(mut peers) = self.shared.shards[self.index].peers.lock() {
            peers.remove(&id);
        }
        self.worker_emit(
            si,
            Event::Closed {
                session: id,
                reason,
            },
        );
    }

    /// Once per loop, before waiting: the application's commands, sessions
    /// waiting for their worker, sessions whose framing broke.
    fn worker_round(&mut self) {
        if self.hub.is_none() {
            return;
        }
        self.drain_commands();
        self.retry_workers();
        for (si, epoch) in std::mem::take(&mut self.worker_broken) {
            if self.sessions.get(si).is_some_and(|s| s.epoch == epoch) {
                self.close_session(si, CloseReason::ProtocolError);
            }
        }
    }

    fn drain_commands(&mut self) {
        let Some(budget) = self.hub.as_ref().map(|h| h.command_capacity) else {
            return;
        };
        // At most one queue's worth per loop, so I/O is not starved.
        for _ in 0..budget {
            let Some(cmd) = self.shared.shards[self.index].commands.pop() else {
                return;
            };
            match cmd {
                Command::Send(id, frame) => self.send_to(id, &frame),
                Command::SendMany(ids, frame) => {
                    for id in ids {
                        self.send_to(id, &frame);
                    }
                }
                Command::Broadcast(frame) => {
                    let ids: Vec<u32> = self.by_id.keys().copied().collect();
                    for id in ids {
                        self.send_to(id, &frame);
                    }
                }
                Command::Kick(id) => {
                    if let Some(&si) = self.by_id.get(&id) {
                        self.close_session(si, CloseReason::Kicked);
                    }
                }
            }
        }
    }

    /// Appends a frame to a session's outgoing stream: into the window (the
    /// send buffer that also serves resumes) while it has room, the rest
    /// into `from_peer`, bounded by `relay_buffer`.
    fn send_to(&mut self, id: u32, frame: &Encoded) {
        let Some(&si) = self.by_id.get(&id) else {
            return;
        };
        let limit = self.cfg.relay_buffer;
        let s = &mut self.sessions[si];
        if s.closing.is_some() {
            return;
        }
        let direct = if s.from_peer.is_empty() {
            s.client.free_space().min(frame.len())
        } else {
            0
        };
        if s.from_peer.len() + (frame.len() - direct) > limit {
            debug!(
                shard = self.index,
                session = id,
                window = s.client.unsent(),
                "outgoing frames overflow"
            );
            self.close_session(si, CloseReason::SendOverflow);
            return;
        }
        for part in frame.parts() {
            let n = if s.from_peer.is_empty() {
                s.client.push(part)
            } else {
                0
            };
            s.from_peer.extend_from_slice(&part[n..]);
        }
        if let Some(ci) = s.conn.filter(|_| direct > 0) {
            self.flush_conn(ci);
        }
    }

    /// Delivers what waits for worker queues that have room again; a session
    /// whose events all went resumes decoding and reading.
    fn retry_workers(&mut self) {
        let Some(hub) = self.hub.clone() else { return };
        for (si, epoch) in std::mem::take(&mut self.worker_waiting) {
            let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == epoch) else {
                continue;
            };
            let closing = s.closing.is_some();
            let Peer::Worker(w) = &mut s.peer else {
                continue;
            };
            let (tx, wanted) = (&hub.senders[w.queue], &hub.wanted[w.queue]);
            while let Some(ev) = w.pending.pop_front() {
                if let Err(ev) = offer(tx, wanted, ev) {
                    w.pending.push_front(ev);
                    break;
                }
            }
            if !w.pending.is_empty() {
                self.worker_waiting.push((si, epoch));
                continue;
            }
            if closing {
                self.maybe_free_session(si);
                continue;
            }
            self.decode_frames(si);
            self.drain_from_client(si);
            self.check_finished(si);
        }
    }

    // ---- endings ---------------------------------------------------------------

    /// The client's connection ended (or must end).
    fn client_gone(&mut self, ci: usize, why: &str) {
        let c = &mut self.conns[ci];
        let state = std::mem::replace(&mut c.state, ConnState::Dead);
        let peer = c.peer;
        match state {
            ConnState::Handshake(_) => {
                self.handshaking -= 1;
                self.shared.shards[self.index]
                    .stats
                    .handshake_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(shard = self.index, peer = ?peer, "connection closed during handshake: {why}");
            }
            ConnState::Attached(si, sg) => {
                if let Some(s) = self
                    .sessions
                    .get_mut(si)
                    .filter(|s| s.epoch == sg && s.conn == Some(ci))
                {
                    s.conn = None;
                    if s.client.session().is_some() && s.closing.is_none() {
                        let token = self.next_epoch.wrapping_add(1).max(1);
                        self.next_epoch = token;
                        let s = &mut self.sessions[si];
                        s.detach_token = token;
                        debug!(
                            shard = self.index,
                            session = s.id,
                            "session detached: {why}"
                        );
                        self.reuse_timers.push(
                            Instant::now(),
                            TimerEntry {
                                index: si,
                                epoch: token,
                            },
                        );
                        let id = s.id;
                        self.worker_emit(si, Event::Detached { session: id });
                        self.check_finished(si);
                    } else {
                        s.client_eof = true;
                        self.check_finished(si);
                    }
                }
            }
            _ => {}
        }
        self.close_conn(ci);
    }

    /// Ends a session whose work is done: the upstream finished and the
    /// client has everything, or (plain mode) the client left and the
    /// upstream has everything.
    fn check_finished(&mut self, si: usize) {
        let Some(s) = self.sessions.get(si) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        let peer_done = match &s.peer {
            Peer::Up(up) => up.eof,
            Peer::Echo | Peer::Worker(_) => false,
        };
        if peer_done && s.from_peer.is_empty() && s.client.unsent() == 0 {
            self.close_session(si, CloseReason::UpstreamClosed);
            return;
        }
        if s.client_eof {
            let up_drained = match &s.peer {
                Peer::Up(up) => up.out.as_ref().is_none_or(|o| o.unsent() == 0) || up.eof,
                Peer::Echo | Peer::Worker(_) => true,
            };
            if up_drained && s.from_client.is_empty() {
                self.close_session(si, CloseReason::ClientClosed);
            }
        }
    }

    fn close_session(&mut self, si: usize, reason: CloseReason) {
        let s = &mut self.sessions[si];
        if s.closing.is_some() {
            return;
        }
        s.closing = Some(reason);
        self.shared.shards[self.index]
            .stats
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        let s = &self.sessions[si];
        if s.id != 0 {
            self.by_id.remove(&s.id);
            info!(
                shard = self.index,
                session = s.id,
                peer = ?s.client_addr,
                lived_ms = s.opened.elapsed().as_millis() as u64,
                "session closed: {reason}"
            );
        } else {
            debug!(shard = self.index, peer = ?s.client_addr, "plain connection closed: {reason}");
        }
        self.worker_closed(si, reason);
        let s = &mut self.sessions[si];
        s.from_client = Vec::new();
        s.from_peer = Vec::new();
        if let Some(ci) = s.conn.take() {
            self.conns[ci].state = ConnState::Dead;
            self.close_conn(ci);
        }
        self.close_up(si);
        self.maybe_free_session(si);
    }

    fn maybe_free_session(&mut self, si: usize) {
        let Some(s) = self.sessions.get(si) else {
            return;
        };
        if s.closing.is_none() || s.io_refs > 0 || s.conn.is_some() {
            return;
        }
        match &s.peer {
            Peer::Up(up) if up.ops > 0 || up.slot.is_some() => return,
            // The worker must still get this session's last events (its
            // slot counts against max_sessions until then).
            Peer::Worker(w) if !w.pending.is_empty() => return,
            _ => {}
        }
        self.sessions.remove(si);
    }

    fn close_conn(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.closing {
            return;
        }
        c.closing = true;
        c.ops += 1;
        let slot = c.slot;
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(slot)).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(token::encode(Op::Ignore, 0, 0));
        let close = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(token::encode(Op::Close, ci, c.epoch));
        self.push(cancel);
        self.push(close);
    }

    fn close_slot(&mut self, slot: u32) {
        let close = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(token::encode(Op::Ignore, 0, 0));
        self.push(close);
    }

    fn on_conn_closed(&mut self, ci: usize, epoch: u32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        self.maybe_free_conn(ci);
    }

    fn maybe_free_conn(&mut self, ci: usize) {
        let Some(c) = self.conns.get(ci) else { return };
        if c.closing && c.ops == 0 {
            self.conns.remove(ci);
        }
    }

    // ---- timers, wake-ups, shutdown ------------------------------------------------

    fn on_tick(&mut self, flags: u32) {
        if !is_more(flags) && self.stopping.is_none() {
            let tick = opcode::Timeout::new(&*self.tick_ts as *const _)
                .count(0)
                .flags(types::TimeoutFlags::MULTISHOT)
                .build()
                .user_data(token::encode(Op::Tick, 0, 0));
            self.push(tick);
        }
        let now = Instant::now();
        while let Some(e) = self.hs_timers.pop_expired(now) {
            let stalled = self.conns.get(e.index).is_some_and(|c| {
                c.epoch == e.epoch && !c.closing && matches!(c.state, ConnState::Handshake(_))
            });
            if stalled {
                self.client_gone(e.index, "handshake timeout");
            }
        }
        while let Some(e) = self.reuse_timers.pop_expired(now) {
            let expired = self.sessions.get(e.index).is_some_and(|s| {
                s.detach_token == e.epoch && s.conn.is_none() && s.closing.is_none()
            });
            if expired {
                self.close_session(e.index, CloseReason::ReuseTimeout);
            }
        }
        if let Some(mut idle) = self.idle_timers.take() {
            while let Some(e) = idle.pop_expired(now) {
                let Some(c) = self
                    .conns
                    .get(e.index)
                    .filter(|c| c.epoch == e.epoch && !c.closing)
                else {
                    continue;
                };
                // A paused connection is not idle: the gate stopped reading it.
                if now.duration_since(c.last_rx) >= idle.duration() && !c.paused {
                    self.client_gone(e.index, "idle timeout");
                } else {
                    idle.push(now, e);
                }
            }
            self.idle_timers = Some(idle);
        }
        self.check_stop();
    }

    fn arm_wake(&mut self) {
        let fd = self.shared.shards[self.index].eventfd;
        let e = opcode::Read::new(types::Fd(fd), &mut *self.wake_buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(token::encode(Op::Wake, 0, 0));
        self.push(e);
    }

    fn on_wake(&mut self) {
        if self.stopping.is_none() {
            self.arm_wake();
        }
        self.check_stop();
    }

    fn check_stop(&mut self) {
        if self.stopping.is_some() || !self.shared.stop.load(Ordering::Acquire) {
            return;
        }
        self.stopping = Some(Instant::now());
        info!(
            shard = self.index,
            sessions = self.by_id.len(),
            "shutting down"
        );
        if self.accept_armed {
            let ud = token::encode(Op::Accept, 0, 0);
            self.push(
                opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(token::encode(Op::Ignore, 0, 0)),
            );
        }
        let sessions: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for si in sessions {
            self.close_session(si, CloseReason::Shutdown);
        }
        let conns: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for ci in conns {
            if !self.conns[ci].closing {
                self.client_gone(ci, "shutdown");
            }
        }
    }
}
