//! WebSocket front doors: what a WebSocket carries.
//!
//! The WebSocket itself (upgrade, frames) is [`crate::proto::ws`]; a
//! connection through a WebSocket door holds a
//! [`WsConn`](crate::proto::ws::WsConn) beside its endpoint, and every byte
//! it receives or sends goes through it. What the messages carry is the
//! door's [`WsMode`]. The WebSocket belongs to the connection, not to the
//! session: an SCP session opened over TCP may resume over a WebSocket and
//! the other way round, because its replay window holds SCP bytes and each
//! connection frames them (or not) as it sends them.

use crate::proto::ws::OutMode;

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
