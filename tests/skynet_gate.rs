//! skynet's login server and msgserver gate served by ringgate's engine
//! (`gate::skynet`), over real sockets with the blocking skynet client:
//! the whole login + gate + reconnect flow of skynet's `client.lua`, every
//! answer code, the response cache across reconnects, and bad input that
//! gets its answer or a close while the server keeps serving.

use ringgate::client::skynet::{GateConn, SkynetClient, SkynetError, SkynetOptions};
use ringgate::gate::skynet::{Auth, Builder, Event, Handle, Refusal, User};
use ringgate::proto::skynet::login::Token;
use ringgate::proto::skynet::packet;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// skynet's `logind.lua`: password `password`; the uid `busy` is always in
/// the middle of another login (406).
#[derive(Debug)]
struct Logind;

impl Auth for Logind {
    fn auth(&self, token: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
        let t = Token::parse(token).ok_or(Refusal::Unauthorized)?;
        if t.password != b"password" {
            return Err(Refusal::Unauthorized);
        }
        Ok((t.server, t.user))
    }

    fn login(&self, _server: &[u8], uid: &[u8]) -> Result<(), Refusal> {
        if uid == b"busy" {
            return Err(Refusal::NotAcceptable);
        }
        Ok(())
    }
}

/// What the agent saw: every request it ran, and the users it was told of.
#[derive(Default)]
struct Seen {
    runs: Vec<(User, u32, Vec<u8>)>,
    users: HashMap<Vec<u8>, User>,
    /// Users by subid: a uid's latest login is known once its own appears.
    by_subid: HashMap<Vec<u8>, User>,
}

struct Server {
    handle: Handle,
    seen: Arc<Mutex<Seen>>,
    /// Requests the agent holds back instead of answering (see `hold`).
    held: mpsc::Receiver<(User, u32, Vec<u8>)>,
}

