//! Checks every entry of `tests/data/scp.json`, the vectors produced by the
//! reference implementations (goscon, skynet's crypt module).

use ringgate::proto::client::{ClientEvent, ClientHandshake};
use ringgate::proto::message::{
    NewConnReq, NewConnResp, ReuseConnReq, ReuseConnResp, Status, encode_record,
};
use ringgate::proto::server::{ServerEvent, ServerHandshake};
use ringgate::proto::{crypt, dh64, rc4::Rc4};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/scp.json"))
        .expect("tests/data/scp.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn u64_of(v: &Value) -> u64 {
    v.as_str().expect("decimal string").parse().expect("u64")
}

fn leu64_of_hex(v: &Value) -> u64 {
    let bytes = hex::decode(v.as_str().expect("hex string")).expect("hex");
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn entries<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    let list = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is a list"));
    assert!(!list.is_empty(), "{key} has entries");
    list
}

#[test]
fn dh64_public() {
    let v = vectors();
    for e in entries(&v, "dh64_public") {
        assert_eq!(
            dh64::public_key(u64_of(&e["private"])),
            u64_of(&e["public"]),
            "{e}"
        );
    }
}

#[test]
fn dh64_secret() {
    let v = vectors();
    for e in entries(&v, "dh64_secret") {
        let (a, b) = (u64_of(&e["private_a"]), u64_of(&e["private_b"]));
        let (pa, pb) = (u64_of(&e["public_a"]), u64_of(&e["public_b"]));
        assert_eq!(dh64::public_key(a), pa, "{e}");
        assert_eq!(dh64::public_key(b), pb, "{e}");
        assert_eq!(dh64::secret(a, pb), u64_of(&e["secret"]), "{e}");
        assert_eq!(dh64::secret(b, pa), u64_of(&e["secret"]), "{e}");
    }
}

#[test]
fn hashkey() {
    let v = vectors();
    for e in entries(&v, "hashkey") {
        let text = e["text"].as_str().unwrap();
        assert_eq!(
            crypt::hashkey(text.as_bytes()),
            leu64_of_hex(&e["hash_hex"]),
            "{e}"
        );
    }
}

#[test]
fn hmac64_md5() {
    let v = vectors();
    for e in entries(&v, "hmac64_md5") {
        let got = crypt::hmac64_md5(leu64_of_hex(&e["x_hex"]), leu64_of_hex(&e["y_hex"]));
        assert_eq!(got, leu64_of_hex(&e["hmac_hex"]), "{e}");
    }
}

#[test]
fn hmac64() {
    let v = vectors();
    for e in entries(&v, "hmac64") {
        let got = crypt::hmac64(leu64_of_hex(&e["x_hex"]), leu64_of_hex(&e["y_hex"]));
        assert_eq!(got, leu64_of_hex(&e["hmac_hex"]), "{e}");
    }
}

#[test]
fn hmac_hash() {
    let v = vectors();
    for e in entries(&v, "hmac_hash") {
        let text = e["text"].as_str().unwrap();
        let got = crypt::hmac_hash(leu64_of_hex(&e["secret_hex"]), text.as_bytes());
        assert_eq!(got, leu64_of_hex(&e["hmac_hex"]), "{e}");
    }
}

#[test]
fn rc4_key_and_keystream() {
    let v = vectors();
    for e in entries(&v, "rc4") {
        let secret = u64_of(&e["secret"]);
        let key = crypt::rc4_key(secret);
        assert_eq!(hex::encode(key), e["rc4_key_hex"].as_str().unwrap(), "{e}");
        let mut ks = [0u8; 64];
        Rc4::from_secret(secret).apply(&mut ks);
        assert_eq!(
            hex::encode(ks),
            e["keystream_first64_hex"].as_str().unwrap(),
            "{e}"
        );
    }
}

fn record(content: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(content.as_bytes(), &mut out);
    out
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is a string"))
}

#[test]
fn messages_parse_and_reencode() {
    let v = vectors();
    let m = &v["messages"];
    let client_private = u64_of(&m["client_private"]);

    // The example key is the client's public key in base64 of its LE bytes.
    let req = NewConnReq::parse(str_of(m, "new_conn_req").as_bytes()).unwrap();
    assert_eq!(req.public_key, dh64::public_key(client_private));
    assert_eq!(req.target.as_deref(), Some("test1"));
    assert_eq!(req.flag, Some(1));
    assert_eq!(req.encode(), str_of(m, "new_conn_req").as_bytes());
    let example = str_of(m, "b64_pubkey_example");
    assert!(str_of(m, "new_conn_req").contains(&format!("\n{example}\n")));

    let resp = NewConnResp::parse(str_of(m, "new_conn_resp").as_bytes()).unwrap();
    assert_eq!(
        resp.public_key,
        dh64::public_key(u64_of(&m["server_private"]))
    );
    assert_eq!(resp.encode(), str_of(m, "new_conn_resp").as_bytes());

    let reuse = ReuseConnReq::parse(str_of(m, "reuse_conn_req").as_bytes()).unwrap();
    assert_eq!((reuse.id, reuse.index, reuse.received), (resp.id, 1, 11));
    assert_eq!(reuse.encode(), str_of(m, "reuse_conn_req").as_bytes());
    let secret = u64_of(&m["secret"]);
    assert!(reuse.verify(secret));
    assert!(!reuse.verify(secret ^ 1));

    let reuse_resp = ReuseConnResp::parse(str_of(m, "reuse_conn_resp").as_bytes()).unwrap();
    assert_eq!(reuse_resp.code, Status::Ok.code());
    assert_eq!(reuse_resp.encode(), str_of(m, "reuse_conn_resp").as_bytes());
}

