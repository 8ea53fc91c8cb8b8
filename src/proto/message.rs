//! SCP handshake records: the four messages, their strict parsers and encoders,
//! and the `u16`-big-endian record framing around them.
//!
//! Parsing is strict: a decimal that overflows its type, a missing line, bad
//! base64, a key that is not exactly 8 bytes, an id outside `[1, 2^32)` or a
//! record over [`MAX_RECORD`] bytes is an error value, never a panic.
//!
//! Encoders write exactly what the reference implementation writes (decimal
//! ASCII, standard base64 with padding, lines joined by `\n`, no trailing
//! newline), so records round-trip byte for byte.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::fmt::Write as _;

use super::crypt::{hashkey, hmac64_md5};

/// Largest record content accepted, in bytes.
pub const MAX_RECORD: usize = 512;

/// SCP status codes carried in the resume response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// 200: resumed.
    Ok = 200,
    /// 400: the request record did not parse.
    BadRequest = 400,
    /// 401: `sum` did not verify.
    Unauthorized = 401,
    /// 403: `index` not above the last accepted one.
    IndexExpired = 403,
    /// 404: no live session with that id.
    NotFound = 404,
    /// 406: the peer misses more than the replay window holds (or a negative amount).
    NotAcceptable = 406,
    /// 501: server-side failure.
    NetworkError = 501,
}

/// Client → server: open a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnReq {
    /// The client's DH public key.
    pub public_key: u64,
    /// Preferred upstream name (`[A-Za-z0-9_]*`), if the line was present.
    pub target: Option<String>,
    /// Flag bits (0x1 = do not announce my address), if the line was present.
    pub flag: Option<i32>,
}

/// Server → client: the new session's id and the server's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewConnResp {
    /// Session id in `[1, 2^32)`.
    pub id: u32,
    /// The server's DH public key.
    pub public_key: u64,
}

/// Client → server: resume session `id` on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseConnReq {
    /// Session id.
    pub id: u32,
    /// Resume index, 1 for the first resume, strictly increasing.
    pub index: u64,
    /// Bytes the client has received, mod 2^32.
    pub received: u32,
    /// `hmac64_md5(hashkey("id\nindex\nreceived\n"), secret)`.
    pub sum: u64,
}

/// Server → client: the resume answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseConnResp {
    /// Bytes the server has received from the client, mod 2^32.
    pub received: u32,
    /// Status code (numeric, so that unknown codes from a peer survive parsing).
    pub code: u16,
}

impl Status {
    /// The numeric code as it travels on the wire.
    #[inline]
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The status for a known numeric code.
    pub fn from_code(code: u16) -> Option<Status> {
        Some(match code {
            200 => Status::Ok,
            400 => Status::BadRequest,
            401 => Status::Unauthorized,
            403 => Status::IndexExpired,
            404 => Status::NotFound,
            406 => Status::NotAcceptable,
            501 => Status::NetworkError,
            _ => return None,
        })
    }
}

