//! Per-shard timers.
//!
//! Every timeout of one kind (handshake, reuse, idle) has the same duration,
//! so insertion order is deadline order: one FIFO queue per kind expires in
//! O(1) with no sorting and no per-entry heap allocation. Entries are never
//! removed early; when one fires the shard checks the entry's generation and
//! state and ignores it if it no longer applies (lazy cancellation).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A timer entry: which slab entry, with which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Slab index.
    pub index: usize,
    /// Generation of the entry when the timer was set.
    pub epoch: u32,
}

/// One fixed-duration timeout.
#[derive(Debug)]
pub struct DeadlineQueue {
    duration: Duration,
    queue: VecDeque<(Instant, Entry)>,
}

impl DeadlineQueue {
    /// A queue whose entries expire `duration` after they are pushed.
    pub fn new(duration: Duration) -> Self {
        DeadlineQueue {
            duration,
            queue: VecDeque::new(),
        }
    }

    /// The configured duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Starts a timeout for `entry` at `now`.
    pub fn push(&mut self, now: Instant, entry: Entry) {
        self.queue.push_back((now + self.duration, entry));
    }

    /// Starts a timeout that expires at `deadline`, which must not be earlier
    /// than the deadlines already queued (used to re-arm idle checks).
    pub fn push_at(&mut self, deadline: Instant, entry: Entry) {
        debug_assert!(self.queue.back().is_none_or(|(d, _)| *d <= deadline));
        self.queue.push_back((deadline, entry));
    }

    /// Pops the next entry whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Entry> {
        match self.queue.front() {
            Some((deadline, _)) if *deadline <= now => self.queue.pop_front().map(|(_, e)| e),
            _ => None,
        }
    }

    /// Number of timers pending (including ones that will turn out stale).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_order() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new(Duration::from_secs(1));
        q.push(t0, Entry { index: 1, epoch: 0 });
        q.push(
            t0 + Duration::from_millis(500),
            Entry { index: 2, epoch: 0 },
        );
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(999)), None);
        assert_eq!(
            q.pop_expired(t0 + Duration::from_secs(1)).map(|e| e.index),
            Some(1)
        );
        assert_eq!(q.pop_expired(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            q.pop_expired(t0 + Duration::from_secs(2)).map(|e| e.index),
            Some(2)
        );
        assert!(q.is_empty());
    }
}
