//! SCP handshake records: the four messages, their strict parsers and encoders,
//! and the `u16`-big-endian record framing around them.
//!
//! Parsing is strict: a decimal that overflows its type, a missing line, bad
//! base64, a key that is not exactly 8 bytes, an id outside `[1, 2^32)` or a
//! record over [`MAX_RECORD`] bytes is an error value, never a panic.

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
