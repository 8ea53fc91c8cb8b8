//! What a gate writes first on a new upstream connection so that the backend
//! learns the client's address: the sproto `announce` message goscon sends,
//! or a HAProxy PROXY protocol v2 header.

use std::net::SocketAddr;

/// Largest integer sproto stores inline in a field header (`2·(n+1)` must
/// stay below 0x10000 with the low bit clear).
const SPROTO_MAX_INLINE: u32 = 0x7ffe;

/// The sproto message goscon's upstream hook sends: header
/// `package{type = type_, ud = 0}` then `announce{remote_addr, local_addr}`,
/// sproto-packed, prefixed with the packed length as `u16` big-endian.
///
/// Addresses are written as given (goscon uses Go's `ip:port` /
/// `[ip]:port` form, which is also what `SocketAddr`'s `Display` writes).
/// The total is bounded by the `u16` prefix: the addresses are expected to be
/// a few dozen bytes, and longer ones are truncated to fit.
pub fn sproto_announce(type_: u32, remote: &str, local: &str) -> Vec<u8> {
    // Both strings share one u16-prefixed frame; clamp so the frame fits
    // whatever the caller passes. Packing grows data by at most 2 bytes per
    // 256 groups (plus one bitmap byte), so 2 × 30000 bytes stay under 65535.
    const MAX_STR: usize = 30_000;
    let remote = &remote.as_bytes()[..remote.len().min(MAX_STR)];
    let local = &local.as_bytes()[..local.len().min(MAX_STR)];

    let mut plain = Vec::with_capacity(32 + remote.len() + local.len());
    // package: 3 header fields — type (tag 0), a skip over the absent
    // `session` (tag 1), and ud = 0 (tag 2), which goscon always writes.
    plain.extend_from_slice(&3u16.to_le_bytes());
    if type_ <= SPROTO_MAX_INLINE {
        plain.extend_from_slice(&(2 * (type_ as u16 + 1)).to_le_bytes());
    } else {
        plain.extend_from_slice(&0u16.to_le_bytes());
    }
    plain.extend_from_slice(&1u16.to_le_bytes()); // skip one tag
    plain.extend_from_slice(&2u16.to_le_bytes()); // ud = 0
    if type_ > SPROTO_MAX_INLINE {
        // goscon's field is an int32: 4 bytes of data, low 32 bits.
        plain.extend_from_slice(&4u32.to_le_bytes());
        plain.extend_from_slice(&type_.to_le_bytes());
    }
    // announce: two string fields, both stored in the data part.
    plain.extend_from_slice(&2u16.to_le_bytes());
    plain.extend_from_slice(&[0, 0, 0, 0]);
    for s in [remote, local] {
        plain.extend_from_slice(&(s.len() as u32).to_le_bytes());
        plain.extend_from_slice(s);
    }

    let mut out = vec![0, 0];
    sproto_pack(&plain, &mut out);
    let len = (out.len() - 2) as u16;
    out[..2].copy_from_slice(&len.to_be_bytes());
    out
}

/// sproto's zero-packing, as the reference packer writes it.
///
/// Input is taken in 8-byte groups. A group becomes a bitmap byte of its
/// non-zero bytes followed by those bytes. A group of 8 non-zero bytes
/// instead opens a raw run, `0xff, count−1, bytes…`; following groups with 6
/// or more non-zero bytes join the run (up to 256 groups), since storing them
/// raw costs no more than a bitmap. A final partial group in a run is padded
/// with zeros; outside a run it is bitmapped as is.
fn sproto_pack(src: &[u8], out: &mut Vec<u8>) {
    // Where the open raw run starts in `out`, and how many groups it holds.
    let mut run: Option<(usize, usize)> = None;
    for group in src.chunks(8) {
        let nonzero = group.iter().filter(|&&b| b != 0).count();
        match run {
            Some((at, n)) if nonzero >= 6 => {
                out.extend_from_slice(group);
                out.resize(out.len() + 8 - group.len(), 0);
                run = if n + 1 == 256 {
                    out[at + 1] = 255;
                    None
                } else {
                    Some((at, n + 1))
                };
                continue;
            }
            Some((at, n)) => {
                out[at + 1] = (n - 1) as u8;
                run = None;
            }
            None => {}
        }
        if nonzero == 8 {
            run = Some((out.len(), 1));
            out.extend_from_slice(&[0xff, 0]);
            out.extend_from_slice(group);
        } else {
            let at = out.len();
            out.push(0);
            let mut bitmap = 0u8;
            for (i, &b) in group.iter().enumerate() {
                if b != 0 {
                    bitmap |= 1 << i;
                    out.push(b);
                }
            }
            out[at] = bitmap;
        }
    }
    if let Some((at, n)) = run {
        out[at + 1] = (n - 1) as u8;
    }
}

