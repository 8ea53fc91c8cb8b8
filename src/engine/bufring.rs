//! A provided-buffer ring: the kernel picks a free buffer for each receive,
//! so an idle connection owns no receive memory at all.
//!
//! The shard copies (or decrypts) what a completion delivered out of the
//! buffer while handling that completion and gives the buffer back at once;
//! a buffer is never held across completions, so a slow peer cannot pin
//! buffers that other connections need.

use io_uring::types::BufRingEntry;
use io_uring::{IoUring, cqueue};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// One registered buffer group.
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    entries: u16,
    mask: u16,
    bgid: u16,
    buf_size: usize,
    bufs: Vec<u8>,
    /// Local tail: buffers added since the last publish.
    tail: u16,
    dirty: bool,
}

// The ring memory is owned by this struct and only touched by the owning shard.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Registers `entries` (a power of two ≤ 32768) buffers of `buf_size`
    /// bytes as group `bgid` of `ring`.
    pub fn new(ring: &IoUring, bgid: u16, entries: u16, buf_size: usize) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two ≤ 32768",
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
        let mut br = BufRing {
            ring: ptr as *mut BufRingEntry,
            ring_len,
            entries,
            mask: entries - 1,
            bgid,
            buf_size,
            bufs: vec![0u8; entries as usize * buf_size],
            tail: 0,
            dirty: false,
        };
        // SAFETY: the mapping lives until `Drop`, which runs after the ring
        // (the shard drops the ring first) or unregisters explicitly.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The group id to name in receive operations.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The buffer a completion selected, if any: its id, start and filled
    /// length. The memory stays ours (the kernel will not write it) until
    /// the id is [`push`](Self::push)ed back; a raw pointer rather than a
    /// borrow lets the shard work on it while mutating its other state.
    pub fn take(&mut self, flags: u32, len: usize) -> Option<(u16, *mut u8, usize)> {
        let bid = cqueue::buffer_select(flags)?;
        if bid >= self.entries {
            return None;
        }
        let start = bid as usize * self.buf_size;
        Some((bid, self.bufs[start..].as_mut_ptr(), len.min(self.buf_size)))
    }

    /// Gives buffer `bid` back to the kernel (made visible by [`publish`](Self::publish)).
    pub fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < entries; the entry memory belongs to the mapping.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.bufs.as_ptr() as u64 + bid as u64 * self.buf_size as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.dirty = true;
    }

    /// Publishes the buffers pushed since the last call.
    pub fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        // SAFETY: the tail field lives inside the first ring entry.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
        self.dirty = false;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the ring that used it is gone
        // (or will fail the group cleanly) by the time the shard drops this.
        unsafe {
            libc::munmap(self.ring as *mut libc::c_void, self.ring_len);
        }
    }
}
