//! Property tests of the replay window against a plain model: the whole
//! stream kept in a `Vec`, and the sent position.

use proptest::prelude::*;
use ringgate::proto::message::Status;
use ringgate::proto::replay::{PAGE, ReplayWindow, SMALL};

#[derive(Debug, Clone)]
enum Op {
    /// Offer this many bytes to `write_with`.
    Write(usize),
    /// Complete the send of this many bytes (may exceed what is unsent).
    Sent(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3 * PAGE).prop_map(Op::Write),
        (0usize..3 * PAGE).prop_map(Op::Sent),
    ]
}

/// Where the stream starts: at 0, just under the 4 GiB wrap of the wire
/// counts, or anywhere.
fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..20_000).prop_map(|k| (1u64 << 32) - k),
        (0u64..20_000).prop_map(|k| (5u64 << 32) - k),
        any::<u64>().prop_map(|s| s >> 8),
    ]
}

/// Byte at stream position `pos`: varied, and reproducible from `pos` alone.
fn byte_at(pos: u64) -> u8 {
    (pos.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn collect(w: &ReplayWindow, from: u64) -> Vec<u8> {
    w.slices_from(from).flatten().copied().collect()
}

/// Runs `ops` on a fresh window, checking every step against the model.
fn run(capacity: usize, start: u64, ops: &[Op]) -> Result<ReplayWindow, TestCaseError> {
    let mut w = ReplayWindow::with_offset(capacity, start);
    let cap = w.capacity();
    let mut flushed = start;
    for op in ops {
        match *op {
            Op::Write(len) => {
                let written = w.written();
                let src: Vec<u8> = (written..written + len as u64).map(byte_at).collect();
                let unsent_before = collect(&w, w.flushed());
                let expect = len.min(cap - (written - flushed) as usize);
                let mut calls = 0;
                let took = w.write_with(&src, |s, d| {
                    assert_eq!(s.len(), d.len());
                    calls += 1;
                    d.copy_from_slice(s)
                });
                prop_assert_eq!(took, expect);
                // A call per segment: pages, and the first page's doubling
                // segments (at most one more than it has doublings).
                let head = (PAGE / SMALL).trailing_zeros() as usize + 1;
                prop_assert!(calls <= took.div_ceil(PAGE) + head + 1);
                // Unsent bytes are never overwritten.
                let unsent_after = collect(&w, w.flushed());
                prop_assert_eq!(&unsent_after[..unsent_before.len()], &unsent_before[..]);
            }
            Op::Sent(n) => {
                w.mark_sent(n);
                flushed = (flushed + n as u64).min(w.written());
            }
        }
        let written = w.written();
        prop_assert_eq!(w.flushed(), flushed);
        prop_assert_eq!(w.unsent() as u64, written - flushed);
        prop_assert_eq!(w.free_space(), cap - w.unsent());
        let held = (written - start).min(cap as u64);
        prop_assert_eq!(w.held() as u64, held);
        // The held bytes are the last `held` bytes of the stream.
        let expect: Vec<u8> = (written - held..written).map(byte_at).collect();
        prop_assert_eq!(collect(&w, written - held), expect);
        // Memory: only the segments the stream has touched, never more than the ring.
        prop_assert_eq!(w.memory_bytes(), touched(start, written, cap));
    }
    Ok(w)
}

/// The ring segment holding ring offset `r`: its first offset and length
/// (doubling from `SMALL` across the first page, then pages).
fn segment(r: usize) -> (usize, usize) {
    if r >= PAGE {
        (r / PAGE * PAGE, PAGE)
    } else if r < SMALL {
        (0, SMALL)
    } else {
        let first = 1 << (usize::BITS - 1 - r.leading_zeros());
        (first, first)
    }
}

/// Bytes of the segments that stream positions `[start, written)` touched.
fn touched(start: u64, written: u64, cap: usize) -> usize {
    if written - start >= cap as u64 {
        return cap;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut pos = start;
    while pos < written {
        let r = (pos % cap as u64) as usize;
        let (first, len) = segment(r);
        seen.insert((first, len));
        pos += (first + len - r) as u64;
    }
    seen.iter().map(|&(_, len)| len).sum()
}

proptest! {
    #[test]
    fn window_matches_model(
        capacity in 0usize..5 * PAGE,
        start in start(),
        ops in prop::collection::vec(op(), 0..40),
    ) {
        run(capacity, start, &ops)?;
    }

    #[test]
    fn rewind_accepts_exactly_what_is_held(
        capacity in 0usize..5 * PAGE,
        start in start(),
        ops in prop::collection::vec(op(), 0..40),
        picks in prop::collection::vec(any::<u64>(), 8),
    ) {
        let mut w = run(capacity, start, &ops)?;
        let written = w.written();
        let oldest = written - w.held() as u64;
        // Peer positions inside the held range: the edges and some between.
        let mut valid = vec![oldest, written];
        valid.extend(picks.iter().map(|p| oldest + p % (written - oldest + 1)));
        for pos in valid {
            let missing = w.rewind(pos as u32);
            prop_assert_eq!(missing, Ok((written - pos) as usize));
            prop_assert_eq!(w.flushed(), pos);
            let expect: Vec<u8> = (pos..written).map(byte_at).collect();
            prop_assert_eq!(collect(&w, w.flushed()), expect);
        }
        // Peer positions outside it, taken mod 2^32 as the wire carries them:
        // further behind than held, or ahead of what was written.
        let mut invalid = vec![oldest.wrapping_sub(1), written + 1];
        for p in &picks {
            let k = 1 + p % (1 << 31);
            invalid.push(oldest.wrapping_sub(k));
            invalid.push(written + k);
        }
        w.rewind(written as u32).unwrap();
        for pos in invalid {
            // Each pick is under 2^32 away from the held range, so its wire
            // value never aliases into it.
            prop_assert_eq!(w.rewind(pos as u32), Err(Status::NotAcceptable), "pos {}", pos);
            prop_assert_eq!(w.flushed(), written);
        }
    }
}
