//! Proxy mode: sessions relayed to real upstream TCP servers.

mod common;

use common::*;
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::gate::{Announce, Backend, Host, Proxy, UpstreamNet, Upstreams};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// What an upstream does with each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    /// Reads the announcement header of this many bytes, reports it, then echoes.
    AnnounceThenEcho(usize),
    /// Reads a u16-BE length-prefixed announcement, reports it whole, then echoes.
    PrefixedThenEcho,
    /// Writes a farewell and closes.
    SayAndClose,
    /// Echoes, but reads slowly (small reads with pauses).
    SlowEcho,
}

struct Upstream {
    addr: SocketAddr,
    seen: mpsc::Receiver<Vec<u8>>,
}

fn upstream(behaviour: Behaviour) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve(&mut s, behaviour, tx));
        }
    });
    Upstream { addr, seen }
}

fn serve(s: &mut TcpStream, behaviour: Behaviour, tx: mpsc::Sender<Vec<u8>>) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 65536];
    match behaviour {
        Behaviour::SayAndClose => {
            let _ = s.write_all(b"farewell from upstream");
            return;
        }
        Behaviour::PrefixedThenEcho => {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            let mut all = len.to_vec();
            all.extend_from_slice(&body);
            let _ = tx.send(all);
        }
        Behaviour::AnnounceThenEcho(n) => {
            let mut head = vec![0u8; n];
            if n > 0 && s.read_exact(&mut head).is_err() {
                return;
            }
            let _ = tx.send(head);
        }
        _ => {}
    }
    loop {
        let chunk = if matches!(behaviour, Behaviour::SlowEcho) {
            512
        } else {
            buf.len()
        };
        let n = match s.read(&mut buf[..chunk]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
        if matches!(behaviour, Behaviour::SlowEcho) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn proxy_to(hosts: Vec<Host>, announce: Announce) -> Backend {
    Backend::Proxy(Arc::new(Proxy {
        upstreams: Upstreams::new(hosts),
        net: UpstreamNet::Tcp,
        announce,
        connect_timeout: Duration::from_secs(2),
        resolv: None,
    }))
}

fn host(name: &str, addr: SocketAddr) -> Host {
    Host {
        name: name.into(),
        addr,
        weight: 1,
    }
}

fn echo_roundtrip(c: &mut ScpClient, n: usize, len: usize) {
    let msg = payload(n, len);
    c.write_all(&msg).unwrap();
    let mut back = vec![0u8; len];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn relays_to_the_upstream_and_resumes_with_it_kept() {
    let up = upstream(Behaviour::Echo);
    let gate = start(config(proxy_to(vec![host("a", up.addr)], Announce::None)));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    echo_roundtrip(&mut c, 1, 5000);
    // In flight both ways, then a network loss.
    let msg = payload(2, 40_000);
    c.write_all(&msg).unwrap();
    c.abort();
    std::thread::sleep(Duration::from_millis(50));
    c.resume().unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    echo_roundtrip(&mut c, 3, 100);
    assert_serving(gate.local_addr());
}

#[test]
fn target_server_picks_the_named_upstream_and_announces_the_client() {
    let a = upstream(Behaviour::AnnounceThenEcho(0));
    // PROXY v2 over IPv4: 16-byte header + 12 bytes of addresses.
    let b = upstream(Behaviour::AnnounceThenEcho(28));
    let hosts = vec![host("alpha", a.addr), host("beta", b.addr)];
    let gate = start(config(proxy_to(hosts, Announce::ProxyV2)));
    let opts = ClientOptions {
        target: Some("beta".into()),
        ..Default::default()
    };
    let mut c = ScpClient::connect(gate.local_addr(), opts).unwrap();
    echo_roundtrip(&mut c, 1, 64);
    let head = b.seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n", "PROXY v2 signature");
    assert_eq!(head[12], 0x21, "v2, PROXY command");
    assert_eq!(head[13], 0x11, "TCP over IPv4");
    let client = c.stream().local_addr().unwrap();
    let SocketAddr::V4(v4) = client else {
        unreachable!()
    };
    assert_eq!(&head[16..20], &v4.ip().octets(), "the client's address");
    assert_eq!(&head[24..26], &v4.port().to_be_bytes(), "the client's port");
    assert!(a.seen.try_recv().is_err(), "alpha got nothing");
}

#[test]
fn sproto_announcement_and_flag_that_suppresses_it() {
    let up = upstream(Behaviour::PrefixedThenEcho);
    let gate = start(config(proxy_to(
        vec![host("a", up.addr)],
        Announce::Sproto { type_: 1 },
    )));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    let local = c.stream().local_addr().unwrap();
    let expected = ringgate::proto::announce::sproto_announce(
        1,
        &local.to_string(),
        &gate.local_addr().to_string(),
    );
    let head = up.seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        head, expected,
        "the whole sproto announcement, byte for byte"
    );
    echo_roundtrip(&mut c, 1, 10);
    drop(c);

    // With flag 0x1 the upstream's first bytes are the client's own.
    let up = upstream(Behaviour::AnnounceThenEcho(4));
    let gate = start(config(proxy_to(
        vec![host("a", up.addr)],
        Announce::Sproto { type_: 1 },
    )));
    let opts = ClientOptions {
        flag: Some(1),
        ..Default::default()
    };
    let mut c = ScpClient::connect(gate.local_addr(), opts).unwrap();
    c.write_all(b"ping").unwrap();
    assert_eq!(
        up.seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        b"ping"
    );
    let mut back = [0u8; 0];
    c.read_exact(&mut back).unwrap();
}

#[test]
fn refused_upstream_falls_back_to_the_others() {
    let down = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down); // nothing listens there now
    let up = upstream(Behaviour::Echo);
    let hosts = vec![host("a", down_addr), host("a", up.addr)];
    let gate = start(config(proxy_to(hosts, Announce::None)));
    for n in 0..6 {
        let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
        echo_roundtrip(&mut c, n, 300);
    }
}

#[test]
fn upstream_down_closes_the_client() {
    let down = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down);
    let gate = start(config(proxy_to(vec![host("a", down_addr)], Announce::None)));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    let _ = c.write_all(b"anyone?");
    let mut buf = [0u8; 8];
    assert!(
        matches!(c.read(&mut buf), Ok(0) | Err(_)),
        "the gate closes the client"
    );
    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .upstream_failed
        == 1));
    // And still serves others (whose upstream is down too): sessions open, then close.
    let c2 = ScpClient::connect(gate.local_addr(), ClientOptions::default());
    assert!(c2.is_ok());
}

