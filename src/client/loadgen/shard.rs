//! One load-generator shard: a thread with its own io_uring (through the
//! shared ring driver), its share of the connections as direct descriptors,
//! and receives into a provided-buffer ring.
//!
//! Opening a connection is `Socket` (into an auto-allocated direct slot),
//! then a linked chain `SetSockOpt(TCP_NODELAY)` [→ `SetSockOpt(IP_BIND_ADDRESS_NO_PORT)`
//! → `Bind`] → `Connect` → `LinkTimeout`, handed to the driver whole so a
//! full submission queue cannot split it. Each socket is an [`Endpoint`];
//! a drop for a resume is [`Endpoint::abort`] (a reset), any other drop
//! [`Endpoint::close`]. Neither cancels by descriptor, so nothing here makes
//! the kernel scan the ring's requests. Completions carry a [`Tag`]
//! (operation, connection, epoch); a new attempt bumps the epoch so
//! completions of the old socket are recognised and ignored.

use super::conn::{Conn, Handshake, Pattern, Phase, Tx, verify};
use super::report::ShardReport;
use super::wire::Wire;
use super::{
    Control, LoadgenConfig, LoadgenError, MAX_PENDING_PER_SHARD, Protocol, Transport, phase,
};
use crate::engine::endpoint::{self, Endpoint, Received, RecvPolicy};
use crate::engine::ring::{self, BufRing, Completion, Driver, MsgHeader, Owned};
use crate::engine::sys::{self, RawAddr, SetupError};
use crate::proto::client::{ClientEvent, ClientHandshake};
use crate::proto::replay::{PAGE, ReplayWindow};
use crate::proto::session::Session;
use crate::proto::stable::{self, ClientStep, Role, StableSession};
use io_uring::{opcode, types};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the shard looks at the clock, the phase and its timers.
const TICK: Duration = Duration::from_millis(2);
/// Connect, then handshake, must finish within this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// The connect alone must finish within this (its linked timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before retrying a failed connect or handshake.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Consecutive failures after which a connection is given up.
const MAX_FAILURES: u32 = 8;
/// Messages a connection may have in flight when sending at a fixed rate.
const MAX_OUTSTANDING: usize = 32;
/// How long the shard waits for its sockets to close at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Bytes a connection's receive may take before it is re-armed. The shard
/// checks and drops every byte as it arrives, so this only bounds how long
/// one multishot receive runs; large, so re-arms are rare.
const RECV_ROOM: usize = 256 * 1024;

/// What an operation was for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Socket,
    Setup,
    Connect,
    Recv,
    /// A send of handshake bytes (owned by the operation).
    SendHandshake,
    /// A send from the connection's window.
    SendStream,
    /// A send of WebSocket (and TLS) bytes, owned by the operation.
    SendWire,
    Tick,
    Closed,
}

/// What a completion is about: the operation, the connection (its index in
/// the shard) and the attempt (epoch) it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Tag {
    op: Op,
    conn: usize,
    epoch: u32,
}

fn tag(op: Op, conn: usize, epoch: u32) -> Tag {
    Tag { op, conn, epoch }
}

/// Timer kinds.
const SEND_DUE: u8 = 0;
const RECONNECT: u8 = 1;
const ATTEMPT_DEADLINE: u8 = 2;

struct Shard {
    // The driver goes first so its ring is dropped before the memory its
    // operations point into (provided buffers, windows).
    d: Driver<Tag>,
    cqes: Vec<Completion<Tag>>,
    bufs: BufRing,
    policy: RecvPolicy,
    cfg: Arc<LoadgenConfig>,
    ctl: Arc<Control>,
    index: usize,
    conns: Vec<Conn>,
    pattern: Pattern,
    target: (RawAddr, u32),
    sources: Box<[(RawAddr, u32)]>,
    next_source: usize,
    timers: BinaryHeap<Reverse<(Instant, u32, u32, u8)>>,
    window: usize,
    interval: Option<Duration>,
    next_epoch: u32,
    /// Connections opened for the first time so far (in index order).
    started: usize,
    /// Of those, still connecting or handshaking for the first time.
    ramping: usize,
    phase: u8,
    measuring: bool,
    storm_left: u64,
    /// Connections dropped by the storm, waiting for their turn to resume.
    storm_queue: VecDeque<usize>,
    gave_up: u64,
    ticks: u64,
    scratch: Vec<u8>,
    /// Headers of gathered sends, back from their completions for reuse.
    #[expect(
        clippy::vec_box,
        reason = "sends take and give back the box itself: reuse without allocating"
    )]
    headers: Vec<Box<MsgHeader>>,
    rearm: Vec<(usize, u32)>,
    closing: usize,
    /// When the shard saw the stop phase.
    stop_at: Option<Instant>,
    rng: SmallRng,
    report: ShardReport,
    /// Plaintext of TLS connections, decrypted here before it is checked.
    plain: Vec<u8>,
    /// The `Host` of WebSocket upgrades.
    host: String,
}

