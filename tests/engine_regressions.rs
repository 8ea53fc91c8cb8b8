//! Engine behaviour that once went wrong: resumes handed between shards with
//! bytes pipelined behind them, command floods in embedded mode, memory held
//! for a stalled relay direction, and log floods at a full descriptor table.

mod common;

use common::*;
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::gate::Backend;
use ringgate::gate::embedded::{Builder, Event};
use ringgate::proto::client::{ClientEvent, ClientHandshake};
use ringgate::proto::session::Session;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest any single wait in these tests may take: a liveness cap, far
/// above what a working gate needs on loopback.
const CAP: Duration = Duration::from_secs(30);

// --- A raw SCP client that can pipeline bytes behind its resume record ---

/// A session opened with the crate's handshake code, driven by hand so that
/// a resume and the bytes after it can go out in one write.
struct RawClient {
    addr: SocketAddr,
    session: Session,
}

/// Reads one handshake answer; returns its outcome and the bytes after it.
fn read_answer(s: &mut TcpStream, hs: &mut ClientHandshake) -> (ClientEvent, Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return (ClientEvent::NeedMore, Vec::new()),
            Ok(n) => n,
            Err(e) => panic!("reading the handshake answer: {e}"),
        };
        let used = hs.recv(&buf[..n]);
        match hs.poll() {
            ClientEvent::NeedMore => continue,
            ev => return (ev, buf[used..n].to_vec()),
        }
    }
}

/// Why a resume with pipelined bytes did not give back every byte.
#[derive(Debug)]
enum Pipelined {
    /// The gate closed the connection without answering the resume.
    NoAnswer,
    /// The gate answered something other than 200.
    Refused(ClientEvent),
    /// The echo stopped short (closed or stalled) after this many bytes.
    Short(usize),
    /// The echo differs from what was sent, first at this offset.
    Garbled(usize),
}

impl std::fmt::Display for Pipelined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pipelined::NoAnswer => f.write_str("closed without an answer to the resume"),
            Pipelined::Refused(ev) => write!(f, "refused: {ev:?}"),
            Pipelined::Short(n) => write!(f, "short: the echo stopped after {n} bytes"),
            Pipelined::Garbled(at) => write!(f, "garbled: the echo differs from byte {at} on"),
        }
    }
}

impl RawClient {
    fn open(addr: SocketAddr) -> RawClient {
        let mut s = raw(addr);
        let mut hs = ClientHandshake::new_session(rand::random(), None, None);
        s.write_all(&hs.take_output()).unwrap();
        let (ClientEvent::Established { id, secret }, _) = read_answer(&mut s, &mut hs) else {
            panic!("new session refused");
        };
        // The first connection just goes away; the session waits for a resume.
        drop(s);
        RawClient {
            addr,
            session: Session::new(id, secret, 1 << 20),
        }
    }

    fn id(&self) -> u32 {
        self.session.id()
    }

    /// Resumes on a new connection with the resume record and `plain`
    /// (encrypted) in one write, then reads the echo of `plain` back.
    fn resume_pipelined(&mut self, plain: &[u8], read_limit: Duration) -> Result<(), Pipelined> {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(read_limit)).unwrap();
        let req = self.session.resume_request();
        let mut hs =
            ClientHandshake::resume(req.id, req.index, req.received, self.session.secret());
        let mut out = hs.take_output();
        let sent_before = self.session.sent();
        assert_eq!(self.session.encrypt(plain), plain.len(), "window has room");
        let w = self.session.window();
        for piece in w.slices_from(w.flushed()) {
            out.extend_from_slice(piece);
        }
        self.session.window_mut().mark_sent(plain.len());
        s.write_all(&out).unwrap();