/// Why a record's content did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The content is longer than [`MAX_RECORD`].
    #[error("record of {0} bytes exceeds the {MAX_RECORD}-byte limit")]
    TooLong(usize),
    /// Fewer lines than the message needs.
    #[error("missing line: {0}")]
    MissingLine(&'static str),
    /// More lines than the message allows.
    #[error("unexpected extra line after {0}")]
    ExtraLine(&'static str),
    /// A decimal field is empty or holds something other than ASCII digits.
    #[error("{0} is not a decimal number")]
    NotDecimal(&'static str),
    /// A decimal field does not fit its type.
    #[error("{0} overflows its type")]
    Overflow(&'static str),
    /// A base64 field is not standard, padded base64.
    #[error("{0} is not valid base64")]
    BadBase64(&'static str),
    /// A base64 key decodes to something other than 8 bytes.
    #[error("{field} decodes to {len} bytes, not 8")]
    KeyLength {
        /// Which field.
        field: &'static str,
        /// Decoded length.
        len: usize,
    },
    /// A session id of 0 or ≥ 2^32.
    #[error("session id outside [1, 2^32)")]
    IdOutOfRange,
    /// A resume index of 0 (the first resume is 1).
    #[error("resume index must be at least 1")]
    IndexZero,
    /// The first line of a new-session request is not `0`.
    #[error("new-session request must start with a 0 line")]
    NotNewSession,
    /// The target server name has a character outside `[A-Za-z0-9_]`.
    #[error("target server name has characters outside [A-Za-z0-9_]")]
    BadTarget,
    /// The status line of a resume response is not 3 digits plus optional text.
    #[error("status line is not a 3-digit code with optional text")]
    BadCode,
}

/// Why a handshake did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The length prefix announced more than [`MAX_RECORD`] bytes.
    #[error("record of {0} bytes exceeds the {MAX_RECORD}-byte limit")]
    RecordTooLong(usize),
    /// The length prefix announced an empty record.
    #[error("empty record")]
    EmptyRecord,
    /// The record's content did not parse.
    #[error("malformed record: {0}")]
    Malformed(#[from] ParseError),
    /// The peer's DH public key is 0, 1 or not below P.
    #[error("peer public key is not usable")]
    InvalidPublicKey,
}

/// A failed handshake: the reason, and the status code that was answered (if
/// any) so that the caller can log it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handshake failed: {reason}")]
pub struct HandshakeError {
    /// What went wrong.
    pub reason: Reason,
    /// The status queued for the peer before closing, if one was.
    pub status: Option<Status>,
}

impl HandshakeError {
    /// A failure that is answered by closing the connection, with no status.
    pub fn close(reason: impl Into<Reason>) -> Self {
        HandshakeError {
            reason: reason.into(),
            status: None,
        }
    }
}

/// Appends one record: `u16` big-endian length, then `content`.
///
/// # Panics
/// If `content` is longer than [`MAX_RECORD`]; the encoders here never
/// produce such content, so this is a caller bug.
pub fn encode_record(content: &[u8], out: &mut Vec<u8>) {
    assert!(
        content.len() <= MAX_RECORD,
        "record content over MAX_RECORD"
    );
    out.reserve(2 + content.len());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(content);
}

/// Reassembles one length-prefixed record from arbitrary chunks, in a fixed
/// inline buffer (no allocation, at most `2 + MAX_RECORD` bytes held).
///
/// It never consumes bytes beyond the end of its record: whatever follows the
/// handshake record on the connection is stream data and belongs to the caller.
#[derive(Clone)]
pub struct RecordReader {
    buf: [u8; 2 + MAX_RECORD],
    filled: usize,
}

impl Default for RecordReader {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("filled", &self.filled)
            .finish()
    }
}

impl RecordReader {
    /// An empty reader.
    pub const fn new() -> Self {
        RecordReader {
            buf: [0; 2 + MAX_RECORD],
            filled: 0,
        }
    }

    /// The announced content length, once the prefix is in.
    fn announced(&self) -> Option<usize> {
        (self.filled >= 2).then(|| u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize)
    }

    /// Takes bytes from `data` up to the end of the record and returns how
    /// many it took. Once the prefix announces an empty record or one over
    /// [`MAX_RECORD`] it takes nothing more (see [`error`](Self::error)), so
    /// such a record is refused without buffering its content.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        if self.filled < 2 {
            let n = (2 - self.filled).min(data.len());
            self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            used = n;
        }
        match self.announced() {
            Some(len) if (1..=MAX_RECORD).contains(&len) => {
                let n = (2 + len - self.filled).min(data.len() - used);
                self.buf[self.filled..self.filled + n].copy_from_slice(&data[used..used + n]);
                self.filled += n;
                used + n
            }
            _ => used,
        }
    }

    /// Why the record is refused, once its prefix says it must be.
    pub fn error(&self) -> Option<Reason> {
        match self.announced()? {
            0 => Some(Reason::EmptyRecord),
            len if len > MAX_RECORD => Some(Reason::RecordTooLong(len)),
            _ => None,
        }
    }

    /// The record's content, once all of it has arrived.
    pub fn record(&self) -> Option<&[u8]> {
        let len = self.announced()?;
        (len != 0 && len <= MAX_RECORD && self.filled == 2 + len).then(|| &self.buf[2..self.filled])
    }

    /// Whether the record is complete or refused: no more bytes will be taken.
    pub fn is_finished(&self) -> bool {
        self.error().is_some() || self.record().is_some()
    }
}

/// Splits content into its `\n`-separated lines, naming each as it is taken
/// so that a missing one is reported by name.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(content: &'a [u8]) -> Result<Self, ParseError> {
        if content.len() > MAX_RECORD {
            return Err(ParseError::TooLong(content.len()));
        }
        Ok(Lines {
            rest: Some(content),
        })
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }

    fn take(&mut self, name: &'static str) -> Result<&'a [u8], ParseError> {
        self.next().ok_or(ParseError::MissingLine(name))
    }

    fn end(&mut self, after: &'static str) -> Result<(), ParseError> {
        match self.rest {
            None => Ok(()),
            Some(_) => Err(ParseError::ExtraLine(after)),
        }
    }
}

