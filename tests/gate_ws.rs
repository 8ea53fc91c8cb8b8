//! The WebSocket door over loopback, with tungstenite as the client: the
//! upgrade and its refusals, packets echoed one message per packet (echo
//! and embedded mode), SCP over a WebSocket, a session resumed across
//! transports (TCP, then WebSocket, then TCP) with no byte lost, and bad
//! frames closed with their codes while the gate serves others.

mod common;

use common::{config, payload, raw, read_to_close, start};
use ringgate::engine::ws::WsMode;
use ringgate::engine::{Door, Gate};
use ringgate::gate::Backend;
use ringgate::proto::client::{ClientEvent, ClientHandshake};
use ringgate::proto::session::Session;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// A gate with a packets door and an SCP door (in that order), path `/ws`.
fn ws_gate(max_message: usize) -> Gate {
    let mut cfg = config(Backend::Echo);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.doors = vec![
        (any, Door::Ws(WsMode::Packets)),
        (any, Door::Ws(WsMode::Scp)),
    ];
    cfg.ws.path = "/ws".into();
    cfg.ws.origins = vec!["https://game.example".into()];
    cfg.ws.max_message = max_message;
    start(cfg)
}

fn ws(addr: SocketAddr) -> Ws {
    let s = raw(addr);
    let (ws, resp) = tungstenite::client::client(format!("ws://{addr}/ws"), s).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

fn read_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match ws.read().expect("a message") {
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn packet(p: &[u8]) -> Vec<u8> {
    let mut out = (p.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(p);
    out
}

#[test]
fn packets_echo_one_message_per_packet() {
    let gate = ws_gate(1 << 20);
    let addr = gate.door_addrs()[0];
    let mut c = ws(addr);
    let packets: Vec<Vec<u8>> = (0..20).map(|n| packet(&payload(n, 1 + n * 301))).collect();
    // Two packets in one message, then one per message: what comes back is
    // one message per packet either way.
    let mut two = packets[0].clone();
    two.extend_from_slice(&packets[1]);
    c.send(Message::binary(two)).unwrap();
    for p in &packets[2..] {
        c.send(Message::binary(p.clone())).unwrap();
    }
    for p in &packets {
        assert_eq!(&read_binary(&mut c), p);
    }
    c.close(None).unwrap();
    common::assert_serving(gate.local_addr());
}

#[test]
fn packets_reach_embedded_workers_as_frames() {
    use ringgate::gate::embedded::{Builder, Event};
    let (handle, receivers) = Builder::new(SocketAddr::from(([127, 0, 0, 1], 0)))
        .shards(2)
        .engine(|c| {
            c.recv_buffers = 256;
            c.pin_threads = false;
            c.doors = vec![(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Door::Ws(WsMode::Packets),
            )];
            c.ws.path = "/ws".into();
        })
        .start()
        .expect("gate starts");
    let workers: Vec<_> = receivers
        .into_iter()
        .map(|rx| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                while let Some(ev) = rx.recv() {
                    if let Event::Frame { session, data } = ev {
                        let mut back = b"re:".to_vec();
                        back.extend_from_slice(&data);
                        let _ = handle.send(session, back);
                    }
                }
            })
        })
        .collect();
    let mut c = ws(handle.door_addrs()[0]);
    for n in 0..10 {
        let p = payload(n, 10 + n * 50);
        c.send(Message::binary(packet(&p))).unwrap();
        let mut want = b"re:".to_vec();
        want.extend_from_slice(&p);
        assert_eq!(read_binary(&mut c), packet(&want));
    }
    drop(c);
    handle.shutdown();
    handle.join();
    for w in workers {
        w.join().unwrap();
    }
}

/// An SCP client driven over any transport, one connection at a time.
trait Transport {
    fn send(&mut self, b: &[u8]);
    /// Some bytes (empty: the connection ended).
    fn recv(&mut self) -> Vec<u8>;
}

