//! The session core: what a session does with bytes, with no I/O.
//!
//! A session has a client side (the bytes going to the client: SCP's replay
//! window, or a bounded plain queue) and a peer side (the built-in echo, an
//! upstream link, or the embedding program's workers). The shard feeds it
//! what happened — bytes received on either side (`handle_*_bytes`), sends
//! completed (`handle_*_sent`), the client leaving or coming back, the
//! upstream ending — and then asks it what it wants: how many bytes each
//! side may receive now ([`Relay::client_room`], [`Relay::peer_room`]),
//! what to send next ([`Relay::client_out`], [`Relay::peer_out`]), what to
//! tell the workers ([`Relay::take_notes`]), and whether it is finished
//! ([`Relay::poll_close`]). The shard turns those answers into submissions.
//! Before a connection has a session, [`Greeting`] reads its first record
//! and says what it asks for — a new session, a resume here, or a resume to
//! hand to the shard that owns it.
//!
//! The rules that keep memory bounded live here: a side whose consumer is
//! full gets no room (its receive stops; TCP pushes back on the sender); what
//! was received beyond what the consumer took waits in a stash, and a side
//! with a stash gets no room until it drains. Since a receive never takes
//! more than the room it was given plus one buffer, each direction holds at
//! most its outbound buffer (the replay window, or `relay_buffer` for a plain
//! queue) + `relay_buffer` + one receive buffer.

use super::outbound::Outbound;
use super::session_id::IdSpace;
use crate::proto::client::{ClientEvent, ClientHandshake};
use crate::proto::frame::{FrameDecoder, FrameError};
use crate::proto::message::{ReuseConnReq, Status};
use crate::proto::server::{NewSession, ServerEvent, ServerHandshake};
use crate::proto::session::Session;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// Why a session (or a connection without one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its connection (no resume possible: plain mode).
    ClientClosed,
    /// The upstream closed; what it sent was delivered first.
    UpstreamClosed,
    /// No upstream could be connected.
    UpstreamUnreachable,
    /// The upstream connection failed.
    UpstreamError,
    /// The upstream SCP handshake failed.
    UpstreamHandshake,
    /// Nobody resumed the session within `reuse_time`.
    ReuseTimeout,
    /// The resume asked for more than the replay window holds.
    ReplayExceeded,
    /// The application closed it (embedded mode).
    Kicked,
    /// The client broke the framing (a frame over the limit, a malformed
    /// header) (embedded mode).
    ProtocolError,
    /// Frames sent to the session outgrew its window and send buffer: the
    /// client was not reading, or stayed away too long (embedded mode).
    SendOverflow,
    /// The gate is shutting down.
    Shutdown,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::UpstreamClosed => "upstream closed",
            CloseReason::UpstreamUnreachable => "no upstream reachable",
            CloseReason::UpstreamError => "upstream connection failed",
            CloseReason::UpstreamHandshake => "upstream SCP handshake failed",
            CloseReason::ReuseTimeout => "reuse time ran out",
            CloseReason::ReplayExceeded => "resume beyond the replay window",
            CloseReason::Kicked => "kicked by the application",
            CloseReason::ProtocolError => "client broke the framing",
            CloseReason::SendOverflow => "outgoing frames overflowed the send buffer",
            CloseReason::Shutdown => "shutdown",
        })
    }
}

/// What the workers are told about a session (embedded mode), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The session opened.
    Opened,
    /// One whole frame from the client.
    Frame(Bytes),
    /// The client came back.
    Resumed,
    /// The client's connection dropped.
    Detached,
    /// The session ended.
    Closed(CloseReason),
}

/// The state of an upstream link.
#[derive(Debug)]
pub enum UpState {
    /// The socket is being created or connected.
    Connecting,
    /// Connected; the gate's SCP handshake with the upstream is under way.
    Handshake(Box<ClientHandshake>),
    /// Carrying the session's bytes.
    Open,
    /// Ended (closed by either end).
    Closed,
}

/// The upstream side of a session in proxy mode.
#[derive(Debug)]
pub struct Upstream {
    state: UpState,
    /// Bytes to the upstream: `None` until an SCP upstream has answered.
    out: Option<Outbound>,
    /// The SCP handshake, waiting for the connection.
    pending: Option<Box<ClientHandshake>>,
    /// The SCP handshake request, sent before any stream byte.
    prelude: Vec<u8>,
    /// Bytes the announcement adds at the head of the stream.
    announce: Vec<u8>,
    reuse_buffer: usize,
    eof: bool,
}

/// The workers' side of a session (embedded mode).
#[derive(Debug)]
pub struct Workers {
    decoder: FrameDecoder,
    /// Plaintext not yet cut into frames: at most one partial frame plus
    /// one receive's worth.
    rx: BytesMut,
    /// What the workers have not taken yet.
    notes: VecDeque<Note>,
    /// The framing broke; the session is closing.
    broken: Option<FrameError>,
}

