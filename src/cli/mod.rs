//! Command-line interface (clap derive). Each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod admin;
pub mod catalog;
pub mod debug;
pub mod key;
pub mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating, erasure-coded S3 backup target"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Disks, capacity, dedup, redundancy, verification and jobs of the running server.
    Status(catalog::StoreArgs),
    /// Disk management on the running server.
    #[command(subcommand)]
    Disk(admin::DiskCommand),
    /// Rebuild shards of failed disks onto spares (the server also starts this by itself).
    Rebuild(admin::JobArgs),
    /// Verify every shard and chunk; repair from parity and quarantine bad files.
    Scrub {
        #[command(flatten)]
        job: admin::JobArgs,
        /// Only report, do not repair
        #[arg(long)]
        no_repair: bool,
    },
    /// Catalog maintenance: check, rebuild from the disks.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Developer tools (ingest loops for crash tests, local put/get).
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
    /// Serve the S3 API (the embedded default without flags: 127.0.0.1:9000, ./cairn-data).
    Serve(serve::ServeArgs),
    /// Manage access keys limited to named buckets.
    Key(key::KeyArgs),
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status(a) => admin::status(a),
        Command::Disk(c) => admin::disk(c),
        Command::Rebuild(a) => admin::rebuild(a),
        Command::Scrub { job, no_repair } => admin::scrub(job, no_repair),
        Command::Catalog(c) => catalog::run(c),
        Command::Debug(c) => debug::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Key(a) => key::run(a),
    }
}

/// A progress bar on a terminal; hidden otherwise (and with --json), where plain summary lines are printed.
pub fn progress_bar(json: bool, unit: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} (eta {{eta}})"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
