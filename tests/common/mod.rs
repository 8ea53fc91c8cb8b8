//! Shared helpers for the integration tests: start a gate on an ephemeral
//! loopback port with test-sized limits.

#![allow(dead_code)]

use ringgate::engine::{Config, Gate};
use ringgate::gate::Backend;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub fn config(backend: Backend) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 2,
        recv_buffers: 256,
        pin_threads: false,
        backend,
        ..Config::default()
    }
}

pub fn start(cfg: Config) -> Gate {
    Gate::start(cfg).expect("gate starts")
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Deterministic payload for message `n`.
pub fn payload(n: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ n.wrapping_mul(7919)) as u8)
        .collect()
}

use ringgate::client::{ClientOptions, ScpClient};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Opens a raw TCP connection with a test timeout.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes one handshake record.
pub fn send_record(s: &mut TcpStream, content: &[u8]) {
    let mut out = Vec::new();
    ringgate::proto::message::encode_record(content, &mut out);
    s.write_all(&out).unwrap();
}

/// Reads everything until the server closes (or the timeout fires).
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("expected the gate to close the connection, got {e}"),
        }
    }
}

/// The content of the single record in `bytes`.
pub fn record_content(bytes: &[u8]) -> &[u8] {
    assert!(bytes.len() >= 2, "a record: {bytes:?}");
    let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    assert_eq!(bytes.len(), 2 + len, "exactly one record: {bytes:?}");
    &bytes[2..]
}

/// Proves the gate still serves: a new session echoes a message.
pub fn assert_serving(addr: SocketAddr) {
    let mut c =
        ScpClient::connect(addr, ClientOptions::default()).expect("gate still accepts sessions");
    let msg = payload(4242, 777);
    c.write_all(&msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// The `ringgate` binary as a command: warnings only, its stdout piped (the
/// start-up line is read from it), its stderr the test's.
pub fn ringgate() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"));
    cmd.env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    cmd
}

/// Reads a started binary's start-up line (its first line of output).
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("a start-up line");
    line
}

/// The word after `word` in a start-up line.
fn word_after<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    line.split_whitespace().skip_while(|w| *w != word).nth(1)
}

/// The address a start-up line says the binary listens on ("... on ADDR").
pub fn listen_addr(line: &str) -> SocketAddr {
    word_after(line, "on")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("start-up line names the address: {line:?}"))
}

/// The admin endpoint a start-up line names ("... at http://ADDR/").
pub fn admin_addr(line: &str) -> SocketAddr {
    word_after(line, "at")
        .and_then(|a| {
            a.trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("start-up line names the admin address: {line:?}"))
}

/// One HTTP/1.1 request to an admin endpoint; the status and the body.
pub fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// A child process killed (and reaped) when the test lets go of it.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
