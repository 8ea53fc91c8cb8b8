//! Stage 1: skynet's login server protocol, both ends, as sans-IO machines.
//!
//! ```text
//! S→C  base64(challenge)\n
//! C→S  base64(dhexchange(client key))\n
//! S→C  base64(dhexchange(server key))\n          secret = DH(client key, server key)
//! C→S  base64(hmac64(challenge, secret))\n       401 at once if wrong
//! C→S  base64(DES(secret, token))\n
//! S→C  200 base64(subid)\n | 401 Unauthorized\n | 403 Forbidden\n | 406 Not Acceptable\n
//! ```
//!
//! The server machine knows no passwords and no game servers: once the token
//! decrypts it reports [`LoginEvent::Authenticate`] and waits for
//! [`LoginServer::authenticated`], then reports [`LoginEvent::Login`] and
//! waits for [`LoginServer::logged_in`]; the embedding program answers both,
//! at once or later. The connection closes after the answer line (skynet
//! leaves it open for the client to close; nothing else can happen on it).
//!
//! Decisions where skynet's behaviour is accidental:
//! - a client key of 0, 1 or ≥ P (never produced by a real client) is
//!   refused with 401 before the server key is sent, as SCP refuses it;
//! - a line over [`LoginLimits::max_line`] bytes closes the connection with
//!   no answer, as skynet's 8 KiB socket limit does.

use super::b64;
use super::des;
use crate::proto::{crypt, dh64};

/// Limits of one login connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Longest line accepted, without its `\n` (skynet: 8192).
    pub max_line: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits { max_line: 8192 }
    }
}

/// A refusal the embedding program gives, and the answer line it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 401: the token does not authenticate (wrong password, unknown user).
    Unauthorized,
    /// 403: the game server refused the login (unknown server name, full).
    Forbidden,
    /// 406: the same user is in the middle of another login.
    NotAcceptable,
}

impl Refusal {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            Refusal::Unauthorized => 401,
            Refusal::Forbidden => 403,
            Refusal::NotAcceptable => 406,
        }
    }

    /// The answer line, with its `\n`.
    pub fn line(self) -> &'static [u8] {
        match self {
            Refusal::Unauthorized => b"401 Unauthorized\n",
            Refusal::Forbidden => b"403 Forbidden\n",
            Refusal::NotAcceptable => b"406 Not Acceptable\n",
        }
    }
}

/// Why a login connection ended without a 200.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    /// A line over the limit: closed with no answer.
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// The client key line is not base64 of a usable 8-byte key (401).
    #[error("bad client key")]
    BadClientKey,
    /// The challenge hmac is wrong or unreadable (401).
    #[error("wrong challenge response")]
    BadChallengeResponse,
    /// The token line is not base64 of a DES text with valid padding (401).
    #[error("token does not decrypt")]
    BadToken,
    /// The embedding program refused (its code was sent).
    #[error("refused with {}", .0.code())]
    Refused(Refusal),
}

impl LoginFailure {
    /// The status code sent before closing, if any.
    pub fn code(&self) -> Option<u16> {
        match self {
            LoginFailure::LineTooLong(_) => None,
            LoginFailure::Refused(r) => Some(r.code()),
            _ => Some(401),
        }
    }
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSuccess {
    /// The game server name [`LoginServer::authenticated`] gave.
    pub server: Vec<u8>,
    /// The user id [`LoginServer::authenticated`] gave.
    pub user: Vec<u8>,
    /// The DH secret both ends share; the gate checks handshakes with it.
    pub secret: u64,
    /// The subid sent to the client.
    pub subid: Vec<u8>,
}

/// What the login server machine has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginEvent {
    /// Waiting for the client's next line: feed more bytes.
    NeedMore,
    /// The decrypted token (skynet's examples use
    /// `base64(user)@base64(server):base64(password)`, see [`Token::parse`]):
    /// check it and call [`LoginServer::authenticated`].
    Authenticate(Vec<u8>),
    /// Authenticated: tell the game server `server` that `user` logs in with
    /// `secret`, then call [`LoginServer::logged_in`] with the subid it chose.
    Login {
        /// Game server name.
        server: Vec<u8>,
        /// User id.
        user: Vec<u8>,
        /// The login secret.
        secret: u64,
    },
    /// `200 base64(subid)` is queued: write it, then close.
    Done(LoginSuccess),
    /// The login failed: write what is queued (maybe nothing), then close.
    Failed(LoginFailure),
}

