//! Per-connection state of the load generator, and the message pattern that
//! lets the receiver check every echoed byte without keeping a copy.
//!
//! A message is a frame: `u16` big-endian length, then a payload of seeded
//! pseudo-random bytes that depend only on (connection, message number), so
//! the receiver regenerates what it expects as the echo streams in, across
//! any number of resumes.

use crate::engine::endpoint::Endpoint;
use crate::engine::ring::OpId;
use crate::proto::replay::ReplayWindow;
use crate::proto::session::Session;
use crate::proto::stable::StableSession;
use std::collections::VecDeque;

/// SplitMix64 finaliser: a fast, well-mixed 64-bit hash.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The messages every connection sends: sizes and contents derived from a
/// seed, so they can be regenerated anywhere.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    seed: u64,
    min: usize,
    max: usize,
}

impl Pattern {
    /// Payloads of `min..=max` bytes (both at most 65535: the frame's length
    /// field is 16 bits).
    pub fn new(seed: u64, min: usize, max: usize) -> Self {
        let max = max.clamp(1, u16::MAX as usize);
        Pattern {
            seed,
            min: min.clamp(1, max),
            max,
        }
    }

    #[inline]
    fn key(&self, conn: u64, n: u64) -> u64 {
        mix(self.seed ^ mix(conn.rotate_left(32) ^ n))
    }

    /// Payload length of message `n` of connection `conn`.
    pub fn payload_len(&self, conn: u64, n: u64) -> usize {
        if self.min == self.max {
            return self.min;
        }
        let span = (self.max - self.min + 1) as u64;
        self.min + (mix(self.key(conn, n) ^ 0x5A5A) % span) as usize
    }

    /// Frame length (header included) of message `n`.
    pub fn frame_len(&self, conn: u64, n: u64) -> usize {
        2 + self.payload_len(conn, n)
    }

    /// Appends the whole frame of message `n` to `out`.
    pub fn write_frame(&self, conn: u64, n: u64, out: &mut Vec<u8>) {
        let len = self.payload_len(conn, n);
        let key = self.key(conn, n);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        let mut i = 0u64;
        let mut left = len;
        while left > 0 {
            let w = mix(key.wrapping_add(i)).to_le_bytes();
            let take = left.min(8);
            out.extend_from_slice(&w[..take]);
            left -= take;
            i += 1;
        }
    }

    /// Whether `data` equals bytes `[offset, offset + data.len())` of the
    /// frame of message `n` (the caller keeps within the frame).
    pub fn check(&self, conn: u64, n: u64, offset: usize, data: &[u8]) -> bool {
        let len = self.payload_len(conn, n);
        let key = self.key(conn, n);
        let header = (len as u16).to_be_bytes();
        let mut word_idx = u64::MAX;
        let mut word = [0u8; 8];
        for (k, &b) in data.iter().enumerate() {
            let pos = offset + k;
            let want = if pos < 2 {
                header[pos]
            } else {
                let p = pos - 2;
                let wi = (p / 8) as u64;
                if wi != word_idx {
                    word_idx = wi;
                    word = mix(key.wrapping_add(wi)).to_le_bytes();
                }
                word[p % 8]
            };
            if b != want {
                return false;
            }
        }
        true
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No socket: not opened yet, or waiting to reconnect.
    Idle,
    /// Socket, (bind,) connect in flight.
    Connecting,
    /// Handshake or resume request sent, answer awaited.
    Handshake,
    /// Carrying messages.
    Open,
    /// Given up (too many failures, or its echo did not verify).
    Dead,
}

/// The sending side of a connection's stream: an SCP or stable-connection
/// session (which encrypts into its replay window) or, for plain TCP, a
/// bare window used as the send buffer.
pub enum Tx {
    /// An SCP session.
    Scp(Box<Session>),
    /// A stable-connection session (client side).
    Stable(Box<StableSession>),
    /// Plain TCP.
    Plain(ReplayWindow),
}

impl Tx {
    /// The window holding unsent (and, for SCP, replayable) bytes.
    pub fn window(&self) -> &ReplayWindow {
        match self {
            Tx::Scp(s) => s.window(),
            Tx::Stable(s) => s.window(),
            Tx::Plain(w) => w,
        }
    }

    /// The same, to mark sends complete.
    pub fn window_mut(&mut self) -> &mut ReplayWindow {
        match self {
            Tx::Scp(s) => s.window_mut(),
            Tx::Stable(s) => s.window_mut(),
            Tx::Plain(w) => w,
        }
    }

    /// Commits all of `plain` to the stream, or nothing when it does not fit.
    pub fn commit(&mut self, plain: &[u8]) -> bool {
        if self.window().free_space() < plain.len() {
            return false;
        }
        let n = match self {
            Tx::Scp(s) => s.encrypt(plain),
            Tx::Stable(s) => s.encrypt(plain),
            Tx::Plain(w) => w.write(plain),
        };
        debug_assert_eq!(n, plain.len());
        true
    }

