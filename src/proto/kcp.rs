//! KCP as kcp-go speaks it (goscon's `kcp` listener): a reliable byte
//! stream over UDP datagrams, sans-IO.
//!
//! A datagram is, in order:
//! - when FEC is on (data and parity shards both set): a 6-byte header,
//!   `seqid` (u32 LE) and `flag` (u16 LE, `0xf1` data, `0xf2` parity); a data
//!   packet then carries its size (u16 LE, counting these 2 bytes) before
//!   the KCP part, and a parity packet carries Reed–Solomon parity over the
//!   group's data shards (`[size][kcp part]`, zero-padded to the longest);
//! - one or more KCP segments: `conv` u32, `cmd` u8 (81 push, 82 ack, 83
//!   window ask, 84 window tell), `frg` u8, `wnd` u16, `ts` u32, `sn` u32,
//!   `una` u32, `len` u32 (all little-endian), then `len` bytes.
//!
//! goscon configures no block cipher, so there is no crypto header.
//!
//! The ARQ state machine is the `kcp` crate (a port of skywind3000's ikcp,
//! which kcp-go also follows: stream mode, fast resend, nodelay, windows).
//! Two things are added around it here:
//! - every datagram is checked before the crate sees it (segment lengths,
//!   commands, one `conv`, and acknowledgement timestamps that are echoes
//!   of our own clock): the crate does unchecked arithmetic on the round
//!   trip an ack implies, which a forged timestamp would overflow;
//! - the crate writes its datagrams into an output object it owns and
//!   offers no way back to it, so the output is a zero-sized writer that
//!   appends to a buffer of the calling thread, which each call of
//!   [`Conversation`] drains before it returns. Nothing stays there between
//!   calls, so a conversation can move between threads.
//!
//! Reed–Solomon coding is `reed-solomon-erasure`, whose matrix (Vandermonde
//! made systematic, GF(2^8) over 0x11d) is klauspost/reedsolomon's default,
//! which kcp-go uses; `tests/kcp_vectors.rs` checks parity recorded from
//! kcp-go.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;

/// Push data.
pub const CMD_PUSH: u8 = 81;
/// Acknowledge.
pub const CMD_ACK: u8 = 82;
/// Ask for the window size.
pub const CMD_WASK: u8 = 83;
/// Tell the window size.
pub const CMD_WINS: u8 = 84;
/// Bytes of a segment header.
pub const OVERHEAD: usize = 24;
/// Bytes of the FEC header (seqid, flag).
pub const FEC_HEADER: usize = 6;
/// FEC flag of a data packet.
pub const FEC_DATA: u16 = 0xf1;
/// FEC flag of a parity packet.
pub const FEC_PARITY: u16 = 0xf2;
/// An acknowledgement claiming a round trip longer than this is not an
/// echo of our clock (KCP's largest retransmission timeout is 60 s).
const MAX_RTT_MS: u32 = 120_000;
/// FEC groups a decoder keeps open (kcp-go keeps 3 groups' worth of shards).
const FEC_GROUPS: usize = 3;

/// How conversations behave: goscon's `kcp_option` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcpSettings {
    /// Largest datagram, headers included (`opt_mtu`).
    pub mtu: usize,
    /// Fast retransmission timeouts (`opt_nodelay`).
    pub nodelay: bool,
    /// Milliseconds between flushes (`opt_interval`, 10..=5000).
    pub interval: u32,
    /// Resend after this many later acks (`opt_resend`; 0: never fast).
    pub resend: u32,
    /// No congestion window (`opt_nc`).
    pub nc: bool,
    /// Send window, segments (`opt_sndwnd`).
    pub sndwnd: u16,
    /// Receive window, segments (`opt_rcvwnd`).
    pub rcvwnd: u16,
    /// Stream mode: writes merge into full segments (`opt_stream`).
    pub stream: bool,
    /// FEC data shards (`fec_data_shards`; FEC is on when both are set).
    pub fec_data: usize,
    /// FEC parity shards (`fec_parity_shards`).
    pub fec_parity: usize,
}