/// What the session's bytes from the client go to.
#[derive(Debug)]
pub enum Peer {
    /// Back to the client.
    Echo,
    /// An upstream server (boxed: most gates have none, and a session's
    /// size is paid a million times).
    Upstream(Box<Upstream>),
    /// The embedding program's workers (boxed, likewise).
    Workers(Box<Workers>),
}

/// Bytes the session relays, and the rules for relaying them.
#[derive(Debug)]
pub struct Relay {
    client: Outbound,
    peer: Peer,
    /// Plaintext from the client the peer side could not take yet.
    from_client: Vec<u8>,
    /// Plaintext from the peer the client side could not take yet.
    from_peer: Vec<u8>,
    relay_buffer: usize,
    /// The client closed its stream for good (plain mode; SCP clients
    /// detach instead, and come back).
    client_eof: bool,
    closing: Option<CloseReason>,
}

impl Relay {
    /// A session whose client side is `client`, relaying at most
    /// `relay_buffer` bytes per direction beyond its outbound buffers.
    pub fn new(client: Outbound, peer: Peer, relay_buffer: usize) -> Relay {
        Relay {
            client,
            peer,
            from_client: Vec::new(),
            from_peer: Vec::new(),
            relay_buffer: relay_buffer.max(1),
            client_eof: false,
            closing: None,
        }
    }

    /// The peer side for proxy mode: the stream starts with `announce`; with
    /// `scp`, the gate is an SCP client of the upstream (`random` seeds its
    /// key) and the stream flows once the upstream has answered.
    pub fn upstream(
        scp: bool,
        random: u64,
        announce: Vec<u8>,
        relay_buffer: usize,
        reuse_buffer: usize,
    ) -> Peer {
        let mut u = Upstream {
            state: UpState::Connecting,
            out: None,
            pending: None,
            prelude: Vec::new(),
            announce: Vec::new(),
            reuse_buffer,
            eof: false,
        };
        if scp {
            let mut hs = Box::new(ClientHandshake::new_session(random, None, None));
            u.prelude = hs.take_output();
            u.pending = Some(hs);
            u.announce = announce;
        } else {
            let mut out = Outbound::Plain(Box::new(super::outbound::PlainQueue::new(relay_buffer)));
            out.push(&announce);
            u.out = Some(out);
        }
        Peer::Upstream(Box::new(u))
    }

    /// The peer side for embedded mode.
    pub fn workers(decoder: FrameDecoder) -> Peer {
        let mut notes = VecDeque::new();
        notes.push_back(Note::Opened);
        Peer::Workers(Box::new(Workers {
            decoder,
            rx: BytesMut::new(),
            notes,
            broken: None,
        }))
    }

    /// The client side's outgoing bytes.
    pub fn client_out(&self) -> &Outbound {
        &self.client
    }

    /// The client side's next bytes to send (see [`Outbound::next_pieces`]).
    pub fn client_pieces(&mut self) -> impl Iterator<Item = &[u8]> {
        self.client.next_pieces()
    }

    /// The upstream side's next bytes to send, once the link carries the
    /// stream.
    pub fn peer_pieces(&mut self) -> Option<impl Iterator<Item = &[u8]>> {
        match &mut self.peer {
            Peer::Upstream(u) if matches!(u.state, UpState::Open) => {
                u.out.as_mut().map(|o| o.next_pieces())
            }
            _ => None,
        }
    }

    /// Whether the peer side has ended (its link may be closed).
    pub fn peer_ended(&self) -> bool {
        matches!(&self.peer, Peer::Upstream(u) if u.eof || matches!(u.state, UpState::Closed))
    }

    /// The client side, to take it away (a closing session whose send is
    /// still in flight hands it to that send).
    pub fn into_client(self) -> Outbound {
        self.client
    }

    /// The SCP session, if the client side speaks SCP.
    pub fn scp(&self) -> Option<&Session> {
        self.client.session()
    }

    /// The stable-connection session, if the client side speaks it.
    pub fn stable(&self) -> Option<&crate::proto::stable::StableSession> {
        self.client.stable()
    }

    /// Whether the client side speaks the stable-connection dialect.
    pub fn is_stable(&self) -> bool {
        matches!(self.client, Outbound::Stable(_))
    }

    /// The stable-connection session, mutably.
    pub fn stable_mut(&mut self) -> Option<&mut crate::proto::stable::StableSession> {
        self.client.stable_mut()
    }

    /// Whether the client may come back after its connection drops.
    pub fn resumable(&self) -> bool {
        self.client.resumable()
    }

    /// A stable-connection client proved it holds this session and has
    /// received `received` bytes; the answer told it the session had
    /// received `answered`. Rewinds the window so that its unsent bytes are
    /// what the client lacks, and tells the workers. Returns the count to
    /// resend, or `None` (and the session closes) when the window no longer
    /// covers it.
    pub fn handle_stable_resume(&mut self, received: u64, answered: u64) -> Option<usize> {
        let s = self.client.stable_mut()?;
        match s.accept_resume_from(received, answered) {
            Some(resend) => {
                self.note_resumed();
                Some(resend)
            }
            None => {
                self.close(CloseReason::ReplayExceeded);
                None
            }
        }
    }

