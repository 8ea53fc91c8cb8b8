//! The admin endpoint of `ringgate serve`, over HTTP against the binary:
//! metrics that follow sessions (and pass `promtool check metrics`), the
//! settings in force, reload while sessions keep echoing, a bad file
//! refused, draining by request and by signal, and goscon's default
//! settings starting without a warning other than KCP.

mod common;

use common::{
    admin_addr, config, first_line, http, listen_addr, payload, ringgate, start, wait_until,
};
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::engine::Gate;
use ringgate::gate::Backend;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

struct Served {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Served {
    let mut child = ringgate()
        .arg("serve")
        .args(args)
        .spawn()
        .expect("binary runs");
    let line = first_line(&mut child);
    Served {
        child,
        addr: listen_addr(&line),
        admin: admin_addr(&line),
    }
}

/// The value of one sample of the exposition (0 when absent).
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    body
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringgate-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn echo(c: &mut ScpClient, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg, "session {}", c.id());
}

fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: promtool not found (Debian package `prometheus`; .ci/run installs it)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_follow_sessions_and_pass_promtool() {
    let g = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "2",
    ]);
    let m = scrape(g.admin);
    assert_eq!(sample(&m, "ringgate_sessions_opened_total"), 0);
    promtool_check(&m);

    let mut a = ScpClient::connect(g.addr, ClientOptions::default()).unwrap();
    let mut b = ScpClient::connect(g.addr, ClientOptions::default()).unwrap();
    echo(&mut a, &payload(1, 1000));
    echo(&mut b, &payload(2, 500));
    let m = scrape(g.admin);
    assert_eq!(sample(&m, "ringgate_sessions_opened_total"), 2);
    let live: u64 = (0..2)
        .map(|s| sample(&m, &format!("ringgate_sessions_live{{shard=\"{s}\"}}")))
        .sum();
    assert_eq!(live, 2);
    assert!(sample(&m, "ringgate_bytes_total{peer=\"client\",direction=\"in\"}") >= 1500);

    a.abort();
    let detached = |m: &str| -> u64 {
        (0..2)
            .map(|s| sample(m, &format!("ringgate_sessions_detached{{shard=\"{s}\"}}")))
            .sum()
    };
    assert!(wait_until(LIMIT, || detached(&scrape(g.admin)) == 1));
    a.resume().unwrap();
    echo(&mut a, b"back");
    let m = scrape(g.admin);
    assert_eq!(sample(&m, "ringgate_sessions_resumed_total"), 1);
    assert_eq!(detached(&m), 0);

    // Kicked over HTTP: closed as kicked.
    let (status, body) = http(g.admin, "POST", &format!("/sessions/{}/kick", b.id()));
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(g.admin, "POST", &format!("/sessions/{}/kick", b.id()));
    assert_eq!(status, 404);
    let m = scrape(g.admin);
    assert_eq!(
        sample(&m, "ringgate_sessions_closed_total{reason=\"kicked\"}"),
        1
    );

    // The session list.
    let (status, body) = http(g.admin, "GET", "/sessions?limit=5");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["id"], a.id());
    assert_eq!(list[0]["state"], "connected");
    for bad in [
        "/sessions?limit=0",
        "/sessions?limit=x",
        "/sessions?limit=99999999",
    ] {
        assert_eq!(http(g.admin, "GET", bad).0, 400, "{bad}");
    }
    for (method, path, code) in [
        ("POST", "/sessions/abc/kick", 400),
        ("GET", "/sessions/1/kick", 405),
        ("DELETE", "/metrics", 405),
        ("GET", "/nowhere", 404),
    ] {
        assert_eq!(http(g.admin, method, path).0, code, "{method} {path}");
    }
    // Something that is not HTTP gets a 400, and the endpoint stays up.
    let mut s = TcpStream::connect(g.admin).unwrap();
    s.write_all(b"garbage\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    promtool_check(&scrape(g.admin));
}

