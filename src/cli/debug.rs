//! Developer commands used by the crash-consistency tests: they drive the store in-process, without HTTP.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;

use cairn::store::{ObjectMeta, Store, StoreError};

use super::catalog::StoreArgs;
use super::serve::effective_config;

#[derive(clap::Subcommand, Debug)]
pub enum DebugCommand {
    /// Write `count` deterministic objects to bucket `crash`, printing `ACK <key> <blake3>` after each is durable.
    IngestLoop {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Largest object size in bytes (sizes vary from 0 up to this)
        #[arg(long, default_value_t = 3_000_000)]
        max_size: u64,
    },
    /// Read every object of every bucket back, printing `<bucket>/<key> <blake3>`; exit 2 on any read error.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(c: DebugCommand) -> anyhow::Result<ExitCode> {
    match c {
        DebugCommand::IngestLoop {
            store,
            seed,
            count,
            max_size,
        } => ingest_loop(store, seed, count, max_size),
        DebugCommand::Verify { store } => verify(store),
    }
}

fn ingest_loop(a: StoreArgs, seed: u64, count: u64, max_size: u64) -> anyhow::Result<ExitCode> {
    let store = Store::open(effective_config(a.config.as_ref(), a.data)?.store_config())?;
    match store.create_bucket("crash") {
        Ok(()) | Err(StoreError::BucketExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut stdout = std::io::stdout().lock();
    for i in 0..count {
        let body = cairn::workload::numbered_object(seed, i, max_size);
        let key = format!("s{seed}-{i}");
        let mut up = store.begin_upload()?;
        for piece in body.chunks(65_536) {
            up.write(piece)?;
        }
        up.finish_object("crash", &key, ObjectMeta::default())?;
        writeln!(stdout, "ACK {key} {}", blake3::hash(&body).to_hex())?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: StoreArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(effective_config(a.config.as_ref(), a.data)?.store_config())?;
    let mut failures = 0;
    for b in store.list_buckets()? {
        let mut after: Option<String> = None;
        loop {
            let page = store.list_objects(&b.name, "", None, after.as_deref(), 1000)?;
            for o in &page.objects {
                let result = store
                    .open_object(&b.name, &o.key, None)
                    .and_then(|(_, mut r)| {
                        let mut h = blake3::Hasher::new();
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = r.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                        Ok(h.finalize())
                    });
                match result {
                    Ok(h) => println!("{}/{} {}", b.name, o.key, h.to_hex()),
                    Err(e) => {
                        failures += 1;
                        eprintln!("READ ERROR {}/{}: {e}", b.name, o.key);
                    }
                }
            }
            if !page.is_truncated {
                break;
            }
            after = page.next_marker.clone();
        }
    }
    std::io::stdout().flush().context("stdout")?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
