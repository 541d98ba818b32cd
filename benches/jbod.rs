//! Scrub and rebuild on a modelled JBOD: does the store keep every disk of a many-disk box busy?
//!
//! The e2e bench runs its directory-disks on one VM disk, so it cannot tell whether scrub and rebuild spread
//! their reads over the disks of a real JBOD. Here each directory-disk is wrapped in a `PacedDisk`: one
//! request at a time, each taking at least `bytes / rate` (a SATA disk streaming, seeks left out). The data
//! goes in through the store's own ingest (`Store::begin_upload`), then `Store::run_scrub` and, after one disk
//! is failed, `Store::run_rebuild` onto the spare run as the server runs them, and a restore of the object
//! (`Store::open_object`) before and with two more disks missing. Reported as ratios to the model's limits:
//! scrub and restore against all disks reading at once, rebuild against the spare writing (every rebuilt byte
//! is written to that one disk).
//!
//! `CAIRN_JBOD_DISKS=12` data disks (4+2 plus a spare), `CAIRN_JBOD_MBS=40` MB/s per disk (low enough that two
//! cores verify faster than the disks read), `CAIRN_JBOD_MB=384` of data. Under `cargo test` it runs on 8 MB.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{MB, tree_bytes};

use cairn::store::disk::{Disk, FileDisk};
use cairn::store::jobs::{Job, JobKind};
use cairn::store::{ObjectMeta, Store, StoreConfig};
use cairn::workload::TarTree;

/// A `FileDisk` that serves one request at a time at `bytes_per_sec`.
struct PacedDisk {
    inner: FileDisk,
    bytes_per_sec: f64,
    busy: Mutex<()>,
}

impl PacedDisk {
    fn paced<T>(
        &self,
        op: impl FnOnce() -> io::Result<T>,
        bytes: impl Fn(&T) -> usize,
    ) -> io::Result<T> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let r = op()?;
        let due = Duration::from_secs_f64(bytes(&r) as f64 / self.bytes_per_sec);
        if let Some(left) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(left);
        }
        Ok(r)
    }
}

impl Disk for PacedDisk {
    fn root(&self) -> &Path {
        self.inner.root()
    }
    fn write_durable(&self, rel: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.paced(|| self.inner.write_durable(rel, parts), |_| len)
    }
    fn read_at(&self, rel: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len();
        self.paced(|| self.inner.read_at(rel, offset, buf), |_| len)
    }
    fn read_all(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.paced(|| self.inner.read_all(rel), Vec::len)
    }
    fn read_once(
        &self,
        rel: &Path,
        reuse: Vec<u8>,
    ) -> io::Result<(Vec<u8>, std::ops::Range<usize>)> {
        self.paced(|| self.inner.read_once(rel, reuse), |(_, r)| r.len())
    }
    fn file_len(&self, rel: &Path) -> io::Result<u64> {
        self.inner.file_len(rel)
    }
    fn remove(&self, rel: &Path) -> io::Result<()> {
        self.inner.remove(rel)
    }
    fn quarantine(&self, rel: &Path) -> io::Result<PathBuf> {
        self.inner.quarantine(rel)
    }
    fn list_shards(&self) -> io::Result<Vec<PathBuf>> {
        self.inner.list_shards()
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        self.inner.clean_tmp()
    }
    fn is_present(&self) -> bool {
        self.inner.is_present()
    }
    fn release_handles(&self) {
        self.inner.release_handles()
    }
}

