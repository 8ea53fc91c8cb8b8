//! KCP conversations on a shard (see [`crate::engine::kcp`]): the UDP
//! socket's receive, datagrams to conversations, each conversation's byte
//! stream as a client connection ([`Conn`] with a detached endpoint), the
//! sends after each batch, KCP's clocks, expiry, and moving a conversation
//! to the shard that owns its session.

use super::*;
use crate::engine::kcp::KcpListen;
use crate::engine::ring::{Datagram, MsgHeader, Owned};
use crate::engine::sys::RawAddr;
use crate::proto::kcp::{Conversation, Opening, Refused, opening};
use io_uring::opcode;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Buffer group of the UDP receive buffers (the TCP ones are group 0).
const KCP_BGID: u16 = 1;
/// UDP receive buffers per shard.
const KCP_BUFFERS: u16 = 512;
/// A conversation whose connection closed keeps delivering what it queued
/// (a final answer) for at most this long.
const LINGER: Duration = Duration::from_secs(5);
/// Send records kept for reuse.
const SEND_POOL: usize = 1024;
/// Milliseconds between clock runs of a conversation with nothing in flight.
const IDLE_CLOCK_MS: u32 = 1000;

/// What other shards send a shard about KCP.
pub(crate) enum KcpMsg {
    /// A conversation whose session lives on the receiving shard.
    Conv(Box<KcpMoving>),
    /// A datagram of a conversation that moved to the receiving shard.
    Datagram {
        /// The client.
        addr: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
}

/// A conversation on its way to the shard of its session.
pub(crate) struct KcpMoving {
    addr: SocketAddr,
    conv: Box<Conversation>,
    /// Stream bytes read so far (the resume record and what followed).
    raw: Vec<u8>,
}

/// One conversation.
struct KConv {
    epoch: u32,
    addr: SocketAddr,
    conv: Box<Conversation>,
    /// Its connection entry, while it has one.
    ci: Option<usize>,
    last_rx: Instant,
    /// When its clock is next due (ms since the side's origin), or
    /// `u64::MAX` when nothing is scheduled.
    due: u64,
    dirty: bool,
    /// Closed: delivering what it queued until then.
    linger: Option<Instant>,
    /// Being pumped (guards against re-entry from the session it feeds).
    pumping: bool,
}

/// The shard's KCP door.
pub(super) struct KcpSide {
    fd: i32,
    cfg: KcpListen,
    bufs: BufRing,
    recv: Option<OpId>,
    convs: Slab<KConv>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Clients whose conversation moved to another shard, and when a
    /// datagram was last forwarded.
    forwards: HashMap<SocketAddr, (usize, Instant)>,
    last_forward_sweep: Instant,
    timers: BinaryHeap<Reverse<(u64, usize, u32)>>,
    expiry: crate::engine::timer::DeadlineQueue,
    lingering: Vec<(usize, u32)>,
    tick: Option<OpId>,
    origin: Instant,
    dirty: Vec<usize>,
    out: Vec<(SocketAddr, Vec<u8>)>,
    scratch: Vec<Vec<u8>>,
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Datagram>>,
}

impl KcpSide {
    /// The side for `fd` (bound by the gate), with its receive buffers.
    pub(super) fn new(ring: &IoUring, fd: i32, cfg: KcpListen) -> Result<KcpSide, sys::SetupError> {
        // A buffer holds the recvmsg header, the address and one datagram.
        let size = (cfg.settings.mtu + 64).next_power_of_two().max(2048);
        let bufs = BufRing::new(ring, KCP_BGID, KCP_BUFFERS, size).map_err(|err| {
            sys::SetupError::Missing {
                what: "provided buffer rings",
                err,
            }
        })?;
        let now = Instant::now();
        Ok(KcpSide {
            fd,
            expiry: crate::engine::timer::DeadlineQueue::new(cfg.read_timeout),
            cfg,
            bufs,
            recv: None,
            convs: Slab::new(),
            by_addr: HashMap::new(),
            forwards: HashMap::new(),
            last_forward_sweep: now,
            timers: BinaryHeap::new(),
            lingering: Vec::new(),
            tick: None,
            origin: now,
            dirty: Vec::new(),
            out: Vec::new(),
            scratch: Vec::new(),
            pool: Vec::new(),
        })
    }

