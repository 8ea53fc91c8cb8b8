//! The gate with its built-in echo upstream, over loopback, with the crate's
//! own blocking client.

mod common;

use common::{config, payload, start, wait_until};
use ringgate::client::{ClientOptions, ScpClient};
use ringgate::gate::Backend;
use std::time::Duration;

#[test]
fn echo_through_the_gate() {
    let gate = start(config(Backend::Echo));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    assert_ne!(c.id(), 0);
    for n in 0..20 {
        let msg = payload(n, 1 + n * 97);
        c.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "message {n}");
    }
    let stats = gate.stats();
    assert_eq!(stats.sessions_opened, 1);
}

#[test]
fn resume_after_abort_with_bytes_in_flight() {
    let gate = start(config(Backend::Echo));
    let mut c = ScpClient::connect(gate.local_addr(), ClientOptions::default()).unwrap();
    let mut expected = Vec::new();
    for round in 0..5 {
        // Bytes in flight both ways: write, do not read the echo, drop the connection.
        let msg = payload(round, 3000 + round * 1000);
        c.write_all(&msg).unwrap();
        expected.extend_from_slice(&msg);
        c.abort();
        c.resume().unwrap();
        let more = payload(round + 100, 500);
        c.write_all(&more).unwrap();
        expected.extend_from_slice(&more);
        let mut back = vec![0u8; expected.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(
            back, expected,
            "round {round}: nothing lost, nothing duplicated"
        );
        expected.clear();
    }
    assert!(wait_until(Duration::from_secs(5), || gate
        .stats()
        .sessions_resumed
        == 5));
    // Nothing more arrives: the echo was delivered exactly once.
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut extra = [0u8; 16];
    assert!(
        c.read(&mut extra).is_err(),
        "no duplicated bytes after the last echo"
    );
}
