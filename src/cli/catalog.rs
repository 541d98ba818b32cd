//! `cairn catalog check|rebuild`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use cairn::store::recover::{check_catalog, rebuild_catalog};

use super::serve::effective_config;

#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Data directory [default: ./cairn-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// TOML configuration file (as for `cairn serve`)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CatalogCommand {
    /// Cross-check the catalog (reference counts, manifests, shard locations). Safe while the server runs.
    Check(StoreArgs),
    /// Rebuild the catalog from the disks alone (disaster recovery). The server must be stopped; the old
    /// catalog is moved aside, never deleted.
    Rebuild(StoreArgs),
}

pub fn run(c: CatalogCommand) -> anyhow::Result<ExitCode> {
    match c {
        CatalogCommand::Check(a) => check(a),
        CatalogCommand::Rebuild(a) => rebuild(a),
    }
}

fn check(a: StoreArgs) -> anyhow::Result<ExitCode> {
    let cfg = effective_config(a.config.as_ref(), a.data)?.store_config();
    let path = cfg.catalog_path();
    if !path.exists() {
        anyhow::bail!(
            "no catalog at {}: pass --data DIR (or --config FILE) of an existing store, or run `cairn catalog rebuild`",
            path.display()
        );
    }
    // Read-write without create, then query_only: a read-only handle cannot open a WAL database whose -shm file
    // a killed writer left missing, and query_only still guarantees this command changes nothing.
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "query_only", true)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        // Created but never initialised (e.g. killed during its first start): nothing to be inconsistent.
        println!("catalog check: empty catalog (store not initialised yet)");
        return Ok(ExitCode::SUCCESS);
    }
    let problems = check_catalog(&conn)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "ok": problems.is_empty(), "problems": problems })
        );
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        if problems.is_empty() {
            println!("catalog check: clean");
        } else {
            println!(
                "catalog check: {} problems found; run `cairn catalog rebuild` with the server stopped",
                problems.len()
            );
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn rebuild(a: StoreArgs) -> anyhow::Result<ExitCode> {
    let cfg = effective_config(a.config.as_ref(), a.data)?.store_config();
    let bar = super::progress_bar(a.json, "containers");
    let report = rebuild_catalog(&cfg, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .context("catalog rebuild failed (is the server still running? stop it first)")?;
    bar.finish_and_clear();
    let bad = !report.containers_unreadable.is_empty() || !report.objects_damaged.is_empty();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(p) = &report.old_catalog_moved_to {
            println!("old catalog moved to {p}");
        }
        for c in &report.containers_unreadable {
            println!("unreadable container {c:016x}: fewer than k good shards");
        }
        for o in &report.objects_damaged {
            println!("damaged object (data incomplete on disk): {o}");
        }
        for f in &report.bad_shard_files {
            println!("bad shard file skipped: {f}");
        }
        println!(
            "catalog rebuilt from {} disks: {} containers, {} chunks, {} buckets, {} objects; {} containers unreadable, {} objects damaged",
            report.disks,
            report.containers,
            report.chunks,
            report.buckets,
            report.objects,
            report.containers_unreadable.len(),
            report.objects_damaged.len()
        );
    }
    Ok(if bad {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
