//! DES-ECB with ISO/IEC 7816-4 padding, as skynet's `desencode` /
//! `desdecode` apply it to the login token.
//!
//! The key is the 8 bytes of the login secret (a little-endian u64); parity
//! bits are ignored and weak keys accepted, as in skynet. Padding is `0x80`
//! then zeros up to the block boundary, always at least one byte (a whole
//! block when the text is aligned). Decoding looks only at the last block:
//! trailing zeros, then exactly one `0x80`, are stripped.

use des::Des;
use des::cipher::{Block, BlockCipherDecrypt, BlockCipherEncrypt, Key, KeyInit};

/// Why a ciphertext does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DesError {
    /// Empty, or not a whole number of 8-byte blocks.
    #[error("DES text of {0} bytes is not a positive multiple of 8")]
    Length(usize),
    /// The last block holds no `0x80` after its trailing zeros.
    #[error("DES text has no valid padding")]
    Padding,
}

fn cipher(key: u64) -> Des {
    Des::new(&Key::<Des>::from(key.to_le_bytes()))
}

/// Encrypts `text` under `key`, padding it first.
pub fn encrypt(key: u64, text: &[u8]) -> Vec<u8> {
    let des = cipher(key);
    let mut out = Vec::with_capacity((text.len() / 8 + 1) * 8);
    out.extend_from_slice(text);
    out.push(0x80);
    out.resize(out.len().div_ceil(8) * 8, 0);
    for chunk in out.chunks_exact_mut(8) {
        let mut block = Block::<Des>::try_from(&*chunk).expect("8-byte chunk");
        des.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    out
}

/// Decrypts `data` under `key` and strips the padding.
pub fn decrypt(key: u64, data: &[u8]) -> Result<Vec<u8>, DesError> {
    if data.is_empty() || data.len() % 8 != 0 {
        return Err(DesError::Length(data.len()));
    }
    let des = cipher(key);
    let mut out = data.to_vec();
    for chunk in out.chunks_exact_mut(8) {
        let mut block = Block::<Des>::try_from(&*chunk).expect("8-byte chunk");
        des.decrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    let last = out.len() - 8;
    match out[last..].iter().rposition(|&b| b != 0) {
        Some(i) if out[last + i] == 0x80 => {
            out.truncate(last + i);
            Ok(out)
        }
        _ => Err(DesError::Padding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_length_around_the_block() {
        let key = 0x7361_3723_ce4f_e278;
        for len in 0..=33 {
            let text: Vec<u8> = (0..len)
                .map(|i| if i % 5 == 0 { 0x80 } else { i as u8 })
                .collect();
            let c = encrypt(key, &text);
            assert_eq!(c.len(), (len / 8 + 1) * 8, "len {len}");
            assert_eq!(decrypt(key, &c).unwrap(), text, "len {len}");
        }
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(decrypt(1, &[]), Err(DesError::Length(0)));
        assert_eq!(decrypt(1, &[0; 9]), Err(DesError::Length(9)));
    }
}
