//! The server side of a WebSocket (RFC 6455), sans-IO: the HTTP/1.1
//! upgrade, then frames in both directions.
//!
//! [`WsConn`] is one connection. Received bytes go to
//! [`WsConn::handle_bytes`], which answers the upgrade, unmasks the payload
//! of binary messages in place at the front of the caller's buffer (no copy
//! and no per-message buffer: a message streams through, whatever its size),
//! answers pings and closes, and reports how the connection ended. Bytes to
//! send come from [`WsConn::fill`]: the queued wire bytes (the upgrade's
//! answer, pongs, a close) and the caller's outgoing stream cut into binary
//! messages; [`WsConn::sent`] says how much of it went out.
//!
//! The request is parsed by `httparse`. The framing is ours: the crates that
//! frame WebSockets either read from an `io::Read` stream and hand out owned
//! messages, or are tied to an async codec; neither unmasks into the
//! caller's receive buffer, streams a message without holding it whole, or
//! lets the caller keep the outgoing bytes where they already are (the
//! replay window) until a send completes. What is ours is small: a frame
//! header is at most 14 bytes, and every rule of RFC 6455 section 5 that a
//! server checks is here and tested below.
//!
//! Memory per connection is bounded whatever the peer sends: the upgrade
//! request up to [`WsSettings::max_request`], one control frame's payload
//! (125 bytes), the latest unanswered ping, and the wire bytes queued
//! (the answer and one close frame, or the rest of a frame header a short
//! send left).
//!
//! Only binary messages are carried: both modes of the gate carry bytes. A
//! text message is closed with 1003.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to a client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest header of a frame a client sends (2 + 8 length + 4 mask).
const MAX_HEADER: usize = 14;
/// Largest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// Close codes (RFC 6455 section 7.4.1).
pub mod code {
    /// The purpose of the connection is fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown, or the session ended).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error (unmasked frame, bad opcode, bad fragmentation).
    pub const PROTOCOL: u16 = 1002;
    /// A kind of data the endpoint does not accept (text messages here).
    pub const UNSUPPORTED: u16 = 1003;
    /// Data inconsistent with its type (a close reason that is not UTF-8).
    pub const INVALID: u16 = 1007;
    /// A rule of the endpoint was broken (a session kicked).
    pub const POLICY: u16 = 1008;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// The server cannot take the connection now (a limit): try later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server is a gateway and its upstream failed.
    pub const BAD_GATEWAY: u16 = 1014;
}

/// The settings of a WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// The request path the upgrade must name (the query is ignored);
    /// anything else is answered 404.
    pub path: String,
    /// Origins allowed to connect (compared without regard to case), as
    /// browsers send them (`https://example.com`). Empty: any. A request
    /// with no `Origin` header (not from a browser) is always allowed:
    /// the check protects browsers' users from other sites' pages.
    pub origins: Vec<String>,
    /// The largest message a client may send, in bytes; larger is closed
    /// with 1009.
    pub max_message: usize,
    /// The largest upgrade request, in bytes; larger is answered 431.
    pub max_request: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            path: "/".into(),
            origins: Vec::new(),
            max_message: 1 << 20,
            max_request: 8192,
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID);
    STANDARD.encode(h.finalize())
}

/// What an upgrade request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The request is not complete yet.
    NeedMore,
    /// Accepted: write `response`; the request took `used` bytes.
    Accepted {
        /// The 101 answer.
        response: Vec<u8>,
        /// Bytes of the request (what follows is frames).
        used: usize,
    },
    /// Refused: write `response` (an HTTP error), then close.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The whole answer.
        response: Vec<u8>,
        /// Why, for a log line.
        why: String,
    },
}

fn refuse(status: u16, why: &str, extra: &str) -> Upgrade {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status} {text}\r\n{extra}Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Upgrade::Refused {
        status,
        response,
        why: why.to_string(),
    }
}

