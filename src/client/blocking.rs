//! A blocking SCP client over `std::net::TcpStream`, or over KCP
//! ([`super::kcp::KcpStream`], as kcp-go clients connect to goscon).
//!
//! It keeps its session across connections: [`ScpClient::resume`] opens a
//! new connection, proves it holds the session, and resends what the server
//! missed from its own replay window, exactly as deployed clients do. A
//! resume may take another transport ([`ScpClient::resume_via`]).

use crate::proto::client::{ClientEvent, ClientHandshake};
use crate::proto::message::Status;
use crate::proto::session::Session;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `targetServer` to ask for.
    pub target: Option<String>,
    /// Flag bits (0x1: do not announce my address upstream).
    pub flag: Option<i32>,
    /// Replay window size.
    pub window: usize,
    /// Read timeout for every socket operation (tests must never hang).
    pub timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            target: None,
            flag: None,
            window: 65536,
            timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// Why a resume failed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The server answered with a status other than 200.
    #[error("server refused the resume with {0}")]
    Refused(u16),
    /// The server's answer was unusable.
    #[error("bad resume answer: {0}")]
    Protocol(String),
    /// We cannot resend what the server is missing (406 on our side).
    #[error("server is missing more than our replay window holds")]
    NotAcceptable,
    /// Socket trouble.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where and how a client connects.
#[derive(Debug, Clone)]
pub enum Via {
    /// TCP to this address.
    Tcp(SocketAddr),
    /// KCP to this (UDP) address.
    Kcp(SocketAddr, super::kcp::KcpDial),
}

/// A connection of either transport.
enum Stream {
    Tcp(TcpStream),
    Kcp(Box<super::kcp::KcpStream>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Kcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Kcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Kcp(s) => s.flush(),
        }
    }
}

/// A connected SCP session.
pub struct ScpClient {
    via: Via,
    stream: Stream,
    session: Session,
    opts: ClientOptions,
    /// Bytes read past the handshake record, still encrypted.
    pending: Vec<u8>,
}

fn handshake(stream: &mut Stream, mut hs: ClientHandshake) -> io::Result<(ClientEvent, Vec<u8>)> {
    stream.write_all(&hs.take_output())?;
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed during the handshake",
            ));
        }
        let used = hs.recv(&buf[..n]);
        match hs.poll() {
            ClientEvent::NeedMore => continue,
            ev => return Ok((ev, buf[used..n].to_vec())),
        }
    }
}