    /// The receive buffers (kept past the shard by the gate).
    pub(super) fn into_bufs(self) -> BufRing {
        self.bufs
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn mark_dirty(&mut self, k: usize) {
        if let Some(e) = self.convs.get_mut(k) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(k);
            }
        }
    }

    /// Schedules `k`'s clock for when its conversation says.
    fn schedule(&mut self, k: usize, now: u64) {
        let Some(e) = self.convs.get_mut(k) else {
            return;
        };
        let now32 = now as u32;
        // At least 1 ms on: an entry due now is not taken again in the
        // same tick. A conversation with nothing unacknowledged has nothing
        // for its clock to do (its acks and window answers go out with the
        // flush after each input), so it sleeps for a second instead of an
        // interval: idle conversations cost no tick work.
        let delta = if e.conv.all_acked() {
            IDLE_CLOCK_MS
        } else {
            e.conv.check(now32).wrapping_sub(now32).clamp(1, 60_000)
        };
        let due = now + delta as u64;
        if due < e.due || e.due < now {
            e.due = due;
            self.timers.push(Reverse((due, k, e.epoch)));
        }
    }

    /// Runs `k`'s conversation through `f` and queues what it sends.
    fn output(&mut self, k: usize, f: impl FnOnce(&mut Conversation, &mut Vec<Vec<u8>>)) {
        let Some(e) = self.convs.get_mut(k) else {
            return;
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        f(&mut e.conv, &mut scratch);
        let addr = e.addr;
        self.out.extend(scratch.drain(..).map(|d| (addr, d)));
        self.scratch = scratch;
    }
}

impl Shard {
    fn kcp_max_here(&self) -> usize {
        let total = self.kcp.as_ref().map_or(0, |k| k.cfg.max_conversations);
        (total / self.cfg.shards.max(1)).max(1)
    }

    /// Arms the UDP socket's multishot receive (once; re-armed when it ends).
    pub(super) fn arm_kcp_recv(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        if side.recv.is_some() {
            return;
        }
        let hdr = MsgHeader::for_recv_from();
        let e =
            opcode::RecvMsgMulti::new(types::Fd(side.fd), hdr.as_ptr(), side.bufs.bgid()).build();
        let op = self
            .d
            .push(e, Some(Tag::shard(Op::KcpRecv)), Owned::Msg(hdr));
        side.recv = Some(op);
    }

    pub(super) fn on_kcp_recv(&mut self, c: Completion<Tag>) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        if !c.more() {
            side.recv = None;
        }
        if c.result < 0 {
            drop(side.bufs.take(c.result, c.flags));
            match -c.result {
                libc::ENOBUFS => self.count(|s| &s.recv_nobufs),
                libc::ECANCELED => {}
                e => debug!(
                    shard = self.index,
                    "kcp receive failed: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            }
            return;
        }
        let Some(buf) = side.bufs.take(c.result, c.flags) else {
            return;
        };
        let hdr = MsgHeader::for_recv_from();
        let Ok(msg) = types::RecvMsgOut::parse(&buf, hdr.header()) else {
            return;
        };
        if msg.is_payload_truncated() || msg.is_name_data_truncated() {
            debug!(
                shard = self.index,
                "kcp: datagram larger than a buffer dropped"
            );
            return;
        }
        let Some(addr) = RawAddr::parse(msg.name_data()) else {
            return;
        };
        self.count_n(|s| &s.client_rx_bytes, msg.payload_data().len() as u64);
        self.kcp_datagram(addr, msg.payload_data(), true);
    }

    /// A datagram from `addr` (`local`: read from our socket, rather than
    /// forwarded by the shard that read it).
    fn kcp_datagram(&mut self, addr: SocketAddr, data: &[u8], local: bool) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        let now = Instant::now();
        let now32 = side.now_ms(now) as u32;
        if let Some(&k) = side.by_addr.get(&addr) {
            let e = &mut side.convs[k];
            match e.conv.input(data, now32) {
                Ok(()) => {
                    e.last_rx = now;
                    if let Some(ci) = e.ci {
                        if let Some(conn) = self.conns.get_mut(ci) {
                            conn.last_rx = now;
                        }
                    }
                    side.mark_dirty(k);
                    return;
                }
                Err(Refused::Conv { got, .. })
                    if opening(data, &side.cfg.settings) == Opening::Opens(got) =>
                {
                    // kcp-go's rule: a new conversation's first push from
                    // the same address replaces the old one.
                    self.kcp_drop(k, "replaced by a new conversation from its address");
                }
                Err(why) => {
                    debug!(shard = self.index, peer = %addr, "kcp datagram dropped: {why}");
                    self.count(|s| &s.kcp_dropped);
                    return;
                }
            }
        } else if local {
            if let Some((target, at)) = side.forwards.get_mut(&addr) {
                *at = now;
                let target = *target;
                self.shared.shards[target].kcp_inbox.push(KcpMsg::Datagram {
                    addr,
                    bytes: data.to_vec(),
                });
                self.shared.wake(target);
                return;
            }
        }
        let side = self.kcp.as_ref().expect("checked above");
        match opening(data, &side.cfg.settings) {
            Opening::Opens(conv) => self.kcp_open(addr, conv, data),
            Opening::No => {
                debug!(shard = self.index, peer = %addr, "kcp datagram for no conversation dropped");
                self.count(|s| &s.kcp_dropped);
            }
        }
    }

