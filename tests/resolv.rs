//! goscon's `upstream_option.resolv` against a real DNS server: dnsmasq on
//! loopback answers `game1.test` from a hosts file. A gate with no static
//! hosts sends a client asking for `game1` to the address it names (after
//! the first session, which finds the name not cached yet and closes),
//! closes sessions for names the server does not know, follows a changed
//! answer once its TTL has passed, and takes new resolv settings on reload.

mod common;

use common::{
    Killed, admin_addr, config, first_line, http, listen_addr, payload, ringgate, start, wait_until,
};
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::engine::Gate;
use ringgate::gate::Backend;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Generous: the first session for a name misses, and TTLs must pass.
const LIMIT: Duration = Duration::from_secs(30);
/// The TTL dnsmasq gives the names of its hosts file.
const TTL_SECS: u32 = 1;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringgate-resolv-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// dnsmasq serving `hosts` (its only source) on a loopback port, answering
/// NXDOMAIN for any other name under `test.` and `other.`; `None` when
/// dnsmasq is not installed.
fn dnsmasq(hosts: &Path) -> Option<(Killed, SocketAddr)> {
    if Command::new("dnsmasq").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: dnsmasq not found (Debian package `dnsmasq-base`; .ci/run installs it)"
        );
        return None;
    }
    // A port free now; dnsmasq binds it (UDP and TCP) right after, and is
    // started again on another one should it have been taken meanwhile.
    for _ in 0..5 {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--local=/test/",
            "--local=/other/",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--local-ttl={TTL_SECS}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // As root dnsmasq would change to an unprivileged user that may not
        // read the hosts file.
        if unsafe { libc::geteuid() } == 0 {
            cmd.arg("--user=root");
        }
        let mut child = Killed(cmd.spawn().expect("dnsmasq starts"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut exited = None;
        let up = wait_until(LIMIT, || {
            exited = child.0.try_wait().unwrap();
            exited.is_some() || query_a(addr, "game1.test").is_some()
        });
        match exited {
            None if up => return Some((child, addr)),
            None => panic!("dnsmasq does not answer on {addr}"),
            Some(status) => eprintln!("dnsmasq on port {port} exited ({status}); trying another"),
        }
    }
    panic!("dnsmasq did not start");
}

/// One A query by hand, so the test knows dnsmasq is up; the answer's
/// response code.
fn query_a(server: SocketAddr, name: &str) -> Option<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, server).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    (n >= 4).then_some(buf[3] & 0x0f)
}

/// A plain echo server on `ip`, at `port` (0: any).
fn echo_at(ip: [u8; 4], port: u16) -> Gate {
    let mut cfg = config(Backend::Echo);
    cfg.scp = false;
    cfg.shards = 1;
    cfg.listen = SocketAddr::from((ip, port));
    start(cfg)
}

