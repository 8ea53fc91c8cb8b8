//! The load generator run in-process against an in-process gate: every
//! echoed byte must verify, across resumes and a reconnect storm, in SCP
//! and in the stable-connection dialect.

mod common;

use common::{config, start};
use ringgate::client::loadgen::{self, LoadgenConfig, Protocol, Report};
use ringgate::engine::{Config, Door, Gate};
use ringgate::gate::Backend;
use std::net::SocketAddr;
use std::time::Duration;

fn load(addr: SocketAddr) -> LoadgenConfig {
    LoadgenConfig {
        connect: addr,
        connections: 200,
        duration: Duration::from_secs(2),
        size_min: 16,
        size_max: 512,
        shards: Some(2),
        ..LoadgenConfig::default()
    }
}

fn assert_clean(r: &Report) {
    assert!(r.messages > 0, "{r}");
    assert_eq!(r.bytes_lost, 0, "{r}");
    assert_eq!(r.bytes_duplicated, 0, "{r}");
    assert_eq!(r.connections, r.target_connections as u64, "{r}");
}

#[test]
fn scp_echo_verifies_every_byte() {
    let gate = start(config(Backend::Echo));
    let json = std::env::temp_dir().join(format!("ringgate-loadgen-{}.json", std::process::id()));
    let r = loadgen::run(LoadgenConfig {
        json: Some(json.clone()),
        ..load(gate.local_addr())
    })
    .unwrap();
    assert_clean(&r);
    assert!(
        r.latency_us.p50 > 0 && r.latency_us.p50 <= r.latency_us.max,
        "{r}"
    );
    assert_eq!(gate.stats().sessions_opened, 200);
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "connections",
        "handshakes_per_sec",
        "resumes_ok",
        "resumes_failed",
        "messages",
        "msgs_per_sec",
        "mb_per_sec",
        "bytes_lost",
        "bytes_duplicated",
        "errors",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {text}");
    }
    assert!(v["latency_us"]["p999"].is_u64(), "{text}");
    let _ = std::fs::remove_file(json);
}

