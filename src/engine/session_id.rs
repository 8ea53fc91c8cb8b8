//! Session ids and the shard bits inside them.
//!
//! An id is the `u32` an SCP client resumes with, so it must say by itself
//! which shard owns the session: any shard may receive the resume and hands
//! it to the owner. Its low `shard_bits` bits name the shard, the rest count
//! that shard's sessions from 1, so no id is 0 (the wire's "no session").

/// A session's id: unique among live sessions, and the id an SCP client
/// resumes with. Its low bits name the shard that owns the session (see
/// [`IdSpace`]).
pub type SessionId = u32;

/// The layout of session ids for a gate with a given number of shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSpace {
    shard_bits: u32,
}

impl IdSpace {
    /// The layout for `shards` shards (at least 1; at most 65536, which the
    /// gate enforces, leaves 16 bits of counter).
    pub fn new(shards: usize) -> IdSpace {
        debug_assert!(shards <= 1 << 16);
        IdSpace {
            shard_bits: usize::BITS - (shards.max(1) - 1).leading_zeros(),
        }
    }

    /// Low bits that name the owning shard: enough for `shards - 1`.
    pub fn shard_bits(self) -> u32 {
        self.shard_bits
    }

    /// The largest counter an id can carry; counters run from 1 to it.
    pub fn max_counter(self) -> u32 {
        u32::MAX >> self.shard_bits
    }

    /// The id of session number `counter` (1..=[`max_counter`](Self::max_counter))
    /// of `shard`. Not 0 for any counter in range.
    pub fn id(self, shard: usize, counter: u32) -> SessionId {
        debug_assert!((1..=self.max_counter()).contains(&counter));
        debug_assert!(shard < 1 << self.shard_bits);
        (counter << self.shard_bits) | shard as u32
    }

    /// The shard that owns `id`. An id from a client may name a shard the
    /// gate does not have when the shard count is not a power of two.
    pub fn owner(self, id: SessionId) -> usize {
        (id & self.shard_mask()) as usize
    }

    /// The counter part of `id`.
    pub fn counter(self, id: SessionId) -> u32 {
        id >> self.shard_bits
    }

    fn shard_mask(self) -> u32 {
        (1u32 << self.shard_bits) - 1
    }
}

/// Hands out one shard's session ids: counters cycle through
/// 1..=max_counter, skipping ids still in use after a wrap.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    space: IdSpace,
    shard: usize,
    next: u32,
}

impl IdAllocator {
    /// Ids of `shard` in `space`, from counter 1.
    pub fn new(space: IdSpace, shard: usize) -> IdAllocator {
        IdAllocator {
            space,
            shard,
            next: 1,
        }
    }

    /// The layout this allocator follows.
    pub fn space(&self) -> IdSpace {
        self.space
    }

    /// The next id for which `in_use` is false, or `None` when the next
    /// 1024 candidates are all taken (a nearly full id space).
    pub fn next(&mut self, in_use: impl Fn(SessionId) -> bool) -> Option<SessionId> {
        let max = self.space.max_counter();
        for _ in 0..1024 {
            let counter = self.next;
            self.next = if self.next >= max { 1 } else { self.next + 1 };
            let id = self.space.id(self.shard, counter);
            if id != 0 && !in_use(id) {
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn id_bits_match_shard_count() {
        let id_bits = |shards| IdSpace::new(shards).shard_bits();
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(8), 3);
        assert_eq!(id_bits(65536), 16);
    }

    #[test]
    fn ids_round_trip_and_name_their_owner() {
        for shards in [1usize, 2, 3, 8, 65536] {
            let space = IdSpace::new(shards);
            let max = space.max_counter();
            assert_eq!(u64::from(max) + 1, 1u64 << (32 - space.shard_bits()));
            let shard_picks = [0, shards / 2, shards - 1];
            for shard in shard_picks {
                for counter in [1, 2, 3, max / 2, max - 1, max] {
                    let id = space.id(shard, counter);
                    assert_ne!(id, 0, "{shards} shards: shard {shard} counter {counter}");
                    assert_eq!(space.owner(id), shard, "{shards} shards: {id}");
                    assert_eq!(space.counter(id), counter, "{shards} shards: {id}");
                }
            }
        }
    }

    #[test]
    fn every_id_has_one_owner_and_counter() {
        // Exhaustive over a small space: each u32 id splits into exactly
        // one (owner, counter) pair, and id() puts it back together.
        for shards in [1usize, 2, 3, 8, 65536] {
            let space = IdSpace::new(shards);
            for id in (0..=u32::MAX).step_by(65537).chain([u32::MAX, 1, 2]) {
                let (owner, counter) = (space.owner(id), space.counter(id));
                assert!(owner < 1 << space.shard_bits());
                if counter != 0 {
                    assert_eq!(space.id(owner, counter), id);
                }
            }
        }
    }

    #[test]
    fn the_allocator_never_produces_zero_and_skips_live_ids() {
        for shards in [1usize, 2, 3, 8, 65536] {
            let space = IdSpace::new(shards);
            let shard = shards - 1;
            let mut ids = IdAllocator::new(space, shard);
            let mut live = HashSet::new();
            // Once around the counter where that is short (65536 shards:
            // 65535 ids), otherwise the first 70000.
            let round = space.max_counter().min(70_000);
            for _ in 0..round {
                let id = ids.next(|id| live.contains(&id)).unwrap();
                assert_ne!(id, 0);
                assert_eq!(space.owner(id), shard);
                assert!(live.insert(id), "{shards} shards: {id} handed out twice");
            }
            if round == space.max_counter() {
                // Every id is live: the counter wraps and finds none in
                // counters 1..=1024; one freed among the next 1024 is found.
                assert_eq!(ids.next(|id| live.contains(&id)), None);
                let freed = space.id(shard, 1030);
                live.remove(&freed);
                assert_eq!(ids.next(|id| live.contains(&id)), Some(freed));
            }
        }
    }
}
