//! Checks every entry of `tests/data/stable_connection.json`, the values
//! recorded by running cloudwu's stable-connection code, against
//! `proto::stable`. Where the published server and the corrected one differ
//! (its replay goes nowhere; it fingerprints ciphertext), ringgate follows
//! the corrected one, and the published entries are checked for what they
//! show: the same wire bytes up to the defect, and the defect's effect.

use ringgate::proto::dh64;
use ringgate::proto::stable::{
    self, ClientHandshake, ClientStep, Fingerprint, Role, ServerHandshake, ServerStep,
    StableSession,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/stable_connection.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("valid JSON")
}

fn u64_hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("hex string"), 16).expect("u64 hex")
}

fn u32_hex(v: &Value) -> u32 {
    u32::from_str_radix(v.as_str().expect("hex string"), 16).expect("u32 hex")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    let l = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is a list"));
    assert!(!l.is_empty(), "{key} has entries");
    l
}

/// The 600-byte test stream of the `fingerprints` entry.
fn test_stream(len: usize) -> Vec<u8> {
    let mut x: u64 = 3;
    (0..len)
        .map(|_| {
            x = (x * 1_103_515_245 + 12345) % (1 << 31);
            ((x >> 16) & 0xff) as u8
        })
        .collect()
}

/// Everything a session's window holds unsent, marked sent.
fn take_unsent(s: &mut StableSession) -> Vec<u8> {
    let out: Vec<u8> = s.window().unsent_slices().flatten().copied().collect();
    s.window_mut().mark_sent(out.len());
    out
}

fn send(s: &mut StableSession, plain: &[u8]) -> Vec<u8> {
    assert_eq!(s.encrypt(plain), plain.len());
    take_unsent(s)
}

fn recv(s: &mut StableSession, wire: &[u8]) -> Vec<u8> {
    let mut b = wire.to_vec();
    s.decrypt(&mut b);
    b
}

#[test]
fn unseeded_randomness_is_recorded_not_used() {
    let v = vectors();
    let e = &v["unseeded_randomint64"]["outputs"];
    let values = list(e, "values_u64_hex");
    let le = list(e, "values_le_hex");
    assert_eq!(values.len(), le.len());
    for (x, l) in values.iter().zip(le) {
        assert_eq!(u64_hex(x).to_le_bytes().to_vec(), bytes(l));
    }
    // The published server's first key and challenge are these values; the
    // live runs below start from them (ringgate draws its own).
    let live = &v["live_runs"]["small_fixed"]["keys"];
    assert_eq!(
        bytes(&live["server_private_le_hex"]),
        bytes(&values_le(e, 0))
    );
    assert_eq!(bytes(&live["challenge_le_hex"]), bytes(&values_le(e, 1)));
}

fn values_le(e: &Value, i: usize) -> Value {
    e["values_le_hex"][i].clone()
}

#[test]
fn dh64() {
    let v = vectors();
    for e in list(&v, "dh64") {
        if let Some(base) = e["inputs"].get("base_u64_hex") {
            let (base, exp) = (u64_hex(base), u64_hex(&e["inputs"]["exponent_u64_hex"]));
            let want = u64_hex(&e["outputs"]["result_u64_hex"]);
            if base == dh64::P && exp == 1 {
                // The C code's quirk (P^1 = P) never matters here: a public
                // key of P is refused before any secret is computed.
                assert_eq!(want, dh64::P);
                assert!(!dh64::is_valid_public(base));
                continue;
            }
            assert_eq!(dh64::pow_mod(base, exp), want, "{e}");
            continue;
        }
        let private = u64_hex(&e["inputs"]["private_u64_hex"]);
        assert_eq!(
            private.to_le_bytes().to_vec(),
            bytes(&e["inputs"]["private_le_hex"])
        );
        let public = dh64::public_key(private);
        assert_eq!(public, u64_hex(&e["outputs"]["public_u64_hex"]), "{e}");
        assert_eq!(
            public.to_le_bytes().to_vec(),
            bytes(&e["outputs"]["public_le_hex"])
        );
    }
}

