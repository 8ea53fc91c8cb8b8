//! One load-generator shard: a thread with its own io_uring, its share of
//! the connections as direct descriptors, and multishot receives into a
//! provided-buffer ring.
//!
//! Opening a connection is `Socket` (into an auto-allocated direct slot),
//! then a linked chain `SetSockOpt(TCP_NODELAY)` [→ `SetSockOpt(IP_BIND_ADDRESS_NO_PORT)`
//! → `Bind`] → `Connect` → `LinkTimeout`. A drop for a resume is a reset:
//! `SetSockOpt(SO_LINGER 0)` → `Close`, after cancelling the socket's
//! operations. Completions carry (op, connection, epoch) tokens; a new
//! attempt bumps the epoch so completions of the old socket are recognised
//! and ignored.

use super::conn::{Conn, Pattern, Phase, Tx, verify};
use super::report::ShardReport;
use super::{Control, LoadgenConfig, LoadgenError, MAX_PENDING_PER_SHARD, Protocol, phase};
use crate::engine::bufring::BufRing;
use crate::engine::sys::{self, RawAddr};
use crate::proto::client::{ClientEvent, ClientHandshake};
use crate::proto::replay::{PAGE, ReplayWindow};
use crate::proto::session::Session;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
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
/// Wait before retrying a failed connect or handshake.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Consecutive failures after which a connection is given up.
const MAX_FAILURES: u32 = 8;
/// Messages a connection may have in flight when sending at a fixed rate.
const MAX_OUTSTANDING: usize = 32;
/// How long the shard waits for its sockets to close at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What an operation was for (the top byte of `user_data`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Socket = 1,
    Setup,
    Connect,
    Recv,
    Send,
    Tick,
    Closed,
    Ignore,
}

fn token(op: Op, idx: usize, epoch: u32) -> u64 {
    ((op as u64) << 56) | (((idx as u64) & 0xff_ffff) << 32) | epoch as u64
}

fn untoken(ud: u64) -> Option<(Op, usize, u32)> {
    let op = match (ud >> 56) as u8 {
        1 => Op::Socket,
        2 => Op::Setup,
        3 => Op::Connect,
        4 => Op::Recv,
        5 => Op::Send,
        6 => Op::Tick,
        7 => Op::Closed,
        8 => Op::Ignore,
        _ => return None,
    };
    Some((op, ((ud >> 32) & 0xff_ffff) as usize, ud as u32))
}

/// Timer kinds.
const SEND_DUE: u8 = 0;
const RECONNECT: u8 = 1;
const ATTEMPT_DEADLINE: u8 = 2;

static LINGER_RESET: libc::linger = libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

struct Shard {
    // The ring goes first so it is dropped before the memory its operations point into.
    ring: IoUring,
    bufs: BufRing,
    cfg: Arc<LoadgenConfig>,
    ctl: Arc<Control>,
    index: usize,
    conns: Vec<Conn>,
    pattern: Pattern,
    target: Box<RawAddr>,
    target_len: u32,
    sources: Box<[(RawAddr, u32)]>,
    next_source: usize,
    connect_ts: Box<types::Timespec>,
    tick_ts: Box<types::Timespec>,
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
    /// Handshake buffers whose send was still in flight when their socket
    /// was dropped: kept until the end so the kernel never reads freed memory.
    graveyard: Vec<Vec<u8>>,
    rearm: Vec<(usize, u32)>,
    closing: usize,
    rng: SmallRng,
    report: ShardReport,
}

/// Runs shard `index` of `shards` with `count` connections until the driver
/// says stop; returns its tallies.
pub(crate) fn run(
    index: usize,
    shards: usize,
    count: usize,
    cfg: Arc<LoadgenConfig>,
    ctl: Arc<Control>,
) -> Result<ShardReport, LoadgenError> {
    let shard = Shard::new(index, shards, count, cfg, ctl.clone());
    match shard {
        Ok(s) => Ok(s.run()),
        Err(e) => {
            // Let the driver see this shard as finished and give up on its share.
            ctl.shards[index]
                .gave_up
                .store(count as u64, Ordering::Relaxed);
            Err(e)
        }
    }
}

