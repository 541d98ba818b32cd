//! `cairn status`, `cairn disk ...`, `cairn rebuild`, `cairn scrub`: clients of the running server's admin
//! socket. Exit codes are for cron: 0 clean, 1 problems found and repaired, 2 unrepairable data or a failed
//! disk with no spare (and 2 for usage errors such as no server running).

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use cairn::admin::{Request, Response, socket_path};
use cairn::store::jobs::JobProgress;
use cairn::store::status::StatusReport;

use super::catalog::StoreArgs;
use super::serve::effective_config;

#[derive(clap::Subcommand, Debug)]
pub enum DiskCommand {
    /// Disks and their states.
    List(StoreArgs),
    /// Mark a disk failed: never written again; its shards are rebuilt onto a spare.
    Fail {
        id: u32,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace a disk by a new empty directory (mount point) and rebuild onto it.
    Replace {
        id: u32,
        #[arg(long = "with", value_name = "PATH")]
        with: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add a hot spare (an empty directory / mount point).
    AddSpare {
        path: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add capacity: a new active disk, used for new writes at once.
    Add {
        path: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// Wait for the job to finish, showing progress
    #[arg(long)]
    pub wait: bool,
    /// Limit the job to this many MB/s (0 = unthrottled)
    #[arg(long, default_value_t = 0.0, value_name = "MB_PER_S")]
    pub throttle: f64,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn call(
    store: &StoreArgs,
    req: &Request,
    mut on_progress: impl FnMut(&JobProgress),
) -> anyhow::Result<Response> {
    let cfg = effective_config(store.config.as_ref(), store.data.clone())?;
    let path = socket_path(&cfg.data_dir);
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no cairn server is running for {} ({}: {e}).\nStart it with `cairn serve --data {}` (or pass the --data/--config the server uses).",
            cfg.data_dir.display(),
            path.display(),
            cfg.data_dir.display()
        )
    })?;
    writeln!(conn, "{}", serde_json::to_string(req)?)?;
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let line = line.context("reading from the server")?;
        let v: serde_json::Value =
            serde_json::from_str(&line).context("malformed answer from the server")?;
        if let Some(p) = v.get("progress") {
            if let Ok(p) = serde_json::from_value::<JobProgress>(p.clone()) {
                on_progress(&p);
            }
            continue;
        }
        let resp: Response = serde_json::from_value(v)?;
        if !resp.ok {
            bail!(
                "{}",
                resp.error
                    .unwrap_or_else(|| "the server refused the request".into())
            );
        }
        return Ok(resp);
    }
    bail!("the server closed the connection without an answer")
}

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

pub fn status(a: StoreArgs) -> anyhow::Result<ExitCode> {
    let resp = call(&a, &Request::Status, |_| {})?;
    let s: StatusReport = serde_json::from_value(resp.result.clone()).context("status")?;
    if a.json {
        println!("{}", resp.result);
    } else {
        print_status(&s);
    }
    Ok(status_exit(&s))
}

fn status_exit(s: &StatusReport) -> ExitCode {
    if s.critical {
        ExitCode::from(2)
    } else if !s.warnings.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_status(s: &StatusReport) {
    println!("Cairn {}+{} erasure coding", s.k, s.m);
    println!("Disks:");
    for d in &s.disks {
        let space = match (d.fs_total, d.fs_available) {
            (Some(t), Some(a)) => format!("{} free of {}", gb(a), gb(t)),
            _ => "unreachable".into(),
        };
        println!(
            "  {:>3}  {:<10} {:>8} shards  {:>10} used  {space}  {}",
            d.id,
            d.state.as_str(),
            d.shards,
            gb(d.bytes_used),
            d.path
        );
    }
    println!(
        "Capacity: raw {} available of {}, usable after parity {}",
        gb(s.capacity.raw_available),
        gb(s.capacity.raw_total),
        gb(s.capacity.usable_available)
    );
    let d = &s.data;
    println!(
        "Data: {} objects in {} buckets; logical {}, unique {}, stored {} (dedup {:.2}x, compression {:.2}x)",
        d.objects,
        d.buckets,
        gb(d.logical_bytes),
        gb(d.unique_bytes),
        gb(d.stored_bytes),
        d.dedup_ratio,
        d.compression_ratio
    );
    let r = &s.redundancy;
    println!(
        "Redundancy: {} containers: {} full, {} reduced, {} zero margin, {} lost",
        r.containers, r.full, r.reduced, r.zero_margin, r.lost
    );
    let v = &s.verification;
    println!(
        "Verified in the last 30 days: {} of {} ({:.1}%)",
        gb(v.bytes_verified_30d),
        gb(v.bytes_total),
        if v.bytes_total == 0 {
            100.0
        } else {
            v.bytes_verified_30d as f64 * 100.0 / v.bytes_total as f64
        }
    );
    for (name, job) in [("Rebuild", &s.rebuild), ("Scrub", &s.scrub)] {
        if let Some(j) = job {
            println!("{name}: {}", job_line(j));
        }
    }
    if s.warnings.is_empty() {
        println!("Health: OK");
    }
    for w in &s.warnings {
        println!("WARNING: {w}");
    }
}

fn job_line(j: &JobProgress) -> String {
    let state = if j.running { "running" } else { "finished" };
    let eta = j
        .eta_secs
        .filter(|_| j.running)
        .map(|e| format!(", ETA {e}s"))
        .unwrap_or_default();
    format!(
        "{state}: {}/{} containers, {} of {} at {:.1} MB/s{eta}; {} bad shards, {} repaired, {} unrepairable",
        j.containers_done,
        j.containers_total,
        gb(j.bytes_done),
        gb(j.bytes_total),
        j.mb_per_sec,
        j.bad_shards,
        j.shards_repaired,
        j.unrepairable.len()
    )
}

pub fn disk(c: DiskCommand) -> anyhow::Result<ExitCode> {
    let (store, req) = match c {
        DiskCommand::List(store) => {
            let resp = call(&store, &Request::Status, |_| {})?;
            let s: StatusReport = serde_json::from_value(resp.result.clone())?;
            if store.json {
                println!("{}", serde_json::to_string(&s.disks)?);
            } else {
                println!("  id  state      shards  used        path");
                for d in &s.disks {
                    println!(
                        "{:>4}  {:<10} {:>6}  {:<10}  {}",
                        d.id,
                        d.state.as_str(),
                        d.shards,
                        gb(d.bytes_used),
                        d.path
                    );
                }
            }
            return Ok(status_exit(&s));
        }
        DiskCommand::Fail { id, store } => (store, Request::DiskFail { id }),
        DiskCommand::Replace { id, with, store } => (
            store,
            Request::DiskReplace {
                id,
                path: absolute(with)?,
            },
        ),
        DiskCommand::AddSpare { path, store } => (
            store,
            Request::DiskAddSpare {
                path: absolute(path)?,
            },
        ),
        DiskCommand::Add { path, store } => (
            store,
            Request::DiskAdd {
                path: absolute(path)?,
            },
        ),
    };
    let resp = call(&store, &req, |_| {})?;
    if store.json {
        println!(
            "{}",
            serde_json::json!({ "ok": true, "result": resp.result })
        );
    } else {
        let what = match &req {
            Request::DiskFail { id } => {
                format!("disk {id} marked failed; its shards will be rebuilt onto a spare")
            }
            Request::DiskReplace { id, .. } => format!(
                "disk {id} replaced by disk {}; rebuild started",
                resp.result
            ),
            Request::DiskAddSpare { .. } => format!("spare added as disk {}", resp.result),
            _ => format!("disk {} added and in use for new writes", resp.result),
        };
        println!("{what}");
    }
    Ok(ExitCode::SUCCESS)
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p
    } else {
        std::env::current_dir()?.join(p)
    })
}

