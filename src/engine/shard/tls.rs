//! The TLS stage of a connection through a TLS door, on its shard: what the
//! socket delivers is decrypted here and handed to the connection's
//! WebSocket as plaintext; what the WebSocket sends is sealed here into
//! records. See [`crate::engine::ws`] for the whole picture.

use super::*;
use crate::proto::tls::TlsStream;

/// A connection's TLS state.
#[derive(Debug)]
pub(crate) struct TlsConn {
    stream: TlsStream,
    /// Ciphertext a short send left: it goes before anything else.
    wire: Vec<u8>,
    /// Stream bytes sealed into the records in flight (and `wire`): the
    /// session hears they went out once those records are all out.
    owed: usize,
    /// close_notify was queued.
    notified: bool,
}

/// Most plaintext capacity the shard keeps for decrypting between receives.
const PLAIN_KEEP: usize = 64 * 1024;

impl Shard {
    /// A new connection through a TLS door gets its TLS state, with the
    /// certificate in force now. False if it could not (it is closed).
    pub(super) fn tls_accepted(&mut self, ci: usize) -> bool {
        let Some(keys) = self.cfg.tls.as_ref() else {
            self.client_gone(ci, "TLS door without a certificate");
            return false;
        };
        match TlsStream::server(keys.current()) {
            Ok(stream) => {
                self.conns[ci].tls = Some(Box::new(TlsConn {
                    stream,
                    wire: Vec::new(),
                    owed: 0,
                    notified: false,
                }));
                true
            }
            Err(e) => {
                self.client_gone(ci, &format!("cannot start TLS: {e}"));
                false
            }
        }
    }

    /// Ciphertext received on connection `ci`: its plaintext goes to the
    /// WebSocket. A TLS error ends the connection (after its alert).
    pub(super) fn tls_data(&mut self, ci: usize, data: &[u8]) {
        let Some(tls) = self.conns[ci].tls.as_mut() else {
            return;
        };
        let mut plain = std::mem::take(&mut self.tls_plain);
        plain.clear();
        match tls.stream.handle_bytes(data, &mut plain) {
            Ok(read) => {
                if read.handshake_done {
                    let conn = &self.conns[ci];
                    debug!(shard = self.index, peer = %Addr(conn.peer), "tls handshake done");
                }
                if !plain.is_empty() {
                    self.ws_data(ci, &mut plain);
                }
                if read.peer_closed && self.conns.contains(ci) {
                    self.client_gone(ci, "client closed TLS (close_notify)");
                }
            }
            Err(e) => self.tls_failed(ci, &e.to_string()),
        }
        if plain.capacity() > PLAIN_KEEP {
            plain = Vec::new();
        }
        self.tls_plain = plain;
    }

    /// The peer broke TLS (garbage, a failed handshake): the connection
    /// sends the alert rustls queued, then closes. Its session, if any,
    /// loses the connection.
    fn tls_failed(&mut self, ci: usize, why: &str) {
        let conn = &mut self.conns[ci];
        debug!(shard = self.index, peer = %Addr(conn.peer), door = %conn.door, "{why}");
        match std::mem::replace(&mut conn.state, ConnState::Finishing) {
            ConnState::Greeting(_) => {
                self.greeting -= 1;
                self.count(|s| &s.handshake_failed);
            }
            ConnState::Attached(si, sg) => self.detach(si, sg, ci, why),
            _ => {}
        }
    }

    /// Sends for a TLS connection: ciphertext a short send left, else
    /// `plain` (what its WebSocket framed, with `payload` stream bytes in
    /// it) sealed along with whatever rustls has to say (handshake,
    /// close_notify once `last`). Returns false when nothing was sent.
    pub(super) fn tls_send(&mut self, ci: usize, plain: &[u8], payload: usize, last: bool) -> bool {
        let Shard { d, conns, .. } = self;
        let conn = &mut conns[ci];
        let epoch = conn.epoch;
        let Some(tls) = conn.tls.as_mut() else {
            return false;
        };
        let mut out = std::mem::take(&mut tls.wire);
        if out.is_empty() {
            tls.stream.seal(plain);
            tls.owed += payload;
            if last && !tls.notified {
                tls.notified = true;
                tls.stream.close();
            }
            tls.stream.take_wire(&mut out);
        }
        if out.is_empty() {
            return false;
        }
        conn.ep.send_owned(d, out, Tag::new(Op::Send, ci, epoch));
        true
    }

    /// Whether connection `ci`'s TLS stage has ciphertext left to send
    /// before anything new may be sealed.
    pub(super) fn tls_backlog(&self, ci: usize) -> bool {
        self.conns[ci]
            .tls
            .as_ref()
            .is_some_and(|t| !t.wire.is_empty())
    }

    /// A send of `out` on a TLS connection wrote `n` bytes: the rest goes
    /// first next time. Returns the stream bytes whose records are now all
    /// out.
    pub(super) fn tls_sent(&mut self, ci: usize, out: &[u8], n: usize) -> usize {
        let Some(tls) = self.conns[ci].tls.as_mut() else {
            return 0;
        };
        if n < out.len() {
            let mut rest = out[n..].to_vec();
            rest.append(&mut tls.wire);
            tls.wire = rest;
            return 0;
        }
        if tls.wire.is_empty() {
            std::mem::take(&mut tls.owed)
        } else {
            0
        }
    }
}
