//! KCP datagrams recorded from goscon's client (kcp-go), read by
//! `proto::kcp`: the first push opens a conversation and carries the SCP
//! handshake; FEC parity is klauspost/reedsolomon's, which our codec makes
//! and uses to recover lost data packets.

use reed_solomon_erasure::galois_8::ReedSolomon;
use ringgate::proto::kcp::{CMD_ACK, Conversation, KcpSettings, Opening, opening, segments};

fn datagrams(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/data/kcp/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| hex::decode(l).unwrap())
        .collect()
}

/// The acks a conversation sends now, by the timestamps they echo.
fn acked_stamps(c: &mut Conversation, now: u32, fec: bool) -> Vec<u32> {
    let mut out = Vec::new();
    c.flush(now, &mut out);
    let skip = if fec { 8 } else { 0 };
    let mut stamps: Vec<u32> = out
        .iter()
        .filter(|d| !fec || d[4] == 0xf1)
        .flat_map(|d| segments(&d[skip..]).map(Result::unwrap).collect::<Vec<_>>())
        .filter(|s| s.cmd == CMD_ACK)
        .map(|s| s.ts)
        .collect();
    stamps.sort();
    stamps
}

#[test]
fn a_kcp_go_client_opens_with_its_scp_handshake() {
    let d = datagrams("goscon_client_plain.hex");
    let s = KcpSettings::default();
    let Opening::Opens(conv) = opening(&d[0], &s) else {
        panic!("the first push opens");
    };
    let mut c = Conversation::new(conv, &s, 0);
    for x in &d {
        c.input(x, 0).unwrap();
    }
    let mut got = Vec::new();
    c.recv(&mut got, usize::MAX);
    // One copy, however many retransmissions: SCP's new-session record.
    // A record: u16 BE length, then "0\n" and the client key.
    assert_eq!(got[..2], [0, 17]);
    assert!(got[2..].starts_with(b"0\n"), "{got:?}");
    assert_eq!(got.len(), 19);
}

#[test]
fn fec_parity_matches_kcp_go() {
    let d = datagrams("goscon_client_fec_3_2.hex");
    // Shards are everything after the 6-byte header, padded to the longest.
    let max = d.iter().map(|x| x.len() - 6).max().unwrap();
    let mut shards: Vec<Vec<u8>> = d[..3]
        .iter()
        .map(|x| {
            let mut s = x[6..].to_vec();
            s.resize(max, 0);
            s
        })
        .collect();
    shards.extend([vec![0u8; max], vec![0u8; max]]);
    ReedSolomon::new(3, 2).unwrap().encode(&mut shards).unwrap();
    assert_eq!(shards[3], d[3][6..]);
    assert_eq!(shards[4], d[4][6..]);
}

#[test]
fn fec_recovers_what_kcp_go_sent() {
    let d = datagrams("goscon_client_fec_3_2.hex");
    let s = KcpSettings {
        fec_data: 3,
        fec_parity: 2,
        ..KcpSettings::default()
    };
    let Opening::Opens(conv) = opening(&d[1], &s) else {
        panic!("a data packet with the first push opens");
    };
    assert_eq!(opening(&d[3], &s), Opening::No, "parity opens nothing");
    let mut c = Conversation::new(conv, &s, 0);
    // Data packets 0 and 2 are lost: both come back from the parity.
    for i in [3, 1, 4] {
        c.input(&d[i], 700).unwrap();
    }
    let stamp = |x: &[u8]| u32::from_le_bytes(x[16..20].try_into().unwrap());
    let mut want: Vec<u32> = d[..3].iter().map(|x| stamp(x)).collect();
    want.sort();
    assert_eq!(acked_stamps(&mut c, 700, true), want);
    let mut got = Vec::new();
    c.recv(&mut got, usize::MAX);
    assert!(got[2..].starts_with(b"0\n"));
}