#[test]
fn hmac() {
    let v = vectors();
    for e in list(&v, "hmac") {
        let (x, y) = (
            u64_hex(&e["inputs"]["x_u64_hex"]),
            u64_hex(&e["inputs"]["y_u64_hex"]),
        );
        assert_eq!(x.to_le_bytes().to_vec(), bytes(&e["inputs"]["x_le_hex"]));
        assert_eq!(y.to_le_bytes().to_vec(), bytes(&e["inputs"]["y_le_hex"]));
        let h = stable::hmac(x, y);
        assert_eq!(h, u64_hex(&e["outputs"]["u64_hex"]), "{e}");
        assert_eq!(h.to_le_bytes().to_vec(), bytes(&e["outputs"]["le_hex"]));
    }
}

#[test]
fn rc4_variant() {
    let v = vectors();
    for e in list(&v, "rc4_variant") {
        let secret = u64_hex(&e["inputs"]["secret_u64_hex"]);
        assert_eq!(
            secret.to_le_bytes().to_vec(),
            bytes(&e["inputs"]["secret_le_hex"])
        );
        let o = &e["outputs"];
        assert_eq!(stable::key(secret).to_vec(), bytes(&o["key_le_hex"]), "{e}");
        if let Some(sbox) = o.get("sbox_initial_hex") {
            assert_eq!(stable::initial_state(secret).to_vec(), bytes(sbox), "{e}");
        }
        let initial = Fingerprint::initial(secret);
        assert_eq!(initial.0, u32_hex(&o["fingerprint_initial_hex32"]), "{e}");

        let mut ks = [0u8; 64];
        stable::cipher(secret).apply(&mut ks);
        assert_eq!(ks.to_vec(), bytes(&o["keystream_first64_hex"]), "{e}");
        let mut fp = initial;
        fp.feed(&ks);
        assert_eq!(fp.0, u32_hex(&o["fingerprint_after_keystream64_hex32"]));

        let plain = bytes(&o["decrypt_back_hex"]);
        let mut ct = plain.clone();
        stable::cipher(secret).apply(&mut ct);
        assert_eq!(ct, bytes(&o["encrypt_hello_world_hex"]), "{e}");
        // The published code fingerprints its output: ciphertext when it
        // encrypts, plaintext when it decrypts.
        let mut fp = initial;
        fp.feed(&ct);
        assert_eq!(fp.0, u32_hex(&o["fingerprint_after_encrypt_hex32"]), "{e}");
        let mut back = ct.clone();
        stable::cipher(secret).apply(&mut back);
        assert_eq!(back, plain);
        let mut fp = initial;
        fp.feed(&back);
        assert_eq!(fp.0, u32_hex(&o["fingerprint_after_decrypt_hex32"]), "{e}");
    }
}

#[test]
fn fingerprint_table() {
    let v = vectors();
    let e = &v["fingerprints"];
    let secret = u64_hex(&e["inputs"]["secret_u64_hex"]);
    let plain = test_stream(600);
    assert_eq!(
        plain[..16].to_vec(),
        bytes(&e["inputs"]["plaintext_first16_hex"])
    );
    let mut server = StableSession::new(Role::Server, secret, 65536);
    let mut client = StableSession::new(Role::Client, secret, stable::CLIENT_WINDOW);
    let ct = send(&mut server, &plain);
    assert_eq!(ct, bytes(&e["outputs"]["ciphertext_hex"]));
    let table = e["outputs"]["at_byte_count"].as_object().unwrap();
    assert_eq!(table.len(), 3);
    for (count, cols) in table {
        let count: usize = count.parse().unwrap();
        let client_fp = u32_hex(&cols["client_plaintext_fp_hex32"]);
        let fixed = u32_hex(&cols["fixed_server_plaintext_fp_hex32"]);
        let published = u32_hex(&cols["published_server_ciphertext_fp_hex32"]);
        assert_eq!(server.fingerprint_at(count as u64 / 256), Some(fixed));
        assert_eq!(client_fp, fixed);
        let mut fp = Fingerprint::initial(secret);
        fp.feed(&ct[..count]);
        assert_eq!(fp.0, published, "the published server's column at {count}");
        // The client's fingerprint, once it has received exactly `count`.
        let mut c = StableSession::new(Role::Client, secret, 65536);
        recv(&mut c, &ct[..count]);
        if count > 0 {
            let req = c.resume_request().unwrap();
            assert_eq!(u32::from_le_bytes(req[8..].try_into().unwrap()), client_fp);
        }
    }
    assert_eq!(recv(&mut client, &ct), plain);
}