    /// One waiting `Resumed` stands for several, and a worker that has not
    /// seen the detach yet is spared both: a client resuming in a loop
    /// cannot grow the notes while its worker is stalled.
    fn note_resumed(&mut self) {
        if let Peer::Workers(w) = &mut self.peer {
            match w.notes.back() {
                Some(Note::Detached) => {
                    w.notes.pop_back();
                }
                Some(Note::Resumed) => {}
                _ => w.notes.push_back(Note::Resumed),
            }
        }
    }

    /// The peer side.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The upstream's outgoing bytes, once there are any to send.
    pub fn peer_out(&self) -> Option<&Outbound> {
        match &self.peer {
            Peer::Upstream(u) if matches!(u.state, UpState::Open | UpState::Handshake(_)) => {
                u.out.as_ref()
            }
            _ => None,
        }
    }

    /// The SCP handshake request for the upstream, once (sent before
    /// anything else on the link).
    pub fn take_peer_prelude(&mut self) -> Option<Vec<u8>> {
        match &mut self.peer {
            Peer::Upstream(u)
                if matches!(u.state, UpState::Handshake(_)) && !u.prelude.is_empty() =>
            {
                Some(std::mem::take(&mut u.prelude))
            }
            _ => None,
        }
    }

    /// Why the session is closing, once it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.closing
    }

    /// Bytes waiting in the stashes (what the gate holds beyond the
    /// outbound buffers).
    pub fn stashed(&self) -> usize {
        self.from_client.len() + self.from_peer.len()
    }

    /// How many bytes the client's connection may deliver now (0: stop
    /// receiving from it).
    pub fn client_room(&self) -> usize {
        if self.closing.is_some() || self.client_eof || !self.from_client.is_empty() {
            return 0;
        }
        match &self.peer {
            Peer::Workers(w) if w.broken.is_some() || !w.notes.is_empty() => 0,
            _ => self.relay_buffer,
        }
    }

    /// How many bytes the upstream may deliver now.
    pub fn peer_room(&self) -> usize {
        match &self.peer {
            Peer::Upstream(u)
                if self.closing.is_none()
                    && !u.eof
                    && self.from_peer.is_empty()
                    && matches!(u.state, UpState::Open | UpState::Handshake(_)) =>
            {
                self.relay_buffer
            }
            _ => 0,
        }
    }

    /// Bytes from the client: decrypted in place (SCP) and passed on, or
    /// kept until the peer side has room.
    pub fn handle_client_bytes(&mut self, data: &mut [u8]) {
        if self.closing.is_some() {
            return;
        }
        let dup = self.client.decrypt(data);
        let data = &mut data[dup..];
        if !self.from_client.is_empty() {
            self.from_client.extend_from_slice(data);
            return;
        }
        let taken = self.pass_to_peer(data);
        self.from_client.extend_from_slice(&data[taken..]);
    }

    /// Bytes from the upstream: the SCP handshake's answer first, then the
    /// stream, decrypted and passed to the client side.
    pub fn handle_peer_bytes(&mut self, data: &mut [u8]) {
        if self.closing.is_some() {
            return;
        }
        let Peer::Upstream(u) = &mut self.peer else {
            return;
        };
        let mut start = 0;
        if let UpState::Handshake(hs) = &mut u.state {
            start = hs.recv(data);
            match hs.poll() {
                ClientEvent::NeedMore => return,
                ClientEvent::Established { id, secret } => {
                    let mut out = Outbound::Scp(Box::new(Session::new(id, secret, u.reuse_buffer)));
                    out.push(&std::mem::take(&mut u.announce));
                    u.out = Some(out);
                    u.state = UpState::Open;
                    self.drain_from_client();
                }
                _ => {
                    self.close(CloseReason::UpstreamHandshake);
                    return;
                }
            }
        }
        let Peer::Upstream(u) = &mut self.peer else {
            return;
        };
        let data = &mut data[start..];
        if let Some(s) = u.out.as_mut().and_then(|o| o.session_mut()) {
            s.decrypt(data);
        }
        if !self.from_peer.is_empty() {
            self.from_peer.extend_from_slice(data);
            return;
        }
        let n = self.client.push(data);
        self.from_peer.extend_from_slice(&data[n..]);
    }

    /// `n` bytes of the client side's current send went out.
    pub fn handle_client_sent(&mut self, n: usize) {
        self.client.sent(n);
        self.drain_from_peer();
        if matches!(self.peer, Peer::Echo) {
            self.drain_from_client();
        }
    }

    /// `n` bytes of the upstream side's current send went out.
    pub fn handle_peer_sent(&mut self, n: usize) {
        if let Peer::Upstream(u) = &mut self.peer {
            if let Some(o) = u.out.as_mut() {
                o.sent(n);
            }
        }
        self.drain_from_client();
    }

    /// The upstream link is connected.
    pub fn handle_peer_connected(&mut self) {
        if let Peer::Upstream(u) = &mut self.peer {
            if matches!(u.state, UpState::Connecting) {
                u.state = match u.pending.take() {
                    Some(hs) => UpState::Handshake(hs),
                    None => UpState::Open,
                };
            }
        }
        self.drain_from_client();
    }

    /// The upstream ended (closed, or failed after connecting). What it
    /// sent is still delivered; then the session closes.
    pub fn handle_peer_eof(&mut self) {
        if let Peer::Upstream(u) = &mut self.peer {
            u.eof = true;
            u.state = UpState::Closed;
        }
    }

    /// The client closed its stream for good (plain mode): the session ends
    /// once the peer side has taken everything.
    pub fn handle_client_eof(&mut self) {
        self.client_eof = true;
    }

    /// The client's connection dropped; an SCP session waits for a resume.
    pub fn handle_detached(&mut self) {
        self.note(Note::Detached);
    }

    /// Checks a resume request and, when it is good, rewinds the window so
    /// its unsent bytes are exactly what the client is missing. Returns
    /// the count the server has received (for the answer) and the bytes to
    /// resend. A request beyond the window closes the session.
    pub fn handle_resume(&mut self, req: &ReuseConnReq) -> Result<(u32, usize), Status> {
        let Some(s) = self.client.session_mut() else {
            return Err(Status::NotFound);
        };
        match s.accept_resume(req) {
            Ok(resend) => {
                let received = s.received() as u32;
                self.note_resumed();
                Ok((received, resend))
            }
            Err(Status::NotAcceptable) => {
                self.close(CloseReason::ReplayExceeded);
                Err(Status::NotAcceptable)
            }
            Err(e) => Err(e),
        }
    }

    /// A frame from the application for the client (embedded mode), as its
    /// wire pieces: into the window while it has room, the rest into the
    /// stash, up to `limit` stashed bytes; beyond that the session closes
    /// with [`CloseReason::SendOverflow`].
    pub fn send_frame(&mut self, pieces: &[&[u8]], limit: usize) {
        if self.closing.is_some() {
            return;
        }
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let direct = if self.from_peer.is_empty() {
            self.client.free_space().min(len)
        } else {
            0
        };
        if self.from_peer.len() + (len - direct) > limit {
            self.close(CloseReason::SendOverflow);
            return;
        }
        for part in pieces {
            let n = if self.from_peer.is_empty() {
                self.client.push(part)
            } else {
                0
            };
            self.from_peer.extend_from_slice(&part[n..]);
        }
    }

    /// Ends the session: stashes dropped, the workers told last.
    pub fn close(&mut self, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(reason);
        self.from_client = Vec::new();
        self.from_peer = Vec::new();
        if let Peer::Upstream(u) = &mut self.peer {
            u.state = UpState::Closed;
        }
        if let Peer::Workers(w) = &mut self.peer {
            w.rx = BytesMut::new();
        }
        self.note(Note::Closed(reason));
    }

    /// Why the session should close now, if its work is done: the upstream
    /// finished and the client has everything, the client left (plain) and
    /// the peer has everything, or the client broke the framing.
    pub fn poll_close(&self) -> Option<CloseReason> {
        if self.closing.is_some() {
            return None;
        }
        match &self.peer {
            Peer::Upstream(u)
                if u.eof && self.from_peer.is_empty() && self.client.unsent() == 0 =>
            {
                return Some(CloseReason::UpstreamClosed);
            }
            Peer::Workers(w) if w.broken.is_some() => return Some(CloseReason::ProtocolError),
            _ => {}
        }
        if self.client_eof && self.from_client.is_empty() {
            let drained = match &self.peer {
                Peer::Upstream(u) => u.eof || u.out.as_ref().is_none_or(|o| o.unsent() == 0),
                Peer::Echo | Peer::Workers(_) => true,
            };
            if drained {
                return Some(CloseReason::ClientClosed);
            }
        }
        None
    }

    /// Why the framing broke, when it did.
    pub fn framing_error(&self) -> Option<&FrameError> {
        match &self.peer {
            Peer::Workers(w) => w.broken.as_ref(),
            _ => None,
        }
    }

    /// Notes for the workers, in order; `offer` takes each until it
    /// refuses one (its queue is full), which stays first in line. After a
    /// refusal the client side gets no room until the notes are all taken,
    /// and new frames are cut only then.
    pub fn take_notes(&mut self, mut offer: impl FnMut(Note) -> Result<(), Note>) {
        loop {
            let Peer::Workers(w) = &mut self.peer else {
                return;
            };
            while let Some(note) = w.notes.pop_front() {
                if let Err(back) = offer(note) {
                    w.notes.push_front(back);
                    return;
                }
            }
            if w.broken.is_some() {
                return;
            }
            // Everything was taken: frames held back meanwhile come next.
            let cut = Self::cut_frames(w);
            let stashed = self.from_client.len();
            self.drain_from_client();
            if !cut && self.from_client.len() == stashed {
                return;
            }
        }
    }

    /// Whether notes wait for the workers.
    pub fn notes_waiting(&self) -> bool {
        matches!(&self.peer, Peer::Workers(w) if !w.notes.is_empty())
    }

    /// Cuts the frames in `rx` into notes; whether any was cut.
    fn cut_frames(w: &mut Workers) -> bool {
        let mut any = false;
        loop {
            match w.decoder.decode(&mut w.rx) {
                Ok(Some(frame)) => {
                    w.notes.push_back(Note::Frame(frame));
                    any = true;
                }
                Ok(None) => return any,
                Err(e) => {
                    w.broken = Some(e);
                    w.rx = BytesMut::new();
                    return any;
                }
            }
        }
    }

    fn note(&mut self, note: Note) {
        if let Peer::Workers(w) = &mut self.peer {
            w.notes.push_back(note);
        }
    }

    /// Hands plaintext to the peer side; returns how much it took.
    fn pass_to_peer(&mut self, data: &[u8]) -> usize {
        match &mut self.peer {
            Peer::Echo => self.client.push(data),
            Peer::Upstream(u) => match (&u.state, u.out.as_mut()) {
                // Nowhere to go: the session is ending.
                (UpState::Closed, _) => data.len(),
                (_, Some(out)) => out.push(data),
                (_, None) => 0,
            },
            Peer::Workers(w) => {
                if w.broken.is_some() {
                    return data.len(); // the session is closing; drop it
                }
                if !w.notes.is_empty() {
                    return 0;
                }
                w.rx.extend_from_slice(data);
                Self::cut_frames(w);
                data.len()
            }
        }
    }

    fn drain_from_client(&mut self) {
        if self.from_client.is_empty() {
            return;
        }
        let stash = std::mem::take(&mut self.from_client);
        let n = self.pass_to_peer(&stash);
        if n < stash.len() {
            self.from_client = stash[n..].to_vec();
        }
    }

    fn drain_from_peer(&mut self) {
        if self.from_peer.is_empty() {
            return;
        }
        let stash = std::mem::take(&mut self.from_peer);
        let n = self.client.push(&stash);
        if n < stash.len() {
            self.from_peer = stash[n..].to_vec();
        }
    }
}

