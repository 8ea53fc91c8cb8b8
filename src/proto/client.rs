//! The client side of the SCP handshake as a sans-IO state machine: it
//! queues the request when created, then reads the server's one record.

use super::dh64;
use super::message::{
    HandshakeError, NewConnReq, NewConnResp, Reason, RecordReader, ReuseConnReq, ReuseConnResp,
    Status, encode_record, is_valid_target,
};

/// What the client handshake has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// No complete response yet: feed more bytes.
    NeedMore,
    /// A new session is open: key both RC4 states from `secret`.
    Established {
        /// The id the server assigned.
        id: u32,
        /// The DH shared secret.
        secret: u64,
    },
    /// The resume was accepted (200); resend what the server is missing.
    Resumed {
        /// Bytes the server has received from us, mod 2^32.
        server_received: u32,
    },
    /// The server answered the resume with another code; it closes next.
    Rejected {
        /// The status code (see [`Status::from_code`]).
        code: u16,
        /// The `received` the server sent with it.
        server_received: u32,
    },
    /// The response was unusable: close.
    Failed(HandshakeError),
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    New { private: u64 },
    Resume,
}

/// Client-side handshake of one connection.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    mode: Mode,
    reader: RecordReader,
    out: Vec<u8>,
    outcome: Option<ClientEvent>,
}

impl ClientHandshake {
    fn with_request(mode: Mode, content: &[u8]) -> Self {
        let mut out = Vec::with_capacity(2 + content.len());
        encode_record(content, &mut out);
        ClientHandshake {
            mode,
            reader: RecordReader::new(),
            out,
            outcome: None,
        }
    }

    /// Opens a new session: 64 random bits make the private key; `target`
    /// names a preferred upstream and `flag` carries option bits (0x1: do not
    /// announce my address). Queues the request record.
    ///
    /// # Panics
    /// If `target` has characters outside `[A-Za-z0-9_]` (a caller bug: such
    /// a name would corrupt the record's line structure).
    pub fn new_session(random: u64, target: Option<&str>, flag: Option<i32>) -> Self {
        if let Some(t) = target {
            assert!(
                is_valid_target(t.as_bytes()),
                "target must match [A-Za-z0-9_]*"
            );
        }
        let private = dh64::private_key_from(random);
        let req = NewConnReq {
            public_key: dh64::public_key(private),
            target: target.map(str::to_owned),
            flag,
        };
        Self::with_request(Mode::New { private }, &req.encode())
    }

    /// Resumes session `id` with resume `index` (1 for the first, then
    /// strictly increasing), having received `received` bytes (mod 2^32);
    /// queues the request signed with `secret`.
    pub fn resume(id: u32, index: u64, received: u32, secret: u64) -> Self {
        let req = ReuseConnReq::signed(id, index, received, secret);
        Self::with_request(Mode::Resume, &req.encode())
    }

    /// The bytes queued for the server, leaving the queue empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feeds received bytes and returns how many were consumed: at most up to
    /// the end of the response record; what follows is stream data.
    pub fn recv(&mut self, data: &[u8]) -> usize {
        if self.outcome.is_some() {
            return 0;
        }
        let n = self.reader.push(data);
        if let Some(reason) = self.reader.error() {
            self.outcome = Some(ClientEvent::Failed(HandshakeError::close(reason)));
        } else if let Some(record) = self.reader.record() {
            self.outcome = Some(self.judge(record));
        }
        n
    }

    fn judge(&self, record: &[u8]) -> ClientEvent {
        let failed = |reason: Reason| ClientEvent::Failed(HandshakeError::close(reason));
        match self.mode {
            Mode::New { private } => match NewConnResp::parse(record) {
                // The parser already refuses id 0.
                Ok(resp) if dh64::is_valid_public(resp.public_key) => ClientEvent::Established {
                    id: resp.id,
                    secret: dh64::secret(private, resp.public_key),
                },
                Ok(_) => failed(Reason::InvalidPublicKey),
                Err(e) => failed(e.into()),
            },
            Mode::Resume => match ReuseConnResp::parse(record) {
                Ok(resp) if resp.code == Status::Ok.code() => ClientEvent::Resumed {
                    server_received: resp.received,
                },
                Ok(resp) => ClientEvent::Rejected {
                    code: resp.code,
                    server_received: resp.received,
                },
                Err(e) => failed(e.into()),
            },
        }
    }

    /// What happened so far; repeats the outcome once there is one.
    pub fn poll(&mut self) -> ClientEvent {
        self.outcome.clone().unwrap_or(ClientEvent::NeedMore)
    }
}
