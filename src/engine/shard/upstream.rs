//! Proxy mode: a session's upstream link — socket, connect with a timeout
//! (linked, so a full submission queue cannot part them), fallback to the
//! next candidate, and its endpoint kept in line with the session core.

use super::*;
use crate::engine::endpoint::Received;
use crate::engine::ring::Owned;
use crate::engine::sys::RawAddr;
use io_uring::opcode;

impl Shard {
    pub(super) fn start_upstream(&mut self, si: usize) {
        let Some(proxy) = self.proxy.clone() else {
            return;
        };
        let s = &self.sessions[si];
        let mut tries = proxy.candidates(s.target.as_deref(), &mut self.rng);
        tries.reverse();
        let epoch = self.new_epoch();
        self.sessions[si].up = Some(Box::new(UpLink {
            epoch,
            link: Link::Gone,
            tries,
            addr: None,
            sending_stream: false,
            started: Instant::now(),
        }));
        self.connect_next(si);
    }

    fn up_mut(&mut self, si: usize, epoch: u32) -> Option<&mut UpLink> {
        self.sessions
            .get_mut(si)?
            .up
            .as_deref_mut()
            .filter(|u| u.epoch == epoch)
    }

    fn connect_next(&mut self, si: usize) {
        let s = &mut self.sessions[si];
        let Some(up) = s.up.as_deref_mut() else {
            return;
        };
        let Some(choice) = up.tries.pop() else {
            let id = s.id;
            s.up = None;
            self.count(|s| &s.upstream_failed);
            self.warn_limit(&format!("no upstream reachable (session {id})"));
            self.close_session(si, CloseReason::UpstreamUnreachable);
            return;
        };
        up.addr = Some(choice.addr);
        up.started = Instant::now();
        up.link = Link::Socket;
        let tag = Tag::new(Op::UpSocket, si, up.epoch);
        let e = sys::direct_tcp_socket(&choice.addr);
        self.d.push(e, Some(tag), Owned::None);
    }

    pub(super) fn on_up_socket(&mut self, si: usize, epoch: u32, res: i32) {
        let timeout = self
            .proxy
            .as_ref()
            .map_or(Duration::from_secs(5), |p| p.connect_timeout());
        let ended = self.sessions.get(si).is_some_and(|s| s.ended);
        let Some(up) = self.up_mut(si, epoch) else {
            if res >= 0 {
                self.close_slot(res as u32);
            }
            return;
        };
        if !matches!(up.link, Link::Socket) || ended {
            // Closed while the socket was being made.
            if res >= 0 {
                self.close_slot(res as u32);
            }
            self.sessions[si].up = None;
            self.maybe_free_session(si);
            return;
        }
        if res < 0 {
            up.link = Link::Gone;
            if let Some(addr) = up.addr {
                self.stats().upstream_connect(addr, None);
            }
            let e = std::io::Error::from_raw_os_error(-res);
            if matches!(-res, libc::ENFILE | libc::EMFILE) {
                self.warn_limit("the shard's direct descriptor table is full: upstream connections are failing; raise the fd limit or add shards");
            } else {
                self.warn_limit(&format!("cannot create an upstream socket: {e}"));
            }
            self.sessions[si].up = None;
            self.count(|s| &s.upstream_failed);
            self.close_session(si, CloseReason::UpstreamError);
            self.sync(si);
            return;
        }
        let slot = res as u32;
        up.link = Link::Connecting(Endpoint::new(slot));
        let addr = up.addr.expect("set before the socket");
        let (raw, len) = RawAddr::from_socket_addr(addr);
        let raw = Box::new(raw);
        let nodelay = sys::enable_sockopt(types::Fixed(slot), libc::IPPROTO_TCP, libc::TCP_NODELAY);
        self.d.push(nodelay, None, Owned::None);
        let connect = opcode::Connect::new(types::Fixed(slot), raw.as_sockaddr(), len).build();
        let ts = Box::new(types::Timespec::from(timeout));
        let limit = opcode::LinkTimeout::new(&*ts).build();
        self.d.push_linked(
            [
                (
                    connect,
                    Some(Tag::new(Op::UpConnect, si, epoch)),
                    Owned::Addr(raw),
                ),
                (limit, None, Owned::Time(ts)),
            ],
            false,
        );
    }

    pub(super) fn on_up_connect(&mut self, si: usize, epoch: u32, res: i32) {
        let shard = self.index;
        let Some(up) = self.up_mut(si, epoch) else {
            return;
        };
        let Link::Connecting(ep) = std::mem::replace(&mut up.link, Link::Gone) else {
            return;
        };
        let (addr, latency) = (up.addr, up.started.elapsed());
        if let Some(addr) = addr {
            self.stats()
                .upstream_connect(addr, (res >= 0).then_some(latency));
        }
        if res < 0 {
            let e = if res == -libc::ECANCELED {
                "timed out".to_string()
            } else {
                std::io::Error::from_raw_os_error(-res).to_string()
            };
            debug!(shard, upstream = ?addr, "upstream connect failed: {e}");
            let mut ep = ep;
            ep.close(&mut self.d, Some(Tag::shard(Op::UpClose)));
            self.connect_next(si);
            self.sync(si);
            return;
        }
        if let Some(up) = self.up_mut(si, epoch) {
            up.link = Link::Open(ep);
        }
        debug!(shard, upstream = ?addr, "upstream connected");
        self.sessions[si].relay.handle_peer_connected();
        self.sync(si);
    }

