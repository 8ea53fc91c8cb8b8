//! The shard → worker → shard hop of embedded mode, without sockets: a frame
//! goes out as an `Event` through a bounded crossbeam channel (`try_send`,
//! as the shard does), the worker receives it and answers with a command
//! pushed onto an `ArrayQueue` (checking the shard's `sleeping` flag, as
//! `Handle::send` does), and the shard drains the command queue.
//!
//! The baseline does the same hop with `std::sync::mpsc` sync channels, so
//! the figure to read is the ratio between the two in each group.
//!
//! - `one_thread`: all four steps in one thread: the cost of the queue
//!   operations themselves, no cache traffic between cores.
//! - `two_threads`: a worker thread echoes a batch of frames back to the
//!   bench thread acting as the shard: throughput across cores.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use ringgate::gate::embedded::Event;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

const CAPACITY: usize = 4096;
const BATCH: usize = 1024;

/// What a worker's send becomes: the session, a frame header, the payload.
struct Cmd(u32, [u8; 2], Bytes);

fn cmd_for(session: u32, data: Bytes) -> Cmd {
    Cmd(session, (data.len() as u16).to_be_bytes(), data)
}

/// The shard's side of a command: look at what it carries.
fn apply(cmd: Cmd) -> usize {
    cmd.0 as usize + cmd.1.len() + cmd.2.len()
}

/// The worker's side of the wake-up: a flag check, a syscall only when set.
fn wake_if_sleeping(sleeping: &AtomicBool) {
    if sleeping.load(Ordering::SeqCst) && sleeping.swap(false, Ordering::SeqCst) {
        unreachable!("the shard never sleeps in this benchmark");
    }
}

fn one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_thread");
    g.throughput(Throughput::Elements(1));
    let payload = Bytes::from_static(&[7u8; 64]);

    let (tx, rx) = crossbeam_channel::bounded::<Event>(CAPACITY);
    let commands = ArrayQueue::<Cmd>::new(CAPACITY);
    let sleeping = AtomicBool::new(false);
    g.bench_function("crossbeam", |b| {
        b.iter(|| {
            let ev = Event::Frame {
                session: 42,
                data: payload.clone(),
            };
            tx.try_send(ev).ok();
            if let Ok(Event::Frame { session, data }) = rx.recv() {
                let _ = commands.push(cmd_for(session, data));
                wake_if_sleeping(&sleeping);
            }
            black_box(commands.pop().map(apply));
        })
    });

    let (tx, rx) = mpsc::sync_channel::<Event>(CAPACITY);
    let (ctx, crx) = mpsc::sync_channel::<Cmd>(CAPACITY);
    g.bench_function("std_mpsc", |b| {
        b.iter(|| {
            let ev = Event::Frame {
                session: 42,
                data: payload.clone(),
            };
            tx.try_send(ev).ok();
            if let Ok(Event::Frame { session, data }) = rx.recv() {
                let _ = ctx.try_send(cmd_for(session, data));
            }
            black_box(crx.try_recv().ok().map(apply));
        })
    });
    g.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    g.throughput(Throughput::Elements(BATCH as u64));
    let payload = Bytes::from_static(&[7u8; 64]);

    {
        let (tx, rx) = crossbeam_channel::bounded::<Event>(CAPACITY);
        let commands = Arc::new(ArrayQueue::<Cmd>::new(CAPACITY));
        let sleeping = Arc::new(AtomicBool::new(false));
        let worker = {
            let (commands, sleeping) = (commands.clone(), sleeping.clone());
            std::thread::spawn(move || {
                while let Ok(ev) = rx.recv() {
                    if let Event::Frame { session, data } = ev {
                        let mut cmd = cmd_for(session, data);
                        while let Err(back) = commands.push(cmd) {
                            cmd = back;
                            std::hint::spin_loop();
                        }
                        wake_if_sleeping(&sleeping);
                    }
                }
            })
        };
        g.bench_function("crossbeam", |b| {
            b.iter(|| {
                let (mut sent, mut back) = (0, 0);
                while back < BATCH {
                    while sent < BATCH {
                        let ev = Event::Frame {
                            session: sent as u32,
                            data: payload.clone(),
                        };
                        if tx.try_send(ev).is_err() {
                            break; // full: the shard would pause this session
                        }
                        sent += 1;
                    }
                    while let Some(cmd) = commands.pop() {
                        black_box(apply(cmd));
                        back += 1;
                    }
                }
            })
        });
        drop(tx);
        worker.join().unwrap();
    }

    {
        let (tx, rx) = mpsc::sync_channel::<Event>(CAPACITY);
        let (ctx, crx) = mpsc::sync_channel::<Cmd>(CAPACITY);
        let worker = std::thread::spawn(move || {
            while let Ok(ev) = rx.recv() {
                if let Event::Frame { session, data } = ev {
                    if ctx.send(cmd_for(session, data)).is_err() {
                        return;
                    }
                }
            }
        });
        g.bench_function("std_mpsc", |b| {
            b.iter(|| {
                let (mut sent, mut back) = (0, 0);
                while back < BATCH {
                    while sent < BATCH {
                        let ev = Event::Frame {
                            session: sent as u32,
                            data: payload.clone(),
                        };
                        if tx.try_send(ev).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    while let Ok(cmd) = crx.try_recv() {
                        black_box(apply(cmd));
                        back += 1;
                    }
                }
            })
        });
        drop(tx);
        worker.join().unwrap();
    }
    g.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
