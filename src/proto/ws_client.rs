//! The client side of a WebSocket (RFC 6455), sans-IO: the upgrade
//! request and its answer, masked binary messages out, the server's
//! frames in. What the load generator speaks to a WebSocket door.
//!
//! [`WsClient::new`] queues the request; [`WsClient::handle_bytes`] reads
//! the answer (checking `Sec-WebSocket-Accept`), then unmasked server
//! frames whose binary payload it moves to the front of the caller's
//! buffer (no copy and no per-message buffer, as on the server side);
//! [`WsClient::fill`] gives the bytes to send: the request, queued control
//! frames (pongs, a close), then the caller's stream as one masked binary
//! message. Nothing is framed before the answer arrives (a client waits
//! for it, RFC 6455 section 4.1).
//!
//! The caller supplies the key's 16 random bytes and a seed for the
//! masking keys, which the client draws from a xorshift generator: masks
//! only keep a proxy from reading frames as HTTP, and a load generator must
//! not spend its time on a cryptographic generator per frame.

use super::ws::{Ended, accept_key, code, encode_header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Largest answer to the upgrade read before giving up.
const MAX_RESPONSE: usize = 8192;
/// Largest control frame payload.
const MAX_CONTROL: usize = 125;

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Upgrading,
    Open,
    Done,
}

/// What one [`WsClient::handle_bytes`] call came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientRead {
    /// Message payload now at the front of the buffer.
    pub payload: usize,
    /// The server accepted the upgrade during this call.
    pub upgraded: bool,
    /// The connection ended: send what [`WsClient::fill`] gives (a close
    /// frame), then close.
    pub ended: Option<Ended>,
}

/// One WebSocket connection, client side.
#[derive(Debug)]
pub struct WsClient {
    phase: Phase,
    accept: String,
    response: Vec<u8>,
    /// Wire bytes to go first (the request, controls).
    queued: Vec<u8>,
    hdr: [u8; 10],
    hdr_len: usize,
    /// The frame being read: opcode, fin, payload bytes left.
    frame: Option<(u8, bool, u64)>,
    control: Vec<u8>,
    closing: bool,
    rng: u64,
}

impl WsClient {
    /// A client that asks `host` for `path`, with the key made of `key`
    /// (16 random bytes) and masks drawn from `mask_seed`.
    pub fn new(host: &str, path: &str, key: [u8; 16], mask_seed: u64) -> WsClient {
        let key = STANDARD.encode(key);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        WsClient {
            phase: Phase::Upgrading,
            accept: accept_key(&key),
            response: Vec::new(),
            queued: request.into_bytes(),
            hdr: [0; 10],
            hdr_len: 0,
            frame: None,
            control: Vec::new(),
            closing: false,
            rng: mask_seed | 1,
        }
    }

    /// Whether the server accepted the upgrade and the connection is open.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether a close was queued (no more messages go out).
    pub fn closing(&self) -> bool {
        self.closing
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_ne_bytes()
    }