        let mut back = match read_answer(&mut s, &mut hs) {
            (ClientEvent::Resumed { server_received }, rest) => {
                // Nothing was in flight before: the gate had everything.
                assert_eq!(u64::from(server_received), sent_before);
                rest
            }
            (ClientEvent::NeedMore, _) => return Err(Pipelined::NoAnswer),
            (ev, _) => return Err(Pipelined::Refused(ev)),
        };
        let mut buf = [0u8; 4096];
        while back.len() < plain.len() {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => back.extend_from_slice(&buf[..n]),
            }
        }
        self.session.decrypt(&mut back);
        if let Some(at) = back.iter().zip(plain).position(|(a, b)| a != b) {
            return Err(Pipelined::Garbled(at));
        }
        if back.len() < plain.len() {
            return Err(Pipelined::Short(back.len()));
        }
        Ok(())
    }
}

/// The shard that owns a session id on a gate of two shards.
fn owner(id: u32) -> u32 {
    id & 1
}

// --- 1. Bytes pipelined behind a resume that is handed over ---

/// A receive that ran out of buffers (ENOBUFS) is re-armed after the batch;
/// if the connection is being handed over meanwhile, that receive on the
/// old shard swallows bytes that belong to the new one.
#[test]
fn pipelined_bytes_survive_a_hand_over_with_scarce_receive_buffers() {
    let mut cfg = config(Backend::Echo);
    cfg.shards = 2;
    cfg.recv_buffers = 1;
    cfg.recv_buffer_size = 512;
    let gate = start(cfg);
    let addr = gate.local_addr();
    // Below MAX_HANDSHAKE_BYTES with the record, so that no byte budget can
    // refuse it: only lost bytes can make a round fail.
    let len = 3000;
    let mut handed_over = 0;
    for round in 0..200 {
        let mut c = RawClient::open(addr);
        let before = gate.stats().handoffs;
        let result = c.resume_pipelined(&payload(round, len), Duration::from_secs(5));
        let handed = gate.stats().handoffs > before;
        handed_over += usize::from(handed);
        if let Err(e) = result {
            panic!(
                "round {round}: session {} (owner shard {}), resume {}: \
                 {len} bytes pipelined behind the resume record: {e}",
                c.id(),
                owner(c.id()),
                if handed {
                    "handed over to its owner"
                } else {
                    "served where it landed"
                },
            );
        }
    }
    assert!(
        handed_over > 0,
        "no resume landed on the other shard: {:?}",
        gate.stats()
    );
    assert_serving(addr);
}

// --- 2. The byte budget of a hand-over ---

/// Bytes read after the resume record count against one budget on the
/// shard that hands a connection over (2 × 4096) and a smaller one on the
/// shard that receives it (4096): a resume the owner serves must not be
/// closed just because it landed on the other shard.
#[test]
fn a_resume_with_6000_pipelined_bytes_is_served_wherever_it_lands() {
    let mut cfg = config(Backend::Echo);
    cfg.shards = 2;
    cfg.recv_buffers = 64;
    // The record fits the first receive, so the owner takes what follows as
    // session bytes (and the shard it lands on reads all of it before the
    // hand-over).
    cfg.recv_buffer_size = 1024;
    let gate = start(cfg);
    let addr = gate.local_addr();
    let len = 6000;
    let (mut served_here, mut served_handed) = (0, 0);
    let mut failures = Vec::new();
    for round in 0..40 {
        let mut c = RawClient::open(addr);
        let before = gate.stats().handoffs;
        let result = c.resume_pipelined(&payload(round, len), Duration::from_secs(5));
        let handed = gate.stats().handoffs > before;
        match (result, handed) {
            (Ok(()), false) => served_here += 1,
            (Ok(()), true) => served_handed += 1,
            (Err(e), handed) => failures.push((round, handed, e.to_string())),
        }
    }
    let here_failed: Vec<_> = failures.iter().filter(|f| !f.1).collect();
    assert!(
        here_failed.is_empty(),
        "the owning shard itself refused {len} pipelined bytes: {here_failed:?}"
    );
    assert!(
        failures.is_empty(),
        "a resume with {len} bytes pipelined was served {served_here} times where it \
         landed and {served_handed} times after a hand-over, but failed {} times after a \
         hand-over; first (round, handed over, outcome): {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        served_here > 0 && served_handed > 0,
        "both paths ran: {served_here} served where they landed, {served_handed} handed over"
    );
    assert_serving(addr);
}