/// Whether a comma-separated header value has `token` (any case).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Reads an upgrade request from `buf` (everything received so far).
pub fn read_upgrade(buf: &[u8], s: &WsSettings) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= s.max_request => {
            return refuse(431, "request too large", "");
        }
        Ok(httparse::Status::Partial) => return Upgrade::NeedMore,
        Ok(httparse::Status::Complete(n)) if n > s.max_request => {
            return refuse(431, "request too large", "");
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return refuse(431, "too many headers", ""),
        Err(e) => return refuse(400, &format!("malformed request: {e}"), ""),
    };
    if req.method != Some("GET") {
        return refuse(405, "only GET upgrades to a WebSocket", "Allow: GET\r\n");
    }
    if req.version != Some(1) {
        return refuse(400, "HTTP/1.1 required", "");
    }
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != s.path {
        return refuse(404, "no WebSocket here", "");
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("Host").is_none() {
        return refuse(400, "Host header missing", "");
    }
    let upgrade = header("Upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection = header("Connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return refuse(
            426,
            "this address speaks WebSocket only",
            "Upgrade: websocket\r\n",
        );
    }
    if header("Sec-WebSocket-Version").map(|v| v.trim_ascii()) != Some(b"13") {
        return refuse(
            426,
            "WebSocket version 13 required",
            "Sec-WebSocket-Version: 13\r\n",
        );
    }
    let key = match header("Sec-WebSocket-Key").and_then(|k| std::str::from_utf8(k).ok()) {
        Some(k) if STANDARD.decode(k.trim()).is_ok_and(|d| d.len() == 16) => k,
        _ => return refuse(400, "Sec-WebSocket-Key missing or invalid", ""),
    };
    if let Some(origin) = header("Origin") {
        let allowed = s.origins.is_empty()
            || s.origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.trim_ascii()));
        if !allowed {
            return refuse(403, "origin not allowed", "");
        }
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes();
    Upgrade::Accepted { response, used }
}

/// Appends a server frame's header (FIN set, unmasked) to `out`.
pub fn encode_header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Opcodes.
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// How the outgoing stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutMode {
    /// Each send is one message of whatever bytes are ready (a byte
    /// stream, such as SCP, that the client reassembles).
    Stream,
    /// The stream is u16 big-endian length-prefixed packets; each packet,
    /// with its length, is one message (what skynet's WebSocket gate
    /// clients expect).
    Packets,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The upgrade was refused with an HTTP status.
    Refused {
        /// The status.
        status: u16,
        /// Why.
        why: String,
    },
    /// The client broke a rule: closed with `code`.
    Failed {
        /// The close code sent.
        code: u16,
        /// Why.
        why: String,
    },
    /// The client closed (with its code, if it gave one); the close was
    /// answered.
    Closed(Option<u16>),
}

/// What one [`WsConn::handle_bytes`] call came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Message payload now at the front of the buffer.
    pub payload: usize,
    /// The upgrade was accepted during this call.
    pub upgraded: bool,
    /// The connection ended during this call: send what
    /// [`WsConn::fill`] gives, then close it.
    pub ended: Option<Ended>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Upgrading,
    Open,
    /// Ended; nothing more is read.
    Done,
}

/// The frame being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    left: u64,
    mask: [u8; 4],
    /// Payload bytes already unmasked (position in the mask).
    at: usize,
}

/// One WebSocket connection, server side.
#[derive(Debug)]
pub struct WsConn {
    phase: Phase,
    mode: OutMode,
    max_message: usize,
    /// The upgrade request so far.
    request: Vec<u8>,
    hdr: [u8; MAX_HEADER],
    hdr_len: usize,
    frame: Option<Frame>,
    /// A binary message is in progress, with this many bytes so far.
    message: Option<u64>,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    /// Wire bytes that go first (the rest of a frame header a short send
    /// left, and queued bytes taken at a message boundary).
    wire: Vec<u8>,
    /// Wire bytes waiting for a message boundary (answers, a close).
    queued: Vec<u8>,
    /// The latest ping not yet answered.
    pong: Option<Vec<u8>>,
    /// Payload bytes still owed in the outgoing message that is open.
    left: usize,
    /// A close frame is queued: no more messages.
    closing: bool,
    /// The send in flight: its wire bytes, then its payload bytes.
    flight: (usize, usize),
}

impl WsConn {
    /// A connection that starts with the upgrade, sending in `mode`.
    pub fn new(mode: OutMode, max_message: usize) -> Self {
        WsConn {
            phase: Phase::Upgrading,
            mode,
            max_message,
            request: Vec::new(),
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            frame: None,
            message: None,
            control: Vec::new(),
            wire: Vec::new(),
            queued: Vec::new(),
            pong: None,
            left: 0,
            closing: false,
            flight: (0, 0),
        }
    }

