//! Checks every entry of `tests/data/scp.json`, the vectors produced by the
//! reference implementations (goscon, skynet's crypt module).

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