// --- 3. Embedded mode under a flood of commands ---

/// While commands keep arriving, the shard must still reap completions:
/// a client's frames get their echoes even when another thread calls
/// `send_many` in a tight loop.
#[test]
fn embedded_io_is_served_during_a_send_many_flood() {
    // Sessions named by each command. The default command queue (4096) then
    // holds far more work than the producer needs to refill it, so it never
    // runs dry, while one queue's worth stays a fraction of a second even in
    // an unoptimised build.
    const IDS: u32 = 100;
    let (handle, mut receivers) = Builder::new(SocketAddr::from(([127, 0, 0, 1], 0)))
        .shards(1)
        .workers(1)
        .engine(|c| {
            c.recv_buffers = 64;
            c.pin_threads = false;
        })
        .start()
        .expect("gate starts");
    let rx = receivers.pop().unwrap();
    let echo = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            while let Some(ev) = rx.recv() {
                if let Event::Frame { session, data } = ev {
                    let _ = handle.send(session, data);
                }
            }
        })
    };
    let frame = |n: usize| {
        let body = payload(n, 100);
        let mut f = (body.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    };
    // The client waits longer than the flood may last: what decides is
    // whether its round trips finish while the flood still runs.
    let opts = ClientOptions {
        timeout: Some(CAP + Duration::from_secs(10)),
        ..Default::default()
    };
    let mut c = ScpClient::connect(handle.local_addr(), opts).unwrap();
    // One round trip before the flood: the echo path works.
    c.write_all(&frame(0)).unwrap();
    let mut back = vec![0u8; frame(0).len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, frame(0));

    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (handle, done) = (handle.clone(), done.clone());
        std::thread::spawn(move || {
            // Ids of no live session: each one is still looked up.
            let ids: Vec<u32> = (1_000_000..1_000_000 + IDS).collect();
            let started = Instant::now();
            let mut sent = 0u64;
            while !done.load(Ordering::Relaxed) {
                if started.elapsed() >= CAP {
                    return (sent, true);
                }
                if handle.send_many(&ids, &b"flood"[..]).is_err() {
                    break;
                }
                sent += 1;
            }
            (sent, false)
        })
    };
    let client = std::thread::spawn(move || {
        (1..=5).try_for_each(|n| {
            let f = frame(n);
            c.write_all(&f)?;
            let mut back = vec![0u8; f.len()];
            c.read_exact(&mut back)?;
            assert_eq!(back, f, "echo of frame {n}");
            Ok::<_, std::io::Error>(())
        })
    });
    // Bounded: the producer stops by itself at the cap, and then the
    // client's frames get through (or its reads time out).
    while !client.is_finished() && !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::Relaxed);
    let (floods, capped) = producer.join().unwrap();
    let result = client.join().unwrap();
    handle.shutdown();
    handle.join();
    let _ = echo.join();
    assert!(
        !capped,
        "the client's 5 round trips did not finish within {CAP:?} while send_many flooded \
         the shard ({floods} commands of {IDS} ids); once the flood stopped: {result:?}"
    );
    if let Err(e) = result {
        panic!("the client's round trips failed during the flood: {e}");
    }
}

// --- The ringgate binary, for black-box checks ---

/// A `ringgate serve` child process, killed when dropped, with its stderr
/// collected line by line.
struct GateProcess {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl GateProcess {
    fn serve(config_toml: &str, args: &[&str]) -> GateProcess {
        let dir = TempDir::new();
        let file = dir.0.join("ringgate.toml");
        std::fs::write(&file, config_toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary runs");
        // Drained in a thread: a full pipe would block the gate's logging.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let (lines, pipe) = (stderr.clone(), child.stderr.take().unwrap());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "startup line names the address: {line:?}; stderr: {:?}",
                stderr.lock().unwrap()
            );
        };
        GateProcess {
            child,
            addr,
            stderr,
            _dir: dir,
        }
    }

