//! The million-session shape at test size: a gate whose rings each have a
//! small direct-descriptor table (as `RLIMIT_NOFILE` caps them on a small
//! machine) chooses enough shards itself to hold `max_sessions`, and the
//! load generator's sessions, spread over many rings on both sides, are all
//! dropped at once and resumed, with every echoed byte verified. Most resumes
//! land on a shard other than the owner's and travel there.

mod common;

use common::start;
use ringgate::client::loadgen::{self, LoadgenConfig, Report};
use ringgate::engine::{Config, Gate};
use ringgate::gate::{Announce, Backend, Host, Proxy, UpstreamNet, Upstreams};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SESSIONS: usize = 3000;
/// Slots per ring: 3000 sessions need 15 rings at 200 each (half of each
/// table is kept for handshakes and resumes in passage).
const TABLE: usize = 400;

fn small_tables(backend: Backend) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 0,
        direct_table: TABLE,
        max_sessions: SESSIONS,
        recv_buffers: 64,
        pin_threads: false,
        backend,
        ..Config::default()
    }
}

fn storm(gate: &Gate) -> Report {
    loadgen::run(LoadgenConfig {
        connect: gate.local_addr(),
        connections: SESSIONS,
        duration: Duration::from_secs(1),
        rate: 1.0,
        size_min: 16,
        size_max: 64,
        storm: true,
        shards: Some(8),
        drain_timeout: Duration::from_secs(30),
        ..LoadgenConfig::default()
    })
    .unwrap()
}

fn assert_all_back(r: &Report, gate: &Gate) {
    assert_eq!(r.connections, SESSIONS as u64, "{r}");
    assert!(r.messages > 0, "{r}");
    assert_eq!(r.bytes_lost, 0, "{r}");
    assert_eq!(r.bytes_duplicated, 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    assert!(r.resumes_ok >= SESSIONS as u64, "{r}");
    assert!(r.storm_seconds.is_some_and(f64::is_finite), "{r}");
    let s = gate.stats();
    assert_eq!(s.sessions_opened, SESSIONS as u64, "{s:?}");
    assert!(s.sessions_resumed >= SESSIONS as u64, "{s:?}");
    assert!(s.handoffs > 0, "resumes crossed rings: {s:?}");
}

#[test]
fn the_gate_chooses_enough_small_rings_and_every_session_resumes() {
    let gate = start(small_tables(Backend::Echo));
    // 3000 sessions at 200 per ring.
    assert_eq!(gate.shards(), 15);
    let r = storm(&gate);
    assert_all_back(&r, &gate);
}

#[test]
fn proxied_sessions_on_small_rings_resume_with_their_upstreams() {
    // The upstream is an echo gate with small rings of its own.
    let upstream = start(Config {
        scp: false,
        max_sessions: SESSIONS,
        ..small_tables(Backend::Echo)
    });
    let gate = start(small_tables(Backend::Proxy(Arc::new(Proxy {
        upstreams: Upstreams::new(vec![Host {
            name: "echo".into(),
            addr: upstream.local_addr(),
            weight: 1,
        }]),
        net: UpstreamNet::Tcp,
        announce: Announce::None,
        connect_timeout: Duration::from_secs(10),
        resolv: None,
    }))));
    // Two sockets a session (client and upstream): twice the rings.
    assert_eq!(gate.shards(), 30);
    let r = storm(&gate);
    assert_all_back(&r, &gate);
    assert_eq!(upstream.stats().sessions_opened, SESSIONS as u64);
}
