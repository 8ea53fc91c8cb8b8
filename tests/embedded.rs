//! Embedded mode over loopback: frames to worker threads and back, with the
//! crate's SCP client and plain TCP clients.

mod common;

use common::{payload, wait_until};
use rand::{Rng, SeedableRng, rngs::StdRng};
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::gate::embedded::{Builder, CloseReason, Event, Handle};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

fn builder() -> Builder {
    Builder::new(SocketAddr::from(([127, 0, 0, 1], 0)))
        .shards(2)
        .engine(|c| {
            c.recv_buffers = 256;
            c.pin_threads = false;
        })
}

/// A started gate with worker threads that echo every frame (unless told
/// otherwise) and copy every event to the test.
struct Harness {
    handle: Handle,
    events: mpsc::Receiver<Event>,
    stalls: Vec<Arc<AtomicBool>>,
    workers: Vec<JoinHandle<usize>>,
}

fn harness(b: Builder, echo: bool) -> Harness {
    let (handle, receivers) = b.start().expect("gate starts");
    let (tx, events) = mpsc::channel();
    let mut stalls = Vec::new();
    let mut workers = Vec::new();
    for rx in receivers {
        let stall = Arc::new(AtomicBool::new(false));
        stalls.push(stall.clone());
        let (handle, tx) = (handle.clone(), tx.clone());
        workers.push(std::thread::spawn(move || {
            let mut seen = 0;
            loop {
                while stall.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let Some(ev) = rx.recv() else { return seen };
                seen += 1;
                if let (true, Event::Frame { session, data }) = (echo, &ev) {
                    let _ = handle.send(*session, data.clone());
                }
                let _ = tx.send(ev);
            }
        }));
    }
    Harness {
        handle,
        events,
        stalls,
        workers,
    }
}

impl Harness {
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Waits for the first event matching `pred`, skipping others.
    fn wait_event(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let end = std::time::Instant::now() + LIMIT;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => {}
                Err(_) => panic!("no event: {what}"),
            }
        }
    }

    /// The reason session `id` closed, once its `Closed` event arrives.
    fn closed_reason(&self, id: u32) -> CloseReason {
        match self.wait_event(
            "closed",
            |e| matches!(e, Event::Closed { session, .. } if *session == id),
        ) {
            Event::Closed { reason, .. } => reason,
            _ => unreachable!("the predicate only accepts Closed"),
        }
    }

    fn finish(self) {
        self.handle.shutdown();
        self.handle.join();
        for w in self.workers {
            w.join().expect("worker thread");
        }
    }
}

