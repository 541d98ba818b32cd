//! The `cairn` binary: argument parsing and dispatch. anyhow lives here and in `cli/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
