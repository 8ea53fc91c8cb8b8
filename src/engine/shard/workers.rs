//! Embedded mode: frames to worker queues, commands from the handle, back-pressure when a worker falls behind.

use super::*;

impl Shard {
    //
    // Embedded mode. Client plaintext is cut into frames (one decoder per
    // session) and offered to the session's worker queue; when it is full the
    // events wait in the session (`WorkerLink::pending`), the client's recv is
    // paused, and `worker_round` retries once per loop. Commands from the
    // application arrive in `ShardLink::commands`.

    /// Connects a new session to its worker queue and announces it.
    pub(super) fn start_worker(&mut self, si: usize) {
        let Some(hub) = &self.hub else { return };
        let s = &mut self.sessions[si];
        s.peer = Peer::Worker(Box::new(WorkerLink {
            queue: s.id as usize % hub.senders.len(),
            decoder: FrameDecoder::new(hub.format, hub.max_frame),
            rx: BytesMut::new(),
            pending: VecDeque::new(),
            broken: false,
        }));
        let opened = Event::Opened {
            session: s.id,
            peer: s.client_addr,
            target: s.target.clone(),
            flag: s.flag,
        };
        self.note_peer(si);
        self.worker_emit(si, opened);
    }

    /// Publishes the session's client address for `Handle::peer_addr`.
    pub(super) fn note_peer(&self, si: usize) {
        let s = &self.sessions[si];
        if let Ok(mut peers) = self.shared.shards[self.index].peers.lock() {
            match s.client_addr {
                Some(addr) => peers.insert(s.id, addr),
                None => peers.remove(&s.id),
            };
        }
    }

    /// Queues an event for the session's worker, behind any already waiting.
    pub(super) fn worker_emit(&mut self, si: usize, ev: Event) {
        let Some(hub) = &self.hub else { return };
        let Some(s) = self.sessions.get_mut(si) else {
            return;
        };
        let Peer::Worker(w) = &mut s.peer else { return };
        if !w.pending.is_empty() {
            w.pending.push_back(ev);
        } else if let Err(ev) = offer(&hub.senders[w.queue], &hub.wanted[w.queue], ev) {
            w.pending.push_back(ev);
            let epoch = s.epoch;
            self.worker_wait(si, epoch);
        }
    }

    /// The session's worker queue is full: stop reading from its client
    /// until `retry_workers` has delivered what waits.
    pub(super) fn worker_wait(&mut self, si: usize, epoch: u32) {
        self.worker_waiting.push((si, epoch));
        self.shared.shards[self.index]
            .stats
            .worker_full
            .fetch_add(1, Ordering::Relaxed);
        if let Some(ci) = self.sessions[si].conn {
            self.pause_recv(ci);
        }
    }

    /// Plaintext for the worker; takes nothing while events wait (the
    /// caller stashes it and pauses the client).
    pub(super) fn deliver_to_worker(&mut self, si: usize, data: &[u8]) -> usize {
        let Peer::Worker(w) = &mut self.sessions[si].peer else {
            return data.len();
        };
        if w.broken {
            return data.len(); // the session is closing; drop it
        }
        if !w.pending.is_empty() {
            return 0;
        }
        w.rx.extend_from_slice(data);
        self.decode_frames(si);
        data.len()
    }

