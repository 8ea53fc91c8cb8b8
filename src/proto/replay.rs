//! The replay window: the session's send buffer and replay copy in one ring.
//!
//! Outgoing plaintext is encrypted straight into the ring, sent from there,
//! and the bytes stay in place as the replay copy after the send completes,
//! so a resume resends ciphertext exactly as first sent with no extra copy.
//!
//! The ring is cut into segments that are allocated on first write and never
//! move while allocated (the engine hands pointers into them to the kernel
//! for a send). The first [`PAGE`] bytes of the ring are segments that double
//! in size from [`SMALL`] bytes; the rest are whole pages. A quiet session
//! that has sent a message or two so holds a few hundred bytes rather than a
//! page, and a busy one holds what it filled, as before.

use super::message::Status;
use smallvec::SmallVec;

/// Capacity granule: a window's capacity is a whole number of pages, and
/// beyond its first page the ring is allocated a page at a time.
pub const PAGE: usize = 4096;

/// The ring's first segment, in bytes; the next ones in its first page
/// double in size (`SMALL`, `SMALL`, `2·SMALL`, … `PAGE / 2`).
pub const SMALL: usize = 128;

/// Segments in the first page: `[0, SMALL)`, then `[2^k, 2^(k+1))` for
/// `SMALL ≤ 2^k < PAGE`.
const HEAD_SEGMENTS: usize = (PAGE / SMALL).trailing_zeros() as usize + 1;

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
/// still held for replay. Segments are allocated only when first written,
/// and a segment never moves while allocated.
pub struct ReplayWindow {
    /// One slot per segment, as far as any has been allocated (two inline:
    /// a quiet session needs no further block for the table itself).
    segments: SmallVec<[Option<Box<[u8]>>; 2]>,
    /// Capacity in pages.
    pages: u32,
    /// Stream position of the first byte this window saw (0 except in tests
    /// that start a window deep into a stream).
    start: u64,
    written: u64,
    flushed: u64,
}

/// Segment index, its first ring offset and its length, of ring offset `r`.
#[inline]
fn segment_of(r: usize) -> (usize, usize, usize) {
    if r >= PAGE {
        (HEAD_SEGMENTS - 1 + r / PAGE, r / PAGE * PAGE, PAGE)
    } else if r < SMALL {
        (0, 0, SMALL)
    } else {
        let log = usize::BITS - 1 - r.leading_zeros();
        let first = 1usize << log;
        ((first / SMALL).trailing_zeros() as usize + 1, first, first)
    }
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
            segments: SmallVec::new(),
            pages: pages as u32,
            start,
            written: start,
            flushed: start,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.pages as usize * PAGE
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
            let (seg, offset, seg_len) = self.locate(self.written);
            let len = rest.len().min(seg_len - offset);
            if seg >= self.segments.len() {
                self.segments.resize_with(seg + 1, || None);
            }
            let dst = self.segments[seg].get_or_insert_with(|| new_segment(seg_len));
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
    /// A piece never crosses a segment boundary (so never the ring's wrap). An
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

    /// Heap bytes currently held by the window's segments (not counting
    /// the segment table beyond its two inline slots).
    pub fn memory_bytes(&self) -> usize {
        self.segments.iter().flatten().map(|s| s.len()).sum()
    }

    /// Segment index, offset within it and its length, of stream position `pos`.
    #[inline]
    fn locate(&self, pos: u64) -> (usize, usize, usize) {
        let ring = (pos % self.capacity() as u64) as usize;
        let (seg, first, len) = segment_of(ring);
        (seg, ring - first, len)
    }
}

/// A zeroed segment, allocated directly on the heap (no stack temporary).
fn new_segment(len: usize) -> Box<[u8]> {
    vec![0u8; len].into_boxed_slice()
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
        let (seg, offset, seg_len) = self.window.locate(self.pos);
        let len = ((self.end - self.pos) as usize).min(seg_len - offset);
        // Every segment of the held range has been written, hence allocated;
        // stop rather than panic if that invariant were ever broken.
        let Some(bytes) = self.window.segments.get(seg).and_then(|s| s.as_deref()) else {
            debug_assert!(false, "held segment {seg} not allocated");
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
    fn segments_are_allocated_lazily_and_small_first() {
        let mut w = ReplayWindow::new(65536);
        assert_eq!(w.memory_bytes(), 0);
        assert_eq!(w.write(&[1; 10]), 10);
        assert_eq!(w.memory_bytes(), SMALL);
        w.mark_sent(10);
        w.write(&[2; 200]);
        assert_eq!(w.memory_bytes(), 2 * SMALL);
        w.mark_sent(200);
        // The first page is then filled by doubling segments, then pages follow.
        w.write(&[3; PAGE]);
        assert_eq!(w.memory_bytes(), 2 * PAGE);
    }

    #[test]
    fn segment_boundaries() {
        assert_eq!(segment_of(0), (0, 0, SMALL));
        assert_eq!(segment_of(SMALL - 1), (0, 0, SMALL));
        assert_eq!(segment_of(SMALL), (1, SMALL, SMALL));
        assert_eq!(segment_of(2 * SMALL), (2, 2 * SMALL, 2 * SMALL));
        assert_eq!(
            segment_of(PAGE - 1),
            (HEAD_SEGMENTS - 1, PAGE / 2, PAGE / 2)
        );
        assert_eq!(segment_of(PAGE), (HEAD_SEGMENTS, PAGE, PAGE));
        assert_eq!(
            segment_of(3 * PAGE + 5),
            (HEAD_SEGMENTS + 2, 3 * PAGE, PAGE)
        );
        // The head segments tile the first page exactly.
        let mut r = 0;
        for k in 0..HEAD_SEGMENTS {
            let (seg, first, len) = segment_of(r);
            assert_eq!((seg, first), (k, r));
            r += len;
        }
        assert_eq!(r, PAGE);
    }

    #[test]
    fn a_window_full_of_bytes_holds_its_capacity() {
        let mut w = ReplayWindow::new(3 * PAGE);
        for _ in 0..5 {
            w.write(&[4; PAGE]);
            w.mark_sent(PAGE);
        }
        assert_eq!(w.memory_bytes(), 3 * PAGE);
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
        // From ring offset PAGE + 17: the rest of the second page, the head
        // segments after the wrap, then 17 bytes of the second page again.
        let mut want = vec![PAGE - 17, SMALL];
        want.extend((0..HEAD_SEGMENTS - 1).map(|k| SMALL << k));
        want.push(17);
        assert_eq!(lens, want);
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
