//! Error cases of the SCP record parsers and handshake machines, and property
//! tests: chunking never changes an outcome, garbage never panics, and a
//! client and a server wired together agree.

use proptest::prelude::*;
use ringgate::proto::client::{ClientEvent, ClientHandshake};
use ringgate::proto::dh64;
use ringgate::proto::message::{
    MAX_RECORD, NewConnReq, NewConnResp, ParseError, Reason, ReuseConnReq, ReuseConnResp, Status,
    encode_record,
};
use ringgate::proto::server::{ServerEvent, ServerHandshake};

fn record(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(content, &mut out);
    out
}

fn b64(v: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(v.to_le_bytes())
}

fn new_req(key: u64) -> Vec<u8> {
    format!("0\n{}", b64(key)).into_bytes()
}

/// Feeds `input` to a server whole and returns its event and output.
fn serve(input: &[u8]) -> (ServerEvent, Vec<u8>, usize) {
    let mut s = ServerHandshake::new();
    let n = s.recv(input);
    (s.poll(), s.take_output(), n)
}

// ---- parser error cases -------------------------------------------------

#[test]
fn decimal_overflow() {
    let sum = b64(0);
    assert_eq!(
        ReuseConnReq::parse(format!("4294967296\n1\n0\n{sum}").as_bytes()),
        Err(ParseError::IdOutOfRange)
    );
    assert_eq!(
        ReuseConnReq::parse(format!("99999999999999999999999\n1\n0\n{sum}").as_bytes()),
        Err(ParseError::Overflow("id"))
    );
    assert_eq!(
        ReuseConnReq::parse(format!("1\n18446744073709551616\n0\n{sum}").as_bytes()),
        Err(ParseError::Overflow("index"))
    );
    assert_eq!(
        ReuseConnReq::parse(format!("1\n1\n4294967296\n{sum}").as_bytes()),
        Err(ParseError::Overflow("received"))
    );
    assert_eq!(
        ReuseConnResp::parse(b"4294967296\n200"),
        Err(ParseError::Overflow("received"))
    );
    let key = b64(2);
    assert_eq!(
        NewConnReq::parse(format!("0\n{key}\n\n2147483648").as_bytes()),
        Err(ParseError::Overflow("flag"))
    );
    let req = NewConnReq::parse(format!("0\n{key}\n\n-2147483648").as_bytes()).unwrap();
    assert_eq!(req.flag, Some(i32::MIN));
    assert_eq!(req.target, None);
}

#[test]
fn decimal_must_be_plain_digits() {
    let sum = b64(0);
    for id in ["", "+1", "-1", " 1", "1 ", "1a", "0x1"] {
        assert!(
            ReuseConnReq::parse(format!("{id}\n1\n0\n{sum}").as_bytes()).is_err(),
            "{id:?}"
        );
    }
    let key = b64(2);
    for flag in ["", "+1", "--1", "-", " 1", "1.0"] {
        assert_eq!(
            NewConnReq::parse(format!("0\n{key}\nt\n{flag}").as_bytes()),
            Err(ParseError::NotDecimal("flag")),
            "{flag:?}"
        );
    }
}

#[test]
fn missing_and_extra_lines() {
    assert_eq!(NewConnReq::parse(b"0"), Err(ParseError::MissingLine("key")));
    assert_eq!(
        NewConnResp::parse(b"7"),
        Err(ParseError::MissingLine("key"))
    );
    let sum = b64(0);
    assert_eq!(
        ReuseConnReq::parse(b"7\n1\n0"),
        Err(ParseError::MissingLine("sum"))
    );
    assert_eq!(
        ReuseConnReq::parse(b"7\n1"),
        Err(ParseError::MissingLine("received"))
    );
    assert_eq!(
        ReuseConnReq::parse(format!("7\n1\n0\n{sum}\n").as_bytes()),
        Err(ParseError::ExtraLine("sum"))
    );
    assert_eq!(
        ReuseConnResp::parse(b"5"),
        Err(ParseError::MissingLine("code"))
    );
    let key = b64(2);
    assert_eq!(
        NewConnReq::parse(format!("0\n{key}\nt\n1\nx").as_bytes()),
        Err(ParseError::ExtraLine("flag"))
    );
}