    /// Resident memory of the gate process, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for GateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringgate-regress-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An upstream that writes to every connection as fast as it can and counts
/// the bytes the kernel took.
struct FloodingUpstream {
    addr: SocketAddr,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FloodingUpstream {
    fn start() -> FloodingUpstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, st) = (written.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (w, st) = (w.clone(), st.clone());
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    // A stalled write wakes up now and then to see the stop flag.
                    s.set_write_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let chunk = vec![0x5au8; 64 * 1024];
                    while !st.load(Ordering::Relaxed) {
                        match s.write(&chunk) {
                            Ok(0) => return,
                            Ok(n) => {
                                w.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        FloodingUpstream {
            addr,
            written,
            stop,
        }
    }
}

impl Drop for FloodingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits (at most `CAP`) until `sample` has not changed by more than `tolerance`
/// for `quiet`; returns the last value.
fn settle(quiet: Duration, tolerance: u64, mut sample: impl FnMut() -> u64) -> u64 {
    let end = Instant::now() + CAP;
    let mut last = sample();
    let mut since = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample();
        if now.abs_diff(last) > tolerance {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
    panic!("did not settle within {CAP:?} (last value {last})");
}

// --- 4. What the gate holds for a stalled direction ---

const RELAY_BUFFER: u64 = 4096;
const REUSE_BUFFER: u64 = 65536;
const RECV_BUFFER_SIZE: u64 = 16384;

/// A client that never reads while its upstream floods: the gate may hold
/// the replay window, one relay buffer and what two receives bring in,
/// not whatever the upstream manages to push.
#[test]
fn a_stalled_client_costs_the_gate_at_most_its_buffers() {
    let up = FloodingUpstream::start();
    let upstream = format!("a={}", up.addr);
    // Few receive buffers, so that the pool itself (touched as it is used)
    // stays far below the per-session allowance summed over the sessions.
    let toml = format!(
        "relay_buffer = {RELAY_BUFFER}\nreuse_buffer = {REUSE_BUFFER}\n\
         recv_buffer_size = {RECV_BUFFER_SIZE}\nrecv_buffers = 64\n"
    );
    let gate = GateProcess::serve(&toml, &["--shards", "1", "--upstream", &upstream]);
    // One stalled session first, so that the allocator, the shard and the
    // receive-buffer pool are warm before the baseline is taken.
    let mut warm = ScpClient::connect(gate.addr, ClientOptions::default()).unwrap();
    let mut buf = [0u8; 1024];
    warm.read_exact(&mut buf).unwrap();
    settle(Duration::from_secs(1), 0, || {
        up.written.load(Ordering::Relaxed)
    });
    let before = settle(Duration::from_millis(500), 64 * 1024, || gate.rss());

    let sessions = 40u64;
    let clients: Vec<ScpClient> = (0..sessions)
        .map(|_| ScpClient::connect(gate.addr, ClientOptions::default()).unwrap())
        .collect();
    // The upstream's writes stall once every buffer on the way is full...
    settle(Duration::from_secs(1), 0, || {
        up.written.load(Ordering::Relaxed)
    });
    // ...and then the gate's memory stops growing.
    let after = settle(Duration::from_secs(1), 64 * 1024, || gate.rss());
    let written = up.written.load(Ordering::Relaxed);

    // Bookkeeping per session: connection and session entries, cipher state,
    // an upstream link, allocator rounding. Well under 16 KiB.
    let slack = 16 * 1024;
    let allowed = REUSE_BUFFER + RELAY_BUFFER + 2 * RECV_BUFFER_SIZE + slack;
    let per_session = after.saturating_sub(before) / sessions;
    assert!(
        per_session <= allowed,
        "with relay_buffer = {RELAY_BUFFER} the gate grew by {per_session} bytes per stalled \
         session (allowed {allowed}): RSS {before} -> {after} for {sessions} sessions whose \
         upstreams wrote {written} bytes in all"
    );
    drop((warm, clients));
}

// --- 5. Log lines at a full descriptor table ---

/// An upstream that echoes every connection.
fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Opens `n` connections first and only then sends their new-session
/// records, so that many handshakes complete while their clients already
/// hold table slots. Gives each connection its session, if it got one.
fn handshake_crowd(addr: SocketAddr, n: usize) -> Vec<(TcpStream, Option<Session>)> {
    let mut crowd: Vec<(TcpStream, ClientHandshake)> = (0..n)
        .map(|_| {
            let s = raw(addr);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let hs = ClientHandshake::new_session(rand::random(), None, None);
            (s, hs)
        })
        .collect();
    for (s, hs) in &mut crowd {
        s.write_all(&hs.take_output()).unwrap();
    }
    crowd
        .into_iter()
        .map(|(mut s, mut hs)| {
            let mut buf = [0u8; 1024];
            let session = loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                hs.recv(&buf[..n]);
                match hs.poll() {
                    ClientEvent::NeedMore => continue,
                    ClientEvent::Established { id, secret } => {
                        break Some(Session::new(id, secret, 65536));
                    }
                    _ => break None,
                }
            };
            (s, session)
        })
        .collect()
}

/// Whether the session still relays: a byte goes through the upstream's echo.
fn still_relays(s: &mut TcpStream, session: &mut Session) -> bool {
    session.encrypt(b"x");
    let w = session.window();
    let out: Vec<u8> = w.slices_from(w.flushed()).flatten().copied().collect();
    session.window_mut().mark_sent(out.len());
    let mut b = [0u8; 1];
    s.write_all(&out).is_ok() && matches!(s.read(&mut b), Ok(1))
}

/// When the shard's table has no slot for an upstream socket, every session
/// that needs one fails the same way: one warning now and then says so,
/// naming the shard's table (the system has descriptors to spare).
#[test]
fn a_full_descriptor_table_is_logged_now_and_then_not_per_session() {
    let upstream = format!("a={}", echo_upstream());
    // 128 slots, of which 32 are kept back from accepting: 96 clients are
    // accepted, but only 32 of them can also get an upstream socket.
    let toml = "direct_table = 128\nrecv_buffers = 64\n";
    let gate = GateProcess::serve(
        toml,
        &[
            "--shards",
            "1",
            "--upstream",
            &upstream,
            "--reuse-time",
            "1s",
        ],
    );
    let addr = gate.addr;
    let mut crowd = handshake_crowd(addr, 120);
    let opened = crowd.iter().filter(|c| c.1.is_some()).count();
    let relaying = crowd
        .iter_mut()
        .filter_map(|(s, session)| Some(still_relays(s, session.as_mut()?)))
        .filter(|&ok| ok)
        .count();
    let refused = opened - relaying;
    drop(crowd);
    std::thread::sleep(Duration::from_millis(300));

    let warnings: Vec<String> = gate
        .stderr_lines()
        .into_iter()
        .filter(|l| {
            l.contains("WARN")
                && ["upstream", "descriptor table", "open files"]
                    .iter()
                    .any(|w| l.contains(w))
        })
        .collect();
    assert!(
        refused > 0,
        "the table filled up: {opened} sessions opened, all {relaying} relaying"
    );
    assert!(
        !warnings.is_empty(),
        "the full table is logged at least once"
    );
    assert!(
        warnings.len() <= 3,
        "{} warnings about the full table for {refused} sessions that got no upstream \
         socket (one per session, not now and then); first: {:?}",
        warnings.len(),
        warnings
            .iter()
            .find(|l| l.contains("upstream"))
            .or(warnings.first())
    );
    assert!(
        warnings.iter().all(|l| !l.contains("in system")),
        "the warning blames the system, not the shard's descriptor table: {:?}",
        warnings.first()
    );
    // Once the crowd is gone (and its sessions' reuse time ran out), sessions
    // get their upstream again.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let Ok(mut c) = ScpClient::connect(addr, ClientOptions::default()) else {
                return false;
            };
            c.write_all(b"still there").is_ok() && {
                let mut back = [0u8; 11];
                c.read_exact(&mut back).is_ok() && &back == b"still there"
            }
        }),
        "the gate serves again after the crowd left"
    );
}

