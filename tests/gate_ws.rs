//! The WebSocket doors over loopback, with tungstenite as the client (over
//! rustls for wss): the upgrade and its refusals, packets echoed one
//! message per packet (echo and embedded mode), SCP over a WebSocket with
//! and without TLS, a session resumed across transports (TCP, WebSocket,
//! WebSocket over TLS) with no byte lost, bad frames closed with their
//! codes while the gate serves others, TLS garbage and stalled handshakes
//! closed while others are served, and the close codes the gate sends when
//! it ends a WebSocket (idle, take-over, kick, draining, shutdown).

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

fn read_binary<S: Read + Write>(ws: &mut WebSocket<S>) -> Vec<u8> {
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

impl<S: Read + Write> Transport for WebSocket<S> {
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

/// A masked client frame (mask 0: the payload is sent as it is).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_close_flood_and_a_ping_flood_end_those_connections_only() {
    let gate = ws_gate(1 << 20);
    let addr = gate.door_addrs()[0];
    let mut bystander = ws(addr);
    // 200 connections, each upgraded, then a close frame followed by a
    // flood of further close frames, pings and data it must not act on.
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut s = raw(addr);
        s.write_all(REQ.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let mut burst = Vec::new();
        for i in 0..50u16 {
            burst.extend(masked(0x8, &(1000 + i).to_be_bytes()));
            burst.extend(masked(0x9, b"ping"));
            burst.extend(masked(0x2, &packet(b"late")));
        }
        // The gate may close while the burst is still arriving.
        let _ = s.write_all(&burst);
        flood.push(s);
    }
    // Each answers the first close only (code 1000 echoed), then ends.
    for mut s in flood {
        let answer = read_to_close(&mut s);
        assert_eq!(
            answer,
            [0x88, 2, 0x03, 0xE8],
            "one close frame, then the end"
        );
    }
    // A ping flood on one connection: answered, and its memory bounded by
    // one held payload (the connection stays usable).
    let mut pinger = ws(addr);
    for i in 0..2000u32 {
        pinger
            .write(Message::Ping(i.to_be_bytes().to_vec().into()))
            .unwrap();
    }
    pinger.flush().unwrap();
    pinger
        .send(Message::binary(packet(b"after pings")))
        .unwrap();
    assert_eq!(read_binary(&mut pinger), packet(b"after pings"));
    // The bystander was never disturbed.
    bystander.send(Message::binary(packet(b"ok"))).unwrap();
    assert_eq!(read_binary(&mut bystander), packet(b"ok"));
}

// ---- close codes ------------------------------------------------------------

/// A gate with an SCP WebSocket door (path `/ws`) and `idle` as its idle
/// timeout.
fn scp_ws_gate(idle: Option<std::time::Duration>) -> Gate {
    let mut cfg = config(Backend::Echo);
    cfg.doors = vec![(SocketAddr::from(([127, 0, 0, 1], 0)), Door::Ws(WsMode::Scp))];
    cfg.ws.path = "/ws".into();
    cfg.idle_timeout = idle;
    start(cfg)
}

/// Opens an SCP session over a WebSocket; returns it with its id.
fn scp_session(addr: SocketAddr) -> (Ws, u32, Session) {
    let mut c = ws(addr);
    let hs = ClientHandshake::new_session(rand::random(), None, None);
    let (ClientEvent::Established { id, secret }, _) = handshake(&mut c, hs) else {
        panic!("not established");
    };
    (c, id, Session::new(id, secret, 65536))
}

/// The close frame's code and reason.
fn close_frame<S: Read + Write>(c: &mut WebSocket<S>) -> (CloseCode, String) {
    loop {
        match c.read() {
            Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn idle_timeout_closes_with_going_away_and_the_session_resumes() {
    let gate = scp_ws_gate(Some(std::time::Duration::from_millis(300)));
    let addr = gate.door_addrs()[0];
    let (mut c, _, mut session) = scp_session(addr);
    let (code, reason) = close_frame(&mut c);
    assert_eq!((code, reason.as_str()), (CloseCode::Away, "idle timeout"));
    // The session was only detached: it resumes.
    let req = session.resume_request();
    let hs = ClientHandshake::resume(req.id, req.index, req.received, session.secret());
    let mut c = ws(addr);
    let (ev, _) = handshake(&mut c, hs);
    assert!(matches!(ev, ClientEvent::Resumed { .. }), "{ev:?}");
}

#[test]
fn take_over_kick_draining_and_shutdown_close_with_their_codes() {
    let gate = scp_ws_gate(None);
    let addr = gate.door_addrs()[0];
    // Take-over: the session resumed on a new connection; the old one is
    // told it is done (1000).
    let (mut old, _, mut session) = scp_session(addr);
    let req = session.resume_request();
    let hs = ClientHandshake::resume(req.id, req.index, req.received, session.secret());
    let mut new = ws(addr);
    let (ev, _) = handshake(&mut new, hs);
    assert!(matches!(ev, ClientEvent::Resumed { .. }), "{ev:?}");
    let (code, reason) = close_frame(&mut old);
    assert_eq!(code, CloseCode::Normal);
    assert!(reason.contains("another connection"), "{reason}");
    // Kicked by the operator: 1008.
    let (mut kicked, id, _) = scp_session(addr);
    assert!(gate.control().kick(id));
    assert_eq!(
        close_frame(&mut kicked),
        (CloseCode::Policy, "kicked".into())
    );
    // Draining: a new session is refused with 1001.
    gate.control().set_draining(true);
    let mut refused = ws(addr);
    refused
        .send(Message::binary(
            ClientHandshake::new_session(1, None, None).take_output(),
        ))
        .unwrap();
    assert_eq!(close_frame(&mut refused).0, CloseCode::Away);
    gate.control().set_draining(false);
    // Shutdown: 1001 for every open WebSocket.
    let (mut last, _, _) = scp_session(addr);
    gate.shutdown();
    assert_eq!(
        close_frame(&mut last),
        (CloseCode::Away, "gate shutting down".into())
    );
}

// ---- wss ----------------------------------------------------------------------

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and 127.0.0.1: (cert, key) PEM.
fn keys() -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn tls_keys(cert: &str, key: &str) -> std::sync::Arc<ringgate::engine::ws::TlsKeys> {
    ringgate::engine::ws::TlsKeys::new(
        ringgate::proto::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap(),
    )
}

/// A TLS connection to `addr` that trusts `ca`, handshake done.
fn tls(addr: SocketAddr, ca: &str) -> std::io::Result<Tls> {
    let cfg = ringgate::proto::tls::client_config(ca.as_bytes()).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).expect("client");
    let mut s = rustls::StreamOwned::new(conn, raw(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    Ok(s)
}

fn wss(addr: SocketAddr, ca: &str) -> WebSocket<Tls> {
    let s = tls(addr, ca).expect("TLS handshake");
    let (ws, resp) = tungstenite::client::client("ws://localhost/ws", s).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// A gate with wss packets, wss SCP and ws SCP doors (in that order), path
/// `/ws`, serving `cert`.
fn wss_gate(cert: &str, key: &str, handshake: std::time::Duration) -> Gate {
    let mut cfg = config(Backend::Echo);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.doors = vec![
        (any, Door::Wss(WsMode::Packets)),
        (any, Door::Wss(WsMode::Scp)),
        (any, Door::Ws(WsMode::Scp)),
    ];
    cfg.ws.path = "/ws".into();
    cfg.tls = Some(tls_keys(cert, key));
    cfg.handshake_timeout = handshake;
    start(cfg)
}

#[test]
fn a_tls_door_needs_a_certificate() {
    let mut cfg = config(Backend::Echo);
    cfg.doors = vec![(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Door::Wss(WsMode::Scp),
    )];
    assert!(Gate::start(cfg).is_err());
}

#[test]
fn packets_and_scp_over_wss() {
    let (cert, key) = keys();
    let gate = wss_gate(&cert, &key, std::time::Duration::from_secs(30));
    let mut c = wss(gate.door_addrs()[0], &cert);
    // Large and small packets, several per message and one per message.
    let packets: Vec<Vec<u8>> = (0..12).map(|n| packet(&payload(n, 1 + n * 5001))).collect();
    c.send(Message::binary(packets[..3].concat())).unwrap();
    for p in &packets[3..] {
        c.send(Message::binary(p.clone())).unwrap();
    }
    for p in &packets {
        assert_eq!(&read_binary(&mut c), p);
    }
    let mut s = Scp::open(Box::new(wss(gate.door_addrs()[1], &cert)));
    for n in 0..6 {
        let msg = payload(n, 1 + n * 30_001);
        s.write(&msg);
        assert_eq!(s.read_exact(msg.len()), msg);
    }
    // A client's close is answered, and the TLS connection ends cleanly.
    c.close(None).unwrap();
    assert!(matches!(c.read(), Ok(Message::Close(_))));
}

#[test]
fn a_session_resumes_across_tcp_ws_and_wss_with_no_byte_lost() {
    let (cert, key) = keys();
    let gate = wss_gate(&cert, &key, std::time::Duration::from_secs(30));
    let (tcp, wssa, wsa) = (
        gate.local_addr(),
        gate.door_addrs()[1],
        gate.door_addrs()[2],
    );
    let mut c = Scp::open(Box::new(wss(wssa, &cert)));
    let msg = payload(1, 40_000);
    c.write(&msg);
    assert_eq!(c.read_exact(1000), msg[..1000]);
    c.resume_on(Box::new(raw(tcp)));
    assert_eq!(c.read_exact(39_000), msg[1000..]);
    // Two shards: some of these land on the shard that does not own the
    // session and travel to it with their TLS and WebSocket state.
    for n in 0..9 {
        let msg = payload(10 + n, 20_000);
        c.write(&msg);
        assert_eq!(c.read_exact(100), msg[..100]);
        match n % 3 {
            0 => c.resume_on(Box::new(wss(wssa, &cert))),
            1 => c.resume_on(Box::new(ws(wsa))),
            _ => c.resume_on(Box::new(raw(tcp))),
        }
        assert_eq!(c.read_exact(19_900), msg[100..]);
    }
    assert_eq!(gate.stats().sessions_resumed, 10);
    assert_eq!(gate.stats().resumes_failed, 0);
}

#[test]
fn tls_garbage_and_stalled_handshakes_are_closed_and_others_served() {
    let (cert, key) = keys();
    let gate = wss_gate(&cert, &key, std::time::Duration::from_millis(500));
    let addr = gate.door_addrs()[0];
    let mut bystander = wss(addr, &cert);
    // Plain HTTP at a TLS door: an alert record, then the close.
    let mut s = raw(addr);
    s.write_all(REQ.as_bytes()).unwrap();
    let answer = read_to_close(&mut s);
    assert_eq!(answer.first(), Some(&21), "an alert: {answer:?}");
    // A client that does not trust the certificate fails its handshake;
    // the gate closes.
    let (other, _) = keys();
    assert!(tls(addr, &other).is_err());
    // Silent after connecting, and silent mid-handshake: closed at the
    // handshake timeout.
    let mut silent = raw(addr);
    assert!(read_to_close(&mut silent).is_empty());
    let mut half = raw(addr);
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
        .unwrap();
    assert!(read_to_close(&mut half).is_empty());
    // TLS done, but no upgrade: also closed at the timeout.
    let mut no_upgrade = tls(addr, &cert).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(no_upgrade.read(&mut buf), Ok(0) | Err(_)));
    bystander
        .send(Message::binary(packet(b"still here")))
        .unwrap();
    assert_eq!(read_binary(&mut bystander), packet(b"still here"));
    assert!(gate.stats().handshake_failed >= 4);
}

#[test]
fn wss_closes_with_codes_too() {
    let (cert, key) = keys();
    let mut cfg = config(Backend::Echo);
    cfg.doors = vec![(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Door::Wss(WsMode::Scp),
    )];
    cfg.ws.path = "/ws".into();
    cfg.tls = Some(tls_keys(&cert, &key));
    cfg.idle_timeout = Some(std::time::Duration::from_millis(300));
    let gate = start(cfg);
    let mut c = wss(gate.door_addrs()[0], &cert);
    let hs = ClientHandshake::new_session(rand::random(), None, None);
    let (ev, _) = handshake(&mut c, hs);
    assert!(matches!(ev, ClientEvent::Established { .. }));
    assert_eq!(
        close_frame(&mut c),
        (CloseCode::Away, "idle timeout".into())
    );
    // After the close frame the TLS connection ends with close_notify.
    let mut buf = [0u8; 16];
    assert_eq!(c.get_mut().read(&mut buf).unwrap(), 0);
}

/// The certificate of whatever answers at `addr`, as DER.
fn served_cert(addr: SocketAddr) -> Vec<u8> {
    let s = tls_insecure(addr);
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

fn tls_insecure(addr: SocketAddr) -> Tls {
    let conn = rustls::ClientConnection::new(
        ringgate::proto::tls::insecure_client_config(),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(conn, raw(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// `ringgate serve --wss` from the command line: the certificate is read
/// from files, replaced by SIGHUP and by `POST /reload` for new
/// connections while an open one keeps going, and a bad file is refused
/// with a reason and changes nothing.
#[test]
fn serve_reloads_the_certificate() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("ringgate-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert1, key1) = keys();
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .args([
            "--wss",
            "127.0.0.1:0",
            "--ws-mode",
            "scp",
            "--ws-path",
            "/ws",
        ])
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .args(["--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let child = Kill(child);
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let after = |line: &str, w: &str| -> String {
        line.split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .unwrap_or_else(|| panic!("{w:?} in {line:?}"))
            .trim_start_matches("http://")
            .trim_end_matches(['/', ';'])
            .to_string()
    };
    let admin: SocketAddr = after(&first, "at").parse().unwrap();
    assert!(second.contains("websocket-tls-scp"), "{second}");
    let addr: SocketAddr = after(&second, "on").parse().unwrap();

    let mut open = Scp::open(Box::new(wss(addr, &cert1)));
    assert_eq!(served_cert(addr), der(&cert1));

    // SIGHUP with new files: new connections get the new certificate.
    let (cert2, key2) = keys();
    std::fs::write(&cert_path, &cert2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || { served_cert(addr) == der(&cert2) }
    ));
    let mut second_session = Scp::open(Box::new(wss(addr, &cert2)));
    // The connection opened before keeps its TLS session.
    let msg = payload(7, 50_000);
    open.write(&msg);
    assert_eq!(open.read_exact(msg.len()), msg);

    // A key that does not match: refused, nothing changed.
    std::fs::write(&key_path, &key1).unwrap();
    let reload = |admin: SocketAddr| {
        let mut s = raw(admin);
        s.write_all(b"POST /reload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&read_to_close(&mut s)).into_owned()
    };
    let answer = reload(admin);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("websocket.tls") && answer.contains("nothing changed"),
        "{answer}"
    );
    // A file that is not there: refused too.
    std::fs::remove_file(&cert_path).unwrap();
    let answer = reload(admin);
    assert!(answer.contains("cannot read"), "{answer}");
    assert_eq!(served_cert(addr), der(&cert2));
    // And a good one by POST /reload.
    let (cert3, key3) = keys();
    std::fs::write(&cert_path, &cert3).unwrap();
    std::fs::write(&key_path, &key3).unwrap();
    let answer = reload(admin);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("websocket.tls"), "{answer}");
    assert_eq!(served_cert(addr), der(&cert3));
    let msg = payload(8, 3000);
    second_session.write(&msg);
    assert_eq!(second_session.read_exact(msg.len()), msg);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
