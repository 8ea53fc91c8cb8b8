//! Prints our RC4 throughput on 16 KiB blocks in MB/s (10^6 bytes per second,
//! the unit `openssl speed` reports in), for `perf/crypto.sh`.
//!
//! Usage: `rc4_speed [seconds]` (default 3).

use ringgate::proto::rc4::Rc4;
use std::hint::black_box;
use std::time::{Duration, Instant};

const BLOCK: usize = 16 * 1024;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let mut rc4 = Rc4::from_secret(0x1234_5678_9abc_def0);
    let mut buf = vec![0x5au8; BLOCK];
    // Warm up caches and clocks before timing.
    for _ in 0..1000 {
        rc4.apply(black_box(&mut buf));
    }
    let limit = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut blocks = 0u64;
    while start.elapsed() < limit {
        for _ in 0..64 {
            rc4.apply(black_box(&mut buf));
        }
        blocks += 64;
    }
    let mbps = (blocks * BLOCK as u64) as f64 / start.elapsed().as_secs_f64() / 1e6;
    println!("{mbps:.2}");
}
