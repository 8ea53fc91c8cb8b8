//! RC4, the stream cipher SCP wraps its byte stream in.
//!
//! RC4 is broken as a cipher; SCP uses it for wire compatibility only.
//! This implementation keeps the state as `u32` words (as OpenSSL does on
//! x86-64) to avoid byte-store/word-load stalls; `benches/crypto.rs` keeps the
//! comparison with the `rc4` crate that justifies having our own.

/// One direction's RC4 keystream state.
#[derive(Clone)]
pub struct Rc4 {
    s: [u32; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    /// Runs the standard key schedule. `key` must be 1..=256 bytes long.
    pub fn new(key: &[u8]) -> Self {
        assert!(
            !key.is_empty() && key.len() <= 256,
            "RC4 key of 1..=256 bytes"
        );
        let mut s = [0u32; 256];
        for (i, v) in s.iter_mut().enumerate() {
            *v = i as u32;
        }
        let mut j: u8 = 0;
        for i in 0..256 {
            j = j.wrapping_add(s[i] as u8).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// The cipher for a session secret (`rc4_key(secret)` as key).
    pub fn from_secret(secret: u64) -> Self {
        Self::new(&super::crypt::rc4_key(secret))
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u8 {
        self.i = self.i.wrapping_add(1);
        let si = self.s[self.i as usize];
        self.j = self.j.wrapping_add(si as u8);
        let sj = self.s[self.j as usize];
        self.s[self.i as usize] = sj;
        self.s[self.j as usize] = si;
        self.s[(si.wrapping_add(sj) & 0xff) as usize] as u8
    }

    /// XORs the keystream into `buf` in place (encrypts or decrypts).
    pub fn apply(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            let mut ks = [0u8; 8];
            for k in ks.iter_mut() {
                *k = self.next_byte();
            }
            let word =
                u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ u64::from_ne_bytes(ks);
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        for b in chunks.into_remainder() {
            *b ^= self.next_byte();
        }
    }

    /// XORs the keystream over `src` into `dst` (same length): encryption
    /// straight into a destination buffer with no intermediate copy.
    pub fn apply_to(&mut self, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "apply_to needs equal lengths");
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s ^ self.next_byte();
        }
    }
}

impl std::fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key-derived state.
        f.write_str("Rc4 { .. }")
    }
}
