//! Checks every entry of `tests/data/skynet_login.json`: values and
//! transcripts recorded from skynet's own crypt library, login server and
//! msgserver gate, replayed here against the sans-IO machines byte by byte.

use ringgate::proto::skynet::gate::{Action, CloseReason, ConnId, MsgGate, UserId};
use ringgate::proto::skynet::login::{
    LoginClient, LoginClientEvent, LoginEvent, LoginFailure, LoginLimits, LoginLocks, LoginServer,
    Refusal, Token,
};
use ringgate::proto::skynet::{b64, des, packet};
use ringgate::proto::{crypt, dh64};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/skynet_login.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("JSON")
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn le(v: &Value) -> u64 {
    u64::from_le_bytes(hex_of(v).try_into().expect("8 bytes"))
}

fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    let l = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is a list"));
    assert!(!l.is_empty(), "{key} has entries");
    l
}

fn has_error(e: &Value) -> bool {
    e["outputs"]["error"].is_string()
}

#[test]
fn dhexchange() {
    let v = vectors();
    for e in list(&v, "dhexchange") {
        let key = hex_of(&e["inputs"]["private_hex"]);
        if has_error(e) {
            // A zero or short key: skynet refuses it. Here keys are u64 and
            // the private key is never 0 (`private_key_from`).
            assert!(key.len() != 8 || key == [0; 8], "{e}");
            assert_eq!(dh64::private_key_from(0), 1);
            continue;
        }
        let k = u64::from_le_bytes(key.try_into().unwrap());
        assert_eq!(dh64::public_key(k), le(&e["outputs"]["public_hex"]), "{e}");
    }
}

#[test]
fn dhsecret() {
    let v = vectors();
    for e in list(&v, "dhsecret") {
        let (i, o) = (&e["inputs"], &e["outputs"]);
        if i["client_private_hex"].is_string() {
            let (c, s) = (le(&i["client_private_hex"]), le(&i["server_private_hex"]));
            let (cp, sp) = (dh64::public_key(c), dh64::public_key(s));
            assert_eq!(cp, le(&o["client_public_hex"]), "{e}");
            assert_eq!(sp, le(&o["server_public_hex"]), "{e}");
            assert_eq!(dh64::secret(c, sp), le(&o["secret_hex"]), "{e}");
            assert_eq!(dh64::secret(s, cp), le(&o["secret_hex"]), "{e}");
            continue;
        }
        let (peer, private) = (le(&i["peer_public_hex"]), le(&i["private_hex"]));
        // The login server refuses every one of these peer values before
        // using them (see `login_refuses_degenerate_client_keys`); where
        // skynet computes a value, ours agrees unless skynet's P quirk is hit.
        if has_error(e) {
            // 0 as either key: a refused peer value, or a private key that
            // `private_key_from` never yields.
            assert!(!dh64::is_valid_public(peer) || private == 0, "{e}");
            continue;
        }
        assert!(!dh64::is_valid_public(peer) || peer == 1, "{e}");
        let expected = le(&o["secret_hex"]);
        if peer == dh64::P && private == 1 {
            // skynet does not reduce a peer value equal to P; we do.
            assert_eq!(expected, dh64::P);
            assert_eq!(dh64::secret(private, peer), 0);
        } else {
            assert_eq!(dh64::secret(private, peer), expected, "{e}");
        }
    }
}

#[test]
fn hmac64() {
    let v = vectors();
    for e in list(&v, "hmac64") {
        let (x, y) = (hex_of(&e["inputs"]["x_hex"]), hex_of(&e["inputs"]["y_hex"]));
        if has_error(e) {
            assert!(x.len() != 8 || y.len() != 8, "{e}");
            continue;
        }
        let got = crypt::hmac64(le(&e["inputs"]["x_hex"]), le(&e["inputs"]["y_hex"]));
        assert_eq!(got, le(&e["outputs"]["hmac_hex"]), "{e}");
    }
}

#[test]
fn hashkey() {
    let v = vectors();
    for e in list(&v, "hashkey") {
        let text = hex_of(&e["inputs"]["text_hex"]);
        assert_eq!(
            crypt::hashkey(&text),
            le(&e["outputs"]["hashkey_hex"]),
            "{e}"
        );
    }
}

