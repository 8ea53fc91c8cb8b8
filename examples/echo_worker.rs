//! Every frame a client sends is echoed back by a worker thread.
//!
//! ```text
//! cargo run --release --example echo_worker -- --listen 127.0.0.1:1248 --workers 4
//! ```
//!
//! Clients speak SCP (or plain TCP with `--plain`) and frame their messages
//! with a 2-byte big-endian length.

use clap::Parser;
use ringgate::gate::embedded::{Builder, Event};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "Echo every frame from a worker thread")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1248")]
    listen: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Shards (io_uring threads); defaults to one per core.
    #[arg(long)]
    shards: Option<usize>,
    /// Plain TCP instead of SCP.
    #[arg(long)]
    plain: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut builder = Builder::new(args.listen)
        .workers(args.workers)
        .scp(!args.plain);
    if let Some(n) = args.shards {
        builder = builder.shards(n);
    }
    let (handle, receivers) = builder.start()?;
    println!("echoing on {}", handle.local_addr());

    // Ctrl-C closes every session; the workers end when their queues do.
    let stopper = handle.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stopper.shutdown();
        }
    });

    let workers: Vec<_> = receivers
        .into_iter()
        .map(|events| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                while let Some(ev) = events.recv() {
                    if let Event::Frame { session, data } = ev {
                        // Err only when the gate is stopping.
                        let _ = handle.send(session, data);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    handle.join();
    println!("{:?}", handle.stats());
    Ok(())
}
