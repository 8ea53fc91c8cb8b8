//! cloudwu's stable-connection dialect, sans-IO: both handshakes, its MAC,
//! its RC4 variant, fingerprints and the session.
//!
//! The dialect is a binary ancestor of SCP. All integers are little-endian.
//!
//! - New session: the client sends `u64 0 ‖ u64 A` (16 bytes), the server
//!   answers `u64 B ‖ u64 challenge`, the client proves the shared secret
//!   with `u64 hmac(challenge, secret)` and the encrypted stream follows.
//! - Resume: the client sends `u64 received ‖ u32 fingerprint` (12 bytes;
//!   `received` is never 0, a client that received nothing starts anew),
//!   the server answers `u64 server_received ‖ u64 challenge`, the client
//!   sends its hmac, then the ciphertext it sent after `server_received`
//!   exactly as first sent, then new data; the server resends what it sent
//!   after `received`. Both ciphers simply continue.
//! - There are no ids, no framing and no error codes: a refusal is a close.
//!
//! The cipher is RC4 with a non-standard key setup: the key is the 8
//! little-endian bytes of `hmac(secret, 0)`, and the state box is
//! `s[i] = i + key[i % 8]` with no swaps. Both directions start from that
//! same state (an echo returns the ciphertext it received).
//!
//! A fingerprint is a running `u32`: it starts at `h ^ h >> 32` (`h =
//! hmac(secret, 0)`) and takes each byte as `fp = rotl(fp, 4) ^ byte`. The
//! client fingerprints the plaintext it receives and keeps the value at the
//! last 256-byte boundary; the server must fingerprint the plaintext it sends
//! and keep the value at every boundary its replay window still covers. (The
//! published server fingerprints its ciphertext, so its resumes fail once a
//! client has received 256 bytes; ringgate does not copy that.)

use super::crypt;
use super::dh64;
use super::rc4::Rc4;
use super::replay::ReplayWindow;
use std::collections::VecDeque;

/// Bytes between two stored fingerprints.
pub const CHUNK: u64 = 256;
/// Bytes of sent ciphertext the published client keeps for a resume.
pub const CLIENT_WINDOW: usize = 65536;
/// Length of a new-session request and of every server answer.
pub const HEADER: usize = 16;
/// Length of a resume request.
pub const RESUME_HEADER: usize = 12;
/// Length of the client's proof.
pub const AUTH: usize = 8;

/// The dialect's MAC (skynet's `hmac64`).
pub fn hmac(x: u64, y: u64) -> u64 {
    crypt::hmac64(x, y)
}

/// The 8 key bytes derived from a session secret.
pub fn key(secret: u64) -> [u8; 8] {
    hmac(secret, 0).to_le_bytes()
}

/// The initial state box for a session secret (no key-schedule swaps).
pub fn initial_state(secret: u64) -> [u8; 256] {
    let k = key(secret);
    let mut s = [0u8; 256];
    for (i, v) in s.iter_mut().enumerate() {
        *v = (i as u8).wrapping_add(k[i % 8]);
    }
    s
}

/// One direction's cipher for a session secret.
pub fn cipher(secret: u64) -> Rc4 {
    Rc4::from_state(initial_state(secret))
}

/// A running fingerprint of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub u32);

impl Fingerprint {
    /// The value before any byte, for a session secret.
    pub fn initial(secret: u64) -> Self {
        let h = hmac(secret, 0);
        Fingerprint((h ^ (h >> 32)) as u32)
    }

