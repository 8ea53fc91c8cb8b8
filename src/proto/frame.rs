//! Frame codecs for the application stream inside a session.
//!
//! SCP itself carries a raw byte stream; applications frame their messages
//! inside it. These are the common framings: skynet's netpack (`u16`
//! big-endian length), a `u32` big-endian length, netstrings
//! (`len:bytes,`), and `Raw`, which passes the stream through in pieces.
//!
//! Decoding is incremental and zero-copy: the caller appends received bytes
//! to a [`BytesMut`] and calls [`FrameDecoder::decode`] until it returns
//! `Ok(None)`; each frame is split off the buffer without copying. A frame
//! longer than the decoder's limit is refused as soon as its length is
//! known, so the buffer never has to grow past
//! [`FrameDecoder::max_buffered`]. After an error the stream is corrupt and
//! the caller should close it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// How frames are delimited in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameFormat {
    /// `u16` big-endian length, then the payload (skynet's netpack).
    U16Be,
    /// `u32` big-endian length, then the payload.
    U32Be,
    /// `len:payload,` with `len` in decimal ASCII (no leading zeros).
    Netstring,
    /// No framing: each decode yields what is buffered, up to the limit.
    Raw,
}

impl FrameFormat {
    /// The largest payload the format's header can express.
    pub fn format_max(self) -> usize {
        match self {
            FrameFormat::U16Be => u16::MAX as usize,
            FrameFormat::U32Be => usize::try_from(u32::MAX).unwrap_or(usize::MAX),
            FrameFormat::Netstring | FrameFormat::Raw => usize::MAX,
        }
    }
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's length is over the limit. For a netstring whose length
    /// digits already exceed the limit, `len` is the value read so far.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's length (or a lower bound of it).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The bytes do not follow the format.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Incremental decoder of one framing, with a per-frame size limit.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    format: FrameFormat,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder for `format` refusing frames over `max_frame` bytes of
    /// payload. For `Raw`, `max_frame` (at least 1) bounds each piece.
    pub fn new(format: FrameFormat, max_frame: usize) -> Self {
        let max_frame = match format {
            FrameFormat::Raw => max_frame.max(1),
            _ => max_frame.min(format.format_max()),
        };
        FrameDecoder { format, max_frame }
    }

    /// The framing this decoder reads.
    pub fn format(&self) -> FrameFormat {
        self.format
    }

    /// The largest payload accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The most bytes [`decode`](Self::decode) can leave in the buffer when
    /// it returns `Ok(None)`: one incomplete frame with its header and
    /// trailer. A reader never needs to buffer more than this.
    pub fn max_buffered(&self) -> usize {
        let overhead = match self.format {
            FrameFormat::U16Be => 2,
            FrameFormat::U32Be => 4,
            // Digits, ':' and ','.
            FrameFormat::Netstring => decimal_digits(self.max_frame) + 2,
            FrameFormat::Raw => return 0,
        };
        self.max_frame.saturating_add(overhead)
    }

    /// Splits the next complete frame off the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed; `buf` is left as it was.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let (header, len, trailer) = match self.format {
            FrameFormat::U16Be => match buf.first_chunk::<2>() {
                Some(h) => (2, u16::from_be_bytes(*h) as usize, 0),
                None => return Ok(None),
            },
            FrameFormat::U32Be => match buf.first_chunk::<4>() {
                Some(h) => {
                    let len = u32::from_be_bytes(*h);
                    (4, usize::try_from(len).unwrap_or(usize::MAX), 0)
                }
                None => return Ok(None),
            },
            FrameFormat::Netstring => match netstring_header(buf, self.max_frame)? {
                Some((header, len)) => (header, len, 1),
                None => return Ok(None),
            },
            FrameFormat::Raw => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(self.max_frame);
                return Ok(Some(buf.split_to(n).freeze()));
            }
        };
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        // No overflow: len <= max_frame, and header + trailer are tiny.
        if buf.len() < header + len + trailer {
            return Ok(None);
        }
        if trailer == 1 && buf[header + len] != b',' {
            return Err(FrameError::Malformed("netstring without trailing ','"));
        }
        buf.advance(header);
        let frame = buf.split_to(len).freeze();
        buf.advance(trailer);
        Ok(Some(frame))
    }
}

/// Parses a netstring's `len:` prefix: `Some((prefix length, len))`, or
/// `None` if the prefix is not complete yet.
///
/// The length is checked against `max` digit by digit. Without leading
/// zeros each digit makes the value grow, so a run of digits is refused
/// after at most one more digit than `max` has.
fn netstring_header(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, FrameError> {
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                if i == 1 && buf[0] == b'0' {
                    return Err(FrameError::Malformed("netstring length with leading zero"));
                }
                // Overflow means too large whatever the limit.
                let next = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add((b - b'0') as usize));
                match next {
                    Some(n) if n <= max => len = n,
                    _ => {
                        let len = next.unwrap_or(usize::MAX);
                        return Err(FrameError::TooLarge { len, max });
                    }
                }
            }
            b':' if i > 0 => return Ok(Some((i + 1, len))),
            b':' => return Err(FrameError::Malformed("netstring without length")),
            _ => return Err(FrameError::Malformed("netstring length not a decimal")),
        }
    }
    Ok(None)
}