#[test]
fn hmac_hash() {
    let v = vectors();
    for e in list(&v, "hmac_hash") {
        let text = e["inputs"]["text"].as_str().unwrap().as_bytes();
        let got = crypt::hmac_hash(le(&e["inputs"]["secret_hex"]), text);
        assert_eq!(got, le(&e["outputs"]["hmac_hex"]), "{e}");
        assert_eq!(
            b64::encode(&got.to_le_bytes()),
            e["outputs"]["base64"].as_str().unwrap()
        );
    }
}

#[test]
fn desencode() {
    let v = vectors();
    let mut checked = 0;
    for e in list(&v, "desencode") {
        let i = &e["inputs"];
        let key = hex_of(&i["key_hex"]);
        if has_error(e) {
            // Keys are u64 here: a 7-byte key cannot be expressed.
            assert_ne!(key.len(), 8, "{e}");
            continue;
        }
        if i["padding_mode"].is_number() {
            // skynet's optional PKCS#7 mode; the login protocol never uses it.
            continue;
        }
        let key = u64::from_le_bytes(key.try_into().unwrap());
        let text = hex_of(&i["plaintext_hex"]);
        let cipher = hex_of(&e["outputs"]["ciphertext_hex"]);
        assert_eq!(des::encrypt(key, &text), cipher, "{e}");
        assert_eq!(des::decrypt(key, &cipher).unwrap(), text, "{e}");
        checked += 1;
    }
    assert_eq!(checked, 14);
}

#[test]
fn desdecode() {
    let v = vectors();
    for e in list(&v, "desdecode") {
        let key = le(&e["inputs"]["key_hex"]);
        let cipher = hex_of(&e["inputs"]["ciphertext_hex"]);
        let got = des::decrypt(key, &cipher);
        if has_error(e) {
            let err = got.expect_err(&e.to_string());
            let want_length = e["outputs"]["error"].as_str().unwrap().contains("length");
            assert_eq!(matches!(err, des::DesError::Length(_)), want_length, "{e}");
        } else {
            assert_eq!(got.unwrap(), hex_of(&e["outputs"]["plaintext_hex"]), "{e}");
        }
    }
}

#[test]
fn base64encode() {
    let v = vectors();
    for e in list(&v, "base64encode") {
        let bytes = hex_of(&e["inputs"]["bytes_hex"]);
        assert_eq!(
            b64::encode(&bytes),
            e["outputs"]["text"].as_str().unwrap(),
            "{e}"
        );
    }
}

#[test]
fn base64decode() {
    let v = vectors();
    for e in list(&v, "base64decode") {
        let got = b64::decode(e["inputs"]["text"].as_str().unwrap().as_bytes());
        if has_error(e) {
            assert!(got.is_err(), "{e}");
        } else {
            assert_eq!(got.unwrap(), hex_of(&e["outputs"]["bytes_hex"]), "{e}");
        }
    }
}

// ---- login transcripts -----------------------------------------------------

const PINNED_CHALLENGE: &str = "5c7e0b9a13d4f226";
const PINNED_SERVER_KEY: &str = "3f1a9c2e7b4d8e61";

fn pinned_server() -> LoginServer {
    LoginServer::new(
        le(&Value::from(PINNED_CHALLENGE)),
        le(&Value::from(PINNED_SERVER_KEY)),
        LoginLimits::default(),
    )
}

/// What skynet's login example decides, with the game server's side kept in
/// `gate` (users log in there; a re-login kicks the previous one).
struct LoginWorld {
    locks: LoginLocks,
    gate: MsgGate,
    next_subid: u32,
    online: HashMap<Vec<u8>, UserId>,
    /// Users whose login lock a test keeps to make two logins overlap.
    hold_lock: HashSet<Vec<u8>>,
}

impl LoginWorld {
    fn new(next_subid: u32) -> Self {
        LoginWorld {
            locks: LoginLocks::default(),
            gate: MsgGate::default(),
            next_subid,
            online: HashMap::new(),
            hold_lock: HashSet::new(),
        }
    }

    fn drive(&mut self, s: &mut LoginServer) {
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
                    let r = self.locks.begin(&user).and_then(|()| {
                        if server != b"sample" {
                            return Err(Refusal::Forbidden);
                        }
                        if let Some(old) = self.online.remove(&user) {
                            self.gate.kick(old);
                        }
                        let subid = self.next_subid.to_string().into_bytes();
                        self.next_subid += 1;
                        let name = packet::username(&user, &server, &subid);
                        let id = self.gate.login(&name, secret).expect("gate login");
                        self.online.insert(user.clone(), id);
                        Ok(subid)
                    });
                    if r != Err(Refusal::NotAcceptable) && !self.hold_lock.contains(&user) {
                        self.locks.end(&user);
                    }
                    s.logged_in(r);
                }
                _ => return,
            }
        }
    }
}