pub fn rebuild(a: JobArgs) -> anyhow::Result<ExitCode> {
    run_job(a, "rebuild", |wait, throttle_mb_s| Request::Rebuild {
        wait,
        throttle_mb_s,
    })
}

pub fn scrub(a: JobArgs, no_repair: bool) -> anyhow::Result<ExitCode> {
    run_job(a, "scrub", |wait, throttle_mb_s| Request::Scrub {
        wait,
        repair: !no_repair,
        throttle_mb_s,
    })
}

fn run_job(
    a: JobArgs,
    name: &str,
    make: impl Fn(bool, f64) -> Request,
) -> anyhow::Result<ExitCode> {
    let bar = super::progress_bar(a.store.json, "bytes");
    let plain = !a.store.json && !std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let resp = call(&a.store, &make(a.wait, a.throttle), |p| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        if plain && last_line.elapsed().as_secs() >= 5 {
            eprintln!("{name}: {}", job_line(p));
            last_line = std::time::Instant::now();
        }
    })?;
    bar.finish_and_clear();
    let p: JobProgress = serde_json::from_value(resp.result.clone())?;
    if a.store.json {
        println!("{}", resp.result);
    } else if a.wait {
        println!("{name} {}", job_line(&p));
    } else {
        println!(
            "{name} started (`cairn status` shows progress): {}",
            job_line(&p)
        );
    }
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    // After the job: is the store still in trouble (a failed disk nobody can replace)?
    let status: Option<StatusReport> = call(&a.store, &Request::Status, |_| {})
        .ok()
        .and_then(|r| serde_json::from_value(r.result).ok());
    let code = if !p.unrepairable.is_empty()
        || p.error.is_some()
        || status.as_ref().is_some_and(|s| s.critical)
    {
        2
    } else if p.bad_shards > 0 || p.shards_repaired > 0 {
        1
    } else {
        0
    };
    Ok(ExitCode::from(code))
}