fn frame(p: &[u8]) -> Vec<u8> {
    let mut out = (p.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(p);
    out
}

fn scp(addr: SocketAddr) -> ScpClient {
    ScpClient::connect(addr, ClientOptions::default()).expect("session opens")
}

fn read_frame_scp(c: &mut ScpClient) -> Vec<u8> {
    let mut head = [0u8; 2];
    c.read_exact(&mut head).expect("frame header");
    let mut body = vec![0u8; u16::from_be_bytes(head) as usize];
    c.read_exact(&mut body).expect("frame body");
    body
}

fn read_frame_tcp(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("frame header");
    let mut body = vec![0u8; u16::from_be_bytes(head) as usize];
    s.read_exact(&mut body).expect("frame body");
    body
}

fn plain(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// The gate closed `s`: a read ends with EOF or a reset, not a timeout.
fn closed_by_gate(mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn frames_split_and_coalesced_arrive_whole_and_in_order() {
    let h = harness(builder(), true);
    let mut c = scp(h.addr());
    let id = c.id();
    h.wait_event(
        "opened",
        |e| matches!(e, Event::Opened { session, .. } if *session == id),
    );

    let mut rng = StdRng::seed_from_u64(7);
    let frames: Vec<Vec<u8>> = (0..400)
        .map(|n| payload(n, rng.random_range(0..3000)))
        .collect();
    let stream: Vec<u8> = frames.iter().flat_map(|f| frame(f)).collect();
    // Random-sized pieces, some after a pause, so TCP splits frames anywhere.
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=700).min(rest.len());
        c.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
        if rng.random_range(0..8) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // And many frames in one write.
    let burst: Vec<Vec<u8>> = (0..300).map(|n| payload(1000 + n, n % 50)).collect();
    c.write_all(&burst.iter().flat_map(|f| frame(f)).collect::<Vec<u8>>())
        .unwrap();

    for (n, want) in frames.iter().chain(&burst).enumerate() {
        assert_eq!(&read_frame_scp(&mut c), want, "frame {n}");
    }
    h.finish();
}

#[test]
fn frame_over_the_limit_closes_only_that_session() {
    let h = harness(builder().max_frame(1000), true);
    let mut bad = scp(h.addr());
    let mut good = scp(h.addr());
    good.write_all(&frame(b"before")).unwrap();
    assert_eq!(read_frame_scp(&mut good), b"before");

    bad.write_all(&frame(&[1u8; 1000])).unwrap(); // at the limit: fine
    assert_eq!(read_frame_scp(&mut bad), vec![1u8; 1000]);
    bad.write_all(&(1001u16).to_be_bytes()).unwrap(); // over it
    let bad_id = bad.id();
    assert_eq!(h.closed_reason(bad_id), CloseReason::ProtocolError);
    assert!(closed_by_gate(|b| bad.read(b)));

    good.write_all(&frame(b"after")).unwrap();
    assert_eq!(read_frame_scp(&mut good), b"after");
    h.finish();
}

#[test]
fn a_stalled_worker_holds_back_only_its_own_sessions() {
    let h = harness(builder().workers(2).queue_capacity(4), true);
    h.stalls[1].store(true, Ordering::Release);
    let mut clients: Vec<ScpClient> = (0..8).map(|_| scp(h.addr())).collect();
    let (mut stalled, mut free): (Vec<_>, Vec<_>) =
        clients.drain(..).partition(|c| c.id() % 2 == 1);
    assert!(
        !stalled.is_empty() && !free.is_empty(),
        "ids alternate between shards and counters; 8 sessions cover both parities"
    );

    // Far more frames than worker 1's queue holds.
    let msgs: Vec<Vec<u8>> = (0..200).map(|n| payload(n, 100)).collect();
    let burst: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
    for c in &mut stalled {
        c.write_all(&burst).unwrap();
    }
    assert!(
        wait_until(LIMIT, || h.handle.stats().worker_queue_full > 0),
        "worker 1's queue filled up"
    );
    // Worker 0's sessions are served meanwhile.
    for c in &mut free {
        c.write_all(&burst).unwrap();
        for m in &msgs {
            assert_eq!(&read_frame_scp(c), m);
        }
    }
    h.stalls[1].store(false, Ordering::Release);
    for c in &mut stalled {
        for m in &msgs {
            assert_eq!(&read_frame_scp(c), m);
        }
    }
    h.finish();
}

#[test]
fn replies_sent_while_detached_arrive_after_the_resume() {
    let h = harness(builder(), true);
    let mut c = scp(h.addr());
    let id = c.id();
    c.write_all(&frame(b"hello")).unwrap();
    assert_eq!(read_frame_scp(&mut c), b"hello");

    c.abort();
    h.wait_event("detached", |e| *e == Event::Detached { session: id });
    let away: Vec<Vec<u8>> = (0..20).map(|n| payload(n, 500)).collect();
    for m in &away {
        h.handle.send(id, m.clone()).unwrap();
    }
    c.resume().unwrap();
    h.wait_event("resumed", |e| *e == Event::Resumed { session: id });
    for m in &away {
        assert_eq!(&read_frame_scp(&mut c), m);
    }
    c.write_all(&frame(b"back")).unwrap();
    assert_eq!(read_frame_scp(&mut c), b"back");
    assert!(h.handle.peer_addr(id).is_some());
    h.finish();
}

#[test]
fn sending_past_the_window_of_a_detached_session_closes_it() {
    let h = harness(builder().reuse_buffer(4096).send_buffer(4096), true);
    let mut c = scp(h.addr());
    let id = c.id();
    c.abort();
    h.wait_event("detached", |e| *e == Event::Detached { session: id });
    // Window and send buffer hold 8 KiB (plus page rounding); send 64 KiB.
    for n in 0..64 {
        h.handle.send(id, payload(n, 1000)).unwrap();
    }
    assert_eq!(h.closed_reason(id), CloseReason::SendOverflow);
    assert!(c.resume().is_err(), "the session is gone");
    h.finish();
}

#[test]
fn kick_closes_the_session() {
    let h = harness(builder(), true);
    let mut c = scp(h.addr());
    let mut other = scp(h.addr());
    let id = c.id();
    c.write_all(&frame(b"x")).unwrap();
    assert_eq!(read_frame_scp(&mut c), b"x");
    h.handle.kick(id).unwrap();
    assert_eq!(h.closed_reason(id), CloseReason::Kicked);
    assert!(closed_by_gate(|b| c.read(b)));
    assert!(h.handle.peer_addr(id).is_none());
    other.write_all(&frame(b"still here")).unwrap();
    assert_eq!(read_frame_scp(&mut other), b"still here");
    h.finish();
}

#[test]
fn broadcast_reaches_every_session() {
    let h = harness(builder(), false);
    let mut scps: Vec<ScpClient> = (0..4).map(|_| scp(h.addr())).collect();
    for c in &scps {
        let id = c.id();
        h.wait_event(
            "opened",
            |e| matches!(e, Event::Opened { session, .. } if *session == id),
        );
    }
    h.handle.broadcast(&b"news"[..]).unwrap();
    for c in &mut scps {
        assert_eq!(read_frame_scp(c), b"news");
    }
    let ids: Vec<u32> = scps.iter().map(|c| c.id()).take(2).collect();
    h.handle.send_many(&ids, &b"some"[..]).unwrap();
    h.handle.broadcast(&b"all"[..]).unwrap();
    for (n, c) in scps.iter_mut().enumerate() {
        if n < 2 {
            assert_eq!(read_frame_scp(c), b"some");
        }
        assert_eq!(read_frame_scp(c), b"all");
    }
    h.finish();
}

#[test]
fn plain_mode_frames_and_close() {
    let h = harness(builder().scp(false), true);
    let mut s = plain(h.addr());
    let ev = h.wait_event("opened", |e| matches!(e, Event::Opened { .. }));
    let Event::Opened {
        session: id, peer, ..
    } = ev
    else {
        unreachable!()
    };
    assert_ne!(id, 0);
    assert_eq!(peer, Some(s.local_addr().unwrap()));
    assert_eq!(h.handle.peer_addr(id), peer);
    s.write_all(&[frame(b"one"), frame(b"two")].concat())
        .unwrap();
    assert_eq!(read_frame_tcp(&mut s), b"one");
    assert_eq!(read_frame_tcp(&mut s), b"two");
    drop(s);
    let ev = h.wait_event("closed", |e| matches!(e, Event::Closed { .. }));
    assert_eq!(
        ev,
        Event::Closed {
            session: id,
            reason: CloseReason::ClientClosed
        }
    );
    let stats = h.handle.stats();
    assert_eq!(
        (stats.sessions_opened, stats.sessions_closed),
        (1, 1),
        "{stats:?}"
    );
    h.finish();
}

#[test]
fn shutdown_closes_everything_and_every_receiver_ends() {
    let (handle, receivers) = builder().workers(3).start().unwrap();
    let clients: Vec<ScpClient> = (0..6).map(|_| scp(handle.local_addr())).collect();
    let mut ids: Vec<u32> = clients.iter().map(|c| c.id()).collect();
    handle.shutdown();
    let workers: Vec<JoinHandle<Vec<Event>>> = receivers
        .into_iter()
        .map(|rx| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                // `recv` returns None once the shards are gone: no timeout needed,
                // the join below is bounded by the shards' shutdown grace.
                while let Some(ev) = rx.recv() {
                    got.push(ev);
                }
                got
            })
        })
        .collect();
    handle.join();
    let mut closed = Vec::new();
    for w in workers {
        for ev in w.join().unwrap() {
            if let Event::Closed { session, reason } = ev {
                assert_eq!(reason, CloseReason::Shutdown);
                closed.push(session);
            }
        }
    }
    closed.sort_unstable();
    ids.sort_unstable();
    assert_eq!(closed, ids);
    assert!(matches!(
        handle.send(ids[0], &b"late"[..]),
        Err(ringgate::gate::embedded::SendError::Stopped)
    ));
    for mut c in clients {
        assert!(closed_by_gate(|b| c.read(b)));
    }
}

