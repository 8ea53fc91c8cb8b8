//! Provided receive buffers: the kernel picks a free buffer for each
//! receive, so an idle connection owns no receive memory at all.
//!
//! A completion that selected a buffer is turned into a [`RecvBuf`], a guard
//! that derefs to the bytes received and gives the buffer back to the kernel
//! when dropped. The shard decrypts in it and copies out of it while handling
//! that completion; a buffer is never held across completions, so a slow
//! peer cannot pin buffers that other connections need.
//!
//! This is the only place with `unsafe` for receive buffers: the buffer
//! memory is one raw allocation that the kernel writes into, and a slice is
//! formed only over a buffer the kernel has handed to us and not yet been
//! given back.

use io_uring::types::BufRingEntry;
use io_uring::{IoUring, cqueue};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

struct Shared {
    /// The ring of buffer descriptors the kernel reads (an anonymous mapping).
    ring: *mut BufRingEntry,
    ring_len: usize,
    mask: u16,
    entries: u16,
    buf_size: usize,
    /// The buffers: `entries × buf_size` bytes the kernel writes into.
    bufs: *mut u8,
    layout: Layout,
    /// Our tail: buffers given back so far (published at once).
    tail: Cell<u16>,
    /// Buffers currently held by guards (for tests and stats).
    held: Cell<u32>,
}

impl Shared {
    fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        let idx = (tail & self.mask) as usize;
        // SAFETY: idx < entries; the entry lies inside our mapping, which the
        // kernel only reads.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.bufs as u64 + bid as u64 * self.buf_size as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the shared tail field lives inside the first ring entry.
        let shared_tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        // Release: the entry's fields are written before the kernel sees it.
        shared_tail.store(tail, Ordering::Release);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own mapping and allocation; the ring that used them is
        // gone (a shard drops its ring before its buffers) or the group is
        // torn down with it.
        unsafe {
            libc::munmap(self.ring as *mut libc::c_void, self.ring_len);
            dealloc(self.bufs, self.layout);
        }
    }
}

/// One registered buffer group. Cheap to clone (all clones are the same group).
#[derive(Clone)]
pub struct BufRing {
    shared: Rc<Shared>,
    bgid: u16,
}

impl BufRing {
    /// Registers `entries` (a power of two ≤ 32768) buffers of `buf_size`
    /// bytes as group `bgid` of `ring`.
    pub fn new(ring: &IoUring, bgid: u16, entries: u16, buf_size: usize) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two ≤ 32768, and buffers non-empty",
            ));
        }
        let ring_len = entries as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let layout = Layout::from_size_align(entries as usize * buf_size, 64)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: non-zero size (checked above).
        let bufs = unsafe { alloc_zeroed(layout) };
        if bufs.is_null() {
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(ptr, ring_len) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let shared = Rc::new(Shared {
            ring: ptr as *mut BufRingEntry,
            ring_len,
            mask: entries - 1,
            entries,
            buf_size,
            bufs,
            layout,
            tail: Cell::new(0),
            held: Cell::new(0),
        });
        // SAFETY: the mapping lives as long as `shared`, which outlives the
        // registration (see `Drop for Shared`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            shared.give_back(bid);
        }
        Ok(BufRing { shared, bgid })
    }

    /// The group id to name in receive operations.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.shared.buf_size
    }

    /// Buffers handed out and not yet given back.
    pub fn held(&self) -> u32 {
        self.shared.held.get()
    }

    /// The buffer a receive completion selected, holding its `len` bytes;
    /// `None` when the completion carries no buffer.
    pub fn take(&self, result: i32, flags: u32) -> Option<RecvBuf> {
        let bid = cqueue::buffer_select(flags)?;
        if bid >= self.shared.entries {
            return None;
        }
        let len = usize::try_from(result)
            .unwrap_or(0)
            .min(self.shared.buf_size);
        self.shared.held.set(self.shared.held.get() + 1);
        Some(RecvBuf {
            shared: self.shared.clone(),
            bid,
            len,
        })
    }
}

/// A received buffer: its bytes are ours until the guard drops, which
/// gives the buffer back to the kernel.
pub struct RecvBuf {
    shared: Rc<Shared>,
    bid: u16,
    len: usize,
}

impl RecvBuf {
    /// Drops the first `n` bytes from view (they were consumed).
    pub fn advance(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.len);
        &mut self[n..]
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the kernel selected this buffer and filled `len` bytes; it
        // will not write it again until we give it back in `drop`.
        unsafe {
            std::slice::from_raw_parts(
                self.shared
                    .bufs
                    .add(self.bid as usize * self.shared.buf_size),
                self.len,
            )
        }
    }
}

impl std::ops::DerefMut for RecvBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the guard is the buffer's only user.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.shared
                    .bufs
                    .add(self.bid as usize * self.shared.buf_size),
                self.len,
            )
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.shared.held.set(self.shared.held.get() - 1);
        self.shared.give_back(self.bid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_guard_gives_its_buffer_back() {
        let ring = IoUring::new(8).unwrap();
        let bufs = BufRing::new(&ring, 3, 1, 64).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let recv = |ring: &mut IoUring| {
            let e = opcode::Recv::new(types::Fd(b.as_raw_fd()), std::ptr::null_mut(), 64)
                .buf_group(3)
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT);
            // SAFETY: no memory of ours is referenced; the buffer comes from the group.
            unsafe { ring.submission().push(&e).unwrap() };
            ring.submit_and_wait(1).unwrap();
            let c = ring.completion().next().unwrap();
            (c.result(), c.flags())
        };
        let mut ring = ring;
        a.write_all(b"hello").unwrap();
        let (res, flags) = recv(&mut ring);
        let mut got = bufs.take(res, flags).expect("a buffer");
        assert_eq!(&got[..], b"hello");
        got[0] = b'j';
        assert_eq!(bufs.held(), 1);
        // With the only buffer held, the next receive finds none.
        a.write_all(b"again").unwrap();
        let (res, _) = recv(&mut ring);
        assert_eq!(res, -libc::ENOBUFS);
        drop(got);
        assert_eq!(bufs.held(), 0);
        let (res, flags) = recv(&mut ring);
        assert_eq!(&bufs.take(res, flags).unwrap()[..], b"again");
    }
}
