//! The bytes waiting to go out on one connection, and how to send them.
//!
//! A session's client side is [`Outbound::Scp`]: plaintext is encrypted
//! straight into the replay window and sent from there, so the window is the
//! send buffer and no other copy exists. A plain stream is
//! [`Outbound::Plain`]: a bounded queue whose in-flight half never moves while
//! the kernel reads it.

use crate::proto::session::Session;
use io_uring::{opcode, squeue, types};

/// Most pieces one send gathers.
const MAX_IOV: usize = 16;

/// msghdr + iovecs of one in-flight `sendmsg`, boxed so it stays put.
pub struct SendMeta {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

impl SendMeta {
    /// An empty, boxed header.
    pub fn boxed() -> Box<SendMeta> {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid.
        Box::new(unsafe { std::mem::zeroed() })
    }
}

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

/// Outgoing bytes of one direction of a session.
#[derive(Debug)]
pub enum Outbound {
    /// SCP: encrypted into the replay window.
    Scp(Box<Session>),
    /// No SCP: a bounded plain queue.
    Plain(PlainQueue),
}

/// A send ready to submit.
pub struct SendOp {
    /// The SQE (user data still to set).
    pub entry: squeue::Entry,
    /// Bytes it covers.
    pub len: usize,
    /// Header memory that must live until completion, if `sendmsg` was used.
    pub meta: Option<Box<SendMeta>>,
}

impl Outbound {
    /// How many more bytes [`push`](Self::push) would take now.
    pub fn free_space(&self) -> usize {
        match self {
            Outbound::Scp(s) => s.window().free_space(),
            Outbound::Plain(q) => q.limit.saturating_sub(q.unsent()),
        }
    }

    /// Takes as much of `plain` as fits (encrypting it for SCP); returns the count.
    pub fn push(&mut self, plain: &[u8]) -> usize {
        match self {
            Outbound::Scp(s) => s.encrypt(plain),
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
            Outbound::Plain(q) => q.unsent(),
        }
    }

    /// Builds the next send of the bytes after `in_flight` unsent bytes that
    /// an earlier send already covers, or `None` when there is nothing new.
    pub fn next_send(
        &mut self,
        fd: types::Fixed,
        in_flight: usize,
        pool: &mut Vec<Box<SendMeta>>,
    ) -> Option<SendOp> {
        match self {
            Outbound::Plain(q) => {
                if in_flight > 0 {
                    return None; // one send at a time: `inflight` must not change under it
                }
                if q.inflight_done == q.inflight.len() {
                    q.inflight.clear();
                    q.inflight_done = 0;
                    if q.pending.is_empty() {
                        return None;
                    }
                    std::mem::swap(&mut q.pending, &mut q.inflight);
                }
                let rest = &q.inflight[q.inflight_done..];
                let entry = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).build();
                Some(SendOp {
                    entry,
                    len: rest.len(),
                    meta: None,
                })
            }
            Outbound::Scp(s) => {
                let w = s.window();
                let from = w.flushed() + in_flight as u64;
                if from >= w.written() {
                    return None;
                }
                let mut pieces = w.slices_from(from);
                let first = pieces.next()?;
                let Some(second) = pieces.next() else {
                    let entry = opcode::Send::new(fd, first.as_ptr(), first.len() as u32).build();
                    return Some(SendOp {
                        entry,
                        len: first.len(),
                        meta: None,
                    });
                };
                let mut meta = pool.pop().unwrap_or_else(SendMeta::boxed);
                let mut n = 0;
                let mut len = 0;
                for piece in std::iter::once(first)
                    .chain(std::iter::once(second))
                    .chain(pieces)
                    .take(MAX_IOV)
                {
                    meta.iov[n] = libc::iovec {
                        iov_base: piece.as_ptr() as *mut _,
                        iov_len: piece.len(),
                    };
                    n += 1;
                    len += piece.len();
                }
                meta.hdr.msg_iov = meta.iov.as_mut_ptr();
                meta.hdr.msg_iovlen = n;
                let entry = opcode::SendMsg::new(fd, &meta.hdr as *const libc::msghdr).build();
                Some(SendOp {
                    entry,
                    len,
                    meta: Some(meta),
                })
            }
        }
    }

    /// The bytes to send next, as pieces of memory that stay put and
    /// unchanged until [`sent`](Self::sent) is called for them: for SCP the
    /// window's unsent ciphertext; for a plain queue its in-flight half
    /// (pending bytes move there when the previous send finished).
    pub fn next_pieces(&mut self) -> impl Iterator<Item = &[u8]> {
        let (plain, scp) = match self {
            Outbound::Plain(q) => {
                if q.inflight_done == q.inflight.len() {
                    q.inflight.clear();
                    q.inflight_done = 0;
                    std::mem::swap(&mut q.pending, &mut q.inflight);
                }
                (Some(&q.inflight[q.inflight_done..]), None)
            }
            Outbound::Scp(s) => {
                let w = s.window();
                (None, Some(w.slices_from(w.flushed())))
            }
        };
        plain
            .filter(|p| !p.is_empty())
            .into_iter()
            .chain(scp.into_iter().flatten())
    }

    /// Records that `n` bytes of the current send went out.
    pub fn sent(&mut self, n: usize) {
        match self {
            Outbound::Scp(s) => s.window_mut().mark_sent(n),
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
            Outbound::Plain(_) => None,
        }
    }

    /// The SCP session, mutably, if this is one.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Outbound::Scp(s) => Some(s),
            Outbound::Plain(_) => None,
        }
    }

    /// Heap memory this direction holds.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Outbound::Scp(s) => s.window().memory_bytes(),
            Outbound::Plain(q) => q.pending.capacity() + q.inflight.capacity(),
        }
    }
}