impl Transport for TcpStream {
    fn send(&mut self, b: &[u8]) {
        self.write_all(b).unwrap();
    }
    fn recv(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        let n = self.read(&mut buf).unwrap_or(0);
        buf.truncate(n);
        buf
    }
}

impl Transport for Ws {
    fn send(&mut self, b: &[u8]) {
        WebSocket::send(self, Message::binary(b.to_vec())).unwrap();
    }
    fn recv(&mut self) -> Vec<u8> {
        match self.read() {
            Ok(Message::Binary(b)) => b.to_vec(),
            _ => Vec::new(),
        }
    }
}

struct Scp {
    session: Session,
    conn: Box<dyn Transport>,
    pending: Vec<u8>,
}

fn handshake(conn: &mut dyn Transport, mut hs: ClientHandshake) -> (ClientEvent, Vec<u8>) {
    conn.send(&hs.take_output());
    loop {
        let b = conn.recv();
        assert!(!b.is_empty(), "closed during the handshake");
        let used = hs.recv(&b);
        match hs.poll() {
            ClientEvent::NeedMore => continue,
            ev => return (ev, b[used..].to_vec()),
        }
    }
}

impl Scp {
    fn open(mut conn: Box<dyn Transport>) -> Scp {
        let hs = ClientHandshake::new_session(rand::random(), None, None);
        let (ClientEvent::Established { id, secret }, pending) = handshake(&mut *conn, hs) else {
            panic!("not established");
        };
        Scp {
            session: Session::new(id, secret, 65536),
            conn,
            pending,
        }
    }

    fn flush(&mut self) {
        let w = self.session.window();
        let bytes: Vec<u8> = w.slices_from(w.flushed()).flatten().copied().collect();
        if !bytes.is_empty() {
            self.conn.send(&bytes);
            self.session.window_mut().mark_sent(bytes.len());
        }
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.session.encrypt(data);
            data = &data[n..];
            self.flush();
        }
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            let b = self.conn.recv();
            assert!(!b.is_empty(), "connection ended");
            self.pending.extend_from_slice(&b);
        }
        let mut out: Vec<u8> = self.pending.drain(..n).collect();
        self.session.decrypt(&mut out);
        out
    }

    /// Drops the connection (the gate sees it go) and resumes on `conn`.
    fn resume_on(&mut self, mut conn: Box<dyn Transport>) {
        let req = self.session.resume_request();
        let hs = ClientHandshake::resume(req.id, req.index, req.received, self.session.secret());
        let (ev, pending) = handshake(&mut *conn, hs);
        let ClientEvent::Resumed { server_received } = ev else {
            panic!("resume refused: {ev:?}");
        };
        self.session.resumed(server_received).unwrap();
        self.conn = conn;
        // Undelivered bytes of the old connection are gone with it; the
        // server replays them after the resume.
        self.pending = pending;
        self.flush();
    }
}

#[test]
fn scp_over_websocket_echoes() {
    let gate = ws_gate(1 << 20);
    let mut c = Scp::open(Box::new(ws(gate.door_addrs()[1])));
    for n in 0..10 {
        let msg = payload(n, 1 + n * 7001);
        c.write(&msg);
        assert_eq!(c.read_exact(msg.len()), msg);
    }
    assert_eq!(gate.stats().sessions_opened, 1);
}

