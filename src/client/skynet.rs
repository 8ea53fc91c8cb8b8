//! A blocking client for skynet's login server and msgserver gate: the flow
//! of skynet's `examples/login/client.lua` (log in, connect to the gate,
//! send requests, reconnect with the next index and repeat a session to get
//! its cached answer), over `std::net` or any `Read + Write` stream.

use crate::proto::skynet::gate::HandshakeCode;
use crate::proto::skynet::login::{LoginClient, LoginClientEvent, LoginLimits, Token};
use crate::proto::skynet::packet::{self, Response};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// What can go wrong talking to a skynet login server or gate.
#[derive(Debug, thiserror::Error)]
pub enum SkynetError {
    /// The server answered with this status code (login: 401, 403, 406;
    /// gate handshake: 400, 401, 403, 404).
    #[error("refused with {0}")]
    Refused(u16),
    /// The server sent something unreadable, or closed early.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Socket trouble.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    /// The subid the login server gave.
    pub subid: Vec<u8>,
    /// The login secret, which signs the gate handshakes.
    pub secret: u64,
}

/// Runs the login exchange on `stream` with `token`; `random` makes the DH key.
pub fn login_over<S: Read + Write>(
    stream: &mut S,
    token: &Token,
    random: u64,
) -> Result<LoginResult, SkynetError> {
    let mut c = LoginClient::new(random, &token.encode(), LoginLimits::default());
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(SkynetError::Protocol("login server closed early".into()));
        }
        c.recv(&buf[..n]);
        stream.write_all(&c.take_output())?;
        match c.poll() {
            LoginClientEvent::NeedMore => continue,
            LoginClientEvent::Success { subid, secret } => {
                return Ok(LoginResult { subid, secret });
            }
            LoginClientEvent::Refused(code) => return Err(SkynetError::Refused(code)),
            LoginClientEvent::Failed(why) => return Err(SkynetError::Protocol(why.into())),
        }
    }
}

/// One gate connection after a successful handshake.
pub struct GateConn<S> {
    stream: S,
    /// Received bytes not yet a whole packet.
    buf: Vec<u8>,
    /// Responses read while waiting for another session.
    early: VecDeque<Response>,
}

impl<S: Read + Write> GateConn<S> {
    /// Sends the handshake for `username` with `index`, signed with
    /// `secret`, and reads the answer: [`SkynetError::Refused`] for anything
    /// but `200 OK`.
    pub fn handshake(
        stream: S,
        username: &[u8],
        index: u64,
        secret: u64,
    ) -> Result<Self, SkynetError> {
        let mut conn = GateConn {
            stream,
            buf: Vec::new(),
            early: VecDeque::new(),
        };
        let mut p = Vec::new();
        packet::write_packet(&packet::handshake(username, index, secret), &mut p)
            .map_err(|e| SkynetError::Protocol(e.to_string()))?;
        conn.stream.write_all(&p)?;
        let answer = conn.read_packet()?;
        match HandshakeCode::from_text(&answer) {
            Some(HandshakeCode::Ok) => Ok(conn),
            Some(code) => Err(SkynetError::Refused(code.code())),
            None => Err(SkynetError::Protocol(format!(
                "unknown handshake answer {:?}",
                String::from_utf8_lossy(&answer)
            ))),
        }
    }

