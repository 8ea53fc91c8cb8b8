//! Base64 as skynet's crypt library speaks it.
//!
//! Encoding is the standard alphabet with `=` padding. Decoding is lenient
//! in skynet's particular way, and the login protocol's answers depend on
//! it (a `\r` before the `\n` of a login line makes the line fail), so it is
//! reproduced here rather than delegated to a strict decoder:
//!
//! - the text is read in quanta of four alphabet characters (`=` counts as
//!   one); every other byte is skipped wherever it appears;
//! - a quantum cut short by the end of the text is completed with `=`, so
//!   missing padding is accepted, but a skipped byte after the last complete
//!   quantum opens a quantum of four `=` and fails;
//! - `=` does not end decoding: `MQ==MQ==` is two quanta;
//! - leftover bits under the padding must be zero.

use base64::Engine as _;

/// Why a text is not base64 to skynet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64 text")]
pub struct Base64Error;

/// The standard alphabet with `=` padding.
pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Appends `encode(bytes)` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + n);
}

/// What one input byte means to the decoder.
#[derive(Clone, Copy)]
enum Sym {
    Value(u8),
    Pad,
    Skip,
}

fn sym(c: u8) -> Sym {
    match c {
        b'A'..=b'Z' => Sym::Value(c - b'A'),
        b'a'..=b'z' => Sym::Value(c - b'a' + 26),
        b'0'..=b'9' => Sym::Value(c - b'0' + 52),
        b'+' => Sym::Value(62),
        b'/' => Sym::Value(63),
        b'=' => Sym::Pad,
        _ => Sym::Skip,
    }
}

/// Decodes `text` with skynet's rules (see the module docs).
pub fn decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(text.len().div_ceil(4) * 3);
    let mut input = text.iter();
    let mut remaining = !text.is_empty();
    while remaining {
        // One quantum: four symbols, `None` standing for padding.
        let mut q = [None; 4];
        let mut pads = 0;
        for slot in q.iter_mut() {
            let v = loop {
                match input.next().map(|&c| sym(c)) {
                    Some(Sym::Skip) => continue,
                    Some(Sym::Value(v)) => break Some(v),
                    // The end of the text pads the quantum.
                    Some(Sym::Pad) | None => break None,
                }
            };
            if v.is_none() {
                pads += 1;
            }
            *slot = v;
        }
        match (pads, q) {
            (0, [Some(a), Some(b), Some(c), Some(d)]) => {
                let v = (a as u32) << 18 | (b as u32) << 12 | (c as u32) << 6 | d as u32;
                out.extend_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8]);
            }
            (1, [Some(a), Some(b), Some(c), None]) if c & 3 == 0 => {
                let v = (a as u32) << 10 | (b as u32) << 4 | (c as u32) >> 2;
                out.extend_from_slice(&[(v >> 8) as u8, v as u8]);
            }
            (2, [Some(a), Some(b), None, None]) if b & 0xf == 0 => {
                out.push(a << 2 | b >> 4);
            }
            _ => return Err(Base64Error),
        }
        remaining = !input.as_slice().is_empty();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode(encode(&bytes).as_bytes()).unwrap(), bytes);
            let mut out = b"x".to_vec();
            encode_into(&bytes, &mut out);
            assert_eq!(&out[1..], encode(&bytes).as_bytes());
        }
    }

    #[test]
    fn skynet_leniency() {
        assert_eq!(decode(b"MQ").unwrap(), b"1");
        assert_eq!(decode(b"MQ=").unwrap(), b"1");
        assert_eq!(decode(b"M Q = =").unwrap(), b"1");
        assert_eq!(decode(b"MQ==MQ==").unwrap(), b"11");
        assert_eq!(decode(b"").unwrap(), b"");
        assert!(decode(b"MQ==\r").is_err());
        assert!(decode(b"MR==").is_err());
        assert!(decode(b"M").is_err());
        assert!(decode(b"=").is_err());
        assert!(decode(b"M=Q=").is_err());
        assert!(decode(b"\n").is_err());
    }
}