    /// Takes `bytes` in order.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut fp = self.0;
        for &b in bytes {
            fp = fp.rotate_left(4) ^ b as u32;
        }
        self.0 = fp;
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StableError {
    /// The peer's public key is not a usable group element.
    BadKey,
    /// The client's proof does not match the secret.
    BadAuth,
    /// The server answered with a count outside the client's window.
    OutOfWindow,
}

impl std::fmt::Display for StableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StableError::BadKey => "unusable public key",
            StableError::BadAuth => "wrong proof of the session secret",
            StableError::OutOfWindow => "resume count outside the replay window",
        })
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// What the server's handshake needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStep {
    /// More bytes.
    NeedMore,
    /// A new-session request: answer with [`ServerHandshake::accept_new`].
    NewSession {
        /// The client's public key.
        client_public: u64,
    },
    /// A resume request: find the session, then answer with
    /// [`ServerHandshake::answer_resume`] (or close).
    Resume {
        /// Plaintext bytes the client has received (never 0).
        received: u64,
        /// The client's fingerprint at the last 256-byte boundary received.
        fingerprint: u32,
    },
    /// Waiting for the client's proof after the answer.
    AwaitingProof,
    /// A new session whose client proved the secret.
    Established {
        /// The shared secret.
        secret: u64,
    },
    /// A resume's proof arrived: check it with [`ServerHandshake::proves`]
    /// against the session the answer was for.
    Proof,
    /// The handshake failed: close.
    Failed(StableError),
}

#[derive(Debug, Clone, Copy)]
enum ServerState {
    Header,
    Answer,
    Proof {
        challenge: u64,
        /// Known for a new session; a resume's comes from its session.
        secret: Option<u64>,
    },
    Done {
        challenge: u64,
        secret: Option<u64>,
        code: u64,
    },
    Failed(StableError),
}

/// The server side of both handshakes, fed bytes as they arrive (any
/// split); it draws no randomness: the caller passes its random numbers.
#[derive(Debug)]
pub struct ServerHandshake {
    buf: [u8; HEADER],
    have: usize,
    state: ServerState,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        ServerHandshake {
            buf: [0; HEADER],
            have: 0,
            state: ServerState::Header,
        }
    }
}

impl ServerHandshake {
    /// Takes bytes of the handshake; returns how many it used. It stops
    /// after the request until it is answered, and after the proof: what
    /// follows is not its business.
    pub fn recv(&mut self, data: &[u8]) -> usize {
        let want = match self.state {
            ServerState::Header => {
                if self.have < 8 {
                    8
                } else if le64(&self.buf) == 0 {
                    HEADER
                } else {
                    RESUME_HEADER
                }
            }
            ServerState::Proof { .. } => AUTH,
            _ => return 0,
        };
        let mut used = (want - self.have).min(data.len());
        self.buf[self.have..self.have + used].copy_from_slice(&data[..used]);
        self.have += used;
        if self.have < want {
            return used;
        }
        match self.state {
            ServerState::Header if want == 8 => {
                // The count decides how long the request is.
                used += self.recv(&data[used..]);
            }
            ServerState::Header => {
                if want == HEADER && !dh64::is_valid_public(le64(&self.buf[8..])) {
                    self.state = ServerState::Failed(StableError::BadKey);
                } else {
                    self.state = ServerState::Answer;
                }
            }
            ServerState::Proof { challenge, secret } => {
                self.state = ServerState::Done {
                    challenge,
                    secret,
                    code: le64(&self.buf),
                };
            }
            _ => {}
        }
        used
    }

    /// Where the handshake stands.
    pub fn poll(&self) -> ServerStep {
        match self.state {
            ServerState::Header => ServerStep::NeedMore,
            ServerState::Answer if self.have == HEADER => ServerStep::NewSession {
                client_public: le64(&self.buf[8..]),
            },
            ServerState::Answer => ServerStep::Resume {
                received: le64(&self.buf),
                fingerprint: u32::from_le_bytes(self.buf[8..12].try_into().expect("4 bytes")),
            },
            ServerState::Proof { .. } => ServerStep::AwaitingProof,
            ServerState::Done {
                challenge,
                secret: Some(secret),
                code,
            } => {
                if hmac(challenge, secret) ^ code == 0 {
                    ServerStep::Established { secret }
                } else {
                    ServerStep::Failed(StableError::BadAuth)
                }
            }
            ServerState::Done { secret: None, .. } => ServerStep::Proof,
            ServerState::Failed(e) => ServerStep::Failed(e),
        }
    }

