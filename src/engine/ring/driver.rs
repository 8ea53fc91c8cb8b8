//! The ring driver: one io_uring, the operations in flight on it, and the
//! submissions that did not fit yet.
//!
//! Every operation gets a record in a slab for as long as the kernel may use
//! it. The record owns whatever memory the kernel reads or writes (a buffer,
//! a `msghdr` with its iovecs, a socket address, a timespec) and hands it
//! back with the final completion, so no memory is freed under the kernel
//! and no reference counts are kept by hand. An owner that goes away while
//! its operation is still in flight can move more memory into the record
//! ([`Driver::keep_alive`]): it is dropped when the kernel is done.
//!
//! `user_data` is the record's index (32 bits) and the record's generation
//! (32 bits), so a cancel aimed at an operation that has meanwhile completed
//! can never hit the operation that reused its record; nothing is truncated.
//!
//! Submissions go through a backlog: when the submission queue is full the
//! entries wait, in order, and a linked chain is moved to the queue whole or
//! not at all (a chain split across two submits would lose its link: the
//! kernel would then fail a `LinkTimeout` with EINVAL and leave its connect
//! without a deadline). Nothing ever spins on a full queue.

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::any::Any;
use std::collections::VecDeque;
use std::io;

/// Memory an operation owns while the kernel may touch it.
#[derive(Default)]
pub enum Owned {
    /// Nothing (the operation points at no memory of ours).
    #[default]
    None,
    /// A byte buffer (bytes to send, or room to receive into); boxed so
    /// that every variant is one pointer and a record stays small.
    Bytes(Box<Vec<u8>>),
    /// A `msghdr` and its iovecs.
    Msg(Box<MsgHeader>),
    /// A socket address (to connect to, or for the kernel to fill in).
    Addr(Box<super::super::sys::RawAddr>),
    /// A timeout's duration.
    Time(Box<types::Timespec>),
    /// A counter the kernel writes (an eventfd read).
    Word(Box<u64>),
    /// One UDP datagram to send, with its address and header.
    Datagram(Box<Datagram>),
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Owned::None => "None",
            Owned::Bytes(_) => "Bytes",
            Owned::Msg(_) => "Msg",
            Owned::Addr(_) => "Addr",
            Owned::Time(_) => "Time",
            Owned::Word(_) => "Word",
            Owned::Datagram(_) => "Datagram",
        })
    }
}

/// `IORING_ENTER_GETEVENTS` (the io-uring crate keeps its constants private).
const ENTER_GETEVENTS: u32 = 1;

/// Most pieces one `sendmsg` gathers.
pub const MAX_IOV: usize = 16;

/// The `msghdr` and iovecs of one gathered send, boxed so that they stay
/// put while the kernel reads them.
pub struct MsgHeader {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

impl MsgHeader {
    /// An empty header.
    pub fn boxed() -> Box<MsgHeader> {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid.
        Box::new(unsafe { std::mem::zeroed() })
    }

    /// Points the header at `pieces` (at most [`MAX_IOV`]; the rest are left
    /// out) and returns the bytes covered. The caller keeps the pieces alive
    /// and unchanged until the send that uses this header completes.
    pub fn gather<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>) -> usize {
        let mut n = 0;
        let mut len = 0;
        for piece in pieces.into_iter().take(MAX_IOV) {
            self.iov[n] = libc::iovec {
                iov_base: piece.as_ptr() as *mut _,
                iov_len: piece.len(),
            };
            n += 1;
            len += piece.len();
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = n;
        len
    }

    /// The header, for the SQE.
    pub fn as_ptr(&self) -> *const libc::msghdr {
        &self.hdr
    }
}

/// One datagram for `sendmsg`: its bytes, its destination and the header
/// naming both, boxed so that they stay put while the kernel reads them.
pub struct Datagram {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: super::super::sys::RawAddr,
    /// The datagram (kept, with its capacity, when the box is reused).
    pub bytes: Vec<u8>,
}

impl Datagram {
    /// An empty datagram.
    pub fn boxed() -> Box<Datagram> {
        Box::new(Datagram {
            // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid.
            hdr: unsafe { std::mem::zeroed() },
            iov: unsafe { std::mem::zeroed() },
            addr: Default::default(),
            bytes: Vec::new(),
        })
    }

