//! The replay window: the session's send buffer and replay copy in one ring.
//!
//! Outgoing plaintext is encrypted straight into the ring, sent from there,
//! and the bytes stay in place as the replay copy after the send completes,
//! so a resume resends ciphertext exactly as first sent with no extra copy.
//! Pages are allocated on first write: an idle or quiet session costs only
//! the pages it has actually filled.

use super::message::Status;

/// Size of one lazily allocated page of the ring.
pub const PAGE: usize = 4096;

/// Largest capacity a window accepts.
///
/// Resume arithmetic is modulo 2^32 on the wire; keeping what is held below
/// 2^31 makes "the peer is ahead of us" (a negative count, which wraps to at
/// least 2^31) always distinguishable from a genuine resend.
pub const MAX_CAPACITY: usize = 1 << 31;

/// Ring of the last `capacity` bytes of ciphertext written for a peer.
///
/// Positions are absolute stream offsets (`u64`, bytes since the session
/// began). `[flushed, written)` is unsent; `[written - held, written)` is
/// still held for replay. Pages are allocated only when first written, and a
/// page never moves while allocated, so the engine may hand pointers into it
/// to the kernel for a send.
pub struct ReplayWindow {
    /// One slot per page of the ring; the vector is never resized, and each
    /// page is a separate heap block, so page addresses are stable.
    pages: Vec<Option<Box<[u8]>>>,
    /// Stream position of the first byte this window saw (0 except in tests
    /// that start a window deep into a stream).
    start: u64,
    written: u64,
    flushed: u64,
}