impl Default for KcpSettings {
    /// goscon's sample configuration, except for smaller windows: a window
    /// bounds what a conversation may buffer (about `rcvwnd` + `sndwnd`
    /// segments of `mtu` bytes), and 256 segments is 350 KiB per direction.
    fn default() -> Self {
        KcpSettings {
            mtu: 1400,
            nodelay: true,
            interval: 10,
            resend: 2,
            nc: true,
            sndwnd: 256,
            rcvwnd: 256,
            stream: true,
            fec_data: 0,
            fec_parity: 0,
        }
    }
}

impl KcpSettings {
    /// Whether datagrams carry FEC headers.
    pub fn fec(&self) -> bool {
        self.fec_data > 0 && self.fec_parity > 0
    }

    /// Checks the values (what kcp-go would refuse or misbehave on).
    pub fn validate(&self) -> Result<(), String> {
        if !(50..=65000).contains(&self.mtu) {
            return Err(format!("kcp mtu {} is not within 50..=65000", self.mtu));
        }
        if self.sndwnd == 0 || self.rcvwnd == 0 {
            return Err("kcp windows must be at least 1".into());
        }
        if self.fec() && self.fec_data + self.fec_parity > 255 {
            return Err("kcp fec shards: at most 255 in all".into());
        }
        if self.fec()
            && reed_solomon_erasure::galois_8::ReedSolomon::new(self.fec_data, self.fec_parity)
                .is_err()
        {
            return Err("kcp fec shards are not a usable Reed-Solomon code".into());
        }
        Ok(())
    }

    /// Bytes of FEC framing before the KCP part of a data packet.
    fn fec_prefix(&self) -> usize {
        if self.fec() { FEC_HEADER + 2 } else { 0 }
    }
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Shorter than a header, or a segment longer than the datagram.
    #[error("truncated datagram")]
    Truncated,
    /// A command KCP does not have.
    #[error("unknown command {0}")]
    Command(u8),
    /// A segment of another conversation.
    #[error("conversation {got} where {want} was expected")]
    Conv {
        /// The conversation the datagram named.
        got: u32,
        /// Ours.
        want: u32,
    },
    /// An acknowledgement whose timestamp we never sent.
    #[error("acknowledgement with a timestamp that is not ours")]
    Timestamp,
    /// A bad FEC header.
    #[error("bad FEC header")]
    Fec,
}

/// One segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Conversation.
    pub conv: u32,
    /// Command.
    pub cmd: u8,
    /// Fragments after this one (message mode).
    pub frg: u8,
    /// The sender's free receive window.
    pub wnd: u16,
    /// Timestamp (sender's clock; echoed in acks).
    pub ts: u32,
    /// Sequence number.
    pub sn: u32,
    /// Everything before this is received.
    pub una: u32,
    /// Payload bytes.
    pub len: u32,
}

/// The segment headers of a KCP part, checked: each complete, a known
/// command. Stops at the first bad one with its reason.
pub fn segments(mut data: &[u8]) -> impl Iterator<Item = Result<Segment, Refused>> + '_ {
    let mut failed = false;
    std::iter::from_fn(move || {
        if data.is_empty() || failed {
            return None;
        }
        if data.len() < OVERHEAD {
            failed = true;
            return Some(Err(Refused::Truncated));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let seg = Segment {
            conv: u32_at(0),
            cmd: data[4],
            frg: data[5],
            wnd: u16::from_le_bytes([data[6], data[7]]),
            ts: u32_at(8),
            sn: u32_at(12),
            una: u32_at(16),
            len: u32_at(20),
        };
        let end = OVERHEAD
            .checked_add(seg.len as usize)
            .filter(|&e| e <= data.len());
        let Some(end) = end else {
            failed = true;
            return Some(Err(Refused::Truncated));
        };
        if !(CMD_PUSH..=CMD_WINS).contains(&seg.cmd) {
            failed = true;
            return Some(Err(Refused::Command(seg.cmd)));
        }
        data = &data[end..];
        Some(Ok(seg))
    })
}