    /// Answers a new-session request: `private_random` makes the server's
    /// key, `challenge` is the challenge. Returns the 16 bytes to write.
    pub fn accept_new(&mut self, private_random: u64, challenge: u64) -> [u8; HEADER] {
        let private = dh64::private_key_from(private_random);
        let secret = dh64::secret(private, le64(&self.buf[8..]));
        self.answer(dh64::public_key(private), challenge, Some(secret))
    }

    /// Answers a resume request for a session that has received
    /// `server_received` bytes. Returns the 16 bytes to write.
    pub fn answer_resume(&mut self, server_received: u64, challenge: u64) -> [u8; HEADER] {
        self.answer(server_received, challenge, None)
    }

    fn answer(&mut self, first: u64, challenge: u64, secret: Option<u64>) -> [u8; HEADER] {
        self.have = 0;
        self.state = ServerState::Proof { challenge, secret };
        let mut out = [0u8; HEADER];
        out[..8].copy_from_slice(&first.to_le_bytes());
        out[8..].copy_from_slice(&challenge.to_le_bytes());
        out
    }

    /// After [`ServerStep::Proof`]: whether the client proved `secret`.
    pub fn proves(&self, secret: u64) -> bool {
        match self.state {
            ServerState::Done {
                challenge, code, ..
            } => hmac(challenge, secret) ^ code == 0,
            _ => false,
        }
    }
}

/// What the client's handshake has come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStep {
    /// More bytes.
    NeedMore,
    /// A new session: write `auth`, then the stream.
    Established {
        /// The shared secret.
        secret: u64,
        /// The proof to write first.
        auth: [u8; AUTH],
    },
    /// The server answered a resume: pass both to
    /// [`StableSession::resumed`].
    Answered {
        /// Plaintext bytes the server has received.
        server_received: u64,
        /// The challenge to prove the secret against.
        challenge: u64,
    },
    /// The handshake failed: close.
    Failed(StableError),
}

/// The client side of both handshakes.
#[derive(Debug)]
pub struct ClientHandshake {
    /// The private key of a new session; `None` for a resume.
    private: Option<u64>,
    buf: [u8; HEADER],
    have: usize,
}

impl ClientHandshake {
    /// A new session; returns the machine and the 16 bytes to write.
    pub fn new_session(private_random: u64) -> (Self, [u8; HEADER]) {
        let private = dh64::private_key_from(private_random);
        let mut out = [0u8; HEADER];
        out[8..].copy_from_slice(&dh64::public_key(private).to_le_bytes());
        let hs = ClientHandshake {
            private: Some(private),
            buf: [0; HEADER],
            have: 0,
        };
        (hs, out)
    }

    /// A resume; the request comes from [`StableSession::resume_request`].
    pub fn resume() -> Self {
        ClientHandshake {
            private: None,
            buf: [0; HEADER],
            have: 0,
        }
    }

    /// Takes bytes of the server's answer; returns how many it used.
    pub fn recv(&mut self, data: &[u8]) -> usize {
        let n = (HEADER - self.have).min(data.len());
        self.buf[self.have..self.have + n].copy_from_slice(&data[..n]);
        self.have += n;
        n
    }

    /// Where the handshake stands.
    pub fn poll(&self) -> ClientStep {
        if self.have < HEADER {
            return ClientStep::NeedMore;
        }
        let (first, challenge) = (le64(&self.buf), le64(&self.buf[8..]));
        match self.private {
            Some(private) => {
                if !dh64::is_valid_public(first) {
                    return ClientStep::Failed(StableError::BadKey);
                }
                let secret = dh64::secret(private, first);
                ClientStep::Established {
                    secret,
                    auth: hmac(challenge, secret).to_le_bytes(),
                }
            }
            None => ClientStep::Answered {
                server_received: first,
                challenge,
            },
        }
    }
}

/// Which end of the dialect a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Fingerprints what it sends, at every boundary its window covers.
    Server,
    /// Fingerprints what it receives, keeping the last boundary's value.
    Client,
}