    /// Addresses the datagram (its `bytes` set) to `to`; the header for
    /// the SQE. The box must not move or change until the send completes.
    pub fn prepare(&mut self, to: std::net::SocketAddr) -> *const libc::msghdr {
        let (addr, len) = super::super::sys::RawAddr::from_socket_addr(to);
        self.addr = addr;
        self.iov = libc::iovec {
            iov_base: self.bytes.as_ptr() as *mut _,
            iov_len: self.bytes.len(),
        };
        self.hdr.msg_name = self.addr.as_sockaddr() as *mut _;
        self.hdr.msg_namelen = len;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        &self.hdr
    }
}

impl MsgHeader {
    /// A header for a multishot `recvmsg` that reports each datagram's
    /// source address (room for any address family we bind).
    pub fn for_recv_from() -> Box<MsgHeader> {
        let mut m = MsgHeader::boxed();
        m.hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        m
    }

    /// The header as the kernel reads it (for parsing what it wrote).
    pub fn header(&self) -> &libc::msghdr {
        &self.hdr
    }
}

/// `user_data` with this bit set comes from another ring (`IORING_OP_MSG_RING`)
/// rather than from an operation of ours; the other 63 bits are the
/// sender's, and [`Driver::with_foreign`] says what they mean.
pub const FOREIGN: u64 = 1 << 63;

/// Generations are 31 bits, so an operation's `user_data` never has the
/// [`FOREIGN`] bit.
const GENERATION_MASK: u32 = u32::MAX >> 1;

/// Names an operation in flight: its record's index and generation, which
/// together are its `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(u64);

impl OpId {
    fn new(index: u32, generation: u32) -> OpId {
        OpId(((generation as u64) << 32) | index as u64)
    }

    fn index(self) -> usize {
        self.0 as u32 as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The `user_data` the kernel sees.
    pub fn user_data(self) -> u64 {
        self.0
    }
}

struct InFlight<T> {
    /// What the owner wants to be told; `None` for operations whose
    /// completion needs no handling (cancels, link timeouts, socket options).
    tag: Option<T>,
    mem: Owned,
    /// Memory of an owner that went away while this operation was in flight.
    kept: Option<Box<dyn Any>>,
}

struct Record<T> {
    generation: u32,
    op: Option<InFlight<T>>,
}

/// One completion, with the memory its operation owned when it was the last
/// completion of that operation.
#[derive(Debug)]
pub struct Completion<T> {
    /// The owner's tag.
    pub tag: T,
    /// The result (a count, or a negated errno).
    pub result: i32,
    /// The completion flags (buffer id, more-to-come).
    pub flags: u32,
    /// The operation's memory, handed back with its final completion.
    pub mem: Owned,
    /// The operation that completed.
    pub op: OpId,
}

impl<T> Completion<T> {
    /// Whether more completions of the same (multishot) operation follow.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// An io_uring with the operations in flight on it.
pub struct Driver<T> {
    // Declared first so that it is dropped first: the kernel lets go of
    // every operation's memory when the ring closes, before the records go.
    ring: IoUring,
    records: Vec<Record<T>>,
    free: Vec<u32>,
    live: usize,
    /// Entries waiting for room in the submission queue, and where each
    /// chain ends (an index into `backlog` one past its last entry).
    backlog: VecDeque<squeue::Entry>,
    chain_ends: VecDeque<usize>,
    backlog_base: usize,
    /// What a completion posted by another ring stands for.
    foreign: fn(u64) -> Option<T>,
}

impl<T: Copy> Driver<T> {
    /// Drives `ring`.
    pub fn new(ring: IoUring) -> Driver<T> {
        Self::with_foreign(ring, |_| None)
    }

    /// Drives `ring`, turning completions that other rings post into it
    /// (`user_data` with [`FOREIGN`] set) into tags with `foreign`.
    pub fn with_foreign(ring: IoUring, foreign: fn(u64) -> Option<T>) -> Driver<T> {
        Driver {
            foreign,
            ring,
            records: Vec::new(),
            free: Vec::new(),
            live: 0,
            backlog: VecDeque::new(),
            chain_ends: VecDeque::new(),
            backlog_base: 0,
        }
    }

    /// The ring (to register tables and buffers with).
    pub fn ring(&self) -> &IoUring {
        &self.ring
    }

    /// Operations in flight (including queued ones not yet submitted).
    pub fn in_flight(&self) -> usize {
        self.live
    }

    /// Entries waiting for room in the submission queue.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Whether operation `id` has not completed yet.
    pub fn is_in_flight(&self, id: OpId) -> bool {
        self.records
            .get(id.index())
            .is_some_and(|r| r.generation == id.generation() && r.op.is_some())
    }

