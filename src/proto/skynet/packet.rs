//! skynet's netpack framing and the msgserver message layouts.
//!
//! Every gate message is a packet: a u16 big-endian length, then that many
//! bytes. A request's content is `payload ‖ u32 BE session`; a response's is
//! `payload ‖ u8 ok ‖ u32 BE session`. The first packet from the client is
//! the handshake `username:index:base64(hmac)`, where the username is
//! `base64(uid)@base64(server)#base64(subid)`.

use super::b64;
use crate::proto::crypt;

/// The largest packet content the u16 length can carry.
pub const MAX_CONTENT: usize = u16::MAX as usize;

/// Content too long for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet content of {0} bytes exceeds 65535")]
pub struct TooLarge(pub usize);

/// Appends a packet with `content` to `out`.
pub fn write_packet(content: &[u8], out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let len = u16::try_from(content.len()).map_err(|_| TooLarge(content.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(content);
    Ok(())
}

/// The first complete packet at the front of `buf`: its content and the
/// bytes it takes (header included); `None` while incomplete.
pub fn read_packet(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = u16::from_be_bytes(*buf.first_chunk::<2>()?) as usize;
    let content = buf.get(2..2 + len)?;
    Some((content, 2 + len))
}

/// Appends a request packet: `payload ‖ session`.
pub fn write_request(payload: &[u8], session: u32, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let len = payload.len() + 4;
    let len16 = u16::try_from(len).map_err(|_| TooLarge(len))?;
    out.extend_from_slice(&len16.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&session.to_be_bytes());
    Ok(())
}

/// Splits a request's content into payload and session; `None` when it is
/// shorter than the session.
pub fn parse_request(content: &[u8]) -> Option<(&[u8], u32)> {
    let split = content.len().checked_sub(4)?;
    let (payload, session) = content.split_at(split);
    Some((payload, u32::from_be_bytes(session.try_into().ok()?)))
}

/// Appends a response packet: `payload ‖ ok ‖ session`.
pub fn write_response(
    payload: &[u8],
    ok: bool,
    session: u32,
    out: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    let len = payload.len() + 5;
    let len16 = u16::try_from(len).map_err(|_| TooLarge(len))?;
    out.extend_from_slice(&len16.to_be_bytes());
    out.extend_from_slice(payload);
    out.push(ok as u8);
    out.extend_from_slice(&session.to_be_bytes());
    Ok(())
}

/// A response as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// What the handler returned (empty when it failed).
    pub payload: Vec<u8>,
    /// Whether the handler succeeded.
    pub ok: bool,
    /// The request's session.
    pub session: u32,
}

/// Parses a response's content; `None` when it is shorter than 5 bytes.
pub fn parse_response(content: &[u8]) -> Option<Response> {
    let split = content.len().checked_sub(5)?;
    let (payload, tail) = content.split_at(split);
    Some(Response {
        payload: payload.to_vec(),
        ok: tail[0] != 0,
        session: u32::from_be_bytes(tail[1..].try_into().ok()?),
    })
}

/// skynet's `msgserver.username(uid, subid, server)`:
/// `base64(uid)@base64(server)#base64(subid)`.
pub fn username(uid: &[u8], server: &[u8], subid: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    b64::encode_into(uid, &mut out);
    out.push(b'@');
    b64::encode_into(server, &mut out);
    out.push(b'#');
    b64::encode_into(subid, &mut out);
    out
}

/// The parts of a username (skynet's `msgserver.userid`):
/// `(uid, server, subid)`, or `None` when it is not in that form.
pub fn parse_username(name: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let at = name.iter().position(|&b| b == b'@')?;
    let hash = at + 1 + name[at + 1..].iter().position(|&b| b == b'#')?;
    Some((
        b64::decode(&name[..at]).ok()?,
        b64::decode(&name[at + 1..hash]).ok()?,
        b64::decode(&name[hash + 1..]).ok()?,
    ))
}

/// The handshake content for `username` and `index`, signed with `secret`:
/// `username:index:base64(hmac64(hashkey(username:index), secret))`.
pub fn handshake(username: &[u8], index: u64, secret: u64) -> Vec<u8> {
    let mut text = username.to_vec();
    text.push(b':');
    text.extend_from_slice(index.to_string().as_bytes());
    let hmac = crypt::hmac_hash(secret, &text);
    text.push(b':');
    b64::encode_into(&hmac.to_le_bytes(), &mut text);
    text
}

/// A handshake split as skynet splits it: the first three `:`-separated
/// fields (anything after a third `:` is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeFields<'a> {
    /// The username.
    pub username: &'a [u8],
    /// The index text, unparsed.
    pub index: &'a [u8],
    /// The base64 hmac text, undecoded.
    pub hmac: &'a [u8],
    /// The signed text: `username:index`.
    pub signed: &'a [u8],
}