    fn read_packet(&mut self) -> Result<Vec<u8>, SkynetError> {
        loop {
            if let Some((content, n)) = packet::read_packet(&self.buf) {
                let content = content.to_vec();
                self.buf.drain(..n);
                return Ok(content);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(SkynetError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "gate closed the connection",
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a request.
    pub fn send(&mut self, payload: &[u8], session: u32) -> Result<(), SkynetError> {
        let mut p = Vec::with_capacity(payload.len() + 6);
        packet::write_request(payload, session, &mut p)
            .map_err(|e| SkynetError::Protocol(e.to_string()))?;
        self.stream.write_all(&p)?;
        Ok(())
    }

    /// Sends raw bytes (for tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), SkynetError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// The next response, in the order they arrive.
    pub fn recv(&mut self) -> Result<Response, SkynetError> {
        if let Some(r) = self.early.pop_front() {
            return Ok(r);
        }
        let content = self.read_packet()?;
        packet::parse_response(&content)
            .ok_or_else(|| SkynetError::Protocol("response shorter than 5 bytes".into()))
    }

    /// Sends a request and waits for the response with its session; other
    /// responses read meanwhile are kept for [`recv`](Self::recv).
    pub fn request(&mut self, payload: &[u8], session: u32) -> Result<Response, SkynetError> {
        self.send(payload, session)?;
        if let Some(i) = self.early.iter().position(|r| r.session == session) {
            return Ok(self.early.remove(i).expect("present"));
        }
        loop {
            let content = self.read_packet()?;
            let r = packet::parse_response(&content)
                .ok_or_else(|| SkynetError::Protocol("response shorter than 5 bytes".into()))?;
            if r.session == session {
                return Ok(r);
            }
            self.early.push_back(r);
        }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

/// How [`SkynetClient`] connects.
#[derive(Debug, Clone)]
pub struct SkynetOptions {
    /// Timeout for every socket operation (tests must never hang).
    pub timeout: Option<Duration>,
}

impl Default for SkynetOptions {
    fn default() -> Self {
        SkynetOptions {
            timeout: Some(Duration::from_secs(10)),
        }
    }
}

fn open(addr: SocketAddr, opts: &SkynetOptions) -> io::Result<TcpStream> {
    let stream = match opts.timeout {
        Some(t) => TcpStream::connect_timeout(&addr, t)?,
        None => TcpStream::connect(addr)?,
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(opts.timeout)?;
    stream.set_write_timeout(opts.timeout)?;
    Ok(stream)
}

/// A logged-in skynet user and its gate connection, as `client.lua` plays it.
pub struct SkynetClient {
    gate_addr: SocketAddr,
    opts: SkynetOptions,
    username: Vec<u8>,
    login: LoginResult,
    index: u64,
    conn: Option<GateConn<TcpStream>>,
}

impl SkynetClient {
    /// Logs in at `login_addr` as `user` of game server `server` with
    /// `password`, then connects to the gate at `gate_addr` with index 1.
    pub fn login(
        login_addr: SocketAddr,
        gate_addr: SocketAddr,
        user: &[u8],
        server: &[u8],
        password: &[u8],
        opts: SkynetOptions,
    ) -> Result<SkynetClient, SkynetError> {
        let token = Token {
            user: user.to_vec(),
            server: server.to_vec(),
            password: password.to_vec(),
        };
        let mut stream = open(login_addr, &opts)?;
        let login = login_over(&mut stream, &token, rand::random())?;
        drop(stream);
        let mut c = SkynetClient {
            gate_addr,
            opts,
            username: packet::username(user, server, &login.subid),
            login,
            index: 0,
            conn: None,
        };
        c.reconnect()?;
        Ok(c)
    }

    /// Drops the current gate connection (if any) and connects again with
    /// the next index. Repeating a session afterwards gets its cached answer.
    pub fn reconnect(&mut self) -> Result<(), SkynetError> {
        self.disconnect();
        self.index += 1;
        let stream = open(self.gate_addr, &self.opts)?;
        self.conn = Some(GateConn::handshake(
            stream,
            &self.username,
            self.index,
            self.login.secret,
        )?);
        Ok(())
    }

    /// Connects with an explicit `index` (for tests of the 403 rule); the
    /// current connection is left alone.
    pub fn handshake_with_index(&self, index: u64) -> Result<GateConn<TcpStream>, SkynetError> {
        let stream = open(self.gate_addr, &self.opts)?;
        GateConn::handshake(stream, &self.username, index, self.login.secret)
    }

    /// Closes the gate connection; the user stays logged in at the gate.
    pub fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = c.stream().shutdown(Shutdown::Both);
        }
    }

    /// The current gate connection.
    pub fn conn(&mut self) -> Result<&mut GateConn<TcpStream>, SkynetError> {
        self.conn
            .as_mut()
            .ok_or_else(|| SkynetError::Protocol("not connected".into()))
    }

    /// Sends a request and waits for its response.
    pub fn request(&mut self, payload: &[u8], session: u32) -> Result<Response, SkynetError> {
        self.conn()?.request(payload, session)
    }

    /// The gate username: `base64(user)@base64(server)#base64(subid)`.
    pub fn username(&self) -> &[u8] {
        &self.username
    }

    /// The login's subid and secret.
    pub fn login_result(&self) -> &LoginResult {
        &self.login
    }

    /// The index of the last handshake.
    pub fn index(&self) -> u64 {
        self.index
    }
}
