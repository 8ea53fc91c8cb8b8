//! Embedded mode: a session's notes offered to its worker's queue, commands
//! from the application's handle, and sessions waiting for a full queue.
//!
//! A note the queue refuses stays first in the session's line; the session
//! core then gives its client no room (its bytes wait in the kernel) until
//! [`Shard::worker_round`] has delivered everything, so a stalled worker
//! holds back only its own sessions.

use super::*;
use crate::engine::session::Note;
use crate::engine::workers::{Command, Encoded, Event};
use crossbeam_channel::TrySendError;
use std::sync::atomic::AtomicBool;

/// Offers an event to a worker queue; gives it back when the queue is full,
/// after asking the worker (`wanted`) to wake the shards once it takes one.
/// Asking before the second try means a drain between the tries is not missed.
/// Shared by embedded mode and the skynet doors.
pub(super) fn offer<E>(
    tx: &crossbeam_channel::Sender<E>,
    wanted: &AtomicBool,
    ev: E,
) -> Result<(), E> {
    match tx.try_send(ev) {
        // A dropped receiver: the application no longer listens.
        Ok(()) | Err(TrySendError::Disconnected(_)) => Ok(()),
        Err(TrySendError::Full(ev)) => {
            wanted.store(true, Ordering::SeqCst);
            match tx.try_send(ev) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => Ok(()),
                Err(TrySendError::Full(ev)) => Err(ev),
            }
        }
    }
}

impl Shard {
    /// Offers session `si`'s notes to its worker; a session left with notes
    /// waits in `worker_waiting`.
    pub(super) fn offer_notes(&mut self, si: usize) {
        let Some(hub) = &self.hub else {
            return;
        };
        let Some(s) = self.sessions.get_mut(si) else {
            return;
        };
        let (tx, wanted) = (&hub.senders[s.queue], &hub.wanted[s.queue]);
        let (id, peer, flag) = (s.id, s.client_addr, s.flag);
        let target = &s.target;
        s.relay.take_notes(|note| {
            let ev = match &note {
                Note::Opened => Event::Opened {
                    session: id,
                    peer,
                    target: target.as_deref().map(str::to_owned),
                    flag,
                },
                Note::Frame(data) => Event::Frame {
                    session: id,
                    data: data.clone(),
                },
                Note::Resumed => Event::Resumed { session: id },
                Note::Detached => Event::Detached { session: id },
                Note::Closed(reason) => Event::Closed {
                    session: id,
                    reason: *reason,
                },
            };
            offer(tx, wanted, ev).map_err(|_| note)
        });
        if s.relay.notes_waiting() && !s.waiting {
            s.waiting = true;
            let epoch = s.epoch;
            self.worker_waiting.push((si, epoch));
            self.count(|s| &s.worker_full);
        }
        if let Some(e) = self.sessions[si].relay.framing_error() {
            if !self.sessions[si].ended {
                debug!(
                    shard = self.index,
                    session = self.sessions[si].id,
                    "bad frame from the client: {e}"
                );
            }
        }
    }

    /// Once per loop, before waiting: the application's commands, and
    /// sessions waiting for their worker.
    pub(super) fn worker_round(&mut self) {
        if self.hub.is_none() {
            return;
        }
        self.drain_commands();
        for (si, epoch) in std::mem::take(&mut self.worker_waiting) {
            let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == epoch) else {
                continue;
            };
            s.waiting = false;
            self.sync(si);
        }
    }

    fn drain_commands(&mut self) {
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
                        self.sync(si);
                    }
                }
            }
        }
    }

    /// Appends a frame to a session's outgoing stream (see
    /// [`Relay::send_frame`]): bounded by `relay_buffer` beyond the window.
    fn send_to(&mut self, id: u32, frame: &Encoded) {
        let Some(&si) = self.by_id.get(&id) else {
            return;
        };
        let limit = self.cfg.relay_buffer;
        let s = &mut self.sessions[si];
        s.relay.send_frame(&frame.parts(), limit);
        if s.relay.closing() == Some(CloseReason::SendOverflow) {
            debug!(
                shard = self.index,
                session = id,
                window = s.relay.client_out().unsent(),
                "outgoing frames overflow"
            );
        }
        self.sync(si);
    }
}
