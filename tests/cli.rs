//! The `ringgate` binary: the startup line, serving, and a clean stop.

mod common;

use common::{assert_serving, first_line, listen_addr, payload, ringgate, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::Duration;

fn spawn(args: &[&str]) -> (Child, SocketAddr, String) {
    let mut child = ringgate().args(args).spawn().expect("binary runs");
    let line = first_line(&mut child);
    (child, listen_addr(&line), line)
}

fn stop(mut child: Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    assert!(wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(
        status.unwrap().success(),
        "exit 0 after SIGTERM: {status:?}"
    );
}

#[test]
fn serve_prints_where_it_listens_serves_and_stops_on_sigterm() {
    let (child, addr, line) = spawn(&["serve", "--listen", "127.0.0.1:0", "--shards", "2"]);
    assert!(
        line.contains("scp mode") && line.contains("2 shards") && line.contains("echo"),
        "{line}"
    );
    assert_serving(addr);
    // A session open while the gate stops is closed, not left hanging.
    let mut c = ringgate::client::ScpClient::connect(addr, Default::default()).unwrap();
    stop(child);
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn echo_command_is_a_plain_echo_server() {
    let (child, addr, line) = spawn(&["echo", "--listen", "127.0.0.1:0", "--shards", "1"]);
    assert!(line.contains("plain mode"), "{line}");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = payload(1, 5000);
    s.write_all(&msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    stop(child);
}

#[test]
fn serve_reads_a_goscon_config_as_it_is() {
    let dir = std::env::temp_dir().join(format!("ringgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        "tcp: 127.0.0.1:0\nscp:\n  handshake_timeout: 10\n  reuse_time: 45\nhosts:\n  - name: lobby\n    addr: 127.0.0.1:9\n    weight: 3\n",
    )
    .unwrap();
    let (child, _addr, line) = spawn(&[
        "serve",
        "--goscon-config",
        file.to_str().unwrap(),
        "--shards",
        "1",
    ]);
    assert!(line.contains("1 upstream host(s) over tcp"), "{line}");
    stop(child);

    // The repository's fixture names hosts that do not resolve here: a clear refusal.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/goscon-config.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["serve", "--goscon-config", fixture])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot resolve"));
}

#[test]
fn bad_settings_are_one_clear_line_and_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["serve", "--upstream", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NAME=HOST:PORT"), "{err}");
}
