//! A blocking KCP client stream over `std::net::UdpSocket`, as kcp-go's
//! `DialWithOptions` makes one: a random conversation id, datagrams to the
//! gate's KCP door, the same [`proto::kcp`](crate::proto::kcp) state machine
//! as the gate. It can impair its own link ([`Impair`]: loss, duplication,
//! reordering, delay, seeded) to test the gate over a bad network without
//! touching the host's.

use crate::proto::kcp::{Conversation, KcpSettings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// What a client's link does to its datagrams, both ways.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impair {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Datagrams are held a random 0..=`delay` (or up to 20 ms when no
    /// delay is set), so they overtake each other.
    pub reorder: bool,
    /// Delay of every datagram.
    pub delay: Duration,
    /// Seed of the link's choices.
    pub seed: u64,
}

impl Default for Impair {
    fn default() -> Self {
        Impair {
            loss: 0.0,
            duplicate: 0.0,
            reorder: false,
            delay: Duration::ZERO,
            seed: 1,
        }
    }
}

impl Impair {
    /// Whether the link changes anything.
    pub fn is_clean(&self) -> bool {
        self.loss <= 0.0 && self.duplicate <= 0.0 && !self.reorder && self.delay.is_zero()
    }
}

/// How to open a KCP connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KcpDial {
    /// The conversation's settings (they must match the gate's FEC).
    pub settings: KcpSettings,
    /// The link.
    pub impair: Impair,
}

/// Datagrams the impaired link holds, each with when it is delivered.
struct Link {
    rng: StdRng,
    impair: Impair,
    /// (due, outgoing?, bytes)
    held: Vec<(Instant, bool, Vec<u8>)>,
}

impl Link {
    /// What becomes of one datagram: how many copies, each with its delay.
    fn fate(&mut self) -> smallvec::SmallVec<[Duration; 2]> {
        let mut out = smallvec::SmallVec::new();
        let i = self.impair;
        if i.loss > 0.0 && self.rng.random_bool(i.loss.min(1.0)) {
            return out;
        }
        let copies = if i.duplicate > 0.0 && self.rng.random_bool(i.duplicate.min(1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut d = i.delay;
            if i.reorder {
                let spread = if i.delay.is_zero() {
                    Duration::from_millis(20)
                } else {
                    i.delay
                };
                d += spread.mul_f64(self.rng.random::<f64>());
            }
            out.push(d);
        }
        out
    }
}

/// One client conversation with a gate's KCP door, without blocking: a
/// non-blocking UDP socket of its own, the conversation, and the link's
/// impairment. [`KcpStream`] blocks on one; the load generator polls many.
pub struct KcpLink {
    sock: UdpSocket,
    conv: Conversation,
    origin: Instant,
    link: Option<Link>,
    out: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl KcpLink {
    /// Opens a conversation with the door at `addr` from a new local port,
    /// with a random conversation id. Nothing is sent until data is.
    pub fn open(addr: SocketAddr, dial: &KcpDial) -> io::Result<KcpLink> {
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(addr)?;
        sock.set_nonblocking(true)?;
        let conv: u32 = rand::random();
        let link = (!dial.impair.is_clean()).then(|| Link {
            rng: StdRng::seed_from_u64(dial.impair.seed ^ conv as u64),
            impair: dial.impair,
            held: Vec::new(),
        });
        Ok(KcpLink {
            sock,
            conv: Conversation::new(conv, &dial.settings, 0),
            origin: Instant::now(),
            link,
            out: Vec::new(),
            buf: vec![0u8; 65536],
        })
    }

    /// The socket, for `poll`.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The conversation id.
    pub fn conv(&self) -> u32 {
        self.conv.conv()
    }

    fn now(&self) -> u32 {
        self.origin.elapsed().as_millis() as u32
    }

    /// Sends what the conversation wrote, through the link.
    fn send_out(&mut self) {
        let now = Instant::now();
        for d in std::mem::take(&mut self.out) {
            match self.link.as_mut() {
                None => {
                    let _ = self.sock.send(&d);
                }
                Some(link) => {
                    for delay in link.fate() {
                        link.held.push((now + delay, true, d.clone()));
                    }
                }
            }
        }
        self.release(now);
    }

    /// Delivers held datagrams that are due (either way).
    fn release(&mut self, now: Instant) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if link.held.is_empty() {
            return;
        }
        let mut due = Vec::new();
        link.held.retain(|(at, outgoing, d)| {
            if *at <= now {
                due.push((*outgoing, d.clone()));
                false
            } else {
                true
            }
        });
        let now32 = self.now();
        for (outgoing, d) in due {
            if outgoing {
                let _ = self.sock.send(&d);
            } else {
                let _ = self.conv.input(&d, now32);
            }
        }
    }