/// What the first look at a datagram from an unknown address found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A well-formed datagram whose segments carry the first push
    /// (`sn` 0) of conversation `conv`: it may open a conversation.
    Opens(u32),
    /// Anything else: dropped without keeping any state.
    No,
}

/// Whether `datagram` from an address without a conversation opens one.
/// kcp-go opens a session for any datagram from a new address; here only
/// a well-formed one carrying a conversation's first push does, so that
/// datagrams from forged or random addresses leave nothing behind.
pub fn opening(datagram: &[u8], settings: &KcpSettings) -> Opening {
    let Ok(Some(kcp)) = kcp_part(datagram, settings) else {
        return Opening::No;
    };
    let mut conv = None;
    let mut first_push = false;
    for seg in segments(kcp) {
        let Ok(seg) = seg else {
            return Opening::No;
        };
        if *conv.get_or_insert(seg.conv) != seg.conv {
            return Opening::No;
        }
        first_push |= seg.cmd == CMD_PUSH && seg.sn == 0;
    }
    match conv {
        Some(c) if first_push => Opening::Opens(c),
        _ => Opening::No,
    }
}

/// The KCP part of a data packet (`None` for an FEC parity packet).
fn kcp_part<'a>(datagram: &'a [u8], settings: &KcpSettings) -> Result<Option<&'a [u8]>, Refused> {
    if !settings.fec() {
        return Ok(Some(datagram));
    }
    if datagram.len() < FEC_HEADER {
        return Err(Refused::Fec);
    }
    match u16::from_le_bytes([datagram[4], datagram[5]]) {
        FEC_DATA => {
            let size = datagram
                .get(FEC_HEADER..FEC_HEADER + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or(Refused::Fec)?;
            // The size counts itself and covers the rest of the datagram.
            if size < 2 || FEC_HEADER + size != datagram.len() {
                return Err(Refused::Fec);
            }
            Ok(Some(&datagram[FEC_HEADER + 2..]))
        }
        FEC_PARITY => Ok(None),
        _ => Err(Refused::Fec),
    }
}

