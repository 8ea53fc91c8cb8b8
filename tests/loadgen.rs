//! The load generator run in-process against an in-process gate: every
//! echoed byte must verify, across resumes and a reconnect storm, in SCP
//! and in the stable-connection dialect; and skynet's msgserver gate, where
//! every answer must verify and a request repeated after a reconnect must
//! be answered once and run once; and SCP (and plain packets) over the
//! WebSocket doors, with and without TLS, resumes and storm included.

mod common;

use common::{config, start};
use ringgate::client::loadgen::{
    self, LoadgenConfig, Protocol, Report, TlsClientSettings, Transport,
};
use ringgate::engine::ws::WsMode;
use ringgate::engine::{Config, Door, Gate};
use ringgate::gate::{Backend, skynet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

/// skynet's `logind.lua`: any user, password `password`.
#[derive(Debug)]
struct Logind;

impl skynet::Auth for Logind {
    fn auth(&self, token: &[u8]) -> Result<(Vec<u8>, Vec<u8>), skynet::Refusal> {
        let t = ringgate::proto::skynet::login::Token::parse(token)
            .ok_or(skynet::Refusal::Unauthorized)?;
        if t.password != b"password" {
            return Err(skynet::Refusal::Unauthorized);
        }
        Ok((t.server, t.user))
    }
}

/// How often the agent ran each (user, session).
type Runs = Arc<Mutex<HashMap<(u64, u32), u32>>>;

/// A login server and msgserver gate whose agent echoes every request
/// (after `delay`, so that reconnects land while requests are running),
/// counting how often it ran each (user, session).
fn msgserver(delay: Duration) -> (skynet::Handle, Runs) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (handle, receivers) = skynet::Builder::new(any, any, Logind)
        .shards(2)
        .workers(2)
        .engine(|c| c.pin_threads = false)
        .start()
        .expect("start the gate");
    let runs = Runs::default();
    for rx in receivers {
        let (handle, runs) = (handle.clone(), runs.clone());
        std::thread::spawn(move || {
            while let Some(ev) = rx.recv() {
                if let skynet::Event::Request {
                    user,
                    session,
                    payload,
                } = ev
                {
                    *runs.lock().unwrap().entry((user.0, session)).or_insert(0) += 1;
                    std::thread::sleep(delay);
                    let _ = handle.respond(user, session, payload, true);
                }
            }
        });
    }
    (handle, runs)
}

fn msgserver_load(handle: &skynet::Handle) -> LoadgenConfig {
    LoadgenConfig {
        protocol: Protocol::Msgserver,
        login: Some(handle.login_addr()),
        connections: 20,
        duration: Duration::from_secs(1),
        ..load(handle.gate_addr())
    }
}

#[test]
fn msgserver_requests_verify() {
    let (handle, runs) = msgserver(Duration::ZERO);
    let json = std::env::temp_dir().join(format!("ringgate-msgload-{}.json", std::process::id()));
    let r = loadgen::run(LoadgenConfig {
        json: Some(json.clone()),
        ..msgserver_load(&handle)
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.errors.is_empty(), "{r}");
    assert_eq!(r.resumes_ok, 0, "{r}");
    assert_eq!(r.repeats_answered, Some(0), "{r}");
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len() as u64, r.messages_total, "{r}");
    assert!(runs.values().all(|&n| n == 1), "{r}");
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["repeats_answered"], 0, "{text}");
    assert!(v["latency_us"]["p50"].is_u64(), "{text}");
    let _ = std::fs::remove_file(json);
}

