//! The bytes waiting to go out on one side of a session.
//!
//! A session's client side is [`Outbound::Scp`]: plaintext is encrypted
//! straight into the replay window and sent from there, so the window is the
//! send buffer and no other copy exists. A plain stream is
//! [`Outbound::Plain`]: a bounded queue whose in-flight half never moves while
//! the kernel reads it. A stable-connection session is [`Outbound::Stable`]:
//! like SCP, its window is its send buffer.

use crate::proto::session::Session;
use crate::proto::stable::StableSession;

/// A bounded byte queue: appends go to `pending`; a send takes all of
/// `pending` as `inflight`, which is left untouched until the send completes.
#[derive(Debug, Default)]
pub struct PlainQueue {
    pending: Vec<u8>,
    inflight: Vec<u8>,
    inflight_done: usize,
    limit: usize,
}

impl PlainQueue {
    /// A queue holding at most `limit` unsent bytes.
    pub fn new(limit: usize) -> Self {
        PlainQueue {
            limit,
            ..Default::default()
        }
    }

    fn unsent(&self) -> usize {
        self.pending.len() + self.inflight.len() - self.inflight_done
    }
}

/// The pieces [`Outbound::next_pieces`] yields: one named type rather than
/// a chain of adapters, since it runs for every send of every session.
enum Pieces<'a, W> {
    One(Option<&'a [u8]>),
    Window(W),
}

impl<'a, W: Iterator<Item = &'a [u8]>> Iterator for Pieces<'a, W> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Pieces::One(p) => p.take(),
            Pieces::Window(w) => w.next(),
        }
    }
}

/// Outgoing bytes of one direction of a session.
#[derive(Debug)]
pub enum Outbound {
    /// SCP: encrypted into the replay window.
    Scp(Box<Session>),
    /// No SCP: a bounded plain queue.
    Plain(Box<PlainQueue>),
    /// cloudwu's stable-connection dialect: encrypted into its replay
    /// window, with fingerprints of the plaintext.
    Stable(Box<StableSession>),
}

impl Outbound {
    /// How many more bytes [`push`](Self::push) would take now.
    pub fn free_space(&self) -> usize {
        match self {
            Outbound::Scp(s) => s.window().free_space(),
            Outbound::Stable(s) => s.window().free_space(),
            Outbound::Plain(q) => q.limit.saturating_sub(q.unsent()),
        }
    }

    /// Takes as much of `plain` as fits (encrypting it for SCP); returns the count.
    pub fn push(&mut self, plain: &[u8]) -> usize {
        match self {
            Outbound::Scp(s) => s.encrypt(plain),
            Outbound::Stable(s) => s.encrypt(plain),
            Outbound::Plain(q) => {
                let n = plain.len().min(q.limit.saturating_sub(q.unsent()));
                q.pending.extend_from_slice(&plain[..n]);
                n
            }
        }
    }

    /// Bytes written but not yet confirmed sent.
    pub fn unsent(&self) -> usize {
        match self {
            Outbound::Scp(s) => s.window().unsent(),
            Outbound::Stable(s) => s.window().unsent(),
            Outbound::Plain(q) => q.unsent(),
        }
    }

    /// The bytes to send next, as pieces of memory that stay put and
    /// unchanged until [`sent`](Self::sent) is called for them: for SCP the
    /// window's unsent ciphertext; for a plain queue its in-flight half
    /// (pending bytes move there when the previous send finished).
    pub fn next_pieces(&mut self) -> impl Iterator<Item = &[u8]> {
        match self {
            Outbound::Plain(q) => {
                if q.inflight_done == q.inflight.len() {
                    q.inflight.clear();
                    q.inflight_done = 0;
                    std::mem::swap(&mut q.pending, &mut q.inflight);
                }
                let rest = &q.inflight[q.inflight_done..];
                Pieces::One((!rest.is_empty()).then_some(rest))
            }
            Outbound::Scp(s) => {
                let w = s.window();
                Pieces::Window(w.slices_from(w.flushed()))
            }
            Outbound::Stable(s) => {
                let w = s.window();
                Pieces::Window(w.slices_from(w.flushed()))
            }
        }
    }

    /// Records that `n` bytes of the current send went out.
    pub fn sent(&mut self, n: usize) {
        match self {
            Outbound::Scp(s) => s.window_mut().mark_sent(n),
            Outbound::Stable(s) => s.window_mut().mark_sent(n),
            Outbound::Plain(q) => {
                q.inflight_done = (q.inflight_done + n).min(q.inflight.len());
                if q.inflight_done == q.inflight.len() {
                    q.inflight.clear();
                    q.inflight_done = 0;
                    // Idle connections should not keep a large buffer around.
                    if q.inflight.capacity() > 64 * 1024 {
                        q.inflight = Vec::new();
                    }
                }
            }
        }
    }

    /// The SCP session, if this is one.
    pub fn session(&self) -> Option<&Session> {
        match self {
            Outbound::Scp(s) => Some(s),
            _ => None,
        }
    }

    /// The SCP session, mutably, if this is one.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Outbound::Scp(s) => Some(s),
            _ => None,
        }
    }

    /// The stable-connection session, if this is one.
    pub fn stable(&self) -> Option<&StableSession> {
        match self {
            Outbound::Stable(s) => Some(s),
            _ => None,
        }
    }

    /// The stable-connection session, mutably, if this is one.
    pub fn stable_mut(&mut self) -> Option<&mut StableSession> {
        match self {
            Outbound::Stable(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the peer on this side may come back (its session outlives a
    /// dropped connection).
    pub fn resumable(&self) -> bool {
        !matches!(self, Outbound::Plain(_))
    }

    /// Decrypts and counts bytes the peer on this side sent, in place;
    /// returns how many leading bytes were resent copies of bytes already
    /// received, to be dropped (stable-connection resumes).
    pub fn decrypt(&mut self, data: &mut [u8]) -> usize {
        match self {
            Outbound::Scp(s) => {
                s.decrypt(data);
                0
            }
            Outbound::Stable(s) => s.decrypt_fresh(data),
            Outbound::Plain(_) => 0,
        }
    }

    /// Heap memory this direction holds.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Outbound::Scp(s) => s.window().memory_bytes(),
            Outbound::Stable(s) => s.memory_bytes(),
            Outbound::Plain(q) => q.pending.capacity() + q.inflight.capacity(),
        }
    }
}
