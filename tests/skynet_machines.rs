//! The skynet login server and msgserver gate machines under rules the
//! recordings do not cover: every answer code, the response-cache rules,
//! limits, and bad input. No sockets: bytes in, actions out.

use ringgate::proto::skynet::gate::{
    Action, CloseReason, ConnId, GateLimits, HandshakeCode, LoginError, MsgGate, RespondError,
    UserId,
};
use ringgate::proto::skynet::login::{
    LoginClient, LoginClientEvent, LoginEvent, LoginFailure, LoginLimits, LoginServer, Refusal,
    Token,
};
use ringgate::proto::skynet::{b64, packet};

// ---- login -------------------------------------------------------------------

fn token() -> Token {
    Token {
        user: b"hello".to_vec(),
        server: b"sample".to_vec(),
        password: b"password".to_vec(),
    }
}

/// Runs client and server machines against each other, feeding the server
/// `chunk` bytes at a time; returns the server's final event and output.
fn login_pair(
    chunk: usize,
    auth: Result<(Vec<u8>, Vec<u8>), Refusal>,
    login: Result<Vec<u8>, Refusal>,
) -> (LoginEvent, LoginClientEvent, Vec<u8>) {
    let mut s = LoginServer::new(0x1122_3344_5566_7788, 99, LoginLimits::default());
    let mut c = LoginClient::new(7, &token().encode(), LoginLimits::default());
    let mut server_sent = Vec::new();
    for _ in 0..10 {
        let out = s.take_output();
        server_sent.extend_from_slice(&out);
        c.recv(&out);
        for piece in c.take_output().chunks(chunk) {
            s.recv(piece);
        }
        match s.poll() {
            LoginEvent::Authenticate(t) => {
                assert_eq!(Token::parse(&t), Some(token()));
                s.authenticated(auth.clone());
            }
            LoginEvent::Login { server, user, .. } => {
                assert_eq!((server, user), (b"sample".to_vec(), b"hello".to_vec()));
                s.logged_in(login.clone());
            }
            _ => {}
        }
    }
    let out = s.take_output();
    server_sent.extend_from_slice(&out);
    c.recv(&out);
    (s.poll(), c.poll(), server_sent)
}

#[test]
fn login_every_answer_code() {
    for chunk in [1, 3, 1000] {
        let ok = || Ok((b"sample".to_vec(), b"hello".to_vec()));
        let (s, c, sent) = login_pair(chunk, ok(), Ok(b"42".to_vec()));
        let LoginEvent::Done(done) = s else {
            panic!("{s:?}")
        };
        assert_eq!(done.subid, b"42");
        assert!(sent.ends_with(b"\n200 NDI=\n"));
        assert_eq!(
            c,
            LoginClientEvent::Success {
                subid: b"42".to_vec(),
                secret: done.secret
            }
        );
        for r in [
            Refusal::Unauthorized,
            Refusal::Forbidden,
            Refusal::NotAcceptable,
        ] {
            let (auth, login) = match r {
                Refusal::Unauthorized => (Err(r), Ok(vec![])),
                _ => (ok(), Err(r)),
            };
            let (s, c, sent) = login_pair(chunk, auth, login);
            assert_eq!(s, LoginEvent::Failed(LoginFailure::Refused(r)));
            assert_eq!(c, LoginClientEvent::Refused(r.code()));
            assert!(sent.ends_with(r.line()), "{r:?}");
        }
    }
    // An empty subid is `200 ` and an empty base64 text, as in skynet.
    let (_, c, sent) = login_pair(64, Ok((b"sample".to_vec(), b"hello".to_vec())), Ok(vec![]));
    assert!(sent.ends_with(b"200 \n"));
    assert!(matches!(c, LoginClientEvent::Success { subid, .. } if subid.is_empty()));
}

fn started() -> LoginServer {
    let mut s = LoginServer::new(5, 6, LoginLimits::default());
    assert_eq!(s.take_output().len(), 13, "12 base64 chars and a newline");
    s
}