#[test]
fn msgserver_repeats_after_reconnects_are_answered_once() {
    // The agent takes a while, so most reconnects leave the request still
    // running: the repeat waits for its answer; the rest find it cached.
    let (handle, runs) = msgserver(Duration::from_millis(2));
    let r = loadgen::run(LoadgenConfig {
        resume_every: Some(3),
        ..msgserver_load(&handle)
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.errors.is_empty(), "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    assert!(r.resumes_ok > 0, "{r}");
    assert_eq!(r.repeats_answered, Some(r.resumes_ok), "{r}");
    // Every request ran once at the agent, repeats included.
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len() as u64, r.messages_total, "{r}");
    assert!(runs.values().all(|&n| n == 1), "{r}");
}

#[test]
fn msgserver_wrong_password_is_counted() {
    let (handle, _) = msgserver(Duration::ZERO);
    let r = loadgen::run(LoadgenConfig {
        password: "wrong".into(),
        connections: 3,
        duration: Duration::from_millis(200),
        ..msgserver_load(&handle)
    })
    .unwrap();
    assert_eq!(r.connections, 0, "{r}");
    assert_eq!(r.errors.get("login: refused 401"), Some(&3), "{r}");
}

// ---- WebSocket and TLS transports --------------------------------------------

/// A gate with ws SCP, wss SCP and ws packets doors (in that order), its
/// certificate (PEM), and the gate.
fn ws_gate() -> (Gate, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gate = start(Config {
        doors: vec![
            (any, Door::Ws(WsMode::Scp)),
            (any, Door::Wss(WsMode::Scp)),
            (any, Door::Ws(WsMode::Packets)),
        ],
        tls: Some(ringgate::engine::ws::TlsKeys::new(
            ringgate::proto::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap(),
        )),
        ..config(Backend::Echo)
    });
    (gate, cert)
}

fn wss_settings(ca: &str) -> Option<TlsClientSettings> {
    Some(TlsClientSettings {
        config: ringgate::proto::tls::client_config(ca.as_bytes()).unwrap(),
        server_name: "127.0.0.1".try_into().unwrap(),
    })
}

#[test]
fn scp_over_ws_and_wss_verifies_every_byte_across_resumes() {
    let (gate, ca) = ws_gate();
    let r = loadgen::run(LoadgenConfig {
        transport: Transport::Ws,
        connections: 100,
        resume_every: Some(20),
        abort_probability: 0.01,
        ..load(gate.door_addrs()[0])
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.resumes_ok > 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    let r = loadgen::run(LoadgenConfig {
        transport: Transport::Wss,
        tls: wss_settings(&ca),
        connections: 100,
        resume_every: Some(3),
        size_max: 20_000,
        ..load(gate.door_addrs()[1])
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.resumes_ok > 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
    assert_eq!(gate.stats().resumes_failed, 0);
}

#[test]
fn wss_storm_brings_everyone_back() {
    let (gate, ca) = ws_gate();
    let r = loadgen::run(LoadgenConfig {
        transport: Transport::Wss,
        tls: wss_settings(&ca),
        connections: 100,
        storm: true,
        rate: 5.0,
        duration: Duration::from_secs(1),
        ..load(gate.door_addrs()[1])
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.resumes_ok >= 100, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
}

#[test]
fn plain_packets_over_ws_and_wss_needs_a_certificate_setting() {
    let (gate, _) = ws_gate();
    let r = loadgen::run(LoadgenConfig {
        transport: Transport::Ws,
        protocol: Protocol::Plain,
        connections: 50,
        ..load(gate.door_addrs()[2])
    })
    .unwrap();
    assert_clean(&r);
    // Needs a certificate setting, and SCP or plain.
    assert!(
        loadgen::run(LoadgenConfig {
            transport: Transport::Wss,
            ..load(gate.door_addrs()[1])
        })
        .is_err()
    );
}

#[test]
fn kcp_over_a_bad_link_verifies_every_byte_across_resumes() {
    // SCP over KCP with 10% loss, duplication and reordering on the
    // clients' link, each session resuming (a new conversation) every 20
    // echoes, on two gate shards: hand-overs included.
    let gate = start(Config {
        kcp: Some(ringgate::engine::kcp::KcpListen::new(
            "127.0.0.1:0".parse().unwrap(),
        )),
        ..config(Backend::Echo)
    });
    let r = loadgen::run(LoadgenConfig {
        connections: 20,
        transport: loadgen::Transport::Kcp,
        resume_every: Some(20),
        impair: ringgate::client::Impair {
            loss: 0.1,
            duplicate: 0.05,
            reorder: true,
            delay: Duration::from_millis(1),
            seed: 7,
        },
        ..load(gate.kcp_addr().unwrap())
    })
    .unwrap();
    assert_clean(&r);
    assert!(r.errors.is_empty(), "{r}");
    assert!(r.resumes_ok > 0, "{r}");
    assert!(r.resumes_failed.is_empty(), "{r}");
}
