//! Property tests of two sessions talking: ciphers under arbitrary chunking,
//! and resumes after connections that drop with bytes in flight.

use std::collections::VecDeque;

use proptest::prelude::*;
use ringgate::proto::message::Status;
use ringgate::proto::session::Session;

const SECRET: u64 = 0x0123_4567_89ab_cdef;

/// Splits `data` into consecutive pieces whose lengths cycle through `sizes`.
fn chunks<'a>(data: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = data;
    sizes.iter().cycle().map_while(move |&n| {
        if rest.is_empty() {
            return None;
        }
        let (head, tail) = rest.split_at(n.clamp(1, rest.len()));
        rest = tail;
        Some(head)
    })
}

/// Takes the first `n` unsent bytes of `s`'s window and marks them sent.
fn take_unsent(s: &mut Session, n: usize) -> Vec<u8> {
    let out: Vec<u8> = s
        .window()
        .unsent_slices()
        .flatten()
        .take(n)
        .copied()
        .collect();
    s.window_mut().mark_sent(out.len());
    out
}

proptest! {
    #[test]
    fn cipher_round_trips_under_any_chunking(
        plain in prop::collection::vec(any::<u8>(), 0..20_000),
        capacity in 1usize..20_000,
        enc_sizes in prop::collection::vec(1usize..5000, 1..10),
        send_sizes in prop::collection::vec(1usize..5000, 1..10),
        dec_sizes in prop::collection::vec(1usize..5000, 1..10),
    ) {
        let mut a = Session::new(1, SECRET, capacity);
        let mut b = Session::new(1, SECRET, capacity);
        let mut wire = Vec::new();
        let mut sends = send_sizes.iter().cycle();
        for piece in chunks(&plain, &enc_sizes) {
            let mut off = 0;
            while off < piece.len() {
                off += a.encrypt(&piece[off..]);
                // Send some of what is pending; the window frees up as sends
                // complete.
                wire.extend(take_unsent(&mut a, *sends.next().unwrap()));
            }
        }
        wire.extend(take_unsent(&mut a, usize::MAX));
        prop_assert_eq!(a.sent(), plain.len() as u64);
        if !plain.is_empty() {
            prop_assert_ne!(&wire, &plain); // it was encrypted
        }
        let mut got = wire.clone();
        let mut pos = 0;
        for piece in chunks(&wire, &dec_sizes) {
            let len = piece.len();
            b.decrypt(&mut got[pos..pos + len]);
            pos += len;
        }
        prop_assert_eq!(got, plain);
        prop_assert_eq!(b.received(), a.sent());
    }
}

/// One side of the simulated conversation.
struct Side {
    s: Session,
    /// Every plaintext byte the application produced, in order.
    produced: Vec<u8>,
    /// How much of `produced` has been encrypted into the window.
    encrypted: usize,
    /// Every plaintext byte decrypted from the peer, in order.
    got: Vec<u8>,
}

impl Side {
    fn new(capacity: usize) -> Self {
        Side {
            s: Session::new(9, SECRET, capacity),
            produced: Vec::new(),
            encrypted: 0,
            got: Vec::new(),
        }
    }

    /// The application produces `n` bytes (marked with `tag`, so the two
    /// directions differ); encrypt what the window takes.
    fn produce(&mut self, n: usize, tag: u8) {
        let start = self.produced.len();
        self.produced
            .extend((start..start + n).map(|i| (i as u8).wrapping_mul(31) ^ tag));
        self.pump();
    }

    fn pump(&mut self) {
        self.encrypted += self.s.encrypt(&self.produced[self.encrypted..]);
    }

    fn receive(&mut self, mut bytes: Vec<u8>) {
        self.s.decrypt(&mut bytes);
        self.got.extend(bytes);
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Side (0 server, 1 client) produces bytes.
    Produce(usize, usize),
    /// Side sends up to n of its unsent bytes into the link towards the peer.
    Send(usize, usize),
    /// The link towards side delivers up to n bytes to it.
    Deliver(usize, usize),
    /// The connection drops (in-flight bytes lost) and the client resumes.
    DropAndResume,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..2, 0usize..6000).prop_map(|(s, n)| Step::Produce(s, n)),
        3 => (0usize..2, 0usize..6000).prop_map(|(s, n)| Step::Send(s, n)),
        3 => (0usize..2, 0usize..6000).prop_map(|(s, n)| Step::Deliver(s, n)),
        1 => Just(Step::DropAndResume),
    ]
}

proptest! {
    #[test]
    fn resume_loses_and_duplicates_nothing(
        capacity in 1usize..3 * 4096,
        steps in prop::collection::vec(step(), 0..60),
    ) {
        let mut sides = [Side::new(capacity), Side::new(capacity)];
        let tags = [0x00u8, 0xa5];
        // links[i]: bytes in flight towards side i.
        let mut links: [VecDeque<u8>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut alive = true;
        for step in &steps {
            match *step {
                Step::Produce(i, n) => sides[i].produce(n, tags[i]),
                Step::Send(i, n) => {
                    let bytes = take_unsent(&mut sides[i].s, n);
                    links[1 - i].extend(bytes);
                    sides[i].pump();
                }
                Step::Deliver(i, n) => {
                    let n = n.min(links[i].len());
                    let bytes: Vec<u8> = links[i].drain(..n).collect();
                    sides[i].receive(bytes);
                }
                Step::DropAndResume => {
                    links[0].clear();
                    links[1].clear();
                    let [server, client] = &mut sides;
                    let req = client.s.resume_request();
                    let need = server.s.sent() - client.s.received();
                    let expect = if need <= server.s.window().held() as u64 {
                        Ok(need as usize)
                    } else {
                        Err(Status::NotAcceptable)
                    };
                    prop_assert_eq!(server.s.accept_resume(&req), expect);
                    if expect.is_err() {
                        alive = false;
                        break;
                    }
                    // A replay of the same request is refused.
                    prop_assert_eq!(server.s.accept_resume(&req), Err(Status::IndexExpired));
                    let need = client.s.sent() - server.s.received();
                    let expect = if need <= client.s.window().held() as u64 {
                        Ok(need as usize)
                    } else {
                        Err(Status::NotAcceptable)
                    };
                    prop_assert_eq!(client.s.resumed(server.s.received() as u32), expect);
                    if expect.is_err() {
                        alive = false;
                        break;
                    }
                }
            }
        }
        if alive {
            // Let the connection run until everything has been delivered.
            loop {
                for i in 0..2 {
                    let bytes = take_unsent(&mut sides[i].s, usize::MAX);
                    links[1 - i].extend(bytes);
                    sides[i].pump();
                }
                if links.iter().all(VecDeque::is_empty) {
                    break;
                }
                for i in 0..2 {
                    let bytes: Vec<u8> = links[i].drain(..).collect();
                    sides[i].receive(bytes);
                }
            }
            prop_assert_eq!(&sides[0].got, &sides[1].produced);
            prop_assert_eq!(&sides[1].got, &sides[0].produced);
        } else {
            // A refused resume ends the session; what arrived is still a
            // clean prefix.
            prop_assert!(sides[1].produced.starts_with(&sides[0].got));
            prop_assert!(sides[0].produced.starts_with(&sides[1].got));
        }
    }
}
