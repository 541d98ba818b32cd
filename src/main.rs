//! The `cairn` binary: argument parsing and dispatch. anyhow lives here and in `cli/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// glibc's malloc with two arenas instead of eight per core: one per thread let RSS grow with the thread
/// count (deploy/cairn.service also sets MALLOC_ARENA_MAX=2). A fixed mmap threshold was tried for RSS
/// flatness (20 GB vs 2 GB upload: 1.37x -> 1.17x at 2 MiB) and dropped: every shard-sized buffer then cost
/// fresh pages, +8-40% CPU in ingest, rebuild and scrub (docs/performance-history.md, session 3).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> ExitCode {
    tune_malloc();
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