    /// Offers every complete frame to the worker until its queue is full.
    /// A broken frame marks the session for closing after this batch (its
    /// callers still hold its slab index).
    pub(super) fn decode_frames(&mut self, si: usize) {
        let Some(hub) = &self.hub else { return };
        let s = &mut self.sessions[si];
        let (id, epoch) = (s.id, s.epoch);
        let Peer::Worker(w) = &mut s.peer else { return };
        if w.broken || !w.pending.is_empty() {
            return;
        }
        let (tx, wanted) = (&hub.senders[w.queue], &hub.wanted[w.queue]);
        loop {
            match w.decoder.decode(&mut w.rx) {
                Ok(Some(data)) => {
                    if let Err(ev) = offer(tx, wanted, Event::Frame { session: id, data }) {
                        w.pending.push_back(ev);
                        self.worker_wait(si, epoch);
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    info!(
                        shard = self.index,
                        session = id,
                        "bad frame from the client: {e}"
                    );
                    w.broken = true;
                    w.rx = BytesMut::new();
                    self.worker_broken.push((si, epoch));
                    return;
                }
            }
        }
    }

    /// A resume. A worker that has not yet seen the detach is spared both,
    /// and one waiting `Resumed` stands for several (so a client resuming
    /// in a loop cannot grow `pending` while its worker is stalled).
    pub(super) fn worker_resumed(&mut self, si: usize) {
        if self.hub.is_none() {
            return;
        }
        self.note_peer(si);
        let s = &mut self.sessions[si];
        let id = s.id;
        if let Peer::Worker(w) = &mut s.peer {
            match w.pending.back() {
                Some(Event::Detached { .. }) => {
                    w.pending.pop_back();
                    return;
                }
                Some(Event::Resumed { .. }) => return,
                _ => {}
            }
        }
        self.worker_emit(si, Event::Resumed { session: id });
    }

    pub(super) fn worker_closed(&mut self, si: usize, reason: CloseReason) {
        if self.hub.is_none() {
            return;
        }
        let id = self.sessions[si].id;
        if let Ok(mut peers) = self.shared.shards[self.index].peers.lock() {
            peers.remove(&id);
        }
        self.worker_emit(
            si,
            Event::Closed {
                session: id,
                reason,
            },
        );
    }

    /// Once per loop, before waiting: the application's commands, sessions
    /// waiting for their worker, sessions whose framing broke.
    pub(super) fn worker_round(&mut self) {
        if self.hub.is_none() {
            return;
        }
        self.drain_commands();
        self.retry_workers();
        for (si, epoch) in std::mem::take(&mut self.worker_broken) {
            if self.sessions.get(si).is_some_and(|s| s.epoch == epoch) {
                self.close_session(si, CloseReason::ProtocolError);
            }
        }
    }

    pub(super) fn drain_commands(&mut self) {
        let Some(budget) = self.hub.as_ref().map(|h| h.command_capacity) else {
            return;
        };
        // At most one queue's worth per loop, so I/O is not starved.
        for _ in 0..budget {
            let Some(cmd) = self.shared.shards[self.index].commands.pop() else {
                return;
            };
            match cmd {
                Command::Send(id, frame) => self.send_to(id, &frame),
                Command::SendMany(ids, frame) => {
                    for id in ids {
                        self.send_to(id, &frame);
                    }
                }
                Command::Broadcast(frame) => {
                    let ids: Vec<u32> = self.by_id.keys().copied().collect();
                    for id in ids {
                        self.send_to(id, &frame);
                    }
                }
                Command::Kick(id) => {
                    if let Some(&si) = self.by_id.get(&id) {
                        self.close_session(si, CloseReason::Kicked);
                    }
                }
            }
        }
    }

    /// Appends a frame to a session's outgoing stream: into the window (the
    /// send buffer that also serves resumes) while it has room, the rest
    /// into `from_peer`, bounded by `relay_buffer`.
    pub(super) fn send_to(&mut self, id: u32, frame: &Encoded) {
        let Some(&si) = self.by_id.get(&id) else {
            return;
        };
        let limit = self.cfg.relay_buffer;
        let s = &mut self.sessions[si];
        if s.closing.is_some() {
            return;
        }
        let direct = if s.from_peer.is_empty() {
            s.client.free_space().min(frame.len())
        } else {
            0
        };
        if s.from_peer.len() + (frame.len() - direct) > limit {
            debug!(
                shard = self.index,
                session = id,
                window = s.client.unsent(),
                "outgoing frames overflow"
            );
            self.close_session(si, CloseReason::SendOverflow);
            return;
        }
        for part in frame.parts() {
            let n = if s.from_peer.is_empty() {
                s.client.push(part)
            } else {
                0
            };
            s.from_peer.extend_from_slice(&part[n..]);
        }
        if let Some(ci) = s.conn.filter(|_| direct > 0) {
            self.flush_conn(ci);
        }
    }

    /// Delivers what waits for worker queues that have room again; a session
    /// whose events all went resumes decoding and reading.
    pub(super) fn retry_workers(&mut self) {
        let Some(hub) = self.hub.clone() else { return };
        for (si, epoch) in std::mem::take(&mut self.worker_waiting) {
            let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == epoch) else {
                continue;
            };
            let closing = s.closing.is_some();
            let Peer::Worker(w) = &mut s.peer else {
                continue;
            };
            let (tx, wanted) = (&hub.senders[w.queue], &hub.wanted[w.queue]);
            while let Some(ev) = w.pending.pop_front() {
                if let Err(ev) = offer(tx, wanted, ev) {
                    w.pending.push_front(ev);
                    break;
                }
            }
            if !w.pending.is_empty() {
                self.worker_waiting.push((si, epoch));
                continue;
            }
            if closing {
                self.maybe_free_session(si);
                continue;
            }
            self.decode_frames(si);
            self.drain_from_client(si);
            self.check_finished(si);
        }
    }
}
