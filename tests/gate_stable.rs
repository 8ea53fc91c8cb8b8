//! The stable-connection door over loopback: new sessions, resumes at and
//! around the 256-byte boundaries and across the 64 KiB window, resumes
//! that match nothing, colliding fingerprints, and SCP served beside it.

mod common;

use common::{config, payload, raw, read_to_close, start};
use ringgate::client::{ClientOptions, ResumeError, StableClient};
use ringgate::engine::{Door, Gate};
use ringgate::gate::Backend;
use ringgate::proto::stable::{self, ClientStep, Role, StableSession};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

fn stable_gate(backend: Backend) -> (Gate, SocketAddr) {
    let mut cfg = config(backend);
    cfg.doors = vec![(SocketAddr::from(([127, 0, 0, 1], 0)), Door::Stable)];
    let gate = start(cfg);
    let addr = gate.door_addrs()[0];
    (gate, addr)
}

fn read_n(c: &mut StableClient, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    c.read_exact(&mut b).unwrap();
    b
}

#[test]
fn echo_through_the_stable_door() {
    let (gate, addr) = stable_gate(Backend::Echo);
    let mut c = StableClient::connect(addr, ClientOptions::default()).unwrap();
    for n in 0..20 {
        let msg = payload(n, 1 + n * 97);
        c.write_all(&msg).unwrap();
        assert_eq!(read_n(&mut c, msg.len()), msg, "message {n}");
    }
    assert_eq!(gate.stats().sessions_opened, 1);
    // SCP is served beside it on the primary listener.
    common::assert_serving(gate.local_addr());
}

/// Writes `total` bytes, reads `first` of the echo, loses the connection,
/// resumes and reads the rest: every byte exactly once.
fn resume_after(addr: SocketAddr, before: usize, first: usize, total: usize) {
    let mut c = StableClient::connect(addr, ClientOptions::default()).unwrap();
    if before > 0 {
        let warm = payload(999, before);
        for chunk in warm.chunks(16384) {
            c.write_all(chunk).unwrap();
            assert_eq!(read_n(&mut c, chunk.len()), chunk);
        }
    }
    let msg = payload(first, total);
    c.write_all(&msg).unwrap();
    let head = read_n(&mut c, first);
    assert_eq!(head, msg[..first]);
    c.abort();
    c.resume()
        .unwrap_or_else(|e| panic!("resume after {first} bytes: {e}"));
    let tail = read_n(&mut c, total - first);
    assert_eq!(tail, msg[first..], "after {first} bytes");
    // The session goes on.
    let more = payload(7, 300);
    c.write_all(&more).unwrap();
    assert_eq!(read_n(&mut c, more.len()), more);
}

#[test]
fn resume_around_the_fingerprint_boundaries() {
    let (gate, addr) = stable_gate(Backend::Echo);
    for first in [1, 255, 256, 257, 511, 512, 513, 4000] {
        resume_after(addr, 0, first, 5000);
    }
    assert_eq!(gate.stats().sessions_resumed, 8);
    assert_eq!(gate.stats().resumes_failed, 0);
}

#[test]
fn resume_near_the_window_edge() {
    let (gate, addr) = stable_gate(Backend::Echo);
    // The whole window outstanding, fresh and after 200 KB went through
    // (the fingerprints of the first boundaries are gone by then).
    for before in [0, 200_000] {
        for first in [1, 256, 300, 65536 - 256, 65535] {
            resume_after(addr, before, first, 65536);
        }
    }
    assert_eq!(gate.stats().resumes_failed, 0);
}

#[test]
fn a_client_that_received_nothing_starts_anew() {
    let (gate, addr) = stable_gate(Backend::Echo);
    let mut c = StableClient::connect(addr, ClientOptions::default()).unwrap();
    c.write_lost(b"never arrives");
    c.abort();
    // Its request would be a new-session header: the dialect cannot resume.
    assert!(matches!(c.resume(), Err(ResumeError::Protocol(_))));
    let mut d = StableClient::connect(addr, ClientOptions::default()).unwrap();
    d.write_all(b"fresh").unwrap();
    assert_eq!(read_n(&mut d, 5), b"fresh");
    // The first session may or may not have opened: its reset can overtake
    // its proof of the secret.
    assert!(gate.stats().sessions_opened >= 1);
}

