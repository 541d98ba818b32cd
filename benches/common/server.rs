//! Starting the real `cairn serve` for the e2e bench, and reading its peak RSS.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const ACCESS: &str = "cairnbenchroot";
pub const SECRET: &str = "cairn-bench-secret-key-0123456789";

pub struct Server {
    pub data: PathBuf,
    pub endpoint: String,
    child: Child,
}

impl Server {
    /// `cairn serve --data <data> --listen 127.0.0.1:0`; returns once it printed its address.
    /// Automatic rebuilds are off, so a degraded restore is measured alone and the rebuild is timed by itself.
    pub fn start(data: &Path) -> Server {
        // CAIRN_BENCH_BIN runs another build (A/B comparisons of two binaries on the same machine).
        let bin = std::env::var_os("CAIRN_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cairn").into());
        Server::start_bin(data, Path::new(&bin))
    }

    /// The same with the given `cairn` binary.
    pub fn start_bin(data: &Path, bin: &Path) -> Server {
        let config = data.with_extension("toml");
        std::fs::write(&config, "[maintenance]\nauto_rebuild = false\n").expect("write config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("CAIRN_ROOT_ACCESS_KEY", ACCESS)
            .env("CAIRN_ROOT_SECRET_KEY", SECRET)
            // As deploy/cairn.service runs it: two malloc arenas instead of 8 per core (RSS, see README).
            .env("MALLOC_ARENA_MAX", "2")
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cairn serve");
        let endpoint = listening_endpoint(&mut child, "cairn: listening on ")
            .expect("cairn serve exited before listening");
        Server {
            data: data.to_path_buf(),
            endpoint,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn disks(&self) -> PathBuf {
        self.data.join("disks")
    }

    /// Resets the kernel's peak-RSS counter (VmHWM) of the server.
    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// Minor page faults of the server so far (/proc/PID/stat field 10): fresh memory being touched, a cost
    /// of allocations that pools should have served.
    pub fn minor_faults(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(7))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// VmRSS of the server in bytes (now).
    pub fn rss(&self) -> u64 {
        self.status_kb("VmRSS:")
    }

    /// VmHWM of the server in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kb("VmHWM:")
    }

    fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The endpoint a child process printed after `prefix` on its stdout (the rest of its output is drained);
/// None if it exited first.
pub fn listening_endpoint(child: &mut Child, prefix: &str) -> Option<String> {
    let mut lines = BufReader::new(child.stdout.take()?).lines();
    let endpoint = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix(prefix).map(|s| s.trim().to_string()))?;
    std::thread::spawn(move || for _ in lines {});
    Some(endpoint)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