/// The wire events of a session entry, in order (random draws left out).
struct Events<'a>(std::slice::Iter<'a, Value>);

impl<'a> Events<'a> {
    fn next(&mut self) -> &'a Value {
        loop {
            let e = self.0.next().expect("another event");
            if e.get("random_drawn_u64_hex").is_none() {
                return e;
            }
        }
    }

    fn wire(&mut self, dir: &str) -> Vec<u8> {
        let e = self.next();
        assert_eq!(e["dir"], dir, "{e}");
        bytes(&e["hex"])
    }

    fn app(&mut self) -> Vec<u8> {
        let e = self.next();
        assert!(e.get("app").is_some(), "{e}");
        bytes(&e["hex"])
    }
}

/// A new session between our client and server machines, checked against
/// the first three wire events; returns both sessions and the bytes the
/// client sent after its proof.
fn new_session(
    ev: &mut Events,
    client_private: u64,
    server_private: u64,
    challenge: u64,
    first: &[u8],
) -> (StableSession, StableSession) {
    let (mut ch, req) = ClientHandshake::new_session(client_private);
    assert_eq!(req.to_vec(), ev.wire("C->S"));
    let mut sh = ServerHandshake::default();
    assert_eq!(sh.recv(&req), 16);
    assert!(matches!(sh.poll(), ServerStep::NewSession { .. }));
    let answer = sh.accept_new(server_private, challenge);
    assert_eq!(answer.to_vec(), ev.wire("S->C"));
    ch.recv(&answer);
    let ClientStep::Established { secret, auth } = ch.poll() else {
        panic!("client established")
    };
    let mut client = StableSession::new(Role::Client, secret, stable::CLIENT_WINDOW);
    let mut server = StableSession::new(Role::Server, secret, 65536);
    let mut wire = auth.to_vec();
    wire.extend(send(&mut client, first));
    assert_eq!(wire, ev.wire("C->S"));
    assert_eq!(sh.recv(&wire), 8);
    assert_eq!(sh.poll(), ServerStep::Established { secret });
    assert_eq!(recv(&mut server, &wire[8..]), first);
    (client, server)
}

/// A resume of `server` by `client`, checked against its wire events; the
/// server answers with `challenge`. Returns the server's replay.
fn resume(
    ev: &mut Events,
    client: &mut StableSession,
    server: &mut StableSession,
    challenge: u64,
    new_data: &[u8],
) -> Vec<u8> {
    let req = client.resume_request().expect("something received");
    assert_eq!(req.to_vec(), ev.wire("C->S"));
    let mut sh = ServerHandshake::default();
    assert_eq!(sh.recv(&req), 12);
    let ServerStep::Resume {
        received,
        fingerprint,
    } = sh.poll()
    else {
        panic!("a resume")
    };
    assert!(server.matches(received, fingerprint));
    let answer = sh.answer_resume(server.received(), challenge);
    assert_eq!(answer.to_vec(), ev.wire("S->C"));
    let mut ch = ClientHandshake::resume();
    ch.recv(&answer);
    let ClientStep::Answered {
        server_received,
        challenge,
    } = ch.poll()
    else {
        panic!("answered")
    };
    let auth = client.resumed(server_received, challenge).unwrap();
    let mut wire = auth.to_vec();
    let replay_len = client.window().unsent();
    wire.extend(send(client, new_data));
    assert_eq!(wire, ev.wire("C->S"));
    assert_eq!(sh.recv(&wire), 8);
    assert_eq!(sh.poll(), ServerStep::Proof);
    assert!(sh.proves(server.secret()));
    let resend = server.accept_resume(received).unwrap();
    let from_client = recv(server, &wire[8..]);
    assert_eq!(&from_client[replay_len..], new_data);
    let replay = take_unsent(server);
    assert_eq!(replay.len(), resend);
    replay
}