#[derive(Debug, Clone)]
enum State {
    ClientKey,
    ChallengeResponse {
        secret: u64,
    },
    Token {
        secret: u64,
    },
    Authenticating {
        secret: u64,
        token: Vec<u8>,
    },
    LoggingIn {
        secret: u64,
        server: Vec<u8>,
        user: Vec<u8>,
    },
    Done(LoginSuccess),
    Failed(LoginFailure),
}

/// Reassembles `\n`-terminated lines under a length limit.
#[derive(Debug, Clone, Default)]
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// Takes bytes from the front of `data` up to and including the next
    /// `\n`. Returns the line once complete, `Ok(None)` when `data` ran out
    /// first, and an error when the line outgrows `max`.
    fn next_line(&mut self, data: &mut &[u8], max: usize) -> Result<Option<Vec<u8>>, usize> {
        let (piece, line_end) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (&data[..i], Some(i + 1)),
            None => (*data, None),
        };
        if self.buf.len() + piece.len() > max {
            return Err(max);
        }
        self.buf.extend_from_slice(piece);
        match line_end {
            Some(n) => {
                *data = &data[n..];
                Ok(Some(std::mem::take(&mut self.buf)))
            }
            None => {
                *data = &[];
                Ok(None)
            }
        }
    }
}

fn line_of(bytes: &[u8], out: &mut Vec<u8>) {
    b64::encode_into(bytes, out);
    out.push(b'\n');
}

fn u64_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The server side of one login connection.
#[derive(Debug, Clone)]
pub struct LoginServer {
    limits: LoginLimits,
    challenge: u64,
    server_private: u64,
    reader: LineReader,
    state: State,
    out: Vec<u8>,
}

impl LoginServer {
    /// A login that starts with `challenge` (8 random bytes as a LE u64) and
    /// uses 64 random bits for its DH key. Queues the challenge line.
    pub fn new(challenge: u64, server_random: u64, limits: LoginLimits) -> Self {
        let mut out = Vec::with_capacity(16);
        line_of(&challenge.to_le_bytes(), &mut out);
        LoginServer {
            limits,
            challenge,
            server_private: dh64::private_key_from(server_random),
            reader: LineReader::default(),
            state: State::ClientKey,
            out,
        }
    }

    /// Feeds received bytes. All are consumed; once the token line is in,
    /// anything else the client sends is ignored.
    pub fn recv(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.wants_line() {
            match self.reader.next_line(&mut data, self.limits.max_line) {
                Ok(Some(line)) => self.on_line(&line),
                Ok(None) => {}
                Err(max) => self.state = State::Failed(LoginFailure::LineTooLong(max)),
            }
        }
    }

    fn wants_line(&self) -> bool {
        matches!(
            self.state,
            State::ClientKey | State::ChallengeResponse { .. } | State::Token { .. }
        )
    }

    fn fail(&mut self, failure: LoginFailure) {
        if let Some(401) = failure.code() {
            self.out.extend_from_slice(Refusal::Unauthorized.line());
        }
        self.state = State::Failed(failure);
    }

    fn on_line(&mut self, line: &[u8]) {
        match self.state {
            State::ClientKey => {
                let key = b64::decode(line).ok().and_then(|k| u64_of(&k));
                match key {
                    Some(client_public) if dh64::is_valid_public(client_public) => {
                        let public = dh64::public_key(self.server_private);
                        line_of(&public.to_le_bytes(), &mut self.out);
                        let secret = dh64::secret(self.server_private, client_public);
                        self.state = State::ChallengeResponse { secret };
                    }
                    _ => self.fail(LoginFailure::BadClientKey),
                }
            }
            State::ChallengeResponse { secret } => {
                let expected = crypt::hmac64(self.challenge, secret).to_le_bytes();
                match b64::decode(line) {
                    Ok(h) if h == expected => self.state = State::Token { secret },
                    _ => self.fail(LoginFailure::BadChallengeResponse),
                }
            }
            State::Token { secret } => {
                let token = b64::decode(line)
                    .ok()
                    .and_then(|c| des::decrypt(secret, &c).ok());
                match token {
                    Some(token) => self.state = State::Authenticating { secret, token },
                    None => self.fail(LoginFailure::BadToken),
                }
            }
            _ => {}
        }
    }

