//! The `cairn` binary: argument parsing and dispatch. anyhow lives here and in `cli/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// glibc's malloc, tuned so the server's RSS stays flat in object size: two arenas (one per thread let RSS
/// grow with the thread count; deploy/cairn.service also sets MALLOC_ARENA_MAX=2 for older builds), and a fixed
/// mmap threshold of 2 MiB. By default glibc raises the threshold up to 32 MiB as big blocks are freed, after
/// which multi-MiB temporaries came from the heap and fragmented it: RSS after a 20 GB upload was 1.37x that
/// after a 2 GB one on the same server; with 2 MiB, 1.17x. 256 KiB was flatter still (1.14x) but every zstd
/// group frame then cost fresh pages: page faults took 8% of the server's CPU in unique ingest.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 * 1024 * 1024);
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
