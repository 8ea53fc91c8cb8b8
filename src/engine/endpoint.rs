//! One byte-stream peer on a direct descriptor — a client connection, an
//! upstream link, and later any stream a front door produces — with its
//! receive and send state in one place.
//!
//! The owner says how many bytes it can take ([`Endpoint::sync_recv`]) and
//! what to send; the endpoint turns that into submissions on the ring
//! driver and completions back into events. Receives go into the shard's
//! provided buffers:
//! - with room for many buffers, one multishot receive, capped at that room
//!   where the kernel can cap it (Linux 6.16+), so a peer that floods cannot
//!   push more into the gate than the owner allowed;
//! - with less room, or where the kernel cannot cap, one buffer at a time;
//! - with none, no receive at all (the bytes wait in the kernel's socket
//!   buffer and TCP pushes back on the sender).
//!
//! A receive is ended without a scan of the ring: cancelled by its own
//! `user_data` to pause or to hand the descriptor over, and by shutting the
//! socket's read side when it closes, which completes it with end-of-file.

use super::ring::{BufRing, Completion, Driver, MsgHeader, OpId, Owned, RecvBuf};
use io_uring::{opcode, squeue, types};

/// What a receive completion meant.
pub enum Received {
    /// Bytes.
    Data(RecvBuf),
    /// The peer closed its side.
    Eof,
    /// The receive failed (negated errno): the connection is gone.
    Failed(i32),
    /// The receive ended without data (cancelled, out of buffers, or its
    /// byte budget used up): [`Endpoint::sync_recv`] arms the next one.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Idle,
    Armed(OpId),
    /// Cancel asked for; the receive's last completion is still to come.
    Stopping(OpId),
}

/// Receive settings shared by a shard's endpoints.
#[derive(Debug, Clone, Copy)]
pub struct RecvPolicy {
    /// Size of one provided buffer.
    pub buf_size: usize,
    /// Whether the kernel caps a multishot receive's total bytes.
    pub capped_multishot: bool,
}

impl RecvPolicy {
    /// Room from which a multishot receive is used (a single receive takes
    /// at most one buffer, so below this the bound is kept by receiving one
    /// buffer at a time).
    fn multishot_from(&self) -> usize {
        self.buf_size * 2
    }
}

/// One peer's stream.
#[derive(Debug)]
pub struct Endpoint {
    slot: u32,
    recv: Recv,
    send: Option<OpId>,
    /// The owner had no room last time it said.
    held: bool,
    closed: bool,
}

impl Endpoint {
    /// A stream on direct descriptor `slot`.
    pub fn new(slot: u32) -> Endpoint {
        Endpoint {
            slot,
            recv: Recv::Idle,
            send: None,
            held: false,
            closed: false,
        }
    }

    /// A stream with no descriptor of its own (a KCP conversation, whose
    /// datagrams go through its shard's UDP socket): it arms nothing, and
    /// closing it submits nothing.
    pub fn detached() -> Endpoint {
        Endpoint {
            closed: true,
            ..Endpoint::new(u32::MAX)
        }
    }

