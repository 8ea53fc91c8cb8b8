//! The KCP door: SCP over KCP over UDP through a real gate, with the
//! crate's KCP client (the same state machine as the gate, a real UDP
//! socket), over clean and impaired links, and across transports.

mod common;

use common::{config, payload, start, wait_until};
use ringgate::client::{ClientOptions, Impair, KcpDial, ScpClient, Via};
use ringgate::engine::kcp::KcpListen;
use ringgate::engine::{Config, Gate};
use ringgate::gate::Backend;
use ringgate::proto::kcp::KcpSettings;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

fn kcp_gate(shards: usize, tune: impl FnOnce(&mut KcpListen)) -> (Gate, SocketAddr) {
    let mut k = KcpListen::new("127.0.0.1:0".parse().unwrap());
    tune(&mut k);
    let gate = start(Config {
        shards,
        kcp: Some(k),
        ..config(Backend::Echo)
    });
    let addr = gate.kcp_addr().expect("a kcp door");
    (gate, addr)
}

fn kcp(addr: SocketAddr) -> Via {
    Via::Kcp(addr, KcpDial::default())
}

/// Writes `msg`, reads its echo, checks it.
fn echo(c: &mut ScpClient, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == msg, "the echo differs");
}

#[test]
fn scp_echo_over_kcp() {
    let (gate, addr) = kcp_gate(2, |_| {});
    let mut c = ScpClient::connect_via(kcp(addr), ClientOptions::default()).unwrap();
    assert_ne!(c.id(), 0);
    for n in 0..30 {
        echo(&mut c, &payload(n, 1 + n * 997));
    }
    // A large burst: more than the windows hold at once.
    echo(&mut c, &payload(99, 300_000));
    let s = gate.stats();
    assert_eq!(s.sessions_opened, 1);
    assert!(s.client_rx_bytes > 300_000);
}

#[test]
fn a_session_moves_tcp_kcp_tcp_with_bytes_in_flight() {
    // Several sessions, so that resumes land on both the session's shard
    // and the other one (the conversation then moves to its session).
    let (gate, kaddr) = kcp_gate(2, |_| {});
    let taddr = gate.local_addr();
    for s in 0..6 {
        let mut c = ScpClient::connect(taddr, ClientOptions::default()).unwrap();
        let mut expected = Vec::new();
        for (round, via) in [kcp(kaddr), Via::Tcp(taddr), kcp(kaddr), Via::Tcp(taddr)]
            .into_iter()
            .enumerate()
        {
            // Written, echoed, never read on this connection.
            let msg = payload(s * 10 + round, 5000 + round * 3000);
            c.write_all(&msg).unwrap();
            expected.extend_from_slice(&msg);
            c.abort();
            c.resume_via(via).unwrap();
            let more = payload(s * 10 + round + 100, 2000);
            c.write_all(&more).unwrap();
            expected.extend_from_slice(&more);
            let mut back = vec![0u8; expected.len()];
            c.read_exact(&mut back).unwrap();
            assert!(
                back == expected,
                "session {s} round {round}: nothing lost or doubled"
            );
            expected.clear();
        }
    }
    assert!(wait_until(Duration::from_secs(10), || gate
        .stats()
        .sessions_resumed
        == 24));
    assert_eq!(gate.stats().sessions_opened, 6);
}

#[test]
fn ten_percent_loss_with_reordering_and_duplication() {
    let (gate, addr) = kcp_gate(2, |_| {});
    for seed in 1..=3u64 {
        let dial = KcpDial {
            impair: Impair {
                loss: 0.10,
                duplicate: 0.05,
                reorder: true,
                delay: Duration::from_millis(2),
                seed,
            },
            ..KcpDial::default()
        };
        let mut c =
            ScpClient::connect_via(Via::Kcp(addr, dial.clone()), ClientOptions::default()).unwrap();
        for n in 0..10 {
            echo(&mut c, &payload(n + seed as usize * 100, 20_000 + n * 1111));
        }
        // A resume over the same bad link, with the echo of the last
        // write unread.
        let msg = payload(7, 9000);
        c.write_all(&msg).unwrap();
        c.resume_via(Via::Kcp(addr, dial)).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert!(back == msg);
        echo(&mut c, &payload(8, 4000));
    }
    assert_eq!(gate.stats().sessions_opened, 3);
}