#[test]
fn upstream_that_closes_delivers_then_closes_the_client() {
    let up = upstream(Behaviour::SayAndClose);
    let gate = start(config(proxy_to(vec![host("a", up.addr)], Announce::None)));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got, b"farewell from upstream");
    // The next session gets its own upstream connection and its own farewell.
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    let mut again = vec![0u8; got.len()];
    c.read_exact(&mut again).unwrap();
    assert_eq!(again, got);
    // Both sessions ended once their upstream had said everything.
    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .sessions_closed
        == 2));
}

#[test]
fn slow_upstream_gets_everything_with_bounded_buffers() {
    let up = upstream(Behaviour::SlowEcho);
    let mut cfg = config(proxy_to(vec![host("a", up.addr)], Announce::None));
    cfg.relay_buffer = 16 * 1024;
    let gate = start(cfg);
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    let total = 2 * 1024 * 1024;
    let msg = payload(9, total);
    // Write everything before reading anything: the gate must hold back the
    // client and the upstream (bounded buffers) rather than buffer it all.
    c.write_all(&msg).unwrap();
    let mut back = vec![0u8; total];
    c.read_exact(&mut back).unwrap();
    assert!(back == msg, "every byte, in order");
    assert!(
        gate.stats().backpressure_pauses > 0,
        "reading paused: {:?}",
        gate.stats()
    );
    assert_serving(gate.local_addr());
}

#[test]
fn scp_upstream_chains_two_gates() {
    let inner = start(config(Backend::Echo));
    let outer = start(config(Backend::Proxy(Arc::new(Proxy {
        upstreams: Upstreams::new(vec![host("inner", inner.local_addr())]),
        net: UpstreamNet::Scp,
        announce: Announce::None,
        connect_timeout: Duration::from_secs(2),
        resolv: None,
    }))));
    let mut c = ScpClient::connect(outer.local_addr(), ClientOptions::default()).unwrap();
    for n in 0..10 {
        echo_roundtrip(&mut c, n, 10 + n * 1000);
    }
    assert_eq!(
        inner.stats().sessions_opened,
        1,
        "the outer gate opened an SCP session on the inner one"
    );
    assert_serving(outer.local_addr());
}

#[test]
fn a_thousand_concurrent_sessions() {
    let up = upstream(Behaviour::Echo);
    let gate = start(config(proxy_to(vec![host("a", up.addr)], Announce::None)));
    let addr = gate.local_addr();
    let clients: Vec<ScpClient> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    (0..250)
                        .map(|_| ScpClient::connect(addr, ClientOptions::default()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(clients.len(), 1000);
    let mut clients = clients;
    for (n, c) in clients.iter_mut().enumerate() {
        c.write_all(&payload(n, 64)).unwrap();
    }
    for (n, c) in clients.iter_mut().enumerate() {
        let mut back = vec![0u8; 64];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, payload(n, 64), "session {n}");
    }
    let ids: std::collections::HashSet<u32> = clients.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), 1000, "distinct session ids");
    assert_eq!(gate.stats().sessions_opened, 1000);
    drop(clients);
    assert_serving(addr);
}

/// A stable-connection session reaches the upstream like an SCP one, and
/// its resume keeps the upstream link.
#[test]
fn stable_connection_sessions_are_proxied() {
    use ringgate::client::StableClient;
    let up = upstream(Behaviour::Echo);
    let mut cfg = config(proxy_to(vec![host("a", up.addr)], Announce::None));
    cfg.doors = vec![(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ringgate::engine::Door::Stable,
    )];
    let gate = start(cfg);
    let mut c = StableClient::connect(gate.door_addrs()[0], ClientOptions::default()).unwrap();
    let msg = payload(3, 4000);
    c.write_all(&msg).unwrap();
    let mut head = vec![0u8; 1000];
    c.read_exact(&mut head).unwrap();
    c.abort();
    c.resume().unwrap();
    let mut tail = vec![0u8; 3000];
    c.read_exact(&mut tail).unwrap();
    head.extend_from_slice(&tail);
    assert_eq!(head, msg);
    assert_eq!(gate.stats().sessions_resumed, 1);
}