    /// The direct descriptor.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    fn fd(&self) -> types::Fixed {
        types::Fixed(self.slot)
    }

    /// Whether a receive is in flight (armed, or ending).
    pub fn recv_in_flight(&self) -> bool {
        self.recv != Recv::Idle
    }

    /// Whether a send is in flight.
    pub fn sending(&self) -> bool {
        self.send.is_some()
    }

    /// The send in flight, to keep memory it reads alive past its owner.
    pub fn send_op(&self) -> Option<OpId> {
        self.send
    }

    /// Whether the close was submitted.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Brings the receive in line with `room`, the bytes the owner can take
    /// now: none ends the armed receive; some arms one when none is armed.
    /// Returns true when this stops reading that had room before (a
    /// back-pressure pause, for the counters).
    pub fn sync_recv<T: Copy>(
        &mut self,
        d: &mut Driver<T>,
        bufs: &BufRing,
        policy: &RecvPolicy,
        room: usize,
        tag: T,
    ) -> bool {
        if self.closed {
            return false;
        }
        let paused = room == 0 && !self.held;
        self.held = room == 0;
        match self.recv {
            Recv::Armed(op) if room == 0 => {
                d.cancel(op);
                self.recv = Recv::Stopping(op);
            }
            Recv::Idle if room > 0 => {
                let entry = if policy.capped_multishot && room >= policy.multishot_from() {
                    let e = opcode::RecvMulti::new(self.fd(), bufs.bgid()).build();
                    with_total_limit(e, room)
                } else {
                    single_recv(self.fd(), bufs)
                };
                self.recv = Recv::Armed(d.push(entry, Some(tag), Owned::None));
            }
            _ => {}
        }
        paused
    }

    /// Ends the receive so that no byte is read after this (before a hand-over).
    /// Returns whether one was still in flight (its last completion follows).
    pub fn stop_recv<T: Copy>(&mut self, d: &mut Driver<T>) -> bool {
        match self.recv {
            Recv::Armed(op) => {
                d.cancel(op);
                self.recv = Recv::Stopping(op);
                true
            }
            Recv::Stopping(_) => true,
            Recv::Idle => false,
        }
    }

    /// Interprets a receive completion.
    pub fn on_recv<T>(&mut self, c: &Completion<T>, bufs: &BufRing) -> Received {
        if !c.more() {
            self.recv = Recv::Idle;
        }
        if c.result > 0 {
            return match bufs.take(c.result, c.flags) {
                Some(buf) => Received::Data(buf),
                None => Received::Failed(-libc::EIO),
            };
        }
        // A buffer selected for an empty read still goes back.
        drop(bufs.take(0, c.flags));
        match -c.result {
            0 => Received::Eof,
            libc::ECANCELED | libc::ENOBUFS => Received::Ended,
            e => Received::Failed(-e),
        }
    }

    /// Sends `bytes`, owned by the operation until it completes.
    pub fn send_owned<T: Copy>(&mut self, d: &mut Driver<T>, bytes: Vec<u8>, tag: T) {
        debug_assert!(self.send.is_none());
        let e = opcode::Send::new(self.fd(), bytes.as_ptr(), bytes.len() as u32).build();
        self.send = Some(d.push(e, Some(tag), Owned::Bytes(Box::new(bytes))));
    }

    /// Sends `pieces`, memory the caller keeps alive and unchanged until
    /// the completion (or hands to [`Driver::keep_alive`] with
    /// [`send_op`](Self::send_op) if it goes away first). Several pieces
    /// are gathered with a header from `pool` (given back in the
    /// completion's memory). Returns the bytes covered (at most
    /// [`super::ring::MAX_IOV`] pieces).
    #[allow(clippy::vec_box)]
    pub fn send_pieces<'a, T: Copy>(
        &mut self,
        d: &mut Driver<T>,
        pieces: impl IntoIterator<Item = &'a [u8]>,
        pool: &mut Vec<Box<MsgHeader>>,
        tag: T,
    ) -> usize {
        debug_assert!(self.send.is_none());
        let mut pieces = pieces.into_iter().filter(|p| !p.is_empty());
        let Some(first) = pieces.next() else {
            return 0;
        };
        let Some(second) = pieces.next() else {
            let e = opcode::Send::new(self.fd(), first.as_ptr(), first.len() as u32).build();
            self.send = Some(d.push(e, Some(tag), Owned::None));
            return first.len();
        };
        let mut meta = pool.pop().unwrap_or_else(MsgHeader::boxed);
        let len = meta.gather([first, second].into_iter().chain(pieces));
        let e = opcode::SendMsg::new(self.fd(), meta.as_ptr()).build();
        self.send = Some(d.push(e, Some(tag), Owned::Msg(meta)));
        len
    }

    /// Interprets a send completion: bytes sent, or a negated errno. The
    /// memory the send owned comes back in `c.mem`.
    pub fn on_send<T>(&mut self, c: &Completion<T>) -> i32 {
        if self.send == Some(c.op) {
            self.send = None;
        }
        c.result
    }

    /// Closes the descriptor. A receive still in flight is ended by shutting
    /// the socket down first (it completes with end-of-file; a multishot
    /// receive would otherwise hold the socket open after its slot is gone).
    /// With `tag`, the close's completion is reported (slot accounting).
    pub fn close<T: Copy>(&mut self, d: &mut Driver<T>, tag: Option<T>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let close = opcode::Close::new(self.fd()).build();
        if self.recv != Recv::Idle {
            let shutdown = opcode::Shutdown::new(self.fd(), libc::SHUT_RDWR).build();
            // Hard link: the close runs even when shutdown fails (a socket
            // that never connected answers ENOTCONN).
            d.push_linked(
                [(shutdown, None, Owned::None), (close, tag, Owned::None)],
                true,
            );
        } else {
            d.push(close, tag, Owned::None);
        }
    }
    /// Closes the descriptor with a reset (RST) instead of an orderly FIN,
    /// as a dropped mobile connection looks: `SO_LINGER` 0, then the read
    /// side shut (which ends an armed receive and sends nothing), then close.
    pub fn abort<T: Copy>(&mut self, d: &mut Driver<T>, tag: Option<T>) {
        if self.closed {
            return;
        }
        self.closed = true;
        static LINGER_RESET: libc::linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let linger = opcode::SetSockOpt::new(
            self.fd(),
            libc::SOL_SOCKET as u32,
            libc::SO_LINGER as u32,
            &LINGER_RESET as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
        .build();
        let shutdown = opcode::Shutdown::new(self.fd(), libc::SHUT_RD).build();
        let close = opcode::Close::new(self.fd()).build();
        d.push_linked(
            [
                (linger, None, Owned::None),
                (shutdown, None, Owned::None),
                (close, tag, Owned::None),
            ],
            true,
        );
    }
}

