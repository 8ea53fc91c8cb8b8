//! The same engine without SCP: `ringgate echo` and `serve --plain`.

mod common;

use common::*;
use ringgate::gate::{Announce, Backend, Host, Proxy, UpstreamNet, Upstreams};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn plain(backend: Backend) -> ringgate::engine::Config {
    let mut cfg = config(backend);
    cfg.scp = false;
    cfg
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn plain_echo_server() {
    let gate = start(plain(Backend::Echo));
    let mut conns: Vec<TcpStream> = (0..50).map(|_| raw(gate.local_addr())).collect();
    for (n, s) in conns.iter_mut().enumerate() {
        roundtrip(s, &payload(n, 10 + n * 301));
    }
    // A large message, larger than any buffer inside the gate.
    roundtrip(&mut conns[0], &payload(99, 1 << 20));
    drop(conns);
    assert_eq!(gate.stats().sessions_opened, 50);
    assert!(
        wait_until(Duration::from_secs(5), || gate.stats().sessions_closed
            == 50),
        "{:?}",
        gate.stats()
    );
    let mut s = raw(gate.local_addr());
    roundtrip(&mut s, b"still serving");
}

#[test]
fn plain_relay_to_an_upstream() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let upper: Vec<u8> = buf[..n].to_ascii_uppercase();
                            if s.write_all(&upper).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let gate = start(plain(Backend::Proxy(Arc::new(Proxy {
        upstreams: Upstreams::new(vec![Host {
            name: "up".into(),
            addr: up_addr,
            weight: 1,
        }]),
        net: UpstreamNet::Tcp,
        announce: Announce::None,
        connect_timeout: Duration::from_secs(2),
        resolv: None,
    }))));
    let mut s = raw(gate.local_addr());
    s.write_all(b"hello relay").unwrap();
    let mut back = [0u8; 11];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"HELLO RELAY");
    // The client leaving ends the session and its upstream connection.
    drop(s);
    assert_eq!(gate.stats().sessions_opened, 1);
    assert!(
        wait_until(Duration::from_secs(5), || gate.stats().sessions_closed == 1),
        "{:?}",
        gate.stats()
    );
}

#[test]
fn idle_timeout_closes_a_silent_connection() {
    let mut cfg = config(Backend::Echo);
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let gate = start(cfg);
    let mut c =
        ringgate::client::ScpClient::connect(gate.local_addr(), Default::default()).unwrap();
    c.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    c.read_exact(&mut back).unwrap();
    // Silent now: the gate drops the connection (the session waits for a resume).
    let mut buf = [0u8; 4];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    c.resume().unwrap();
    c.write_all(b"back").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"back");
}

#[test]
fn a_full_descriptor_table_makes_clients_wait_instead_of_dropping_them() {
    let mut cfg = plain(Backend::Echo);
    cfg.shards = 1;
    cfg.direct_table = 64; // one at a time from the start; paused with 32 slots left
    let gate = start(cfg);
    let addr = gate.local_addr();
    // More connections than the table may take: the kernel completes them
    // into the listen backlog; the gate takes them as others close.
    let mut conns: Vec<TcpStream> = (0..100).map(|_| raw(addr)).collect();
    for (n, s) in conns.iter_mut().enumerate() {
        s.write_all(&payload(n, 100)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || gate.stats().accept_pauses > 0),
        "{:?}",
        gate.stats()
    );
    // Serve them in order, closing each once answered: every one gets its echo.
    for (n, mut s) in conns.drain(..).enumerate() {
        let mut back = vec![0u8; 100];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {n}: {e}"));
        assert_eq!(back, payload(n, 100));
    }
    assert!(
        wait_until(Duration::from_secs(5), || gate.stats().sessions_closed
            == 100),
        "{:?}",
        gate.stats()
    );
    let mut s = raw(addr);
    roundtrip(&mut s, b"still serving");
}