/// Runs shards `members` (index, connections) of `shards` on the calling
/// thread until the driver says stop; returns each one's tallies. A thread
/// with several shards sleeps on one eventfd their rings all signal, and
/// turns those with work: the load generator needs as many rings as the gate
/// (each ring's descriptor table is capped at `RLIMIT_NOFILE`), but a thread
/// per ring beyond the cores would pay a context switch per completion.
pub(crate) fn run(
    members: Vec<(usize, usize)>,
    shards: usize,
    cfg: Arc<LoadgenConfig>,
    ctl: Arc<Control>,
) -> Vec<Result<ShardReport, LoadgenError>> {
    let group_fd = if members.len() > 1 {
        match sys::eventfd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                let e = SetupError::Other(format!("eventfd: {e}"));
                return vec![Err(LoadgenError::Setup(e))];
            }
        }
    } else {
        None
    };
    let mut out = Vec::with_capacity(members.len());
    let mut group = Vec::with_capacity(members.len());
    for (index, count) in members {
        let made = Shard::new(index, shards, count, cfg.clone(), ctl.clone()).and_then(|s| {
            if let Some(fd) = group_fd {
                s.d.register_eventfd(fd).map_err(|err| {
                    LoadgenError::Setup(SetupError::Missing {
                        what: "eventfd notification of rings",
                        err,
                    })
                })?;
            }
            Ok(s)
        });
        match made {
            Ok(s) => group.push(s),
            Err(e) => {
                // Let the driver see this shard as finished and give up on its share.
                ctl.shards[index]
                    .gave_up
                    .store(count as u64, Ordering::Relaxed);
                out.push(Err(e));
            }
        }
    }
    match group_fd {
        None => out.extend(group.into_iter().map(|s| Ok(s.run()))),
        Some(fd) => {
            out.extend(run_group(group, fd).into_iter().map(Ok));
            // SAFETY: our eventfd; the rings registered with it are closed,
            // and hold the kernel's object rather than this number anyway.
            unsafe { libc::close(fd) };
        }
    }
    out
}

/// Turns the shards whose rings have work until every one has stopped.
fn run_group(shards: Vec<Shard>, eventfd: i32) -> Vec<ShardReport> {
    let mut live: Vec<Option<Shard>> = shards.into_iter().map(Some).collect();
    let mut reports = Vec::with_capacity(live.len());
    for s in live.iter_mut().flatten() {
        s.arm_tick();
    }
    // Turn every shard at start and after a wait that timed out (a safety
    // net: each shard's own tick signals the eventfd anyway).
    let mut sweep = true;
    while live.iter().any(Option::is_some) {
        let mut busy = false;
        for slot in live.iter_mut() {
            let Some(s) = slot else { continue };
            if sweep || s.d.has_work() {
                busy = true;
                if s.turn(false) {
                    reports.extend(slot.take().map(Shard::finish));
                }
            }
        }
        sweep = false;
        if !busy {
            sweep = !sys::eventfd_wait(eventfd, Duration::from_millis(100));
        }
    }
    reports
}