/// Number of decimal digits of `n` (1 for 0).
fn decimal_digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends `payload` framed as `format` to `out` (a `BytesMut`, a `Vec<u8>`,
/// or any other [`BufMut`]).
///
/// Fails with [`FrameError::TooLarge`] when the format's header cannot
/// express the length; `out` is then unchanged.
pub fn encode_frame(
    format: FrameFormat,
    payload: &[u8],
    out: &mut impl BufMut,
) -> Result<(), FrameError> {
    let len = payload.len();
    let max = format.format_max();
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    match format {
        FrameFormat::U16Be => out.put_u16(len as u16),
        FrameFormat::U32Be => out.put_u32(len as u32),
        FrameFormat::Netstring => {
            out.put_slice(len.to_string().as_bytes());
            out.put_u8(b':');
        }
        FrameFormat::Raw => {}
    }
    out.put_slice(payload);
    if format == FrameFormat::Netstring {
        out.put_u8(b',');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(format: FrameFormat, max: usize, input: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let mut d = FrameDecoder::new(format, max);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(f) = d.decode(&mut buf)? {
            frames.push(f);
        }
        Ok(frames)
    }

    #[test]
    fn u16_frames() {
        let mut out = BytesMut::new();
        encode_frame(FrameFormat::U16Be, b"abc", &mut out).unwrap();
        encode_frame(FrameFormat::U16Be, b"", &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x03abc\x00\x00");
        assert_eq!(
            decode_all(FrameFormat::U16Be, 10, &out).unwrap(),
            vec![Bytes::from_static(b"abc"), Bytes::new()]
        );
        assert_eq!(
            decode_all(FrameFormat::U16Be, 2, &out),
            Err(FrameError::TooLarge { len: 3, max: 2 })
        );
        let big = vec![0; 65536];
        assert_eq!(
            encode_frame(FrameFormat::U16Be, &big, &mut out),
            Err(FrameError::TooLarge {
                len: 65536,
                max: 65535
            })
        );
        encode_frame(FrameFormat::U16Be, &big[1..], &mut Vec::new()).unwrap();
    }

    #[test]
    fn u32_frames() {
        let mut out = Vec::new();
        encode_frame(FrameFormat::U32Be, b"hello", &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x00\x00\x05hello");
        assert_eq!(
            decode_all(FrameFormat::U32Be, 5, &out).unwrap(),
            vec![Bytes::from_static(b"hello")]
        );
        // The header alone is enough to refuse a frame over the limit.
        assert_eq!(
            decode_all(FrameFormat::U32Be, 1 << 20, b"\xff\xff\xff\xff"),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn netstrings() {
        let mut out = BytesMut::new();
        encode_frame(FrameFormat::Netstring, b"hello world!", &mut out).unwrap();
        encode_frame(FrameFormat::Netstring, b"", &mut out).unwrap();
        assert_eq!(&out[..], b"12:hello world!,0:,");
        assert_eq!(
            decode_all(FrameFormat::Netstring, 100, &out).unwrap(),
            vec![Bytes::from_static(b"hello world!"), Bytes::new()]
        );
    }

    #[test]
    fn malformed_netstrings() {
        let malformed = |input: &[u8]| {
            assert!(
                matches!(
                    decode_all(FrameFormat::Netstring, 100, input),
                    Err(FrameError::Malformed(_))
                ),
                "{input:?}"
            )
        };
        malformed(b"03:abc,");
        malformed(b"00:,");
        malformed(b"3:abcX");
        malformed(b":");
        malformed(b"-1:a,");
        malformed(b"+1:a,");
        malformed(b" 1:a,");
        malformed(b"1 :a,");
        malformed(b"x");
        // Incomplete is not malformed.
        assert_eq!(decode_all(FrameFormat::Netstring, 100, b"3:ab"), Ok(vec![]));
        assert_eq!(decode_all(FrameFormat::Netstring, 100, b"12"), Ok(vec![]));
    }

    #[test]
    fn netstring_length_refused_while_reading_digits() {
        // Limit 100 has 3 digits: the 4th digit already proves it too large.
        assert_eq!(
            decode_all(FrameFormat::Netstring, 100, b"1000"),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 100
            })
        );
        assert_eq!(
            decode_all(FrameFormat::Netstring, 100, b"101"),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        let flood = vec![b'9'; 10_000];
        assert!(matches!(
            decode_all(FrameFormat::Netstring, usize::MAX, &flood),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            decode_all(FrameFormat::Netstring, 0, b"0:,").unwrap().len(),
            1
        );
    }

    #[test]
    fn raw_yields_what_is_buffered_up_to_the_limit() {
        assert_eq!(
            decode_all(FrameFormat::Raw, 4, b"abcdefghij").unwrap(),
            vec![
                Bytes::from_static(b"abcd"),
                Bytes::from_static(b"efgh"),
                Bytes::from_static(b"ij")
            ]
        );
        assert_eq!(decode_all(FrameFormat::Raw, 4, b""), Ok(vec![]));
        assert_eq!(decode_all(FrameFormat::Raw, 0, b"ab").unwrap().len(), 2);
    }

    #[test]
    fn max_buffered() {
        assert_eq!(
            FrameDecoder::new(FrameFormat::U16Be, 1 << 20).max_buffered(),
            65537
        );
        assert_eq!(
            FrameDecoder::new(FrameFormat::U32Be, 100).max_buffered(),
            104
        );
        assert_eq!(
            FrameDecoder::new(FrameFormat::Netstring, 100).max_buffered(),
            105
        );
        assert_eq!(
            FrameDecoder::new(FrameFormat::Netstring, 0).max_buffered(),
            3
        );
        assert_eq!(FrameDecoder::new(FrameFormat::Raw, 100).max_buffered(), 0);
    }

    #[test]
    fn decoding_is_zero_copy() {
        let mut buf = BytesMut::from(&b"\x00\x03abc\x00\x01d"[..]);
        let base = buf.as_ptr();
        let mut d = FrameDecoder::new(FrameFormat::U16Be, 10);
        let f = d.decode(&mut buf).unwrap().unwrap();
        // The frame points into the original allocation.
        assert_eq!(f.as_ptr(), base.wrapping_add(2));
    }
}