fn open(via: &Via, opts: &ClientOptions) -> io::Result<Stream> {
    let addr = match via {
        Via::Tcp(addr) => *addr,
        Via::Kcp(addr, dial) => {
            return Ok(Stream::Kcp(Box::new(super::kcp::KcpStream::connect(
                *addr,
                dial,
                opts.timeout,
            )?)));
        }
    };
    let stream = match opts.timeout {
        Some(t) => TcpStream::connect_timeout(&addr, t)?,
        None => TcpStream::connect(addr)?,
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(opts.timeout)?;
    stream.set_write_timeout(opts.timeout)?;
    Ok(Stream::Tcp(stream))
}

impl ScpClient {
    /// Opens a new session over TCP.
    pub fn connect(addr: SocketAddr, opts: ClientOptions) -> io::Result<ScpClient> {
        Self::connect_via(Via::Tcp(addr), opts)
    }

    /// Opens a new session over the given transport.
    pub fn connect_via(via: Via, opts: ClientOptions) -> io::Result<ScpClient> {
        let mut stream = open(&via, &opts)?;
        let random = rand::random::<u64>();
        let hs = ClientHandshake::new_session(random, opts.target.as_deref(), opts.flag);
        match handshake(&mut stream, hs)? {
            (ClientEvent::Established { id, secret }, pending) => Ok(ScpClient {
                via,
                stream,
                session: Session::new(id, secret, opts.window),
                opts,
                pending,
            }),
            (ev, _) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("handshake failed: {ev:?}"),
            )),
        }
    }

    /// The session id the server assigned.
    pub fn id(&self) -> u32 {
        self.session.id()
    }

    /// The session state (counters, window).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The current connection's socket.
    ///
    /// # Panics
    /// On a KCP connection, which has no TCP socket.
    pub fn stream(&self) -> &TcpStream {
        match &self.stream {
            Stream::Tcp(s) => s,
            Stream::Kcp(_) => panic!("a KCP connection has no TCP socket"),
        }
    }

    /// The current connection's KCP stream, when it is one.
    pub fn kcp_stream(&self) -> Option<&super::kcp::KcpStream> {
        match &self.stream {
            Stream::Kcp(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }

    fn flush_window(&mut self) -> io::Result<()> {
        let w = self.session.window();
        let pieces: Vec<Vec<u8>> = w.slices_from(w.flushed()).map(|s| s.to_vec()).collect();
        for p in pieces {
            self.stream.write_all(&p)?;
            self.session.window_mut().mark_sent(p.len());
        }
        Ok(())
    }

    /// Encrypts and sends all of `data`. Bytes stay in the replay window, so a
    /// write that fails because the connection died is resent by [`resume`](Self::resume).
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.session.encrypt(data);
            data = &data[n..];
            self.flush_window()?;
        }
        Ok(())
    }

    /// Reads and decrypts some bytes (0 = the server closed the connection).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            n
        } else {
            self.stream.read(buf)?
        };
        self.session.decrypt(&mut buf[..n]);
        Ok(n)
    }

    /// Reads exactly `buf.len()` bytes.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read(&mut buf[got..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            got += n;
        }
        Ok(())
    }

    /// Drops the connection with a TCP reset (no FIN), as a network loss
    /// looks to the gate; the session survives for [`resume`](Self::resume).
    /// A KCP connection has nothing to reset: it just stops being used
    /// (the gate's conversation times out, or the resume takes it over).
    pub fn abort(&mut self) {
        if let Stream::Tcp(stream) = &self.stream {
            let sock = socket2::SockRef::from(stream);
            let _ = sock.set_linger(Some(Duration::ZERO));
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Reconnects and resumes the session on a new connection of the
    /// transport it last used. The old connection, if still open, is left
    /// alone (the server takes it over).
    pub fn resume(&mut self) -> Result<(), ResumeError> {
        self.resume_via(self.via.clone())
    }

    /// Resumes the session over `via` (TCP after KCP, or the other way).
    pub fn resume_via(&mut self, via: Via) -> Result<(), ResumeError> {
        let mut stream = open(&via, &self.opts)?;
        let req = self.session.resume_request();
        let hs = ClientHandshake::resume(req.id, req.index, req.received, self.session.secret());
        match handshake(&mut stream, hs)? {
            (ClientEvent::Resumed { server_received }, pending) => {
                self.session
                    .resumed(server_received)
                    .map_err(|_| ResumeError::NotAcceptable)?;
                let old = std::mem::replace(&mut self.stream, stream);
                drop(old);
                self.via = via;
                self.pending = pending;
                self.flush_window()?;
                Ok(())
            }
            (ClientEvent::Rejected { code, .. }, _) => Err(ResumeError::Refused(code)),
            (ev, _) => Err(ResumeError::Protocol(format!("{ev:?}"))),
        }
    }

    /// Sends a resume whose index is not above the last one (a replay) and
    /// returns the server's code. For tests of the 403 rule.
    pub fn resume_with_index(&mut self, index: u64) -> Result<u16, ResumeError> {
        let mut stream = open(&self.via, &self.opts)?;
        let received = self.session.received() as u32;
        let hs = ClientHandshake::resume(self.session.id(), index, received, self.session.secret());
        match handshake(&mut stream, hs)? {
            (ClientEvent::Resumed { .. }, _) => Ok(Status::Ok.code()),
            (ClientEvent::Rejected { code, .. }, _) => Ok(code),
            (ev, _) => Err(ResumeError::Protocol(format!("{ev:?}"))),
        }
    }
}
