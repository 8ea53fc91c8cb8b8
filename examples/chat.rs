//! A chat room: every frame a client sends goes to every session, and
//! everyone hears who joined, who dropped and came back, and who left.
//!
//! ```text
//! cargo run --example chat -- --listen 127.0.0.1:1248
//! ```
//!
//! With `--ws` and `--http` it is also a chat for browsers: the page in
//! `examples/chat-web/` (served by `--http`, with the client modules of
//! `clients/js/`) speaks SCP over a WebSocket to the `--ws` door, and its
//! sessions resume when their connection drops.
//!
//! ```text
//! cargo run --example chat -- --ws 127.0.0.1:8080 --http 127.0.0.1:8000
//! # then open http://127.0.0.1:8000/ in two or three tabs
//! ```
//!
//! A frame `/name NAME` sets the sender's name (up to 24 characters).

use clap::Parser;
use ringgate::engine::Door;
use ringgate::engine::ws::WsMode;
use ringgate::gate::embedded::{Builder, Event, SessionId};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Broadcast every frame to all sessions")]
struct Args {
    /// Address to listen on (SCP, or plain TCP with --plain).
    #[arg(long, default_value = "127.0.0.1:1248")]
    listen: SocketAddr,
    /// Also listen here for SCP over WebSocket (browsers).
    #[arg(long)]
    ws: Option<SocketAddr>,
    /// Serve the chat page here (needs --ws).
    #[arg(long, requires = "ws")]
    http: Option<SocketAddr>,
    /// Worker threads (each sees its own sessions, in order).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Shards (io_uring threads).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Plain TCP instead of SCP.
    #[arg(long)]
    plain: bool,
    /// Seconds a dropped session waits for its client to resume.
    #[arg(long, default_value_t = 30)]
    reuse_secs: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let ws = args.ws;
    let (handle, receivers) = Builder::new(args.listen)
        .shards(args.shards)
        .workers(args.workers)
        .scp(!args.plain)
        .reuse_time(Duration::from_secs(args.reuse_secs))
        .engine(|cfg| cfg.doors.extend(ws.map(|a| (a, Door::Ws(WsMode::Scp)))))
        .start()?;
    println!("chat on {}", handle.local_addr());
    if let Some(&ws) = handle.door_addrs().first() {
        println!("chat for browsers (SCP over WebSocket) on ws://{ws}/");
        if let Some(http) = args.http {
            let listener = TcpListener::bind(http)?;
            println!("chat page on http://{}/", listener.local_addr()?);
            std::thread::spawn(move || serve_page(listener, ws.port()));
        }
    }

    let workers: Vec<_> = receivers
        .into_iter()
        .map(|events| {
            let room = handle.clone();
            std::thread::spawn(move || {
                // All events of a session come to the same worker, so each
                // worker knows the names of its own sessions.
                let mut names: HashMap<SessionId, String> = HashMap::new();
                while let Some(ev) = events.recv() {
                    let session = ev.session();
                    let who = names
                        .get(&session)
                        .cloned()
                        .unwrap_or_else(|| format!("#{session}"));
                    let line = match ev {
                        Event::Opened { peer, .. } => {
                            let _ = room.send(session, format!("welcome, you are #{session}"));
                            match peer {
                                Some(peer) => format!("* {who} joined from {peer}"),
                                None => format!("* {who} joined"),
                            }
                        }
                        Event::Frame { data, .. } => {
                            let text = String::from_utf8_lossy(&data);
                            match text.strip_prefix("/name ") {
                                Some(name) => {
                                    let name: String = name.trim().chars().take(24).collect();
                                    if name.is_empty() {
                                        continue;
                                    }
                                    names.insert(session, name.clone());
                                    format!("* {who} is now {name}")
                                }
                                None => format!("{who}: {text}"),
                            }
                        }
                        Event::Closed { reason, .. } => {
                            names.remove(&session);
                            format!("* {who} left ({reason})")
                        }
                        // The session stays; what is said meanwhile waits in
                        // its replay window and reaches it when it resumes.
                        Event::Detached { .. } => format!("* {who} lost the connection"),
                        Event::Resumed { .. } => format!("* {who} is back (session resumed)"),
                    };
                    println!("{line}");
                    let _ = room.broadcast(line);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Serves the chat page (`examples/chat-web/`), the client's modules
/// (`clients/js/`, as `/js/…`) and `/config.json` (the WebSocket door's
/// port), one thread per connection, GET only, one request per connection.
fn serve_page(listener: TcpListener, ws_port: u16) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for stream in listener.incoming().flatten() {
        let root = root.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &root, ws_port) {
                eprintln!("chat page: {e}");
            }
        });
    }
}

fn answer(mut stream: TcpStream, root: &Path, ws_port: u16) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0; 8192];
    let mut len = 0;
    let path = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_string(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                return reply(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    b"bad request\n",
                );
            }
        }
    };
    let path = path.split('?').next().unwrap_or("/");
    // Only plain file names, so that nothing outside the two folders is served.
    let file = |dir: &str, name: &str| {
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.');
        plain.then(|| root.join(dir).join(name))
    };
    let target = match path {
        "/" => file("examples/chat-web", "index.html"),
        "/config.json" => {
            let body = format!("{{\"wsPort\":{ws_port}}}");
            return reply(&mut stream, "200 OK", "application/json", body.as_bytes());
        }
        p => match p.strip_prefix("/js/") {
            Some(name) => file("clients/js", name),
            None => file("examples/chat-web", p.strip_prefix('/').unwrap_or("")),
        },
    };
    match target.and_then(|p| std::fs::read(&p).ok().map(|b| (p, b))) {
        Some((p, body)) => {
            let kind = match p.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                _ => "application/octet-stream",
            };
            reply(&mut stream, "200 OK", kind, &body)
        }
        None => reply(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
    }
}

fn reply(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}