    /// Takes every datagram waiting on the socket (through the link).
    pub fn receive(&mut self) -> io::Result<()> {
        loop {
            match self.sock.recv(&mut self.buf) {
                Ok(n) => {
                    let now = Instant::now();
                    match self.link.as_mut() {
                        None => {
                            let now32 = self.origin.elapsed().as_millis() as u32;
                            let _ = self.conv.input(&self.buf[..n], now32);
                        }
                        Some(link) => {
                            for delay in link.fate() {
                                link.held.push((now + delay, false, self.buf[..n].to_vec()));
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.release(Instant::now());
        Ok(())
    }

    /// Runs the clock: held datagrams that are due, retransmissions, the
    /// interval's flush.
    pub fn tick(&mut self) {
        self.release(Instant::now());
        let now32 = self.now();
        self.conv.update(now32, &mut self.out);
        self.send_out();
    }

    /// Sends what is queued now (acks, new data).
    pub fn flush(&mut self) {
        let now32 = self.now();
        self.conv.flush(now32, &mut self.out);
        self.send_out();
    }

    /// Queues bytes, as many as the send window takes; returns how many.
    pub fn send(&mut self, data: &[u8]) -> usize {
        self.conv.send(data)
    }

    /// Appends received bytes to `out`; returns how many.
    pub fn recv(&mut self, out: &mut Vec<u8>) -> usize {
        self.conv.recv(out, usize::MAX)
    }

    /// When [`tick`](Self::tick) is next due.
    pub fn next_due(&self) -> Instant {
        let now32 = self.now();
        let ms = self.conv.check(now32).wrapping_sub(now32).min(60_000);
        let due = Instant::now() + Duration::from_millis(ms as u64);
        match self
            .link
            .as_ref()
            .and_then(|l| l.held.iter().map(|h| h.0).min())
        {
            Some(h) => due.min(h),
            None => due,
        }
    }

    /// Whether the gate has acknowledged everything sent.
    pub fn all_acked(&self) -> bool {
        self.conv.all_acked()
    }
}

/// Waits until `fd` is readable or `wait` passes.
fn wait_readable(fd: std::os::fd::RawFd, wait: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// A blocking KCP connection to a gate.
pub struct KcpStream {
    link: KcpLink,
    timeout: Option<Duration>,
    interval: Duration,
    /// Received bytes not yet read.
    rx: Vec<u8>,
}

impl KcpStream {
    /// Opens a conversation with the gate's KCP door at `addr` from a new
    /// local port. Nothing is sent until the first write. `timeout` bounds
    /// every read and write (tests must never hang).
    pub fn connect(
        addr: SocketAddr,
        dial: &KcpDial,
        timeout: Option<Duration>,
    ) -> io::Result<KcpStream> {
        Ok(KcpStream {
            link: KcpLink::open(addr, dial)?,
            timeout,
            interval: Duration::from_millis(dial.settings.interval.clamp(1, 5000) as u64),
            rx: Vec::new(),
        })
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.link.local_addr()
    }

    /// The conversation id.
    pub fn conv(&self) -> u32 {
        self.link.conv()
    }

    /// One round: waits up to an interval for datagrams, takes them, runs
    /// the clock.
    fn pump(&mut self) -> io::Result<()> {
        self.link.flush();
        let wait = self
            .link
            .next_due()
            .saturating_duration_since(Instant::now())
            .min(self.interval);
        wait_readable(self.link.fd(), wait);
        self.link.receive()?;
        self.link.tick();
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    fn timed_out(deadline: Option<Instant>) -> bool {
        deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits until the gate has acknowledged everything written, up to the
    /// timeout.
    pub fn drain(&mut self) -> io::Result<()> {
        let deadline = self.deadline();
        while !self.link.all_acked() {
            if Self::timed_out(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "kcp: unacknowledged",
                ));
            }
            self.pump()?;
        }
        Ok(())
    }
}

impl Read for KcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = self.deadline();
        loop {
            if self.rx.is_empty() {
                self.link.recv(&mut self.rx);
            }
            if !self.rx.is_empty() {
                let n = self.rx.len().min(buf.len());
                buf[..n].copy_from_slice(&self.rx[..n]);
                self.rx.drain(..n);
                // Reading opened window: tell the gate soon.
                self.link.flush();
                return Ok(n);
            }
            if Self::timed_out(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "kcp: read timed out",
                ));
            }
            self.pump()?;
        }
    }
}

impl Write for KcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let deadline = self.deadline();
        loop {
            let n = self.link.send(buf);
            if n > 0 || buf.is_empty() {
                self.link.flush();
                return Ok(n);
            }
            if Self::timed_out(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "kcp: write timed out",
                ));
            }
            self.pump()?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.link.flush();
        Ok(())
    }
}