/// Plays one recorded login connection against the server machine and
/// checks every byte it sends; returns the final event.
fn replay_login(conn: &Value, world: &mut LoginWorld) -> LoginEvent {
    let mut s = pinned_server();
    let mut sent = s.take_output();
    let mut expected = Vec::new();
    for ev in conn["events"].as_array().unwrap() {
        match ev["dir"].as_str() {
            Some("C->S") => {
                let bytes = match ev["hex"].as_str() {
                    Some(_) => hex_of(&ev["hex"]),
                    None => vec![b'A'; 9000],
                };
                s.recv(&bytes);
                world.drive(&mut s);
                sent.extend(s.take_output());
            }
            Some("S->C") => expected.extend(hex_of(&ev["hex"])),
            _ => {
                let what = ev["event"].as_str().unwrap();
                if what.starts_with("server closed") || what.starts_with("server kept") {
                    // Both end the login: the machine closes after any answer.
                    assert!(s.is_finished(), "{}: {what}", conn["connection"]);
                }
            }
        }
    }
    assert_eq!(sent, expected, "{}", conn["connection"]);
    s.poll()
}

/// Plays the client side of a recorded login: fed the server's lines, the
/// client machine must send exactly the recorded client lines.
fn replay_login_client(conn: &Value, private: u64, token: &[u8]) -> LoginClientEvent {
    let mut c = LoginClient::new(private, token, LoginLimits::default());
    let (mut sent, mut expected) = (Vec::new(), Vec::new());
    for ev in conn["events"].as_array().unwrap() {
        match ev["dir"].as_str() {
            Some("S->C") => c.recv(&hex_of(&ev["hex"])),
            Some("C->S") => expected.extend(hex_of(&ev["hex"])),
            _ => {}
        }
        sent.extend(c.take_output());
    }
    assert_eq!(sent, expected, "{}", conn["connection"]);
    c.poll()
}

#[test]
fn login_success_both_sides() {
    let v = vectors();
    let ls = &v["login_success"];
    let conn = &ls["connections"][0];
    let mut world = LoginWorld::new(1);
    let LoginEvent::Done(ok) = replay_login(conn, &mut world) else {
        panic!("login failed");
    };
    assert_eq!(ok.secret, le(&ls["outputs"]["secret_hex"]));
    assert_eq!(ok.subid, b"1");
    assert_eq!(
        (&ok.user[..], &ok.server[..]),
        (&b"hello"[..], &b"sample"[..])
    );

    let token = ls["outputs"]["token"].as_str().unwrap().as_bytes();
    let t = Token {
        user: b"hello".to_vec(),
        server: b"sample".to_vec(),
        password: b"password".to_vec(),
    };
    assert_eq!(t.encode(), token);
    assert_eq!(Token::parse(token), Some(t));
    let out = replay_login_client(conn, le(&ls["inputs"]["client_private_hex"]), token);
    assert_eq!(
        out,
        LoginClientEvent::Success {
            subid: b"1".to_vec(),
            secret: le(&ls["outputs"]["secret_hex"])
        }
    );
    let des_token = hex_of(&ls["outputs"]["des_token_hex"]);
    assert_eq!(des::encrypt(ok.secret, token), des_token);
    assert_eq!(
        crypt::hmac64(le(&ls["inputs"]["challenge_hex"]), ok.secret),
        le(&ls["outputs"]["challenge_hmac_hex"])
    );
}