impl Shard {
    fn new(
        index: usize,
        shards: usize,
        count: usize,
        cfg: Arc<LoadgenConfig>,
        ctl: Arc<Control>,
    ) -> Result<Shard, LoadgenError> {
        let mut ring = ring::build(4096).map_err(|e| {
            if ring::is_unavailable(&e) {
                SetupError::Unavailable(e)
            } else {
                SetupError::Other(format!("cannot create an io_uring: {e}"))
            }
        })?;
        // Room for every connection twice over where the limit allows: a
        // dropped socket's slot is freed only when its close runs, which may
        // be after the replacement socket has taken one.
        sys::register_direct_table(&ring, count * 2 + super::SLOT_HEADROOM)?;
        let entries = (count.next_power_of_two()).clamp(64, 1024) as u16;
        let buf_size = (cfg.size_max + 2).clamp(4096, 16384);
        let bufs =
            BufRing::new(&ring, 0, entries, buf_size).map_err(|err| SetupError::Missing {
                what: "provided buffer rings",
                err,
            })?;
        let policy = RecvPolicy {
            buf_size,
            capped_multishot: endpoint::probe_capped_multishot(&bufs, &mut ring),
        };
        let target = RawAddr::from_socket_addr(cfg.connect);
        let sources: Box<[(RawAddr, u32)]> = cfg
            .source_ips
            .iter()
            .map(|ip| RawAddr::from_socket_addr(SocketAddr::new(*ip, 0)))
            .collect();
        // The window must hold every byte the gate may be missing after a
        // drop: never more than what is unechoed, which `can_commit` keeps
        // within the window. Small windows keep a million sessions affordable.
        let frame = cfg.size_max + 2;
        let window = (frame * 4).clamp(PAGE, 65536).div_ceil(PAGE) * PAGE;
        let interval = (cfg.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.rate));
        let conns = (0..count)
            .map(|k| Conn::new((index + k * shards) as u64))
            .collect();
        let host = cfg.connect.to_string();
        Ok(Shard {
            d: Driver::new(ring),
            cqes: Vec::with_capacity(1024),
            bufs,
            policy,
            pattern: Pattern::new(cfg.seed, cfg.size_min, cfg.size_max),
            next_source: index,
            cfg,
            ctl,
            index,
            conns,
            target,
            sources,
            timers: BinaryHeap::new(),
            window,
            interval,
            next_epoch: 0,
            started: 0,
            ramping: 0,
            phase: phase::RAMP,
            measuring: false,
            storm_left: 0,
            storm_queue: VecDeque::new(),
            gave_up: 0,
            ticks: 0,
            scratch: Vec::with_capacity(frame),
            headers: Vec::new(),
            rearm: Vec::new(),
            closing: 0,
            stop_at: None,
            rng: SmallRng::seed_from_u64(0x10ad ^ index as u64),
            report: ShardReport::new(),
            plain: Vec::new(),
            host,
        })
    }

    fn new_epoch(&mut self) -> u32 {
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        self.next_epoch
    }

    fn arm_tick(&mut self) {
        let ts = Box::new(types::Timespec::from(TICK));
        let e = opcode::Timeout::new(&*ts)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build();
        self.d.push(e, Some(tag(Op::Tick, 0, 0)), Owned::Time(ts));
    }

    fn run(mut self) -> ShardReport {
        self.arm_tick();
        while !self.turn(true) {}
        self.finish()
    }

    /// Submits, reaps (waiting for a completion if `wait`), dispatches.
    /// Returns true once the shard has stopped.
    fn turn(&mut self, wait: bool) -> bool {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.d.submit_and_reap(wait, &mut cqes);
        for c in cqes.drain(..) {
            self.dispatch(c);
        }
        self.cqes = cqes;
        // Re-armed after the batch, once the buffers it used are back.
        for (i, epoch) in std::mem::take(&mut self.rearm) {
            let c = &self.conns[i];
            if c.epoch == epoch && matches!(c.phase, Phase::Handshake | Phase::Open) {
                self.arm_recv(i);
            }
        }
        if self.phase == phase::STOP {
            let since = *self.stop_at.get_or_insert_with(Instant::now);
            if self.closing == 0 || since.elapsed() > CLOSE_GRACE {
                return true;
            }
        }
        false
    }

    fn dispatch(&mut self, c: Completion<Tag>) {
        let Tag { op, conn: i, epoch } = c.tag;
        match op {
            Op::Socket => self.on_socket(i, epoch, c.result),
            Op::Setup => {
                if c.result < 0 && self.current(i, epoch) {
                    let e = std::io::Error::from_raw_os_error(-c.result);
                    self.report.error(format!("socket setup (bind): {e}"));
                }
            }
            Op::Connect => self.on_connect(i, epoch, c.result),
            Op::Recv => self.on_recv(i, epoch, &c),
            Op::SendHandshake | Op::SendStream | Op::SendWire => self.on_send(i, epoch, c),
            Op::Tick => self.on_tick(c.more()),
            Op::Closed => self.closing = self.closing.saturating_sub(1),
        }
    }

    fn current(&self, i: usize, epoch: u32) -> bool {
        self.conns.get(i).is_some_and(|c| c.epoch == epoch)
    }

    // ---- opening -----------------------------------------------------------

    /// Starts a new attempt: a new session if the connection has none, a
    /// resume otherwise.
    fn start_attempt(&mut self, i: usize) {
        let epoch = self.new_epoch();
        let c = &mut self.conns[i];
        if matches!(c.phase, Phase::Dead) || self.phase == phase::STOP {
            return;
        }
        c.epoch = epoch;
        c.phase = Phase::Connecting;
        if !c.ever_open && !c.in_ramp {
            c.in_ramp = true;
            self.ramping += 1;
        }
        self.d.push(
            sys::direct_tcp_socket(&self.cfg.connect),
            Some(tag(Op::Socket, i, epoch)),
            Owned::None,
        );
        self.timers.push(Reverse((
            Instant::now() + ATTEMPT_TIMEOUT,
            i as u32,
            epoch,
            ATTEMPT_DEADLINE,
        )));
    }

    fn on_socket(&mut self, i: usize, epoch: u32, res: i32) {
        if !self.current(i, epoch) || self.conns[i].phase != Phase::Connecting {
            if res >= 0 {
                // The attempt was abandoned while its socket was being made.
                Endpoint::new(res as u32).close(&mut self.d, None);
            }
            return;
        }
        if res == -libc::ENFILE {
            // The ring's direct table is full for a moment (closes of dropped
            // sockets still queued): try again shortly, without counting a failure.
            self.report
                .error("socket: direct descriptor table full, retried");
            let c = &mut self.conns[i];
            c.phase = Phase::Idle;
            let epoch = c.epoch;
            self.timers.push(Reverse((
                Instant::now() + TICK * 5,
                i as u32,
                epoch,
                RECONNECT,
            )));
            return;
        }
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            self.report.error(format!("socket: {e}"));
            self.retry_later(i);
            return;
        }
        let slot = res as u32;
        let fixed = types::Fixed(slot);
        let setup = || Some(tag(Op::Setup, i, epoch));
        let nodelay = (
            sys::enable_sockopt(fixed, libc::IPPROTO_TCP, libc::TCP_NODELAY),
            setup(),
            Owned::None,
        );
        // Each operation owns the address and the duration it points at.
        let target = Box::new(self.target.0);
        let connect = (
            opcode::Connect::new(fixed, target.as_sockaddr(), self.target.1).build(),
            Some(tag(Op::Connect, i, epoch)),
            Owned::Addr(target),
        );
        let ts = Box::new(types::Timespec::from(CONNECT_TIMEOUT));
        let timeout = (
            opcode::LinkTimeout::new(&*ts).build(),
            None,
            Owned::Time(ts),
        );
        let connect_op = if self.sources.is_empty() {
            let [_, op, _] = self.d.push_linked([nodelay, connect, timeout], false);
            op
        } else {
            let k = self.next_source % self.sources.len();
            self.next_source = self.next_source.wrapping_add(1);
            let (addr, len) = self.sources[k];
            let addr = Box::new(addr);
            // Choose the port at connect time, from the whole 4-tuple: with
            // a port chosen at bind time each source address would be
            // limited to one connection per port across all destinations.
            let no_port = (
                sys::enable_sockopt(fixed, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT),
                setup(),
                Owned::None,
            );
            let bind = (
                opcode::Bind::new(fixed, addr.as_sockaddr(), len).build(),
                setup(),
                Owned::Addr(addr),
            );
            let [_, _, _, op, _] = self
                .d
                .push_linked([nodelay, no_port, bind, connect, timeout], false);
            op
        };
        let c = &mut self.conns[i];
        c.ep = Some(Endpoint::new(slot));
        c.connect_op = Some(connect_op);
    }

    fn on_connect(&mut self, i: usize, epoch: u32, res: i32) {
        if !self.current(i, epoch) || self.conns[i].phase != Phase::Connecting {
            return;
        }
        self.conns[i].connect_op = None;
        if res < 0 {
            let what = if res == -libc::ECANCELED {
                "connect: timed out or setup failed".to_string()
            } else {
                format!("connect: {}", std::io::Error::from_raw_os_error(-res))
            };
            self.report.error(what);
            self.drop_socket(i, false);
            self.retry_later(i);
            return;
        }
        if matches!(self.cfg.transport, Transport::Ws | Transport::Wss) {
            let tls = match self.cfg.transport {
                Transport::Wss => self.cfg.tls.as_ref(),
                _ => None,
            };
            let random = [self.rng.random(), self.rng.random(), self.rng.random()];
            match Wire::new(&self.host, &self.cfg.ws_path, tls, random) {
                Ok(w) => self.conns[i].wire = Some(Box::new(w)),
                Err(e) => {
                    self.report.error(format!("tls: {e}"));
                    self.drop_socket(i, false);
                    self.retry_later(i);
                    return;
                }
            }
        }
        match self.cfg.protocol {
            Protocol::Plain => {
                let c = &mut self.conns[i];
                if c.tx.is_none() {
                    c.tx = Some(Tx::Plain(ReplayWindow::new(self.window)));
                }
                self.arm_recv(i);
                self.opened(i);
            }
            Protocol::Scp => {
                let random: u64 = self.rng.random();
                let c = &mut self.conns[i];
                let mut hs = match c.tx.as_mut().and_then(Tx::session_mut) {
                    Some(s) => {
                        let req = s.resume_request();
                        ClientHandshake::resume(req.id, req.index, req.received, s.secret())
                    }
                    None => ClientHandshake::new_session(random, self.cfg.target.as_deref(), None),
                };
                c.hs_out = hs.take_output();
                c.hs = Some(Handshake::Scp(Box::new(hs)));
                c.phase = Phase::Handshake;
                self.arm_recv(i);
                self.flush(i);
            }
            // `run` gives msgserver loads to their own threads.
            Protocol::Msgserver => unreachable!("msgserver users run outside the io_uring shards"),
            Protocol::StableConnection => {
                let c = &mut self.conns[i];
                let resume =
                    c.tx.as_mut()
                        .and_then(Tx::stable_mut)
                        .and_then(|s| s.resume_request());
                let (hs, out) = match resume {
                    Some(req) => (stable::ClientHandshake::resume(), req.to_vec()),
                    None => {
                        // Real randomness, not the shard's seeded generator:
                        // the dialect has no session ids, so two runs against
                        // one gate with the same keys would have the same
                        // fingerprints and prove each other's secrets.
                        let (hs, req) = stable::ClientHandshake::new_session(rand::random());
                        (hs, req.to_vec())
                    }
                };
                c.hs_out = out;
                c.hs = Some(Handshake::Stable(hs));
                c.phase = Phase::Handshake;
                self.arm_recv(i);
                self.flush(i);
            }
        }
    }

    /// The connection carries its stream again (new session or resumed).
    fn opened(&mut self, i: usize) {
        let now = Instant::now();
        let c = &mut self.conns[i];
        let mut first = false;
        c.phase = Phase::Open;
        c.failures = 0;
        c.msgs_here = 0;
        if c.in_ramp {
            c.in_ramp = false;
            self.ramping -= 1;
        }
        if !c.ever_open {
            c.ever_open = true;
            self.report.established += 1;
            first = true;
        }
        if c.storm {
            c.storm = false;
            self.storm_left -= 1;
            if self.storm_left == 0 {
                self.report.storm_done = Some(now);
            }
        }
        if first {
            self.note_ramp_progress(now);
        }
        let c = &mut self.conns[i];
        if self.interval.is_none() && c.sent_at.is_empty() {
            c.due = true;
        }
        if !c.scheduled {
            c.scheduled = true;
            match self.interval {
                None => {}
                Some(iv) => {
                    // Stagger first sends over one interval so a ramp does
                    // not turn into synchronised bursts.
                    let first = now + iv.mul_f64(self.rng.random::<f64>());
                    self.timers.push(Reverse((first, i as u32, 0, SEND_DUE)));
                }
            }
        }
        self.flush(i);
        self.try_commit(i);
    }

    // ---- messages ----------------------------------------------------------

    /// Commits the due message if the connection can take it.
    fn try_commit(&mut self, i: usize) {
        if self.phase >= phase::DRAIN {
            return;
        }
        let c = &mut self.conns[i];
        if !c.due || c.phase != Phase::Open || c.window_busy_elsewhere() {
            return;
        }
        let limit = if self.interval.is_none() {
            1
        } else {
            MAX_OUTSTANDING
        };
        if c.sent_at.len() >= limit {
            return;
        }
        let frame = self.pattern.frame_len(c.id, c.tx_msg);
        // Everything unechoed must stay in the window so a resume can resend it.
        let Some(tx) = c.tx.as_mut() else { return };
        if c.unechoed + frame > tx.window().capacity() || tx.window().free_space() < frame {
            return;
        }
        self.scratch.clear();
        self.pattern.write_frame(c.id, c.tx_msg, &mut self.scratch);
        if !tx.commit(&self.scratch) {
            return;
        }
        c.sent_at
            .push_back(self.ctl.start.elapsed().as_micros() as u64);
        c.tx_msg += 1;
        c.unechoed += frame;
        c.msgs_here += 1;
        c.due = false;
        // A drop waits until the stream can be resumed (a stable-connection
        // client must have received something): with `--resume-every` the
        // next commit tries again.
        let drop_now = (self.cfg.resume_every.is_some_and(|k| c.msgs_here >= k)
            || (self.cfg.abort_probability > 0.0
                && self.rng.random::<f64>() < self.cfg.abort_probability))
            && c.tx.as_ref().is_some_and(Tx::can_resume);
        self.flush(i);
        if drop_now {
            // Drop with the message (and maybe its echo) in flight, so both
            // replay windows are exercised.
            self.drop_for_resume(i);
        }
    }

    /// Starts the next send: handshake bytes first, then unsent stream bytes.
    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let epoch = c.epoch;
        let Some(ep) = c.ep.as_mut() else { return };
        if ep.sending() || ep.is_closed() {
            return;
        }
        if let Some(wire) = c.wire.as_mut() {
            // A copy into the send's buffer, framed (and sealed).
            let tag = tag(Op::SendWire, i, epoch);
            if wire.has_pending() {
                ep.send_owned(&mut self.d, wire.take_pending(), tag);
                return;
            }
            let hs = if wire.is_open() {
                std::mem::take(&mut c.hs_out)
            } else {
                Vec::new()
            };
            let mut pieces: smallvec::SmallVec<[&[u8]; 4]> = smallvec::SmallVec::new();
            if !hs.is_empty() {
                pieces.push(&hs);
            }
            let mut window = 0;
            if wire.is_open() && c.phase == Phase::Open {
                if let Some(tx) = c.tx.as_ref() {
                    for p in tx.window().unsent_slices() {
                        window += p.len();
                        pieces.push(p);
                    }
                }
            }
            let mut out = Vec::new();
            wire.fill(&pieces, window, &mut out);
            if !out.is_empty() {
                ep.send_owned(&mut self.d, out, tag);
            }
            return;
        }
        if !c.hs_out.is_empty() {
            let bytes = std::mem::take(&mut c.hs_out);
            ep.send_owned(&mut self.d, bytes, tag(Op::SendHandshake, i, epoch));
            return;
        }
        // A window send still in flight here is a dropped socket's (this
        // one's own would make `ep.sending()` true): wait for it.
        if c.phase != Phase::Open || c.window_send.is_some() {
            return;
        }
        let Some(tx) = c.tx.as_ref() else { return };
        if tx.window().unsent() == 0 {
            return;
        }
        // The window's pages stay put and its unsent bytes unchanged until
        // this send completes; `window_send` keeps the window alive past a
        // stream reset.
        ep.send_pieces(
            &mut self.d,
            tx.window().unsent_slices(),
            &mut self.headers,
            tag(Op::SendStream, i, epoch),
        );
        c.window_send = ep.send_op();
    }

    fn on_send(&mut self, i: usize, epoch: u32, mut done: Completion<Tag>) {
        let c = &mut self.conns[i];
        let read_window = done.tag.op == Op::SendStream && c.window_send == Some(done.op);
        if read_window {
            c.window_send = None;
        }
        let handshake = match std::mem::take(&mut done.mem) {
            Owned::Msg(header) => {
                self.headers.push(header);
                None
            }
            Owned::Bytes(bytes) => Some(*bytes),
            _ => None,
        };
        let ep = match c.ep.as_mut() {
            Some(ep) if c.epoch == epoch => ep,
            _ => {
                // A dropped socket's send: once it no longer reads the
                // window, the current socket may send from it.
                if read_window {
                    self.flush(i);
                    self.try_commit(i);
                }
                return;
            }
        };
        let res = ep.on_send(&done);
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            self.broken(i, format!("send: {e}"));
            return;
        }
        let n = res as usize;
        if done.tag.op == Op::SendWire {
            let sent = match (c.wire.as_mut(), handshake.as_ref()) {
                (Some(w), Some(out)) => w.sent(out, n),
                _ => 0,
            };
            if sent > 0 {
                if let Some(tx) = c.tx.as_mut() {
                    tx.window_mut().mark_sent(sent);
                }
            }
        } else if let Some(mut bytes) = handshake {
            if n < bytes.len() {
                // The rest goes first, before anything queued since.
                bytes.drain(..n);
                bytes.append(&mut c.hs_out);
                c.hs_out = bytes;
            }
        } else if read_window {
            if let Some(tx) = c.tx.as_mut() {
                tx.window_mut().mark_sent(n);
            }
        }
        self.flush(i);
        self.try_commit(i);
    }

    // ---- receiving -----------------------------------------------------------

    fn arm_recv(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(ep) = c.ep.as_mut() else { return };
        ep.sync_recv(
            &mut self.d,
            &self.bufs,
            &self.policy,
            RECV_ROOM,
            tag(Op::Recv, i, c.epoch),
        );
    }

    fn on_recv(&mut self, i: usize, epoch: u32, done: &Completion<Tag>) {
        let c = &mut self.conns[i];
        let ep = match c.ep.as_mut() {
            Some(ep) if c.epoch == epoch => ep,
            _ => {
                // A dropped socket's receive: only its buffer matters.
                drop(self.bufs.take(done.result, done.flags));
                return;
            }
        };
        match ep.on_recv(done, &self.bufs) {
            // The buffer goes back to the kernel when `buf` drops, after
            // its bytes were checked.
            Received::Data(mut buf) => self.on_data(i, &mut buf[..]),
            Received::Eof => self.broken(i, "closed by the server".into()),
            Received::Failed(e) => {
                let e = std::io::Error::from_raw_os_error(-e);
                self.broken(i, format!("receive: {e}"));
            }
            Received::Ended => {}
        }
        let c = &self.conns[i];
        if c.epoch == epoch
            && c.ep.as_ref().is_some_and(|ep| !ep.recv_in_flight())
            && matches!(c.phase, Phase::Handshake | Phase::Open)
        {
            self.rearm.push((i, epoch));
        }
    }

    fn on_data(&mut self, i: usize, data: &mut [u8]) {
        if self.conns[i].wire.is_some() {
            self.wire_data(i, data);
            return;
        }
        self.stream_in(i, data);
    }

    /// Bytes through a WebSocket (and TLS): the stream bytes they carried
    /// go on as from a TCP socket; the upgrade's answer lets the handshake
    /// go out; an ended WebSocket is a broken connection.
    fn wire_data(&mut self, i: usize, data: &mut [u8]) {
        let epoch = self.conns[i].epoch;
        let mut plain = std::mem::take(&mut self.plain);
        let Some(wire) = self.conns[i].wire.as_mut() else {
            return;
        };
        let (read, in_plain) = wire.recv(data, &mut plain);
        let buf = if in_plain {
            &mut plain[..read.payload]
        } else {
            &mut data[..read.payload]
        };
        if !buf.is_empty() {
            self.stream_in(i, buf);
        }
        if plain.capacity() > 1 << 17 {
            plain = Vec::new();
        }
        self.plain = plain;
        if self.conns[i].epoch != epoch {
            return;
        }
        if let Some(why) = read.ended {
            self.broken(i, why);
            return;
        }
        // The handshake once upgraded, a pong, TLS's own records.
        self.flush(i);
    }

    fn stream_in(&mut self, i: usize, data: &mut [u8]) {
        match (self.conns[i].phase, &self.conns[i].hs) {
            (Phase::Handshake, Some(Handshake::Scp(_))) => self.scp_handshake(i, data),
            (Phase::Handshake, Some(Handshake::Stable(_))) => self.stable_handshake(i, data),
            (Phase::Open, _) => self.stream_data(i, data),
            _ => {}
        }
    }

    fn scp_handshake(&mut self, i: usize, data: &mut [u8]) {
        let c = &mut self.conns[i];
        let Some(Handshake::Scp(hs)) = c.hs.as_mut() else {
            return;
        };
        let used = hs.recv(data);
        let event = hs.poll();
        match event {
            ClientEvent::NeedMore => {}
            ClientEvent::Established { id, secret } => {
                c.hs = None;
                self.reset_stream(i);
                self.conns[i].tx = Some(Tx::Scp(Box::new(Session::new(id, secret, self.window))));
                self.opened(i);
                self.stream_data(i, &mut data[used..]);
            }
            ClientEvent::Resumed { server_received } => {
                c.hs = None;
                let ok =
                    c.tx.as_mut()
                        .and_then(Tx::session_mut)
                        .map(|s| s.resumed(server_received).is_ok());
                if ok == Some(true) {
                    self.report.resumes_ok += 1;
                    if c.storm {
                        self.report.storm_resumes += 1;
                    }
                    self.opened(i);
                    self.stream_data(i, &mut data[used..]);
                } else {
                    // The gate misses more than we hold: a broken
                    // gate or a lying one. Start over.
                    *self
                        .report
                        .resumes_failed
                        .entry("406-client".into())
                        .or_default() += 1;
                    self.session_lost(i);
                }
            }
            ClientEvent::Rejected { code, .. } => {
                *self
                    .report
                    .resumes_failed
                    .entry(code.to_string())
                    .or_default() += 1;
                self.session_lost(i);
            }
            ClientEvent::Failed(e) => {
                self.report.error(format!("handshake: {e}"));
                self.drop_socket(i, false);
                self.retry_later(i);
            }
        }
    }

    /// The gate's answer to a stable-connection request: a new session
    /// proves the secret, a resume proves it and then resends (from the
    /// window) what the gate has not received; either way the proof goes
    /// out first, through `hs_out`.
    fn stable_handshake(&mut self, i: usize, data: &mut [u8]) {
        let c = &mut self.conns[i];
        let Some(Handshake::Stable(hs)) = c.hs.as_mut() else {
            return;
        };
        let used = hs.recv(data);
        match hs.poll() {
            ClientStep::NeedMore => {}
            ClientStep::Established { secret, auth } => {
                self.reset_stream(i);
                let c = &mut self.conns[i];
                c.hs = None;
                c.hs_out.extend_from_slice(&auth);
                c.tx = Some(Tx::Stable(Box::new(StableSession::new(
                    Role::Client,
                    secret,
                    self.window,
                ))));
                self.opened(i);
                self.stream_data(i, &mut data[used..]);
            }
            ClientStep::Answered {
                server_received,
                challenge,
            } => {
                c.hs = None;
                let auth =
                    c.tx.as_mut()
                        .and_then(Tx::stable_mut)
                        .map(|s| s.resumed(server_received, challenge));
                match auth {
                    Some(Ok(auth)) => {
                        c.hs_out.extend_from_slice(&auth);
                        self.report.resumes_ok += 1;
                        if c.storm {
                            self.report.storm_resumes += 1;
                        }
                        self.opened(i);
                        self.stream_data(i, &mut data[used..]);
                    }
                    _ => {
                        // The gate misses more than we hold (the published
                        // client drops the connection here too): start over.
                        *self
                            .report
                            .resumes_failed
                            .entry("out-of-window".into())
                            .or_default() += 1;
                        self.session_lost(i);
                    }
                }
            }
            ClientStep::Failed(e) => {
                self.report.error(format!("handshake: {e}"));
                self.drop_socket(i, false);
                self.retry_later(i);
            }
        }
    }

    fn stream_data(&mut self, i: usize, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let c = &mut self.conns[i];
        if let Some(tx) = c.tx.as_mut() {
            tx.decrypt(data);
        }
        let unechoed_before = c.unechoed;
        let measuring = self.measuring;
        let now_us = self.ctl.start.elapsed().as_micros() as u64;
        let hist = &mut self.report.latency;
        let r = verify(&self.pattern, c, data, |t| {
            if measuring {
                hist.saturating_record(now_us.saturating_sub(t).max(1));
            }
        });
        let good = (unechoed_before - c.unechoed) as u64;
        self.report.messages_total += r.completed;
        if measuring {
            self.report.messages += r.completed;
            self.report.bytes += good;
        }
        if r.bad > 0 {
            // The stream no longer matches what was sent: nothing after
            // this point can be checked. Count it and retire the connection.
            self.report.bytes_duplicated += r.bad as u64;
            self.report.error("echo did not match what was sent");
            self.drop_socket(i, false);
            self.kill(i);
            return;
        }
        let c = &self.conns[i];
        if c.storm && c.phase == Phase::Open {
            // A storm drop put off until the stream could be resumed (see
            // `enter`): it has received something now.
            self.drop_socket(i, true);
            self.storm_queue.push_back(i);
            return;
        }
        if r.completed > 0 {
            let c = &mut self.conns[i];
            if self.interval.is_none() && c.sent_at.is_empty() {
                c.due = true;
            }
            self.try_commit(i);
        }
    }

    // ---- dropping and retrying -----------------------------------------------

    /// Closes the current socket (with a reset when `reset`), abandoning its
    /// operations; the connection becomes idle.
    fn drop_socket(&mut self, i: usize, reset: bool) {
        let epoch = self.new_epoch();
        let c = &mut self.conns[i];
        c.epoch = epoch;
        c.phase = if c.phase == Phase::Dead {
            Phase::Dead
        } else {
            Phase::Idle
        };
        c.hs = None;
        c.hs_out = Vec::new();
        c.wire = None;
        release(&mut self.d, c, reset, None);
    }

    /// Forgets connection `i`'s stream; a send still reading its window
    /// keeps the window alive until it completes.
    fn reset_stream(&mut self, i: usize) {
        let (lost, busy) = self.conns[i].reset_stream();
        self.report.bytes_lost += lost as u64;
        if let Some((send, tx)) = busy {
            self.d.keep_alive(send, Box::new(tx));
        }
    }

    /// Drops the connection with a reset and resumes it, as a client that
    /// lost its network does.
    fn drop_for_resume(&mut self, i: usize) {
        self.drop_socket(i, true);
        self.reconnect_after(i, self.cfg.resume_delay);
    }

    fn reconnect_after(&mut self, i: usize, delay: Duration) {
        if delay.is_zero() {
            self.start_attempt(i);
        } else {
            let epoch = self.conns[i].epoch;
            self.timers.push(Reverse((
                Instant::now() + delay,
                i as u32,
                epoch,
                RECONNECT,
            )));
        }
    }

    /// The connection broke under us (server closed, error): a session
    /// resumes, a plain connection starts over and loses what was in flight.
    /// A stable-connection resume that breaks before its answer was refused:
    /// the dialect has no codes, the gate just closes.
    fn broken(&mut self, i: usize, why: String) {
        let c = &self.conns[i];
        let phase = c.phase;
        if phase == Phase::Handshake
            && matches!(c.hs, Some(Handshake::Stable(_)))
            && c.tx.as_ref().is_some_and(Tx::can_resume)
        {
            *self
                .report
                .resumes_failed
                .entry("closed".into())
                .or_default() += 1;
            self.session_lost(i);
            return;
        }
        self.report.error(why);
        self.drop_socket(i, false);
        match (phase, self.cfg.protocol) {
            // A stable-connection stream that cannot resume yet starts a new
            // session on reconnecting, which counts what it loses.
            (Phase::Open, Protocol::Scp | Protocol::StableConnection) => {
                self.reconnect_after(i, self.cfg.resume_delay)
            }
            (Phase::Open, Protocol::Plain) => {
                self.reset_stream(i);
                self.retry_later(i);
            }
            _ => self.retry_later(i),
        }
    }

    /// The gate no longer knows the session: what was in flight is lost;
    /// open a new session in its place.
    fn session_lost(&mut self, i: usize) {
        self.reset_stream(i);
        self.drop_socket(i, false);
        self.reconnect_after(i, self.cfg.resume_delay);
    }

    fn retry_later(&mut self, i: usize) {
        if self.conns[i].ep.is_some() {
            self.drop_socket(i, false);
        }
        let c = &mut self.conns[i];
        c.failures += 1;
        if c.failures >= MAX_FAILURES {
            self.report.error("gave up after repeated failures");
            self.kill(i);
            return;
        }
        c.phase = Phase::Idle;
        self.reconnect_after(i, RETRY_BACKOFF);
    }

    /// Records when the last of this shard's connections finished its first attempt.
    fn note_ramp_progress(&self, now: Instant) {
        if self.report.established + self.gave_up == self.conns.len() as u64 {
            let us = now.duration_since(self.ctl.start).as_micros().max(1) as u64;
            self.ctl.shards[self.index]
                .ramp_done_us
                .store(us, Ordering::Release);
        }
    }

    fn kill(&mut self, i: usize) {
        let mut first = false;
        let c = &mut self.conns[i];
        c.phase = Phase::Dead;
        if c.in_ramp {
            c.in_ramp = false;
            self.ramping -= 1;
        }
        if !c.ever_open {
            c.ever_open = true;
            self.gave_up += 1;
            self.ctl.shards[self.index]
                .gave_up
                .fetch_add(1, Ordering::Relaxed);
            first = true;
        }
        if c.storm {
            c.storm = false;
            self.storm_left -= 1;
            if self.storm_left == 0 {
                self.report.storm_done = Some(Instant::now());
            }
        }
        if first {
            self.note_ramp_progress(Instant::now());
        }
    }

    // ---- the clock -----------------------------------------------------------

    fn on_tick(&mut self, more: bool) {
        if !more && self.phase != phase::STOP {
            self.arm_tick();
        }
        self.ticks += 1;
        let now = Instant::now();
        let phase = self.ctl.phase.load(Ordering::Acquire);
        if phase != self.phase {
            self.enter(phase);
        }
        if self.phase == phase::STOP {
            return;
        }
        self.ramp(now);
        while let Some(Reverse((due, i, epoch, kind))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let i = i as usize;
            match kind {
                SEND_DUE => {
                    if self.phase >= phase::DRAIN || self.conns[i].phase == Phase::Dead {
                        continue;
                    }
                    let iv = self.interval.unwrap_or(TICK);
                    // Skip slots missed while the connection could not send:
                    // a rate, not a backlog.
                    let next = (due + iv).max(now);
                    self.timers.push(Reverse((next, i as u32, 0, SEND_DUE)));
                    self.conns[i].due = true;
                    self.try_commit(i);
                }
                RECONNECT => {
                    let c = &self.conns[i];
                    if c.epoch == epoch && c.phase == Phase::Idle {
                        self.start_attempt(i);
                    }
                }
                _ => {
                    let c = &self.conns[i];
                    if c.epoch == epoch && matches!(c.phase, Phase::Connecting | Phase::Handshake) {
                        self.report.error("connect or handshake timed out");
                        self.retry_later(i);
                    }
                }
            }
        }
        let p = &self.ctl.shards[self.index];
        p.established
            .store(self.report.established, Ordering::Relaxed);
        p.messages
            .store(self.report.messages_total, Ordering::Relaxed);
        p.storm_left.store(self.storm_left, Ordering::Release);
        if self.phase == phase::DRAIN && self.ticks % 8 == 0 {
            let drained = self.conns.iter().all(|c| {
                c.phase == Phase::Dead
                    || (c.sent_at.is_empty() && (c.phase == Phase::Open || c.tx.is_none()))
            });
            p.drained.store(drained, Ordering::Release);
        }
    }

    /// Opens connections for the first time, at the ramp's pace and with a
    /// bounded number connecting at once; likewise brings back the storm's.
    fn ramp(&mut self, now: Instant) {
        while let Some(&i) = self.storm_queue.front() {
            let in_flight = self.storm_left as usize - self.storm_queue.len();
            if in_flight >= MAX_PENDING_PER_SHARD {
                break;
            }
            self.storm_queue.pop_front();
            if self.conns[i].phase == Phase::Idle {
                self.start_attempt(i);
            }
        }
        let allowed = match self.cfg.ramp {
            None => self.conns.len(),
            Some(r) => {
                let per_shard = r as f64 / self.ctl.shards.len() as f64;
                let secs = now.duration_since(self.ctl.start).as_secs_f64();
                ((secs * per_shard) as usize + 1).min(self.conns.len())
            }
        };
        while self.started < allowed && self.ramping < MAX_PENDING_PER_SHARD {
            let i = self.started;
            self.started += 1;
            self.start_attempt(i);
        }
    }

    fn enter(&mut self, phase: u8) {
        self.phase = phase;
        self.measuring = phase == phase::MEASURE;
        match phase {
            phase::STORM => {
                let now = Instant::now();
                for i in 0..self.conns.len() {
                    if self.conns[i].phase == Phase::Dead {
                        continue;
                    }
                    self.conns[i].storm = true;
                    self.storm_left += 1;
                    let c = &self.conns[i];
                    if c.phase == Phase::Open
                        && c.unechoed > 0
                        && !c.tx.as_ref().is_some_and(Tx::can_resume)
                    {
                        // A stable-connection client that has received
                        // nothing cannot resume, and would lose what is in
                        // flight: it drops on its first bytes instead
                        // (`stream_data`). With nothing in flight it may
                        // just as well start anew, below.
                        continue;
                    }
                    if self.conns[i].phase == Phase::Open {
                        // Every connection drops now; they come back through
                        // the same bounded number of pending connects as the
                        // ramp, so the figure is the gate's resume rate and
                        // not this host's SYN-queue overflow (1 s retransmits).
                        self.drop_socket(i, true);
                        self.storm_queue.push_back(i);
                    }
                }
                if self.storm_left == 0 {
                    self.report.storm_done = Some(now);
                }
                let p = &self.ctl.shards[self.index];
                p.storm_left.store(self.storm_left, Ordering::Release);
                p.storm_seen.store(true, Ordering::Release);
            }
            phase::STOP => {
                for i in 0..self.conns.len() {
                    let c = &mut self.conns[i];
                    c.epoch = c.epoch.wrapping_add(1);
                    if c.ep.is_some() {
                        self.closing += 1;
                        release(&mut self.d, c, false, Some(tag(Op::Closed, i, 0)));
                    }
                }
            }
            _ => {}
        }
    }

    fn finish(mut self) -> ShardReport {
        // Whatever is still unechoed after the drain is lost.
        for c in &self.conns {
            self.report.bytes_lost += c.unechoed as u64;
        }
        // The driver is dropped first (field order): its ring goes, and the
        // kernel lets go of every operation's memory, before the rest.
        std::mem::take(&mut self.report)
    }
}

/// Ends `c`'s socket: its connect is cancelled by its own id, and the socket
/// is closed (with a reset when `reset`), which ends its receive. `closed`
/// tags the close's completion.
fn release(d: &mut Driver<Tag>, c: &mut Conn, reset: bool, closed: Option<Tag>) {
    if let Some(op) = c.connect_op.take() {
        d.cancel(op);
    }
    if let Some(mut ep) = c.ep.take() {
        if reset {
            ep.abort(d, closed);
        } else {
            ep.close(d, closed);
        }
    }
}

impl Default for ShardReport {
    fn default() -> Self {
        ShardReport::new()
    }
}