    /// What happened so far. Repeats the same event until the caller acts.
    pub fn poll(&self) -> LoginEvent {
        match &self.state {
            State::ClientKey | State::ChallengeResponse { .. } | State::Token { .. } => {
                LoginEvent::NeedMore
            }
            State::Authenticating { token, .. } => LoginEvent::Authenticate(token.clone()),
            State::LoggingIn {
                secret,
                server,
                user,
            } => LoginEvent::Login {
                server: server.clone(),
                user: user.clone(),
                secret: *secret,
            },
            State::Done(s) => LoginEvent::Done(s.clone()),
            State::Failed(f) => LoginEvent::Failed(f.clone()),
        }
    }

    /// Answers [`LoginEvent::Authenticate`]: the game server and user id the
    /// token names, or a refusal (normally [`Refusal::Unauthorized`]).
    /// Ignored in any other state.
    pub fn authenticated(&mut self, result: Result<(Vec<u8>, Vec<u8>), Refusal>) {
        let State::Authenticating { secret, .. } = self.state else {
            return;
        };
        match result {
            Ok((server, user)) => {
                self.state = State::LoggingIn {
                    secret,
                    server,
                    user,
                }
            }
            Err(r) => self.refuse(r),
        }
    }

    /// Answers [`LoginEvent::Login`]: the subid the game server chose, or a
    /// refusal (normally [`Refusal::Forbidden`], or
    /// [`Refusal::NotAcceptable`] while another login of the user runs).
    /// Ignored in any other state.
    pub fn logged_in(&mut self, result: Result<Vec<u8>, Refusal>) {
        let State::LoggingIn { .. } = self.state else {
            return;
        };
        match result {
            Ok(subid) => {
                let State::LoggingIn {
                    secret,
                    server,
                    user,
                } = std::mem::replace(&mut self.state, State::ClientKey)
                else {
                    unreachable!("checked above");
                };
                self.out.extend_from_slice(b"200 ");
                line_of(&subid, &mut self.out);
                self.state = State::Done(LoginSuccess {
                    server,
                    user,
                    secret,
                    subid,
                });
            }
            Err(r) => self.refuse(r),
        }
    }

    fn refuse(&mut self, r: Refusal) {
        self.out.extend_from_slice(r.line());
        self.state = State::Failed(LoginFailure::Refused(r));
    }

    /// Whether the connection is finished: write the output, then close.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done(_) | State::Failed(_))
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

/// The token format of skynet's login example:
/// `base64(user)@base64(server):base64(password)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// User name.
    pub user: Vec<u8>,
    /// Game server name.
    pub server: Vec<u8>,
    /// Password.
    pub password: Vec<u8>,
}

impl Token {
    /// Parses a decrypted token; `None` when it does not have the three
    /// non-empty parts or a part is not base64.
    pub fn parse(token: &[u8]) -> Option<Token> {
        let at = token.iter().position(|&b| b == b'@')?;
        let (user, rest) = (&token[..at], &token[at + 1..]);
        let colon = rest.iter().position(|&b| b == b':')?;
        let (server, password) = (&rest[..colon], &rest[colon + 1..]);
        if user.is_empty() || server.is_empty() || password.is_empty() {
            return None;
        }
        Some(Token {
            user: b64::decode(user).ok()?,
            server: b64::decode(server).ok()?,
            password: b64::decode(password).ok()?,
        })
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        b64::encode_into(&self.user, &mut out);
        out.push(b'@');
        b64::encode_into(&self.server, &mut out);
        out.push(b':');
        b64::encode_into(&self.password, &mut out);
        out
    }
}

/// What the login client machine has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginClientEvent {
    /// Waiting for the server's next line.
    NeedMore,
    /// `200`: connect to the gate with this subid and secret.
    Success {
        /// The subid the server sent (decoded).
        subid: Vec<u8>,
        /// The login secret.
        secret: u64,
    },
    /// The server refused with this code (401, 403, 406, or whatever it sent).
    Refused(u16),
    /// The server's lines made no sense, or a line was too long.
    Failed(&'static str),
}