#[test]
fn netstring_framing_in_plain_mode() {
    let h = harness(
        builder()
            .scp(false)
            .framing(ringgate::proto::frame::FrameFormat::Netstring)
            .max_frame(100),
        true,
    );
    let mut s = plain(h.addr());
    s.write_all(b"5:hello,0:,3:a").unwrap();
    s.write_all(b"bc,").unwrap();
    let mut back = [0u8; 17];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"5:hello,0:,3:abc,");
    s.write_all(b"101:").unwrap(); // over the limit
    let ev = h.wait_event("closed", |e| matches!(e, Event::Closed { .. }));
    assert!(matches!(
        ev,
        Event::Closed {
            reason: CloseReason::ProtocolError,
            ..
        }
    ));
    assert!(closed_by_gate(|b| s.read(b)));
    h.finish();
}

/// A stable-connection session is served by the workers like an SCP one:
/// frames both ways, before and after a resume.
#[test]
fn stable_connection_sessions_reach_the_workers() {
    use ringgate::client::StableClient;
    let b = builder().engine(|c| {
        c.doors = vec![(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ringgate::engine::Door::Stable,
        )]
    });
    let h = harness(b, true);
    let addr = h.handle.door_addrs()[0];
    let mut c = StableClient::connect(addr, ClientOptions::default()).unwrap();
    let read_frame = |c: &mut StableClient| {
        let mut head = [0u8; 2];
        c.read_exact(&mut head).expect("frame header");
        let mut body = vec![0u8; u16::from_be_bytes(head) as usize];
        c.read_exact(&mut body).expect("frame body");
        body
    };
    c.write_all(&frame(b"hello")).unwrap();
    assert_eq!(read_frame(&mut c), b"hello");
    c.write_all(&frame(b"again")).unwrap();
    assert_eq!(read_frame(&mut c), b"again");
    c.abort();
    c.resume().unwrap();
    c.write_all(&frame(b"back")).unwrap();
    assert_eq!(read_frame(&mut c), b"back");
    h.finish();
}

/// The workers' queues end once the shards stop, while the application
/// still holds the gate's handle: it may join its workers before the gate
/// (the examples do), which hung while the gate kept the queues' senders.
#[test]
fn worker_queues_end_after_shutdown_while_the_handle_is_held() {
    let (handle, receivers) = builder().workers(3).start().unwrap();
    let c = ScpClient::connect(handle.local_addr(), ClientOptions::default()).unwrap();
    handle.shutdown();
    for rx in &receivers {
        let ended = wait_until(Duration::from_secs(10), || {
            matches!(
                rx.recv_timeout(Duration::from_millis(50)),
                Err(ringgate::gate::embedded::RecvError::Ended)
            )
        });
        assert!(ended, "worker {} still waits", rx.index());
    }
    drop(c);
    handle.join();
}
