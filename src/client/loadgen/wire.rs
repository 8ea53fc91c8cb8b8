//! What lies between a load-generator connection's stream and its socket
//! when the transport is a WebSocket (`--transport ws`) or a WebSocket over
//! TLS (`--transport wss`): the upgrade, masked binary messages, and TLS
//! records, all sans-IO ([`WsClient`], [`TlsStream`]); the shard moves the
//! bytes.
//!
//! A send is a copy: the stream's unsent bytes (and handshake bytes) are
//! framed as one message, sealed if TLS, into the send's own buffer. The
//! window bytes in it are marked sent once the whole buffer is out, and the
//! next batch is framed only then, so a connection holds at most one send's
//! worth of wire bytes.

use crate::proto::tls::TlsStream;
use crate::proto::ws::Ended;
use crate::proto::ws_client::WsClient;
use rustls::pki_types::ServerName;
use std::sync::Arc;

/// The TLS side of `--transport wss`.
#[derive(Debug, Clone)]
pub struct TlsClientSettings {
    /// Trust and ALPN (see [`crate::proto::tls::client_config`],
    /// [`crate::proto::tls::insecure_client_config`]).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry (a DNS name or an IP address).
    pub server_name: ServerName<'static>,
}

/// What one receive came to.
pub(super) struct WireRead {
    /// Stream bytes at the front of the buffer returned beside it.
    pub payload: usize,
    /// The upgrade was answered: stream bytes may go now.
    pub upgraded: bool,
    /// The connection ended (why, for the report).
    pub ended: Option<String>,
}

/// One connection's WebSocket, and TLS below it.
pub(super) struct Wire {
    ws: WsClient,
    tls: Option<TlsStream>,
    /// Wire bytes a short send left: they go first.
    pending: Vec<u8>,
    /// Window bytes in the send in flight (and `pending`).
    owed: usize,
    /// Plaintext frames before they are sealed (reused).
    frames: Vec<u8>,
}

impl Wire {
    /// A connection asking `host` for `path`, over TLS when `tls` is given;
    /// `random` seeds its key and masks.
    pub fn new(
        host: &str,
        path: &str,
        tls: Option<&TlsClientSettings>,
        random: [u64; 3],
    ) -> Result<Wire, String> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&random[0].to_le_bytes());
        key[8..].copy_from_slice(&random[1].to_le_bytes());
        let tls = match tls {
            Some(t) => Some(
                TlsStream::client(t.config.clone(), t.server_name.clone())
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        Ok(Wire {
            ws: WsClient::new(host, path, key, random[2]),
            tls,
            pending: Vec::new(),
            owed: 0,
            frames: Vec::new(),
        })
    }

    /// Whether the upgrade was answered (stream bytes may be framed).
    pub fn is_open(&self) -> bool {
        self.ws.is_open()
    }

    /// Whether wire bytes of a short send wait to go first.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The wire bytes a short send left (to send now).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// The next send: queued WebSocket bytes and `pieces` as one message
    /// (once open), sealed when TLS, plus whatever TLS has to say. `window`
    /// of the pieces' bytes are the stream window's (marked sent by
    /// [`sent`](Self::sent) once all is out).
    pub fn fill(&mut self, pieces: &[&[u8]], window: usize, out: &mut Vec<u8>) {
        match self.tls.as_mut() {
            Some(tls) => {
                self.frames.clear();
                self.ws.fill(pieces, &mut self.frames);
                tls.seal(&self.frames);
                tls.take_wire(out);
                if self.frames.capacity() > 1 << 17 {
                    self.frames = Vec::new();
                }
            }
            None => {
                self.ws.fill(pieces, out);
            }
        }
        if self.ws.is_open() {
            self.owed += window;
        }
    }

    /// A send of `out` wrote `n` bytes. Returns the window bytes now out
    /// (when the last of them went).
    pub fn sent(&mut self, out: &[u8], n: usize) -> usize {
        if n < out.len() {
            let mut rest = out[n..].to_vec();
            rest.append(&mut self.pending);
            self.pending = rest;
            return 0;
        }
        if self.pending.is_empty() {
            std::mem::take(&mut self.owed)
        } else {
            0
        }
    }

    /// Bytes received. The stream bytes they carried end up at the front
    /// of `data` (plain WebSocket) or of `plain` (TLS, decrypted there):
    /// the returned flag says which (`true`: `plain`).
    pub fn recv(&mut self, data: &mut [u8], plain: &mut Vec<u8>) -> (WireRead, bool) {
        let mut read = WireRead {
            payload: 0,
            upgraded: false,
            ended: None,
        };
        let (buf, in_plain): (&mut [u8], bool) = match self.tls.as_mut() {
            Some(tls) => {
                plain.clear();
                match tls.handle_bytes(data, plain) {
                    Ok(r) if r.peer_closed && plain.is_empty() => {
                        read.ended = Some("closed by the server (TLS close_notify)".into());
                        return (read, true);
                    }
                    Ok(_) => (&mut plain[..], true),
                    Err(e) => {
                        read.ended = Some(e.to_string());
                        return (read, true);
                    }
                }
            }
            None => (data, false),
        };
        let r = self.ws.handle_bytes(buf);
        read.payload = r.payload;
        read.upgraded = r.upgraded;
        read.ended = r.ended.map(|e| match e {
            Ended::Refused { status, why } => {
                format!("websocket upgrade refused ({status}): {why}")
            }
            Ended::Failed { code, why } => format!("websocket failed ({code}): {why}"),
            Ended::Closed(code) => format!("websocket closed by the server ({code:?})"),
        });
        (read, in_plain)
    }
}
