//! WebSocket front doors: what a WebSocket carries, how it is closed, and
//! the certificate of the TLS ones.
//!
//! The WebSocket itself (upgrade, frames) is [`crate::proto::ws`]; a
//! connection through a WebSocket door holds a
//! [`WsConn`](crate::proto::ws::WsConn) beside its endpoint, and every byte
//! it receives or sends goes through it. What the messages carry is the
//! door's [`WsMode`]. The WebSocket belongs to the connection, not to the
//! session: an SCP session opened over TCP may resume over a WebSocket and
//! the other way round, because its replay window holds SCP bytes and each
//! connection frames them (or not) as it sends them.
//!
//! # TLS (`wss://`)
//!
//! A [`Door::Wss`](super::Door::Wss) connection has one more stage below
//! the WebSocket: a [`TlsStream`](crate::proto::tls::TlsStream) on the
//! connection's shard. What the socket delivers is decrypted into a
//! per-shard buffer and handed to the `WsConn` as if it had come off a
//! plain socket; what the `WsConn` frames (at most one send's worth) is
//! sealed into records and sent from the send's own buffer. The next batch
//! is sealed only once the last one's records are all out, so a connection
//! holds at most one send of ciphertext besides rustls's own bounded
//! buffers, and no thread other than the shard's touches it. A resume that
//! lands on another shard takes its TLS state along with its WebSocket.
//!
//! New connections take the certificate in force ([`TlsKeys`]); a reload
//! replaces it for the connections that come after, and connections
//! already open keep theirs.
//!
//! # Close codes
//!
//! When the gate ends a WebSocket, the close frame says why
//! ([`close_code`]): 1001 when the gate shuts down or its client was idle
//! too long, 1000 when the session ended normally or moved to a newer
//! connection, 1008 when it was kicked, 1013 when it was refused for lack
//! of room, 1014 when its upstream failed.

use super::session::CloseReason;
use crate::proto::ws::{OutMode, code};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// What the binary messages of a WebSocket door carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMode {
    /// skynet's WebSocket gate clients: each message is one packet with
    /// its 2-byte big-endian length. The messages' bytes are the session's
    /// client stream (to the upstream, or as u16 frames to the workers);
    /// each packet back is one message. No handshake, no resume.
    Packets,
    /// SCP: the handshake and the stream, in messages cut anywhere; the
    /// session resumes with its replay window like one over TCP.
    Scp,
}

impl WsMode {
    /// How outgoing bytes are cut into messages.
    pub fn out_mode(self) -> OutMode {
        match self {
            WsMode::Packets => OutMode::Packets,
            WsMode::Scp => OutMode::Stream,
        }
    }
}

/// The close code and reason for a WebSocket whose session ended for
/// `reason`.
pub fn close_code(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::Shutdown => (code::GOING_AWAY, "gate shutting down"),
        CloseReason::Kicked => (code::POLICY, "kicked"),
        CloseReason::UpstreamUnreachable
        | CloseReason::UpstreamError
        | CloseReason::UpstreamHandshake => (code::BAD_GATEWAY, "upstream failed"),
        CloseReason::ProtocolError => (code::PROTOCOL, "framing broken"),
        CloseReason::SendOverflow => (code::POLICY, "not reading"),
        CloseReason::ReplayExceeded => (code::POLICY, "resume beyond the replay window"),
        CloseReason::ClientClosed | CloseReason::UpstreamClosed | CloseReason::ReuseTimeout => {
            (code::NORMAL, "session ended")
        }
    }
}

/// The certificate and key the TLS doors serve, replaceable while the gate
/// runs: a connection takes the one in force when it is accepted and keeps
/// it.
#[derive(Debug)]
pub struct TlsKeys {
    current: ArcSwap<rustls::ServerConfig>,
}

impl TlsKeys {
    /// Keys starting with `cfg` (see
    /// [`proto::tls::server_config`](crate::proto::tls::server_config)).
    pub fn new(cfg: Arc<rustls::ServerConfig>) -> Arc<TlsKeys> {
        Arc::new(TlsKeys {
            current: ArcSwap::new(cfg),
        })
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Puts `cfg` in force for connections accepted from now on.
    pub fn replace(&self, cfg: Arc<rustls::ServerConfig>) {
        self.current.store(cfg);
    }
}