    pub(super) fn on_up_recv(&mut self, si: usize, epoch: u32, c: Completion<Tag>) {
        if c.result == -libc::ENOBUFS {
            self.count(|s| &s.recv_nobufs);
        }
        let up = self
            .sessions
            .get_mut(si)
            .and_then(|s| s.up.as_deref_mut())
            .filter(|u| u.epoch == epoch);
        let Some(up) = up else {
            drop(self.bufs.take(c.result, c.flags));
            return;
        };
        let Link::Open(ep) = &mut up.link else {
            drop(self.bufs.take(c.result, c.flags));
            return;
        };
        match ep.on_recv(&c, &self.bufs) {
            Received::Data(mut buf) => {
                self.count_n(|s| &s.upstream_rx_bytes, buf.len() as u64);
                self.sessions[si].relay.handle_peer_bytes(&mut buf)
            }
            Received::Eof => {
                debug!(
                    shard = self.index,
                    session = self.sessions[si].id,
                    "upstream closed"
                );
                self.sessions[si].relay.handle_peer_eof();
            }
            Received::Failed(e) => {
                let e = std::io::Error::from_raw_os_error(-e);
                debug!(
                    shard = self.index,
                    session = self.sessions[si].id,
                    "upstream receive failed: {e}"
                );
                self.sessions[si].relay.handle_peer_eof();
            }
            Received::Ended => {}
        }
        self.sync(si);
    }

    pub(super) fn on_up_send(&mut self, si: usize, epoch: u32, c: Completion<Tag>) {
        let Some(up) = self.up_mut(si, epoch) else {
            self.recycle(c.mem);
            return;
        };
        let stream = std::mem::take(&mut up.sending_stream);
        let Link::Open(ep) = &mut up.link else {
            self.recycle(c.mem);
            return;
        };
        let res = ep.on_send(&c);
        let short_prelude =
            !stream && matches!(&c.mem, Owned::Bytes(b) if (res as usize) < b.len());
        self.recycle(c.mem);
        if res < 0 || short_prelude {
            debug!(
                shard = self.index,
                session = self.sessions[si].id,
                "upstream send failed: {}",
                std::io::Error::from_raw_os_error(-res.min(-1))
            );
            self.sessions[si].relay.handle_peer_eof();
        } else if stream {
            self.count_n(|s| &s.upstream_tx_bytes, res as u64);
            self.sessions[si].relay.handle_peer_sent(res as usize);
        }
        self.sync(si);
    }

    /// Keeps the upstream endpoint in line with the session core: its room,
    /// the SCP handshake request first, then the stream; closed once the
    /// session or the link has ended.
    pub(super) fn sync_up(&mut self, si: usize) {
        let Shard {
            d,
            sessions,
            bufs,
            recv_policy,
            meta_pool,
            ..
        } = self;
        let Some(s) = sessions.get_mut(si) else {
            return;
        };
        let Some(up) = s.up.as_deref_mut() else {
            return;
        };
        let ended = s.ended || s.relay.peer_ended();
        let Link::Open(ep) = &mut up.link else {
            if ended && !matches!(up.link, Link::Socket) {
                if let Link::Connecting(ep) = &mut up.link {
                    ep.close(d, Some(Tag::shard(Op::UpClose)));
                }
                up.link = Link::Gone;
                s.up = None;
            }
            return;
        };
        if ended {
            ep.close(d, Some(Tag::shard(Op::UpClose)));
            up.link = Link::Gone;
            s.up = None;
            return;
        }
        let epoch = up.epoch;
        let room = s.relay.peer_room();
        let paused = ep.sync_recv(d, bufs, recv_policy, room, Tag::new(Op::UpRecv, si, epoch));
        if ep.sending() {
            if paused {
                self.count(|s| &s.paused);
            }
            return;
        }
        let tag = Tag::new(Op::UpSend, si, epoch);
        if let Some(prelude) = s.relay.take_peer_prelude() {
            ep.send_owned(d, prelude, tag);
        } else if let Some(pieces) = s
            .relay
            .peer_out()
            .is_some_and(|o| o.unsent() > 0)
            .then(|| s.relay.peer_pieces())
            .flatten()
        {
            let sent = ep.send_pieces(d, pieces, meta_pool, tag);
            if let Some(op) = ep.send_op().filter(|_| sent > 0) {
                up.sending_stream = true;
                if s.reads.len() == s.reads.inline_size() {
                    s.reads.retain(|r| d.is_in_flight(*r));
                }
                s.reads.push(op);
            }
        }
        if paused {
            self.count(|s| &s.paused);
        }
    }

    /// Closes the session's upstream link, whatever state it is in.
    pub(super) fn close_up(&mut self, si: usize) {
        self.sync_up(si);
    }
}