#[test]
fn resumes_lose_nothing() {
    let gate = start(config(Backend::Echo));
    let r = loadgen::run(LoadgenConfig {
        resume_every: Some(20),
        abort_probability: 0.01,
        ..load(gate.local_addr())
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.resumes_ok > 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    assert!(gate.stats().sessions_resumed > 0);
}

#[test]
fn storm_resumes_everyone() {
    let gate = start(config(Backend::Echo));
    let r = loadgen::run(LoadgenConfig {
        storm: true,
        rate: 5.0,
        duration: Duration::from_secs(1),
        ..load(gate.local_addr())
    })
    .unwrap();
    assert_clean(&r);
    let secs = r.storm_seconds.expect("storm_seconds reported");
    assert!(secs.is_finite(), "{r}");
    assert!(r.storm_resumes_per_sec.is_some(), "{r}");
    assert!(r.resumes_ok >= 200, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
}

#[test]
fn plain_frames_through_a_plain_echo() {
    let gate = start(Config {
        scp: false,
        ..config(Backend::Echo)
    });
    let r = loadgen::run(LoadgenConfig {
        protocol: Protocol::Plain,
        ..load(gate.local_addr())
    })
    .unwrap();
    assert_clean(&r);
    assert_eq!(r.resumes_ok, 0);
}

#[test]
fn expired_sessions_count_404() {
    // The gate forgets a dropped session almost at once; the clients wait
    // before resuming, so their resumes find nothing.
    let gate = start(Config {
        reuse_time: Duration::from_millis(1),
        ..config(Backend::Echo)
    });
    let r = loadgen::run(LoadgenConfig {
        connections: 20,
        resume_every: Some(5),
        resume_delay: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        ..load(gate.local_addr())
    })
    .unwrap();
    assert!(r.resumes_failed.get("404").copied().unwrap_or(0) > 0, "{r}");
    assert_eq!(r.bytes_duplicated, 0, "{r}");
}

/// A gate whose second listener speaks stable-connection, and that address.
fn stable_gate(cfg: Config) -> (Gate, SocketAddr) {
    let gate = start(Config {
        doors: vec![(SocketAddr::from(([127, 0, 0, 1], 0)), Door::Stable)],
        ..cfg
    });
    let addr = gate.door_addrs()[0];
    (gate, addr)
}

fn stable_load(addr: SocketAddr) -> LoadgenConfig {
    LoadgenConfig {
        protocol: Protocol::StableConnection,
        ..load(addr)
    }
}

#[test]
fn stable_echo_verifies_every_byte() {
    let (gate, addr) = stable_gate(config(Backend::Echo));
    let r = loadgen::run(stable_load(addr)).unwrap();
    assert_clean(&r);
    assert_eq!(r.resumes_ok, 0, "{r}");
    assert!(r.errors.is_empty(), "{r}");
    assert_eq!(gate.stats().sessions_opened, 200);
}

#[test]
fn stable_resumes_lose_nothing() {
    // Drops land with a message (and maybe its echo) in flight: the client
    // resends its ciphertext after the gate's count, the gate its own after
    // the client's, and every byte must come back exactly once.
    let (gate, addr) = stable_gate(config(Backend::Echo));
    let r = loadgen::run(LoadgenConfig {
        resume_every: Some(20),
        abort_probability: 0.01,
        ..stable_load(addr)
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.resumes_ok > 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    assert!(gate.stats().sessions_resumed > 0);
    assert_eq!(gate.stats().resumes_failed, 0);
}

#[test]
fn stable_storm_brings_everyone_back() {
    let (gate, addr) = stable_gate(config(Backend::Echo));
    let r = loadgen::run(LoadgenConfig {
        storm: true,
        rate: 5.0,
        duration: Duration::from_secs(1),
        ..stable_load(addr)
    })
    .unwrap();
    assert_clean(&r);
    // Every connection came back (a connection that had received nothing
    // may come back as a new session, with nothing in flight to lose).
    let secs = r.storm_seconds.expect("storm_seconds reported");
    assert!(secs.is_finite(), "{r}");
    assert!(r.storm_resumes_per_sec.is_some(), "{r}");
    assert!(r.resumes_ok > 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    assert!(gate.stats().sessions_resumed > 0);
}

#[test]
fn stable_resumes_of_forgotten_sessions_are_closed() {
    // The dialect has no refusal code: the gate closes, the client counts it
    // and starts a new session; what was in flight is lost, never garbled.
    let (_gate, addr) = stable_gate(Config {
        reuse_time: Duration::from_millis(1),
        ..config(Backend::Echo)
    });
    let r = loadgen::run(LoadgenConfig {
        connections: 20,
        resume_every: Some(5),
        resume_delay: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        ..stable_load(addr)
    })
    .unwrap();
    assert!(
        r.resumes_failed.get("closed").copied().unwrap_or(0) > 0,
        "{r}"
    );
    assert_eq!(r.bytes_duplicated, 0, "{r}");
}

#[test]
fn bad_settings_are_refused() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    let refused = |cfg: LoadgenConfig| loadgen::run(cfg).is_err();
    assert!(refused(LoadgenConfig {
        protocol: Protocol::Plain,
        storm: true,
        ..load(addr)
    }));
    assert!(refused(LoadgenConfig {
        size_max: 70_000,
        ..load(addr)
    }));
    assert!(refused(LoadgenConfig {
        target: Some("game".into()),
        ..stable_load(addr)
    }));
    assert!(loadgen::plan_shards(1_000_000, Some(1)).is_err());
    let plan = loadgen::plan_shards(1_000_000, None).unwrap();
    assert!(1_000_000 / plan.shards <= plan.per_ring_cap);
}
