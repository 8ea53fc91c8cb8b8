//! A blocking client of cloudwu's stable-connection dialect over
//! `std::net::TcpStream`, for tests and tools.
//!
//! It behaves as the published client does: a new session is 16 bytes out,
//! 16 in, then the proof; a resume sends the count received and the
//! fingerprint at its last 256-byte boundary, and after the server's answer
//! resends the ciphertext the server missed, as first sent.

use super::blocking::{ClientOptions, ResumeError};
use crate::proto::stable::{self, ClientHandshake, ClientStep, Role, StableSession};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// A connected stable-connection session.
pub struct StableClient {
    addr: SocketAddr,
    stream: TcpStream,
    session: StableSession,
    opts: ClientOptions,
}

fn open(addr: SocketAddr, opts: &ClientOptions) -> io::Result<TcpStream> {
    let stream = match opts.timeout {
        Some(t) => TcpStream::connect_timeout(&addr, t)?,
        None => TcpStream::connect(addr)?,
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(opts.timeout)?;
    stream.set_write_timeout(opts.timeout)?;
    Ok(stream)
}

/// Reads the server's 16-byte answer (the server sends nothing else before
/// the proof, so nothing more is read).
fn answer(stream: &mut TcpStream, hs: &mut ClientHandshake) -> io::Result<ClientStep> {
    let mut buf = [0u8; stable::HEADER];
    stream.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed during the handshake",
            )
        } else {
            e
        }
    })?;
    hs.recv(&buf);
    Ok(hs.poll())
}

impl StableClient {
    /// Opens a new session (`opts.window` is the replay window; the
    /// published client keeps 64 KiB).
    pub fn connect(addr: SocketAddr, opts: ClientOptions) -> io::Result<StableClient> {
        let mut stream = open(addr, &opts)?;
        let (mut hs, req) = ClientHandshake::new_session(rand::random::<u64>());
        stream.write_all(&req)?;
        match answer(&mut stream, &mut hs)? {
            ClientStep::Established { secret, auth } => {
                stream.write_all(&auth)?;
                Ok(StableClient {
                    addr,
                    stream,
                    session: StableSession::new(Role::Client, secret, opts.window),
                    opts,
                })
            }
            step => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("handshake failed: {step:?}"),
            )),
        }
    }

    /// The session state (counters, window).
    pub fn session(&self) -> &StableSession {
        &self.session
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

    /// Encrypts and sends all of `data`; the bytes stay in the replay
    /// window for a resume.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.session.encrypt(data);
            data = &data[n..];
            self.flush_window()?;
        }
        Ok(())
    }

    /// Encrypts `data` into the window as if it had been sent, without
    /// sending it: what a connection that died loses. A resume resends it.
    pub fn write_lost(&mut self, data: &[u8]) {
        let n = self.session.encrypt(data);
        self.session.window_mut().mark_sent(n);
    }

    /// Reads and decrypts some bytes (0 = the server closed the connection).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
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

    /// Drops the connection with a TCP reset, as a network loss looks to
    /// the gate; the session survives for [`resume`](Self::resume).
    pub fn abort(&mut self) {
        let sock = socket2::SockRef::from(&self.stream);
        let _ = sock.set_linger(Some(Duration::ZERO));
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reconnects and resumes on a new connection. A client that received
    /// nothing cannot resume in this dialect (its request would read as a
    /// new session): that is an error here.
    pub fn resume(&mut self) -> Result<(), ResumeError> {
        let req = self.session.resume_request().ok_or_else(|| {
            ResumeError::Protocol("nothing received yet: the dialect starts a new session".into())
        })?;
        self.resume_with_request(req)
    }

    /// Sends `req` as the resume request, then proves this session's secret
    /// and resends: with another session's request this is what a
    /// fingerprint collision looks like to the server.
    pub fn resume_with_request(
        &mut self,
        req: [u8; stable::RESUME_HEADER],
    ) -> Result<(), ResumeError> {
        let mut stream = open(self.addr, &self.opts)?;
        stream.write_all(&req)?;
        let mut hs = ClientHandshake::resume();
        match answer(&mut stream, &mut hs)? {
            ClientStep::Answered {
                server_received,
                challenge,
            } => {
                let auth = self
                    .session
                    .resumed(server_received, challenge)
                    .map_err(|_| ResumeError::NotAcceptable)?;
                stream.write_all(&auth)?;
                self.stream = stream;
                self.flush_window()?;
                Ok(())
            }
            step => Err(ResumeError::Protocol(format!("{step:?}"))),
        }
    }

    /// The current connection's socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}