#[test]
fn messages_server_handshake() {
    let v = vectors();
    let m = &v["messages"];
    let secret = u64_of(&m["secret"]);
    let resp = NewConnResp::parse(str_of(m, "new_conn_resp").as_bytes()).unwrap();

    let mut server = ServerHandshake::new();
    let input = record(str_of(m, "new_conn_req"));
    assert_eq!(server.recv(&input), input.len());
    assert!(matches!(server.poll(), ServerEvent::NewSession(_)));
    let session = server.accept_new(resp.id, u64_of(&m["server_private"]));
    assert_eq!(session.secret, secret);
    assert_eq!(session.target.as_deref(), Some("test1"));
    assert_eq!(session.flag, Some(1));
    assert_eq!(server.take_output(), record(str_of(m, "new_conn_resp")));

    // Resume: the server side verifies and answers with the vector response.
    let mut server = ServerHandshake::new();
    let input = record(str_of(m, "reuse_conn_req"));
    assert_eq!(server.recv(&input), input.len());
    let ServerEvent::Resume(req) = server.poll() else {
        panic!("expected a resume request");
    };
    assert!(req.verify(secret));
    let answer = ReuseConnResp::parse(str_of(m, "reuse_conn_resp").as_bytes()).unwrap();
    server.answer_resume(answer.received, Status::Ok);
    assert_eq!(server.take_output(), record(str_of(m, "reuse_conn_resp")));
}

#[test]
fn messages_client_handshake() {
    let v = vectors();
    let m = &v["messages"];
    let secret = u64_of(&m["secret"]);

    let mut client =
        ClientHandshake::new_session(u64_of(&m["client_private"]), Some("test1"), Some(1));
    assert_eq!(client.take_output(), record(str_of(m, "new_conn_req")));
    let input = record(str_of(m, "new_conn_resp"));
    assert_eq!(client.recv(&input), input.len());
    assert_eq!(client.poll(), ClientEvent::Established { id: 7, secret });

    let mut client = ClientHandshake::resume(7, 1, 11, secret);
    assert_eq!(client.take_output(), record(str_of(m, "reuse_conn_req")));
    let input = record(str_of(m, "reuse_conn_resp"));
    assert_eq!(client.recv(&input), input.len());
    assert_eq!(client.poll(), ClientEvent::Resumed { server_received: 5 });
}

#[test]
fn transcript() {
    let v = vectors();
    let t = &v["transcript"];
    let secret = u64_of(&t["secret"]);
    assert_eq!(secret, u64_of(&v["messages"]["secret"]));

    // Each side has a send and a receive state, all keyed alike; a direction's
    // sender and receiver stay in step.
    let (mut client_send, mut client_recv) = (Rc4::from_secret(secret), Rc4::from_secret(secret));
    let (mut server_send, mut server_recv) = (Rc4::from_secret(secret), Rc4::from_secret(secret));

    let mut c2s = str_of(t, "client_plain_1").as_bytes().to_vec();
    client_send.apply(&mut c2s);
    assert_eq!(hex::encode(&c2s), str_of(t, "client_cipher_1_hex"));
    server_recv.apply(&mut c2s);
    assert_eq!(c2s, str_of(t, "client_plain_1").as_bytes());

    // The server's two writes continue one keystream, which starts where the
    // client's does: the directions are independent states with the same key.
    let mut s2c = Vec::new();
    for part in ["server_plain_1", "server_plain_2"] {
        let mut piece = str_of(t, part).as_bytes().to_vec();
        server_send.apply(&mut piece);
        s2c.extend_from_slice(&piece);
    }
    assert_eq!(hex::encode(&s2c), str_of(t, "server_cipher_hex"));
    let mut plain = vec![0u8; s2c.len()];
    client_recv.apply_to(&s2c, &mut plain);
    let expected = format!(
        "{}{}",
        str_of(t, "server_plain_1"),
        str_of(t, "server_plain_2")
    );
    assert_eq!(plain, expected.as_bytes());
}

#[test]
fn sproto_announce() {
    let v = vectors();
    for e in entries(&v, "sproto_announce") {
        let ty = e["type"].as_u64().expect("type") as u32;
        let msg = ringgate::proto::announce::sproto_announce(
            ty,
            str_of(e, "remote_addr"),
            str_of(e, "local_addr"),
        );
        let packed = hex::decode(str_of(e, "packed_hex")).unwrap();
        assert_eq!(&msg[..2], &(packed.len() as u16).to_be_bytes(), "{e}");
        assert_eq!(&msg[2..], &packed[..], "{e}");
    }
}