#[test]
fn login_unpinned_run_client_side() {
    let v = vectors();
    let run = &v["login_unpinned_run"];
    let private = le(&run["inputs"]["client_private_hex"]);
    let secret = le(&run["outputs"]["secret_hex"]);
    let conns = run["connections"].as_array().unwrap();
    let token = b"aGVsbG8=@c2FtcGxl:cGFzc3dvcmQ=";
    let mut c = LoginClient::new(private, token, LoginLimits::default());
    c.recv(&hex_of(&conns[0]["s2c_stream_hex"]));
    assert_eq!(c.take_output(), hex_of(&conns[0]["c2s_stream_hex"]));
    assert_eq!(
        c.poll(),
        LoginClientEvent::Success {
            subid: b"1".to_vec(),
            secret
        }
    );

    // The two gate connections client.lua made, built by packet helpers and
    // answered by the gate machine.
    let name = packet::username(b"hello", b"sample", b"1");
    let mut gate = Harness::new();
    let user = gate.gate.login(&name, secret).unwrap();
    let mut c2s = Vec::new();
    packet::write_packet(&packet::handshake(&name, 1, secret), &mut c2s).unwrap();
    packet::write_request(b"echo", 0, &mut c2s).unwrap();
    assert_eq!(c2s, hex_of(&conns[1]["c2s_stream_hex"]));
    gate.open(1);
    gate.feed(1, &c2s);
    gate.closed(1);
    let mut c2s = Vec::new();
    packet::write_packet(&packet::handshake(&name, 2, secret), &mut c2s).unwrap();
    packet::write_request(b"fake", 0, &mut c2s).unwrap();
    packet::write_request(b"again", 1, &mut c2s).unwrap();
    assert_eq!(c2s, hex_of(&conns[2]["c2s_stream_hex"]));
    gate.open(2);
    gate.feed(2, &c2s);
    gate.answer_all();
    assert_eq!(gate.sent(1), hex_of(&conns[1]["s2c_stream_hex"]));
    assert_eq!(gate.sent(2), hex_of(&conns[2]["s2c_stream_hex"]));
    assert_eq!(gate.runs(user, 0), 1, "session 0 ran once");
}