    fn record(&mut self, tag: Option<T>, mem: Owned) -> OpId {
        let op = Some(InFlight {
            tag,
            mem,
            kept: None,
        });
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let r = &mut self.records[index as usize];
            r.generation = r.generation.wrapping_add(1) & GENERATION_MASK;
            r.op = op;
            return OpId::new(index, r.generation);
        }
        let index =
            u32::try_from(self.records.len()).expect("fewer than 2^32 operations in flight");
        self.records.push(Record { generation: 0, op });
        OpId::new(index, 0)
    }

    /// Queues one operation. `mem` is the memory `entry` points into; it
    /// is owned by the operation until its final completion. With `tag`
    /// `None` the completion is consumed here.
    pub fn push(&mut self, entry: squeue::Entry, tag: Option<T>, mem: Owned) -> OpId {
        let id = self.record(tag, mem);
        self.enqueue(&mut [entry.user_data(id.user_data())]);
        id
    }

    /// Queues operations linked in order (`IO_HARDLINK` when `hard`: the
    /// next one runs even if this one fails). The chain reaches the kernel
    /// in one piece.
    pub fn push_linked<const N: usize>(
        &mut self,
        ops: [(squeue::Entry, Option<T>, Owned); N],
        hard: bool,
    ) -> [OpId; N] {
        let link = if hard {
            squeue::Flags::IO_HARDLINK
        } else {
            squeue::Flags::IO_LINK
        };
        let mut ids = [OpId(0); N];
        let mut entries: [Option<squeue::Entry>; N] = [const { None }; N];
        for (k, (entry, tag, mem)) in ops.into_iter().enumerate() {
            let id = self.record(tag, mem);
            ids[k] = id;
            let mut e = entry.user_data(id.user_data());
            if k + 1 < N {
                e = e.flags(link);
            }
            entries[k] = Some(e);
        }
        let mut entries = entries.map(|e| e.expect("every entry built"));
        self.enqueue(&mut entries);
        ids
    }

    /// Asks the kernel to cancel operation `id` (by its own `user_data`: the
    /// kernel finds it in a hash table instead of scanning every request on
    /// the ring, as a cancel by descriptor would). Its completion still
    /// arrives, with `-ECANCELED` or its real result if it won the race.
    pub fn cancel(&mut self, id: OpId) {
        if self.is_in_flight(id) {
            let e = opcode::AsyncCancel::new(id.user_data()).build();
            self.push(e, None, Owned::None);
        }
    }

    /// Keeps `memory` alive until operation `id` completes (the owner of
    /// memory the operation reads is going away); drops it now when the
    /// operation has already completed.
    pub fn keep_alive(&mut self, id: OpId, memory: Box<dyn Any>) {
        if let Some(Record {
            generation,
            op: Some(op),
        }) = self.records.get_mut(id.index())
        {
            if *generation == id.generation() {
                op.kept = Some(match op.kept.take() {
                    None => memory,
                    Some(earlier) => Box::new((earlier, memory)),
                });
            }
        }
    }

    fn enqueue(&mut self, chain: &mut [squeue::Entry]) {
        if self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() >= chain.len() {
                for e in chain.iter() {
                    // SAFETY: every pointer in an entry refers to memory
                    // owned by its operation's record (or static), which
                    // lives until the operation's final completion.
                    unsafe { sq.push(e) }.expect("room was checked");
                }
                return;
            }
        }
        self.backlog.extend(chain.iter().cloned());
        self.chain_ends
            .push_back(self.backlog_base + self.backlog.len());
    }

    /// Moves whole chains from the backlog into the submission queue while
    /// they fit.
    fn fill_from_backlog(&mut self) {
        let mut sq = self.ring.submission();
        while let Some(&end) = self.chain_ends.front() {
            let n = end - self.backlog_base;
            if sq.capacity() - sq.len() < n {
                break;
            }
            for _ in 0..n {
                let e = self.backlog.pop_front().expect("chain in backlog");
                // SAFETY: as in `enqueue`.
                unsafe { sq.push(&e) }.expect("room was checked");
            }
            self.backlog_base += n;
            self.chain_ends.pop_front();
        }
        if self.backlog.is_empty() {
            self.backlog_base = 0;
        }
    }