/// A non-empty run of ASCII digits as a `u64`; no sign, no spaces.
fn parse_u64(field: &'static str, s: &[u8]) -> Result<u64, ParseError> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::NotDecimal(field));
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as u64))
            .ok_or(ParseError::Overflow(field))
    })
}

fn parse_u32(field: &'static str, s: &[u8]) -> Result<u32, ParseError> {
    u32::try_from(parse_u64(field, s)?).map_err(|_| ParseError::Overflow(field))
}

/// A decimal `i32` with an optional leading `-`.
fn parse_i32(field: &'static str, s: &[u8]) -> Result<i32, ParseError> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let magnitude = parse_u64(field, digits)? as i128;
    let value = if neg { -magnitude } else { magnitude };
    i32::try_from(value).map_err(|_| ParseError::Overflow(field))
}

/// A session id: a decimal in `[1, 2^32)`.
fn parse_id(s: &[u8]) -> Result<u32, ParseError> {
    match parse_u64("id", s)? {
        0 => Err(ParseError::IdOutOfRange),
        v => u32::try_from(v).map_err(|_| ParseError::IdOutOfRange),
    }
}

/// Standard padded base64 of exactly 8 bytes, read as a little-endian u64.
fn parse_b64_u64(field: &'static str, s: &[u8]) -> Result<u64, ParseError> {
    // Content is bounded by MAX_RECORD, so this allocation is small.
    let bytes = B64.decode(s).map_err(|_| ParseError::BadBase64(field))?;
    let arr: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ParseError::KeyLength {
            field,
            len: bytes.len(),
        })?;
    Ok(u64::from_le_bytes(arr))
}

fn push_b64_u64(out: &mut String, v: u64) {
    B64.encode_string(v.to_le_bytes(), out);
}

/// Whether `s` is a valid target server name: `[A-Za-z0-9_]*`.
pub fn is_valid_target(s: &[u8]) -> bool {
    s.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
}

impl NewConnReq {
    /// Parses `0\nb64(key)[\ntarget[\nflag]]`. An empty target line reads as
    /// no target.
    pub fn parse(content: &[u8]) -> Result<Self, ParseError> {
        let mut lines = Lines::new(content)?;
        if lines.take("id")? != b"0" {
            return Err(ParseError::NotNewSession);
        }
        let public_key = parse_b64_u64("key", lines.take("key")?)?;
        let target = match lines.next() {
            None => None,
            Some(t) if !is_valid_target(t) => return Err(ParseError::BadTarget),
            Some([]) => None,
            // Valid targets are ASCII, so this conversion cannot fail.
            Some(t) => Some(String::from_utf8_lossy(t).into_owned()),
        };
        let flag = match lines.next() {
            None => None,
            Some(f) => Some(parse_i32("flag", f)?),
        };
        lines.end("flag")?;
        Ok(NewConnReq {
            public_key,
            target,
            flag,
        })
    }