impl<'a> HandshakeFields<'a> {
    /// Splits a handshake; `None` without two `:` (skynet answers 404).
    /// A shard can use the username to find the user's owner before
    /// handing the connection on.
    pub fn split(content: &'a [u8]) -> Option<Self> {
        let c1 = content.iter().position(|&b| b == b':')?;
        let c2 = c1 + 1 + content[c1 + 1..].iter().position(|&b| b == b':')?;
        let rest = &content[c2 + 1..];
        let end = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
        Some(HandshakeFields {
            username: &content[..c1],
            index: &content[c1 + 1..c2],
            hmac: &rest[..end],
            signed: &content[..c2],
        })
    }
}

/// How a handshake index compares, read as Lua's `tonumber` reads integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// A non-negative integer.
    Value(u64),
    /// A negative integer: below every accepted index.
    Negative,
}

/// Parses an index: optional surrounding whitespace, an optional sign, then
/// decimal digits or `0x` and hex digits. `None` is skynet's 400.
pub fn parse_index(text: &[u8]) -> Option<Index> {
    let t = text.trim_ascii();
    let (neg, t) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let s = std::str::from_utf8(t).ok()?;
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok()?,
        None => return None,
    };
    Some(if neg && v != 0 {
        Index::Negative
    } else {
        Index::Value(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_forms() {
        assert_eq!(parse_index(b"12"), Some(Index::Value(12)));
        assert_eq!(parse_index(b" 7\t"), Some(Index::Value(7)));
        assert_eq!(parse_index(b"0x10"), Some(Index::Value(16)));
        assert_eq!(parse_index(b"-3"), Some(Index::Negative));
        assert_eq!(parse_index(b"-0"), Some(Index::Value(0)));
        for bad in [
            &b""[..],
            b"x",
            b"1x",
            b"0x",
            b"1.5",
            b"99999999999999999999",
            b"--1",
        ] {
            assert_eq!(parse_index(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn handshake_split_like_skynet() {
        assert_eq!(HandshakeFields::split(b"garbage"), None);
        assert_eq!(HandshakeFields::split(b"a:4"), None);
        let f = HandshakeFields::split(b"u:1:h:extra").unwrap();
        assert_eq!(
            (f.username, f.index, f.hmac, f.signed),
            (&b"u"[..], &b"1"[..], &b"h"[..], &b"u:1"[..])
        );
        let f = HandshakeFields::split(b"::").unwrap();
        assert_eq!(
            (f.username, f.index, f.hmac),
            (&b""[..], &b""[..], &b""[..])
        );
    }

    #[test]
    fn usernames() {
        let n = username(b"hello", b"sample", b"1");
        assert_eq!(n, b"aGVsbG8=@c2FtcGxl#MQ==");
        assert_eq!(
            parse_username(&n),
            Some((b"hello".to_vec(), b"sample".to_vec(), b"1".to_vec()))
        );
    }

    #[test]
    fn response_round_trip() {
        let mut out = Vec::new();
        write_response(b"echo", true, 7, &mut out).unwrap();
        let (content, n) = read_packet(&out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(
            parse_response(content),
            Some(Response {
                payload: b"echo".to_vec(),
                ok: true,
                session: 7
            })
        );
        assert!(write_response(&[0; 65531], true, 0, &mut out).is_err());
        assert!(write_response(&[0; 65530], true, 0, &mut Vec::new()).is_ok());
    }
}