    /// Whether a turn of this ring would find something to do: entries to
    /// submit, completions to reap, or task work the kernel deferred to the
    /// next enter (`IORING_SQ_TASKRUN`, set on rings built by [`build`]).
    /// Reads shared memory only, no system call.
    pub fn has_work(&mut self) -> bool {
        if !self.backlog.is_empty() {
            return true;
        }
        let sq = self.ring.submission();
        if !sq.is_empty() || sq.taskrun() {
            return true;
        }
        drop(sq);
        !self.ring.completion().is_empty()
    }

    /// Makes the kernel signal `eventfd` whenever this ring has new work for
    /// its thread (a thread that drives several rings sleeps on one eventfd
    /// registered with all of them).
    pub fn register_eventfd(&self, eventfd: i32) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd)
    }

    /// Submits what is queued and moves every available completion into
    /// `out`. With `wait`, blocks until at least one completion is there —
    /// unless some entries are still waiting in the backlog, which is then
    /// submitted on the next call instead of waiting.
    pub fn submit_and_reap(&mut self, wait: bool, out: &mut Vec<Completion<T>>) {
        out.clear();
        self.fill_from_backlog();
        let want = u32::from(wait && self.backlog.is_empty());
        let to_submit = self.ring.submission().len() as u32;
        // GETEVENTS on every enter: with deferred task work the kernel runs
        // completions only for an enter that carries it, and the io-uring
        // crate adds it for a zero `want` only on rings built with the
        // taskrun flag. Without it, a loop that never waits would starve
        // its own receives and sends.
        // SAFETY: no argument is passed; the submission queue's tail was
        // published when the entries were pushed.
        let res = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, want, ENTER_GETEVENTS, None)
        };
        if let Err(e) = res {
            // EINTR: a signal; EBUSY: completions to reap first. Neither is a failure.
            if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
                tracing::warn!("io_uring wait failed: {e}");
            }
        }
        self.reap(out);
    }

    /// Moves available completions into `out` without entering the kernel.
    fn reap(&mut self, out: &mut Vec<Completion<T>>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let id = OpId(cqe.user_data());
            if id.0 & FOREIGN != 0 {
                if let Some(tag) = (self.foreign)(id.0 & !FOREIGN) {
                    out.push(Completion {
                        tag,
                        result: cqe.result(),
                        flags: cqe.flags(),
                        mem: Owned::None,
                        op: id,
                    });
                }
                continue;
            }
            let Some(record) = self.records.get_mut(id.index()) else {
                continue;
            };
            if record.generation != id.generation() {
                continue;
            }
            let Some(op) = record.op.as_mut() else {
                continue;
            };
            let last = !cqueue::more(cqe.flags());
            let tag = op.tag;
            let mem = if last {
                let op = record.op.take().expect("checked above");
                self.free.push(id.index() as u32);
                self.live -= 1;
                op.mem
            } else {
                Owned::None
            };
            if let Some(tag) = tag {
                out.push(Completion {
                    tag,
                    result: cqe.result(),
                    flags: cqe.flags(),
                    mem,
                    op: id,
                });
            }
        }
    }
}

/// Builds a ring: single issuer with deferred task work where the kernel
/// supports it (fewer interrupts of the owning thread), falling back to a
/// plain ring.
pub fn build(entries: u32) -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_cqsize(entries * 8)
        .setup_single_issuer()
        .setup_defer_taskrun()
        // Tells a thread driving several rings which have deferred work.
        .setup_taskrun_flag()
        .setup_submit_all()
        .build(entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(e) if is_unavailable(&e) => Err(e),
        Err(_) => IoUring::builder().setup_cqsize(entries * 8).build(entries),
    }
}