    /// A new conversation from `addr`, opened by `data`.
    fn kcp_open(&mut self, addr: SocketAddr, conv: u32, data: &[u8]) {
        if self.stopping.is_some() {
            return;
        }
        if self
            .kcp
            .as_ref()
            .is_some_and(|s| s.convs.len() >= self.kcp_max_here())
        {
            self.warn_limit("kcp max_conversations reached: new conversations are being dropped");
            return;
        }
        let pending_here =
            (self.shared.tunables.max_pending_handshakes() / self.cfg.shards.max(1)).max(1);
        if self.greeting >= pending_here {
            self.count(|s| &s.kcp_dropped);
            self.warn_limit(
                "max_pending_handshakes reached: new kcp conversations are being dropped",
            );
            return;
        }
        let side = self.kcp.as_mut().expect("a kcp door");
        let now = Instant::now();
        let now32 = side.now_ms(now) as u32;
        let mut c = Box::new(Conversation::new(conv, &side.cfg.settings, now32));
        if c.input(data, now32).is_err() {
            return;
        }
        self.count(|s| &s.accepted);
        let ci = self.new_conn(
            u32::MAX,
            Some(addr),
            Door::Scp,
            ConnState::Greeting(Box::new(DoorGreeting::new(Door::Scp, 0))),
        );
        self.kcp_attach(addr, c, ci, now);
        debug!(shard = self.index, peer = %addr, conv, "kcp conversation opened");
    }

    /// Files conversation `c` from `addr` under connection `ci`.
    fn kcp_attach(&mut self, addr: SocketAddr, c: Box<Conversation>, ci: usize, now: Instant) {
        let epoch = self.new_epoch();
        let side = self.kcp.as_mut().expect("a kcp door");
        let k = side.convs.insert(KConv {
            epoch,
            addr,
            conv: c,
            ci: Some(ci),
            last_rx: now,
            due: u64::MAX,
            dirty: false,
            linger: None,
            pumping: false,
        });
        side.by_addr.insert(addr, k);
        side.forwards.remove(&addr);
        side.expiry
            .push(now, crate::engine::timer::Entry { index: k, epoch });
        side.mark_dirty(k);
        let conn = &mut self.conns[ci];
        conn.ep = Endpoint::detached();
        conn.kcp = Some(k);
        self.arm_kcp_tick();
    }

    /// Keeps a KCP connection in line with its state (its `sync_conn`):
    /// received bytes up to the room its session or greeting has, the
    /// answer and session bytes into the conversation, the close after a
    /// final answer, the move to another shard.
    pub(super) fn kcp_sync_conn(&mut self, ci: usize) {
        let Some(k) = self.conns.get(ci).and_then(|c| c.kcp) else {
            return;
        };
        let Some(e) = self.kcp.as_mut().and_then(|s| s.convs.get_mut(k)) else {
            return;
        };
        if e.pumping {
            return;
        }
        e.pumping = true;
        let epoch = e.epoch;
        // Bytes handed to the conversation may make room for more of its
        // received bytes (an echo, a relay whose client side was full), and
        // nothing else would come back for them: go round until neither
        // side moves (bounded: each round moves a window's worth at most).
        for _ in 0..8 {
            let delivered = self.kcp_deliver(ci, k);
            if self.conns.get(ci).is_none_or(|c| c.kcp != Some(k)) {
                break;
            }
            let queued = self.kcp_fill(ci, k);
            if self.conns.get(ci).is_none_or(|c| c.kcp != Some(k)) {
                break;
            }
            if delivered == 0 || queued == 0 {
                break;
            }
        }
        if let Some(e) = self
            .kcp
            .as_mut()
            .and_then(|s| s.convs.get_mut(k))
            .filter(|e| e.epoch == epoch)
        {
            e.pumping = false;
        }
    }

