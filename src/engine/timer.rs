//! Per-shard timers.
//!
//! Every timeout of one kind (handshake, reuse, idle) has the same duration,
//! so insertion order is deadline order: one FIFO queue per kind expires in
//! O(1) with no sorting and no per-entry heap allocation. Entries keep when
//! they started, not when they end, so the duration can change while they
//! wait (a reloaded setting) without breaking that order. Entries are never
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
    /// When each entry's timeout started.
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

    /// Changes the duration, for the entries already waiting too.
    pub fn set_duration(&mut self, duration: Duration) {
        self.duration = duration;
    }

    /// Starts a timeout for `entry` at `now`, which must not be earlier
    /// than the starts already queued.
    pub fn push(&mut self, now: Instant, entry: Entry) {
        debug_assert!(self.queue.back().is_none_or(|(s, _)| *s <= now));
        self.queue.push_back((now, entry));
    }

    /// Pops the next entry whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Entry> {
        match self.queue.front() {
            Some((start, _)) if now.saturating_duration_since(*start) >= self.duration => {
                self.queue.pop_front().map(|(_, e)| e)
            }
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

    #[test]
    fn a_new_duration_applies_to_waiting_entries() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new(Duration::from_secs(10));
        q.push(t0, Entry { index: 1, epoch: 0 });
        assert_eq!(q.pop_expired(t0 + Duration::from_secs(2)), None);
        q.set_duration(Duration::from_secs(1));
        assert_eq!(
            q.pop_expired(t0 + Duration::from_secs(2)).map(|e| e.index),
            Some(1)
        );
    }
}