impl Shard {
    fn new(
        index: usize,
        shards: usize,
        count: usize,
        cfg: Arc<LoadgenConfig>,
        ctl: Arc<Control>,
    ) -> Result<Shard, LoadgenError> {
        let ring = sys::build_ring(4096)?;
        // Room for every connection twice over where the limit allows: a
        // dropped socket's slot is freed only when its close runs, which may
        // be after the replacement socket has taken one.
        sys::register_direct_table(&ring, count * 2 + super::SLOT_HEADROOM)?;
        let entries = (count.next_power_of_two()).clamp(64, 1024) as u16;
        let buf_size = (cfg.size_max + 2).clamp(4096, 16384);
        let bufs = sys::register_buffers(&ring, entries, buf_size)?;
        let (target, target_len) = RawAddr::from_socket_addr(cfg.connect);
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
        Ok(Shard {
            ring,
            bufs,
            pattern: Pattern::new(cfg.seed, cfg.size_min, cfg.size_max),
            next_source: index,
            cfg,
            ctl,
            index,
            conns,
            target: Box::new(target),
            target_len,
            sources,
            connect_ts: Box::new(types::Timespec::from(Duration::from_secs(10))),
            tick_ts: Box::new(types::Timespec::from(TICK)),
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
            graveyard: Vec::new(),
            rearm: Vec::new(),
            closing: 0,
            rng: SmallRng::seed_from_u64(0x10ad ^ index as u64),
            report: ShardReport::new(),
        })
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every pointer an entry carries refers to memory that
            // outlives the operation: boxed fields of the shard, statics, the
            // window pages of a connection (never freed before the shard),
            // or handshake buffers kept in `graveyard`.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(shard = self.index, "io_uring submit failed: {e}");
            }
        }
    }

    fn new_epoch(&mut self) -> u32 {
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        self.next_epoch
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick_ts as *const _)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(token(Op::Tick, 0, 0));
        self.push(e);
    }

    fn run(mut self) -> ShardReport {
        self.arm_tick();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        let mut stop_at: Option<Instant> = None;
        loop {
            sys::submit_and_reap(&mut self.ring, 1, &mut cqes);
            for &(ud, res, flags) in &cqes {
                self.dispatch(ud, res, flags);
            }
            self.bufs.publish();
            for (i, epoch) in std::mem::take(&mut self.rearm) {
                let c = &self.conns[i];
                if c.epoch == epoch
                    && !c.recv_armed
                    && matches!(c.phase, Phase::Handshake | Phase::Open)
                {
                    self.arm_recv(i);
                }
            }
            if self.phase == phase::STOP {
                let since = *stop_at.get_or_insert_with(Instant::now);
                if self.closing == 0 || since.elapsed() > CLOSE_GRACE {
                    break;
                }
            }
        }
        self.finish()
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        let Some((op, i, epoch)) = untoken(ud) else {
            return;
        };
        match op {
            Op::Socket => self.on_socket(i, epoch, res),
            Op::Setup => {
                if res < 0 && self.current(i, epoch) {
                    let e = std::io::Error::from_raw_os_error(-res);
                    self.report.error(format!("socket setup (bind): {e}"));
                }
            }
            Op::Connect => self.on_connect(i, epoch, res),
            Op::Recv => self.on_recv(i, epoch, res, flags),
            Op::Send => self.on_send(i, epoch, res),
            Op::Tick => self.on_tick(flags),
            Op::Closed => self.closing = self.closing.saturating_sub(1),
            Op::Ignore => {}
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
        let e = sys::direct_tcp_socket(&self.cfg.connect).user_data(token(Op::Socket, i, epoch));
        self.push(e);
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
                self.close_slot(res as u32, false, None);
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
        self.conns[i].slot = Some(slot);
        let fixed = types::Fixed(slot);
        let nodelay = sys::enable_sockopt(fixed, libc::IPPROTO_TCP, libc::TCP_NODELAY)
            .flags(squeue::Flags::IO_LINK)
            .user_data(token(Op::Setup, i, epoch));
        self.push(nodelay);
        if !self.sources.is_empty() {
            let (addr, len) = {
                let k = self.next_source % self.sources.len();
                self.next_source = self.next_source.wrapping_add(1);
                let (a, l) = &self.sources[k];
                (a as *const RawAddr, *l)
            };
            // Choose the port at connect time, from the whole 4-tuple: with
            // a port chosen at bind time each source address would be
            // limited to one connection per port across all destinations.
            let no_port =
                sys::enable_sockopt(fixed, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT)
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(token(Op::Setup, i, epoch));
            // SAFETY: `addr` points into the boxed slice `sources`, alive as long as the shard.
            let bind = opcode::Bind::new(fixed, unsafe { (*addr).as_sockaddr() }, len)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(token(Op::Setup, i, epoch));
            self.push(no_port);
            self.push(bind);
        }
        let connect = opcode::Connect::new(fixed, self.target.as_sockaddr(), self.target_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(token(Op::Connect, i, epoch));
        let timeout = opcode::LinkTimeout::new(&*self.connect_ts as *const _)
            .build()
            .user_data(token(Op::Ignore, 0, 0));
        self.push(connect);
        self.push(timeout);
    }

    fn on_connect(&mut self, i: usize, epoch: u32, res: i32) {
        if !self.current(i, epoch) || self.conns[i].phase != Phase::Connecting {
            return;
        }
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
                c.hs_sent = 0;
                c.hs = Some(Box::new(hs));
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
        if !c.due || c.phase != Phase::Open {
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
        let drop_now = self.cfg.resume_every.is_some_and(|k| c.msgs_here >= k)
            || (self.cfg.abort_probability > 0.0
                && self.rng.random::<f64>() < self.cfg.abort_probability);
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
        if c.sending {
            return;
        }
        let Some(slot) = c.slot else { return };
        let (ptr, len) = if c.hs_sent < c.hs_out.len() {
            let rest = &c.hs_out[c.hs_sent..];
            (rest.as_ptr(), rest.len())
        } else if c.phase == Phase::Open {
            let Some(tx) = c.tx.as_ref() else { return };
            match tx.window().unsent_slices().next() {
                Some(s) if !s.is_empty() => (s.as_ptr(), s.len()),
                _ => return,
            }
        } else {
            return;
        };
        c.sending = true;
        let e = opcode::Send::new(types::Fixed(slot), ptr, len as u32)
            .build()
            .user_data(token(Op::Send, i, c.epoch));
        self.push(e);
    }

    fn on_send(&mut self, i: usize, epoch: u32, res: i32) {
        if !self.current(i, epoch) {
            return;
        }
        let c = &mut self.conns[i];
        c.sending = false;
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            self.broken(i, format!("send: {e}"));
            return;
        }
        let n = res as usize;
        if c.hs_sent < c.hs_out.len() {
            c.hs_sent += n;
            if c.hs_sent >= c.hs_out.len() {
                c.hs_out = Vec::new();
                c.hs_sent = 0;
            }
        } else if let Some(tx) = c.tx.as_mut() {
            tx.window_mut().mark_sent(n);
        }
        self.flush(i);
        self.try_commit(i);
    }

    // ---- receiving -----------------------------------------------------------

    fn arm_recv(&mut self, i: usize) {
        let bgid = self.bufs.bgid();
        let c = &mut self.conns[i];
        let Some(slot) = c.slot else { return };
        if c.recv_armed {
            return;
        }
        c.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fixed(slot), bgid)
            .build()
            .user_data(token(Op::Recv, i, c.epoch));
        self.push(e);
    }

    fn on_recv(&mut self, i: usize, epoch: u32, res: i32, flags: u32) {
        let buf = if res > 0 {
            self.bufs.take(flags, res as usize)
        } else {
            None
        };
        if !self.current(i, epoch) {
            if let Some((bid, _, _)) = buf {
                self.bufs.push(bid);
            }
            return;
        }
        if !cqueue::more(flags) {
            self.conns[i].recv_armed = false;
        }
        match buf {
            Some((bid, ptr, len)) => {
                // SAFETY: the kernel filled this buffer and leaves it alone
                // until it is pushed back just below.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                self.on_data(i, data);
                self.bufs.push(bid);
            }
            None if res == 0 => self.broken(i, "closed by the server".into()),
            None if res == -libc::ENOBUFS || res == -libc::ECANCELED => {}
            None if res < 0 => {
                let e = std::io::Error::from_raw_os_error(-res);
                self.broken(i, format!("receive: {e}"));
            }
            None => {}
        }
        let c = &self.conns[i];
        if c.epoch == epoch && !c.recv_armed && matches!(c.phase, Phase::Handshake | Phase::Open) {
            self.rearm.push((i, epoch));
        }
    }

    fn on_data(&mut self, i: usize, data: &mut [u8]) {
        let c = &mut self.conns[i];
        match c.phase {
            Phase::Handshake => {
                let Some(hs) = c.hs.as_mut() else { return };
                let used = hs.recv(data);
                let event = hs.poll();
                match event {
                    ClientEvent::NeedMore => {}
                    ClientEvent::Established { id, secret } => {
                        c.hs = None;
                        let lost = c.reset_stream();
                        self.report.bytes_lost += lost as u64;
                        c.tx = Some(Tx::Scp(Box::new(Session::new(id, secret, self.window))));
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
            Phase::Open => self.stream_data(i, data),
            _ => {}
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
        c.recv_armed = false;
        c.hs = None;
        if c.sending && !c.hs_out.is_empty() {
            self.graveyard.push(std::mem::take(&mut c.hs_out));
        }
        c.hs_out = Vec::new();
        c.hs_sent = 0;
        c.sending = false;
        if let Some(slot) = c.slot.take() {
            self.close_slot(slot, reset, None);
        }
    }

    fn close_slot(&mut self, slot: u32, reset: bool, count_as: Option<usize>) {
        let fixed = types::Fixed(slot);
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fixed).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(token(Op::Ignore, 0, 0));
        self.push(cancel);
        if reset {
            let linger = opcode::SetSockOpt::new(
                fixed,
                libc::SOL_SOCKET as u32,
                libc::SO_LINGER as u32,
                &LINGER_RESET as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as u32,
            )
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(token(Op::Ignore, 0, 0));
            self.push(linger);
        }
        let ud = match count_as {
            Some(i) => {
                self.closing += 1;
                token(Op::Closed, i, 0)
            }
            None => token(Op::Ignore, 0, 0),
        };
        self.push(opcode::Close::new(fixed).build().user_data(ud));
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

    /// The connection broke under us (server closed, error): an SCP session
    /// resumes, a plain connection starts over and loses what was in flight.
    fn broken(&mut self, i: usize, why: String) {
        let phase = self.conns[i].phase;
        self.report.error(why);
        self.drop_socket(i, false);
        match (phase, self.cfg.protocol) {
            (Phase::Open, Protocol::Scp) => self.reconnect_after(i, self.cfg.resume_delay),
            (Phase::Open, Protocol::Plain) => {
                let lost = self.conns[i].reset_stream();
                self.report.bytes_lost += lost as u64;
                self.retry_later(i);
            }
            _ => self.retry_later(i),
        }
    }

    /// The gate no longer knows the session: what was in flight is lost;
    /// open a new session in its place.
    fn session_lost(&mut self, i: usize) {
        let lost = self.conns[i].reset_stream();
        self.report.bytes_lost += lost as u64;
        self.drop_socket(i, false);
        self.reconnect_after(i, self.cfg.resume_delay);
    }

    fn retry_later(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.slot.is_some() {
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

    fn on_tick(&mut self, flags: u32) {
        if !cqueue::more(flags) && self.phase != phase::STOP {
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
                    if let Some(slot) = c.slot.take() {
                        self.close_slot(slot, false, Some(i));
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
        // Let the kernel finish with our memory before it is freed: the ring
        // is dropped first (field order), the rest after.
        let _ = self.ring.submit();
        std::mem::take(&mut self.report)
    }
}

impl Default for ShardReport {
    fn default() -> Self {
        ShardReport::new()
    }
}