impl ReplayWindow {
    /// A window holding up to `capacity` bytes (rounded up to whole pages,
    /// at least one).
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds [`MAX_CAPACITY`] (a configuration error, never
    /// peer input).
    pub fn new(capacity: usize) -> Self {
        Self::with_offset(capacity, 0)
    }

    /// A window whose stream begins at position `start`, as if `start` bytes
    /// had been written and sent before but none of them are held. Lets tests
    /// exercise counts past 4 GiB without writing 4 GiB.
    #[doc(hidden)]
    pub fn with_offset(capacity: usize, start: u64) -> Self {
        assert!(
            capacity <= MAX_CAPACITY,
            "replay window capacity {capacity} over {MAX_CAPACITY}"
        );
        let pages = capacity.div_ceil(PAGE).max(1);
        ReplayWindow {
            pages: (0..pages).map(|_| None).collect(),
            start,
            written: start,
            flushed: start,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE
    }

    /// Total bytes ever written (the sender's stream count, full width).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Stream offset up to which sends have completed.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Bytes written but not yet sent: `written - flushed`.
    pub fn unsent(&self) -> usize {
        // Never more than capacity, which fits in usize.
        (self.written - self.flushed) as usize
    }

    /// Bytes still held for replay: `min(written, capacity)`.
    pub fn held(&self) -> usize {
        (self.written - self.start).min(self.capacity() as u64) as usize
    }

    /// How many more bytes may be written without overwriting unsent bytes.
    pub fn free_space(&self) -> usize {
        self.capacity() - self.unsent()
    }

    /// Copies up to `free_space()` bytes of `src` into the ring through
    /// `transform(src_piece, dst_piece)` (the engine passes the encryptor) and
    /// returns how many bytes were taken.
    ///
    /// `transform` is called once per contiguous piece, in stream order, with
    /// slices of equal length; it must fill `dst_piece` completely.
    pub fn write_with(&mut self, src: &[u8], mut transform: impl FnMut(&[u8], &mut [u8])) -> usize {
        let take = src.len().min(self.free_space());
        let mut rest = &src[..take];
        while !rest.is_empty() {
            let (page, offset) = self.locate(self.written);
            let len = rest.len().min(PAGE - offset);
            let dst = self.pages[page].get_or_insert_with(new_page);
            let (piece, tail) = rest.split_at(len);
            transform(piece, &mut dst[offset..offset + len]);
            rest = tail;
            self.written += len as u64;
        }
        take
    }

    /// Copies `src` in as it is (no transform); see [`write_with`](Self::write_with).
    pub fn write(&mut self, src: &[u8]) -> usize {
        self.write_with(src, |s, d| d.copy_from_slice(s))
    }

    /// The bytes `[from, written)` as contiguous pieces in order; `from` must
    /// lie in `[written - held, written]`.
    ///
    /// A piece never crosses a page boundary (so never the ring's wrap). An
    /// out-of-range `from` yields nothing rather than stale bytes.
    pub fn slices_from(&self, from: u64) -> impl Iterator<Item = &[u8]> {
        let oldest = self.written - self.held() as u64;
        let valid = (oldest..=self.written).contains(&from);
        debug_assert!(
            valid,
            "slices_from({from}) outside held range [{oldest}, {}]",
            self.written
        );
        Slices {
            window: self,
            pos: from,
            end: if valid { self.written } else { from },
        }
    }

    /// The unsent bytes `[flushed, written)`: what the engine sends next.
    pub fn unsent_slices(&self) -> impl Iterator<Item = &[u8]> {
        self.slices_from(self.flushed)
    }

    /// Marks `n` more bytes as sent (their send completed): `flushed += n`,
    /// clamped to `written`.
    pub fn mark_sent(&mut self, n: usize) {
        self.flushed = self.flushed.saturating_add(n as u64).min(self.written);
    }

    /// Prepares a resume where the peer has received `peer_received` (mod 2^32)
    /// bytes: sets `flushed = written - missing` and returns `missing`, or
    /// `Err(Status::NotAcceptable)` when `missing` exceeds `held()`.
    ///
    /// `missing` is computed modulo 2^32, as the counts travel on the wire, so
    /// sessions past 4 GiB resume correctly; a peer claiming more than was
    /// written ("negative" missing) wraps to at least 2^31 and is refused.
    /// The caller must have abandoned any send still in flight from the old
    /// connection before rewinding.
    pub fn rewind(&mut self, peer_received: u32) -> Result<usize, Status> {
        let missing = (self.written as u32).wrapping_sub(peer_received) as usize;
        if missing > self.held() {
            return Err(Status::NotAcceptable);
        }
        self.flushed = self.written - missing as u64;
        Ok(missing)
    }

    /// Like [`rewind`](Self::rewind) with a full-width count (dialects whose
    /// counts are u64 on the wire): `None` when `peer_received` is ahead of
    /// what was written or behind what is held.
    pub fn rewind_to(&mut self, peer_received: u64) -> Option<usize> {
        let missing = self.written.checked_sub(peer_received)?;
        if missing > self.held() as u64 {
            return None;
        }
        self.flushed = peer_received;
        Some(missing as usize)
    }

    /// Heap bytes currently held by the window's pages.
    pub fn memory_bytes(&self) -> usize {
        self.pages.iter().filter(|p| p.is_some()).count() * PAGE
    }

    /// Page index and offset within it of stream position `pos`.
    fn locate(&self, pos: u64) -> (usize, usize) {
        let ring = (pos % self.capacity() as u64) as usize;
        (ring / PAGE, ring % PAGE)
    }
}

/// A zeroed page, allocated directly on the heap (no 4 KiB stack temporary).
fn new_page() -> Box<[u8]> {
    vec![0u8; PAGE].into_boxed_slice()
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counters only: the contents are ciphertext and of no use in logs.
        f.debug_struct("ReplayWindow")
            .field("capacity", &self.capacity())
            .field("written", &self.written)
            .field("flushed", &self.flushed)
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

/// Iterator over `[pos, end)` of a window, one page piece at a time.
struct Slices<'a> {
    window: &'a ReplayWindow,
    pos: u64,
    end: u64,
}

impl<'a> Iterator for Slices<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.end {
            return None;
        }
        let (page, offset) = self.window.locate(self.pos);
        let len = ((self.end - self.pos) as usize).min(PAGE - offset);
        // Every page of the held range has been written, hence allocated;
        // stop rather than panic if that invariant were ever broken.
        let Some(bytes) = self.window.pages[page].as_deref() else {
            debug_assert!(false, "held page {page} not allocated");
            self.pos = self.end;
            return None;
        };
        self.pos += len as u64;
        Some(&bytes[offset..offset + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(w: &ReplayWindow, from: u64) -> Vec<u8> {
        w.slices_from(from).flatten().copied().collect()
    }

    #[test]
    fn capacity_rounds_up_to_pages() {
        assert_eq!(ReplayWindow::new(0).capacity(), PAGE);
        assert_eq!(ReplayWindow::new(1).capacity(), PAGE);
        assert_eq!(ReplayWindow::new(PAGE).capacity(), PAGE);
        assert_eq!(ReplayWindow::new(65536 + 1).capacity(), 65536 + PAGE);
    }

    #[test]
    fn pages_are_allocated_lazily() {
        let mut w = ReplayWindow::new(65536);
        assert_eq!(w.memory_bytes(), 0);
        assert_eq!(w.write(&[1; 10]), 10);
        assert_eq!(w.memory_bytes(), PAGE);
        w.mark_sent(10);
        w.write(&[2; PAGE]);
        assert_eq!(w.memory_bytes(), 2 * PAGE);
    }

    #[test]
    fn write_stops_at_unsent_bytes() {
        let mut w = ReplayWindow::new(PAGE);
        assert_eq!(w.write(&[7; PAGE + 5]), PAGE);
        assert_eq!(w.free_space(), 0);
        assert_eq!(w.write(&[8; 3]), 0);
        w.mark_sent(100);
        assert_eq!(w.free_space(), 100);
        assert_eq!(w.write(&[9; 300]), 100);
        assert_eq!(w.held(), PAGE);
        let all = collect(&w, w.written() - PAGE as u64);
        assert_eq!(&all[..PAGE - 100], &[7; PAGE - 100][..]);
        assert_eq!(&all[PAGE - 100..], &[9; 100][..]);
    }

    #[test]
    fn slices_split_at_pages_and_wrap() {
        let mut w = ReplayWindow::new(2 * PAGE);
        let data: Vec<u8> = (0..3 * PAGE + 17).map(|i| i as u8).collect();
        let mut off = 0;
        while off < data.len() {
            off += w.write(&data[off..]);
            w.mark_sent(w.unsent());
        }
        let from = w.written() - w.held() as u64;
        let lens: Vec<usize> = w.slices_from(from).map(<[u8]>::len).collect();
        assert_eq!(lens, vec![PAGE - 17, PAGE, 17]);
        assert_eq!(collect(&w, from), &data[data.len() - 2 * PAGE..]);
    }

    #[test]
    fn mark_sent_clamps() {
        let mut w = ReplayWindow::new(PAGE);
        w.write(b"abc");
        w.mark_sent(10);
        assert_eq!(w.flushed(), 3);
        assert_eq!(w.unsent(), 0);
    }

    #[test]
    fn rewind_gives_exactly_the_missing_bytes() {
        let mut w = ReplayWindow::new(PAGE);
        w.write(b"hello world");
        w.mark_sent(11);
        assert_eq!(w.rewind(5), Ok(6));
        assert_eq!(w.unsent(), 6);
        assert_eq!(collect(&w, w.flushed()), b" world");
        assert_eq!(w.rewind(11), Ok(0));
        assert_eq!(w.rewind(0), Ok(11));
    }

    #[test]
    fn rewind_refuses_what_is_not_held_or_negative() {
        let mut w = ReplayWindow::new(PAGE);
        for _ in 0..3 {
            w.write(&[1; PAGE]);
            w.mark_sent(PAGE);
        }
        let written = w.written() as u32;
        assert_eq!(w.rewind(written - PAGE as u32), Ok(PAGE));
        assert_eq!(
            w.rewind(written - PAGE as u32 - 1),
            Err(Status::NotAcceptable)
        );
        // The peer claims bytes we never wrote.
        assert_eq!(w.rewind(written + 1), Err(Status::NotAcceptable));
        // A refused rewind leaves the window as it was.
        assert_eq!(w.flushed(), w.written() - PAGE as u64);
    }

    #[test]
    fn rewind_past_four_gib() {
        // The stream has carried 2^32 + 100 bytes; the peer's count wrapped.
        let start = (1u64 << 32) - 1000;
        let mut w = ReplayWindow::with_offset(PAGE, start);
        let data: Vec<u8> = (0..1100).map(|i| i as u8).collect();
        w.write(&data);
        w.mark_sent(data.len());
        assert_eq!(w.written(), (1 << 32) + 100);
        // Peer received up to 100 bytes before the 4 GiB mark.
        let peer = (start + 900) as u32;
        assert_eq!(w.rewind(peer), Ok(200));
        assert_eq!(collect(&w, w.flushed()), &data[900..]);
        // Peer received everything, its count having wrapped to 100.
        assert_eq!(w.rewind(100), Ok(0));
        // Peer is behind the start of what is held.
        assert_eq!(w.rewind(start as u32 - 1), Err(Status::NotAcceptable));
    }

    #[test]
    fn slices_from_out_of_range_yields_nothing_in_release() {
        if cfg!(debug_assertions) {
            return; // debug builds assert instead
        }
        let mut w = ReplayWindow::new(PAGE);
        w.write(b"abc");
        assert_eq!(w.slices_from(4).count(), 0);
    }

    #[test]
    fn debug_shows_counters_only() {
        let mut w = ReplayWindow::new(PAGE);
        w.write(b"secret-ish");
        let s = format!("{w:?}");
        assert!(s.contains("written: 10"), "{s}");
        assert!(!s.contains('['), "{s}"); // no byte dump
    }
}