#[test]
fn a_session_resumes_across_transports_with_no_byte_lost() {
    let gate = ws_gate(1 << 20);
    let (tcp, wsa) = (gate.local_addr(), gate.door_addrs()[1]);
    let mut c = Scp::open(Box::new(raw(tcp)));
    let msg = payload(1, 40_000);
    c.write(&msg);
    assert_eq!(c.read_exact(1000), msg[..1000]);
    // Over a WebSocket, with the rest of the echo replayed or still coming.
    c.resume_on(Box::new(ws(wsa)));
    assert_eq!(c.read_exact(39_000), msg[1000..]);
    let more = payload(2, 30_000);
    c.write(&more);
    assert_eq!(c.read_exact(10), more[..10]);
    // And back over TCP.
    c.resume_on(Box::new(raw(tcp)));
    assert_eq!(c.read_exact(29_990), more[10..]);
    let last = payload(3, 5000);
    c.write(&last);
    assert_eq!(c.read_exact(5000), last);
    // More hops: with two shards, some of these connections land on the
    // shard that does not own the session and travel to it with their
    // WebSocket state.
    for n in 0..6 {
        let msg = payload(10 + n, 3000);
        c.write(&msg);
        assert_eq!(c.read_exact(100), msg[..100]);
        if n % 2 == 0 {
            c.resume_on(Box::new(ws(wsa)));
        } else {
            c.resume_on(Box::new(raw(tcp)));
        }
        assert_eq!(c.read_exact(2900), msg[100..]);
    }
    assert_eq!(gate.stats().sessions_resumed, 8);
    assert_eq!(gate.stats().resumes_failed, 0);
}

/// Sends an upgrade request by hand; returns the whole answer.
fn upgrade_answer(addr: SocketAddr, req: &str) -> String {
    let mut s = raw(addr);
    s.write_all(req.as_bytes()).unwrap();
    String::from_utf8_lossy(&read_to_close(&mut s)).into_owned()
}

const REQ: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn bad_upgrades_get_http_errors_and_others_are_served() {
    let gate = ws_gate(1 << 20);
    let addr = gate.door_addrs()[0];
    let cases = [
        (REQ.replace("/ws", "/nope"), 404),
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 426),
        (REQ.replace("Version: 13", "Version: 7"), 426),
        (REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
        ("\x16\x03\x01 not http\r\n\r\n".to_string(), 400),
        (
            REQ.replace("Host: x\r\n", "Host: x\r\nOrigin: https://evil.example\r\n"),
            403,
        ),
    ];
    for (req, status) in cases {
        let answer = upgrade_answer(addr, &req);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?}: {answer}"
        );
    }
    // An allowed origin is upgraded.
    let ok = REQ.replace("Host: x\r\n", "Host: x\r\nOrigin: https://game.example\r\n");
    let mut s = raw(addr);
    s.write_all(ok.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101 "));
    let mut c = ws(addr);
    c.send(Message::binary(packet(b"still here"))).unwrap();
    assert_eq!(read_binary(&mut c), packet(b"still here"));
}

/// Reads until the gate's close frame; returns its code.
fn close_code(c: &mut Ws) -> CloseCode {
    loop {
        match c.read() {
            Ok(Message::Close(Some(f))) => return f.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn bad_frames_close_with_their_codes_and_others_are_served() {
    let gate = ws_gate(1000);
    let addr = gate.door_addrs()[0];
    let mut bystander = ws(addr);
    // Unmasked: 1002, written by hand (tungstenite always masks).
    let mut s = raw(addr);
    s.write_all(REQ.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(&[0x82, 0x03, 0, 1, 7]).unwrap();
    assert_eq!(read_to_close(&mut s), [0x88, 2, 0x03, 0xEA]);
    // Oversized: 1009.
    let mut c = ws(addr);
    c.send(Message::binary(vec![0u8; 1001])).unwrap();
    assert_eq!(close_code(&mut c), CloseCode::Size);
    // Text: 1003.
    let mut c = ws(addr);
    c.send(Message::text("hello")).unwrap();
    assert_eq!(close_code(&mut c), CloseCode::Unsupported);
    // A client's close is answered with its code.
    let mut c = ws(addr);
    c.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(close_code(&mut c), CloseCode::Library(4001));
    // Pings are answered; the bystander was never disturbed.
    bystander.send(Message::Ping(b"p".to_vec().into())).unwrap();
    match bystander.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        other => panic!("unexpected {other:?}"),
    }
    bystander.send(Message::binary(packet(b"ok"))).unwrap();
    assert_eq!(read_binary(&mut bystander), packet(b"ok"));
    let stats = gate.stats();
    assert!(stats.sessions_opened >= 5);
}