thread_local! {
    /// Datagrams the KCP state machine wrote during the current call, and
    /// the room to leave in front of each (the FEC framing).
    static OUTBOX: RefCell<(Vec<Vec<u8>>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// The writer the KCP state machine owns (see the module doc).
#[derive(Debug, Default)]
struct Outbox;

impl Write for Outbox {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        OUTBOX.with(|o| {
            let (out, prefix) = &mut *o.borrow_mut();
            let mut d = Vec::with_capacity(*prefix + buf.len());
            d.resize(*prefix, 0);
            d.extend_from_slice(buf);
            out.push(d);
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One KCP conversation: a reliable byte stream.
pub struct Conversation {
    kcp: kcp::Kcp<Outbox>,
    conv: u32,
    stream: bool,
    sndwnd: usize,
    prefix: usize,
    fec: Option<Box<Fec>>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("conv", &self.conv)
            .field("waiting", &self.kcp.wait_snd())
            .finish()
    }
}

impl Conversation {
    /// A conversation `conv` with `settings`; `now` is the caller's
    /// millisecond clock (any origin, wrapping), used by every later call.
    pub fn new(conv: u32, settings: &KcpSettings, now: u32) -> Conversation {
        let mut kcp = if settings.stream {
            kcp::Kcp::new_stream(conv, Outbox)
        } else {
            kcp::Kcp::new(conv, Outbox)
        };
        let prefix = settings.fec_prefix();
        // The MTU counts the FEC framing, as kcp-go's reserved bytes do.
        let _ = kcp.set_mtu(settings.mtu.saturating_sub(prefix).max(OVERHEAD + 1));
        kcp.set_wndsize(settings.sndwnd, settings.rcvwnd);
        kcp.set_nodelay(
            settings.nodelay,
            settings.interval as i32,
            settings.resend as i32,
            settings.nc,
        );
        let fec = settings
            .fec()
            .then(|| Box::new(Fec::new(settings.fec_data, settings.fec_parity, now)));
        let mut c = Conversation {
            kcp,
            conv,
            stream: settings.stream,
            sndwnd: settings.sndwnd as usize,
            prefix,
            fec,
        };
        let mut sink = Vec::new();
        c.update(now, &mut sink);
        c
    }

    /// The conversation id.
    pub fn conv(&self) -> u32 {
        self.conv
    }

    /// Takes a datagram. Segments the state machine answers (acks) come
    /// out of the next [`flush`](Self::flush) or [`update`](Self::update).
    pub fn input(&mut self, datagram: &[u8], now: u32) -> Result<(), Refused> {
        let part = kcp_part(
            datagram,
            &KcpSettings {
                fec_data: self.fec.as_ref().map_or(0, |f| f.data),
                fec_parity: self.fec.as_ref().map_or(0, |f| f.parity),
                ..KcpSettings::default()
            },
        )?;
        let mut recovered = Vec::new();
        if let Some(fec) = self.fec.as_mut() {
            fec.decode(datagram, now, &mut recovered);
        }
        if let Some(part) = part {
            self.input_kcp(part, now)?;
        }
        for r in recovered {
            // A recovered shard is `[size][kcp part]` plus padding.
            if r.len() >= 2 {
                let size = u16::from_le_bytes([r[0], r[1]]) as usize;
                if (2..=r.len()).contains(&size) {
                    let _ = self.input_kcp(&r[2..size], now);
                }
            }
        }
        Ok(())
    }

    fn input_kcp(&mut self, part: &[u8], now: u32) -> Result<(), Refused> {
        for seg in segments(part) {
            let seg = seg?;
            if seg.conv != self.conv {
                return Err(Refused::Conv {
                    got: seg.conv,
                    want: self.conv,
                });
            }
            if seg.cmd == CMD_ACK && now.wrapping_sub(seg.ts) > MAX_RTT_MS {
                return Err(Refused::Timestamp);
            }
        }
        if part.is_empty() {
            return Ok(());
        }
        // The crate's clock for round trips is the one of its last update.
        self.kcp
            .input(part)
            .map(|_| ())
            .map_err(|_| Refused::Truncated)
    }

    /// Bytes that [`recv`](Self::recv) would give now (the next message;
    /// in stream mode, the next segment), 0 when none.
    pub fn readable(&self) -> usize {
        self.kcp.peeksize().unwrap_or(0)
    }

    /// Appends received bytes to `out`, whole messages only, while they fit
    /// in `room`; returns how many.
    pub fn recv(&mut self, out: &mut Vec<u8>, room: usize) -> usize {
        let mut total = 0;
        loop {
            let n = self.readable();
            if n == 0 || total + n > room {
                return total;
            }
            let at = out.len();
            out.resize(at + n, 0);
            match self.kcp.recv(&mut out[at..]) {
                Ok(got) => {
                    out.truncate(at + got);
                    total += got;
                }
                Err(_) => {
                    out.truncate(at);
                    return total;
                }
            }
        }
    }

    /// Bytes [`send`](Self::send) takes now: what fits in twice the send
    /// window (one window in flight, one queued), in segments of MSS bytes.
    pub fn send_room(&self) -> usize {
        let queued = self.kcp.wait_snd();
        (self.sndwnd * 2).saturating_sub(queued) * self.kcp.mss()
    }

    /// Queues bytes to send, at most [`send_room`](Self::send_room);
    /// returns how many were taken. They go out with the next flush.
    pub fn send(&mut self, data: &[u8]) -> usize {
        let mss = self.kcp.mss().max(1);
        let take = data.len().min(self.send_room());
        // Message mode: one segment per message, so that a peer with a
        // small receive window (kcp-go's default is 32) can always
        // reassemble it.
        let step = if self.stream { mss * 64 } else { mss };
        let mut done = 0;
        while done < take {
            let n = (take - done).min(step);
            match self.kcp.send(&data[done..done + n]) {
                Ok(sent) => done += sent,
                Err(_) => break,
            }
        }
        done
    }

    /// Whether everything sent was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.kcp.wait_snd() == 0
    }

    /// Segments queued or in flight.
    pub fn waiting(&self) -> usize {
        self.kcp.wait_snd()
    }

    /// Runs the clock to `now`: retransmissions, window probes, and a flush
    /// when the interval has passed. Appends datagrams to send to `out`.
    pub fn update(&mut self, now: u32, out: &mut Vec<Vec<u8>>) {
        self.collect(out, |kcp| {
            let _ = kcp.update(now);
            // `update` flushes only on the interval's ticks, while a
            // retransmission may fall due between them (then `check` keeps
            // saying "now"): send it now.
            if kcp.check(now) == 0 {
                let _ = kcp.flush();
            }
        });
    }

    /// Sends what is queued now (acks, new data) without waiting for the
    /// interval; appends datagrams to `out`.
    pub fn flush(&mut self, now: u32, out: &mut Vec<Vec<u8>>) {
        self.collect(out, |kcp| {
            // `update` records the clock the flush stamps segments with.
            let _ = kcp.update(now);
            let _ = kcp.flush();
        });
    }

    fn collect(&mut self, out: &mut Vec<Vec<u8>>, run: impl FnOnce(&mut kcp::Kcp<Outbox>)) {
        let prefix = self.prefix;
        OUTBOX.with(|o| {
            let mut o = o.borrow_mut();
            o.0.clear();
            o.1 = prefix;
        });
        run(&mut self.kcp);
        let start = out.len();
        OUTBOX.with(|o| out.append(&mut o.borrow_mut().0));
        if let Some(fec) = self.fec.as_mut() {
            let mut parity = Vec::new();
            for d in &mut out[start..] {
                fec.encode(d, &mut parity);
            }
            out.append(&mut parity);
        }
    }

    /// When [`update`](Self::update) is next due, on the caller's clock.
    pub fn check(&self, now: u32) -> u32 {
        // The crate answers with the delay from `now` (ikcp_check answers
        // with the time).
        now.wrapping_add(self.kcp.check(now))
    }
}

/// kcp-go's forward error correction for one conversation.
struct Fec {
    data: usize,
    parity: usize,
    codec: reed_solomon_erasure::galois_8::ReedSolomon,
    /// Encoder: next seqid, data shards of the open group.
    next: u32,
    paws: u32,
    group: Vec<Vec<u8>>,
    /// Decoder: open groups by first seqid.
    rx: VecDeque<RxGroup>,
}

struct RxGroup {
    begin: u32,
    shards: Vec<Option<Vec<u8>>>,
    data_seen: usize,
    done: bool,
}

impl Fec {
    fn new(data: usize, parity: usize, _now: u32) -> Fec {
        let shards = (data + parity) as u32;
        Fec {
            data,
            parity,
            codec: reed_solomon_erasure::galois_8::ReedSolomon::new(data, parity)
                .expect("validated shard counts"),
            next: 0,
            paws: u32::MAX / shards * shards,
            group: Vec::with_capacity(data),
            rx: VecDeque::new(),
        }
    }

    /// Frames `d` (its prefix is room for the header and size) as a data
    /// packet; after every `data` packets, appends the group's parity.
    fn encode(&mut self, d: &mut [u8], parity_out: &mut Vec<Vec<u8>>) {
        d[..4].copy_from_slice(&self.next.to_le_bytes());
        d[4..6].copy_from_slice(&FEC_DATA.to_le_bytes());
        let size = (d.len() - FEC_HEADER) as u16;
        d[6..8].copy_from_slice(&size.to_le_bytes());
        // kcp-go counts data seqids up without the wrap parity uses.
        self.next = self.next.wrapping_add(1);
        self.group.push(d[FEC_HEADER..].to_vec());
        if self.group.len() < self.data {
            return;
        }
        let max = self.group.iter().map(Vec::len).max().unwrap_or(0);
        let mut shards: Vec<Vec<u8>> = std::mem::take(&mut self.group);
        for s in &mut shards {
            s.resize(max, 0);
        }
        shards.extend((0..self.parity).map(|_| vec![0u8; max]));
        if self.codec.encode(&mut shards).is_ok() {
            for p in shards.drain(self.data..) {
                let mut pkt = Vec::with_capacity(FEC_HEADER + max);
                pkt.extend_from_slice(&self.next.to_le_bytes());
                pkt.extend_from_slice(&FEC_PARITY.to_le_bytes());
                pkt.extend_from_slice(&p);
                parity_out.push(pkt);
                self.next = self.next.wrapping_add(1) % self.paws;
            }
        }
        self.group = Vec::with_capacity(self.data);
    }

    /// Takes a packet into its group; appends data shards recovered from
    /// parity (each `[size][kcp part]` plus padding).
    fn decode(&mut self, pkt: &[u8], _now: u32, recovered: &mut Vec<Vec<u8>>) {
        if pkt.len() <= FEC_HEADER {
            return;
        }
        let seqid = u32::from_le_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        let flag = u16::from_le_bytes([pkt[4], pkt[5]]);
        if flag != FEC_DATA && flag != FEC_PARITY {
            return;
        }
        let n = (self.data + self.parity) as u32;
        let begin = seqid - seqid % n;
        let at = (seqid % n) as usize;
        let gi = match self.rx.iter().position(|g| g.begin == begin) {
            Some(i) => i,
            None => {
                if self.rx.len() >= FEC_GROUPS {
                    self.rx.pop_front();
                }
                self.rx.push_back(RxGroup {
                    begin,
                    shards: vec![None; n as usize],
                    data_seen: 0,
                    done: false,
                });
                self.rx.len() - 1
            }
        };
        let g = &mut self.rx[gi];
        if g.done || g.shards[at].is_some() {
            return;
        }
        g.shards[at] = Some(pkt[FEC_HEADER..].to_vec());
        if flag == FEC_DATA {
            g.data_seen += 1;
        }
        if g.data_seen == self.data {
            g.done = true;
            return;
        }
        let have = g.shards.iter().filter(|s| s.is_some()).count();
        if have < self.data {
            return;
        }
        g.done = true;
        let max = g.shards.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let missing: Vec<usize> = (0..self.data).filter(|&k| g.shards[k].is_none()).collect();
        let mut shards = std::mem::take(&mut g.shards);
        for s in shards.iter_mut().flatten() {
            s.resize(max, 0);
        }
        if self.codec.reconstruct_data(&mut shards).is_ok() {
            for k in missing {
                if let Some(s) = shards[k].take() {
                    recovered.push(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(settings: &KcpSettings) -> (Conversation, Conversation) {
        (
            Conversation::new(7, settings, 0),
            Conversation::new(7, settings, 0),
        )
    }

    /// Moves datagrams between `a` and `b` for `ms` milliseconds of a fake
    /// clock, dropping those `lose` picks; returns what `b` received.
    fn run(
        a: &mut Conversation,
        b: &mut Conversation,
        mut lose: impl FnMut(usize) -> bool,
        start: u32,
        ms: u32,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut n = 0;
        for now in (start..start + ms).step_by(5) {
            let mut out = Vec::new();
            a.update(now, &mut out);
            for d in out.drain(..) {
                n += 1;
                if !lose(n) {
                    b.input(&d, now).unwrap();
                }
            }
            b.update(now, &mut out);
            for d in out.drain(..) {
                n += 1;
                if !lose(n) {
                    a.input(&d, now).unwrap();
                }
            }
            b.recv(&mut got, usize::MAX);
        }
        got
    }

    #[test]
    fn a_stream_arrives_whole_through_loss() {
        for settings in [
            KcpSettings::default(),
            KcpSettings {
                stream: false,
                ..KcpSettings::default()
            },
            KcpSettings {
                fec_data: 3,
                fec_parity: 2,
                ..KcpSettings::default()
            },
        ] {
            let (mut a, mut b) = pair(&settings);
            let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut sent = 0;
            let mut got = Vec::new();
            let mut now = 0;
            while got.len() < data.len() && now < 600_000 {
                sent += a.send(&data[sent..]);
                got.extend(run(&mut a, &mut b, |n| n % 7 == 3, now, 50));
                now += 50;
            }
            assert_eq!(got.len(), data.len(), "{settings:?}");
            assert!(got == data, "{settings:?}");
        }
    }

    #[test]
    fn only_a_first_push_opens() {
        let s = KcpSettings::default();
        let mut a = Conversation::new(0x1234, &s, 0);
        a.send(b"hello");
        let mut out = Vec::new();
        a.flush(0, &mut out);
        assert_eq!(opening(&out[0], &s), Opening::Opens(0x1234));
        // An ack, garbage, a truncated segment, a later push: nothing.
        let mut ack = out[0].clone();
        ack[4] = CMD_ACK;
        assert_eq!(opening(&ack, &s), Opening::No);
        assert_eq!(opening(b"\x01\x02\x03", &s), Opening::No);
        assert_eq!(opening(&out[0][..out[0].len() - 1], &s), Opening::No);
        let mut later = out[0].clone();
        later[12] = 1;
        assert_eq!(opening(&later, &s), Opening::No);
        let mut bad = out[0].clone();
        bad[4] = 99;
        assert_eq!(opening(&bad, &s), Opening::No);
    }

    #[test]
    fn forged_acks_and_other_conversations_are_refused() {
        let s = KcpSettings::default();
        let mut a = Conversation::new(9, &s, 1_000_000);
        let mut seg = vec![0u8; OVERHEAD];
        seg[..4].copy_from_slice(&9u32.to_le_bytes());
        seg[4] = CMD_ACK;
        // A timestamp 2^31 - 1 ms in our past.
        seg[8..12].copy_from_slice(&1_000_000u32.wrapping_sub(0x7fff_ffff).to_le_bytes());
        assert_eq!(a.input(&seg, 1_000_000), Err(Refused::Timestamp));
        seg[..4].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            a.input(&seg, 1_000_000),
            Err(Refused::Conv { .. })
        ));
        let mut long = seg.clone();
        long[..4].copy_from_slice(&9u32.to_le_bytes());
        long[4] = CMD_PUSH;
        long[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(a.input(&long, 1_000_000), Err(Refused::Truncated));
    }

    #[test]
    fn an_update_leaves_nothing_due_now() {
        // A retransmission due between interval ticks goes out at once, so
        // a caller that updates when `check` says never spins.
        let s = KcpSettings {
            interval: 100,
            ..KcpSettings::default()
        };
        let mut a = Conversation::new(1, &s, 0);
        a.send(&[1u8; 3000]);
        let mut out = Vec::new();
        a.flush(0, &mut out);
        for now in 1..3000 {
            let due = a.check(now);
            if due == now {
                a.update(now, &mut out);
                assert_ne!(a.check(now), now, "still due at {now}");
            }
        }
    }

    #[test]
    fn check_names_a_time_within_the_interval() {
        let s = KcpSettings::default();
        let mut a = Conversation::new(1, &s, 1000);
        a.send(b"x");
        let mut out = Vec::new();
        a.flush(1000, &mut out);
        let due = a.check(1003);
        assert!((1003..=1003 + s.interval).contains(&due), "{due}");
    }

    #[test]
    fn fec_recovers_a_lost_data_shard() {
        let s = KcpSettings {
            fec_data: 2,
            fec_parity: 1,
            ..KcpSettings::default()
        };
        let (mut a, mut b) = pair(&s);
        a.send(&[1u8; 100]);
        let mut out = Vec::new();
        a.flush(0, &mut out);
        a.send(&[2u8; 300]);
        a.flush(1, &mut out);
        assert_eq!(out.len(), 3, "two data packets and their parity");
        // The first data packet is lost; parity brings it back.
        b.input(&out[1], 2).unwrap();
        b.input(&out[2], 2).unwrap();
        let mut got = Vec::new();
        b.recv(&mut got, usize::MAX);
        assert_eq!(got.len(), 400);
        assert!(got[..100].iter().all(|&x| x == 1));
    }
}