    /// Received bytes to the greeting or session, while they have room;
    /// returns how many.
    fn kcp_deliver(&mut self, ci: usize, k: usize) -> usize {
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get(ci) else {
                return total;
            };
            if conn.kcp != Some(k) {
                return total;
            }
            let room = self.conn_room(ci);
            if room == 0 {
                return total;
            }
            let Some(e) = self.kcp.as_mut().and_then(|s| s.convs.get_mut(k)) else {
                return total;
            };
            let mut buf = Vec::new();
            // Whole messages: the first even past the room (by at most one
            // datagram's worth, as a TCP receive may overshoot by a buffer).
            let room = room.max(e.conv.readable());
            let n = e.conv.recv(&mut buf, room);
            if n == 0 {
                return total;
            }
            total += n;
            // Reading frees window: the peer hears of it with the next flush.
            let side = self.kcp.as_mut().expect("a kcp door");
            side.mark_dirty(k);
            self.client_stream(ci, &mut buf);
        }
    }

    /// The answer and session bytes into the conversation, as far as its
    /// send window allows; a finishing connection closes once its answer
    /// is queued (the conversation lingers to deliver it).
    fn kcp_fill(&mut self, ci: usize, k: usize) -> usize {
        if let ConnState::HandingOff { .. } = self.conns[ci].state {
            self.kcp_hand_off(ci, k);
            return 0;
        }
        let Shard {
            kcp,
            conns,
            sessions,
            ..
        } = self;
        let Some(side) = kcp.as_mut() else {
            return 0;
        };
        let Some(e) = side.convs.get_mut(k) else {
            return 0;
        };
        let conn = &mut conns[ci];
        let mut queued = 0;
        if !conn.answer.is_empty() {
            let n = e.conv.send(&conn.answer);
            conn.answer.drain(..n);
            queued += n;
        }
        let mut finished = false;
        if conn.answer.is_empty() {
            match conn.state {
                ConnState::Attached(si, sg) => {
                    if let Some(s) = sessions.get_mut(si).filter(|s| s.epoch == sg) {
                        if s.relay.client_out().unsent() > 0 {
                            let mut total = 0;
                            for p in s.relay.client_pieces() {
                                let n = e.conv.send(p);
                                total += n;
                                if n < p.len() {
                                    break;
                                }
                            }
                            if total > 0 {
                                s.relay.handle_client_sent(total);
                                queued += total;
                            }
                        }
                    }
                }
                ConnState::Finishing => finished = true,
                _ => {}
            }
        }
        if queued > 0 {
            side.mark_dirty(k);
        }
        if finished {
            self.close_conn(ci);
        }
        queued
    }