impl Server {
    /// A gate with `shards` shards whose agent answers every request with
    /// its payload at once, except payloads starting with `hold`, which are
    /// handed to the test to answer.
    fn start(shards: usize) -> Server {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (handle, receivers) = Builder::new(any, any, Logind)
            .shards(shards)
            .workers(2)
            .engine(|c| c.pin_threads = false)
            .start()
            .expect("start the gate");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (held_tx, held) = mpsc::channel();
        for rx in receivers {
            let (handle, seen, held_tx) = (handle.clone(), seen.clone(), held_tx.clone());
            std::thread::spawn(move || {
                while let Some(ev) = rx.recv() {
                    match ev {
                        Event::Login { user, uid, subid } => {
                            let mut seen = seen.lock().unwrap();
                            seen.users.insert(uid, user);
                            seen.by_subid.insert(subid, user);
                        }
                        Event::Request {
                            user,
                            session,
                            payload,
                        } => {
                            seen.lock()
                                .unwrap()
                                .runs
                                .push((user, session, payload.to_vec()));
                            if payload.starts_with(b"hold") {
                                let _ = held_tx.send((user, session, payload.to_vec()));
                            } else {
                                let _ = handle.respond(user, session, payload, true);
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
        Server { handle, seen, held }
    }

    fn login(&self, user: &str) -> Result<SkynetClient, SkynetError> {
        self.login_with(user, "sample", "password")
    }

    fn login_with(
        &self,
        user: &str,
        server: &str,
        password: &str,
    ) -> Result<SkynetClient, SkynetError> {
        SkynetClient::login(
            self.handle.login_addr(),
            self.handle.gate_addr(),
            user.as_bytes(),
            server.as_bytes(),
            password.as_bytes(),
            SkynetOptions::default(),
        )
    }

    /// The user of a login, once the agent has seen its event (it is
    /// queued before the client gets its subid, but the agent runs on its
    /// own thread).
    fn user_of(&self, subid: &[u8]) -> User {
        for _ in 0..10_000 {
            if let Some(&u) = self.seen.lock().unwrap().by_subid.get(subid) {
                return u;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("no login event for subid {subid:?}");
    }

    /// Waits until the agent has run `payload`.
    fn wait_runs(&self, payload: &[u8]) {
        for _ in 0..10_000 {
            if self.runs_of(payload) > 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the agent never ran {payload:?}");
    }

    fn runs_of(&self, payload: &[u8]) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.runs.iter().filter(|r| r.2 == payload).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.handle.join();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes; returns what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer counts as closed.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn refused(r: Result<impl Sized, SkynetError>) -> u16 {
    match r {
        Err(SkynetError::Refused(code)) => code,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got success"),
    }
}

/// `client.lua`'s flow: log in, send `echo` on session 0 and drop the
/// connection unread; reconnect with index 2, repeat session 0 with a fake
/// payload (gets `echo`, the agent does not run it) and ask `again` on 1.
#[test]
fn client_lua_flow_with_the_cached_answer() {
    for shards in [1, 2] {
        let srv = Server::start(shards);
        let mut c = srv.login("hello").unwrap();
        c.conn().unwrap().send(b"echo", 0).unwrap();
        // The close must not overtake the request (a request lost in
        // transit is lost in skynet too): wait until the agent has it.
        srv.wait_runs(b"echo");
        c.reconnect().unwrap();
        assert_eq!(c.index(), 2);
        let conn = c.conn().unwrap();
        conn.send(b"fake", 0).unwrap();
        conn.send(b"again", 1).unwrap();
        let mut got = [conn.recv().unwrap(), conn.recv().unwrap()];
        got.sort_by_key(|r| r.session);
        assert_eq!(
            (got[0].payload.as_slice(), got[0].ok, got[0].session),
            (&b"echo"[..], true, 0)
        );
        assert_eq!(
            (got[1].payload.as_slice(), got[1].session),
            (&b"again"[..], 1)
        );
        assert_eq!(srv.runs_of(b"echo"), 1);
        assert_eq!(
            srv.runs_of(b"fake"),
            0,
            "a repeated session is not run again"
        );
        assert_eq!(srv.runs_of(b"again"), 1);
    }
}

/// A session answered only after the client reconnected is sent to the new
/// connection when ready, and the repeat does not run it a second time.
#[test]
fn pending_answer_follows_the_reconnect() {
    let srv = Server::start(1);
    let mut c = srv.login("slow").unwrap();
    c.conn().unwrap().send(b"hold-1", 7).unwrap();
    let (user, session, payload) = srv.held.recv_timeout(Duration::from_secs(10)).unwrap();
    c.reconnect().unwrap();
    c.conn().unwrap().send(b"ignored", 7).unwrap();
    // Once this is answered, the repeat of 7 has been read too.
    assert_eq!(c.request(b"ping", 8).unwrap().payload, b"ping");
    srv.handle.respond(user, session, payload, true).unwrap();
    let r = c.conn().unwrap().recv().unwrap();
    assert_eq!((r.payload.as_slice(), r.session), (&b"hold-1"[..], 7));
    assert_eq!(srv.runs_of(b"hold-1"), 1);
    assert_eq!(srv.runs_of(b"ignored"), 0);
    // A failure answer: empty payload, ok 0.
    c.conn().unwrap().send(b"hold-2", 9).unwrap();
    let (user, session, _) = srv.held.recv_timeout(Duration::from_secs(10)).unwrap();
    srv.handle.respond(user, session, &b"x"[..], false).unwrap();
    let r = c.conn().unwrap().recv().unwrap();
    assert_eq!(
        (r.payload.as_slice(), r.ok, r.session),
        (&b""[..], false, 9)
    );
}

#[test]
fn login_answer_codes() {
    let srv = Server::start(1);
    assert_eq!(refused(srv.login_with("hello", "sample", "wrong")), 401);
    assert_eq!(
        refused(srv.login_with("hello", "elsewhere", "password")),
        403
    );
    assert_eq!(refused(srv.login("busy")), 406);
    // A client key that is not 8 bytes: 401, then a close.
    let mut s = connect(srv.handle.login_addr());
    s.write_all(b"AAAA\n").unwrap();
    let got = read_to_close(&mut s);
    assert!(got.ends_with(b"401 Unauthorized\n"), "{got:?}");
    // The server key answered, then a wrong challenge response: 401.
    let mut s = connect(srv.handle.login_addr());
    let key = ringgate::proto::dh64::public_key(12345).to_le_bytes();
    let mut line = Vec::new();
    ringgate::proto::skynet::b64::encode_into(&key, &mut line);
    line.extend_from_slice(b"\nAAAAAAAAAAA=\n");
    s.write_all(&line).unwrap();
    let got = read_to_close(&mut s);
    assert!(got.ends_with(b"401 Unauthorized\n"), "{got:?}");
    assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), 3);
    // Success closes after the answer too.
    srv.login("hello").unwrap();
}

#[test]
fn gate_answer_codes_close_and_keep_serving() {
    let srv = Server::start(2);
    let c = srv.login("hello").unwrap();
    let secret = c.login_result().secret;
    let gate = srv.handle.gate_addr();
    let hs = |name: &[u8], index: u64, secret: u64| {
        GateConn::handshake(connect(gate), name, index, secret).map(|_| ())
    };
    // 404: no such user (a subid naming no login; and one naming no shard).
    let ghost = packet::username(b"ghost", b"sample", b"12345");
    assert_eq!(refused(hs(&ghost, 1, secret)), 404);
    let odd = packet::username(b"ghost", b"sample", b"x");
    assert_eq!(refused(hs(&odd, 1, secret)), 404);
    // 403: the index must grow (client holds index 1).
    assert_eq!(refused(hs(c.username(), 1, secret)), 403);
    // 401: wrong secret.
    assert_eq!(refused(hs(c.username(), 5, secret ^ 1)), 401);
    // 400: index not a number.
    let mut text = c.username().to_vec();
    text.extend_from_slice(b":zz:AAAAAAAAAAA=");
    let mut p = Vec::new();
    packet::write_packet(&text, &mut p).unwrap();
    let mut s = connect(gate);
    s.write_all(&p).unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(&got[2..], b"400 Bad Request");
    // Every failed handshake closed its connection; the user still works.
    let mut c = c;
    c.reconnect().unwrap();
    assert_eq!(c.request(b"still", 3).unwrap().payload, b"still");
}

#[test]
fn bad_input_closes_and_the_server_keeps_serving() {
    let srv = Server::start(2);
    // Login: a line over 8 KiB closes with no answer beyond the challenge.
    let mut s = connect(srv.handle.login_addr());
    let _ = s.write_all(&vec![b'A'; 9000]);
    let got = read_to_close(&mut s);
    assert_eq!(got.len(), 13, "only the challenge line: {got:?}");
    // Garbage lines: 401.
    let mut s = connect(srv.handle.login_addr());
    s.write_all(b"!!!! not base64 !!!!\n").unwrap();
    assert!(read_to_close(&mut s).ends_with(b"401 Unauthorized\n"));
    // Gate: a handshake packet longer than the limit closes unanswered.
    let mut s = connect(srv.handle.gate_addr());
    let mut p = Vec::new();
    packet::write_packet(&vec![b'a'; 5000], &mut p).unwrap();
    let _ = s.write_all(&p);
    assert!(read_to_close(&mut s).is_empty());
    // A request shorter than its session closes the connection.
    let mut c = srv.login("hello").unwrap();
    c.conn().unwrap().send_raw(&[0, 2, b'h', b'i']).unwrap();
    assert!(c.conn().unwrap().recv().is_err());
    // An index replay after the close: 403; the next index works.
    assert_eq!(
        refused(c.handshake_with_index(1).map(|_| ())),
        403,
        "the first index was used"
    );
    c.reconnect().unwrap();
    assert_eq!(c.request(b"ok", 1).unwrap().payload, b"ok");
}

#[test]
fn relogin_logout_and_kick() {
    let srv = Server::start(2);
    let mut first = srv.login("twice").unwrap();
    let mut second = srv.login("twice").unwrap();
    assert_ne!(first.login_result().subid, second.login_result().subid);
    // The first login was replaced: its connection closed, its name unknown.
    assert!(first.conn().unwrap().request(b"x", 1).is_err());
    assert_eq!(refused(first.reconnect()), 404);
    assert_eq!(second.request(b"y", 1).unwrap().payload, b"y");
    // Logout from the handle.
    let user = srv.user_of(&second.login_result().subid);
    srv.handle.logout(user).unwrap();
    assert!(second.conn().unwrap().recv().is_err());
    assert_eq!(refused(second.reconnect()), 404);
    // A login made by the application itself.
    let secret = 0x1234_5678_9abc_def0;
    let subid = srv.handle.login(b"own", secret).unwrap();
    let name = packet::username(b"own", b"sample", &subid);
    let mut conn = GateConn::handshake(connect(srv.handle.gate_addr()), &name, 1, secret)
        .expect("handshake of an application login");
    assert_eq!(conn.request(b"mine", 4).unwrap().payload, b"mine");
    let user = srv.user_of(&subid);
    srv.handle.kick(user).unwrap();
    assert!(conn.recv().is_err());
}

/// Many users on several shards: each connection reaches the shard that
/// holds its user, wherever the kernel delivered it.
#[test]
fn users_spread_over_shards() {
    let srv = Server::start(3);
    let mut clients: Vec<SkynetClient> = (0..24)
        .map(|i| srv.login(&format!("user{i}")).unwrap())
        .collect();
    for round in 0..2u32 {
        for (i, c) in clients.iter_mut().enumerate() {
            let payload = format!("{i}-{round}");
            assert_eq!(
                c.request(payload.as_bytes(), round).unwrap().payload,
                payload.as_bytes()
            );
            c.reconnect().unwrap();
        }
    }
    let users = srv.seen.lock().unwrap().users.clone();
    let shards: std::collections::HashSet<usize> = users.values().map(|u| u.shard()).collect();
    assert!(!shards.is_empty());
}