/// An established session: one key, two cipher states, u64 counts, the
/// replay window of ciphertext as sent, and fingerprints.
pub struct StableSession {
    role: Role,
    secret: u64,
    tx: Rc4,
    rx: Rc4,
    received: u64,
    window: ReplayWindow,
    /// Server: the running fingerprint of the plaintext sent.
    tx_fp: Fingerprint,
    /// Server: the fingerprints at boundaries `first_boundary ..`, one per
    /// 256 bytes sent; trimmed by [`trim_fingerprints`](Self::trim_fingerprints).
    sent_fps: VecDeque<u32>,
    first_boundary: u64,
    /// Client: the running fingerprint of the plaintext received, and its
    /// value at the last boundary.
    rx_fp: Fingerprint,
    rx_mark: u32,
    /// Server: incoming bytes to drop before decrypting (see
    /// [`accept_resume_from`](Self::accept_resume_from)).
    skip: u64,
}

impl StableSession {
    /// A fresh session keyed from `secret`, keeping `window_capacity` bytes
    /// of sent ciphertext for replay.
    ///
    /// # Panics
    ///
    /// If `window_capacity` exceeds [`MAX_CAPACITY`](super::replay::MAX_CAPACITY).
    pub fn new(role: Role, secret: u64, window_capacity: usize) -> Self {
        let c = cipher(secret);
        let fp = Fingerprint::initial(secret);
        let mut sent_fps = VecDeque::new();
        if role == Role::Server {
            sent_fps.push_back(fp.0);
        }
        StableSession {
            role,
            secret,
            tx: c.clone(),
            rx: c,
            received: 0,
            window: ReplayWindow::new(window_capacity),
            tx_fp: fp,
            sent_fps,
            first_boundary: 0,
            rx_fp: fp,
            rx_mark: fp.0,
            skip: 0,
        }
    }

    /// The shared secret.
    pub fn secret(&self) -> u64 {
        self.secret
    }

    /// Plaintext bytes received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Plaintext bytes written for the peer (sent or about to be).
    pub fn sent(&self) -> u64 {
        self.window.written()
    }

    /// Like [`decrypt`](Self::decrypt), but first drops the bytes a resume
    /// resends that were already received; returns how many of `buf` were
    /// dropped (the plaintext is `buf[dropped..]`).
    pub fn decrypt_fresh(&mut self, buf: &mut [u8]) -> usize {
        let skip = self.skip.min(buf.len() as u64) as usize;
        self.skip -= skip as u64;
        self.decrypt(&mut buf[skip..]);
        skip
    }