/// What a connection's first record asks for.
#[derive(Debug)]
pub enum Greeted {
    /// No complete record yet.
    NeedMore,
    /// A new session; `rest` is what followed the record (session bytes).
    New {
        /// The upstream the client asked for.
        target: Option<String>,
        /// The client's flag bits.
        flag: i32,
        /// Bytes after the record.
        rest: Vec<u8>,
    },
    /// A resume of a session this shard owns.
    Resume {
        /// The request.
        req: ReuseConnReq,
        /// Bytes after the record.
        rest: Vec<u8>,
    },
    /// A resume of a session another shard owns: stop reading, and send the
    /// connection there with every byte read so far (see [`Greeting::raw`]).
    HandOver {
        /// The owning shard.
        to: usize,
    },
    /// The record is bad: write `answer` (possibly empty), then close.
    Refused {
        /// What to write first.
        answer: Vec<u8>,
        /// Why, for the log.
        why: String,
    },
}

/// The first record of an SCP connection, read on whichever shard the
/// kernel delivered it to.
///
/// Every byte read is kept until the record is judged: a resume for a
/// session another shard owns travels there whole and is read again from
/// the start, so the owner applies exactly the same rules as a shard that
/// got it first. The connection's receive room while greeting is
/// [`Greeting::ROOM`], so what a client pipelines behind its record is
/// bounded the same way on every path.
#[derive(Debug, Default)]
pub struct Greeting {
    hs: ServerHandshake,
    raw: Vec<u8>,
}