/// The PROXY protocol v2 signature.
const PROXY_V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A HAProxy PROXY protocol v2 header announcing a TCP connection from `src`
/// to `dst` (version 2, command PROXY). Mixed families are written as IPv6,
/// with the IPv4 side mapped (`::ffff:a.b.c.d`), as the spec allows.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&PROXY_V2_SIG);
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        _ => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                SocketAddr::V6(a) => a.ip().octets(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src));
            out.extend_from_slice(&v6(dst));
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes sproto packing (test helper to check the packer round-trips).
    fn unpack(mut src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((&h, rest)) = src.split_first() {
            if h == 0xff {
                let n = (rest[0] as usize + 1) * 8;
                out.extend_from_slice(&rest[1..1 + n]);
                src = &rest[1 + n..];
            } else {
                let mut rest = rest;
                for i in 0..8 {
                    if h & (1 << i) != 0 {
                        out.push(rest[0]);
                        rest = &rest[1..];
                    } else {
                        out.push(0);
                    }
                }
                src = rest;
            }
        }
        out
    }

    #[test]
    fn sproto_vectors() {
        let vectors = [
            (
                1,
                "5503040102410211fc3230332e302eff003131332e373a35318f3233340e31ff0032372e302e302e311f3a31323438",
            ),
            (
                42,
                "5503560102410211fc3230332e302eff003131332e373a35318f3233340e31ff0032372e302e302e311f3a31323438",
            ),
        ];
        for (ty, packed_hex) in vectors {
            let msg = sproto_announce(ty, "203.0.113.7:51234", "127.0.0.1:1248");
            let packed = hex::decode(packed_hex).unwrap();
            assert_eq!(&msg[..2], &(packed.len() as u16).to_be_bytes());
            assert_eq!(hex::encode(&msg[2..]), packed_hex, "type {ty}");
        }
    }

    #[test]
    fn sproto_large_type_goes_to_data_part() {
        let msg = sproto_announce(100_000, "a", "b");
        let plain = unpack(&msg[2..]);
        assert_eq!(&plain[..8], &[3, 0, 0, 0, 1, 0, 2, 0]);
        assert_eq!(&plain[8..16], &[4, 0, 0, 0, 0xa0, 0x86, 0x01, 0x00]);
    }

    proptest::proptest! {
        #[test]
        fn pack_round_trips(src in proptest::collection::vec(
            proptest::prop_oneof![proptest::strategy::Just(0u8), 1u8..], 0..600)) {
            let mut packed = Vec::new();
            sproto_pack(&src, &mut packed);
            let mut unpacked = unpack(&packed);
            // Unpacking yields whole groups; the tail beyond the input is zeros.
            proptest::prop_assert!(unpacked[src.len()..].iter().all(|&b| b == 0));
            unpacked.truncate(src.len());
            proptest::prop_assert_eq!(unpacked, src);
        }
    }

    #[test]
    fn proxy_v2_ipv4() {
        let h = proxy_v2_header(
            "203.0.113.7:51234".parse().unwrap(),
            "127.0.0.1:1248".parse().unwrap(),
        );
        assert_eq!(
            &h[..12],
            &[
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
            ]
        );
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &[0, 12]);
        assert_eq!(&h[16..20], &[203, 0, 113, 7]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(&h[24..26], &51234u16.to_be_bytes());
        assert_eq!(&h[26..28], &1248u16.to_be_bytes());
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn proxy_v2_ipv6() {
        let h = proxy_v2_header(
            "[2001:db8::1]:40000".parse().unwrap(),
            "[::1]:443".parse().unwrap(),
        );
        assert_eq!(&h[..12], &PROXY_V2_SIG);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x21);
        assert_eq!(&h[14..16], &[0, 36]);
        assert_eq!(&h[16..20], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(h[47], 1);
        assert_eq!(&h[48..50], &40000u16.to_be_bytes());
        assert_eq!(&h[50..52], &443u16.to_be_bytes());
        assert_eq!(h.len(), 52);
    }

    #[test]
    fn proxy_v2_mixed_maps_v4_into_v6() {
        let h = proxy_v2_header("10.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        assert_eq!(h[13], 0x21);
        assert_eq!(
            &h[16..32],
            &"::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
