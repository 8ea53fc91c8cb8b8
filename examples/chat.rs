//! A chat room: every frame a client sends goes to every session, and
//! everyone hears who joined and who left.
//!
//! ```text
//! cargo run --example chat -- --listen 127.0.0.1:1248
//! ```

use clap::Parser;
use ringgate::gate::embedded::{Builder, Event};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "Broadcast every frame to all sessions")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1248")]
    listen: SocketAddr,
    /// Worker threads (each sees its own sessions, in order).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Shards (io_uring threads).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Plain TCP instead of SCP.
    #[arg(long)]
    plain: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (handle, receivers) = Builder::new(args.listen)
        .shards(args.shards)
        .workers(args.workers)
        .scp(!args.plain)
        .start()?;
    println!("chat on {}", handle.local_addr());

    let workers: Vec<_> = receivers
        .into_iter()
        .map(|events| {
            let room = handle.clone();
            std::thread::spawn(move || {
                while let Some(ev) = events.recv() {
                    let line = match ev {
                        Event::Opened { session, peer, .. } => {
                            let _ = room.send(session, format!("welcome, you are #{session}"));
                            format!("* #{session} joined from {peer:?}")
                        }
                        Event::Frame { session, data } => {
                            format!("#{session}: {}", String::from_utf8_lossy(&data))
                        }
                        Event::Closed { session, reason } => {
                            format!("* #{session} left ({reason})")
                        }
                        // A dropped connection may come back: say nothing yet.
                        Event::Detached { .. } | Event::Resumed { .. } => continue,
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
