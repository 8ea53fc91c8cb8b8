//! What the two front ends that hand work to the application's threads
//! ([`embedded`](super::embedded) mode and the [`skynet`](super::skynet)
//! doors) share: one bounded event queue per worker, with the wake-up that
//! tells a shard waiting for room that a worker took an event, and the
//! running gate behind their handles.

use crate::engine::{Gate, Shared, Stats};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why [`EventReceiver::try_recv`] or [`EventReceiver::recv_timeout`]
/// returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// No event now (or within the timeout).
    #[error("no event")]
    Empty,
    /// The gate has stopped and every event was received.
    #[error("the gate has stopped")]
    Ended,
}

/// The workers' queues before the gate starts: the shards get the senders
/// and the flags, the application gets [`EventReceiver`]s once the gate
/// runs.
pub(crate) struct Queues<E> {
    /// One bounded sender per worker, for the shards.
    pub senders: Vec<Sender<E>>,
    /// Per worker: a shard found its queue full and waits for room.
    pub wanted: Arc<[AtomicBool]>,
    receivers: Vec<Receiver<E>>,
}

impl<E> Queues<E> {
    /// `workers` queues of `capacity` events each.
    pub fn new(workers: usize, capacity: usize) -> Self {
        let (senders, receivers) = (0..workers)
            .map(|_| crossbeam_channel::bounded(capacity))
            .unzip();
        let wanted = (0..workers).map(|_| AtomicBool::new(false)).collect();
        Queues {
            senders,
            wanted,
            receivers,
        }
    }

    /// The application's ends, once the gate whose shards wake on `shared`
    /// runs.
    pub fn receivers(&mut self, shared: &Arc<Shared>) -> Vec<EventReceiver<E>> {
        std::mem::take(&mut self.receivers)
            .into_iter()
            .enumerate()
            .map(|(index, rx)| EventReceiver {
                rx,
                index,
                wanted: self.wanted.clone(),
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One worker's queue of events.
pub struct EventReceiver<E> {
    rx: Receiver<E>,
    index: usize,
    wanted: Arc<[AtomicBool]>,
    shared: Arc<Shared>,
}

impl<E> std::fmt::Debug for EventReceiver<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver")
            .field("worker", &self.index)
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl<E> EventReceiver<E> {
    /// This receiver's worker index (which sessions or users it gets is
    /// the front end's rule).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The next event; `None` once the gate has stopped and all events
    /// were received.
    pub fn recv(&self) -> Option<E> {
        let ev = self.rx.recv().ok()?;
        self.taken();
        Some(ev)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<E, RecvError> {
        match self.rx.try_recv() {
            Ok(ev) => {
                self.taken();
                Ok(ev)
            }
            Err(TryRecvError::Empty) => Err(RecvError::Empty),
            Err(TryRecvError::Disconnected) => Err(RecvError::Ended),
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<E, RecvError> {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => {
                self.taken();
                Ok(ev)
            }
            Err(RecvTimeoutError::Timeout) => Err(RecvError::Empty),
            Err(RecvTimeoutError::Disconnected) => Err(RecvError::Ended),
        }
    }

    /// Events waiting in the queue.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Room was made: wake the shards if one is waiting for it. The load
    /// keeps the common case to a read of a shared flag.
    fn taken(&self) {
        let flag = &self.wanted[self.index];
        if flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::SeqCst) {
            self.shared.wake_all();
        }
    }
}

/// The running gate behind a front end's cloneable handle.
pub(crate) struct Running {
    /// What the shards share (counters, command queues, wake-ups).
    pub shared: Arc<Shared>,
    gate: Mutex<Option<Gate>>,
}

impl Running {
    /// Takes over a started gate.
    pub fn new(gate: Gate) -> Self {
        Running {
            shared: gate.shared().clone(),
            gate: Mutex::new(Some(gate)),
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Asks every shard to close its connections and stop.
    pub fn shutdown(&self) {
        self.shared.stop();
    }

    /// Waits until every shard has exited; later calls return at once.
    pub fn join(&self) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gate.take() {
            g.join();
        }
    }
}
