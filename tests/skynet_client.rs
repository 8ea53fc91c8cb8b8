//! The blocking skynet client against the login and gate machines served by
//! a small thread-per-connection std::net server in this file: the whole
//! login + gate + reconnect flow of skynet's `client.lua`, and bad input
//! over real sockets (the server answers, closes, and keeps serving).

use ringgate::client::skynet::{GateConn, SkynetClient, SkynetError, SkynetOptions};
use ringgate::proto::skynet::gate::{Action, ConnId, MsgGate, UserId};
use ringgate::proto::skynet::login::{LoginEvent, LoginLimits, LoginServer, Refusal, Token};
use ringgate::proto::skynet::packet;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct World {
    gate: MsgGate,
    streams: HashMap<ConnId, TcpStream>,
    runs: HashMap<(UserId, u32), usize>,
    online: HashMap<Vec<u8>, UserId>,
    next_subid: u32,
}

impl World {
    /// Carries out the gate's actions; the agent answers each request with
    /// its payload at once.
    fn dispatch(&mut self) {
        while let Some(a) = self.gate.poll() {
            match a {
                Action::Send { conn, bytes } => {
                    if let Some(s) = self.streams.get_mut(&conn) {
                        let _ = s.write_all(&bytes);
                    }
                }
                Action::Close { conn, .. } => {
                    if let Some(s) = self.streams.remove(&conn) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Action::Request {
                    user,
                    session,
                    payload,
                } => {
                    *self.runs.entry((user, session)).or_default() += 1;
                    let _ = self.gate.respond(user, session, &payload, true);
                }
                Action::Online { .. } | Action::Afk { .. } => {}
            }
        }
    }

    fn login(&mut self, server: &[u8], user: &[u8], secret: u64) -> Result<Vec<u8>, Refusal> {
        if server != b"sample" {
            return Err(Refusal::Forbidden);
        }
        if let Some(old) = self.online.remove(user) {
            self.gate.kick(old);
            self.dispatch();
        }
        self.next_subid += 1;
        let subid = self.next_subid.to_string().into_bytes();
        let id = self
            .gate
            .login(&packet::username(user, server, &subid), secret)
            .map_err(|_| Refusal::Forbidden)?;
        self.online.insert(user.to_vec(), id);
        Ok(subid)
    }
}

struct Servers {
    login: SocketAddr,
    gate: SocketAddr,
    world: Arc<Mutex<World>>,
}

fn serve_login(mut stream: TcpStream, world: Arc<Mutex<World>>) {
    let mut s = LoginServer::new(rand::random(), rand::random(), LoginLimits::default());
    let mut buf = [0u8; 4096];
    loop {
        loop {
            match s.poll() {
                LoginEvent::Authenticate(token) => s.authenticated(match Token::parse(&token) {
                    Some(t) if t.password == b"password" => Ok((t.server, t.user)),
                    _ => Err(Refusal::Unauthorized),
                }),
                LoginEvent::Login {
                    server,
                    user,
                    secret,
                } => {
                    let r = world.lock().unwrap().login(&server, &user, secret);
                    s.logged_in(r);
                }
                _ => break,
            }
        }
        if stream.write_all(&s.take_output()).is_err() || s.is_finished() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => s.recv(&buf[..n]),
        }
    }
}

fn serve_gate(mut stream: TcpStream, conn: ConnId, world: Arc<Mutex<World>>) {
    {
        let mut w = world.lock().unwrap();
        if w.gate.connect(conn).is_err() {
            return;
        }
        w.streams.insert(conn, stream.try_clone().unwrap());
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        let mut w = world.lock().unwrap();
        if n == 0 {
            w.gate.closed(conn);
            w.streams.remove(&conn);
            w.dispatch();
            return;
        }
        w.gate.recv(conn, &buf[..n]);
        w.dispatch();
    }
}

fn start() -> Servers {
    let world = Arc::new(Mutex::new(World::default()));
    let login = TcpListener::bind("127.0.0.1:0").unwrap();
    let gate = TcpListener::bind("127.0.0.1:0").unwrap();
    let servers = Servers {
        login: login.local_addr().unwrap(),
        gate: gate.local_addr().unwrap(),
        world: world.clone(),
    };
    let w = world.clone();
    std::thread::spawn(move || {
        for s in login.incoming().flatten() {
            let w = w.clone();
            std::thread::spawn(move || serve_login(s, w));
        }
    });
    std::thread::spawn(move || {
        for (id, s) in gate.incoming().flatten().enumerate() {
            let w = world.clone();
            std::thread::spawn(move || serve_gate(s, id as ConnId, w));
        }
    });
    servers
}

fn client(
    s: &Servers,
    user: &[u8],
    server: &[u8],
    password: &[u8],
) -> Result<SkynetClient, SkynetError> {
    SkynetClient::login(
        s.login,
        s.gate,
        user,
        server,
        password,
        SkynetOptions::default(),
    )
}

/// Everything the server sends until it closes.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

