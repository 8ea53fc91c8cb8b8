//! The `ringgate` command line.

use std::process::ExitCode;

use clap::Parser;
use ringgate::cli::{Cli, Command, init_logging};

fn main() -> ExitCode {
    // clap prints its own usage errors and exits with 2.
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => {
            let cfg = match args.resolve() {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("ringgate serve: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::debug!(?cfg, "resolved configuration");
            let mode = if cfg.plain { "plain" } else { "scp" };
            println!(
                "ringgate serve: would listen on {} with {} shards in {mode} mode (the engine is not built yet)",
                cfg.listen, cfg.shards
            );
            ExitCode::SUCCESS
        }
        Command::Echo(_) | Command::Loadgen(_) => {
            eprintln!("ringgate: this command is not built yet");
            ExitCode::FAILURE
        }
    }
}
