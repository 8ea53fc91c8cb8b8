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

/// A KCP connection to a gate.
pub struct KcpStream {
    sock: UdpSocket,
    conv: Conversation,
    origin: Instant,
    timeout: Option<Duration>,
    interval: Duration,
    link: Option<Link>,
    /// Received bytes not yet read.
    rx: Vec<u8>,
    out: Vec<Vec<u8>>,
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
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(addr)?;
        let conv: u32 = rand::random();
        let link = (!dial.impair.is_clean()).then(|| Link {
            rng: StdRng::seed_from_u64(dial.impair.seed ^ conv as u64),
            impair: dial.impair,
            held: Vec::new(),
        });
        Ok(KcpStream {
            sock,
            conv: Conversation::new(conv, &dial.settings, 0),
            origin: Instant::now(),
            timeout,
            interval: Duration::from_millis(dial.settings.interval.clamp(1, 5000) as u64),
            link,
            rx: Vec::new(),
            out: Vec::new(),
        })
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

    /// One round: flushes, then waits up to `wait` for datagrams and takes
    /// them, then runs the clock.
    fn pump(&mut self, wait: Duration) -> io::Result<()> {
        let now32 = self.now();
        self.conv.flush(now32, &mut self.out);
        self.send_out();
        let wait = match self
            .link
            .as_ref()
            .and_then(|l| l.held.iter().map(|h| h.0).min())
        {
            Some(next) => wait.min(next.saturating_duration_since(Instant::now())),
            None => wait,
        };
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; 65536];
        let mut first = true;
        loop {
            let got = if first {
                self.sock.recv(&mut buf)
            } else {
                self.sock.set_nonblocking(true)?;
                let r = self.sock.recv(&mut buf);
                self.sock.set_nonblocking(false)?;
                r
            };
            first = false;
            match got {
                Ok(n) => {
                    let now = Instant::now();
                    match self.link.as_mut() {
                        None => {
                            let _ = self
                                .conv
                                .input(&buf[..n], self.origin.elapsed().as_millis() as u32);
                        }
                        Some(link) => {
                            for delay in link.fate() {
                                link.held.push((now + delay, false, buf[..n].to_vec()));
                            }
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        self.release(Instant::now());
        let now32 = self.now();
        self.conv.update(now32, &mut self.out);
        self.send_out();
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
        while !self.conv.all_acked() {
            if Self::timed_out(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "kcp: unacknowledged",
                ));
            }
            self.pump(self.interval)?;
        }
        Ok(())
    }
}

impl Read for KcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = self.deadline();
        loop {
            if self.rx.is_empty() {
                self.conv.recv(&mut self.rx, usize::MAX);
            }
            if !self.rx.is_empty() {
                let n = self.rx.len().min(buf.len());
                buf[..n].copy_from_slice(&self.rx[..n]);
                self.rx.drain(..n);
                // Reading opened window: tell the gate soon.
                let now32 = self.now();
                self.conv.flush(now32, &mut self.out);
                self.send_out();
                return Ok(n);
            }
            if Self::timed_out(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "kcp: read timed out",
                ));
            }
            self.pump(self.interval)?;
        }
    }
}

impl Write for KcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let deadline = self.deadline();
        loop {
            let n = self.conv.send(buf);
            if n > 0 || buf.is_empty() {
                let now32 = self.now();
                self.conv.flush(now32, &mut self.out);
                self.send_out();
                return Ok(n);
            }
            if Self::timed_out(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "kcp: write timed out",
                ));
            }
            self.pump(self.interval)?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let now32 = self.now();
        self.conv.flush(now32, &mut self.out);
        self.send_out();
        Ok(())
    }
}