#[test]
fn older_clients_send_two_or_three_lines() {
    let key = b64(12345);
    let two = NewConnReq::parse(format!("0\n{key}").as_bytes()).unwrap();
    assert_eq!((two.public_key, two.target, two.flag), (12345, None, None));
    let three = NewConnReq::parse(format!("0\n{key}\ngame_1").as_bytes()).unwrap();
    assert_eq!(three.target.as_deref(), Some("game_1"));
    assert_eq!(three.flag, None);
}

#[test]
fn bad_target() {
    let key = b64(2);
    for t in ["a-b", "a b", "é", "a.b"] {
        assert_eq!(
            NewConnReq::parse(format!("0\n{key}\n{t}").as_bytes()),
            Err(ParseError::BadTarget),
            "{t:?}"
        );
    }
}

#[test]
fn bad_base64() {
    for key in [
        "Hp/fuZ36AEw",   // no padding
        "Hp/fuZ36AEw=a", // trailing junk
        "Hp-fuZ36AEw=",  // URL-safe alphabet
        "Hp/fuZ36AE w=", // space
        "Hp/fuZ36AEx=",  // non-canonical trailing bits
        "",
    ] {
        assert!(
            matches!(
                NewConnReq::parse(format!("0\n{key}").as_bytes()),
                Err(ParseError::BadBase64(_) | ParseError::KeyLength { .. })
            ),
            "{key:?}"
        );
        assert!(
            NewConnReq::parse(format!("0\n{key}").as_bytes()).is_err(),
            "{key:?}"
        );
    }
    assert_eq!(
        NewConnReq::parse(b"0\nHp/fuZ36AEw"),
        Err(ParseError::BadBase64("key"))
    );
}

#[test]
fn key_must_be_8_bytes() {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::STANDARD;
    for len in [0usize, 7, 9, 16] {
        let key = e.encode(vec![1u8; len]);
        assert_eq!(
            NewConnReq::parse(format!("0\n{key}").as_bytes()),
            Err(ParseError::KeyLength { field: "key", len })
        );
        assert_eq!(
            ReuseConnReq::parse(format!("1\n1\n0\n{key}").as_bytes()),
            Err(ParseError::KeyLength { field: "sum", len })
        );
    }
}

#[test]
fn session_id_range() {
    let key = b64(2);
    assert_eq!(
        NewConnResp::parse(format!("0\n{key}").as_bytes()),
        Err(ParseError::IdOutOfRange)
    );
    assert_eq!(
        NewConnResp::parse(format!("4294967296\n{key}").as_bytes()),
        Err(ParseError::IdOutOfRange)
    );
    let max = NewConnResp::parse(format!("4294967295\n{key}").as_bytes()).unwrap();
    assert_eq!(max.id, u32::MAX);
    assert_eq!(
        ReuseConnReq::parse(format!("0\n1\n0\n{key}").as_bytes()),
        Err(ParseError::IdOutOfRange)
    );
    assert_eq!(
        ReuseConnReq::parse(format!("1\n0\n0\n{key}").as_bytes()),
        Err(ParseError::IndexZero)
    );
}

#[test]
fn content_over_max_record() {
    let long = vec![b'1'; MAX_RECORD + 1];
    assert_eq!(
        ReuseConnReq::parse(&long),
        Err(ParseError::TooLong(MAX_RECORD + 1))
    );
    assert_eq!(
        NewConnReq::parse(&long),
        Err(ParseError::TooLong(MAX_RECORD + 1))
    );
}

#[test]
fn reuse_response_codes() {
    for (text, code) in [
        ("5\n200", 200),
        ("5\n200 OK", 200),
        ("0\n404 not found", 404),
    ] {
        let r = ReuseConnResp::parse(text.as_bytes()).unwrap();
        assert_eq!(r.code, code, "{text:?}");
    }
    for text in ["5\n20", "5\n2000", "5\n200OK", "5\n", "5\n-20", "5\n2 0"] {
        assert_eq!(
            ReuseConnResp::parse(text.as_bytes()),
            Err(ParseError::BadCode),
            "{text:?}"
        );
    }
    // The server writes only the digits.
    let r = ReuseConnResp {
        received: 9,
        code: Status::NotFound.code(),
    };
    assert_eq!(r.encode(), b"9\n404");
}

