//! RC4, the stream cipher SCP wraps its byte stream in.
//!
//! RC4 is broken as a cipher; SCP uses it for wire compatibility only.
//! The state is 256 bytes per direction, so a session's two ciphers cost
//! 512 bytes; `benches/crypto.rs` keeps the comparison with the `rc4` crate
//! (and `perf/crypto.sh` the one with OpenSSL) that justifies our own.

/// One direction's RC4 keystream state.
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
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
        let mut s = [0u8; 256];
        for (i, v) in s.iter_mut().enumerate() {
            *v = i as u8;
        }
        let mut j: u8 = 0;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// A cipher whose key setup was done elsewhere: `s` is the initial
    /// state box, the output loop starts at `i = j = 0`. The stable-connection
    /// dialect fills the box without the standard schedule's swaps.
    pub fn from_state(s: [u8; 256]) -> Self {
        Rc4 { s, i: 0, j: 0 }
    }

    /// The cipher for a session secret (`rc4_key(secret)` as key).
    pub fn from_secret(secret: u64) -> Self {
        Self::new(&super::crypt::rc4_key(secret))
    }

    /// Produces `words` keystream words of 8 bytes (little-endian), handing
    /// each to `put`, so the XOR is one word per 8 bytes.
    ///
    /// The indices live in locals masked with `& 0xff`, which keeps them in
    /// registers and drops every bounds check. The next step's `S[i]` is loaded before this step's two stores, so the
    /// loads overlap instead of waiting on the stores; when `j` lands on that
    /// very slot the store changes it, and the value is read again. This
    /// reordering is worth about 10% (see `benches/crypto.rs`).
    #[inline(always)]
    fn words(&mut self, words: usize, mut put: impl FnMut(u64)) {
        let (mut i, mut j) = (self.i as usize, self.j as usize);
        let s = &mut self.s;
        let mut si = s[(i + 1) & 0xff];
        for _ in 0..words {
            let mut ks = 0u64;
            for k in 0..8 {
                i = (i + 1) & 0xff;
                let next = (i + 1) & 0xff;
                j = (j + si as usize) & 0xff;
                let sj = s[j];
                let ahead = s[next];
                s[j] = si;
                s[i] = sj;
                ks |= (s[si.wrapping_add(sj) as usize] as u64) << (8 * k);
                si = if j == next { s[j] } else { ahead };
            }
            put(ks);
        }
        (self.i, self.j) = (i as u8, j as u8);
    }

    #[inline(always)]
    fn step(s: &mut [u8; 256], i: &mut usize, j: &mut usize) -> u8 {
        *i = (*i + 1) & 0xff;
        let si = s[*i];
        *j = (*j + si as usize) & 0xff;
        let sj = s[*j];
        s[*i] = sj;
        s[*j] = si;
        s[si.wrapping_add(sj) as usize]
    }

    /// XORs the keystream into `buf` in place (encrypts or decrypts).
    pub fn apply(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        let n = chunks.len();
        self.words(n, |ks| {
            let chunk = chunks.next().expect("one chunk per word");
            let data = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            chunk.copy_from_slice(&(data ^ ks).to_le_bytes());
        });
        let (mut i, mut j) = (self.i as usize, self.j as usize);
        for b in chunks.into_remainder() {
            *b ^= Self::step(&mut self.s, &mut i, &mut j);
        }
        (self.i, self.j) = (i as u8, j as u8);
    }

    /// XORs the keystream over `src` into `dst` (same length): encryption
    /// straight into a destination buffer with no intermediate copy.
    pub fn apply_to(&mut self, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "apply_to needs equal lengths");
        let mut d = dst.chunks_exact_mut(8);
        let mut c = src.chunks_exact(8);
        let n = d.len();
        self.words(n, |ks| {
            let (out, inp) = (d.next().expect("chunk"), c.next().expect("chunk"));
            let data = u64::from_le_bytes(inp.try_into().expect("8 bytes"));
            out.copy_from_slice(&(data ^ ks).to_le_bytes());
        });
        let (mut i, mut j) = (self.i as usize, self.j as usize);
        for (out, inp) in d.into_remainder().iter_mut().zip(c.remainder()) {
            *out = inp ^ Self::step(&mut self.s, &mut i, &mut j);
        }
        (self.i, self.j) = (i as u8, j as u8);
    }
}

impl std::fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key-derived state.
        f.write_str("Rc4 { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::Rc4;
    use rc4::{KeyInit, StreamCipher, consts::U32};

    proptest::proptest! {
        /// Our word-at-a-time loop matches the `rc4` crate over arbitrary
        /// call splits, for both entry points.
        #[test]
        fn matches_rc4_crate(
            key: [u8; 32],
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            cut in 0usize..3000,
        ) {
            let cut = cut.min(data.len());
            let mut expected = data.clone();
            rc4::Rc4::<U32>::new(&key.into()).apply_keystream(&mut expected);

            let mut ours = Rc4::new(&key);
            let mut got = data.clone();
            let (a, b) = got.split_at_mut(cut);
            ours.apply(a);
            ours.apply(b);
            proptest::prop_assert_eq!(&got, &expected);

            let mut ours = Rc4::new(&key);
            let mut got = vec![0u8; data.len()];
            ours.apply_to(&data[..cut], &mut got[..cut]);
            ours.apply_to(&data[cut..], &mut got[cut..]);
            proptest::prop_assert_eq!(&got, &expected);
        }
    }
}
