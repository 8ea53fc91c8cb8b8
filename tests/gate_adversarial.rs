//! Hostile input: garbage floods, racing resumes. Other sessions must not notice.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::gate::Backend;
use ringgate::proto::message::ReuseConnReq;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn garbage_from_many_connections_harms_no_session() {
    let gate = start(config(Backend::Echo));
    let addr = gate.local_addr();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // A well-behaved session keeps echoing throughout.
        let victim = s.spawn(|| {
            let mut c = ScpClient::connect(addr, ClientOptions::default()).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 50 {
                let msg = payload(n, 1 + (n * 37) % 3000);
                c.write_all(&msg).unwrap();
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back).unwrap();
                assert_eq!(back, msg, "message {n}");
                n += 1;
            }
            n
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for k in 0..300 {
            let mut g = raw(addr);
            let len = rng.random_range(1..2000);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if k % 3 == 0 {
                // A plausible record length with garbage inside.
                junk[0] = 0;
                junk[1] = (len.min(255)) as u8;
            }
            let _ = g.write_all(&junk);
            if k % 2 == 0 {
                // Half leave abruptly.
                let _ = socket2::SockRef::from(&g).set_linger(Some(Duration::ZERO));
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(victim.join().unwrap() >= 50);
    });
    assert!(
        wait_until(Duration::from_secs(10), || gate.stats().handshake_failed
            >= 300),
        "{:?}",
        gate.stats()
    );
    assert_eq!(gate.stats().sessions_opened, 1);
    assert_serving(addr);
}

#[test]
fn racing_resumes_with_the_same_index_accept_exactly_one() {
    let gate = start(config(Backend::Echo));
    let addr = gate.local_addr();
    for round in 0..10u64 {
        let mut c = ScpClient::connect(addr, ClientOptions::default()).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        let req = ReuseConnReq::signed(c.id(), 1, 1, c.session().secret());
        let codes: Vec<Vec<u8>> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(move || {
                        let mut r = raw(addr);
                        send_record(&mut r, &req.encode());
                        let mut head = [0u8; 2];
                        std::io::Read::read_exact(&mut r, &mut head).unwrap();
                        let mut body = vec![0u8; u16::from_be_bytes(head) as usize];
                        std::io::Read::read_exact(&mut r, &mut body).unwrap();
                        body
                    })
                })
                .collect();
            racers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut codes: Vec<String> = codes
            .iter()
            .map(|b| {
                String::from_utf8_lossy(b)
                    .rsplit('\n')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        codes.sort();
        assert_eq!(
            codes,
            ["200", "403"],
            "round {round}: one resume wins, the replay is refused"
        );
    }
    assert_serving(addr);
}