// ---- server machine -----------------------------------------------------

#[test]
fn server_refuses_long_record_from_its_prefix() {
    let mut s = ServerHandshake::new();
    let prefix = ((MAX_RECORD + 1) as u16).to_be_bytes();
    assert_eq!(s.recv(&prefix), 2);
    let ServerEvent::Failed(e) = s.poll() else {
        panic!("expected failure");
    };
    assert_eq!(e.reason, Reason::RecordTooLong(MAX_RECORD + 1));
    assert_eq!(e.status, None);
    assert!(s.take_output().is_empty());
    assert_eq!(s.recv(b"more"), 0);
}

#[test]
fn server_accepts_max_record_length() {
    // A 512-byte record is read in full (and then fails to parse as a resume).
    let mut content = vec![b'1'; MAX_RECORD];
    content[1] = b'\n';
    let input = record(&content);
    let (ev, out, n) = serve(&input);
    assert_eq!(n, input.len());
    assert!(matches!(ev, ServerEvent::Failed(_)));
    assert_eq!(out, record(b"0\n400"));
}

#[test]
fn server_refuses_empty_record() {
    let (ev, out, n) = serve(&[0, 0, b'x']);
    assert_eq!(n, 2);
    assert_eq!(
        ev,
        ServerEvent::Failed(ringgate::proto::message::HandshakeError::close(
            Reason::EmptyRecord
        ))
    );
    assert!(out.is_empty());
}

#[test]
fn server_refuses_degenerate_keys_before_answering() {
    for key in [0, 1, dh64::P, u64::MAX] {
        let (ev, out, _) = serve(&record(&new_req(key)));
        let ServerEvent::Failed(e) = ev else {
            panic!("key {key} accepted");
        };
        assert_eq!(e.reason, Reason::InvalidPublicKey);
        assert_eq!(e.status, None);
        assert!(out.is_empty(), "key {key} was answered");
    }
    let (ev, _, _) = serve(&record(&new_req(2)));
    assert!(matches!(ev, ServerEvent::NewSession(_)));
}

#[test]
fn server_answers_malformed_resume_with_400() {
    for content in [&b"7\n1\n11"[..], b"hello", b"0", b"7\n1\n11\n!!!!"] {
        let (ev, out, _) = serve(&record(content));
        let ServerEvent::Failed(e) = ev else {
            panic!("{content:?} accepted");
        };
        assert_eq!(e.status, Some(Status::BadRequest));
        assert!(matches!(e.reason, Reason::Malformed(_)));
        assert_eq!(out, record(b"0\n400"), "{content:?}");
    }
}

#[test]
fn server_closes_silently_on_malformed_new_session() {
    for content in [
        &b"0\n"[..],
        b"0\nnot base64",
        b"0\nAAAAAAAAAAA=\nbad-target",
    ] {
        let (ev, out, _) = serve(&record(content));
        let ServerEvent::Failed(e) = ev else {
            panic!("{content:?} accepted");
        };
        assert_eq!(e.status, None);
        assert!(out.is_empty(), "{content:?}");
    }
}

#[test]
fn server_leaves_stream_bytes_alone() {
    let mut input = record(&new_req(5));
    let len = input.len();
    input.extend_from_slice(b"stream data");
    let mut s = ServerHandshake::new();
    assert_eq!(s.recv(&input), len);
    assert_eq!(s.recv(&input[len..]), 0);
    assert!(matches!(s.poll(), ServerEvent::NewSession(_)));
    s.accept_new(1, 99);
    assert_eq!(s.poll(), ServerEvent::Done);
    assert_eq!(s.recv(b"x"), 0);
}

// ---- client machine -----------------------------------------------------