#[derive(Debug, Clone)]
enum ClientState {
    Challenge,
    ServerKey { challenge: u64 },
    Answer { secret: u64 },
    Over(LoginClientEvent),
}

/// The client side of one login connection (what skynet's
/// `examples/login/client.lua` does).
#[derive(Debug, Clone)]
pub struct LoginClient {
    private: u64,
    token: Vec<u8>,
    limits: LoginLimits,
    reader: LineReader,
    state: ClientState,
    out: Vec<u8>,
}

impl LoginClient {
    /// A login presenting `token` (see [`Token::encode`]), with 64 random
    /// bits for the DH key.
    pub fn new(client_random: u64, token: &[u8], limits: LoginLimits) -> Self {
        LoginClient {
            private: dh64::private_key_from(client_random),
            token: token.to_vec(),
            limits,
            reader: LineReader::default(),
            state: ClientState::Challenge,
            out: Vec::new(),
        }
    }

    /// Feeds received bytes (all are consumed).
    pub fn recv(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !matches!(self.state, ClientState::Over(_)) {
            match self.reader.next_line(&mut data, self.limits.max_line) {
                Ok(Some(line)) => self.on_line(&line),
                Ok(None) => {}
                Err(_) => self.state = ClientState::Over(LoginClientEvent::Failed("line too long")),
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let over = |e| ClientState::Over(e);
        self.state = match self.state {
            // An answer line may come instead of the server key.
            _ if line.len() >= 4 && line[3] == b' ' && !line.starts_with(b"200") => {
                match std::str::from_utf8(&line[..3])
                    .ok()
                    .and_then(|c| c.parse().ok())
                {
                    Some(code) => over(LoginClientEvent::Refused(code)),
                    None => over(LoginClientEvent::Failed("unreadable answer")),
                }
            }
            ClientState::Challenge => match b64::decode(line).ok().and_then(|c| u64_of(&c)) {
                Some(challenge) => {
                    line_of(&dh64::public_key(self.private).to_le_bytes(), &mut self.out);
                    ClientState::ServerKey { challenge }
                }
                None => over(LoginClientEvent::Failed("bad challenge")),
            },
            ClientState::ServerKey { challenge } => {
                match b64::decode(line).ok().and_then(|k| u64_of(&k)) {
                    Some(public) if dh64::is_valid_public(public) => {
                        let secret = dh64::secret(self.private, public);
                        line_of(
                            &crypt::hmac64(challenge, secret).to_le_bytes(),
                            &mut self.out,
                        );
                        line_of(&des::encrypt(secret, &self.token), &mut self.out);
                        ClientState::Answer { secret }
                    }
                    _ => over(LoginClientEvent::Failed("bad server key")),
                }
            }
            ClientState::Answer { secret } => match line.strip_prefix(b"200 ") {
                Some(subid) => match b64::decode(subid) {
                    Ok(subid) => over(LoginClientEvent::Success { subid, secret }),
                    Err(_) => over(LoginClientEvent::Failed("bad subid")),
                },
                None => over(LoginClientEvent::Failed("unreadable answer")),
            },
            ClientState::Over(_) => return,
        };
    }

    /// What happened so far; repeats the outcome once there is one.
    pub fn poll(&self) -> LoginClientEvent {
        match &self.state {
            ClientState::Over(e) => e.clone(),
            _ => LoginClientEvent::NeedMore,
        }
    }

    /// The bytes queued for the server, leaving the queue empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// Users in the middle of a login, for the 406 rule (skynet's
/// `multilogin = false`): [`begin`](Self::begin) before telling the game
/// server, [`end`](Self::end) when it answered.
#[derive(Debug, Default, Clone)]
pub struct LoginLocks {
    users: std::collections::HashSet<Vec<u8>>,
}

impl LoginLocks {
    /// Marks `user` as logging in; [`Refusal::NotAcceptable`] if it already is.
    pub fn begin(&mut self, user: &[u8]) -> Result<(), Refusal> {
        if self.users.insert(user.to_vec()) {
            Ok(())
        } else {
            Err(Refusal::NotAcceptable)
        }
    }

    /// Ends `user`'s login.
    pub fn end(&mut self, user: &[u8]) {
        self.users.remove(user);
    }
}
