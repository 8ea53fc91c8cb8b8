//! The `ringgate` command line.

use std::process::ExitCode;

use clap::Parser;
use ringgate::cli::{Cli, Command, init_logging};
use ringgate::client::loadgen;
use ringgate::engine::{self, Gate};
use ringgate::gate::{Backend, UpstreamNet};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // clap prints its own usage errors and exits with 2.
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => {
            let cfg = match args.resolve().and_then(|c| c.engine_config()) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("ringgate serve: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::debug!(?cfg, "resolved configuration");
            run("serve", cfg)
        }
        Command::Echo(args) => {
            let cfg = engine::Config {
                listen: args.listen,
                shards: args.shards.unwrap_or(engine::Config::default().shards),
                scp: false,
                backend: Backend::Echo,
                ..engine::Config::default()
            };
            run("echo", cfg)
        }
        Command::Loadgen(args) => loadgen(args.to_config()),
    }
}

/// Runs a load test and prints its report.
fn loadgen(cfg: loadgen::LoadgenConfig) -> ExitCode {
    match loadgen::plan_shards(cfg.connections, cfg.shards) {
        Ok(plan) if plan.auto => println!(
            "ringgate loadgen: {} connections on {} shards (chosen automatically: at most {} \
             per ring, from RLIMIT_NOFILE; --shards overrides)",
            cfg.connections, plan.shards, plan.per_ring_cap
        ),
        Ok(plan) => println!(
            "ringgate loadgen: {} connections on {} shards",
            cfg.connections, plan.shards
        ),
        Err(e) => {
            eprintln!("ringgate loadgen: {e}");
            return ExitCode::from(2);
        }
    }
    match loadgen::run(cfg) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringgate loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the engine, says where it listens, and runs until SIGINT/SIGTERM.
fn run(what: &str, cfg: engine::Config) -> ExitCode {
    let mode = if cfg.scp { "scp" } else { "plain" };
    let peer = match &cfg.backend {
        Backend::Echo => "built-in echo".to_string(),
        Backend::Proxy(p) => format!(
            "{} upstream host(s) over {}",
            p.host_count(),
            if p.scp() {
                UpstreamNet::Scp
            } else {
                UpstreamNet::Tcp
            }
        ),
        Backend::Workers(_) => "worker threads".to_string(),
    };
    // Watch the signals before saying we listen: whoever reads that line may
    // signal at once.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]);
    let gate = match Gate::start(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ringgate {what}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ringgate {what}: listening on {} in {mode} mode with {} shards, sessions to the {peer}",
        gate.local_addr(),
        gate.shards()
    );
    for addr in gate.door_addrs() {
        println!("ringgate {what}: stable-connection clients on {addr}");
    }
    let stopper = gate.stopper();
    match signals {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!(signal = sig, "stopping: closing sessions and upstreams");
                    stopper.stop();
                }
            });
        }
        Err(e) => tracing::warn!("cannot watch SIGINT/SIGTERM ({e}); stop with SIGKILL"),
    }
    gate.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