#[test]
fn session_s1_within_256() {
    let v = vectors();
    let e = &v["session_s1"];
    let i = &e["inputs"];
    let o = &e["outputs"];
    let (cp, sp, c1, c2) = (
        u64_hex(&i["client_private_u64_hex"]),
        u64_hex(&i["server_private_u64_hex"]),
        u64_hex(&i["challenge_u64_hex"]),
        u64_hex(&i["resume_challenge_u64_hex"]),
    );
    assert_eq!(dh64::public_key(cp), u64_hex(&o["client_public_u64_hex"]));
    assert_eq!(dh64::public_key(sp), u64_hex(&o["server_public_u64_hex"]));
    let secret = u64_hex(&o["secret_u64_hex"]);
    assert_eq!(secret.to_le_bytes().to_vec(), bytes(&o["secret_le_hex"]));
    assert_eq!(stable::key(secret).to_vec(), bytes(&o["rc4_key_le_hex"]));
    assert_eq!(
        stable::hmac(c1, secret).to_le_bytes().to_vec(),
        bytes(&o["auth_new_le_hex"])
    );
    assert_eq!(
        stable::hmac(c2, secret).to_le_bytes().to_vec(),
        bytes(&o["auth_resume_le_hex"])
    );
    assert_eq!(
        Fingerprint::initial(secret).0,
        u32_hex(&o["fingerprint_initial_hex32"])
    );

    for variant in ["fixed", "published"] {
        let mut ev = Events(list(e, variant).iter());
        let (mut client, mut server) = new_session(&mut ev, cp, sp, c1, b"hello");
        assert_eq!(client.secret(), secret);
        assert_eq!(ev.app(), b"hello");
        let world = send(&mut server, b"world!");
        assert_eq!(world, ev.wire("S->C"));
        assert_eq!(recv(&mut client, &world), ev.app());
        let again = send(&mut client, b"again");
        assert_eq!(again, ev.wire("C->S"));
        assert_eq!(recv(&mut server, &again), ev.app());
        assert_eq!(send(&mut client, b"lost!"), ev.wire("C->S"));
        assert_eq!(send(&mut server, b"more"), ev.wire("S->C"));
        let replay = resume(&mut ev, &mut client, &mut server, c2, b"");
        assert_eq!(replay, ev.wire("S->C"), "{variant}: the replay bytes");
        if variant == "fixed" {
            assert_eq!(ev.app(), b"lost!");
            assert_eq!(recv(&mut client, &replay), b"more");
            assert_eq!(ev.app(), b"more");
            let ok = send(&mut server, b"ok");
            assert_eq!(ok, ev.wire("S->C"));
            assert_eq!(recv(&mut client, &ok), ev.app());
            assert_eq!(ev.app_or_none(), None);
        } else {
            // The published server sent the replay nowhere: the client's
            // cipher stays 4 bytes behind and 'ok' decrypts to garbage.
            assert_eq!(ev.app(), b"lost!");
            let ok = send(&mut server, b"ok");
            assert_eq!(ok, ev.wire("S->C"));
            assert_eq!(recv(&mut client, &ok), ev.app());
        }
    }
}

impl Events<'_> {
    fn app_or_none(&mut self) -> Option<Vec<u8>> {
        self.0.next().map(|e| bytes(&e["hex"]))
    }
}

#[test]
fn session_s2_after_256() {
    let v = vectors();
    let e = &v["session_s2"];
    let i = &e["inputs"];
    let o = &e["outputs"];
    let (cp, sp, c1, c2) = (
        u64_hex(&i["client_private_u64_hex"]),
        u64_hex(&i["server_private_u64_hex"]),
        u64_hex(&i["challenge_u64_hex"]),
        u64_hex(&i["resume_challenge_u64_hex"]),
    );
    let secret = u64_hex(&o["secret_u64_hex"]);
    assert_eq!(secret.to_le_bytes().to_vec(), bytes(&o["secret_le_hex"]));
    assert_eq!(
        stable::hmac(c1, secret).to_le_bytes().to_vec(),
        bytes(&o["auth_new_le_hex"])
    );
    assert_eq!(
        stable::hmac(c2, secret).to_le_bytes().to_vec(),
        bytes(&o["auth_resume_le_hex"])
    );
    let data = test_stream(300);
    for variant in ["fixed", "published"] {
        let mut ev = Events(list(e, variant).iter());
        let (mut client, mut server) = new_session(&mut ev, cp, sp, c1, b"");
        let ct = send(&mut server, &data);
        assert_eq!(ct, ev.wire("S->C"));
        assert_eq!(recv(&mut client, &ct[..280]), ev.app());
        let req = client.resume_request().unwrap();
        assert_eq!(
            u32::from_le_bytes(req[8..].try_into().unwrap()),
            u32_hex(&o["client_plaintext_fp_at_256_hex32"])
        );
        // The published server keeps the ciphertext's fingerprint there.
        let mut published = Fingerprint::initial(secret);
        published.feed(&ct[..256]);
        assert_eq!(
            published.0,
            u32_hex(&o["published_server_ciphertext_fp_at_256_hex32"])
        );
        assert_ne!(
            published.0,
            u32::from_le_bytes(req[8..].try_into().unwrap())
        );
        if variant == "published" {
            continue;
        }
        let replay = resume(&mut ev, &mut client, &mut server, c2, b"");
        assert_eq!(replay, ev.wire("S->C"));
        let plain = recv(&mut client, &replay);
        assert_eq!(plain, ev.app());
        assert_eq!(plain, data[280..]);
    }
}