#[test]
fn login_garbage_lines_get_401_and_a_close() {
    for line in [
        &b"hello world\n"[..],
        b"\n",
        b"AQIDBA==\n",       // 4 bytes
        b"AQIDBAUGBwgJ\n",   // 9 bytes
        b"MR==\n",           // bad trailing bits
        b"HXmrIJHhViQ=\r\n", // a valid key, CRLF
        b"\x00\xff\x80garbage\n",
    ] {
        let mut s = started();
        s.recv(line);
        assert_eq!(s.take_output(), b"401 Unauthorized\n", "{line:?}");
        assert_eq!(s.poll(), LoginEvent::Failed(LoginFailure::BadClientKey));
        assert!(s.is_finished());
        s.recv(b"more\n");
        assert!(!s.has_output(), "nothing after the answer");
    }
}

#[test]
fn login_oversized_line_closes_without_answer() {
    let limits = LoginLimits { max_line: 100 };
    let mut s = LoginServer::new(5, 6, limits);
    s.take_output();
    // Exactly at the limit is fine (and fails as a key).
    s.recv(&[b'A'; 100]);
    assert_eq!(s.poll(), LoginEvent::NeedMore);
    s.recv(b"\n");
    assert_eq!(s.poll(), LoginEvent::Failed(LoginFailure::BadClientKey));

    let mut s = LoginServer::new(5, 6, limits);
    s.take_output();
    for _ in 0..10 {
        s.recv(&[b'A'; 10]);
    }
    assert_eq!(s.poll(), LoginEvent::NeedMore);
    s.recv(b"A");
    assert_eq!(s.poll(), LoginEvent::Failed(LoginFailure::LineTooLong(100)));
    assert!(!s.has_output());
    assert_eq!(LoginLimits::default().max_line, 8192);
}

#[test]
fn login_wrong_hmac_is_answered_before_the_token() {
    let mut s = started();
    let mut c = LoginClient::new(9, &token().encode(), LoginLimits::default());
    // Client key line only.
    c.recv(&{
        let mut l = b64::encode(&5u64.to_le_bytes()).into_bytes();
        l.push(b'\n');
        l
    });
    s.recv(&c.take_output());
    let server_key = s.take_output();
    assert_eq!(server_key.len(), 13);
    // A wrong hmac, then a token line in the same write.
    s.recv(b"AAAAAAAAAAA=\nAAAAAAAAAAA=\n");
    assert_eq!(s.take_output(), b"401 Unauthorized\n");
    assert_eq!(
        s.poll(),
        LoginEvent::Failed(LoginFailure::BadChallengeResponse)
    );
    // Answers in the wrong state are ignored.
    s.authenticated(Ok((vec![], vec![])));
    s.logged_in(Ok(vec![]));
    assert!(!s.has_output());
}

#[test]
fn login_undecryptable_tokens_get_401() {
    for token_line in [&b"AAAAAAAAAAA=\n"[..], b"AAAAAAA=\n", b"!!!\n", b"\n"] {
        let mut s = LoginServer::new(0x5c7e, 77, LoginLimits::default());
        let mut c = LoginClient::new(3, b"x", LoginLimits::default());
        c.recv(&s.take_output());
        s.recv(&c.take_output());
        c.recv(&s.take_output());
        // Keep the client's hmac line, replace its token line.
        let out = c.take_output();
        let hmac_line = &out[..out.iter().position(|&b| b == b'\n').unwrap() + 1];
        s.recv(hmac_line);
        assert_eq!(s.poll(), LoginEvent::NeedMore);
        s.recv(token_line);
        assert_eq!(s.take_output(), b"401 Unauthorized\n", "{token_line:?}");
        assert_eq!(s.poll(), LoginEvent::Failed(LoginFailure::BadToken));
    }
}

#[test]
fn token_parse_rejects_malformed() {
    for bad in [
        &b"nonsense"[..],
        b"@c2FtcGxl:cGFzcw==",
        b"aGVsbG8=@:cGFzcw==",
        b"aGVsbG8=@c2FtcGxl:",
        b"aGVsbG8=@c2FtcGxl",
        b"MR==@c2FtcGxl:cGFzcw==",
    ] {
        assert_eq!(Token::parse(bad), None, "{bad:?}");
    }
}

// ---- gate --------------------------------------------------------------------

const SECRET: u64 = 0x7361_3723_ce4f_e278;

