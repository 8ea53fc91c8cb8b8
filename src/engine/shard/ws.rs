//! WebSocket connections on a shard: their received bytes go through the
//! connection's [`WsConn`] (the upgrade, then frames, unmasked in place)
//! before the greeting or the session sees them, and what they send is
//! framed by it. See [`crate::engine::ws`].
//!
//! Outgoing session bytes are copied into the send's own buffer behind
//! their frame header instead of being sent from the replay window: the
//! header needs memory that lives as long as the send, and a copy of at
//! most [`SEND_CAP`] bytes per send keeps the window free to move. Through
//! a TLS door the same batch is sealed into records instead (see `tls.rs`).
//!
//! When the gate itself ends an open WebSocket (its session closed, idle
//! timeout, the session resumed elsewhere) it sends a close frame with a
//! code first ([`close_code`]), and closes the connection once it is out,
//! or at the handshake timeout if it cannot go.

use super::*;
use crate::engine::ring::Owned;
use crate::engine::ws::{WsMode, close_code};
use crate::proto::ws::{Ended, WsConn, code};

/// Most payload bytes one send carries.
const SEND_CAP: usize = 64 * 1024;

impl Shard {
    /// A new connection through a WebSocket door gets its WebSocket state.
    pub(super) fn ws_accepted(&mut self, ci: usize, mode: WsMode) {
        let ws = WsConn::new(mode.out_mode(), self.cfg.ws.max_message);
        self.conns[ci].ws = Some(Box::new(ws));
    }

    /// Bytes received on a WebSocket connection.
    pub(super) fn ws_data(&mut self, ci: usize, data: &mut [u8]) {
        let conn = &mut self.conns[ci];
        let Some(ws) = conn.ws.as_mut() else {
            return;
        };
        let read = ws.handle_bytes(data, &self.cfg.ws);
        if read.upgraded {
            debug!(shard = self.index, peer = %Addr(conn.peer), door = %conn.door, "websocket upgraded");
            if conn.door.ws_mode() == Some(WsMode::Packets) {
                self.open_ws_packets(ci);
            }
        }
        if read.payload > 0 && self.conns.contains(ci) {
            self.client_stream(ci, &mut data[..read.payload]);
        }
        if let Some(ended) = read.ended {
            let why = match ended {
                Ended::Refused { status, why } => format!("upgrade refused ({status}): {why}"),
                Ended::Failed { code, why } => format!("closed with {code}: {why}"),
                Ended::Closed(c) => format!("client closed the websocket ({c:?})"),
            };
            self.ws_end(ci, &why);
        }
    }

    /// A packets-mode WebSocket is upgraded: its session opens (a plain
    /// session: the messages' bytes are its stream).
    fn open_ws_packets(&mut self, ci: usize) {
        self.end_greeting(ci);
        let refusal = if self.draining() {
            self.count(|s| &s.new_refused_draining);
            Some((code::GOING_AWAY, "draining: new sessions refused"))
        } else if self.max_sessions_reached() {
            self.warn_limit("max_sessions reached: new sessions are being refused");
            Some((code::TRY_AGAIN_LATER, "session limit reached"))
        } else {
            None
        };
        if let Some((code, why)) = refusal {
            debug!(shard = self.index, peer = %Addr(self.conns[ci].peer), "websocket refused: {why}");
            if let Some(ws) = self.conns[ci].ws.as_mut() {
                ws.close_with(code, why);
            }
            return;
        }
        self.open_plain_session(ci);
    }

    /// A new session refused on a WebSocket connection says why in its
    /// close frame (an SCP client also gets no answer record).
    pub(super) fn ws_refuse(&mut self, ci: usize, code: u16, why: &str) {
        if let Some(ws) = self.conns.get_mut(ci).and_then(|c| c.ws.as_mut()) {
            ws.close_with(code, why);
        }
    }

    /// The WebSocket ended (refused, failed or closed by the client): its
    /// session (if any) loses the connection, which sends what its
    /// WebSocket queued (an HTTP error or a close frame) and then closes.
    fn ws_end(&mut self, ci: usize, why: &str) {
        let Some(conn) = self.conns.get_mut(ci) else {
            return;
        };
        let peer = conn.peer;
        debug!(shard = self.index, peer = %Addr(peer), "websocket: {why}");
        match std::mem::replace(&mut conn.state, ConnState::Finishing) {
            ConnState::Greeting(_) => {
                self.greeting -= 1;
                self.count(|s| &s.handshake_failed);
            }
            ConnState::Attached(si, sg) => self.detach(si, sg, ci, why),
            _ => {}
        }
    }

    /// Closes connection `ci` for a session that ended for `reason`: a
    /// WebSocket says so with a close frame first ([`close_code`]).
    pub(super) fn end_conn(&mut self, ci: usize, reason: CloseReason) {
        let (code, why) = close_code(reason);
        if !self.finish_ws(ci, code, why) {
            self.close_conn(ci);
        }
    }

