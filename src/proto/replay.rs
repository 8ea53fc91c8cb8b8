//! The replay window: the session's send buffer and replay copy in one ring.
//! (API fixed here; implementation in progress.)

/// Size of one lazily allocated page of the ring.
pub const PAGE: usize = 4096;

/// Ring of the last `capacity` bytes of ciphertext written for a peer.
///
/// Positions are absolute stream offsets (`u64`, bytes since the session
/// began). `[flushed, written)` is unsent; `[written - held, written)` is
/// still held for replay. Pages are allocated only when first written, and a
/// page never moves while allocated, so the engine may hand pointers into it
/// to the kernel for a send.
pub struct ReplayWindow {
    _private: (),
}

#[allow(unused_variables, missing_docs)]
impl ReplayWindow {
    /// A window holding up to `capacity` bytes (rounded up to whole pages).
    pub fn new(capacity: usize) -> Self {
        todo!()
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        todo!()
    }
    /// Total bytes ever written (the sender's stream count, full width).
    pub fn written(&self) -> u64 {
        todo!()
    }
    /// Stream offset up to which sends have completed.
    pub fn flushed(&self) -> u64 {
        todo!()
    }
    /// Bytes written but not yet sent: `written - flushed`.
    pub fn unsent(&self) -> usize {
        todo!()
    }
    /// Bytes still held for replay: `min(written, capacity)`.
    pub fn held(&self) -> usize {
        todo!()
    }
    /// How many more bytes may be written without overwriting unsent bytes.
    pub fn free_space(&self) -> usize {
        todo!()
    }
    /// Copies up to `free_space()` bytes of `src` into the ring through
    /// `transform(src_piece, dst_piece)` (the engine passes the encryptor) and
    /// returns how many bytes were taken.
    pub fn write_with(&mut self, src: &[u8], transform: impl FnMut(&[u8], &mut [u8])) -> usize {
        todo!()
    }
    /// The bytes `[from, written)` as contiguous pieces in order; `from` must
    /// lie in `[written - held, written]`.
    pub fn slices_from(&self, from: u64) -> impl Iterator<Item = &[u8]> {
        std::iter::empty()
    }
    /// Marks `n` more bytes as sent (their send completed): `flushed += n`.
    pub fn mark_sent(&mut self, n: usize) {
        todo!()
    }
    /// Prepares a resume where the peer has received `peer_received` (mod 2^32)
    /// bytes: sets `flushed = written - missing` and returns `missing`, or
    /// `Err(Status::NotAcceptable)` when `missing` exceeds `held()`.
    pub fn rewind(&mut self, peer_received: u32) -> Result<usize, super::message::Status> {
        todo!()
    }
    /// Heap bytes currently held by the window's pages.
    pub fn memory_bytes(&self) -> usize {
        todo!()
    }
}