fn env_num(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let disks = env_num("CAIRN_JBOD_DISKS", 12.0) as usize;
    let rate = env_num("CAIRN_JBOD_MBS", 40.0) * MB;
    let data_mb = if bench {
        env_num("CAIRN_JBOD_MB", 384.0)
    } else {
        8.0
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = StoreConfig::embedded(dir.path().join("data"));
    cfg.disks = (0..disks)
        .map(|i| cfg.data_dir.join("disks").join(format!("d{i:02}")))
        .collect();
    let configured = cfg.configured_disks();
    let make = |p: &Path| -> Arc<dyn Disk> {
        Arc::new(PacedDisk {
            inner: FileDisk::new(p),
            bytes_per_sec: rate,
            busy: Mutex::new(()),
        })
    };
    let store = Store::open_with(cfg.clone(), &make, configured).expect("open store");
    store.create_bucket("jbod").expect("bucket");

    let bytes = (data_mb * MB) as u64;
    let mut upload = store.begin_upload().expect("upload");
    let mut source = TarTree::new(3, bytes + (8 << 20)).reader(0).take(bytes);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buf).expect("workload");
        if n == 0 {
            break;
        }
        upload.write(&buf[..n]).expect("ingest");
    }
    upload
        .finish_object("jbod", "full", ObjectMeta::default())
        .expect("finish");
    let shard_bytes = tree_bytes(&cfg.data_dir.join("disks"));

    println!(
        "# JBOD model: {disks} disks + 1 spare at {:.0} MB/s each, one request at a time; {:.0} MB of data, {:.3} GB of shards\n",
        rate / MB,
        data_mb,
        shard_bytes as f64 / 1e9
    );
    println!("| job | MB/s | model limit MB/s | ratio |");
    println!("|---|---|---|---|");

    // A restore reads the data shards' part of the containers (k of k + m), and checks every chunk.
    let data_part = shard_bytes as f64 * f64::from(cfg.k) / f64::from(cfg.k + cfg.m);
    let all_disks = disks as f64 * rate / MB;
    let restore = |what: &str| {
        let t = Instant::now();
        let (_, mut reader) = store.open_object("jbod", "full", None).expect("open");
        let mut out = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut out).expect("restore");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        assert_eq!(total, bytes, "restored length");
        let mbs = data_part / MB / t.elapsed().as_secs_f64();
        println!(
            "| {what} (MB/s of stored bytes) | {mbs:.0} | {all_disks:.0} (all disks at once) | {:.0}% |",
            mbs / all_disks * 100.0
        );
    };
    restore("restore, healthy");

    let job = Job::new(JobKind::Scrub, 0, false);
    let t = Instant::now();
    store.run_scrub(&job, false).expect("scrub");
    let secs = t.elapsed().as_secs_f64();
    let p = job.progress();
    assert!(
        p.bad_shards == 0 && p.unrepairable.is_empty(),
        "scrub found problems on a healthy store: {p:?}"
    );
    let scrub = shard_bytes as f64 / MB / secs;
    println!(
        "| scrub (all {disks} disks read) | {scrub:.0} | {all_disks:.0} (all disks at once) | {:.0}% |",
        scrub / all_disks * 100.0
    );

    // The disk fails as a pulled disk does: its directory goes, and the health check notices.
    let victim = &cfg.disks[0];
    let victim_bytes = tree_bytes(victim);
    std::fs::remove_dir_all(victim).expect("remove a disk");
    assert_eq!(store.check_disks().len(), 1, "the removed disk is failed");
    let job = Job::new(JobKind::Rebuild, 0, true);
    let t = Instant::now();
    store.run_rebuild(&job).expect("rebuild");
    let secs = t.elapsed().as_secs_f64();
    let rebuilt = tree_bytes(&cfg.spares[0]);
    assert!(
        rebuilt + (64 << 10) >= victim_bytes,
        "rebuild wrote {rebuilt} bytes for a disk that held {victim_bytes}"
    );
    let mbs = rebuilt as f64 / MB / secs;
    println!(
        "| rebuild of one disk onto the spare | {mbs:.0} | {:.0} (the spare writing) | {:.0}% |",
        rate / MB,
        mbs / (rate / MB) * 100.0
    );

    // Two more disks go: every container still readable, from k of its shards.
    for victim in &cfg.disks[1..3] {
        std::fs::remove_dir_all(victim).expect("remove a disk");
    }
    assert_eq!(store.check_disks().len(), 2, "two more disks failed");
    restore("restore, two disks missing");
}