#[test]
fn client_refuses_bad_server_keys_and_id_zero() {
    for key in [0, 1, dh64::P, u64::MAX] {
        let mut c = ClientHandshake::new_session(3, None, None);
        c.recv(&record(format!("7\n{}", b64(key)).as_bytes()));
        let ClientEvent::Failed(e) = c.poll() else {
            panic!("key {key} accepted");
        };
        assert_eq!(e.reason, Reason::InvalidPublicKey);
    }
    let mut c = ClientHandshake::new_session(3, None, None);
    c.recv(&record(format!("0\n{}", b64(5)).as_bytes()));
    assert!(matches!(
        c.poll(),
        ClientEvent::Failed(e) if e.reason == Reason::Malformed(ParseError::IdOutOfRange)
    ));
}

#[test]
fn client_accepts_200_ok_and_reports_rejections() {
    let mut c = ClientHandshake::resume(7, 2, 100, 42);
    c.recv(&record(b"33\n200 OK"));
    assert_eq!(
        c.poll(),
        ClientEvent::Resumed {
            server_received: 33
        }
    );

    let mut c = ClientHandshake::resume(7, 2, 100, 42);
    c.recv(&record(b"0\n403"));
    assert_eq!(
        c.poll(),
        ClientEvent::Rejected {
            code: 403,
            server_received: 0
        }
    );
}

#[test]
fn client_request_lines() {
    let mut c = ClientHandshake::new_session(9, None, None);
    let out = c.take_output();
    let req = NewConnReq::parse(&out[2..]).unwrap();
    assert_eq!(req.public_key, dh64::public_key(9));
    assert_eq!(out[2..].iter().filter(|&&b| b == b'\n').count(), 1);

    // A flag without a target keeps the flag on the 4th line.
    let mut c = ClientHandshake::new_session(9, None, Some(1));
    let out = c.take_output();
    assert!(out.ends_with(b"\n\n1"));
    assert_eq!(NewConnReq::parse(&out[2..]).unwrap().flag, Some(1));
}

// ---- properties ---------------------------------------------------------

/// Feeds `input` in chunks of the given sizes (cycled), stopping when the
/// machine stops consuming; returns the bytes consumed.
fn feed(mut recv: impl FnMut(&[u8]) -> usize, input: &[u8], sizes: &[usize]) -> usize {
    let mut pos = 0;
    for &size in sizes.iter().cycle() {
        if pos >= input.len() {
            break;
        }
        let offered = size.min(input.len() - pos);
        let n = recv(&input[pos..pos + offered]);
        pos += n;
        if n < offered {
            break;
        }
    }
    pos
}

fn valid_record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            any::<u64>(),
            proptest::option::of("[A-Za-z0-9_]{1,16}"),
            proptest::option::of(any::<i32>())
        )
            .prop_map(|(public_key, target, flag)| NewConnReq {
                public_key,
                target,
                flag
            }
            .encode()),
        (1u32.., 1u64.., any::<u32>(), any::<u64>()).prop_map(|(id, index, received, sum)| {
            ReuseConnReq {
                id,
                index,
                received,
                sum,
            }
            .encode()
        }),
    ]
    .prop_map(|c| record(&c))
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..40, 1..20)
}