struct G {
    gate: MsgGate,
    actions: Vec<Action>,
}

impl G {
    fn new(limits: GateLimits) -> (G, UserId, Vec<u8>) {
        let mut gate = MsgGate::new(limits);
        let name = packet::username(b"hello", b"sample", b"1");
        let user = gate.login(&name, SECRET).unwrap();
        (
            G {
                gate,
                actions: Vec::new(),
            },
            user,
            name,
        )
    }

    fn pump(&mut self) -> Vec<Action> {
        let mut v = Vec::new();
        while let Some(a) = self.gate.poll() {
            v.push(a);
        }
        self.actions.extend(v.clone());
        v
    }

    fn connect(&mut self, conn: ConnId, name: &[u8], index: u64) -> Vec<Action> {
        self.gate.connect(conn).unwrap();
        let mut p = Vec::new();
        packet::write_packet(&packet::handshake(name, index, SECRET), &mut p).unwrap();
        self.gate.recv(conn, &p);
        self.pump()
    }

    fn request(&mut self, conn: ConnId, payload: &[u8], session: u32) -> Vec<Action> {
        let mut p = Vec::new();
        packet::write_request(payload, session, &mut p).unwrap();
        self.gate.recv(conn, &p);
        self.pump()
    }
}

fn answer(code: HandshakeCode) -> Vec<u8> {
    let mut p = Vec::new();
    packet::write_packet(code.text(), &mut p).unwrap();
    p
}

fn response(payload: &[u8], ok: bool, session: u32) -> Vec<u8> {
    let mut p = Vec::new();
    packet::write_response(payload, ok, session, &mut p).unwrap();
    p
}

fn send(conn: ConnId, bytes: Vec<u8>) -> Action {
    Action::Send { conn, bytes }
}

fn req(user: UserId, session: u32, payload: &[u8]) -> Action {
    Action::Request {
        user,
        session,
        payload: payload.to_vec(),
    }
}

#[test]
fn handshake_ok_and_every_failure_code() {
    let (mut g, user, name) = G::new(GateLimits::default());
    assert_eq!(
        g.connect(1, &name, 1),
        vec![
            send(1, answer(HandshakeCode::Ok)),
            Action::Online { user, conn: 1 }
        ]
    );
    let signed = |text: &[u8], hmac: &[u8]| {
        let mut c = text.to_vec();
        c.push(b':');
        c.extend_from_slice(hmac);
        c
    };
    let good_hmac = |text: &[u8]| {
        b64::encode(&ringgate::proto::crypt::hmac_hash(SECRET, text).to_le_bytes()).into_bytes()
    };
    let mut n = name.clone();
    n.extend_from_slice(b":5");
    let cases: Vec<(Vec<u8>, HandshakeCode)> = vec![
        (b"garbage".to_vec(), HandshakeCode::UserNotFound),
        (
            b"nobody:2:AAAAAAAAAAA=".to_vec(),
            HandshakeCode::UserNotFound,
        ),
        ([&name[..], b":2"].concat(), HandshakeCode::UserNotFound),
        (
            signed(&[&name[..], b":x"].concat(), b"AAAAAAAAAAA="),
            HandshakeCode::BadRequest,
        ),
        (
            signed(&[&name[..], b":1.5"].concat(), b"AAAAAAAAAAA="),
            HandshakeCode::BadRequest,
        ),
        // A hmac that is not base64: 400, even with an expired index.
        (
            signed(&[&name[..], b":1"].concat(), b"MR=="),
            HandshakeCode::BadRequest,
        ),
        (
            signed(
                &[&name[..], b":1"].concat(),
                &good_hmac(&[&name[..], b":1"].concat()),
            ),
            HandshakeCode::IndexExpired,
        ),
        (
            signed(&[&name[..], b":0"].concat(), b"AAAAAAAAAAA="),
            HandshakeCode::IndexExpired,
        ),
        (
            signed(&[&name[..], b":-7"].concat(), b"AAAAAAAAAAA="),
            HandshakeCode::IndexExpired,
        ),
        (signed(&n, b"AAAAAAAAAAA="), HandshakeCode::Unauthorized),
        (signed(&n, b"AAAA"), HandshakeCode::Unauthorized),
    ];
    for (i, (content, code)) in cases.into_iter().enumerate() {
        let conn = 10 + i as ConnId;
        g.gate.connect(conn).unwrap();
        let mut p = Vec::new();
        packet::write_packet(&content, &mut p).unwrap();
        // Bytes after a failed handshake are never read.
        p.extend_from_slice(&[0, 5, 1, 2, 3, 4, 5]);
        g.gate.recv(conn, &p);
        assert_eq!(
            g.pump(),
            vec![
                send(conn, answer(code)),
                Action::Close {
                    conn,
                    reason: CloseReason::Handshake(code)
                }
            ],
            "{:?}",
            String::from_utf8_lossy(&content)
        );
        g.gate.recv(conn, b"ignored");
        assert!(g.pump().is_empty());
    }
    // The failures did not use up index 5, and the user is still on conn 1
    // until index 5 succeeds elsewhere.
    assert_eq!(g.gate.connection_of(user), Some(1));
    assert_eq!(
        g.connect(2, &name, 5),
        vec![
            Action::Close {
                conn: 1,
                reason: CloseReason::Replaced
            },
            send(2, answer(HandshakeCode::Ok)),
            Action::Online { user, conn: 2 }
        ]
    );
    assert_eq!(g.gate.connection_count(), 1);
}

