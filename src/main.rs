//! The `ringgate` command line.

use std::process::ExitCode;

use clap::Parser;
use ringgate::admin::{self, Admin};
use ringgate::cli::{Cli, Command, init_logging};
use ringgate::client::loadgen;
use ringgate::config::ServeConfig;
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
            let settings = match args.resolve() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("ringgate serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let (cfg, proxy) = match settings.build() {
                Ok(built) => built,
                Err(e) => {
                    eprintln!("ringgate serve: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::debug!(?cfg, "resolved configuration");
            let admin_listener = match settings.admin.listen.map(admin::bind).transpose() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "ringgate serve: cannot listen for admin requests on {}: {e}",
                        settings
                            .admin
                            .listen
                            .map_or(String::new(), |a| a.to_string())
                    );
                    return ExitCode::FAILURE;
                }
            };
            let goscon = args.goscon_config.is_some();
            // A reload reads what the start read: the file, then the flags.
            let reread: admin::Reread = Box::new(move || args.resolve());
            let ops = Ops {
                settings,
                proxy,
                goscon,
                reread,
                listener: admin_listener,
            };
            run("serve", cfg, Some(ops))
        }
        Command::Echo(args) => {
            let cfg = engine::Config {
                listen: args.listen,
                // 0: enough rings for a million connections (see Config::plan_shards).
                shards: args.shards.unwrap_or(0),
                scp: false,
                backend: Backend::Echo,
                ..engine::Config::default()
            };
            run("echo", cfg, None)
        }
        Command::Loadgen(args) => match args.to_config() {
            Ok(cfg) => loadgen(cfg),
            Err(e) => {
                eprintln!("ringgate loadgen: {e}");
                ExitCode::from(2)
            }
        },
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

/// What `serve` needs to be operated: the settings it started with, the
/// proxy a reload updates, and the admin listener if one is configured.
struct Ops {
    settings: ServeConfig,
    proxy: Option<std::sync::Arc<ringgate::gate::ReloadableProxy>>,
    goscon: bool,
    reread: admin::Reread,
    listener: Option<std::net::TcpListener>,
}

/// Starts the engine, says where it listens, and runs until SIGINT/SIGTERM.
/// With `ops`, SIGHUP reloads the settings, SIGUSR1 starts draining, and
/// the admin endpoint answers if configured.
fn run(what: &str, cfg: engine::Config, ops: Option<Ops>) -> ExitCode {
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
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let watched: &[i32] = if ops.is_some() {
        &[SIGINT, SIGTERM, SIGHUP, SIGUSR1]
    } else {
        &[SIGINT, SIGTERM]
    };
    let signals = signal_hook::iterator::Signals::new(watched);
    let doors: Vec<engine::Door> = cfg.doors.iter().map(|(_, door)| *door).collect();
    let tls = cfg.tls.clone();
    let gate = match Gate::start(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ringgate {what}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut admin_note = String::new();
    let admin = ops.map(|ops| {
        let admin = std::sync::Arc::new(
            Admin::new(
                gate.control(),
                ops.proxy,
                ops.settings,
                ops.goscon,
                ops.reread,
            )
            .with_tls(tls),
        );
        if let Some(listener) = ops.listener {
            let at = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match admin::serve(admin.clone(), listener) {
                Ok(()) => admin_note = format!("; admin at http://{at}/"),
                Err(e) => tracing::warn!("cannot start the admin thread: {e}"),
            }
        }
        admin
    });
    // Not println!: whoever reads the start-up line (a test, a supervisor)
    // may close the pipe after the first line, and a failed println! panics.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ringgate {what}: listening on {} in {mode} mode with {} shards, sessions to the {peer}{admin_note}",
        gate.local_addr(),
        gate.shards()
    );
    for (addr, door) in gate.door_addrs().iter().zip(&doors) {
        let _ = writeln!(out, "ringgate {what}: {door} clients on {addr}");
    }
    if let Some(addr) = gate.kcp_addr() {
        let _ = writeln!(out, "ringgate {what}: scp-over-kcp clients on udp {addr}");
    }
    let _ = out.flush();
    drop(out);
    let stopper = gate.stopper();
    match signals {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    match (sig, &admin) {
                        (SIGHUP, Some(admin)) => {
                            admin.reload_logged();
                        }
                        (SIGUSR1, Some(admin)) => {
                            admin.drain(true);
                        }
                        _ => {
                            tracing::info!(
                                signal = sig,
                                "stopping: closing sessions and upstreams"
                            );
                            stopper.stop();
                            break;
                        }
                    }
                }
            });
        }
        Err(e) => tracing::warn!("cannot watch signals ({e}); stop with SIGKILL"),
    }
    gate.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