/// A live run: a new session echoing `first`, then a resume echoing `then`
/// (or refused, for the published server past 256 bytes).
fn live_run(name: &str, first: &[u8], then: &[u8]) {
    let v = vectors();
    let run = &v["live_runs"][name];
    let k = &run["keys"];
    let le = |key: &str| u64::from_le_bytes(bytes(&k[key]).try_into().unwrap());
    let conns = list(run, "connections");
    let mut ev = Events(list(&conns[0], "events").iter());
    let (mut client, mut server) = new_session(
        &mut ev,
        le("client_private_le_hex"),
        le("server_private_le_hex"),
        le("challenge_le_hex"),
        first,
    );
    assert_eq!(client.secret(), le("secret_le_hex"));
    // The echo: the server sends back what it received, and the shared
    // keystream makes it the very ciphertext the client sent.
    let echo = send(&mut server, first);
    assert_eq!(echo, ev.wire("S->C"));
    assert_eq!(recv(&mut client, &echo), first);
    if let Some(fp) = k.get("plaintext_fp_at_256_le_hex") {
        assert_eq!(client.resume_request().unwrap()[8..].to_vec(), bytes(fp));
    }
    let mut ev = Events(list(&conns[1], "events").iter());
    if run["checks"].get("resume_answered") == Some(&Value::Bool(false)) {
        // Published, past 256 bytes: refused. Ours matches it.
        let req = client.resume_request().unwrap();
        assert_eq!(req.to_vec(), ev.wire("C->S"));
        assert!(server.matches(
            u64::from_le_bytes(req[..8].try_into().unwrap()),
            u32::from_le_bytes(req[8..].try_into().unwrap())
        ));
        return;
    }
    let replay = resume(
        &mut ev,
        &mut client,
        &mut server,
        le("resume_challenge_le_hex"),
        then,
    );
    assert!(replay.is_empty());
    let echo = send(&mut server, then);
    assert_eq!(echo, ev.wire("S->C"));
    assert_eq!(recv(&mut client, &echo), then);
}

#[test]
fn live_runs() {
    live_run("small_fixed", b"hello", b"again");
    live_run("small_published", b"hello", b"again");
    live_run("big_fixed", &test_stream(300), b"tail");
    live_run("big_published", &test_stream(300), b"tail");
}

#[test]
fn handshake_defects_are_not_copied() {
    let v = vectors();
    let d = &v["handshake_defects"];
    // The header split 8 + 8: the published server closes; ours answers.
    let mut ev = Events(list(&d["split_header"], "published").iter());
    let (a, b) = (ev.wire("C->S"), ev.wire("C->S"));
    let mut sh = ServerHandshake::default();
    assert_eq!(sh.recv(&a), 8);
    assert_eq!(sh.poll(), ServerStep::NeedMore);
    assert_eq!(sh.recv(&b), 8);
    assert!(matches!(sh.poll(), ServerStep::NewSession { .. }));
    // Bytes before the answer: the machine leaves them until it has
    // answered; as a proof they are wrong, and the connection closes.
    let mut ev = Events(list(&d["early_bytes"], "published").iter());
    let wire = ev.wire("C->S");
    let mut sh = ServerHandshake::default();
    let used = sh.recv(&wire);
    assert_eq!(used, 16);
    sh.accept_new(5, 6);
    sh.recv(&wire[used..]);
    assert!(matches!(sh.poll(), ServerStep::Failed(_)));
}
