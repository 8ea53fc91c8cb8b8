//! The gate's KCP door with an independent KCP implementation as the
//! client's transport: skywind3000's C ikcp through PyPI's `kcp` package
//! (`tests/interop/kcp_pipe.py`, a separate process with its own UDP
//! socket), carrying an SCP session driven by the crate's client-side
//! protocol code. Skipped, with a line saying so, where python3 or the
//! package is missing (`.ci/run` installs it).

mod common;

use common::{config, payload, start};
use ringgate::engine::Config;
use ringgate::engine::kcp::KcpListen;
use ringgate::gate::Backend;
use ringgate::proto::client::{ClientEvent, ClientHandshake};
use ringgate::proto::session::Session;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

struct Pipe {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl Pipe {
    fn open(addr: std::net::SocketAddr) -> Option<Pipe> {
        let ok = Command::new("python3")
            .args(["-c", "import kcp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/kcp_pipe.py");
        // The wrapper takes a C int.
        let conv: u32 = (rand::random::<u32>() >> 1) | 1;
        let mut child = Command::new("python3")
            .arg(script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(conv.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = child.stdout.take()?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Some(Pipe {
            child,
            stdin,
            rx,
            pending: Vec::new(),
        })
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            let chunk = self
                .rx
                .recv_timeout(LIMIT)
                .expect("the gate answers through the C KCP peer");
            self.pending.extend_from_slice(&chunk);
        }
        self.pending.drain(..n).collect()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn scp_over_c_ikcp() {
    let gate = start(Config {
        kcp: Some(KcpListen::new("127.0.0.1:0".parse().unwrap())),
        ..config(Backend::Echo)
    });
    let Some(mut pipe) = Pipe::open(gate.kcp_addr().unwrap()) else {
        eprintln!("SKIPPED: python3 with PyPI's `kcp` package is not available");
        return;
    };
    // The SCP handshake, then an echo of many writes, all over C ikcp.
    let mut hs = ClientHandshake::new_session(rand::random(), None, None);
    pipe.stdin.write_all(&hs.take_output()).unwrap();
    pipe.stdin.flush().unwrap();
    let (id, secret) = loop {
        let b = pipe.read_exact(1);
        let used = hs.recv(&b);
        assert_eq!(used, 1);
        match hs.poll() {
            ClientEvent::NeedMore => continue,
            ClientEvent::Established { id, secret } => break (id, secret),
            ev => panic!("handshake: {ev:?}"),
        }
    };
    let mut session = Session::new(id, secret, 1 << 20);
    let mut sent = Vec::new();
    for n in 0..40 {
        let msg = payload(n, 100 + n * 531);
        let mut rest = &msg[..];
        while !rest.is_empty() {
            let k = session.encrypt(rest);
            rest = &rest[k..];
        }
        sent.extend_from_slice(&msg);
        let w = session.window();
        let pieces: Vec<Vec<u8>> = w.slices_from(w.flushed()).map(|s| s.to_vec()).collect();
        for p in pieces {
            pipe.stdin.write_all(&p).unwrap();
            session.window_mut().mark_sent(p.len());
        }
        pipe.stdin.flush().unwrap();
    }
    let mut back = pipe.read_exact(sent.len());
    session.decrypt(&mut back);
    assert!(back == sent, "the echo through C ikcp is the stream sent");
    assert_eq!(gate.stats().sessions_opened, 1);
}