#[test]
fn a_resume_that_matches_nothing_is_closed() {
    let (gate, addr) = stable_gate(Backend::Echo);
    // A live session, so the index is not empty.
    let mut c = StableClient::connect(addr, ClientOptions::default()).unwrap();
    c.write_all(&payload(1, 1000)).unwrap();
    read_n(&mut c, 1000);
    let before = gate.stats().resumes_failed;
    for (count, fp) in [(1u64, 0u32), (1000, 0xdead_beef), (u64::MAX, 7)] {
        let mut s = raw(addr);
        let mut req = count.to_le_bytes().to_vec();
        req.extend_from_slice(&fp.to_le_bytes());
        s.write_all(&req).unwrap();
        assert!(read_to_close(&mut s).is_empty(), "no answer, a close");
    }
    assert_eq!(gate.stats().resumes_failed, before + 3);
    // Garbage is closed the same way, and the gate still serves.
    let mut s = raw(addr);
    s.write_all(&[0u8; 16]).unwrap();
    assert!(read_to_close(&mut s).is_empty());
    c.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut c, 10), b"still here");
}

/// Another client naming a session's count and fingerprint (what a
/// collision of two sessions' fingerprints looks like to the gate) gets
/// an answer but, unable to prove that session's secret, is closed without
/// a byte of it; the owner then resumes with everything.
#[test]
fn colliding_fingerprints_do_not_share_bytes() {
    let (gate, addr) = stable_gate(Backend::Echo);
    let mut a = StableClient::connect(addr, ClientOptions::default()).unwrap();
    let msg = payload(11, 3000);
    a.write_all(&msg).unwrap();
    assert_eq!(read_n(&mut a, 700), msg[..700]);
    a.abort();
    let stolen = a.session().resume_request().unwrap();

    let mut b = StableClient::connect(addr, ClientOptions::default()).unwrap();
    b.write_all(&payload(12, 5000)).unwrap();
    read_n(&mut b, 5000);
    b.abort();
    // The gate closes once it has read the wrong proof; writing the replay
    // after it may already fail.
    match b.resume_with_request(stolen) {
        Ok(()) | Err(ResumeError::Io(_)) => {}
        Err(e) => panic!("{e}"),
    }
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match b.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
    }
    assert!(rest.is_empty(), "not a byte of the other session");
    assert!(gate.stats().resumes_failed >= 1);

    a.resume().unwrap();
    assert_eq!(read_n(&mut a, 2300), msg[700..]);
}

/// Takes what `s` has not sent yet, as a send would.
fn unsent(s: &mut StableSession) -> Vec<u8> {
    let out: Vec<u8> = s.window().unsent_slices().flatten().copied().collect();
    s.window_mut().mark_sent(out.len());
    out
}

fn decrypt_n(s: &mut StableSession, stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    stream.read_exact(&mut b).unwrap();
    s.decrypt(&mut b);
    b
}

/// The published client (`connectionclient.c`) queues what it is given
/// during a handshake and writes it in one piece with its proof: on a new
/// session the proof and the first data, on a resume the proof, the replay
/// and new data. The gate must take each piece after the proof as stream.
#[test]
fn proof_replay_and_data_in_one_write_as_the_published_client_sends() {
    let (gate, addr) = stable_gate(Backend::Echo);
    let (mut hs, req) = stable::ClientHandshake::new_session(rand::random());
    let mut s = raw(addr);
    s.write_all(&req).unwrap();
    let mut answer = [0u8; stable::HEADER];
    s.read_exact(&mut answer).unwrap();
    hs.recv(&answer);
    let ClientStep::Established { secret, auth } = hs.poll() else {
        panic!("{:?}", hs.poll())
    };
    let mut c = StableSession::new(Role::Client, secret, stable::CLIENT_WINDOW);
    let first = payload(1, 300);
    c.encrypt(&first);
    s.write_all(&[&auth[..], &unsent(&mut c)].concat()).unwrap();
    assert_eq!(decrypt_n(&mut c, &mut s, 300), first);

    // 200 bytes lost on the way up, then the connection.
    let lost = payload(2, 200);
    c.encrypt(&lost);
    unsent(&mut c);
    drop(s);
    let mut s = raw(addr);
    s.write_all(&c.resume_request().unwrap()).unwrap();
    s.read_exact(&mut answer).unwrap();
    let mut hs = stable::ClientHandshake::resume();
    hs.recv(&answer);
    let ClientStep::Answered {
        server_received,
        challenge,
    } = hs.poll()
    else {
        panic!("{:?}", hs.poll())
    };
    assert_eq!(server_received, 300);
    let auth = c.resumed(server_received, challenge).unwrap();
    let more = payload(3, 100);
    c.encrypt(&more);
    s.write_all(&[&auth[..], &unsent(&mut c)].concat()).unwrap();
    assert_eq!(decrypt_n(&mut c, &mut s, 300), [lost, more].concat());
    assert_eq!(gate.stats().sessions_resumed, 1);
}