fn single_recv(fd: types::Fixed, bufs: &BufRing) -> squeue::Entry {
    opcode::Recv::new(fd, std::ptr::null_mut(), 0)
        .buf_group(bufs.bgid())
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
}

/// Caps a multishot receive at about `limit` bytes in all (the SQE's
/// `optlen`, byte offset 44; Linux 6.16+): once that many have been
/// received (the last receive may fill its buffer past it) the receive
/// ends, and is re-armed with the room there is then.
fn with_total_limit(entry: squeue::Entry, limit: usize) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    // SAFETY: Entry is a repr(C) wrapper of the 64-byte io_uring_sqe.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[44..48].copy_from_slice(&limit.to_ne_bytes());
    // SAFETY: same layout back.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Whether this kernel caps multishot receives by total bytes: arms one
/// with a 1-byte cap on a socket pair holding 2 bytes and looks at what
/// comes back (older kernels refuse the field with EINVAL).
pub fn probe_capped_multishot(bufs: &BufRing, ring: &mut io_uring::IoUring) -> bool {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let Ok((mut a, b)) = std::os::unix::net::UnixStream::pair() else {
        return false;
    };
    if a.write_all(b"xy").is_err() {
        return false;
    }
    let e = opcode::RecvMulti::new(types::Fd(b.as_raw_fd()), bufs.bgid()).build();
    let e = with_total_limit(e, 1).user_data(u64::MAX);
    // SAFETY: the entry names no memory of ours; buffers come from the group.
    if unsafe { ring.submission().push(&e) }.is_err() || ring.submit_and_wait(1).is_err() {
        return false;
    }
    let mut capped = false;
    let mut more = true;
    for _ in 0..4 {
        let cqes: Vec<_> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in cqes {
            if ud != u64::MAX {
                continue;
            }
            drop(bufs.take(res, flags));
            more = io_uring::cqueue::more(flags);
            // The cap is checked after each receive, so the first one may
            // take more than the cap (up to a buffer), then the receive ends.
            capped = res > 0 && !more;
        }
        if !more {
            break;
        }
        let _ = ring.submit_and_wait(0);
    }
    if more {
        // Not capped: the receive is still armed; end it before `b` goes.
        let cancel = opcode::AsyncCancel::new(u64::MAX)
            .build()
            .user_data(u64::MAX - 1);
        // SAFETY: no memory referenced.
        if unsafe { ring.submission().push(&cancel) }.is_ok() {
            let _ = ring.submit_and_wait(2);
            for c in ring.completion() {
                drop(bufs.take(c.result(), c.flags()));
            }
        }
        return false;
    }
    capped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ring::BufRing;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    struct Rig {
        d: Driver<u8>,
        bufs: BufRing,
        policy: RecvPolicy,
        ep: Endpoint,
        peer: TcpStream,
    }

    fn rig() -> Rig {
        let mut ring = io_uring::IoUring::new(32).unwrap();
        let bufs = BufRing::new(&ring, 0, 8, 1024).unwrap();
        let capped = probe_capped_multishot(&bufs, &mut ring);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let ours = l.accept().unwrap().0;
        ring.submitter()
            .register_files(&[ours.as_raw_fd()])
            .unwrap();
        Rig {
            d: Driver::new(ring),
            bufs,
            policy: RecvPolicy {
                buf_size: 1024,
                capped_multishot: capped,
            },
            ep: Endpoint::new(0),
            peer,
        }
    }

    /// Runs completions until `done` says so; returns the bytes received.
    fn pump(r: &mut Rig, room: &mut usize, rounds: usize) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut eof = false;
        let mut out = Vec::new();
        for _ in 0..rounds {
            r.ep.sync_recv(&mut r.d, &r.bufs, &r.policy, *room, 1);
            r.d.submit_and_reap(false, &mut out);
            for c in out.drain(..) {
                if c.tag != 1 {
                    continue;
                }
                match r.ep.on_recv(&c, &r.bufs) {
                    Received::Data(buf) => {
                        *room = room.saturating_sub(buf.len());
                        got.extend_from_slice(&buf);
                    }
                    Received::Eof => eof = true,
                    Received::Failed(e) => panic!("receive failed: {e}"),
                    Received::Ended => {}
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        (got, eof)
    }

    #[test]
    fn never_takes_more_than_the_room_plus_a_buffer() {
        let mut r = rig();
        r.peer.write_all(&vec![7u8; 64 * 1024]).unwrap();
        let mut room = 3000;
        let (got, _) = pump(&mut r, &mut room, 40);
        assert!(
            got.len() >= 3000 && got.len() <= 3000 + 1024,
            "took {} bytes with room for 3000 (capped multishot: {})",
            got.len(),
            r.policy.capped_multishot
        );
        assert_eq!(room, 0);
        assert!(!r.ep.recv_in_flight(), "no receive armed without room");
        let mut room = 10_000;
        let (more, _) = pump(&mut r, &mut room, 40);
        assert!(more.len() >= 10_000 && more.len() <= 10_000 + 1024);
    }

    #[test]
    fn closing_ends_an_armed_receive_without_a_scan() {
        let mut r = rig();
        let mut room = 1 << 20;
        let (_, eof) = pump(&mut r, &mut room, 2);
        assert!(!eof);
        assert!(r.ep.recv_in_flight());
        r.ep.close(&mut r.d, Some(2));
        let mut out = Vec::new();
        let mut ended = false;
        let mut closed = false;
        for _ in 0..50 {
            r.d.submit_and_reap(false, &mut out);
            for c in out.drain(..) {
                match c.tag {
                    1 => {
                        ended |=
                            matches!(r.ep.on_recv(&c, &r.bufs), Received::Eof | Received::Ended)
                    }
                    2 => closed = c.result == 0,
                    _ => {}
                }
            }
            if ended && closed {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(ended, "the receive completed");
        assert!(closed, "the close completed");
        assert!(!r.ep.recv_in_flight());
        assert_eq!(r.d.in_flight(), 0);
        // The peer sees the close.
        r.peer
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 8];
        assert_eq!(r.peer.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn sends_own_their_bytes() {
        let mut r = rig();
        r.ep.send_owned(&mut r.d, b"answer".to_vec(), 3);
        assert!(r.ep.sending());
        let mut out = Vec::new();
        let mut sent = None;
        for _ in 0..50 {
            r.d.submit_and_reap(false, &mut out);
            for c in out.drain(..) {
                if c.tag == 3 {
                    sent = Some(r.ep.on_send(&c));
                    assert!(matches!(&c.mem, Owned::Bytes(b) if b.as_slice() == b"answer"));
                }
            }
            if sent.is_some() {
                break;
            }
        }
        assert_eq!(sent, Some(6));
        assert!(!r.ep.sending());
        let mut b = [0u8; 6];
        r.peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"answer");
    }

    #[test]
    fn the_probe_finds_capped_multishot_from_linux_6_16() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        let r = rig();
        if (major, minor) >= (6, 16) {
            assert!(
                r.policy.capped_multishot,
                "kernel {release} caps multishot receives"
            );
        }
    }

    #[test]
    fn an_abort_resets_the_connection() {
        let mut r = rig();
        let mut room = 1 << 20;
        pump(&mut r, &mut room, 2);
        r.ep.abort(&mut r.d, Some(2));
        let mut out = Vec::new();
        for _ in 0..50 {
            r.d.submit_and_reap(false, &mut out);
            for c in out.drain(..) {
                if c.tag == 1 {
                    r.ep.on_recv(&c, &r.bufs);
                }
            }
            if r.d.in_flight() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(r.d.in_flight(), 0);
        r.peer
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 8];
        let e = r.peer.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
