//! Proxy mode: the upstream connection of a session (socket, connect with a timeout, TCP or SCP, announcement, receive and send).

use super::*;

impl Shard {
    pub(super) fn proxy(&self) -> Option<Arc<dyn UpstreamPolicy>> {
        match &self.cfg.backend {
            Backend::Proxy(p) => Some(p.clone()),
            Backend::Echo | Backend::Workers(_) => None,
        }
    }

    pub(super) fn start_peer(&mut self, si: usize) {
        if self.hub.is_some() {
            self.start_worker(si);
            return;
        }
        let Some(proxy) = self.proxy() else { return };
        let s = &self.sessions[si];
        let tries: Vec<UpstreamChoice> = proxy
            .candidates(s.target.as_deref(), &mut self.rng)
            .into_iter()
            .rev()
            .collect();
        let epoch = self.new_epoch();
        let plain = !proxy.scp();
        let mut up = Box::new(UpLink {
            epoch,
            slot: None,
            state: UpState::Connecting,
            tries,
            addr: Box::default(),
            addr_len: 0,
            out: plain.then(|| Outbound::Plain(PlainQueue::new(self.cfg.relay_buffer))),
            ops: 0,
            recv_armed: false,
            paused: false,
            send_len: 0,
            send_meta: None,
            hs_out: Vec::new(),
            hs_sent: 0,
            hs_sending: false,
            eof: false,
        });
        if let Some(out) = up.out.as_mut() {
            self.announce_into(si, out, &*proxy);
        }
        self.sessions[si].peer = Peer::Up(up);
        self.connect_next(si);
    }

    pub(super) fn announce_into(&self, si: usize, out: &mut Outbound, proxy: &dyn UpstreamPolicy) {
        let s = &self.sessions[si];
        if s.flag & 1 != 0 {
            return;
        }
        let Some(client) = s.client_addr else { return };
        let bytes = proxy.announcement(client, self.local);
        out.push(&bytes);
    }

    pub(super) fn up(&mut self, si: usize, epoch: u32) -> Option<&mut UpLink> {
        match self.sessions.get_mut(si) {
            Some(Sess {
                peer: Peer::Up(up), ..
            }) if up.epoch == epoch => Some(up),
            _ => None,
        }
    }