    /// The gate lets go of connection `ci` (idle too long, or its session
    /// moved to a newer connection): its session, if it still has it,
    /// loses it; an open WebSocket gets a close frame with `code` first,
    /// anything else is closed at once.
    pub(super) fn dismiss_conn(&mut self, ci: usize, code: u16, why: &str) {
        let Some(conn) = self.conns.get_mut(ci) else {
            return;
        };
        if !conn.ws.as_ref().is_some_and(|w| w.is_open()) {
            self.client_gone(ci, why);
            return;
        }
        debug!(shard = self.index, peer = %Addr(conn.peer), "closing websocket with {code}: {why}");
        match std::mem::replace(&mut conn.state, ConnState::Finishing) {
            ConnState::Greeting(_) => {
                self.greeting -= 1;
                self.count(|s| &s.handshake_failed);
            }
            ConnState::Attached(si, sg) => self.detach(si, sg, ci, why),
            _ => {}
        }
        self.finish_ws(ci, code, why);
    }

    /// If connection `ci` is an open WebSocket: queues its close frame,
    /// sends what is left and then closes it (within the handshake
    /// timeout, whatever the client does). False if it is not one.
    fn finish_ws(&mut self, ci: usize, code: u16, why: &str) -> bool {
        let Some(conn) = self.conns.get_mut(ci) else {
            return true;
        };
        match conn.ws.as_mut() {
            Some(ws) if ws.is_open() => {
                ws.close_with(code, why);
                conn.state = ConnState::Finishing;
                let timer = crate::engine::timer::Entry {
                    index: ci,
                    epoch: conn.epoch,
                };
                self.hs_timers.push(Instant::now(), timer);
                self.sync_conn(ci);
                true
            }
            _ => false,
        }
    }

    /// Sends what a WebSocket connection has: queued wire bytes, an answer
    /// as a message, session bytes framed (and, through a TLS door,
    /// sealed); closes it once it is finishing and everything went out.
    pub(super) fn ws_send(&mut self, ci: usize) {
        if self.tls_backlog(ci) {
            self.tls_send(ci, &[], 0, false);
            return;
        }
        let Shard {
            d, sessions, conns, ..
        } = self;
        let conn = &mut conns[ci];
        let epoch = conn.epoch;
        let tls = conn.tls.is_some();
        let Some(ws) = conn.ws.as_mut() else {
            return;
        };
        if !conn.answer.is_empty() {
            ws.push_message(&std::mem::take(&mut conn.answer));
        }
        let finishing = matches!(conn.state, ConnState::Finishing);
        if finishing && !ws.closing() {
            // A final answer (a refused SCP handshake) is followed by a
            // close: its status record says why.
            ws.close(code::NORMAL);
        }
        let mut out = Vec::new();
        let payload = match conn.state {
            ConnState::Attached(si, sg) => match sessions.get_mut(si).filter(|s| s.epoch == sg) {
                Some(s) => {
                    let pieces: smallvec::SmallVec<[&[u8]; 4]> = s.relay.client_pieces().collect();
                    ws.fill(&pieces, SEND_CAP, &mut out)
                }
                None => ws.fill(&[], SEND_CAP, &mut out),
            },
            _ => ws.fill(&[], SEND_CAP, &mut out),
        };
        if tls {
            // The whole batch becomes records now; its stream bytes count
            // as sent once the records are out (`ws_sent`).
            let done = ws.sent(&out, out.len());
            let (flushed, mid) = (ws.flushed(), ws.mid_message());
            if !self.tls_send(ci, &out, done, finishing && flushed) && finishing && (flushed || mid)
            {
                self.close_conn(ci);
            }
            return;
        }
        if out.is_empty() {
            // A message half sent whose session is gone cannot be
            // finished: the connection closes without its close frame.
            if finishing && (ws.flushed() || ws.mid_message()) {
                self.close_conn(ci);
            }
            return;
        }
        conn.sending_session = payload > 0;
        conn.ep.send_owned(d, out, Tag::new(Op::Send, ci, epoch));
    }

    /// A send on a WebSocket connection completed with `n` bytes of `mem`.
    pub(super) fn ws_sent(&mut self, ci: usize, n: usize, mem: Owned) {
        let Owned::Bytes(out) = mem else {
            return;
        };
        let done = if self.conns[ci].tls.is_some() {
            self.tls_sent(ci, &out, n)
        } else {
            let Some(ws) = self.conns[ci].ws.as_mut() else {
                return;
            };
            ws.sent(&out, n)
        };
        match self.attached(ci) {
            Some(si) => {
                if done > 0 {
                    self.sessions[si].relay.handle_client_sent(done);
                }
                self.sync(si);
            }
            None => self.sync_conn(ci),
        }
    }
}