    /// Encodes the content. The target line is written when there is a
    /// target or a flag (then possibly empty, to keep the flag on line 4).
    ///
    /// The target must satisfy [`is_valid_target`]; the encoder does not check.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(40);
        s.push_str("0\n");
        push_b64_u64(&mut s, self.public_key);
        if self.target.is_some() || self.flag.is_some() {
            s.push('\n');
            s.push_str(self.target.as_deref().unwrap_or(""));
        }
        if let Some(flag) = self.flag {
            let _ = write!(s, "\n{flag}");
        }
        s.into_bytes()
    }
}

impl NewConnResp {
    /// Parses `id\nb64(key)`; the id must lie in `[1, 2^32)`.
    pub fn parse(content: &[u8]) -> Result<Self, ParseError> {
        let mut lines = Lines::new(content)?;
        let id = parse_id(lines.take("id")?)?;
        let public_key = parse_b64_u64("key", lines.take("key")?)?;
        lines.end("key")?;
        Ok(NewConnResp { id, public_key })
    }

    /// Encodes the content.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(24);
        let _ = writeln!(s, "{}", self.id);
        push_b64_u64(&mut s, self.public_key);
        s.into_bytes()
    }
}

impl ReuseConnReq {
    /// Parses `id\nindex\nreceived\nb64(sum)`.
    pub fn parse(content: &[u8]) -> Result<Self, ParseError> {
        let mut lines = Lines::new(content)?;
        let id = parse_id(lines.take("id")?)?;
        let index = parse_u64("index", lines.take("index")?)?;
        if index == 0 {
            return Err(ParseError::IndexZero);
        }
        let received = parse_u32("received", lines.take("received")?)?;
        let sum = parse_b64_u64("sum", lines.take("sum")?)?;
        lines.end("sum")?;
        Ok(ReuseConnReq {
            id,
            index,
            received,
            sum,
        })
    }

    /// Encodes the content.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(48);
        let _ = write!(s, "{}\n{}\n{}\n", self.id, self.index, self.received);
        push_b64_u64(&mut s, self.sum);
        s.into_bytes()
    }

    /// The request's MAC: `hmac64_md5(hashkey("id\nindex\nreceived\n"), secret)`.
    pub fn compute_sum(id: u32, index: u64, received: u32, secret: u64) -> u64 {
        // Longest text: 10 + 20 + 10 digits and 3 newlines; fits on the stack.
        let mut buf = [0u8; 48];
        let mut w = &mut buf[..];
        let _ = std::io::Write::write_fmt(&mut w, format_args!("{id}\n{index}\n{received}\n"));
        let len = 48 - w.len();
        hmac64_md5(hashkey(&buf[..len]), secret)
    }

    /// A request for session `id`, signed with its `secret`.
    pub fn signed(id: u32, index: u64, received: u32, secret: u64) -> Self {
        ReuseConnReq {
            id,
            index,
            received,
            sum: Self::compute_sum(id, index, received, secret),
        }
    }

    /// Whether `sum` was made with `secret`. The comparison has no early exit.
    pub fn verify(&self, secret: u64) -> bool {
        let expected = Self::compute_sum(self.id, self.index, self.received, secret);
        std::hint::black_box(expected ^ self.sum) == 0
    }
}

impl ReuseConnResp {
    /// Parses `received\ncode`, where the code line is 3 digits optionally
    /// followed by a space and text (`200` and `200 OK` both read as 200).
    pub fn parse(content: &[u8]) -> Result<Self, ParseError> {
        let mut lines = Lines::new(content)?;
        let received = parse_u32("received", lines.take("received")?)?;
        let line = lines.take("code")?;
        lines.end("code")?;
        let (digits, text) = line.split_at(line.len().min(3));
        if digits.len() != 3 || !(text.is_empty() || text[0] == b' ') {
            return Err(ParseError::BadCode);
        }
        let code = parse_u64("code", digits).map_err(|_| ParseError::BadCode)? as u16;
        Ok(ReuseConnResp { received, code })
    }

    /// Encodes the content: only the digits of the code, as the reference
    /// client parses it as a bare integer.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{:03}", self.received, self.code).into_bytes()
    }
}