#[test]
fn handshake_byte_by_byte_with_pipelined_request() {
    let (mut g, user, name) = G::new(GateLimits::default());
    let mut p = Vec::new();
    packet::write_packet(&packet::handshake(&name, 1, SECRET), &mut p).unwrap();
    packet::write_request(b"ping", 3, &mut p).unwrap();
    g.gate.connect(1).unwrap();
    for b in &p {
        g.gate.recv(1, std::slice::from_ref(b));
    }
    assert_eq!(
        g.pump(),
        vec![
            send(1, answer(HandshakeCode::Ok)),
            Action::Online { user, conn: 1 },
            req(user, 3, b"ping")
        ]
    );
    g.gate.respond(user, 3, b"pong", true).unwrap();
    assert_eq!(g.pump(), vec![send(1, response(b"pong", true, 3))]);
}

#[test]
fn repeat_after_reconnect_gets_cached_bytes_and_runs_once() {
    let (mut g, user, name) = G::new(GateLimits::default());
    g.connect(1, &name, 1);
    assert_eq!(
        g.request(1, b"buy sword", 7),
        vec![req(user, 7, b"buy sword")]
    );
    g.gate.respond(user, 7, b"bought", true).unwrap();
    // The answer is lost with the connection.
    g.pump();
    g.gate.closed(1);
    assert_eq!(g.pump(), vec![Action::Afk { user }]);
    g.connect(2, &name, 2);
    // The repeat's payload is ignored; the cached packet comes back.
    assert_eq!(
        g.request(2, b"buy sword", 7),
        vec![send(2, response(b"bought", true, 7))]
    );
    assert_eq!(
        g.request(2, b"whatever", 7),
        vec![req(user, 7, b"whatever")],
        "same connection: new"
    );
}

#[test]
fn answer_ready_after_reconnect_is_not_run_again() {
    let (mut g, user, name) = G::new(GateLimits::default());
    g.connect(1, &name, 1);
    g.request(1, b"buy", 1);
    g.gate.closed(1);
    g.connect(2, &name, 2);
    // The answer comes while the client is on connection 2, before it
    // repeats the session: it is not sent to 2 yet (2 did not ask)...
    g.gate.respond(user, 1, b"done", true).unwrap();
    assert!(g.pump().is_empty());
    // ...and the repeat gets it instead of a second run.
    assert_eq!(
        g.request(2, b"buy", 1),
        vec![send(2, response(b"done", true, 1))]
    );
}

#[test]
fn repeat_while_running_on_new_connection_gets_answer_when_ready() {
    let (mut g, user, name) = G::new(GateLimits::default());
    g.connect(1, &name, 1);
    g.request(1, b"slow", 4);
    g.gate.closed(1);
    g.pump();
    g.connect(2, &name, 2);
    assert!(
        g.request(2, b"slow", 4).is_empty(),
        "merged with the running one"
    );
    g.gate.respond(user, 4, b"finally", true).unwrap();
    assert_eq!(g.pump(), vec![send(2, response(b"finally", true, 4))]);
    assert_eq!(
        g.gate.respond(user, 4, b"again", true),
        Err(RespondError::NotPending)
    );
}

