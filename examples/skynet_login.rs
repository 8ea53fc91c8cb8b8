//! skynet's `examples/login`, served by ringgate: its login server and its
//! msgserver gate for the game server `sample`, where every user logs in
//! with the password `password` (skynet's `logind.lua`), and an agent that
//! answers each request with its payload after 100 ms (`msgagent.lua`'s
//! `skynet.sleep(10)`).
//!
//! ```text
//! cargo run --release --example skynet_login -- --login 127.0.0.1:8001 --gate 127.0.0.1:8888
//! ```
//!
//! skynet's own `examples/login/client.lua` works against it unchanged.

use clap::Parser;
use ringgate::gate::skynet::{Auth, Builder, Event, Handle, Refusal, User};
use ringgate::proto::skynet::login::Token;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "skynet's login example: login server and msgserver gate")]
struct Args {
    /// Login server address.
    #[arg(long, default_value = "127.0.0.1:8001")]
    login: SocketAddr,
    /// Gate address.
    #[arg(long, default_value = "127.0.0.1:8888")]
    gate: SocketAddr,
    /// Game server name.
    #[arg(long, default_value = "sample")]
    server: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Shards (io_uring threads); defaults to one per core.
    #[arg(long)]
    shards: Option<usize>,
    /// The agent's delay before answering, in milliseconds.
    #[arg(long, default_value_t = 100)]
    delay_ms: u64,
}

/// `logind.lua`'s `auth_handler`: any user, password `password`.
#[derive(Debug)]
struct Logind;

impl Auth for Logind {
    fn auth(&self, token: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
        let t = Token::parse(token).ok_or(Refusal::Unauthorized)?;
        if t.password != b"password" {
            return Err(Refusal::Unauthorized);
        }
        Ok((t.server, t.user))
    }
}

/// Answers requests once their delay is over. The delay is the same for
/// all, so arrival order is deadline order.
fn delay_line(handle: Handle, delay: Duration) -> mpsc::Sender<(User, u32, bytes::Bytes)> {
    let (tx, rx) = mpsc::channel::<(Instant, User, u32, bytes::Bytes)>();
    std::thread::spawn(move || {
        while let Ok((at, user, session, payload)) = rx.recv() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if handle.respond(user, session, payload, true).is_err() {
                return;
            }
        }
    });
    let (front, back) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok((user, session, payload)) = back.recv() {
            if tx
                .send((Instant::now() + delay, user, session, payload))
                .is_err()
            {
                return;
            }
        }
    });
    front
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut builder = Builder::new(args.login, args.gate, Logind)
        .server(args.server.as_bytes())
        .workers(args.workers);
    if let Some(n) = args.shards {
        builder = builder.shards(n);
    }
    let (handle, receivers) = builder.start()?;
    println!(
        "login server on {}, gate for `{}` on {}",
        handle.login_addr(),
        args.server,
        handle.gate_addr()
    );
    let delay = Duration::from_millis(args.delay_ms);
    let threads: Vec<_> = receivers
        .into_iter()
        .map(|rx| {
            let agent = delay_line(handle.clone(), delay);
            std::thread::spawn(move || {
                while let Some(ev) = rx.recv() {
                    match ev {
                        Event::Login { user, uid, subid } => println!(
                            "{}@sample is login, subid {} (user {})",
                            String::from_utf8_lossy(&uid),
                            String::from_utf8_lossy(&subid),
                            user.0
                        ),
                        Event::Online { user } => println!("user {} connected", user.0),
                        Event::Afk { user } => println!("user {} AFK", user.0),
                        Event::Logout { user } => println!("user {} is logout", user.0),
                        Event::Request {
                            user,
                            session,
                            payload,
                        } => {
                            if agent.send((user, session, payload)).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
