//! Accepting connections: multishot accept into direct descriptors, the peer address, new connection entries.

use super::*;

impl Shard {
    /// Arms accepting as the table's free slots allow: one multishot
    /// accept while a whole backlog's burst still fits above the reserve;
    /// closer to it, single-shot accepts, as many outstanding as there are
    /// free slots above the reserve (at most [`SINGLE_ACCEPTS`]); at the
    /// reserve, none (clients wait in the backlog).
    pub(super) fn arm_accept(&mut self) {
        let free = self.table.saturating_sub(self.slots);
        let ud = token::encode(Op::Accept, 0, 0);
        if free > self.reserve + LISTEN_BACKLOG as usize {
            if self.accepts_pending == 0 {
                self.accept_multishot = true;
                let e = opcode::AcceptMulti::new(types::Fd(self.listener))
                    .allocate_file_index(true)
                    .build();
                self.push(e.user_data(ud));
                self.accepts_pending = 1;
            }
            self.accept_paused = false;
            return;
        }
        if self.accept_multishot {
            return; // being switched off; single-shot accepts start after it ends
        }
        let room = free.saturating_sub(self.reserve).min(SINGLE_ACCEPTS);
        if room == 0 && self.accepts_pending == 0 && !self.accept_paused {
            self.accept_paused = true;
            self.shared.shards[self.index]
                .stats
                .accept_pauses
                .fetch_add(1, Ordering::Relaxed);
            self.warn_limit("direct descriptor table nearly full: accepting paused until connections close; add shards or raise the fd limit");
        }
        while self.accepts_pending < room {
            let e = opcode::Accept::new(
                types::Fd(self.listener),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .file_index(Some(types::DestinationSlot::auto_target()))
            .build();
            self.push(e.user_data(ud));
            self.accepts_pending += 1;
            self.accept_paused = false;
        }
    }

    pub(super) fn on_accept(&mut self, res: i32, flags: u32) {
        if !is_more(flags) {
            self.accepts_pending = self.accepts_pending.saturating_sub(1);
            if self.accepts_pending == 0 {
                self.accept_multishot = false;
                self.accept_switching = false;
            }
        }
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENFILE | libc::EMFILE => {
                    self.warn_limit("direct descriptor table full: connections are being refused; raise the fd limit or add shards")
                }
                e => debug!(shard = self.index, "accept failed: {}", std::io::Error::from_raw_os_error(e)),
            }
            return;
        }
        let slot = res as u32;
        self.shared.shards[self.index]
            .stats
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        if self.stopping.is_some() {
            self.close_slot(slot);
            return;
        }
        let scp = self.cfg.scp;
        if scp
            && self.handshaking >= (self.cfg.max_pending_handshakes / self.cfg.shards.max(1)).max(1)
        {
            self.warn_limit("max_pending_handshakes reached: new connections are being closed");
            self.close_slot(slot);
            return;
        }
        if !scp && self.sessions.len() >= self.max_sessions_here() {
            self.warn_limit("max_sessions reached: new connections are being closed");
            self.close_slot(slot);
            return;
        }
        let ci = self.new_conn(
            slot,
            None,
            if scp {
                ConnState::Handshake(Box::default())
            } else {
                ConnState::Dead
            },
        );
        if scp {
            self.handshaking += 1;
            let epoch = self.conns[ci].epoch;
            self.hs_timers
                .push(Instant::now(), TimerEntry { index: ci, epoch });
        }
        // Reading starts once the peer address is known, so that a session
        // (and its upstream announcement) always has it.
        self.request_peername(ci);
    }

    pub(super) fn max_sessions_here(&self) -> usize {
        (self.cfg.max_sessions / self.cfg.shards.max(1)).max(1)
    }

    pub(super) fn warn_limit(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last_limit_warn
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.last_limit_warn = Some(now);
            warn!(shard = self.index, "{what}");
        }
    }

    pub(super) fn new_conn(
        &mut self,
        slot: u32,
        peer: Option<SocketAddr>,
        state: ConnState,
    ) -> usize {
        let epoch = self.new_epoch();
        let ci = self.conns.insert(Conn {
            epoch,
            slot,
            peer,
            addr: Box::default(),
            state,
            ops: 0,
            recv_armed: false,
            paused: false,
            closing: false,
            send_len: 0,
            send_sess: None,
            send_meta: None,
            hs_out: Vec::new(),
            hs_sent: 0,
            hs_sending: false,
            raw_in: Vec::new(),
            last_rx: Instant::now(),
        });
        if let Some(idle) = self.idle_timers.as_mut() {
            idle.push(Instant::now(), TimerEntry { index: ci, epoch });
        }
        ci
    }

    pub(super) fn request_peername(&mut self, ci: usize) {
        let len = RawAddr::len_for(&self.local);
        let c = &mut self.conns[ci];
        c.ops += 1;
        let e = sys::peername_entry(types::Fixed(c.slot), c.addr.as_mut_ptr(), len)
            .user_data(token::encode(Op::PeerName, ci, c.epoch));
        self.push(e);
    }

    pub(super) fn on_peername(&mut self, ci: usize, epoch: u32, res: i32) {
        let Some(c) = self.conns.get_mut(ci).filter(|c| c.epoch == epoch) else {
            return;
        };
        c.ops -= 1;
        if res > 0 {
            c.peer = c.addr.to_socket_addr();
        }
        if !c.closing {
            if !self.cfg.scp {
                self.open_plain_session(ci);
            }
            self.arm_recv(ci);
        }
        self.maybe_free_conn(ci);
    }
}