    /// Turns received stream bytes into plaintext, in place.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        match self {
            Tx::Scp(s) => s.decrypt(buf),
            Tx::Stable(s) => s.decrypt(buf),
            Tx::Plain(_) => {}
        }
    }

    /// The SCP session, if any.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Tx::Scp(s) => Some(s),
            _ => None,
        }
    }

    /// The stable-connection session, if any.
    pub fn stable_mut(&mut self) -> Option<&mut StableSession> {
        match self {
            Tx::Stable(s) => Some(s),
            _ => None,
        }
    }

    /// Whether a new connection could resume this stream now. A
    /// stable-connection client that has received nothing cannot: its
    /// request would read as a new session (the count 0 means "new").
    pub fn can_resume(&self) -> bool {
        match self {
            Tx::Scp(_) => true,
            Tx::Stable(s) => s.received() > 0,
            Tx::Plain(_) => false,
        }
    }
}

/// A handshake in progress, in the dialect the run speaks.
pub enum Handshake {
    /// SCP: new session or resume, as one machine.
    Scp(Box<crate::proto::client::ClientHandshake>),
    /// stable-connection: new session or resume.
    Stable(crate::proto::stable::ClientHandshake),
}

/// One simulated client: its socket attempt, its session and the message
/// bookkeeping that survives reconnects.
pub struct Conn {
    /// Global connection number (seeds its payloads).
    pub id: u64,
    /// Generation of the current attempt; completions of older ones are stale.
    pub epoch: u32,
    /// The current socket.
    pub ep: Option<Endpoint>,
    /// The connect in flight on it (cancelled by its own id if the socket
    /// is dropped first).
    pub connect_op: Option<OpId>,
    /// What it is doing.
    pub phase: Phase,
    /// The handshake in progress.
    pub hs: Option<Handshake>,
    /// Handshake bytes not yet handed to a send (a send owns its bytes).
    pub hs_out: Vec<u8>,
    /// The stream's sending side; `None` before the first session.
    pub tx: Option<Tx>,
    /// The send in flight that reads from `tx`'s window, on the current
    /// socket or on one already dropped. At most one at a time: the window
    /// is neither sent from again, written over nor freed while it runs.
    pub window_send: Option<OpId>,
    /// Next message number to commit.
    pub tx_msg: u64,
    /// Message whose echo is being received.
    pub rx_msg: u64,
    /// Bytes of that echo frame already received.
    pub rx_off: usize,
    /// Bytes of committed frames not yet echoed (`frames[rx_msg..tx_msg]` less `rx_off`).
    pub unechoed: usize,
    /// Commit time (µs since the run began) of each unechoed message.
    pub sent_at: VecDeque<u64>,
    /// Messages committed on the current connection (for `--resume-every`).
    pub msgs_here: u64,
    /// A message is due but waits for room or for the connection.
    pub due: bool,
    /// The first send has been scheduled.
    pub scheduled: bool,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Counted among connections still ramping up.
    pub in_ramp: bool,
    /// Has completed a handshake at least once.
    pub ever_open: bool,
    /// Dropped by the storm and not yet back.
    pub storm: bool,
    /// The current socket's WebSocket (and TLS), when the run's transport
    /// has one.
    pub(super) wire: Option<Box<super::wire::Wire>>,
}

impl Conn {
    /// A connection that has not been opened yet.
    pub fn new(id: u64) -> Self {
        Conn {
            id,
            epoch: 0,
            ep: None,
            connect_op: None,
            phase: Phase::Idle,
            hs: None,
            hs_out: Vec::new(),
            tx: None,
            window_send: None,
            tx_msg: 0,
            rx_msg: 0,
            rx_off: 0,
            unechoed: 0,
            sent_at: VecDeque::new(),
            msgs_here: 0,
            due: false,
            scheduled: false,
            failures: 0,
            in_ramp: false,
            ever_open: false,
            storm: false,
            wire: None,
        }
    }

    /// Whether a send from the window is still in flight on a socket that
    /// was dropped: until it completes the window must not be sent from or
    /// written to (a resume may have declared its bytes free).
    pub fn window_busy_elsewhere(&self) -> bool {
        self.window_send.is_some()
            && self.ep.as_ref().and_then(Endpoint::send_op) != self.window_send
    }

    /// Forgets the stream (the session is gone). Returns the bytes that were
    /// committed and will now never be echoed, and, when a send still reads
    /// the old window, that send with the old sending side: the caller hands
    /// it to the ring driver to keep until the send completes.
    pub fn reset_stream(&mut self) -> (usize, Option<(OpId, Tx)>) {
        let lost = self.unechoed;
        let old = self.tx.take();
        let busy = self.window_send.take().zip(old);
        self.tx_msg = 0;
        self.rx_msg = 0;
        self.rx_off = 0;
        self.unechoed = 0;
        self.sent_at.clear();
        (lost, busy)
    }
}

/// What checking received bytes found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Messages whose echo completed.
    pub completed: u64,
    /// Bytes that matched nothing expected (beyond what was sent, or wrong).
    pub bad: usize,
}

