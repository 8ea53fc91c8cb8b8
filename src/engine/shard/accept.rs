//! Accepting connections: multishot accept into direct descriptors, the
//! peer address, new connection entries.

use super::*;
use crate::engine::ring::Owned;
use crate::engine::sys::RawAddr;
use io_uring::opcode;
use std::sync::atomic::Ordering;

impl Shard {
    /// Arms accepting on every listener as the table's free slots allow:
    /// one multishot accept each while a whole backlog's burst per listener
    /// still fits above the reserve; closer to it, single-shot accepts, as
    /// many outstanding as there are free slots above the reserve (at most
    /// [`SINGLE_ACCEPTS`]), shared between the listeners; at the reserve,
    /// none (clients wait in the backlog).
    pub(super) fn arm_accept(&mut self) {
        let free = self.table.saturating_sub(self.slots);
        let n = self.listeners.len().max(1);
        if free > self.reserve + LISTEN_BACKLOG as usize * n {
            for li in 0..self.listeners.len() {
                let l = &mut self.listeners[li];
                if l.accepts.is_empty() {
                    l.multishot = true;
                    let e = opcode::AcceptMulti::new(types::Fd(l.fd))
                        .allocate_file_index(true)
                        .build();
                    let op = self
                        .d
                        .push(e, Some(Tag::new(Op::Accept, li, 0)), Owned::None);
                    self.listeners[li].accepts.push(op);
                }
            }
            self.accept_paused = false;
            return;
        }
        if self.listeners.iter().any(|l| l.multishot) {
            return; // being switched off; single-shot accepts start after it ends
        }
        let room = free.saturating_sub(self.reserve).min(SINGLE_ACCEPTS);
        let outstanding: usize = self.listeners.iter().map(|l| l.accepts.len()).sum();
        if room == 0 && outstanding == 0 && !self.accept_paused {
            self.accept_paused = true;
            self.count(|s| &s.accept_pauses);
            self.warn_limit("direct descriptor table nearly full: accepting paused until connections close; add shards or raise the fd limit");
        }
        // Each listener gets its share; the first also the remainder.
        for li in 0..self.listeners.len() {
            let share = room / n + if li == 0 { room % n } else { 0 };
            while self.listeners[li].accepts.len() < share {
                let e = opcode::Accept::new(
                    types::Fd(self.listeners[li].fd),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
                .file_index(Some(types::DestinationSlot::auto_target()))
                .build();
                let op = self
                    .d
                    .push(e, Some(Tag::new(Op::Accept, li, 0)), Owned::None);
                self.listeners[li].accepts.push(op);
                self.accept_paused = false;
            }
        }
    }

    pub(super) fn on_accept(&mut self, li: usize, c: &Completion<Tag>) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if !c.more() {
            l.accepts.retain(|&op| op != c.op);
            if l.accepts.is_empty() {
                l.multishot = false;
                l.switching = false;
            }
        }
        let door = l.door;
        if c.result < 0 {
            match -c.result {
                libc::ECANCELED => {}
                libc::ENFILE | libc::EMFILE => self.warn_limit(
                    "the shard's direct descriptor table is full: connections are being refused; raise the fd limit or add shards",
                ),
                e => debug!(
                    shard = self.index,
                    "accept failed: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            }
            return;
        }
        let slot = c.result as u32;
        self.count(|s| &s.accepted);
        if self.stopping.is_some() {
            self.close_slot(slot);
            return;
        }
        let greets = door.greets();
        let pending_here =
            (self.shared.tunables.max_pending_handshakes() / self.cfg.shards.max(1)).max(1);
        if greets && self.greeting >= pending_here {
            self.warn_limit("max_pending_handshakes reached: new connections are being closed");
            self.close_slot(slot);
            return;
        }
        if !greets && self.draining() {
            // A plain connection cannot be a resume: while draining, all are new.
            self.count(|s| &s.new_refused_draining);
            self.close_slot(slot);
            return;
        }
        if !greets && self.max_sessions_reached() {
            self.warn_limit("max_sessions reached: new connections are being closed");
            self.close_slot(slot);
            return;
        }
        let state = if greets {
            ConnState::Greeting(Box::new(DoorGreeting::new(door, 0)))
        } else {
            ConnState::Opening
        };
        let ci = self.new_conn(slot, None, door, state);
        if let Some(mode) = door.ws_mode() {
            self.ws_accepted(ci, mode);
            if door.tls() && !self.tls_accepted(ci) {
                return;
            }
        }
        self.skynet_accepted(ci);
        // Reading starts once the peer address is known, so that a session
        // (and its upstream announcement) always has it.
        self.request_peername(ci);
    }

    /// Whether the gate holds `max_sessions` live sessions. The count is
    /// the gate's, not an even share per shard: clients spread over the
    /// shards by a hash of their addresses, so at a full gate some shards
    /// hold a little more than others.
    pub(super) fn max_sessions_reached(&self) -> bool {
        self.shared.live.load(Ordering::Relaxed) >= self.shared.tunables.max_sessions()
    }

    /// A new connection entry (greeting connections get a handshake timer).
    pub(super) fn new_conn(
        &mut self,
        slot: u32,
        peer: Option<SocketAddr>,
        door: Door,
        state: ConnState,
    ) -> usize {
        let epoch = self.new_epoch();
        let greeting = matches!(state, ConnState::Greeting(_));
        let ci = self.conns.insert(Conn {
            epoch,
            ep: Endpoint::new(slot),
            peer,
            door,
            state,
            answer: Vec::new(),
            sending_session: false,
            last_rx: Instant::now(),
            ws: None,
            tls: None,
            kcp: None,
        });
        let now = Instant::now();
        let timer = crate::engine::timer::Entry { index: ci, epoch };
        if greeting {
            self.greeting += 1;
            self.hs_timers.push(now, timer);
        }
        if let Some(idle) = self.idle_timers.as_mut() {
            idle.push(now, timer);
        }
        ci
    }

    fn request_peername(&mut self, ci: usize) {
        let len = RawAddr::len_for(&self.local);
        let c = &mut self.conns[ci];
        let mut addr = Box::<RawAddr>::default();
        let e = sys::peername_entry(types::Fixed(c.ep.slot()), addr.as_mut_ptr(), len);
        let tag = Tag::new(Op::PeerName, ci, c.epoch);
        self.d.push(e, Some(tag), Owned::Addr(addr));
    }

    pub(super) fn on_peername(&mut self, ci: usize, epoch: u32, c: Completion<Tag>) {
        let Some(conn) = self.conn_mut(ci, epoch) else {
            return;
        };
        if c.result > 0 {
            if let Owned::Addr(addr) = &c.mem {
                conn.peer = addr.to_socket_addr();
            }
        }
        if conn.door == Door::Plain {
            self.open_plain_session(ci);
        }
        self.sync_conn(ci);
    }

    /// The connection entry `ci` if it is still the one with `epoch`.
    pub(super) fn conn_mut(&mut self, ci: usize, epoch: u32) -> Option<&mut Conn> {
        self.conns.get_mut(ci).filter(|c| c.epoch == epoch)
    }
}