    /// Connection `ci` (conversation `k`) closed: the conversation delivers
    /// what it still has queued, then goes.
    pub(super) fn kcp_conn_closed(&mut self, k: usize) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        let Some(e) = side.convs.get_mut(k) else {
            return;
        };
        e.ci = None;
        if e.conv.all_acked() {
            self.kcp_remove(k);
        } else {
            e.linger = Some(Instant::now() + LINGER);
            let epoch = e.epoch;
            side.lingering.push((k, epoch));
        }
    }

    /// Ends conversation `k` now, and its connection.
    fn kcp_drop(&mut self, k: usize, why: &str) {
        let ci = self
            .kcp
            .as_mut()
            .and_then(|s| s.convs.get_mut(k))
            .and_then(|e| e.ci.take());
        if let Some(ci) = ci {
            if let Some(conn) = self.conns.get_mut(ci) {
                conn.kcp = None;
            }
            let si = self.attached(ci);
            if self.conns.contains(ci) {
                self.client_gone(ci, why);
            }
            if let Some(si) = si {
                self.sync(si);
            }
        }
        self.kcp_remove(k);
    }

    fn kcp_remove(&mut self, k: usize) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        let Some(e) = side.convs.try_remove(k) else {
            return;
        };
        if side.by_addr.get(&e.addr) == Some(&k) {
            side.by_addr.remove(&e.addr);
        }
    }

    /// After a batch of completions: pumps and flushes the conversations
    /// that heard something or were given bytes, and sends what they wrote.
    pub(super) fn kcp_after_batch(&mut self) {
        if self.kcp.is_none() {
            return;
        }
        // A pump may make other conversations dirty (a session's peer is
        // another client only through an upstream), so a few passes.
        for _ in 0..4 {
            let side = self.kcp.as_mut().expect("a kcp door");
            if side.dirty.is_empty() {
                break;
            }
            let dirty = std::mem::take(&mut side.dirty);
            let now = side.now_ms(Instant::now());
            for &k in &dirty {
                let side = self.kcp.as_mut().expect("a kcp door");
                let Some(e) = side.convs.get_mut(k) else {
                    continue;
                };
                e.dirty = false;
                if let Some(ci) = e.ci {
                    match self.attached(ci) {
                        Some(si) => self.sync(si),
                        None => self.sync_conn(ci),
                    }
                }
                let side = self.kcp.as_mut().expect("a kcp door");
                side.output(k, |c, out| c.flush(now as u32, out));
                side.schedule(k, now);
            }
        }
        self.kcp_send_out();
        self.arm_kcp_recv();
    }

    fn kcp_send_out(&mut self) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        // Wire bytes, as received ones are counted.
        let mut tx = 0u64;
        for (addr, bytes) in side.out.drain(..) {
            let mut dg = side.pool.pop().unwrap_or_else(Datagram::boxed);
            tx += bytes.len() as u64;
            dg.bytes = bytes;
            let hdr = dg.prepare(addr);
            let e = opcode::SendMsg::new(types::Fd(side.fd), hdr).build();
            self.d
                .push(e, Some(Tag::shard(Op::KcpSend)), Owned::Datagram(dg));
        }
        if tx > 0 {
            self.count_n(|s| &s.client_tx_bytes, tx);
        }
    }

    pub(super) fn on_kcp_send(&mut self, c: Completion<Tag>) {
        if c.result < 0 {
            // The socket buffer was full or the route failed: KCP resends.
            debug!(
                shard = self.index,
                "kcp send failed: {}",
                std::io::Error::from_raw_os_error(-c.result)
            );
        }
        if let (Owned::Datagram(mut dg), Some(side)) = (c.mem, self.kcp.as_mut()) {
            if side.pool.len() < SEND_POOL {
                dg.bytes = Vec::new();
                side.pool.push(dg);
            }
        }
    }

    /// KCP's clock: a multishot timeout at the conversations' interval,
    /// armed while there are conversations.
    fn arm_kcp_tick(&mut self) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        if side.tick.is_some() || self.stopping.is_some() {
            return;
        }
        let every = Duration::from_millis(side.cfg.settings.interval.clamp(1, 5000) as u64);
        let ts = Box::new(types::Timespec::from(every));
        let e = opcode::Timeout::new(&*ts)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build();
        side.tick = Some(
            self.d
                .push(e, Some(Tag::shard(Op::KcpTick)), Owned::Time(ts)),
        );
    }

    pub(super) fn on_kcp_tick(&mut self, c: &Completion<Tag>) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        if !c.more() {
            side.tick = None;
        }
        let now_i = Instant::now();
        let now = side.now_ms(now_i);
        while let Some(&Reverse((due, k, epoch))) = side.timers.peek() {
            if due > now {
                break;
            }
            side.timers.pop();
            let live = side
                .convs
                .get(k)
                .is_some_and(|e| e.epoch == epoch && e.due == due);
            if !live {
                continue;
            }
            side.convs[k].due = u64::MAX;
            side.output(k, |c, out| c.update(now as u32, out));
            side.schedule(k, now);
        }
        // Closed conversations go once all they queued is acknowledged.
        let mut gone = Vec::new();
        side.lingering.retain(|&(k, epoch)| {
            let Some(e) = side.convs.get(k).filter(|e| e.epoch == epoch) else {
                return false;
            };
            let done = e.conv.all_acked() || e.linger.is_some_and(|t| t <= now_i);
            if done {
                gone.push(k);
            }
            !done
        });
        for k in gone {
            self.kcp_remove(k);
        }
        self.kcp_send_out();
        let side = self.kcp.as_mut().expect("a kcp door");
        if side.convs.is_empty() {
            if let Some(op) = side.tick.take() {
                self.d.cancel(op);
            }
        } else if side.tick.is_none() {
            self.arm_kcp_tick();
        }
    }

    /// On the housekeeping tick: conversations silent for `read_timeout`
    /// end (their sessions wait for a resume), and forwards nobody used
    /// for as long are forgotten.
    pub(super) fn kcp_expire(&mut self) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        let now = Instant::now();
        let timeout = side.cfg.read_timeout;
        let mut expired = Vec::new();
        while let Some(t) = side.expiry.pop_expired(now) {
            let Some(e) = side.convs.get(t.index).filter(|e| e.epoch == t.epoch) else {
                continue;
            };
            if now.duration_since(e.last_rx) >= timeout {
                expired.push(t.index);
            } else {
                side.expiry.push(now, t);
            }
        }
        self.shared.shards[self.index]
            .stats
            .kcp_conversations
            .store(side.convs.len() as u64, Ordering::Relaxed);
        if now.duration_since(side.last_forward_sweep) >= timeout / 2 {
            side.last_forward_sweep = now;
            side.forwards
                .retain(|_, (_, at)| now.duration_since(*at) < timeout);
        }
        for k in expired {
            self.kcp_drop(k, "kcp read timeout");
        }
    }

    /// A resume in KCP connection `ci` belongs to another shard: the
    /// conversation moves there, and its datagrams follow.
    fn kcp_hand_off(&mut self, ci: usize, k: usize) {
        let ConnState::HandingOff { target, raw, .. } = &mut self.conns[ci].state else {
            return;
        };
        let (target, raw) = (*target, std::mem::take(raw));
        let max_forwards = self.kcp_max_here();
        let side = self.kcp.as_mut().expect("a kcp door");
        let Some(e) = side.convs.try_remove(k) else {
            return;
        };
        if side.by_addr.get(&e.addr) == Some(&k) {
            side.by_addr.remove(&e.addr);
        }
        let link = &self.shared.shards[target];
        // The owner has stopped, or this shard forwards for as many
        // clients as it may hold conversations: 501, through the
        // conversation (forwards cost a map entry each, so they are capped
        // like conversations).
        let full = side.forwards.len() >= max_forwards;
        if full || link.ring_fd.load(Ordering::Acquire) < 0 {
            let side = self.kcp.as_mut().expect("a kcp door");
            let k = side.convs.insert(e);
            side.by_addr.insert(side.convs[k].addr, k);
            self.finish_with(ci, b"0\n501");
            return;
        }
        debug!(shard = self.index, peer = %e.addr, target, "kcp conversation moves to its session's shard");
        side.forwards.insert(e.addr, (target, Instant::now()));
        link.kcp_inbox.push(KcpMsg::Conv(Box::new(KcpMoving {
            addr: e.addr,
            conv: e.conv,
            raw,
        })));
        self.shared.wake(target);
        self.count(|s| &s.handoffs_out);
        self.conns[ci].kcp = None;
        self.close_conn(ci);
    }

    /// Conversations and datagrams other shards sent here.
    pub(super) fn kcp_round(&mut self) {
        if self.kcp.is_none() {
            return;
        }
        while let Some(msg) = self.shared.shards[self.index].kcp_inbox.pop() {
            match msg {
                KcpMsg::Datagram { addr, bytes } => self.kcp_datagram(addr, &bytes, false),
                KcpMsg::Conv(m) => self.kcp_arrived(*m),
            }
        }
    }

    fn kcp_arrived(&mut self, m: KcpMoving) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(&old) = self.kcp.as_ref().and_then(|s| s.by_addr.get(&m.addr)) {
            self.kcp_drop(old, "replaced by a conversation that moved here");
        }
        self.count(|s| &s.handoffs_in);
        debug!(shard = self.index, peer = %m.addr, "kcp conversation moved here");
        let ci = self.new_conn(
            u32::MAX,
            Some(m.addr),
            Door::Scp,
            ConnState::Greeting(Box::new(DoorGreeting::new(Door::Scp, 0))),
        );
        self.kcp_attach(m.addr, m.conv, ci, Instant::now());
        let mut raw = m.raw;
        self.greet(ci, &mut raw);
        match self.attached(ci) {
            Some(si) => self.sync(si),
            None => self.sync_conn(ci),
        }
    }

    /// Shutdown: the receive and the clock stop.
    pub(super) fn kcp_stop(&mut self) {
        let Some(side) = self.kcp.as_mut() else {
            return;
        };
        for op in [side.recv.take(), side.tick.take()].into_iter().flatten() {
            self.d.cancel(op);
        }
    }
}
