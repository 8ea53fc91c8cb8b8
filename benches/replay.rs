//! Cost of the session's send path: encrypting into the replay window and
//! completing the send, and building a full-window resend on resume.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringgate::proto::replay::ReplayWindow;
use ringgate::proto::session::Session;

const WINDOW: usize = 65536;

fn encrypt(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_encrypt");
    for size in [64usize, 16 * 1024] {
        let plain = vec![0x5au8; size];
        let mut s = Session::new(1, 0x0123_4567_89ab_cdef, WINDOW);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let n = s.encrypt(black_box(&plain));
                // The send completes at once: the window never fills.
                s.window_mut().mark_sent(n);
                n
            })
        });
    }
    group.finish();
}

fn resend(c: &mut Criterion) {
    let mut w = ReplayWindow::new(WINDOW);
    // Fill the window twice over so the held bytes wrap around the ring.
    for _ in 0..2 * WINDOW / 1000 + 1 {
        let n = w.write(&[1u8; 1000]);
        w.mark_sent(n);
    }
    let peer = (w.written() - WINDOW as u64) as u32;
    let mut group = c.benchmark_group("window_resend_64KiB");
    group.throughput(Throughput::Bytes(WINDOW as u64));
    // What the engine does: rewind, then build the iovec list.
    group.bench_function("rewind+iovecs", |b| {
        let mut iov: Vec<(*const u8, usize)> = Vec::with_capacity(WINDOW / 4096 + 1);
        b.iter(|| {
            let missing = w.rewind(black_box(peer)).unwrap();
            iov.clear();
            iov.extend(w.slices_from(w.flushed()).map(|s| (s.as_ptr(), s.len())));
            black_box(&iov);
            missing
        })
    });
    // For scale: the same resend copied out into a buffer.
    group.bench_function("rewind+copy", |b| {
        let mut out = Vec::with_capacity(WINDOW);
        b.iter(|| {
            let missing = w.rewind(black_box(peer)).unwrap();
            out.clear();
            for s in w.slices_from(w.flushed()) {
                out.extend_from_slice(s);
            }
            black_box(&out);
            missing
        })
    });
    group.finish();
}

criterion_group!(benches, encrypt, resend);
criterion_main!(benches);