#[test]
fn login_answers_every_case() {
    let v = vectors();
    let la = &v["login_answers"];
    let mut world = LoginWorld::new(2);
    // hello#1 is online from login_success.
    let old_secret = le(&v["login_success"]["outputs"]["secret_hex"]);
    let old_name = packet::username(b"hello", b"sample", b"1");
    let old = world.gate.login(&old_name, old_secret).unwrap();
    world.online.insert(b"hello".to_vec(), old);
    world.hold_lock.insert(b"racer".to_vec());

    let cases: HashMap<&str, &Value> = list(la, "cases")
        .iter()
        .map(|c| (c["connection"].as_str().unwrap(), c))
        .collect();
    let mut gate_conns = Vec::new();
    for conn in list(la, "connections") {
        let name = conn["connection"].as_str().unwrap();
        if conn["to"] == "gate" {
            gate_conns.push(conn);
            continue;
        }
        let case = cases[name];
        let end = replay_login(conn, &mut world);
        match case["outputs"]["answer_hex"].as_str() {
            None => assert_eq!(end, LoginEvent::Failed(LoginFailure::LineTooLong(8192))),
            Some(_)
                if case["outputs"]["answer"]
                    .as_str()
                    .unwrap()
                    .starts_with("200") =>
            {
                assert!(matches!(end, LoginEvent::Done(_)), "{name}: {end:?}")
            }
            Some(_) => assert!(matches!(end, LoginEvent::Failed(_)), "{name}: {end:?}"),
        }
        if name == "concurrent-b" {
            world.locks.end(b"racer");
        }
        // Where the client is honest, the client machine sends the same bytes.
        let i = &case["inputs"];
        if let (Some(token), true) = (i["token"].as_str(), i["client_private_hex"].is_string()) {
            let got = replay_login_client(conn, le(&i["client_private_hex"]), token.as_bytes());
            let answer = case["outputs"]["answer"].as_str().unwrap();
            match got {
                LoginClientEvent::Success { subid, secret } => {
                    assert_eq!(format!("200 {}", b64::encode(&subid)), answer);
                    assert_eq!(secret, le(&i["secret_hex"]));
                }
                LoginClientEvent::Refused(code) => assert!(answer.starts_with(&code.to_string())),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    assert!(world.locks.begin(b"racer").is_ok(), "locks released");

    // The gate after the re-login: the kicked subid is gone, the new works.
    let mut h = Harness::with_gate(world.gate);
    for conn in gate_conns {
        h.replay(conn, None);
    }
    let relogin = &cases["relogin-while-online"]["outputs"]["new_subid_gate_handshake"];
    assert_eq!(
        crypt::hashkey(relogin["text"].as_str().unwrap().as_bytes()),
        le(&relogin["hashkey_hex"])
    );
}

#[test]
fn login_refuses_degenerate_client_keys() {
    for key in [0u64, 1, dh64::P, dh64::P + 1, u64::MAX] {
        let mut s = pinned_server();
        s.take_output();
        let mut line = b64::encode(&key.to_le_bytes()).into_bytes();
        line.push(b'\n');
        s.recv(&line);
        assert_eq!(s.take_output(), b"401 Unauthorized\n", "{key}");
        assert_eq!(s.poll(), LoginEvent::Failed(LoginFailure::BadClientKey));
    }
}

// ---- gate transcripts --------------------------------------------------------

/// The gate machine with an agent that answers each request with its
/// payload, and everything it did recorded per connection.
struct Harness {
    gate: MsgGate,
    pending: Vec<(UserId, u32, Vec<u8>)>,
    sent: HashMap<ConnId, Vec<u8>>,
    closed: HashMap<ConnId, CloseReason>,
    runs: HashMap<(UserId, u32), usize>,
    next_conn: ConnId,
}

impl Harness {
    fn new() -> Self {
        Self::with_gate(MsgGate::default())
    }

    fn with_gate(gate: MsgGate) -> Self {
        Harness {
            gate,
            pending: Vec::new(),
            sent: HashMap::new(),
            closed: HashMap::new(),
            runs: HashMap::new(),
            next_conn: 100,
        }
    }

    fn pump(&mut self) {
        while let Some(a) = self.gate.poll() {
            match a {
                Action::Send { conn, bytes } => {
                    assert!(!self.closed.contains_key(&conn), "send after close");
                    self.sent.entry(conn).or_default().extend(bytes)
                }
                Action::Close { conn, reason } => {
                    self.closed.insert(conn, reason);
                }
                Action::Request {
                    user,
                    session,
                    payload,
                } => {
                    *self.runs.entry((user, session)).or_default() += 1;
                    self.pending.push((user, session, payload));
                }
                Action::Online { .. } | Action::Afk { .. } => {}
            }
        }
    }

    fn open(&mut self, conn: ConnId) {
        self.gate.connect(conn).unwrap();
    }

    fn feed(&mut self, conn: ConnId, bytes: &[u8]) {
        self.gate.recv(conn, bytes);
        self.pump();
    }

    fn closed(&mut self, conn: ConnId) {
        self.gate.closed(conn);
        self.pump();
    }

    fn answer_all(&mut self) {
        for (user, session, payload) in std::mem::take(&mut self.pending) {
            // A request dropped by a conflict has nobody to answer.
            let _ = self.gate.respond(user, session, &payload, true);
        }
        self.pump();
    }

    fn sent(&self, conn: ConnId) -> Vec<u8> {
        self.sent.get(&conn).cloned().unwrap_or_default()
    }

    fn runs(&self, user: UserId, session: u32) -> usize {
        self.runs.get(&(user, session)).copied().unwrap_or(0)
    }

    /// Plays a recorded gate connection. The agent answers whenever the
    /// recording shows the client waiting for an answer.
    fn replay(&mut self, conn_v: &Value, retire: Option<&mut Vec<u8>>) -> ConnId {
        let name = conn_v["connection"].as_str().unwrap();
        let conn = self.next_conn;
        self.next_conn += 1;
        self.open(conn);
        let events = conn_v["events"].as_array().unwrap();
        let mut expected = Vec::new();
        let mut retire = retire;
        for (i, ev) in events.iter().enumerate() {
            match ev["dir"].as_str() {
                Some("C->S") => {
                    let bytes = match ev["hex"].as_str() {
                        Some(_) => hex_of(&ev["hex"]),
                        None => {
                            // 300 requests `r<session>`, sessions 1000..1299.
                            let mut b = Vec::new();
                            for s in 1000u32..1300 {
                                packet::write_request(format!("r{s}").as_bytes(), s, &mut b)
                                    .unwrap();
                            }
                            assert_eq!(b.len() as u64, ev["total_bytes"].as_u64().unwrap());
                            assert!(b.starts_with(&hex_of(&ev["hex_first_two"])));
                            b
                        }
                    };
                    self.feed(conn, &bytes);
                }
                Some("S->C") => {
                    match ev["hex"].as_str() {
                        Some(_) => expected.extend(hex_of(&ev["hex"])),
                        None => {
                            for s in 1000u32..1300 {
                                packet::write_response(
                                    format!("r{s}").as_bytes(),
                                    true,
                                    s,
                                    &mut expected,
                                )
                                .unwrap();
                            }
                            if let Some(r) = retire.as_deref_mut() {
                                r.clear();
                            }
                        }
                    }
                    let next_is_answer = events.get(i + 1).is_some_and(|n| n["dir"] == "S->C");
                    if !next_is_answer {
                        self.answer_all();
                        assert_eq!(self.sent(conn), expected, "{name}: {}", ev["what"]);
                    }
                }
                _ => {
                    let what = ev["event"].as_str().unwrap();
                    if what.starts_with("client closes") {
                        self.closed(conn);
                    } else if what.starts_with("server closed") {
                        assert!(self.closed.contains_key(&conn), "{name}: {what}");
                        assert_eq!(self.sent(conn), expected, "{name}: {what}");
                    } else if what.starts_with("no packet") {
                        self.answer_all();
                        assert_eq!(self.sent(conn), expected, "{name}: {what}");
                    } else {
                        panic!("{name}: unknown event {what}");
                    }
                }
            }
        }
        conn
    }
}

#[test]
fn msgserver_exchange() {
    let v = vectors();
    let ex = &v["msgserver_exchange"];
    let secret = le(&ex["inputs"]["secret_hex"]);
    let name = packet::username(b"hello", b"sample", b"1");
    for (k, hs) in ex["outputs"]["handshakes"].as_object().unwrap() {
        let index: u64 = k.trim_start_matches("index").parse().unwrap();
        let text = hs["text"].as_str().unwrap();
        let mut signed = name.clone();
        signed.extend(format!(":{index}").as_bytes());
        assert_eq!(signed, text.as_bytes());
        assert_eq!(crypt::hashkey(text.as_bytes()), le(&hs["hashkey_hex"]));
        assert_eq!(
            crypt::hmac_hash(secret, text.as_bytes()),
            le(&hs["hmac_hex"])
        );
        let hmac = b64::encode(&le(&hs["hmac_hex"]).to_le_bytes());
        assert_eq!(
            packet::handshake(&name, index, secret),
            format!("{text}:{hmac}").into_bytes()
        );
    }

    let mut h = Harness::new();
    let user = h.gate.login(&name, secret).unwrap();
    let conns: Vec<ConnId> = list(ex, "connections")
        .iter()
        .map(|c| h.replay(c, None))
        .collect();
    use ringgate::proto::skynet::gate::HandshakeCode as C;
    let reasons: Vec<Option<CloseReason>> =
        conns.iter().map(|c| h.closed.get(c).copied()).collect();
    assert_eq!(
        reasons,
        vec![
            None, // client closed gate-1 and gate-2 itself
            None,
            Some(CloseReason::ConflictSession(7)),
            Some(CloseReason::Handshake(C::IndexExpired)),
            Some(CloseReason::Handshake(C::Unauthorized)),
            Some(CloseReason::Handshake(C::UserNotFound)),
            Some(CloseReason::Handshake(C::BadRequest)),
            Some(CloseReason::Handshake(C::UserNotFound)),
            Some(CloseReason::Handshake(C::UserNotFound)),
            Some(CloseReason::ShortRequest),
        ]
    );
    // Every request ran once, however often the client repeated it; the
    // repeats of answered sessions on the same connection ran anew.
    assert_eq!(h.runs(user, 0), 1);
    assert_eq!(h.runs(user, 1), 2);
    assert_eq!(h.runs(user, 5), 1);
    assert_eq!(h.runs(user, 6), 1);
    assert_eq!(h.runs(user, 7), 1);
    assert_eq!(h.gate.user_count(), 1, "closes keep the user logged in");
}

#[test]
fn msgserver_retire() {
    let v = vectors();
    let r = &v["msgserver_retire"];
    let i = &r["inputs"];
    let conns = list(r, "connections");
    let mut world = LoginWorld::new(1);
    // The login, byte by byte, and the gate login it causes.
    let LoginEvent::Done(ok) = replay_login(&conns[0], &mut world) else {
        panic!("login failed");
    };
    assert_eq!(ok.secret, le(&i["secret_hex"]));
    assert_eq!(
        des::encrypt(ok.secret, i["token"].as_str().unwrap().as_bytes()),
        hex_of(&i["des_token_hex"])
    );
    let user = world.online[&b"retire"[..]];
    let mut h = Harness::with_gate(world.gate);
    let mut scratch = Vec::new();
    h.replay(&conns[1], Some(&mut scratch));
    assert_eq!(h.gate.cached_entries(user), 172);
    h.replay(&conns[2], None);
    assert_eq!(h.runs(user, 1000), 2, "forgotten: ran anew");
    assert_eq!(h.runs(user, 1127), 2);
    assert_eq!(h.runs(user, 1128), 1, "cached: not run again");
    assert_eq!(h.runs(user, 1299), 1);
}
