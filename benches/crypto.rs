//! Costs of the SCP hot paths: RC4 throughput (ours beside the `rc4` crate,
//! which is what justifies keeping our own), one dh64 exponentiation, a whole
//! server-side new-session handshake, and a resume verification.

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use rc4::{KeyInit, StreamCipher, consts::U32};
use ringgate::proto::crypt::rc4_key;
use ringgate::proto::dh64;
use ringgate::proto::message::{NewConnReq, ReuseConnReq, encode_record};
use ringgate::proto::rc4::Rc4;
use ringgate::proto::server::{ServerEvent, ServerHandshake};

const BLOCK: usize = 16 * 1024;

fn rc4_throughput(c: &mut Criterion) {
    let key = rc4_key(0x1234_5678_9abc_def0);
    let mut buf = vec![0x5au8; BLOCK];
    let mut g = c.benchmark_group("rc4_16k");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    let mut ours = Rc4::new(&key);
    g.bench_function("ringgate", |b| b.iter(|| ours.apply(black_box(&mut buf))));
    let mut dst = vec![0u8; BLOCK];
    let src = buf.clone();
    g.bench_function("ringgate_apply_to", |b| {
        b.iter(|| ours.apply_to(black_box(&src), black_box(&mut dst)))
    });
    let mut theirs = rc4::Rc4::<U32>::new(&key.into());
    g.bench_function("rc4_crate", |b| {
        b.iter(|| theirs.apply_keystream(black_box(&mut buf)))
    });
    g.finish();
}

fn dh64_pow(c: &mut Criterion) {
    c.bench_function("dh64_pow_mod", |b| {
        b.iter(|| {
            dh64::pow_mod(
                black_box(3_826_420_288_599_206_575),
                black_box(u64::MAX - 77),
            )
        })
    });
}

fn new_session_handshake(c: &mut Criterion) {
    let mut record = Vec::new();
    let req = NewConnReq {
        public_key: dh64::public_key(0x1234_5678_9abc_def0),
        target: Some("game1".into()),
        flag: Some(0),
    };
    encode_record(&req.encode(), &mut record);
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    c.bench_function("server_new_session", |b| {
        b.iter(|| {
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let mut hs = ServerHandshake::new();
            hs.recv(black_box(&record));
            let ServerEvent::NewSession(_) = hs.poll() else {
                unreachable!("valid request")
            };
            let session = hs.accept_new(7, random);
            let out = hs.take_output();
            let send = Rc4::from_secret(session.secret);
            let recv = send.clone();
            black_box((out, send, recv))
        })
    });
}

fn resume_verify(c: &mut Criterion) {
    let secret = 8_869_555_674_357_331_102;
    let content = ReuseConnReq::signed(7, 3, 123_456, secret).encode();
    c.bench_function("resume_parse_verify", |b| {
        b.iter_batched(
            || content.clone(),
            |content| {
                let req = ReuseConnReq::parse(black_box(&content)).expect("valid");
                assert!(req.verify(secret));
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    rc4_throughput,
    dh64_pow,
    new_session_handshake,
    resume_verify
);
criterion_main!(benches);