#[test]
fn conflict_session_closes() {
    let (mut g, user, name) = G::new(GateLimits::default());
    g.connect(1, &name, 1);
    let mut p = Vec::new();
    for _ in 0..3 {
        packet::write_request(b"x", 9, &mut p).unwrap();
    }
    g.gate.recv(1, &p);
    assert_eq!(
        g.pump(),
        vec![
            req(user, 9, b"x"),
            Action::Close {
                conn: 1,
                reason: CloseReason::ConflictSession(9)
            },
            Action::Afk { user }
        ]
    );
    assert_eq!(
        g.gate.respond(user, 9, b"late", true),
        Err(RespondError::NotPending)
    );
}

#[test]
fn failure_answers_and_oversized_answers() {
    let (mut g, user, name) = G::new(GateLimits::default());
    g.connect(1, &name, 1);
    g.request(1, b"a", 1);
    g.request(1, b"b", 2);
    g.gate
        .respond(user, 1, b"ignored on failure", false)
        .unwrap();
    assert_eq!(g.pump(), vec![send(1, response(b"", false, 1))]);
    assert_eq!(
        g.gate.respond(user, 2, &vec![0; 65531], true),
        Err(RespondError::TooLarge)
    );
    assert_eq!(g.pump(), vec![send(1, response(b"", false, 2))]);
    assert_eq!(
        g.gate.respond(UserId(999), 1, b"", true),
        Err(RespondError::UnknownUser)
    );
}

#[test]
fn short_and_oversized_packets_close() {
    let limits = GateLimits {
        max_packet: 100,
        ..GateLimits::default()
    };
    let (mut g, user, name) = G::new(limits);
    g.connect(1, &name, 1);
    g.gate.recv(1, &[0, 3, b'a', b'b', b'c']);
    assert_eq!(
        g.pump(),
        vec![
            Action::Close {
                conn: 1,
                reason: CloseReason::ShortRequest
            },
            Action::Afk { user }
        ]
    );
    g.connect(2, &name, 2);
    // Refused as soon as the length is known, before the body arrives.
    g.gate.recv(2, &[0, 101]);
    assert_eq!(
        g.pump(),
        vec![
            Action::Close {
                conn: 2,
                reason: CloseReason::PacketTooLarge
            },
            Action::Afk { user }
        ]
    );
    // A huge handshake on a fresh connection too.
    g.gate.connect(3).unwrap();
    g.gate.recv(3, &[0xff, 0xff]);
    assert_eq!(
        g.pump(),
        vec![Action::Close {
            conn: 3,
            reason: CloseReason::PacketTooLarge
        }]
    );
}

#[test]
fn retirement_after_twice_expired_number() {
    let limits = GateLimits {
        expired_number: 4,
        ..GateLimits::default()
    };
    let (mut g, user, name) = G::new(limits);
    g.connect(1, &name, 1);
    for s in 0..8 {
        g.request(1, b"r", s);
        g.gate
            .respond(user, s, format!("a{s}").as_bytes(), true)
            .unwrap();
    }
    // The eighth answer retired sessions 0..4.
    assert_eq!(g.gate.cached_entries(user), 4);
    g.pump();
    g.connect(2, &name, 2);
    assert_eq!(g.request(2, b"new", 0), vec![req(user, 0, b"new")]);
    assert_eq!(
        g.request(2, b"new", 4),
        vec![send(2, response(b"a4", true, 4))]
    );
}

