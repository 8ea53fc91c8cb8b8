//! Operating a running gate through `Gate::control`: counters that follow
//! sessions as they open, detach, resume and close; the session list;
//! kicking one session; draining; limits changed while running.

mod common;

use common::{config, start, wait_until};
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::engine::{CloseReason, SessionState, stats};
use ringgate::gate::Backend;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

fn echo_round(c: &mut ScpClient, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn counters_follow_sessions_and_the_operator_can_kick_and_drain() {
    let gate = start(config(Backend::Echo));
    let ctl = gate.control();
    let addr = gate.local_addr();
    let mut a = ScpClient::connect(addr, ClientOptions::default()).unwrap();
    let mut b = ScpClient::connect(addr, ClientOptions::default()).unwrap();
    echo_round(&mut a, b"hello");
    echo_round(&mut b, b"world!");
    let s = ctl.stats();
    assert_eq!((s.sessions_opened, s.sessions_live), (2, 2));
    // At least the echoed bytes each way (plus the handshake records).
    assert!(s.client_rx_bytes >= 11, "{s:?}");
    assert!(wait_until(LIMIT, || ctl.stats().client_tx_bytes >= 11));

    // Detach one: the gauge rises; resume: it falls, and what was resent is counted.
    a.abort();
    assert!(wait_until(LIMIT, || ctl.stats().sessions_detached == 1));
    a.resume().unwrap();
    assert!(wait_until(LIMIT, || ctl.stats().sessions_detached == 0));
    assert_eq!(ctl.stats().sessions_resumed, 1);
    echo_round(&mut a, b"again");

    // The session list names both, with their state and bytes.
    let list = ctl.sessions(10);
    assert_eq!(list.len(), 2, "{list:?}");
    let info = list.iter().find(|s| s.id == a.id()).unwrap();
    assert_eq!(info.state, SessionState::Connected);
    assert!(info.bytes_in >= 10 && info.bytes_out >= 10, "{info:?}");
    assert_eq!(ctl.sessions(1).len(), 1);

    // Kick b: it is closed as kicked; an unknown id is not found.
    assert!(ctl.kick(b.id()));
    assert!(!ctl.kick(b.id()));
    let mut buf = [0u8; 1];
    assert!(matches!(b.read(&mut buf), Ok(0) | Err(_)));
    let kicked = stats::close_reason_index(CloseReason::Kicked);
    assert!(wait_until(LIMIT, || ctl
        .shard_stats()
        .iter()
        .map(|s| s.closed_by[kicked])
        .sum::<u64>()
        == 1));
    assert_eq!(ctl.stats().sessions_live, 1);

    // Draining: a new session is refused, a resume is still served.
    ctl.set_draining(true);
    assert!(ScpClient::connect(addr, ClientOptions::default()).is_err());
    assert_eq!(ctl.stats().new_refused_draining, 1);
    a.abort();
    assert!(wait_until(LIMIT, || ctl.stats().sessions_detached == 1));
    a.resume().unwrap();
    echo_round(&mut a, b"still here");
    ctl.set_draining(false);
    let mut c = ScpClient::connect(addr, ClientOptions::default()).unwrap();
    echo_round(&mut c, b"new again");
}

#[test]
fn a_shorter_reuse_time_applies_while_running() {
    let gate = start(config(Backend::Echo));
    let ctl = gate.control();
    let mut limits = ctl.limits();
    assert_eq!(limits.reuse_time, Duration::from_secs(30));
    let mut a = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    echo_round(&mut a, b"x");
    a.abort();
    assert!(wait_until(LIMIT, || ctl.stats().sessions_detached == 1));
    limits.reuse_time = Duration::from_millis(100);
    ctl.set_limits(&limits);
    assert_eq!(ctl.limits(), limits);
    let expired = stats::close_reason_index(CloseReason::ReuseTimeout);
    assert!(wait_until(LIMIT, || ctl
        .shard_stats()
        .iter()
        .map(|s| s.closed_by[expired])
        .sum::<u64>()
        == 1));
    assert_eq!(ctl.stats().sessions_detached, 0);
    assert!(a.resume().is_err());
}