#[test]
fn fec_conversations_recover_and_resume() {
    let settings = KcpSettings {
        fec_data: 3,
        fec_parity: 2,
        ..KcpSettings::default()
    };
    let (gate, addr) = kcp_gate(1, |k| k.settings = settings.clone());
    let dial = KcpDial {
        settings,
        impair: Impair {
            loss: 0.05,
            seed: 9,
            ..Impair::default()
        },
    };
    let mut c =
        ScpClient::connect_via(Via::Kcp(addr, dial.clone()), ClientOptions::default()).unwrap();
    for n in 0..10 {
        echo(&mut c, &payload(n, 10_000));
    }
    c.resume_via(Via::Kcp(addr, dial)).unwrap();
    echo(&mut c, &payload(11, 10_000));
    assert_eq!(gate.stats().sessions_resumed, 1);
}

#[test]
fn datagrams_that_open_nothing_leave_nothing() {
    let (gate, addr) = kcp_gate(2, |_| {});
    // From many ports: garbage, truncated headers, acks, window probes and
    // pushes that are not a first push; none opens a conversation.
    let socks: Vec<UdpSocket> = (0..64)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut seg = vec![0u8; 24 + 5];
    seg[20] = 5;
    for (i, s) in socks.iter().enumerate() {
        for j in 0..40u32 {
            let mut d = seg.clone();
            d[..4].copy_from_slice(&(i as u32 * 1000 + j).to_le_bytes());
            match j % 5 {
                0 => d[4] = 82, // ack
                1 => d[4] = 83, // window probe
                2 => {
                    d[4] = 81; // push, sn 7
                    d[12] = 7;
                }
                3 => d.truncate(10),
                _ => d = payload(j as usize, 100),
            }
            s.send_to(&d, addr).unwrap();
        }
    }
    // A real client after the flood is served, and it was the only one.
    let mut c = ScpClient::connect_via(kcp(addr), ClientOptions::default()).unwrap();
    echo(&mut c, b"still here");
    let s = gate.stats();
    assert_eq!(s.accepted, 1, "only the real client opened a conversation");
    assert_eq!(s.sessions_opened, 1);
    // The flood was read and counted (the kernel may have dropped some of
    // it first: its socket buffers are small).
    let control = gate.control();
    let dropped = || {
        control
            .shard_stats()
            .iter()
            .map(|s| s.kcp_dropped)
            .sum::<u64>()
    };
    assert!(wait_until(Duration::from_secs(10), || dropped() > 0));
    assert!(dropped() <= 64 * 40);
    // Conversations held are published on the tick: the real client's.
    assert!(wait_until(Duration::from_secs(10), || control
        .shard_stats()
        .iter()
        .map(|s| s.kcp_conversations)
        .sum::<u64>()
        == 1));
}

#[test]
fn conversations_are_capped() {
    // 2 shards, 4 conversations: 2 each. First pushes from 40 ports open
    // at most that many, however they spread.
    let (gate, addr) = kcp_gate(2, |k| k.max_conversations = 4);
    let socks: Vec<UdpSocket> = (0..40)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for (i, s) in socks.iter().enumerate() {
        // The start of an SCP record of 64 bytes: the greeting waits.
        let mut seg = vec![0u8; 24 + 2];
        seg[..4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        seg[4] = 81;
        seg[20] = 2;
        seg[24..].copy_from_slice(b"\x00\x40");
        s.send_to(&seg, addr).unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || gate.stats().accepted >= 2));
    // Each admitted first push is acknowledged; the others get nothing.
    let mut acked = 0;
    let mut buf = [0u8; 2048];
    for s in &socks {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if s.recv(&mut buf).is_ok() {
            acked += 1;
        }
    }
    let accepted = gate.stats().accepted;
    assert!(
        (2..=4).contains(&accepted),
        "{accepted} conversations opened"
    );
    assert_eq!(acked, accepted, "answered exactly the admitted");
}

#[test]
fn a_silent_conversation_ends_and_its_session_resumes_over_tcp() {
    let (gate, addr) = kcp_gate(1, |k| k.read_timeout = Duration::from_millis(300));
    let mut c = ScpClient::connect_via(kcp(addr), ClientOptions::default()).unwrap();
    echo(&mut c, b"before");
    // Unread echo waits in the session's replay window.
    c.write_all(b"in flight").unwrap();
    assert!(wait_until(Duration::from_secs(10), || gate
        .stats()
        .sessions_detached
        == 1));
    c.resume_via(Via::Tcp(gate.local_addr())).unwrap();
    let mut back = [0u8; 9];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"in flight");
    echo(&mut c, b"after");
}