/// Checks `data` (plaintext) against the frames `conn` is waiting for,
/// advancing its receive position; `on_done(commit_time)` runs for every
/// message whose echo completed.
pub fn verify(
    pattern: &Pattern,
    conn: &mut Conn,
    mut data: &[u8],
    mut on_done: impl FnMut(u64),
) -> Checked {
    let mut out = Checked::default();
    while !data.is_empty() {
        if conn.rx_msg >= conn.tx_msg {
            // More bytes than we ever sent.
            out.bad += data.len();
            break;
        }
        let frame = pattern.frame_len(conn.id, conn.rx_msg);
        let take = data.len().min(frame - conn.rx_off);
        if !pattern.check(conn.id, conn.rx_msg, conn.rx_off, &data[..take]) {
            out.bad += data.len();
            break;
        }
        conn.rx_off += take;
        conn.unechoed -= take;
        data = &data[take..];
        if conn.rx_off == frame {
            conn.rx_off = 0;
            conn.rx_msg += 1;
            out.completed += 1;
            if let Some(t) = conn.sent_at.pop_front() {
                on_done(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ring::{Driver, Owned};
    use crate::proto::replay::PAGE;
    use io_uring::{opcode, types};

    /// An operation that stays in flight (a long timeout), for its id.
    fn pending(d: &mut Driver<u8>) -> OpId {
        let ts = Box::new(types::Timespec::new().sec(30));
        d.push(opcode::Timeout::new(&*ts).build(), Some(1), Owned::Time(ts))
    }

    #[test]
    fn a_reset_hands_over_a_window_still_being_sent() {
        let mut d = Driver::new(io_uring::IoUring::new(8).unwrap());
        let op = pending(&mut d);
        let mut c = Conn::new(1);
        c.tx = Some(Tx::Plain(ReplayWindow::new(PAGE)));
        c.unechoed = 10;
        c.window_send = Some(op);
        // No socket: the send belongs to one that was dropped.
        assert!(c.window_busy_elsewhere());
        let (lost, busy) = c.reset_stream();
        assert_eq!(lost, 10);
        let (kept_for, _tx) = busy.expect("the window goes with its send");
        assert_eq!(kept_for, op);
        assert!(c.tx.is_none() && c.window_send.is_none());
        assert!(!c.window_busy_elsewhere());

        // Without a send in flight the window is simply dropped.
        c.tx = Some(Tx::Plain(ReplayWindow::new(PAGE)));
        assert!(c.reset_stream().1.is_none());
    }

    #[test]
    fn the_current_sockets_send_is_not_busy_elsewhere() {
        let mut d = Driver::new(io_uring::IoUring::new(8).unwrap());
        let mut ep = Endpoint::new(0);
        ep.send_owned(&mut d, vec![1, 2, 3], 2);
        let mut c = Conn::new(1);
        c.window_send = ep.send_op();
        c.ep = Some(ep);
        assert!(!c.window_busy_elsewhere());
        // The socket is dropped with its send in flight.
        c.ep = Some(Endpoint::new(1));
        assert!(c.window_busy_elsewhere());
    }

    fn committed(p: &Pattern, c: &mut Conn, n: u64) -> Vec<u8> {
        let mut all = Vec::new();
        for _ in 0..n {
            let start = all.len();
            p.write_frame(c.id, c.tx_msg, &mut all);
            c.unechoed += all.len() - start;
            c.sent_at.push_back(c.tx_msg);
            c.tx_msg += 1;
        }
        all
    }

    #[test]
    fn frames_check_in_any_split() {
        let p = Pattern::new(42, 1, 300);
        let mut c = Conn::new(7);
        let all = committed(&p, &mut c, 20);
        let mut done = Vec::new();
        for chunk in all.chunks(13) {
            let r = verify(&p, &mut c, chunk, |t| done.push(t));
            assert_eq!(r.bad, 0);
        }
        assert_eq!(done, (0..20).collect::<Vec<_>>());
        assert_eq!(c.unechoed, 0);
    }

    #[test]
    fn sizes_stay_in_range_and_differ_by_connection() {
        let p = Pattern::new(1, 16, 4096);
        for n in 0..1000 {
            let l = p.payload_len(3, n);
            assert!((16..=4096).contains(&l));
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        p.write_frame(1, 0, &mut a);
        p.write_frame(2, 0, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn corruption_and_extra_bytes_are_bad() {
        let p = Pattern::new(9, 64, 64);
        let mut c = Conn::new(1);
        let mut all = committed(&p, &mut c, 2);
        all[70] ^= 1;
        let r = verify(&p, &mut c, &all, |_| {});
        assert_eq!(r.completed, 1);
        assert!(r.bad > 0);

        let mut c = Conn::new(1);
        let mut all = committed(&p, &mut c, 1);
        all.extend_from_slice(&[1, 2, 3]);
        let r = verify(&p, &mut c, &all, |_| {});
        assert_eq!((r.completed, r.bad), (1, 3));
    }
}
