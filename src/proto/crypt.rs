//! The hash and MAC helpers SCP and skynet share: `hashkey`, `hmac64`,
//! `hmac64_md5`, `hmac_hash` and the RC4 key schedule input `rc4_key`.
//!
//! All 64-bit values are handled as `u64` and travel as 8 little-endian bytes.

use md5::{Digest, Md5};

/// skynet's `hashkey`: a djb2 hash and a JS hash of `text`, packed as
/// `djb (LE u32) ‖ js (LE u32)` and read back as a little-endian u64.
pub fn hashkey(text: &[u8]) -> u64 {
    let mut djb: u32 = 5381;
    let mut js: u32 = 1_315_423_911;
    for &c in text {
        let c = c as u32;
        djb = djb.wrapping_add((djb << 5).wrapping_add(c));
        js ^= (js << 5).wrapping_add(c).wrapping_add(js >> 2);
    }
    (djb as u64) | ((js as u64) << 32)
}

/// The MAC SCP uses (skynet's `hmac64_md5`): `MD5(x‖y‖x‖y‖x‖y)` folded to 64
/// bits by XOR of its two halves.
pub fn hmac64_md5(x: u64, y: u64) -> u64 {
    let (x, y) = (x.to_le_bytes(), y.to_le_bytes());
    let mut block = [0u8; 48];
    for chunk in block.chunks_exact_mut(16) {
        chunk[..8].copy_from_slice(&x);
        chunk[8..].copy_from_slice(&y);
    }
    let m = Md5::digest(block);
    let lo = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(m[8..].try_into().expect("8 bytes"));
    lo ^ hi
}

/// skynet's older `hmac64`: a single MD5 compression over the 16 words
/// `x.hi, x.lo, y.hi, y.lo` ×4 from the standard initial state, with no padding
/// and no feed-forward; result `(a ^ b) << 32 | (c ^ d)`.
///
/// Not used by SCP; the msgserver handshake needs it.
pub fn hmac64(x: u64, y: u64) -> u64 {
    let words = [(x >> 32) as u32, x as u32, (y >> 32) as u32, y as u32];
    let mut block = [0u8; 64];
    for (i, chunk) in block.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&words[i % 4].to_le_bytes());
    }
    // `compress` adds the input state back (feed-forward); starting from zero
    // state is not equivalent, so subtract the initial state afterwards.
    const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut state = INIT;
    md5::block_api::compress(&mut state, &[block]);
    let [a, b, c, d] = [
        state[0].wrapping_sub(INIT[0]),
        state[1].wrapping_sub(INIT[1]),
        state[2].wrapping_sub(INIT[2]),
        state[3].wrapping_sub(INIT[3]),
    ];
    (((a ^ b) as u64) << 32) | (c ^ d) as u64
}

/// `hmac64(hashkey(text), secret)`, as skynet's msgserver signs its login line.
pub fn hmac_hash(secret: u64, text: &[u8]) -> u64 {
    hmac64(hashkey(text), secret)
}

/// The 32-byte RC4 key derived from a session secret:
/// `hmac64_md5(secret, 0) ‖ … ‖ hmac64_md5(secret, 3)`, each little-endian.
pub fn rc4_key(secret: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&hmac64_md5(secret, i as u64).to_le_bytes());
    }
    key
}
