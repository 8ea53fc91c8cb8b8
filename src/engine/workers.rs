//! What the shards exchange with the embedding program's worker threads:
//! [`Event`]s pushed into each worker's bounded queue, commands popped
//! from each shard's command queue, and the [`WorkerHub`] that holds the
//! queues' senders and the framing.
//!
//! The engine owns these types because the shards produce and consume them;
//! the embedded front end builds the queues and hands the application its
//! ends.

use super::CloseReason;
use super::session_id::SessionId;
use crate::proto::frame::{FrameError, FrameFormat};
use bytes::Bytes;
use crossbeam_channel::Sender;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What happened to a session. A session's events arrive in this order:
/// `Opened`, then `Frame`s interleaved with `Detached`/`Resumed`, then one
/// `Closed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new session (an SCP new-session handshake, or a plain connection).
    Opened {
        /// The session.
        session: SessionId,
        /// The client's address, when the kernel told it.
        peer: Option<SocketAddr>,
        /// The target the SCP client asked for, if any.
        target: Option<String>,
        /// The SCP client's flag field (0 when absent or plain).
        flag: i32,
    },
    /// One whole frame from the client, without its framing.
    Frame {
        /// The session.
        session: SessionId,
        /// The payload.
        data: Bytes,
    },
    /// The client reconnected; frames sent while it was away follow it.
    /// (A resume that replaces a live connection comes without `Detached`.)
    Resumed {
        /// The session.
        session: SessionId,
    },
    /// The connection dropped; the session waits `reuse_time` for a resume.
    /// Frames sent meanwhile are buffered.
    Detached {
        /// The session.
        session: SessionId,
    },
    /// The session ended; its id is no longer valid.
    Closed {
        /// The session.
        session: SessionId,
        /// Why. [`CloseReason::ClientClosed`] is the peer closing (plain
        /// mode; SCP clients detach instead).
        reason: CloseReason,
    },
}

impl Event {
    /// The session the event is about.
    pub fn session(&self) -> SessionId {
        match self {
            Event::Opened { session, .. }
            | Event::Frame { session, .. }
            | Event::Resumed { session }
            | Event::Detached { session }
            | Event::Closed { session, .. } => *session,
        }
    }
}

/// A frame encoded for the wire: its header, the payload (shared, not
/// copied) and its trailer. The shard copies it into the session's window.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    head: [u8; 24],
    head_len: u8,
    payload: Bytes,
    comma: bool,
}

impl Encoded {
    pub(crate) fn new(format: FrameFormat, payload: Bytes) -> Result<Encoded, FrameError> {
        let len = payload.len();
        let max = format.format_max();
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let mut head = [0u8; 24];
        let head_len = match format {
            FrameFormat::U16Be => {
                head[..2].copy_from_slice(&(len as u16).to_be_bytes());
                2
            }
            FrameFormat::U32Be => {
                head[..4].copy_from_slice(&(len as u32).to_be_bytes());
                4
            }
            FrameFormat::Netstring => {
                let digits = len.to_string();
                let n = digits.len(); // at most 20 digits for a u64
                head[..n].copy_from_slice(digits.as_bytes());
                head[n] = b':';
                n + 1
            }
            FrameFormat::Raw => 0,
        };
        Ok(Encoded {
            head,
            head_len: head_len as u8,
            payload,
            comma: format == FrameFormat::Netstring,
        })
    }

    /// Bytes on the wire.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.head_len as usize + self.payload.len() + self.comma as usize
    }

    /// The wire bytes in order.
    pub(crate) fn parts(&self) -> [&[u8]; 3] {
        let tail: &[u8] = if self.comma { b"," } else { b"" };
        [&self.head[..self.head_len as usize], &self.payload, tail]
    }
}

/// A command from the application to the shard owning the session(s).
pub(crate) enum Command {
    Send(SessionId, Encoded),
    SendMany(Vec<SessionId>, Encoded),
    Broadcast(Encoded),
    Kick(SessionId),
}

/// The shards' side of embedded mode: the worker queues' senders and the
/// framing. Made by the embedded front end when it starts a gate; opaque to
/// the application.
///
/// Only the shards hold it, so the queues disconnect (and every worker's
/// receiver ends) once the last shard has exited.
pub struct WorkerHub {
    pub(crate) senders: Vec<Sender<Event>>,
    /// Per worker: a shard found its queue full and wants a wake-up when
    /// the worker takes something.
    pub(crate) wanted: Arc<[AtomicBool]>,
    pub(crate) format: FrameFormat,
    pub(crate) max_frame: usize,
    pub(crate) command_capacity: usize,
}

impl std::fmt::Debug for WorkerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHub")
            .field("workers", &self.senders.len())
            .field("format", &self.format)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(format: FrameFormat, payload: &[u8]) -> Vec<u8> {
        let e = Encoded::new(format, Bytes::copy_from_slice(payload)).unwrap();
        let wire: Vec<u8> = e.parts().concat();
        assert_eq!(wire.len(), e.len());
        wire
    }

    #[test]
    fn encoded_matches_encode_frame() {
        for format in [
            FrameFormat::U16Be,
            FrameFormat::U32Be,
            FrameFormat::Netstring,
            FrameFormat::Raw,
        ] {
            for payload in [&b""[..], b"x", &[7u8; 1000]] {
                let mut want = Vec::new();
                crate::proto::frame::encode_frame(format, payload, &mut want).unwrap();
                assert_eq!(wire(format, payload), want, "{format:?}");
            }
        }
        assert!(Encoded::new(FrameFormat::U16Be, Bytes::from(vec![0; 65536])).is_err());
    }
}
