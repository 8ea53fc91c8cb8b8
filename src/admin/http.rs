//! The smallest HTTP/1.1 server the admin endpoint needs: one request per
//! connection, no body used, bounded sizes and times, each connection on
//! its own short-lived thread (a few at once at most).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Bytes of request line and headers accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes of request body read (and ignored).
const MAX_BODY: usize = 64 * 1024;
/// A client that sends or reads nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503.
const MAX_CONNECTIONS: usize = 16;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string after `?`, if any.
    pub query: Option<String>,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
}

impl Request {
    /// The value of query parameter `key` (no percent-decoding: the admin
    /// endpoint's parameters are numbers).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Extra header lines (`Name: value`).
    pub headers: Vec<String>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
        body.push('\n');
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    /// 405 with the methods that are allowed.
    pub fn method_not_allowed(allow: &str) -> Response {
        let mut r = Response::text(405, format!("method not allowed; use {allow}"));
        r.headers.push(format!("Allow: {allow}"));
        r
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(stream: &mut TcpStream, r: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for h in &r.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(r.body.as_bytes())?;
    stream.flush()
}

/// Reads one request; an `Err(response)` is what to answer instead.
fn read_request(stream: &mut TcpStream) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return Err(Response::text(431, "request head too large"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Response::text(400, "incomplete request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Response::text(408, "request not received in time"));
            }
            Err(_) => return Err(Response::text(400, "cannot read the request")),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Response::text(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::text(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(Response::text(400, "malformed request line"));
    }
    let mut length = 0usize;
    let mut accept = None;
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Response::text(400, "malformed header"));
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| Response::text(400, "bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("accept") {
            accept = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::text(
                400,
                "request bodies must have a Content-Length",
            ));
        }
    }
    if length > MAX_BODY {
        return Err(Response::text(413, "request body too large"));
    }
    // The body is not used, but it is read so that the client sees the answer.
    let mut have = buf.len() - head_end - 4;
    while have < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Ok(Request {
        method: method.to_owned(),
        path,
        query,
        accept,
    })
}

/// Answers requests on `listener` with `handle` until the listener fails.
/// Runs on the calling thread; each connection gets its own thread.
pub fn serve<H>(listener: TcpListener, handle: Arc<H>)
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("admin accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::AcqRel);
            let _ = write_response(&mut stream, &Response::text(503, "too many admin requests"));
            continue;
        }
        let (handle, busy2) = (handle.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("ringgate-admin-conn".into())
            .spawn(move || {
                let answer = match read_request(&mut stream) {
                    Ok(req) => handle(&req),
                    Err(r) => r,
                };
                let _ = write_response(&mut stream, &answer);
                busy2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let r = Request {
            method: "GET".into(),
            path: "/sessions".into(),
            query: Some("a=1&limit=20&flag".into()),
            accept: None,
        };
        assert_eq!(r.param("limit"), Some("20"));
        assert_eq!(r.param("flag"), Some(""));
        assert_eq!(r.param("b"), None);
    }
}