    /// Decrypts received ciphertext in place and counts it (a client also
    /// fingerprints it).
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        self.rx.apply(buf);
        if self.role == Role::Client {
            let mut pos = self.received;
            let mut rest: &[u8] = buf;
            while !rest.is_empty() {
                let to_mark = (CHUNK - pos % CHUNK) as usize;
                let (piece, tail) = rest.split_at(to_mark.min(rest.len()));
                self.rx_fp.feed(piece);
                pos += piece.len() as u64;
                if pos % CHUNK == 0 {
                    self.rx_mark = self.rx_fp.0;
                }
                rest = tail;
            }
        }
        self.received += buf.len() as u64;
    }

    /// Encrypts as much of `plain` as the window has room for straight into
    /// it (a server fingerprints the plaintext on the way); returns how many
    /// bytes were taken.
    pub fn encrypt(&mut self, plain: &[u8]) -> usize {
        let StableSession {
            role,
            tx,
            window,
            tx_fp,
            sent_fps,
            ..
        } = self;
        if *role == Role::Client {
            return window.write_with(plain, |s, d| tx.apply_to(s, d));
        }
        let mut pos = window.written();
        window.write_with(plain, |s, d| {
            tx.apply_to(s, d);
            let mut rest = s;
            while !rest.is_empty() {
                let to_mark = (CHUNK - pos % CHUNK) as usize;
                let (piece, tail) = rest.split_at(to_mark.min(rest.len()));
                tx_fp.feed(piece);
                pos += piece.len() as u64;
                if pos % CHUNK == 0 {
                    sent_fps.push_back(tx_fp.0);
                }
                rest = tail;
            }
        })
    }

    /// The replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// The replay window, to mark sends complete.
    pub fn window_mut(&mut self) -> &mut ReplayWindow {
        &mut self.window
    }

    /// Server: the fingerprint of the plaintext sent at byte
    /// `boundary * 256`, while it is kept.
    pub fn fingerprint_at(&self, boundary: u64) -> Option<u32> {
        let i = boundary.checked_sub(self.first_boundary)?;
        self.sent_fps.get(usize::try_from(i).ok()?).copied()
    }

    /// Server: the boundaries whose fingerprints are kept, `first..end`.
    pub fn boundaries(&self) -> std::ops::Range<u64> {
        self.first_boundary..self.first_boundary + self.sent_fps.len() as u64
    }

    /// Server: drops the fingerprints of boundaries no resume can name any
    /// more (the window no longer reaches back to them), telling `dropped`
    /// each `(boundary, fingerprint)`. Until this runs they are still kept,
    /// so whoever indexes them can unindex them first.
    pub fn trim_fingerprints(&mut self, mut dropped: impl FnMut(u64, u32)) {
        let oldest = self.window.written() - self.window.held() as u64;
        let keep_from = oldest / CHUNK;
        while self.first_boundary < keep_from {
            let Some(fp) = self.sent_fps.pop_front() else {
                break;
            };
            dropped(self.first_boundary, fp);
            self.first_boundary += 1;
        }
    }

    /// Server: whether a resume request `(received, fingerprint)` can be
    /// this session's: the window covers `received` and the fingerprint at
    /// its boundary matches. (The proof of the secret comes later.)
    pub fn matches(&self, received: u64, fingerprint: u32) -> bool {
        let written = self.window.written();
        received <= written
            && written - received <= self.window.held() as u64
            && self.fingerprint_at(received / CHUNK) == Some(fingerprint)
    }

    /// Server: after a proven resume, rewinds the window so that its unsent
    /// bytes are what the client lacks; returns their count, or `None` when
    /// the window no longer covers `received`.
    pub fn accept_resume(&mut self, received: u64) -> Option<usize> {
        self.accept_resume_from(received, self.received)
    }

    /// As [`accept_resume`](Self::accept_resume), when the answer told the
    /// client that `answered` bytes had been received and more arrived
    /// since (the old connection was still delivering): the client resends
    /// from `answered`, so what this session already has is dropped from
    /// the incoming stream by [`decrypt_fresh`](Self::decrypt_fresh).
    /// `None` also when `answered` is ahead of what was received.
    pub fn accept_resume_from(&mut self, received: u64, answered: u64) -> Option<usize> {
        let skip = self.received.checked_sub(answered)?;
        let resend = self.window.rewind_to(received)?;
        self.skip = skip;
        Some(resend)
    }

    /// Client: the 12-byte resume request, or `None` when nothing was
    /// received (the dialect then starts a new session).
    pub fn resume_request(&self) -> Option<[u8; RESUME_HEADER]> {
        if self.received == 0 {
            return None;
        }
        let mut out = [0u8; RESUME_HEADER];
        out[..8].copy_from_slice(&self.received.to_le_bytes());
        out[8..].copy_from_slice(&self.rx_mark.to_le_bytes());
        Some(out)
    }

    /// Client: the server answered a resume. Rewinds the window so that its
    /// unsent bytes are the replay; returns the proof to write before them.
    pub fn resumed(
        &mut self,
        server_received: u64,
        challenge: u64,
    ) -> Result<[u8; AUTH], StableError> {
        self.window
            .rewind_to(server_received)
            .ok_or(StableError::OutOfWindow)?;
        Ok(hmac(challenge, self.secret).to_le_bytes())
    }

    /// Heap bytes held (window pages and fingerprints).
    pub fn memory_bytes(&self) -> usize {
        self.window.memory_bytes() + self.sent_fps.capacity() * 4
    }
}