    pub(super) fn connect_next(&mut self, si: usize) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        let Some(next) = up.tries.pop() else {
            warn!(
                shard = self.index,
                session = self.sessions[si].id,
                "no upstream reachable"
            );
            self.shared.shards[self.index]
                .stats
                .upstream_failed
                .fetch_add(1, Ordering::Relaxed);
            self.close_session(si, CloseReason::UpstreamUnreachable);
            return;
        };
        let addr = next.addr;
        let (raw, len) = RawAddr::from_socket_addr(addr);
        *up.addr = raw;
        up.addr_len = len;
        up.ops += 1;
        let e = sys::direct_tcp_socket(&addr).user_data(token::encode(Op::UpSocket, si, up.epoch));
        self.push(e);
    }

    pub(super) fn on_up_socket(&mut self, si: usize, epoch: u32, res: i32) {
        let closing = self.sessions.get(si).is_some_and(|s| s.closing.is_some());
        let connect_ts = &*self.connect_ts as *const types::Timespec;
        let Some(up) = self.up(si, epoch) else {
            if res >= 0 {
                self.close_slot(res as u32);
            }
            return;
        };
        up.ops -= 1;
        if res < 0 {
            warn!(
                "cannot create an upstream socket: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            self.close_session(si, CloseReason::UpstreamError);
            self.maybe_free_session(si);
            return;
        }
        let slot = res as u32;
        up.slot = Some(slot);
        if closing {
            self.close_up(si);
            self.maybe_free_session(si);
            return;
        }
        let nodelay = sys::enable_sockopt(types::Fixed(slot), libc::IPPROTO_TCP, libc::TCP_NODELAY)
            .user_data(token::encode(Op::Ignore, 0, 0));
        up.ops += 1;
        let connect = opcode::Connect::new(types::Fixed(slot), up.addr.as_sockaddr(), up.addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(token::encode(Op::UpConnect, si, epoch));
        let timeout = opcode::LinkTimeout::new(connect_ts)
            .build()
            .user_data(token::encode(Op::Ignore, 0, 0));
        self.push(nodelay);
        self.push(connect);
        self.push(timeout);
    }

    pub(super) fn on_up_connect(&mut self, si: usize, epoch: u32, res: i32) {
        let Some(proxy) = self.proxy() else { return };
        let Some(up) = self.up(si, epoch) else { return };
        up.ops -= 1;
        let (shard, id) = (self.index, self.sessions[si].id);
        if self.sessions[si].closing.is_some() {
            self.close_up(si);
            self.maybe_free_session(si);
            return;
        }
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if res < 0 {
            let e = if res == -libc::ECANCELED {
                "timed out".to_string()
            } else {
                std::io::Error::from_raw_os_error(-res).to_string()
            };
            let addr = up.addr.to_socket_addr();
            debug!(shard, session = id, upstream = ?addr, "upstream connect failed: {e}");
            // Close this attempt's socket, then try the next host.
            if let Some(slot) = up.slot.take() {
                self.close_slot(slot);
            }
            self.connect_next(si);
            return;
        }
        debug!(shard, session = id, "upstream connected");
        if proxy.scp() {
            let random: u64 = self.rng.random();
            let mut hs = Box::new(ClientHandshake::new_session(random, None, None));
            up.hs_out = hs.take_output();
            up.state = UpState::Handshake(hs);
        } else {
            up.state = UpState::Open;
        }
        self.arm_up_recv_if(si, epoch);
        self.flush_up(si);
        self.drain_from_client(si);
    }

    pub(super) fn arm_up_recv_if(&mut self, si: usize, epoch: u32) {
        let closing = self.sessions.get(si).is_none_or(|s| s.closing.is_some());
        let Some(up) = self.up(si, epoch) else { return };
        if up.recv_armed
            || up.paused
            || closing
            || up.eof
            || matches!(up.state, UpState::Connecting | UpState::Closed)
        {
            return;
        }
        let Some(slot) = up.slot else { return };
        up.recv_armed = true;
        up.ops += 1;
        self.recv_multi(slot, token::encode(Op::UpRecv, si, epoch));
    }

    pub(super) fn pause_up_recv(&mut self, si: usize) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if up.paused {
            return;
        }
        up.paused = true;
        self.shared.shards[self.index]
            .stats
            .paused
            .fetch_add(1, Ordering::Relaxed);
        if up.recv_armed {
            let ud = token::encode(Op::UpRecv, si, up.epoch);
            self.cancel(ud);
        }
    }

    pub(super) fn resume_up_recv(&mut self, si: usize, _sess_gen: u32) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if !up.paused {
            return;
        }
        up.paused = false;
        let epoch = up.epoch;
        self.arm_up_recv_if(si, epoch);
    }

    pub(super) fn on_up_recv(&mut self, si: usize, epoch: u32, res: i32, flags: u32) {
        let buf = if res > 0 {
            self.bufs.take(flags, res as usize)
        } else {
            None
        };
        let (shard, id) = (self.index, self.sessions.get(si).map_or(0, |s| s.id));
        let Some(up) = self.up(si, epoch) else {
            if let Some((bid, _, _)) = buf {
                self.bufs.push(bid);
            }
            return;
        };
        if !is_more(flags) {
            up.recv_armed = false;
            up.ops -= 1;
        }
        match buf {
            Some((bid, ptr, len)) => {
                // SAFETY: see `on_recv`.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                self.upstream_bytes(si, data);
                self.bufs.push(bid);
            }
            None if res == 0 => {
                up.eof = true;
                debug!(shard, session = id, "upstream closed");
                self.close_up(si);
                self.check_finished(si);
            }
            None if res == -libc::ENOBUFS => self.rearm_ups.push((si, epoch)),
            None if res == -libc::ECANCELED => {}
            None if res < 0 => {
                let e = std::io::Error::from_raw_os_error(-res);
                debug!(shard, session = id, "upstream receive failed: {e}");
                up.eof = true;
                self.close_up(si);
                self.check_finished(si);
            }
            None => {}
        }
        if let Some(up) = self.up(si, epoch) {
            if !up.recv_armed && !up.paused && !up.eof {
                self.rearm_ups.push((si, epoch));
            }
        }
        self.maybe_free_session(si);
    }

    pub(super) fn upstream_bytes(&mut self, si: usize, data: &mut [u8]) {
        let s = &mut self.sessions[si];
        if s.closing.is_some() {
            return;
        }
        let Peer::Up(up) = &mut s.peer else { return };
        // A chained SCP upstream: finish its handshake first, then decrypt.
        let mut start = 0;
        if let UpState::Handshake(hs) = &mut up.state {
            start = hs.recv(data);
            match hs.poll() {
                ClientEvent::NeedMore => return,
                ClientEvent::Established { id, secret } => {
                    let session = Session::new(id, secret, self.cfg.reuse_buffer);
                    let mut out = Outbound::Scp(Box::new(session));
                    up.state = UpState::Open;
                    if let Some(proxy) = self.proxy() {
                        self.announce_into(si, &mut out, &*proxy);
                    }
                    let Peer::Up(up) = &mut self.sessions[si].peer else {
                        return;
                    };
                    up.out = Some(out);
                    self.drain_from_client(si);
                    self.flush_up(si);
                }
                _ => {
                    warn!(
                        shard = self.index,
                        session = self.sessions[si].id,
                        "upstream SCP handshake failed"
                    );
                    self.close_session(si, CloseReason::UpstreamHandshake);
                    return;
                }
            }
        }
        let data = &mut data[start..];
        if data.is_empty() {
            return;
        }
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if let Some(session) = up.out.as_mut().and_then(|o| o.session_mut()) {
            session.decrypt(data);
        }
        let s = &mut self.sessions[si];
        if !s.from_peer.is_empty() {
            s.from_peer.extend_from_slice(data);
            return;
        }
        let n = self.deliver_to_client(si, data);
        if n < data.len() {
            self.sessions[si].from_peer.extend_from_slice(&data[n..]);
            self.pause_up_recv(si);
        }
    }

    pub(super) fn flush_up(&mut self, si: usize) {
        let Some(s) = self.sessions.get_mut(si) else {
            return;
        };
        let Peer::Up(up) = &mut s.peer else { return };
        let Some(slot) = up.slot else { return };
        if up.hs_sending
            || up.send_len > 0
            || matches!(up.state, UpState::Connecting | UpState::Closed)
        {
            return;
        }
        let epoch = up.epoch;
        if up.hs_sent < up.hs_out.len() {
            let rest = &up.hs_out[up.hs_sent..];
            up.hs_sending = true;
            up.ops += 1;
            s.io_refs += 1;
            let e = opcode::Send::new(types::Fixed(slot), rest.as_ptr(), rest.len() as u32)
                .build()
                .user_data(token::encode(Op::UpSend, si, epoch));
            self.push(e);
            return;
        }
        let Some(out) = up.out.as_mut() else { return };
        let Some(op) = out.next_send(types::Fixed(slot), 0, &mut self.meta_pool) else {
            return;
        };
        up.send_len = op.len;
        up.send_meta = op.meta;
        up.ops += 1;
        s.io_refs += 1;
        self.push(op.entry.user_data(token::encode(Op::UpSend, si, epoch)));
    }

    pub(super) fn on_up_send(&mut self, si: usize, epoch: u32, res: i32) {
        let Some(up) = self.up(si, epoch) else { return };
        up.ops -= 1;
        let meta = up.send_meta.take();
        let was_hs = std::mem::take(&mut up.hs_sending);
        let len = std::mem::take(&mut up.send_len);
        if let Some(meta) = meta {
            self.meta_pool.push(meta);
        }
        let s = &mut self.sessions[si];
        s.io_refs -= 1;
        let Peer::Up(up) = &mut s.peer else { return };
        if res < 0 {
            if !matches!(up.state, UpState::Closed) {
                debug!(
                    shard = self.index,
                    session = s.id,
                    "upstream send failed: {}",
                    std::io::Error::from_raw_os_error(-res)
                );
                up.eof = true;
                self.close_up(si);
                self.check_finished(si);
            }
            self.maybe_free_session(si);
            return;
        }
        if was_hs {
            up.hs_sent += res as usize;
            if up.hs_sent >= up.hs_out.len() {
                up.hs_out = Vec::new();
            }
        } else if let Some(out) = up.out.as_mut() {
            out.sent((res as usize).min(len));
        }
        self.flush_up(si);
        self.drain_from_client(si);
        self.check_finished(si);
        self.maybe_free_session(si);
    }

    pub(super) fn close_up(&mut self, si: usize) {
        let Peer::Up(up) = &mut self.sessions[si].peer else {
            return;
        };
        if matches!(up.state, UpState::Closed) && up.slot.is_none() {
            return;
        }
        up.state = UpState::Closed;
        let epoch = up.epoch;
        if let Some(slot) = up.slot.take() {
            up.ops += 1;
            self.cancel_and_close(slot, token::encode(Op::UpClose, si, epoch));
        }
    }

    pub(super) fn on_up_closed(&mut self, si: usize, epoch: u32) {
        if let Some(up) = self.up(si, epoch) {
            up.ops -= 1;
        }
        self.maybe_free_session(si);
    }
}