/// A resume handed to a shard whose descriptor table is full fails (the
/// client is answered 501); the message that went ahead of it to that
/// shard's inbox must not stay there for good.
#[test]
fn a_failed_hand_over_leaves_nothing_parked() {
    use ringgate::gate::{Announce, Host, Proxy, UpstreamNet, Upstreams};
    let up = echo_upstream();
    let mut cfg = config(Backend::Proxy(Arc::new(Proxy {
        upstreams: Upstreams::new(vec![Host {
            name: "a".into(),
            addr: up,
            weight: 1,
        }]),
        net: UpstreamNet::Tcp,
        announce: Announce::None,
        connect_timeout: Duration::from_secs(5),
        resolv: None,
    })));
    // 64 slots a shard, 32 kept back from accepting: a shard's table is full
    // once 32 sessions hold a client and an upstream socket each.
    cfg.direct_table = 64;
    cfg.recv_buffers = 64;
    cfg.handshake_timeout = Duration::from_secs(1);
    let gate = start(cfg);
    let addr = gate.local_addr();
    let control = gate.control();
    let table_full = |shard: usize| {
        let s = &control.shard_stats()[shard];
        s.table_size > 0 && s.table_used >= s.table_size
    };

    // Crowd both shards until shard 1's table is full.
    let mut crowd: Vec<(TcpStream, Session)> = Vec::new();
    for _ in 0..200 {
        if table_full(1) {
            break;
        }
        let Some(c) = quick_session(addr) else {
            continue;
        };
        crowd.push(c);
    }
    assert!(
        wait_until(CAP, || table_full(1)),
        "shard 1's table filled up"
    );
    // Free shard 0: kick its sessions (their upstream sockets close too).
    for (_, s) in crowd.iter().filter(|(_, s)| s.id() & 1 == 0) {
        control.kick(s.id());
    }
    let mut victim = crowd
        .iter()
        .find(|(_, s)| s.id() & 1 == 1)
        .map(|(_, s)| Session::new(s.id(), s.secret(), 65536))
        .expect("a session owned by shard 1");

    // Resume it until a connection lands on shard 0, which hands it over
    // to shard 1 and fails.
    let mut refused = false;
    for _ in 0..40 {
        let Ok(mut s) = TcpStream::connect(addr) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let req = victim.resume_request();
        let mut rec = Vec::new();
        ringgate::proto::message::encode_record(&req.encode(), &mut rec);
        if s.write_all(&rec).is_err() {
            continue;
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        if answer.ends_with(b"501") {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a resume landed on shard 0 and its hand-over failed with 501"
    );
    let parked = || control.shard_stats()[1].handoffs_parked;
    assert!(
        wait_until(CAP, || parked() > 0),
        "the hand-over's message reached shard 1"
    );
    assert!(
        wait_until(CAP, || parked() == 0),
        "the failed hand-over's message was dropped from shard 1's inbox: {} parked",
        parked()
    );
    drop(crowd);
}

/// One new session over a raw socket, with a short wait for the answer (a
/// connection left in the backlog of a full shard gets none).
fn quick_session(addr: SocketAddr) -> Option<(TcpStream, Session)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut hs = ClientHandshake::new_session(rand::random(), None, None);
    s.write_all(&hs.take_output()).ok()?;
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        hs.recv(&buf[..n]);
        match hs.poll() {
            ClientEvent::NeedMore => continue,
            ClientEvent::Established { id, secret } => {
                return Some((s, Session::new(id, secret, 65536)));
            }
            _ => return None,
        }
    }
}