    /// Whether the upgrade is done and the connection open.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the connection ended (nothing more is read).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// How many bytes the connection may receive now: the rest of the
    /// request's limit while upgrading (`settings.max_request`).
    pub fn request_room(&self, s: &WsSettings) -> usize {
        s.max_request.saturating_sub(self.request.len())
    }

    /// Heap memory held.
    pub fn memory_bytes(&self) -> usize {
        self.request.capacity()
            + self.control.capacity()
            + self.wire.capacity()
            + self.queued.capacity()
            + self.pong.as_ref().map_or(0, Vec::capacity)
    }

    /// Received bytes. Message payload is unmasked in place and moved to
    /// the front of `data`: `data[..read.payload]`.
    pub fn handle_bytes(&mut self, data: &mut [u8], s: &WsSettings) -> Read {
        let mut read = Read::default();
        let mut start = 0;
        if self.phase == Phase::Upgrading {
            let before = self.request.len();
            let take = data.len().min(s.max_request.saturating_sub(before).max(1));
            self.request.extend_from_slice(&data[..take]);
            match read_upgrade(&self.request, s) {
                Upgrade::NeedMore if take < data.len() => {
                    self.end_refused(431, "request too large".into(), &mut read);
                    return read;
                }
                Upgrade::NeedMore => return read,
                Upgrade::Refused {
                    status,
                    response,
                    why,
                } => {
                    self.queued = response;
                    self.end_refused(status, why, &mut read);
                    return read;
                }
                Upgrade::Accepted { response, used } => {
                    // The end of the request is in this chunk (the last
                    // one said it was incomplete), so what follows it is
                    // the tail of `data`.
                    start = used - before;
                    self.wire = response;
                    self.request = Vec::new();
                    self.phase = Phase::Open;
                    read.upgraded = true;
                }
            }
        }
        if self.phase != Phase::Open {
            return read;
        }
        match self.frames(data, start) {
            Ok(w) => read.payload = w,
            Err((w, ended)) => {
                read.payload = w;
                self.phase = Phase::Done;
                self.control = Vec::new();
                read.ended = Some(ended);
            }
        }
        read
    }

    fn end_refused(&mut self, status: u16, why: String, read: &mut Read) {
        if self.queued.is_empty() {
            if let Upgrade::Refused { response, .. } = refuse(status, &why, "") {
                self.queued = response;
            }
        }
        self.request = Vec::new();
        self.phase = Phase::Done;
        self.closing = true;
        read.ended = Some(Ended::Refused { status, why });
    }

    /// Fails the connection with `code`.
    fn fail(&mut self, code: u16, why: &str) -> Ended {
        self.close(code);
        Ended::Failed {
            code,
            why: why.to_string(),
        }
    }

    /// Reads frames from `data[r..]`; payload goes to `data[..w]`. Returns
    /// `w`, or `w` and how the connection ended.
    fn frames(&mut self, data: &mut [u8], mut r: usize) -> Result<usize, (usize, Ended)> {
        let mut w = 0;
        loop {
            if self.frame.is_none() {
                if r == data.len() {
                    return Ok(w);
                }
                match self.header(data, &mut r) {
                    Ok(true) => {}
                    Ok(false) => return Ok(w),
                    Err(e) => return Err((w, e)),
                }
            }
            let Some(f) = self.frame.as_mut() else {
                continue;
            };
            let n = (data.len() - r).min(f.left.min(usize::MAX as u64) as usize);
            if f.opcode == BINARY || f.opcode == CONT {
                data.copy_within(r..r + n, w);
                unmask(&mut data[w..w + n], f.mask, f.at);
                w += n;
            } else {
                let start = self.control.len();
                self.control.extend_from_slice(&data[r..r + n]);
                unmask(&mut self.control[start..], f.mask, f.at);
            }
            r += n;
            f.at += n;
            f.left -= n as u64;
            if f.left > 0 {
                return Ok(w);
            }
            let (opcode, fin) = (f.opcode, f.fin);
            self.frame = None;
            match opcode {
                BINARY | CONT if fin => self.message = None,
                BINARY | CONT => {}
                PING => {
                    // Only the latest ping is answered (RFC 6455 5.5.3):
                    // a ping flood holds one payload.
                    self.pong = Some(std::mem::take(&mut self.control));
                }
                PONG => self.control.clear(),
                _ => return Err((w, self.closed_by_peer())),
            }
        }
    }