/// An upstream echo server (a plain gate).
fn upstream() -> Gate {
    let mut cfg = config(Backend::Echo);
    cfg.scp = false;
    cfg.shards = 1;
    start(cfg)
}

fn hosts_toml(hosts: &[(&str, SocketAddr)]) -> String {
    let mut t = String::from("shards = 2\n");
    for (name, addr) in hosts {
        t.push_str(&format!(
            "[[upstream.hosts]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    t
}

#[test]
fn reload_moves_new_sessions_while_live_ones_keep_echoing() {
    let (a, b) = (upstream(), upstream());
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let file = temp("reload.toml", &hosts_toml(&[("a", a_addr)]));
    let g = serve(&[
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let connects = |host: SocketAddr| {
        sample(
            &scrape(g.admin),
            &format!("ringgate_upstream_connects_total{{upstream=\"{host}\"}}"),
        )
    };
    let mut live: Vec<ScpClient> = (0..200)
        .map(|_| ScpClient::connect(g.addr, ClientOptions::default()).unwrap())
        .collect();
    let mut round = 0;
    let mut echo_all = |live: &mut Vec<ScpClient>| {
        round += 1;
        for (i, c) in live.iter_mut().enumerate() {
            echo(c, &payload(round * 1000 + i, 64 + i));
        }
    };
    echo_all(&mut live);
    assert_eq!(connects(a_addr), 200);

    // Replace a with b: new sessions go to b, the 200 stay on a.
    std::fs::write(&file, hosts_toml(&[("b", b_addr)])).unwrap();
    let (status, body) = http(g.admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("succeed") && body.contains("upstream.hosts"),
        "{body}"
    );
    echo_all(&mut live);
    let mut newer: Vec<ScpClient> = (0..20)
        .map(|_| ScpClient::connect(g.addr, ClientOptions::default()).unwrap())
        .collect();
    echo_all(&mut newer);
    assert_eq!((connects(a_addr), connects(b_addr)), (200, 20));

    // A file that does not parse changes nothing, and says why.
    std::fs::write(&file, "shards = \"many\"\n").unwrap();
    let (status, body) = http(g.admin, "POST", "/reload");
    assert_eq!(status, 400);
    assert!(
        body.starts_with("failed") && body.contains("shards"),
        "{body}"
    );
    // Nor does one naming an upstream that does not resolve.
    std::fs::write(
        &file,
        hosts_toml(&[("c", a_addr)]).replace(&a_addr.to_string(), "no-such-host.invalid:1"),
    )
    .unwrap();
    let (status, body) = http(g.admin, "GET", "/reload");
    assert_eq!(status, 400, "{body}");
    let (_, cfg) = http(g.admin, "GET", "/config");
    assert!(
        cfg.contains(&b_addr.to_string()) && !cfg.contains(&a_addr.to_string()),
        "{cfg}"
    );
    let mut c = ScpClient::connect(g.addr, ClientOptions::default()).unwrap();
    echo(&mut c, b"still b");
    assert_eq!(connects(b_addr), 21);

    // Add a back beside b, and change what only a restart changes.
    let text = hosts_toml(&[("a", a_addr), ("b", b_addr)])
        .replace("shards = 2", "shards = 3\nreuse_time = \"45s\"");
    std::fs::write(&file, text).unwrap();
    let (status, body) = http(g.admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("reuse_time") && body.contains("needs a restart (not applied): shards"),
        "{body}"
    );
    let (_, cfg) = http(g.admin, "GET", "/config");
    assert!(
        cfg.contains("reuse_time = \"45s\"") && cfg.contains(&a_addr.to_string()),
        "{cfg}"
    );
    let opts = ClientOptions {
        target: Some("a".into()),
        ..ClientOptions::default()
    };
    let mut to_a = ScpClient::connect(g.addr, opts).unwrap();
    echo(&mut to_a, b"to a again");
    assert_eq!(connects(a_addr), 201);
    echo_all(&mut live);
    echo_all(&mut newer);
}

#[test]
fn drain_refuses_new_sessions_and_serves_resumes() {
    let g = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "2",
    ]);
    let mut a = ScpClient::connect(g.addr, ClientOptions::default()).unwrap();
    echo(&mut a, b"before");
    let (status, body) = http(g.admin, "POST", "/drain");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["draining"].as_bool(), v["sessions"].as_u64()),
        (Some(true), Some(1))
    );
    assert!(ScpClient::connect(g.addr, ClientOptions::default()).is_err());
    a.abort();
    a.resume().unwrap();
    echo(&mut a, b"after");
    let m = scrape(g.admin);
    assert_eq!(sample(&m, "ringgate_draining"), 1);
    assert_eq!(
        sample(&m, "ringgate_new_sessions_refused_draining_total"),
        1
    );
    let (_, body) = http(g.admin, "DELETE", "/drain");
    assert!(body.contains("\"draining\": false"), "{body}");
    ScpClient::connect(g.addr, ClientOptions::default()).unwrap();

    // SIGUSR1 starts draining too.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(g.child.id() as i32, libc::SIGUSR1) };
    assert!(wait_until(LIMIT, || http(g.admin, "GET", "/drain")
        .1
        .contains("\"draining\": true")));
}

#[test]
fn sighup_reloads_and_a_goscon_file_is_shown_as_yaml() {
    let (a, b) = (upstream(), upstream());
    // goscon's default settings (the keys and values of its default
    // config.yaml), with its addresses on loopback and ports chosen here.
    let yaml = |up: SocketAddr| {
        format!(
            "manager: 127.0.0.1:0\ntcp: 127.0.0.1:0\nkcp: 127.0.0.1:0\n\
             scp:\n  handshake_timeout: 30\n  reuse_time: 30\n  reuse_buffer: 65536\n\
             tcp_option:\n  read_timeout: 0\n  keepalive: true\n  keepalive_interval: 60\n\
             kcp_option:\n  read_timeout: 60\n  fec_data_shards: 0\n  fec_parity_shards: 0\n  \
             read_buffer: 4194304\n  write_buffer: 4194304\n  opt_mtu: 1400\n  opt_nodelay: 1\n  \
             opt_interval: 10\n  opt_resend: 2\n  opt_nc: 1\n  opt_sndwnd: 2048\n  \
             opt_rcvwnd: 2048\n  opt_stream: true\n\
             upstream_option:\n  net: tcp\n\
             hosts:\n  - name: test1\n    addr: {up}\n    weight: 100\n"
        )
    };
    let file = temp("goscon.yaml", &yaml(a.local_addr()));
    let mut child = ringgate()
        .args([
            "serve",
            "--goscon-config",
            file.to_str().unwrap(),
            "--shards",
            "1",
        ])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let g = Served {
        addr: listen_addr(&line),
        admin: admin_addr(&line),
        child,
    };
    let (_, cfg) = http(g.admin, "GET", "/config");
    assert!(
        cfg.contains("reuse_time: 30") && cfg.contains(&a.local_addr().to_string()),
        "{cfg}"
    );
    std::fs::write(&file, yaml(b.local_addr())).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(g.child.id() as i32, libc::SIGHUP) };
    assert!(wait_until(LIMIT, || http(g.admin, "GET", "/config")
        .1
        .contains(&b.local_addr().to_string())));
    let mut c = ScpClient::connect(g.addr, ClientOptions::default()).unwrap();
    echo(&mut c, b"to b");
    assert_eq!(b.stats().accepted, 1);

    // The only warnings (at start, and again at the reload) are that one
    // shard's table cannot hold the default max_sessions: every key of
    // goscon's default file is read, KCP's too.
    let mut g = g;
    let _ = g.child.kill();
    let _ = g.child.wait();
    let mut err = String::new();
    g.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    for w in warnings {
        assert!(w.contains("not max_sessions"), "{err}");
    }
}