struct Served {
    child: Killed,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn serve(file: &Path) -> Served {
    let mut child = ringgate()
        .args(["serve", "--config"])
        .arg(file)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .spawn()
        .expect("binary runs");
    let line = first_line(&mut child);
    Served {
        child: Killed(child),
        addr: listen_addr(&line),
        admin: admin_addr(&line),
    }
}

fn sample(admin: SocketAddr, name: &str) -> u64 {
    let (_, metrics) = http(admin, "GET", "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn connects(admin: SocketAddr, upstream: SocketAddr) -> u64 {
    sample(
        admin,
        &format!("ringgate_upstream_connects_total{{upstream=\"{upstream}\"}}"),
    )
}

/// How one session asking for `target` went.
#[derive(Debug, PartialEq)]
enum Outcome {
    Echoed,
    /// The gate closed it (after or during the handshake).
    Closed,
}

fn session(gate: SocketAddr, target: &str, n: usize) -> Outcome {
    let opts = ClientOptions {
        target: Some(target.into()),
        ..ClientOptions::default()
    };
    let Ok(mut c) = ScpClient::connect(gate, opts) else {
        return Outcome::Closed;
    };
    c.stream().set_read_timeout(Some(LIMIT)).unwrap();
    let msg = payload(n, 100);
    if c.write_all(&msg).is_err() {
        return Outcome::Closed;
    }
    let mut back = vec![0u8; msg.len()];
    match c.read_exact(&mut back) {
        Ok(()) => {
            assert_eq!(back, msg);
            Outcome::Echoed
        }
        Err(e) => {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the gate neither echoed nor closed: {e}"
            );
            Outcome::Closed
        }
    }
}

fn settings(suffix: &str, port: u16, dns: SocketAddr) -> String {
    format!(
        "shards = 1\n\
         [upstream]\nconnect_timeout = \"2s\"\n\
         [upstream.resolv]\npattern = \"^game[0-9]+$\"\nprefix = \"\"\nsuffix = \"{suffix}\"\n\
         port = {port}\nnameserver = \"{dns}\"\nmin_ttl = \"0s\"\nnegative_ttl = \"1s\"\n"
    )
}

#[test]
fn targets_resolve_through_dns_follow_ttls_and_reload() {
    let d = dir();
    let hosts = d.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 game1.test\n127.0.0.1 game1.other\n").unwrap();
    let Some((dns, dns_addr)) = dnsmasq(&hosts) else {
        return;
    };
    // Two echo servers on one port, at two loopback addresses.
    let first = echo_at([127, 0, 0, 1], 0);
    let port = first.local_addr().port();
    let second = echo_at([127, 0, 0, 2], port);
    let (first_addr, second_addr) = (first.local_addr(), second.local_addr());

    let file = d.join("ringgate.toml");
    std::fs::write(&file, settings(".test", port, dns_addr)).unwrap();
    let g = serve(&file);

    // The first session may find the name not cached yet and close; one
    // soon after is echoed by the server the name points to.
    let mut n = 0;
    assert!(wait_until(LIMIT, || {
        n += 1;
        session(g.addr, "game1", n) == Outcome::Echoed
    }));
    assert!(connects(g.admin, first_addr) >= 1);
    assert_eq!(session(g.addr, "game1", 1000), Outcome::Echoed);

    // A name the DNS server does not know, one the pattern excludes, and
    // none at all: there is no host to fall back on, so each session closes
    // (and the gate goes on serving). The unknown name is tried until its
    // lookup has failed, so that the cached failure is seen too.
    let failed = "ringgate_resolv_total{outcome=\"failed\"}";
    assert!(wait_until(LIMIT, || {
        assert_eq!(session(g.addr, "game9", 2000), Outcome::Closed);
        sample(g.admin, failed) >= 1
    }));
    for target in ["game9", "lobby", ""] {
        assert_eq!(session(g.addr, target, 2001), Outcome::Closed, "{target:?}");
    }
    assert!(
        sample(
            g.admin,
            "ringgate_sessions_closed_total{reason=\"upstream_unreachable\"}"
        ) >= 4
    );
    assert_eq!(session(g.addr, "game1", 3000), Outcome::Echoed);
    for outcome in ["hit", "miss", "resolved"] {
        let name = format!("ringgate_resolv_total{{outcome=\"{outcome}\"}}");
        assert!(sample(g.admin, &name) >= 1, "{name}");
    }

    // The answer changes; once its TTL has passed new sessions follow it.
    std::fs::write(&hosts, "127.0.0.2 game1.test\n127.0.0.1 game1.other\n").unwrap();
    unsafe { libc::kill(dns.0.id() as i32, libc::SIGHUP) };
    let before = connects(g.admin, second_addr);
    let mut n = 4000;
    assert!(
        wait_until(LIMIT, || {
            n += 1;
            session(g.addr, "game1", n) == Outcome::Echoed
                && connects(g.admin, second_addr) > before
        }),
        "new sessions reach the new address"
    );

    // A reload that changes the suffix: new sessions look up game1.other,
    // which still points to the first server.
    std::fs::write(&file, settings(".other", port, dns_addr)).unwrap();
    let (status, body) = http(g.admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream.resolv"), "{body}");
    let before = connects(g.admin, first_addr);
    assert!(
        wait_until(LIMIT, || {
            n += 1;
            session(g.addr, "game1", n) == Outcome::Echoed && connects(g.admin, first_addr) > before
        }),
        "new sessions follow the reloaded settings"
    );
    let (_, cfg) = http(g.admin, "GET", "/config");
    assert!(cfg.contains("suffix = \".other\""), "{cfg}");
    drop(g.child);
    let _ = std::fs::remove_dir_all(&d);
}
