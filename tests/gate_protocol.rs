//! What the gate answers to every kind of resume and to bad handshakes, and
//! that it keeps serving afterwards.

mod common;

use common::*;
use ringgate::client::{ClientOptions, ResumeError, ScpClient};
use ringgate::gate::Backend;
use ringgate::proto::message::ReuseConnReq;
use std::io::Write;
use std::time::Duration;

fn resume_raw(addr: std::net::SocketAddr, req: &ReuseConnReq) -> Vec<u8> {
    let mut s = raw(addr);
    send_record(&mut s, &req.encode());
    read_to_close(&mut s)
}

#[test]
fn resume_lands_on_another_shard() {
    let gate = start(config(Backend::Echo));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    // The kernel spreads connections over the two shards' listeners by
    // address hash; 40 resumes miss the other shard with probability 2^-40.
    for round in 0..40 {
        let msg = payload(round, 100);
        c.write_all(&msg).unwrap();
        c.abort();
        c.resume().unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    let stats = gate.stats();
    assert_eq!(stats.sessions_resumed, 40);
    assert!(
        stats.handoffs > 0,
        "some resume was handed to the owning shard: {stats:?}"
    );
    assert_serving(gate.local_addr());
}

#[test]
fn resume_takes_over_a_live_connection() {
    let gate = start(config(Backend::Echo));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    c.write_all(b"before").unwrap();
    let mut back = [0u8; 6];
    c.read_exact(&mut back).unwrap();
    let old = c.stream().try_clone().unwrap();
    c.resume().unwrap(); // the old connection is still open
    c.write_all(b"after").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after");
    // The gate closed the connection it replaced.
    let mut old = old;
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(read_to_close(&mut old).is_empty());
    assert_serving(gate.local_addr());
}

#[test]
fn resume_errors_401_403_404_406() {
    let gate = start(config(Backend::Echo));
    let addr = gate.local_addr();
    let mut c = ScpClient::connect(addr, ClientOptions::default()).unwrap();
    c.write_all(b"0123456789").unwrap();
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    let (id, secret) = (c.id(), c.session().secret());

    // 401: a sum made with the wrong secret.
    let bad = ReuseConnReq::signed(id, 1, 10, secret ^ 1);
    assert_eq!(record_content(&resume_raw(addr, &bad)), b"0\n401");
    // 404: no such session.
    let other = if id == 1 { 2 } else { id - 1 };
    let unknown = ReuseConnReq::signed(other.max(1) ^ 0x4000_0000, 1, 0, secret);
    assert_eq!(record_content(&resume_raw(addr, &unknown)), b"0\n404");
    // A good resume, then 403 for an index that is not above it.
    c.abort();
    c.resume().unwrap();
    assert!(matches!(c.resume_with_index(1), Ok(403)));
    // 406: claims to have received more than the gate ever sent.
    let ahead = ReuseConnReq::signed(id, 5, 11, secret);
    assert_eq!(record_content(&resume_raw(addr, &ahead)), b"0\n406");
    // A 406 ends the session: it can never be repaired.
    assert!(matches!(c.resume(), Err(ResumeError::Refused(404))));
    assert_serving(addr);
}

#[test]
fn malformed_resume_gets_400_and_malformed_new_just_closes() {
    let gate = start(config(Backend::Echo));
    let addr = gate.local_addr();
    let mut s = raw(addr);
    send_record(&mut s, b"12\nnot-a-number\n0\nAAAAAAAAAAA=");
    assert_eq!(record_content(&read_to_close(&mut s)), b"0\n400");

    let mut s = raw(addr);
    send_record(&mut s, b"0\n!!!notbase64");
    assert!(read_to_close(&mut s).is_empty());
    assert_serving(addr);
}

#[test]
fn zero_and_one_public_keys_are_refused_before_any_answer() {
    let gate = start(config(Backend::Echo));
    let addr = gate.local_addr();
    for key in [0u64, 1, ringgate::proto::dh64::P] {
        let mut s = raw(addr);
        let b64 = base64_of(key);
        send_record(&mut s, format!("0\n{b64}").as_bytes());
        assert!(
            read_to_close(&mut s).is_empty(),
            "key {key}: closed without an answer"
        );
    }
    assert_eq!(gate.stats().sessions_opened, 0);
    assert_serving(addr);
}

fn base64_of(key: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key.to_le_bytes())
}

#[test]
fn garbage_oversize_and_cut_short_records_close_cleanly() {
    let mut cfg = config(Backend::Echo);
    cfg.handshake_timeout = Duration::from_millis(300);
    let gate = start(cfg);
    let addr = gate.local_addr();

    // Garbage: a length prefix announcing more than 512 bytes.
    let mut s = raw(addr);
    s.write_all(&[0xff, 0xff, b'x', b'y']).unwrap();
    assert!(read_to_close(&mut s).is_empty());

    // An oversize record of 600 bytes, sent in full.
    let mut s = raw(addr);
    let mut rec = vec![0x02, 0x58];
    rec.extend(std::iter::repeat_n(b'7', 600));
    let _ = s.write_all(&rec);
    assert!(read_to_close(&mut s).is_empty());

    // Cut short: half a record, then the client goes away.
    let mut s = raw(addr);
    s.write_all(&[0x00, 0x20, b'0', b'\n']).unwrap();
    drop(s);

    // Stalls mid-record past the handshake timeout: the gate closes it.
    let mut s = raw(addr);
    s.write_all(&[0x00, 0x20, b'0', b'\n']).unwrap();
    let started = std::time::Instant::now();
    assert!(read_to_close(&mut s).is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed by the timeout, not at once"
    );

    // A connection that sends nothing at all is closed by the timeout too.
    let mut s = raw(addr);
    assert!(read_to_close(&mut s).is_empty());

    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .handshake_failed
        >= 4));
    assert_serving(addr);
}

#[test]
fn reuse_time_running_out_gives_404() {
    let mut cfg = config(Backend::Echo);
    cfg.reuse_time = Duration::from_millis(300);
    let gate = start(cfg);
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    c.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    c.abort();
    std::thread::sleep(Duration::from_millis(100));
    // Within reuse time: resumes fine.
    c.resume().unwrap();
    c.abort();
    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .sessions_closed
        == 1));
    assert!(matches!(c.resume(), Err(ResumeError::Refused(404))));
    assert_serving(gate.local_addr());
}

#[test]
fn session_and_handshake_limits_refuse_then_recover() {
    let mut cfg = config(Backend::Echo);
    cfg.shards = 1;
    cfg.max_sessions = 2;
    cfg.max_pending_handshakes = 2;
    cfg.reuse_time = Duration::from_millis(200);
    cfg.handshake_timeout = Duration::from_millis(500);
    let gate = start(cfg);
    let addr = gate.local_addr();

    // Two silent connections fill the handshake slots: a third is closed at once.
    let _a = raw(addr);
    let _b = raw(addr);
    assert!(wait_until(Duration::from_secs(5), || gate.stats().accepted == 2));
    let mut c = raw(addr);
    assert!(read_to_close(&mut c).is_empty());
    drop((_a, _b));
    // Once those time out, handshakes are accepted again.
    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .handshake_failed
        >= 2));

    // Two sessions fill the session limit: a third handshake gets no answer.
    let s1 = ScpClient::connect(addr, ClientOptions::default()).unwrap();
    let s2 = ScpClient::connect(addr, ClientOptions::default()).unwrap();
    assert!(ScpClient::connect(addr, ClientOptions::default()).is_err());
    // Sessions whose reuse time ran out free their places.
    drop((s1, s2));
    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .sessions_closed
        == 2));
    assert_serving(addr);
}