/// Whether io_uring itself is refused (disabled, filtered, not built in).
pub fn is_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop() -> squeue::Entry {
        opcode::Nop::new().build()
    }

    fn drain(d: &mut Driver<u32>) -> Vec<Completion<u32>> {
        let mut all = Vec::new();
        let mut out = Vec::new();
        for _ in 0..100 {
            d.submit_and_reap(false, &mut out);
            all.append(&mut out);
            if d.in_flight() == 0 {
                break;
            }
        }
        all
    }

    #[test]
    fn completions_carry_tags_and_memory() {
        let mut d = Driver::new(IoUring::new(8).unwrap());
        d.push(nop(), Some(7), Owned::Bytes(Box::new(vec![1, 2, 3])));
        d.push(nop(), None, Owned::None);
        let all = drain(&mut d);
        assert_eq!(all.len(), 1, "untagged completions are consumed");
        assert_eq!(all[0].tag, 7);
        assert!(matches!(&all[0].mem, Owned::Bytes(b) if **b == [1, 2, 3]));
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_full_queue_goes_to_the_backlog_and_chains_stay_whole() {
        // A 4-entry queue: 3 singles, then a 2-entry chain that does not
        // fit in the one remaining slot. Pushed naively, the chain's first
        // entry would be submitted with IO_LINK set and its second in the
        // next submit: the link would be lost.
        let mut d = Driver::new(IoUring::new(4).unwrap());
        for tag in 0..3 {
            d.push(nop(), Some(tag), Owned::None);
        }
        let timeout = Box::new(types::Timespec::new().sec(5));
        let link_timeout = opcode::LinkTimeout::new(&*timeout).build();
        let [first, _] = d.push_linked(
            [
                (nop(), Some(10), Owned::None),
                (link_timeout, Some(11), Owned::Time(timeout)),
            ],
            false,
        );
        assert_eq!(d.ring.submission().len(), 3, "the chain waits whole");
        assert_eq!(d.backlog(), 2);
        assert!(d.is_in_flight(first));
        let all = drain(&mut d);
        let by_tag = |t| all.iter().find(|c| c.tag == t).map(|c| c.result);
        for tag in 0..3 {
            assert_eq!(by_tag(tag), Some(0));
        }
        assert_eq!(by_tag(10), Some(0), "the linked nop ran");
        // A link timeout whose target finished first is cancelled; one that
        // lost its link would fail with EINVAL instead.
        assert_eq!(by_tag(11), Some(-libc::ECANCELED));
        assert_eq!(d.backlog(), 0);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn cancel_targets_one_operation_and_never_a_reused_record() {
        let mut d = Driver::new(IoUring::new(8).unwrap());
        let ts = Box::new(types::Timespec::new().sec(30));
        let long = d.push(opcode::Timeout::new(&*ts).build(), Some(1), Owned::Time(ts));
        let short = d.push(nop(), Some(2), Owned::None);
        let mut out = Vec::new();
        d.submit_and_reap(false, &mut out);
        assert!(!d.is_in_flight(short));
        // `short`'s record is free; the next operation reuses it with a new
        // generation, so a late cancel of `short` cannot touch it.
        let ts2 = Box::new(types::Timespec::new().sec(30));
        let reuser = d.push(
            opcode::Timeout::new(&*ts2).build(),
            Some(3),
            Owned::Time(ts2),
        );
        assert_eq!(reuser.index(), short.index());
        d.cancel(short);
        d.cancel(long);
        let all = drain(&mut d);
        assert!(
            all.iter()
                .any(|c| c.tag == 1 && c.result == -libc::ECANCELED)
        );
        assert!(
            d.is_in_flight(reuser),
            "the reused record was not cancelled"
        );
        d.cancel(reuser);
        let all = drain(&mut d);
        assert!(
            all.iter()
                .any(|c| c.tag == 3 && c.result == -libc::ECANCELED)
        );
    }

    #[test]
    fn kept_memory_lives_until_completion() {
        use std::rc::Rc;
        let mut d = Driver::new(IoUring::new(8).unwrap());
        let ts = Box::new(types::Timespec::new().sec(30));
        let id = d.push(opcode::Timeout::new(&*ts).build(), Some(1), Owned::Time(ts));
        let marker = Rc::new(());
        d.keep_alive(id, Box::new(marker.clone()));
        assert_eq!(Rc::strong_count(&marker), 2);
        d.cancel(id);
        drain(&mut d);
        assert_eq!(Rc::strong_count(&marker), 1, "dropped with the completion");
    }

    #[test]
    fn completions_from_other_rings_are_told_apart() {
        let mut a: Driver<u32> =
            Driver::with_foreign(IoUring::new(8).unwrap(), |v| Some(1000 + v as u32));
        let mut b: Driver<u32> = Driver::new(IoUring::new(8).unwrap());
        use std::os::fd::AsRawFd;
        let msg =
            opcode::MsgRingData::new(types::Fd(a.ring().as_raw_fd()), 0, FOREIGN | 7, None).build();
        b.push(msg, Some(1), Owned::None);
        let done = drain(&mut b);
        assert_eq!(done[0].result, 0);
        let got = drain(&mut a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tag, 1007);
    }

    #[test]
    fn indices_are_not_truncated() {
        let id = OpId::new(u32::MAX - 1, 5);
        assert_eq!(id.index(), (u32::MAX - 1) as usize);
        assert_eq!(id.generation(), 5);
    }
}
