//! Feeds arbitrary bytes, in arbitrary chunks, to the server handshake and
//! answers whatever it asks for, checking its invariants on the way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::proto::message::{MAX_RECORD, Status};
use ringgate::proto::server::{ServerEvent, ServerHandshake};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk sizes, the next eight the DH randomness.
    let Some((&chunking, rest)) = data.split_first() else {
        return;
    };
    let (random, input) = if rest.len() >= 8 {
        let (r, i) = rest.split_at(8);
        (u64::from_le_bytes(r.try_into().unwrap()), i)
    } else {
        (0, rest)
    };

    let mut hs = ServerHandshake::new();
    let mut pos = 0;
    let mut step = 0usize;
    while pos < input.len() {
        let size = 1 + (chunking as usize).wrapping_mul(step + 1) % 97;
        let end = (pos + size).min(input.len());
        let offered = end - pos;
        let n = hs.recv(&input[pos..end]);
        assert!(n <= offered);
        pos += n;
        step += 1;
        match hs.poll() {
            ServerEvent::NeedMore => assert_eq!(n, offered, "NeedMore must take everything"),
            ServerEvent::NewSession(req) => {
                assert!(pos <= 2 + MAX_RECORD);
                let s = hs.accept_new((random as u32).max(1), random);
                assert_eq!(s.client_public, req.public_key);
                assert!(!hs.take_output().is_empty());
                break;
            }
            ServerEvent::Resume(req) => {
                let status = if req.verify(random) { Status::Ok } else { Status::Unauthorized };
                hs.answer_resume(req.received, status);
                assert!(!hs.take_output().is_empty());
                break;
            }
            ServerEvent::Failed(_) | ServerEvent::Done => {
                let _ = hs.take_output();
                break;
            }
        }
    }
    // After a terminal event nothing more is consumed.
    if !matches!(hs.poll(), ServerEvent::NeedMore) {
        assert_eq!(hs.recv(input), 0);
    }
});
