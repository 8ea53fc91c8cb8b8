//! The server side of the SCP handshake as a sans-IO state machine, in the
//! shape of cloudwu's `cp_recv`/`cp_poll`: feed it received bytes, poll for
//! what happened, answer, and take the bytes to write.
//!
//! ```text
//! recv ─► poll: NewSession(req) ─► accept_new(id, random) ─► take_output ─► Done
//!            └► Resume(req)     ─► answer_resume(received, status) ─► take_output ─► Done
//!            └► Failed(err)     ─► take_output (maybe `0\n400`), close
//! ```
//!
//! Session lookup and the 401/403/404/406 decisions stay with the caller: this
//! machine only frames, parses and validates what a single record can tell.

use super::dh64;
use super::message::{
    HandshakeError, NewConnReq, NewConnResp, Reason, RecordReader, ReuseConnReq, ReuseConnResp,
    Status, encode_record,
};

/// What the server handshake has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// No complete record yet: feed more bytes.
    NeedMore,
    /// A valid new-session request: call [`ServerHandshake::accept_new`].
    NewSession(NewConnReq),
    /// A well-formed resume request: look the session up, check it, and call
    /// [`ServerHandshake::answer_resume`].
    Resume(ReuseConnReq),
    /// The answer is queued; take the output and hand the connection on
    /// (or close it, for a resume answered with anything but 200).
    Done,
    /// The handshake failed: write any queued output, then close.
    Failed(HandshakeError),
}

/// The outcome of [`ServerHandshake::accept_new`]: everything the session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The id the caller chose.
    pub id: u32,
    /// The DH shared secret that keys both RC4 states.
    pub secret: u64,
    /// The client's preferred upstream, if it named one.
    pub target: Option<String>,
    /// The client's flag bits, if it sent the line.
    pub flag: Option<i32>,
    /// The client's DH public key.
    pub client_public: u64,
}

#[derive(Debug, Clone)]
enum State {
    Reading,
    NewSession(NewConnReq),
    Resume(ReuseConnReq),
    Done,
    Failed(HandshakeError),
}

/// Server-side handshake of one connection.
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    reader: RecordReader,
    state: State,
    out: Vec<u8>,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A handshake waiting for the client's first record.
    pub fn new() -> Self {
        ServerHandshake {
            reader: RecordReader::new(),
            state: State::Reading,
            out: Vec::new(),
        }
    }

    /// Feeds received bytes and returns how many were consumed. It consumes
    /// at most up to the end of the handshake record; bytes after it are
    /// stream data and stay with the caller. Once a record is complete (or
    /// the handshake failed) it consumes nothing.
    pub fn recv(&mut self, data: &[u8]) -> usize {
        if !matches!(self.state, State::Reading) {
            return 0;
        }
        let n = self.reader.push(data);
        if let Some(reason) = self.reader.error() {
            // Too long or empty: nothing tells new from resume, so just close.
            self.state = State::Failed(HandshakeError::close(reason));
        } else if let Some(record) = self.reader.record() {
            self.state = Self::judge(record, &mut self.out);
        }
        n
    }

    /// Decides what a complete record is.
    fn judge(record: &[u8], out: &mut Vec<u8>) -> State {
        if record.starts_with(b"0\n") {
            match NewConnReq::parse(record) {
                // Refuse a degenerate key before answering anything.
                Ok(req) if !dh64::is_valid_public(req.public_key) => {
                    State::Failed(HandshakeError::close(Reason::InvalidPublicKey))
                }
                Ok(req) => State::NewSession(req),
                Err(e) => State::Failed(HandshakeError::close(e)),
            }
        } else {
            match ReuseConnReq::parse(record) {
                Ok(req) => State::Resume(req),
                Err(e) => {
                    let resp = ReuseConnResp {
                        received: 0,
                        code: Status::BadRequest.code(),
                    };
                    encode_record(&resp.encode(), out);
                    State::Failed(HandshakeError {
                        reason: Reason::Malformed(e),
                        status: Some(Status::BadRequest),
                    })
                }
            }
        }
    }

    /// What happened so far. Repeats the same event until the caller acts on it.
    pub fn poll(&mut self) -> ServerEvent {
        match &self.state {
            State::Reading => ServerEvent::NeedMore,
            State::NewSession(req) => ServerEvent::NewSession(req.clone()),
            State::Resume(req) => ServerEvent::Resume(*req),
            State::Done => ServerEvent::Done,
            State::Failed(e) => ServerEvent::Failed(e.clone()),
        }
    }

    /// After [`ServerEvent::NewSession`]: takes the caller's session `id`
    /// (in `[1, 2^32)`) and 64 random bits for the private key, queues the
    /// response record and returns the new session's parameters.
    ///
    /// # Panics
    /// If the last event was not `NewSession`, or `id` is 0: both are bugs in
    /// the caller, not something a peer can cause.
    pub fn accept_new(&mut self, id: u32, random: u64) -> NewSession {
        assert!(id != 0, "session id 0 is reserved");
        let State::NewSession(req) = std::mem::replace(&mut self.state, State::Done) else {
            panic!("accept_new called without a pending new-session request");
        };
        let private = dh64::private_key_from(random);
        let resp = NewConnResp {
            id,
            public_key: dh64::public_key(private),
        };
        encode_record(&resp.encode(), &mut self.out);
        NewSession {
            id,
            secret: dh64::secret(private, req.public_key),
            target: req.target,
            flag: req.flag,
            client_public: req.public_key,
        }
    }

    /// After [`ServerEvent::Resume`]: queues the `received\ncode` answer.
    /// `received` is what the server has received of the session's stream
    /// (mod 2^32); on anything but [`Status::Ok`] the caller closes after
    /// writing it.
    ///
    /// # Panics
    /// If the last event was not `Resume` (a caller bug).
    pub fn answer_resume(&mut self, received: u32, status: Status) {
        assert!(
            matches!(self.state, State::Resume(_)),
            "answer_resume called without a pending resume request"
        );
        self.state = State::Done;
        let resp = ReuseConnResp {
            received,
            code: status.code(),
        };
        encode_record(&resp.encode(), &mut self.out);
    }

    /// The bytes queued for the client, leaving the queue empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }
}