#[test]
fn memory_limits() {
    // Running requests per user.
    let limits = GateLimits {
        max_pending: 2,
        ..GateLimits::default()
    };
    let (mut g, user, name) = G::new(limits);
    g.connect(1, &name, 1);
    g.request(1, b"", 1);
    g.request(1, b"", 2);
    assert_eq!(
        g.request(1, b"", 3),
        vec![
            Action::Close {
                conn: 1,
                reason: CloseReason::TooManyPending
            },
            Action::Afk { user }
        ]
    );

    // Cached bytes per user: the oldest answers go first.
    let limits = GateLimits {
        max_cache_bytes: 1000,
        ..GateLimits::default()
    };
    let (mut g, user, name) = G::new(limits);
    g.connect(1, &name, 1);
    for s in 0..10 {
        g.request(1, b"", s);
        g.gate.respond(user, s, &[b'x'; 293], true).unwrap();
    }
    assert_eq!(g.gate.cached_entries(user), 3, "3 × 300 bytes fit in 1000");
    g.pump();
    g.connect(2, &name, 2);
    assert_eq!(g.request(2, b"", 6), vec![req(user, 6, b"")]);
    assert!(matches!(&g.request(2, b"", 7)[..], [Action::Send { .. }]));

    // Users and connections.
    let limits = GateLimits {
        max_users: 1,
        max_connections: 1,
        ..GateLimits::default()
    };
    let (mut g, _, name) = G::new(limits);
    assert_eq!(g.gate.login(&name, 1), Err(LoginError::AlreadyOnline));
    assert_eq!(g.gate.login(b"other", 1), Err(LoginError::Full));
    g.gate.connect(1).unwrap();
    assert!(g.gate.connect(2).is_err());
}

#[test]
fn logout_and_kick() {
    let (mut g, user, name) = G::new(GateLimits::default());
    g.connect(1, &name, 1);
    g.request(1, b"x", 1);
    assert!(g.gate.logout(user));
    assert_eq!(
        g.pump(),
        vec![Action::Close {
            conn: 1,
            reason: CloseReason::LoggedOut
        }]
    );
    assert!(!g.gate.logout(user));
    assert_eq!(
        g.gate.respond(user, 1, b"late", true),
        Err(RespondError::UnknownUser)
    );
    g.gate.closed(1);
    assert!(g.pump().is_empty(), "no afk after logout");
    assert_eq!(
        g.connect(2, &name, 2)[0],
        send(2, answer(HandshakeCode::UserNotFound))
    );

    // Logging in again gives a fresh id and a fresh cache and index.
    let again = g.gate.login(&name, SECRET).unwrap();
    assert_ne!(again, user);
    assert_eq!(
        g.connect(3, &name, 1)[0],
        send(3, answer(HandshakeCode::Ok))
    );
    assert!(g.gate.kick(again));
    assert_eq!(
        g.pump(),
        vec![Action::Close {
            conn: 3,
            reason: CloseReason::Kicked
        }]
    );
    assert_eq!(g.gate.user_count(), 0);
    assert_eq!(g.gate.connection_count(), 0);
}

#[test]
fn garbage_stream_never_panics() {
    // Deterministic pseudo-random garbage, in random-sized pieces, on fresh
    // and on logged-in connections.
    let (mut g, user, name) = G::new(GateLimits {
        max_pending: 8,
        ..GateLimits::default()
    });
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for conn in 0..200u64 {
        if conn % 2 == 0 {
            g.connect(conn, &name, conn + 1);
        } else {
            g.gate.connect(conn).unwrap();
        }
        for _ in 0..20 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            g.gate.recv(conn, &bytes);
        }
        for a in g.pump() {
            if let Action::Request { session, .. } = a {
                let _ = g.gate.respond(user, session, b"r", next() % 2 == 0);
            }
        }
        g.gate.closed(conn);
        g.pump();
    }
    assert_eq!(g.gate.connection_count(), 0);
    assert_eq!(g.gate.user_count(), 1);
}

#[test]
fn login_client_reads_refusals_at_any_step() {
    for (answer, code) in [
        (&b"401 Unauthorized\n"[..], 401),
        (b"406 Not Acceptable\n", 406),
    ] {
        let mut c = LoginClient::new(1, b"t", LoginLimits::default());
        c.recv(b"XH4LmhPU8iY=\n");
        c.recv(answer);
        assert_eq!(c.poll(), LoginClientEvent::Refused(code));
    }
    let mut c = LoginClient::new(1, b"t", LoginLimits::default());
    c.recv(b"not base64 at all!\n");
    assert!(matches!(c.poll(), LoginClientEvent::Failed(_)));
}