    fn control_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.mask();
        let at = self.queued.len();
        encode_header(opcode, payload.len(), &mut self.queued);
        self.queued[at + 1] |= 0x80;
        self.queued.extend_from_slice(&mask);
        let start = self.queued.len();
        self.queued.extend_from_slice(payload);
        apply_mask(&mut self.queued[start..], mask);
    }

    /// Queues a close frame with `code` (once).
    pub fn close(&mut self, code: u16) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.phase == Phase::Open {
            self.control_frame(CLOSE, &code.to_be_bytes());
        }
        self.phase = Phase::Done;
    }

    /// Appends to `out` what goes out next: the queued wire bytes, then,
    /// once open, every byte of `pieces` as one masked binary message.
    /// Returns the payload bytes taken from `pieces` (0 before the upgrade
    /// is answered, or once closing).
    pub fn fill(&mut self, pieces: &[&[u8]], out: &mut Vec<u8>) -> usize {
        out.append(&mut self.queued);
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if self.phase != Phase::Open || len == 0 {
            return 0;
        }
        let mask = self.mask();
        let at = out.len();
        encode_header(BINARY, len, out);
        out[at + 1] |= 0x80;
        out.extend_from_slice(&mask);
        let start = out.len();
        for p in pieces {
            out.extend_from_slice(p);
        }
        apply_mask(&mut out[start..], mask);
        len
    }

    /// Whether wire bytes wait to go (a request, a pong, a close).
    pub fn wants_write(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Bytes from the server. Binary payload is moved to the front of
    /// `data`: `data[..read.payload]`.
    pub fn handle_bytes(&mut self, data: &mut [u8]) -> ClientRead {
        let mut read = ClientRead::default();
        let mut r = 0;
        if self.phase == Phase::Upgrading {
            let before = self.response.len();
            self.response.extend_from_slice(data);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let used = match resp.parse(&self.response) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if self.response.len() < MAX_RESPONSE => {
                    return read;
                }
                Ok(httparse::Status::Partial) => {
                    return self.refused(0, "answer too large", read);
                }
                Err(e) => return self.refused(0, &format!("malformed answer: {e}"), read),
            };
            let status = resp.code.unwrap_or(0);
            if status != 101 {
                return self.refused(status, "upgrade refused", read);
            }
            let accept = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Accept"))
                .map(|h| h.value.trim_ascii());
            if accept != Some(self.accept.as_bytes()) {
                return self.refused(status, "wrong Sec-WebSocket-Accept", read);
            }
            self.response = Vec::new();
            self.phase = Phase::Open;
            read.upgraded = true;
            r = used - before;
        }
        if self.phase != Phase::Open {
            return read;
        }
        match self.frames(data, r) {
            Ok(w) => read.payload = w,
            Err((w, ended)) => {
                read.payload = w;
                read.ended = Some(ended);
            }
        }
        read
    }

    fn refused(&mut self, status: u16, why: &str, mut read: ClientRead) -> ClientRead {
        self.phase = Phase::Done;
        self.closing = true;
        self.response = Vec::new();
        read.ended = Some(Ended::Refused {
            status,
            why: why.into(),
        });
        read
    }

    fn fail(&mut self, c: u16, why: &str) -> Ended {
        self.close(c);
        Ended::Failed {
            code: c,
            why: why.into(),
        }
    }

    fn frames(&mut self, data: &mut [u8], mut r: usize) -> Result<usize, (usize, Ended)> {
        let mut w = 0;
        loop {
            if self.frame.is_none() {
                if r == data.len() {
                    return Ok(w);
                }
                // The header: 2 bytes, then 0, 2 or 8 of length.
                while self.hdr_len < 2 && r < data.len() {
                    self.hdr[self.hdr_len] = data[r];
                    self.hdr_len += 1;
                    r += 1;
                }
                if self.hdr_len < 2 {
                    return Ok(w);
                }
                let need = 2 + match self.hdr[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                while self.hdr_len < need && r < data.len() {
                    self.hdr[self.hdr_len] = data[r];
                    self.hdr_len += 1;
                    r += 1;
                }
                if self.hdr_len < need {
                    return Ok(w);
                }
                let (b0, b1) = (self.hdr[0], self.hdr[1]);
                let len = match b1 & 0x7f {
                    126 => u16::from_be_bytes([self.hdr[2], self.hdr[3]]) as u64,
                    127 => u64::from_be_bytes(self.hdr[2..10].try_into().unwrap_or([0; 8])),
                    n => n as u64,
                };
                self.hdr_len = 0;
                let opcode = b0 & 0x0f;
                if b1 & 0x80 != 0 {
                    return Err((w, self.fail(code::PROTOCOL, "masked server frame")));
                }
                if b0 & 0x70 != 0 {
                    return Err((w, self.fail(code::PROTOCOL, "reserved bits set")));
                }
                match opcode {
                    BINARY | CONT => {}
                    TEXT => return Err((w, self.fail(code::UNSUPPORTED, "text message"))),
                    CLOSE | PING | PONG if len as usize <= MAX_CONTROL && b0 & 0x80 != 0 => {}
                    CLOSE | PING | PONG => {
                        return Err((w, self.fail(code::PROTOCOL, "bad control frame")));
                    }
                    _ => return Err((w, self.fail(code::PROTOCOL, "unknown opcode"))),
                }
                self.frame = Some((opcode, b0 & 0x80 != 0, len));
            }
            let Some((opcode, _fin, left)) = self.frame.as_mut() else {
                continue;
            };
            let n = (data.len() - r).min((*left).min(usize::MAX as u64) as usize);
            if *opcode == BINARY || *opcode == CONT {
                data.copy_within(r..r + n, w);
                w += n;
            } else {
                self.control.extend_from_slice(&data[r..r + n]);
            }
            r += n;
            *left -= n as u64;
            if *left > 0 {
                return Ok(w);
            }
            let opcode = *opcode;
            self.frame = None;
            let payload = std::mem::take(&mut self.control);
            match opcode {
                PING if !self.closing => self.control_frame(PONG, &payload),
                CLOSE => {
                    let c =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    self.close(c.unwrap_or(code::NORMAL));
                    return Err((w, Ended::Closed(c)));
                }
                _ => {}
            }
        }
    }
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::{OutMode, WsConn, WsSettings};

    /// A client and the gate's server side, talking to each other.
    #[test]
    fn client_and_server_agree() {
        let s = WsSettings::default();
        let mut server = WsConn::new(OutMode::Stream, 1 << 20);
        let mut client = WsClient::new("localhost", "/", [9; 16], 42);
        let mut out = Vec::new();
        assert_eq!(
            client.fill(&[b"early"], &mut out),
            0,
            "nothing before the answer"
        );
        let r = server.handle_bytes(&mut out, &s);
        assert!(r.upgraded);
        let mut answer = Vec::new();
        server.fill(&[b"hello ", b"client"], 1000, &mut answer);
        server.sent(&answer, answer.len());
        // Byte by byte.
        let mut got = Vec::new();
        let mut upgraded = false;
        for &b in &answer {
            let mut one = [b];
            let r = client.handle_bytes(&mut one);
            upgraded |= r.upgraded;
            got.extend_from_slice(&one[..r.payload]);
        }
        assert!(upgraded && client.is_open());
        assert_eq!(got, b"hello client");
        // Masked messages the server reads.
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        assert_eq!(client.fill(&[b"ab", &big], &mut out), 70_002);
        let r = server.handle_bytes(&mut out, &s);
        assert_eq!(&out[..2], b"ab");
        assert_eq!(&out[2..r.payload], &big[..]);
        // A ping is answered; a close ends it.
        let mut ping = vec![0x89, 2, b'p', b'q', 0x88, 2, 0x03, 0xe9];
        let r = client.handle_bytes(&mut ping);
        assert_eq!(r.ended, Some(Ended::Closed(Some(1001))));
        let mut out = Vec::new();
        client.fill(&[], &mut out);
        let r = server.handle_bytes(&mut out, &s);
        assert_eq!(r.ended, Some(Ended::Closed(Some(1001))));
    }

    #[test]
    fn refusals_and_bad_frames() {
        let mut c = WsClient::new("h", "/", [1; 16], 1);
        let mut resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec();
        assert!(matches!(
            c.handle_bytes(&mut resp).ended,
            Some(Ended::Refused { status: 404, .. })
        ));
        let mut c = WsClient::new("h", "/", [1; 16], 1);
        let mut resp = b"HTTP/1.1 101 Switching\r\nSec-WebSocket-Accept: nope\r\n\r\n".to_vec();
        assert!(matches!(
            c.handle_bytes(&mut resp).ended,
            Some(Ended::Refused { .. })
        ));
        let mut c = WsClient::new("h", "/", [1; 16], 1);
        let key = STANDARD.encode([1u8; 16]);
        let mut resp = format!(
            "HTTP/1.1 101 Switching\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        )
        .into_bytes();
        resp.extend_from_slice(&[0x82, 0x81, 0, 0, 0, 0, 1]);
        let r = c.handle_bytes(&mut resp);
        assert!(r.upgraded);
        assert!(matches!(r.ended, Some(Ended::Failed { code: 1002, .. })));
    }
}