#[test]
fn login_gate_reconnect_flow() {
    let s = start();
    let mut c = client(&s, b"hello", b"sample", b"password").unwrap();
    assert_eq!(c.login_result().subid, b"1");
    assert_eq!(c.username(), b"aGVsbG8=@c2FtcGxl#MQ==");
    let r = c.request(b"echo", 0).unwrap();
    assert_eq!((r.payload, r.ok, r.session), (b"echo".to_vec(), true, 0));

    // client.lua: reconnect with index 2, repeat session 0 with another
    // payload, get the cached answer; the agent ran it once.
    c.reconnect().unwrap();
    assert_eq!(c.index(), 2);
    assert_eq!(c.request(b"fake", 0).unwrap().payload, b"echo");
    assert_eq!(c.request(b"again", 1).unwrap().payload, b"again");
    let user = s.world.lock().unwrap().gate.user_id(c.username()).unwrap();
    assert_eq!(s.world.lock().unwrap().runs[&(user, 0)], 1);

    // Pipelined requests come back, each by its session.
    let conn = c.conn().unwrap();
    for i in 10..20u32 {
        conn.send(format!("p{i}").as_bytes(), i).unwrap();
    }
    for i in 10..20u32 {
        let r = conn.recv().unwrap();
        assert_eq!(r.payload, format!("p{}", r.session).into_bytes());
        assert_eq!(r.session, i);
    }

    // An index replay is refused with 403 and that connection closed; the
    // current one keeps working.
    match c.handshake_with_index(2) {
        Err(SkynetError::Refused(403)) => {}
        other => panic!("{:?}", other.err()),
    }
    assert_eq!(c.request(b"still", 30).unwrap().payload, b"still");

    // Logging in again elsewhere kicks the old subid: its handshake is 404.
    let mut c2 = client(&s, b"hello", b"sample", b"password").unwrap();
    assert_eq!(c2.login_result().subid, b"2");
    match c.reconnect() {
        Err(SkynetError::Refused(404)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c2.request(b"new", 0).unwrap().payload, b"new");
}

#[test]
fn login_refusals_over_sockets() {
    let s = start();
    for (user, server, password, code) in [
        (&b"hello"[..], &b"sample"[..], &b"wrong"[..], 401),
        (b"hello", b"nosuch", b"password", 403),
    ] {
        match client(&s, user, server, password) {
            Err(SkynetError::Refused(c)) => assert_eq!(c, code),
            other => panic!("{:?}", other.err()),
        }
    }
    assert!(
        client(&s, b"ok", b"sample", b"password").is_ok(),
        "still serving"
    );
}

#[test]
fn bad_input_over_sockets_gets_answer_and_close() {
    let s = start();
    // Login: a garbage line, a CRLF line, an oversized line.
    for (sent, want) in [
        (b"garbage\n".to_vec(), &b"401 Unauthorized\n"[..]),
        (b"HXmrIJHhViQ=\r\n".to_vec(), b"401 Unauthorized\n"),
        (vec![b'A'; 9000], b""),
    ] {
        let mut t = TcpStream::connect(s.login).unwrap();
        let mut challenge = [0u8; 13];
        t.read_exact(&mut challenge).unwrap();
        t.write_all(&sent).unwrap();
        assert_eq!(read_to_close(&mut t), want);
    }
    // Gate: an unknown user, an undecodable hmac, garbage.
    let opts = |t: TcpStream| {
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        t
    };
    let t = opts(TcpStream::connect(s.gate).unwrap());
    match GateConn::handshake(t, b"bm9ib2R5@c2FtcGxl#MQ==", 1, 5) {
        Err(SkynetError::Refused(404)) => {}
        other => panic!("{:?}", other.err()),
    }
    let c = client(&s, b"hello", b"sample", b"password").unwrap();
    for (content, want) in [
        (
            [c.username(), &b":9:MR=="[..]].concat(),
            &b"400 Bad Request"[..],
        ),
        (b"garbage".to_vec(), b"404 User Not Found"),
    ] {
        let mut t = opts(TcpStream::connect(s.gate).unwrap());
        let mut p = Vec::new();
        packet::write_packet(&content, &mut p).unwrap();
        t.write_all(&p).unwrap();
        let got = read_to_close(&mut t);
        let mut expected = Vec::new();
        packet::write_packet(want, &mut expected).unwrap();
        assert_eq!(got, expected);
    }
    // A request shorter than its session closes without an answer.
    let mut g = c.handshake_with_index(5).unwrap();
    g.send_raw(&[0, 3, b'a', b'b', b'c']).unwrap();
    assert!(g.recv().is_err());
    // Index 5 was used: the client's own next index (2) is now a replay.
    let mut c = c;
    assert!(matches!(c.reconnect(), Err(SkynetError::Refused(403))));
    let mut g = c.handshake_with_index(6).unwrap();
    assert_eq!(g.request(b"fine", 1).unwrap().payload, b"fine");
}