impl Greeting {
    /// Receive room while greeting: one record is at most 2 + 512 bytes;
    /// more is session data, which waits in the kernel (or, read already,
    /// travels with a hand-over) until the session is found.
    pub const ROOM: usize = 4096;

    /// Every byte read so far.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Takes every byte read so far (for a hand-over).
    pub fn take_raw(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.raw)
    }

    /// Bytes from the connection, on shard `here` of a gate whose session
    /// ids follow `ids` and which has `shards` shards.
    pub fn handle_bytes(
        &mut self,
        data: &[u8],
        ids: IdSpace,
        shards: usize,
        here: usize,
    ) -> Greeted {
        self.raw.extend_from_slice(data);
        let used = self.hs.recv(data);
        match self.hs.poll() {
            ServerEvent::NeedMore | ServerEvent::Done => Greeted::NeedMore,
            ServerEvent::Failed(err) => Greeted::Refused {
                answer: self.hs.take_output(),
                why: err.to_string(),
            },
            ServerEvent::NewSession(req) => Greeted::New {
                target: req.target.filter(|t| !t.is_empty()),
                flag: req.flag.unwrap_or(0),
                rest: data[used..].to_vec(),
            },
            ServerEvent::Resume(req) => {
                let owner = ids.owner(req.id);
                // An id naming a shard this gate does not have is nobody's:
                // answered here (404).
                if owner != here && owner < shards {
                    Greeted::HandOver { to: owner }
                } else {
                    Greeted::Resume {
                        req,
                        rest: data[used..].to_vec(),
                    }
                }
            }
        }
    }

    /// After [`Greeted::New`]: the new session's parameters and the answer
    /// to write.
    pub fn accept_new(&mut self, id: u32, random: u64) -> (NewSession, Vec<u8>) {
        self.raw = Vec::new();
        let ns = self.hs.accept_new(id, random);
        (ns, self.hs.take_output())
    }

    /// After [`Greeted::Resume`]: the answer to write.
    pub fn answer_resume(&mut self, received: u32, status: Status) -> Vec<u8> {
        self.raw = Vec::new();
        self.hs.answer_resume(received, status);
        self.hs.take_output()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outbound::PlainQueue;
    use crate::proto::frame::FrameFormat;

    const SECRET: u64 = 0x1234_5678_9abc_def0;

    /// Takes everything the client side would send now, and completes it.
    fn flush_client(r: &mut Relay) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let piece: Vec<u8> = match r.client.next_pieces().next() {
                Some(p) => p.to_vec(),
                None => break,
            };
            if piece.is_empty() {
                break;
            }
            all.extend_from_slice(&piece);
            r.handle_client_sent(piece.len());
        }
        all
    }

    fn flush_peer(r: &mut Relay) -> Vec<u8> {
        let mut all = Vec::new();
        while let Peer::Upstream(u) = &mut r.peer {
            let Some(o) = u.out.as_mut() else {
                break;
            };
            let Some(piece) = o.next_pieces().next().map(|p| p.to_vec()) else {
                break;
            };
            if piece.is_empty() {
                break;
            }
            all.extend_from_slice(&piece);
            r.handle_peer_sent(piece.len());
        }
        all
    }

    fn scp(window: usize) -> Outbound {
        Outbound::Scp(Box::new(Session::new(7, SECRET, window)))
    }

    fn plain(limit: usize) -> Outbound {
        Outbound::Plain(Box::new(PlainQueue::new(limit)))
    }

    #[test]
    fn scp_echo_round_trips_and_pushes_back_when_the_window_is_full() {
        let mut client = Session::new(7, SECRET, 1 << 20);
        let mut r = Relay::new(scp(4096), Peer::Echo, 1000);
        let plain_in: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let mut sent = 0;
        let mut echoed = Vec::new();
        let mut peak = 0;
        while sent < plain_in.len() || echoed.len() < plain_in.len() {
            // The client side delivers at most the room (plus, for a
            // receive, up to one buffer: modelled as 512 bytes).
            let room = r.client_room();
            if room > 0 && sent < plain_in.len() {
                let n = (room + 512).min(plain_in.len() - sent);
                let mut wire = plain_in[sent..sent + n].to_vec();
                let k = client.encrypt(&wire);
                assert_eq!(k, n);
                wire.clear();
                for p in client.window().unsent_slices() {
                    wire.extend_from_slice(p);
                }
                let len = wire.len();
                client.window_mut().mark_sent(len);
                r.handle_client_bytes(&mut wire);
                sent += n;
            }
            peak = peak.max(r.stashed());
            let mut back = flush_client(&mut r);
            client.decrypt(&mut back);
            echoed.extend_from_slice(&back);
        }
        assert_eq!(echoed, plain_in);
        assert!(peak <= 1000 + 512, "stash peaked at {peak}");
    }

    #[test]
    fn a_full_consumer_gives_no_room_until_it_drains() {
        let mut r = Relay::new(plain(100), Peer::Echo, 50);
        r.handle_client_bytes(&mut [1u8; 130]);
        assert_eq!(r.stashed(), 30);
        assert_eq!(r.client_room(), 0);
        let out = flush_client(&mut r);
        assert_eq!(out.len(), 130, "the stash followed once there was room");
        assert_eq!(r.stashed(), 0);
        assert_eq!(r.client_room(), 50);
    }

    #[test]
    fn proxy_announces_first_relays_both_ways_and_ends_after_delivering() {
        let peer = Relay::upstream(false, 0, b"HELLO".to_vec(), 64, 4096);
        let mut r = Relay::new(plain(64), peer, 64);
        assert_eq!(r.peer_room(), 0, "no room before the link connects");
        r.handle_client_bytes(&mut b"abc".to_vec());
        r.handle_peer_connected();
        assert_eq!(flush_peer(&mut r), b"HELLOabc");
        assert_eq!(r.peer_room(), 64);
        r.handle_peer_bytes(&mut [9u8; 100]);
        assert_eq!(r.peer_room(), 0, "the client side is full");
        r.handle_peer_eof();
        assert_eq!(r.poll_close(), None, "bytes still to deliver");
        assert_eq!(flush_client(&mut r).len(), 100);
        assert_eq!(r.poll_close(), Some(CloseReason::UpstreamClosed));
    }

    #[test]
    fn a_plain_client_leaving_ends_the_session_once_the_upstream_has_everything() {
        let peer = Relay::upstream(false, 0, Vec::new(), 64, 4096);
        let mut r = Relay::new(plain(64), peer, 64);
        r.handle_peer_connected();
        r.handle_client_bytes(&mut b"last words".to_vec());
        r.handle_client_eof();
        assert_eq!(r.client_room(), 0);
        assert_eq!(r.poll_close(), None);
        assert_eq!(flush_peer(&mut r), b"last words");
        assert_eq!(r.poll_close(), Some(CloseReason::ClientClosed));
    }

    #[test]
    fn an_scp_upstream_gets_its_handshake_first_and_the_stream_after_the_answer() {
        use crate::proto::server::{ServerEvent, ServerHandshake};
        let peer = Relay::upstream(true, 99, b"ANN".to_vec(), 1024, 4096);
        let mut r = Relay::new(plain(1024), peer, 1024);
        assert!(
            r.take_peer_prelude().is_none(),
            "nothing before the connect"
        );
        r.handle_client_bytes(&mut b"early".to_vec());
        r.handle_peer_connected();
        let hello = r.take_peer_prelude().expect("the handshake request");
        assert!(r.peer_out().is_none(), "no stream before the answer");
        let mut server = ServerHandshake::default();
        server.recv(&hello);
        let ServerEvent::NewSession(_) = server.poll() else {
            panic!("a new-session request");
        };
        let ns = server.accept_new(5, 1234);
        let mut answer = server.take_output();
        r.handle_peer_bytes(&mut answer);
        let mut wire = flush_peer(&mut r);
        let mut up = Session::new(5, ns.secret, 4096);
        up.decrypt(&mut wire);
        assert_eq!(wire, b"ANNearly");
    }

    #[test]
    fn workers_get_frames_in_order_and_a_full_queue_holds_the_client() {
        let mut r = Relay::new(
            plain(1024),
            Relay::workers(FrameDecoder::new(FrameFormat::U16Be, 100)),
            1024,
        );
        let mut wire = Vec::new();
        for k in 0..5u8 {
            wire.extend_from_slice(&[0, 3, k, k, k]);
        }
        r.handle_client_bytes(&mut wire);
        // A queue with room for two notes.
        let mut got = Vec::new();
        r.take_notes(|n| {
            if got.len() < 2 {
                got.push(n);
                Ok(())
            } else {
                Err(n)
            }
        });
        assert_eq!(got[0], Note::Opened);
        assert_eq!(got[1], Note::Frame(Bytes::from_static(&[0, 0, 0])));
        assert_eq!(r.client_room(), 0, "notes wait: the client is held");
        r.handle_client_bytes(&mut [0, 1, 42]);
        let mut rest = Vec::new();
        r.take_notes(|n| {
            rest.push(n);
            Ok(())
        });
        let frames: Vec<u8> = rest
            .iter()
            .map(|n| match n {
                Note::Frame(f) => f[0],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(frames, vec![1, 2, 3, 4, 42]);
        assert_eq!(r.client_room(), 1024);
    }

    #[test]
    fn broken_framing_closes_with_a_protocol_error() {
        let mut r = Relay::new(
            plain(1024),
            Relay::workers(FrameDecoder::new(FrameFormat::U16Be, 10)),
            1024,
        );
        r.handle_client_bytes(&mut [0, 200, 1, 2]);
        r.take_notes(|_| Ok(()));
        assert!(r.framing_error().is_some());
        assert_eq!(r.poll_close(), Some(CloseReason::ProtocolError));
        r.close(CloseReason::ProtocolError);
        let mut last = None;
        r.take_notes(|n| {
            last = Some(n);
            Ok(())
        });
        assert_eq!(last, Some(Note::Closed(CloseReason::ProtocolError)));
    }

    #[test]
    fn frames_sent_to_a_session_overflow_into_a_bounded_stash() {
        let mut r = Relay::new(scp(4096), Peer::Echo, 1024);
        r.send_frame(&[&[1u8; 4000]], 1000);
        r.send_frame(&[&[2u8; 900]], 1000);
        assert_eq!(r.closing(), None, "4096 in the window, 804 stashed");
        r.send_frame(&[&[3u8; 300]], 1000);
        assert_eq!(r.closing(), Some(CloseReason::SendOverflow));
    }

    #[test]
    fn resumes_rewind_and_collapse_for_workers() {
        let mut r = Relay::new(
            scp(4096),
            Relay::workers(FrameDecoder::new(FrameFormat::U16Be, 100)),
            1024,
        );
        r.take_notes(|_| Ok(()));
        r.send_frame(&[b"0123456789"], 1000);
        assert_eq!(flush_client(&mut r).len(), 10);
        r.handle_detached();
        // The client got none of the ten bytes.
        let mut client = Session::new(7, SECRET, 4096);
        let req = client.resume_request();
        let (received, resend) = r.handle_resume(&req).expect("accepted");
        assert_eq!((received, resend), (0, 10));
        let mut notes = Vec::new();
        r.take_notes(|n| {
            notes.push(n);
            Ok(())
        });
        assert!(
            notes.is_empty(),
            "a detach the worker never saw is dropped with the resume"
        );
        assert_eq!(r.handle_resume(&req), Err(Status::IndexExpired));
    }

    #[test]
    fn a_resume_beyond_the_window_closes_the_session() {
        let mut r = Relay::new(scp(4096), Peer::Echo, 1024);
        for _ in 0..3 {
            r.send_frame(&[&[5u8; 4096]], 0);
            flush_client(&mut r);
        }
        let mut client = Session::new(7, SECRET, 4096);
        let req = client.resume_request();
        assert_eq!(r.handle_resume(&req), Err(Status::NotAcceptable));
        assert_eq!(r.closing(), Some(CloseReason::ReplayExceeded));
    }

    fn new_record(public: u64) -> Vec<u8> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(public.to_le_bytes());
        let mut out = Vec::new();
        crate::proto::message::encode_record(format!("0\n{key}\nlobby").as_bytes(), &mut out);
        out
    }

    #[test]
    fn a_greeting_splits_the_record_from_what_follows() {
        let mut g = Greeting::default();
        let mut wire = new_record(12345);
        let ids = IdSpace::new(4);
        assert!(matches!(
            g.handle_bytes(&wire[..3], ids, 4, 0),
            Greeted::NeedMore
        ));
        wire.extend_from_slice(b"pipelined");
        match g.handle_bytes(&wire[3..], ids, 4, 0) {
            Greeted::New { target, rest, .. } => {
                assert_eq!(target.as_deref(), Some("lobby"));
                assert_eq!(rest, b"pipelined");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.raw(), &wire[..], "every byte is kept until judged");
        let (ns, answer) = g.accept_new(ids.id(0, 1), 7);
        assert_eq!(ns.id, ids.id(0, 1));
        assert!(!answer.is_empty());
        assert!(g.raw().is_empty());
    }

    #[test]
    fn a_resume_goes_to_the_shard_that_owns_it() {
        let ids = IdSpace::new(3);
        let mut client = Session::new(ids.id(2, 9), SECRET, 4096);
        let req = client.resume_request();
        let mut wire = Vec::new();
        crate::proto::message::encode_record(&req.encode(), &mut wire);
        wire.extend_from_slice(b"more");
        for here in 0..3 {
            let mut g = Greeting::default();
            match g.handle_bytes(&wire, ids, 3, here) {
                Greeted::HandOver { to } => {
                    assert_ne!(here, 2);
                    assert_eq!(to, 2);
                    assert_eq!(g.take_raw(), wire, "the hand-over carries every byte");
                }
                Greeted::Resume { req: r, rest } => {
                    assert_eq!(here, 2);
                    assert_eq!(r, req);
                    assert_eq!(rest, b"more");
                }
                other => panic!("{other:?}"),
            }
        }
        // Shard bits naming a shard this gate lacks (3 of 0..=3): answered here.
        let mut stray = Session::new(ids.id(0, 1) | 3, SECRET, 4096);
        let req = stray.resume_request();
        let mut wire = Vec::new();
        crate::proto::message::encode_record(&req.encode(), &mut wire);
        let mut g = Greeting::default();
        assert!(matches!(
            g.handle_bytes(&wire, ids, 3, 1),
            Greeted::Resume { .. }
        ));
        let answer = g.answer_resume(0, Status::NotFound);
        assert!(answer.ends_with(b"404"));
    }

    #[test]
    fn a_bad_record_is_refused() {
        let mut g = Greeting::default();
        let mut wire = Vec::new();
        crate::proto::message::encode_record(b"zz\nnot a resume", &mut wire);
        match g.handle_bytes(&wire, IdSpace::new(1), 1, 0) {
            Greeted::Refused { answer, .. } => assert!(answer.ends_with(b"400")),
            other => panic!("{other:?}"),
        }
        let mut g = Greeting::default();
        match g.handle_bytes(&[0xff, 0xff, 1, 2], IdSpace::new(1), 1, 0) {
            Greeted::Refused { answer, .. } => assert!(answer.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