impl std::fmt::Debug for StableSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or cipher state.
        f.debug_struct("StableSession")
            .field("role", &self.role)
            .field("received", &self.received)
            .field("window", &self.window)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established() -> (StableSession, StableSession) {
        let (mut c, req) = ClientHandshake::new_session(0x1111);
        let mut s = ServerHandshake::default();
        assert_eq!(s.recv(&req), HEADER);
        assert!(matches!(s.poll(), ServerStep::NewSession { .. }));
        let answer = s.accept_new(0x2222, 0x3333);
        c.recv(&answer);
        let ClientStep::Established { secret, auth } = c.poll() else {
            panic!()
        };
        assert_eq!(s.recv(&auth), AUTH);
        assert_eq!(s.poll(), ServerStep::Established { secret });
        (
            StableSession::new(Role::Server, secret, 65536),
            StableSession::new(Role::Client, secret, CLIENT_WINDOW),
        )
    }

    fn pump(from: &mut StableSession, to: &mut StableSession, plain: &[u8]) -> Vec<u8> {
        assert_eq!(from.encrypt(plain), plain.len());
        let mut wire: Vec<u8> = from.window().unsent_slices().flatten().copied().collect();
        let n = wire.len();
        from.window_mut().mark_sent(n);
        to.decrypt(&mut wire);
        wire
    }

    #[test]
    fn handshake_byte_by_byte() {
        let (mut c, req) = ClientHandshake::new_session(7);
        let mut s = ServerHandshake::default();
        for b in &req {
            assert_eq!(s.poll(), ServerStep::NeedMore);
            assert_eq!(s.recv(std::slice::from_ref(b)), 1);
        }
        let answer = s.accept_new(9, 10);
        assert_eq!(s.poll(), ServerStep::AwaitingProof);
        for b in &answer {
            assert_eq!(c.poll(), ClientStep::NeedMore);
            c.recv(std::slice::from_ref(b));
        }
        let ClientStep::Established { secret, auth } = c.poll() else {
            panic!()
        };
        for b in &auth {
            assert_eq!(s.recv(std::slice::from_ref(b)), 1);
        }
        assert_eq!(s.poll(), ServerStep::Established { secret });
        // Bytes after the proof are left to the session.
        assert_eq!(s.recv(b"more"), 0);
    }

    #[test]
    fn resume_request_byte_by_byte_and_wrong_proof() {
        let mut s = ServerHandshake::default();
        let mut req = 300u64.to_le_bytes().to_vec();
        req.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        for b in &req {
            s.recv(std::slice::from_ref(b));
        }
        assert_eq!(
            s.poll(),
            ServerStep::Resume {
                received: 300,
                fingerprint: 0xdead_beef
            }
        );
        s.answer_resume(12, 99);
        s.recv(&hmac(99, 5).to_le_bytes());
        assert_eq!(s.poll(), ServerStep::Proof);
        assert!(s.proves(5));
        assert!(!s.proves(6));
    }

    #[test]
    fn bad_keys_are_refused() {
        let mut s = ServerHandshake::default();
        s.recv(&[0u8; 16]);
        assert_eq!(s.poll(), ServerStep::Failed(StableError::BadKey));
        let (mut c, _) = ClientHandshake::new_session(1);
        c.recv(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.poll(), ClientStep::Failed(StableError::BadKey));
        let (_, req) = ClientHandshake::new_session(1);
        let mut s = ServerHandshake::default();
        s.recv(&req);
        s.accept_new(2, 3);
        s.recv(&[0u8; 8]);
        assert_eq!(s.poll(), ServerStep::Failed(StableError::BadAuth));
    }

    #[test]
    fn fingerprints_agree_at_every_boundary() {
        let (mut server, mut client) = established();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let mut at = 0;
        for len in [1usize, 254, 1, 1, 300, 700, 256, 3000] {
            pump(&mut server, &mut client, &data[at..at + len]);
            at += len;
            let req = client.resume_request().unwrap();
            let received = u64::from_le_bytes(req[..8].try_into().unwrap());
            let fp = u32::from_le_bytes(req[8..].try_into().unwrap());
            assert_eq!(received, at as u64);
            assert!(server.matches(received, fp), "at {at}");
            assert!(!server.matches(received, fp ^ 1));
        }
    }

    #[test]
    fn resume_replays_ciphertext_as_sent() {
        let (mut server, mut client) = established();
        pump(&mut server, &mut client, &[1u8; 300]);
        // 40 bytes written by the server, lost on the way.
        server.encrypt(&[2u8; 40]);
        server.window_mut().mark_sent(40);
        // 50 bytes from the client, lost too.
        client.encrypt(&[3u8; 50]);
        client.window_mut().mark_sent(50);
        let req = client.resume_request().unwrap();
        let mut hs = ServerHandshake::default();
        hs.recv(&req);
        let ServerStep::Resume {
            received,
            fingerprint,
        } = hs.poll()
        else {
            panic!()
        };
        assert!(server.matches(received, fingerprint));
        let answer = hs.answer_resume(server.received(), 77);
        let mut ch = ClientHandshake::resume();
        ch.recv(&answer);
        let ClientStep::Answered {
            server_received,
            challenge,
        } = ch.poll()
        else {
            panic!()
        };
        let auth = client.resumed(server_received, challenge).unwrap();
        hs.recv(&auth);
        assert_eq!(hs.poll(), ServerStep::Proof);
        assert!(hs.proves(server.secret()));
        assert_eq!(server.accept_resume(received), Some(40));
        let mut replay: Vec<u8> = server.window().unsent_slices().flatten().copied().collect();
        client.decrypt(&mut replay);
        assert_eq!(replay, vec![2u8; 40]);
        let mut back: Vec<u8> = client.window().unsent_slices().flatten().copied().collect();
        server.decrypt(&mut back);
        assert_eq!(back, vec![3u8; 50]);
    }

    /// Bytes that reached the server on the old connection after it
    /// answered a resume come again in the client's replay: dropped once.
    #[test]
    fn a_resume_answered_early_drops_what_arrived_meanwhile() {
        let (mut server, mut client) = established();
        pump(&mut server, &mut client, b"x");
        let first = pump(&mut client, &mut server, b"abc");
        assert_eq!(first, b"abc");
        client.encrypt(b"defgh");
        client.window_mut().mark_sent(5);
        let answered = server.received();
        // "de" still arrives on the old connection after the answer.
        let late: Vec<u8> = client.window().slices_from(3).flatten().copied().collect();
        let mut de = late[..2].to_vec();
        server.decrypt(&mut de);
        assert_eq!(de, b"de");
        client.resumed(answered, 1).unwrap();
        assert_eq!(server.accept_resume_from(1, answered), Some(0));
        let mut replay: Vec<u8> = client.window().unsent_slices().flatten().copied().collect();
        let (a, b) = replay.split_at_mut(1);
        let dropped = server.decrypt_fresh(a);
        assert_eq!(dropped, 1);
        let dropped = server.decrypt_fresh(b);
        assert_eq!((dropped, &b[dropped..]), (1, &b"fgh"[..]));
    }

    #[test]
    fn fingerprints_are_trimmed_with_the_window() {
        let mut s = StableSession::new(Role::Server, 42, 4096);
        for _ in 0..10 {
            s.encrypt(&[0u8; 1000]);
            s.window_mut().mark_sent(1000);
            let mut dropped = Vec::new();
            s.trim_fingerprints(|k, _| dropped.push(k));
            assert!(s.boundaries().end - s.boundaries().start <= 4096 / 256 + 1);
            let oldest = s.sent() - s.window().held() as u64;
            assert!(s.boundaries().start <= oldest / 256);
        }
    }
}