    /// Reads a frame header from `data[*r..]`; true once it is complete
    /// and `self.frame` set.
    fn header(&mut self, data: &[u8], r: &mut usize) -> Result<bool, Ended> {
        loop {
            let need = if self.hdr_len < 2 {
                2
            } else {
                let ext = match self.hdr[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                2 + ext + 4
            };
            if self.hdr_len == 2 && self.hdr[1] & 0x80 == 0 {
                return Err(self.fail(code::PROTOCOL, "unmasked client frame"));
            }
            if self.hdr_len == need {
                break;
            }
            if *r == data.len() {
                return Ok(false);
            }
            let n = (need - self.hdr_len).min(data.len() - *r);
            self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[*r..*r + n]);
            self.hdr_len += n;
            *r += n;
        }
        let h = &self.hdr[..self.hdr_len];
        let (fin, rsv, opcode) = (h[0] & 0x80 != 0, h[0] & 0x70, h[0] & 0x0f);
        let (len, mask_at) = match h[1] & 0x7f {
            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
            127 => (
                u64::from_be_bytes(h[2..10].try_into().unwrap_or([0; 8])),
                10,
            ),
            n => (n as u64, 2),
        };
        let mask: [u8; 4] = h[mask_at..mask_at + 4].try_into().unwrap_or([0; 4]);
        self.hdr_len = 0;
        if rsv != 0 {
            return Err(self.fail(code::PROTOCOL, "reserved bits set"));
        }
        if len >> 63 != 0 {
            return Err(self.fail(code::PROTOCOL, "frame length out of range"));
        }
        match opcode {
            CLOSE | PING | PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(self.fail(code::PROTOCOL, "fragmented or long control frame"));
                }
            }
            TEXT => return Err(self.fail(code::UNSUPPORTED, "text messages are not carried")),
            BINARY | CONT => {
                let so_far = match (opcode, self.message) {
                    (BINARY, None) | (CONT, Some(_)) => self.message.unwrap_or(0),
                    (BINARY, Some(_)) => {
                        return Err(
                            self.fail(code::PROTOCOL, "new message inside a fragmented one")
                        );
                    }
                    _ => return Err(self.fail(code::PROTOCOL, "continuation with no message")),
                };
                let total = so_far.saturating_add(len);
                if total > self.max_message as u64 {
                    return Err(self.fail(code::TOO_BIG, "message larger than max_message"));
                }
                self.message = Some(total);
            }
            _ => return Err(self.fail(code::PROTOCOL, "unknown opcode")),
        }
        self.frame = Some(Frame {
            opcode,
            fin,
            left: len,
            mask,
            at: 0,
        });
        Ok(true)
    }

    /// The client's close frame (its payload in `self.control`).
    fn closed_by_peer(&mut self) -> Ended {
        let p = std::mem::take(&mut self.control);
        if p.is_empty() {
            self.close(code::NORMAL);
            return Ended::Closed(None);
        }
        if p.len() == 1 {
            return self.fail(code::PROTOCOL, "one-byte close payload");
        }
        let c = u16::from_be_bytes([p[0], p[1]]);
        let valid = matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
        if !valid {
            return self.fail(code::PROTOCOL, "invalid close code");
        }
        if std::str::from_utf8(&p[2..]).is_err() {
            return self.fail(code::INVALID, "close reason is not UTF-8");
        }
        self.close(c);
        Ended::Closed(Some(c))
    }

    /// Queues a close frame with `code` (once): nothing is read after it
    /// and no message starts after it.
    pub fn close(&mut self, code: u16) {
        self.close_with(code, "");
    }

    /// [`close`](Self::close) with a reason for the client (cut to the
    /// 123 bytes a close frame has room for, at a character boundary).
    pub fn close_with(&mut self, code: u16, reason: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        let upgraded = self.phase != Phase::Upgrading;
        self.phase = Phase::Done;
        self.request = Vec::new();
        if !upgraded {
            // There is no WebSocket to close yet.
            return;
        }
        let mut cut = reason.len().min(MAX_CONTROL - 2);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        encode_header(CLOSE, 2 + cut, &mut self.queued);
        self.queued.extend_from_slice(&code.to_be_bytes());
        self.queued.extend_from_slice(&reason.as_bytes()[..cut]);
    }

    /// Queues `payload` as one binary message (a handshake answer that
    /// goes before the stream).
    pub fn push_message(&mut self, payload: &[u8]) {
        if self.closing || payload.is_empty() {
            return;
        }
        encode_header(BINARY, payload.len(), &mut self.queued);
        self.queued.extend_from_slice(payload);
    }

    /// Whether a close was queued or sent.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Whether everything queued went out and no message is half sent:
    /// a closing connection may now be closed.
    pub fn flushed(&self) -> bool {
        self.wire.is_empty() && self.queued.is_empty() && self.pong.is_none() && self.left == 0
    }

    /// Whether a message is half sent (its payload is owed before any
    /// other frame may go).
    pub fn mid_message(&self) -> bool {
        self.left > 0
    }

    /// Appends the next bytes to send to `out` (cleared first): queued wire
    /// bytes, then as much of `pieces` (the outgoing stream, in order) as
    /// fits in `cap` payload bytes, framed. Returns the payload bytes taken
    /// from `pieces`; call [`sent`](Self::sent) when the send completes.
    pub fn fill(&mut self, pieces: &[&[u8]], cap: usize, out: &mut Vec<u8>) -> usize {
        out.clear();
        out.append(&mut self.wire);
        if self.left == 0 {
            if let Some(p) = self.pong.take() {
                if !self.closing {
                    encode_header(PONG, p.len(), out);
                    out.extend_from_slice(&p);
                }
            }
            out.append(&mut self.queued);
        }
        let avail: usize = pieces.iter().map(|p| p.len()).sum();
        if self.left == 0 && !self.closing && avail > 0 {
            let len = match self.mode {
                OutMode::Stream => avail.min(cap),
                OutMode::Packets => {
                    let mut head = pieces.iter().flat_map(|p| p.iter()).take(2);
                    match (head.next(), head.next()) {
                        (Some(&a), Some(&b)) => 2 + u16::from_be_bytes([a, b]) as usize,
                        _ => 0,
                    }
                }
            };
            if len > 0 {
                encode_header(BINARY, len, out);
                self.left = len;
            }
        }
        let wire = out.len();
        let mut take = self.left.min(avail).min(cap);
        let payload = take;
        for p in pieces {
            if take == 0 {
                break;
            }
            let n = p.len().min(take);
            out.extend_from_slice(&p[..n]);
            take -= n;
        }
        self.left -= payload;
        self.flight = (wire, payload);
        payload
    }

    /// The send of `out` (from [`fill`](Self::fill)) wrote `n` bytes.
    /// Returns how many bytes of the outgoing stream went out; the rest of
    /// the send goes first next time.
    pub fn sent(&mut self, out: &[u8], n: usize) -> usize {
        let (wire, payload) = std::mem::take(&mut self.flight);
        if n < wire {
            let mut rest = out[n..wire].to_vec();
            rest.append(&mut self.wire);
            self.wire = rest;
        }
        let done = n.saturating_sub(wire).min(payload);
        // What did not go out is still owed in the same message.
        self.left += payload - done;
        done
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4], at: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(at + i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://game.example\r\n\r\n";

    fn settings() -> WsSettings {
        WsSettings {
            path: "/ws".into(),
            origins: vec!["https://GAME.example".into()],
            max_message: 1000,
            max_request: 1024,
        }
    }

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn open() -> WsConn {
        let mut c = WsConn::new(OutMode::Stream, 1000);
        let mut req = REQ.as_bytes().to_vec();
        let r = c.handle_bytes(&mut req, &settings());
        assert!(r.upgraded);
        let mut out = Vec::new();
        c.fill(&[], 100, &mut out);
        assert!(out.starts_with(b"HTTP/1.1 101"));
        let n = out.len();
        c.sent(&out, n);
        c
    }

    /// Feeds `bytes` one at a time; returns the payload and the end.
    fn feed(c: &mut WsConn, bytes: &[u8]) -> (Vec<u8>, Option<Ended>) {
        let mut payload = Vec::new();
        for &b in bytes {
            let mut one = [b];
            let r = c.handle_bytes(&mut one, &settings());
            payload.extend_from_slice(&one[..r.payload]);
            if r.ended.is_some() {
                return (payload, r.ended);
            }
        }
        (payload, None)
    }

    fn sent_all(c: &mut WsConn) -> Vec<u8> {
        let mut out = Vec::new();
        c.fill(&[], 100, &mut out);
        c.sent(&out, out.len());
        out
    }

    #[test]
    fn accept_key_matches_the_rfc() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_byte_by_byte_with_frames_behind_it() {
        let mut c = WsConn::new(OutMode::Stream, 1000);
        let mut bytes = REQ.as_bytes().to_vec();
        bytes.extend(frame(0x82, b"hello", [1, 2, 3, 4]));
        let mut payload = Vec::new();
        let mut upgraded = 0;
        for b in &bytes {
            let mut one = [*b];
            let r = c.handle_bytes(&mut one, &settings());
            upgraded += r.upgraded as usize;
            payload.extend_from_slice(&one[..r.payload]);
        }
        assert_eq!(upgraded, 1);
        assert_eq!(payload, b"hello");
        // All at once: the frame behind the request is read too.
        let mut c = WsConn::new(OutMode::Stream, 1000);
        let mut all = bytes.clone();
        let r = c.handle_bytes(&mut all, &settings());
        assert!(r.upgraded);
        assert_eq!(&all[..r.payload], b"hello");
        let out = sent_all(&mut c);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    fn refused(req: &str) -> u16 {
        let mut c = WsConn::new(OutMode::Stream, 1000);
        let mut bytes = req.as_bytes().to_vec();
        let r = c.handle_bytes(&mut bytes, &settings());
        let Some(Ended::Refused { status, .. }) = r.ended else {
            panic!("not refused: {r:?}");
        };
        let out = sent_all(&mut c);
        assert!(
            out.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(c.flushed() && c.is_done());
        status
    }

    #[test]
    fn bad_upgrades_get_http_errors() {
        assert_eq!(refused("GARBAGE\0\r\n\r\n"), 400);
        assert_eq!(refused(&REQ.replace("GET", "POST")), 405);
        assert_eq!(refused(&REQ.replace("/ws", "/other")), 404);
        assert_eq!(refused(&REQ.replace("Upgrade: websocket\r\n", "")), 426);
        assert_eq!(
            refused("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            426,
            "plain HTTP"
        );
        assert_eq!(refused(&REQ.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            refused(&REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc")),
            400
        );
        assert_eq!(refused(&REQ.replace("Host: x\r\n", "")), 400);
        assert_eq!(refused(&REQ.replace("game.example", "evil.example")), 403);
        let big = REQ.replace("Host: x", &format!("Host: {}", "x".repeat(2000)));
        assert_eq!(refused(&big), 431);
        // A query string is not part of the path; no Origin is allowed.
        let mut c = WsConn::new(OutMode::Stream, 1000);
        let ok = REQ
            .replace("/ws", "/ws?room=1")
            .replace("Origin: https://game.example\r\n", "");
        assert!(c.handle_bytes(&mut ok.into_bytes(), &settings()).upgraded);
    }

    #[test]
    fn slow_oversized_request_is_refused_at_the_limit() {
        let mut c = WsConn::new(OutMode::Stream, 1000);
        let s = settings();
        let mut ended = None;
        for _ in 0..2000 {
            let mut b = *b"x";
            if let Some(e) = c.handle_bytes(&mut b, &s).ended {
                ended = Some(e);
                break;
            }
            assert!(c.memory_bytes() <= 2 * s.max_request);
        }
        assert!(matches!(ended, Some(Ended::Refused { status: 431, .. })));
    }

    #[test]
    fn fragmented_message_and_interleaved_ping() {
        let mut c = open();
        let mut bytes = frame(0x02, b"frag", [9, 8, 7, 6]);
        bytes.extend(frame(0x89, b"hi", [5, 5, 5, 5]));
        bytes.extend(frame(0x00, b"men", [1, 1, 1, 1]));
        bytes.extend(frame(0x80, b"ted", [0, 0, 0, 0]));
        bytes.extend(frame(0x82, b"", [3, 3, 3, 3]));
        let (payload, end) = feed(&mut c, &bytes);
        assert_eq!(payload, b"fragmented");
        assert_eq!(end, None);
        assert_eq!(sent_all(&mut c), [0x8A, 2, b'h', b'i']);
    }

    #[test]
    fn only_the_latest_ping_is_answered() {
        let mut c = open();
        let mut bytes = Vec::new();
        for i in 0..100u8 {
            bytes.extend(frame(0x89, &[i; 100], [i, 1, 2, 3]));
        }
        assert_eq!(c.handle_bytes(&mut bytes, &settings()).payload, 0);
        assert!(c.memory_bytes() < 1024);
        let out = sent_all(&mut c);
        assert_eq!(out.len(), 102);
        assert_eq!(out[2], 99);
    }

    fn fails(bytes: &[u8]) -> (u16, Vec<u8>) {
        let mut c = open();
        let (_, end) = feed(&mut c, bytes);
        let Some(Ended::Failed { code, .. }) = end else {
            panic!("not failed: {end:?}");
        };
        let out = sent_all(&mut c);
        assert!(c.flushed() && c.is_done());
        (code, out)
    }

    #[test]
    fn bad_frames_close_with_their_codes() {
        let (code, out) = fails(&[0x82, 0x05, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(code, code::PROTOCOL, "unmasked");
        assert_eq!(out, [0x88, 2, 0x03, 0xEA]);
        assert_eq!(fails(&frame(0x81, b"text", [1; 4])).0, code::UNSUPPORTED);
        assert_eq!(fails(&frame(0xC2, b"x", [1; 4])).0, code::PROTOCOL, "rsv");
        assert_eq!(
            fails(&frame(0x83, b"x", [1; 4])).0,
            code::PROTOCOL,
            "opcode"
        );
        assert_eq!(fails(&frame(0x80, b"x", [1; 4])).0, code::PROTOCOL, "cont");
        assert_eq!(
            fails(&frame(0x09, b"x", [1; 4])).0,
            code::PROTOCOL,
            "frag ping"
        );
        assert_eq!(
            fails(&frame(0x89, &[0; 126], [1; 4])).0,
            code::PROTOCOL,
            "long ping"
        );
        let mut two = frame(0x02, b"a", [1; 4]);
        two.extend(frame(0x82, b"b", [1; 4]));
        assert_eq!(fails(&two).0, code::PROTOCOL, "new message inside one");
        assert_eq!(fails(&frame(0x82, &[0; 1001], [1; 4])).0, code::TOO_BIG);
        let mut split = frame(0x02, &[0; 600], [1; 4]);
        split.extend(frame(0x80, &[0; 401], [1; 4]));
        assert_eq!(fails(&split).0, code::TOO_BIG, "fragments add up");
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(fails(&huge).0, code::PROTOCOL, "length msb");
        assert_eq!(fails(&frame(0x88, &[3], [1; 4])).0, code::PROTOCOL);
        assert_eq!(fails(&frame(0x88, &[3, 0xED], [1; 4])).0, code::PROTOCOL);
        assert_eq!(
            fails(&frame(0x88, &[3, 0xE8, 0xFF], [1; 4])).0,
            code::INVALID
        );
    }

    #[test]
    fn a_close_carries_its_reason_cut_to_fit() {
        let mut c = open();
        c.close_with(code::GOING_AWAY, "idle timeout");
        let out = sent_all(&mut c);
        assert_eq!(&out[..4], &[0x88, 14, 0x03, 0xe9]);
        assert_eq!(&out[4..], b"idle timeout");
        // 200 bytes of two-byte characters: cut to at most 123 bytes, whole
        // characters.
        let mut c = open();
        c.close_with(code::POLICY, &"é".repeat(100));
        let out = sent_all(&mut c);
        assert_eq!(out[1], 2 + 122);
        assert_eq!(&out[2..4], &1008u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        // Before the upgrade there is nothing to close with a frame.
        let mut c = WsConn::new(OutMode::Stream, 1000);
        c.close_with(code::GOING_AWAY, "x");
        assert!(c.closing());
        assert!(sent_all(&mut c).is_empty());
    }

    #[test]
    fn close_handshake_echoes_the_code_and_ignores_what_follows() {
        let mut c = open();
        let mut bytes = frame(0x82, b"ab", [1; 4]);
        bytes.extend(frame(0x88, &[0x0F, 0xA0, b'b', b'y', b'e'], [2; 4]));
        bytes.extend(frame(0x82, b"late", [1; 4]));
        let r = c.handle_bytes(&mut bytes, &settings());
        assert_eq!(&bytes[..r.payload], b"ab");
        assert_eq!(r.ended, Some(Ended::Closed(Some(4000))));
        assert_eq!(sent_all(&mut c), [0x88, 2, 0x0F, 0xA0]);
        let mut more = frame(0x88, &[], [1; 4]);
        assert_eq!(c.handle_bytes(&mut more, &settings()), Read::default());
        assert!(sent_all(&mut c).is_empty(), "one close only");
        let mut c = open();
        let (_, end) = feed(&mut c, &frame(0x88, &[], [1; 4]));
        assert_eq!(end, Some(Ended::Closed(None)));
        assert_eq!(sent_all(&mut c), [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn stream_mode_frames_and_short_sends() {
        let mut c = open();
        c.push_message(b"ans");
        let mut out = Vec::new();
        let took = c.fill(&[b"abc", b"defg"], 5, &mut out);
        assert_eq!(took, 5);
        assert_eq!(out, b"\x82\x03ans\x82\x05abcde");
        // Only part of the second header went out.
        assert_eq!(c.sent(&out.clone(), 6), 0);
        assert!(c.mid_message());
        // The stream still starts at "abc": the rest of the header, then
        // the owed payload, and no new header.
        let took = c.fill(&[b"abc", b"defg"], 100, &mut out);
        assert_eq!(took, 5);
        assert_eq!(out, b"\x05abcde");
        assert_eq!(c.sent(&out.clone(), 3), 2);
        let took = c.fill(&[b"c", b"defg"], 100, &mut out);
        assert_eq!(out, b"cde");
        assert_eq!(took, 3);
        assert_eq!(c.sent(&out.clone(), 3), 3);
        assert!(!c.mid_message());
        let took = c.fill(&[b"fg"], 100, &mut out);
        assert_eq!((took, out.as_slice()), (2, &b"\x82\x02fg"[..]));
        c.sent(&out.clone(), 4);
        // Long messages use the longer lengths.
        let big = vec![7u8; 70000];
        c.fill(&[&big], 1 << 20, &mut out);
        assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        c.sent(&out.clone(), out.len());
        c.fill(&[&big[..300]], 1 << 20, &mut out);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
    }

    #[test]
    fn packets_mode_sends_one_message_per_packet() {
        let mut c = WsConn::new(OutMode::Packets, 1000);
        let mut req = REQ.as_bytes().to_vec();
        c.handle_bytes(&mut req, &settings());
        sent_all(&mut c);
        let mut out = Vec::new();
        // One length byte is not enough to start a message.
        assert_eq!(c.fill(&[&[0]], 100, &mut out), 0);
        assert!(out.is_empty());
        let stream: &[u8] = &[0, 3, b'a', b'b', b'c', 0, 1];
        assert_eq!(c.fill(&[&stream[..1], &stream[1..]], 100, &mut out), 5);
        assert_eq!(out, [0x82, 5, 0, 3, b'a', b'b', b'c']);
        c.sent(&out.clone(), out.len());
        // A packet whose bytes are not all there yet: its message starts
        // and the rest follows without a new header.
        assert_eq!(c.fill(&[&stream[5..]], 100, &mut out), 2);
        assert_eq!(out, [0x82, 3, 0, 1]);
        c.sent(&out.clone(), out.len());
        assert_eq!(c.fill(&[b"z"], 100, &mut out), 1);
        assert_eq!(out, b"z");
    }

    #[test]
    fn a_close_waits_for_the_message_in_flight() {
        let mut c = open();
        let mut out = Vec::new();
        c.fill(&[b"abcdef"], 100, &mut out);
        c.sent(&out.clone(), 4);
        c.close(code::GOING_AWAY);
        assert!(!c.flushed());
        assert_eq!(c.fill(&[b"cdef"], 100, &mut out), 4);
        assert_eq!(out, b"cdef");
        c.sent(&out.clone(), 4);
        assert_eq!(c.fill(&[b"more"], 100, &mut out), 0);
        assert_eq!(out, [0x88, 2, 0x03, 0xE9]);
        c.sent(&out.clone(), 4);
        assert!(c.flushed());
    }

    #[test]
    fn large_message_streams_through_small_reads() {
        let mut c = WsConn::new(OutMode::Stream, 1 << 20);
        let mut req = REQ.as_bytes().to_vec();
        c.handle_bytes(&mut req, &settings());
        let msg: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let bytes = frame(0x82, &msg, [0xde, 0xad, 0xbe, 0xef]);
        let mut got = Vec::new();
        for chunk in bytes.chunks(1000) {
            let mut chunk = chunk.to_vec();
            let r = c.handle_bytes(&mut chunk, &settings());
            got.extend_from_slice(&chunk[..r.payload]);
            assert!(c.memory_bytes() < 4096);
        }
        assert_eq!(got, msg);
    }
}