proptest! {
    #[test]
    fn server_chunking_does_not_matter(
        rec in valid_record(),
        tail in proptest::collection::vec(any::<u8>(), 0..20),
        sizes in chunk_sizes(),
    ) {
        let mut input = rec.clone();
        input.extend_from_slice(&tail);
        let (whole, whole_out, whole_n) = serve(&input);
        prop_assert_eq!(whole_n, rec.len());
        let mut s = ServerHandshake::new();
        let n = feed(|d| s.recv(d), &input, &sizes);
        prop_assert_eq!(n, whole_n);
        prop_assert_eq!(s.poll(), whole);
        prop_assert_eq!(s.take_output(), whole_out);
    }

    #[test]
    fn client_chunking_does_not_matter(
        id in 1u32..,
        server_random in any::<u64>(),
        client_random in any::<u64>(),
        sizes in chunk_sizes(),
    ) {
        let mut whole = ClientHandshake::new_session(client_random, None, None);
        let mut split = whole.clone();
        let resp = record(&NewConnResp { id, public_key: dh64::public_key(server_random.max(2)) }.encode());
        whole.recv(&resp);
        let n = feed(|d| split.recv(d), &resp, &sizes);
        prop_assert_eq!(n, resp.len());
        prop_assert_eq!(split.poll(), whole.poll());
    }

    #[test]
    fn client_and_server_agree(
        id in 1u32..,
        client_random in any::<u64>(),
        server_random in any::<u64>(),
        target in proptest::option::of("[A-Za-z0-9_]{0,16}"),
        flag in proptest::option::of(any::<i32>()),
        received in any::<u32>(),
        sizes in chunk_sizes(),
    ) {
        let mut client = ClientHandshake::new_session(client_random, target.as_deref(), flag);
        let mut server = ServerHandshake::new();
        let req = client.take_output();
        prop_assert_eq!(feed(|d| server.recv(d), &req, &sizes), req.len());
        let ServerEvent::NewSession(_) = server.poll() else {
            // A private key whose public key is 1 is astronomically unlikely;
            // anything else is a bug.
            return Err(TestCaseError::fail("server refused a valid request"));
        };
        let session = server.accept_new(id, server_random);
        prop_assert_eq!(session.target, target.filter(|t| !t.is_empty()));
        prop_assert_eq!(session.flag, flag);
        let resp = server.take_output();
        prop_assert_eq!(feed(|d| client.recv(d), &resp, &sizes), resp.len());
        prop_assert_eq!(client.poll(), ClientEvent::Established { id, secret: session.secret });

        // And a resume signed by the client verifies on the server.
        let mut client = ClientHandshake::resume(id, 1, received, session.secret);
        let mut server = ServerHandshake::new();
        server.recv(&client.take_output());
        let ServerEvent::Resume(req) = server.poll() else {
            return Err(TestCaseError::fail("resume not recognised"));
        };
        prop_assert!(req.verify(session.secret));
        prop_assert!(!req.verify(session.secret.wrapping_add(1)));
        server.answer_resume(7, Status::Ok);
        client.recv(&server.take_output());
        prop_assert_eq!(client.poll(), ClientEvent::Resumed { server_received: 7 });
    }

    #[test]
    fn messages_round_trip(rec in valid_record()) {
        let content = &rec[2..];
        if content.starts_with(b"0\n") {
            let req = NewConnReq::parse(content).unwrap();
            prop_assert_eq!(req.encode(), content);
        } else {
            let req = ReuseConnReq::parse(content).unwrap();
            prop_assert_eq!(req.encode(), content);
        }
    }

    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = NewConnReq::parse(&data);
        let _ = NewConnResp::parse(&data);
        let _ = ReuseConnReq::parse(&data);
        let _ = ReuseConnResp::parse(&data);
        let (ev, _, n) = serve(&data);
        prop_assert!(n <= data.len());
        prop_assert!(n <= 2 + MAX_RECORD);
        let _ = ev;
        let mut c = ClientHandshake::new_session(1, None, None);
        prop_assert!(c.recv(&data) <= 2 + MAX_RECORD);
        let _ = c.poll();
    }

    #[test]
    fn mutated_records_never_panic(
        rec in valid_record(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        sizes in chunk_sizes(),
    ) {
        let mut data = rec;
        for (at, byte, op) in edits {
            if data.is_empty() {
                data.push(byte);
                continue;
            }
            let i = at.index(data.len());
            match op {
                0 => data[i] = byte,
                1 => data.insert(i, byte),
                _ => { data.remove(i); }
            }
        }
        for content in [&data[..], data.get(2..).unwrap_or(&[])] {
            let _ = NewConnReq::parse(content);
            let _ = NewConnResp::parse(content);
            let _ = ReuseConnReq::parse(content);
            let _ = ReuseConnResp::parse(content);
        }
        let mut s = ServerHandshake::new();
        feed(|d| s.recv(d), &data, &sizes);
        match s.poll() {
            ServerEvent::NewSession(_) => { s.accept_new(1, 1); }
            ServerEvent::Resume(r) => s.answer_resume(r.received, Status::Unauthorized),
            _ => {}
        }
        let _ = s.take_output();
        let mut c = ClientHandshake::resume(1, 1, 0, 0);
        feed(|d| c.recv(d), &data, &sizes);
        let _ = c.poll();
    }
}
