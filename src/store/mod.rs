//! The chunk store: disks, catalog, ingest and verified reads (sync I/O; see storage-format.md).
//!
//! Locking rules (operation x operation):
//! - Ingest streams run in parallel; each fills its own containers (stream-informed layout) and seals them
//!   independently. Container sealing writes shard files (never overwritten) and then commits one catalog
//!   transaction; the catalog writer mutex serialises those transactions.
//! - Object commits, deletes and copies are catalog transactions; `seq` orders them (last writer wins).
//! - Conditional commits (If-None-Match / If-Match) additionally hold `commit_lock` from the condition check
//!   through the commit, so two conditional writers of one key cannot both succeed.
//! - Reads use reader connections and never block writers (SQLite WAL).

pub mod api;
mod buffers;
pub mod catalog;
pub mod dedup;
pub mod disk;
pub mod diskset;
pub mod error;
mod final_seal;
mod frames;
mod ingest;
mod io_threads;
pub mod jobs;
mod md5_lanes;
mod objects;
mod read;
pub mod rebuild;
mod reconstructed;
pub mod recover;
pub mod repair;
pub mod scrub;
mod seal;
pub mod status;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use api::*;
pub use error::{Result, StoreError};
pub use ingest::Upload;
pub use objects::PartRecord;
pub use read::ObjectReader;

use crate::core::chunker::ChunkerParams;
use crate::core::container::GROUP_TARGET_RAW;
use crate::core::erasure::{Erasure, Geometry};
use crate::core::ids::{ContainerId, DiskId, StoreId};
use catalog::Catalog;
use dedup::DedupIndex;
use disk::{Disk, FileDisk, MARKER_FILE};
use diskset::{DiskEntry, DiskMarker, DiskSet, DiskState, MarkerCheck, check_marker};

/// How to open a store. `cairn serve`'s config file maps onto this.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Data disks (directories). Created and marked on first open when empty.
    pub disks: Vec<PathBuf>,
    /// Hot spares.
    pub spares: Vec<PathBuf>,
    pub k: u8,
    pub m: u8,
    pub chunker: ChunkerParams,
    /// A container is sealed once its body reaches this many bytes.
    pub container_target: usize,
    pub zstd_level: i32,
}

impl StoreConfig {
    /// The embedded default: six directory-disks (4+2) and one hot spare under `<data>/disks`.
    /// The data disks (active) and the hot spares, as `Store::open_with` takes them.
    pub fn configured_disks(&self) -> Vec<(PathBuf, DiskState)> {
        self.disks
            .iter()
            .map(|p| (p.clone(), DiskState::Active))
            .chain(self.spares.iter().map(|p| (p.clone(), DiskState::Spare)))
            .collect()
    }

    pub fn embedded(data_dir: impl Into<PathBuf>) -> StoreConfig {
        let data_dir = data_dir.into();
        let disks = (0..6)
            .map(|i| data_dir.join("disks").join(format!("d{i:02}")))
            .collect();
        let spares = vec![data_dir.join("disks").join("spare00")];
        StoreConfig {
            data_dir,
            disks,
            spares,
            k: 4,
            m: 2,
            chunker: ChunkerParams::DEFAULT,
            container_target: DEFAULT_CONTAINER_TARGET,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.data_dir.join("catalog.sqlite")
    }
}

/// A container's build buffer, big enough for the largest container ingest seals, so that no container grows
/// (reallocates and copies) its buffer and no seal grows its parity buffers: up to the limit a declared
/// stream's rest may fill ([`ingest::container_limit`]), plus the one span that may pass it (a group of at
/// most [`GROUP_TARGET_RAW`] bytes, or one chunk, with room for its entries' headers if stored raw), plus
/// the segment and upload records. It was the target plus one chunk: since containers take a declared
/// rest (session 11), a 16 MiB part of the bench's data was sealed as one ~10 MB container, and every such
/// container reallocated its 8 MiB buffer (a copy, and most of unique ingest's page faults).
pub fn container_capacity(cfg: &StoreConfig) -> usize {
    let span = GROUP_TARGET_RAW.max(cfg.chunker.max as usize);
    ingest::container_limit(cfg.container_target) + span + span / 32 + (256 << 10)
}

/// Big buffers of each kind kept for reuse: as many as uploads commonly run at once (aws cli: 10 parts).
const BUFFERS_KEPT: usize = 12;
/// Group frame buffers kept (~2.1 MiB each).
const FRAME_BUFFERS_KEPT: usize = 16;
/// Seals that encode and write at once (each holds m parity buffers and k + m disk write images of a shard
/// each). Sixteen parallel uploads sealed up to sixteen at once, each allocating its buffers afresh beyond
/// the pools: a peak of up to ~0.4 GiB of transient buffers. Four keep the disks as busy (every seal writes
/// k + m files at once, and spends most of its time waiting for their fsyncs).
pub(crate) const SEAL_SLOTS: usize = 4;

/// MD5 checkpoints kept in the catalog (~100-150 bytes each with their index): the last ~4 M, one per ~1.5 MB
/// of new or changed streams, ~6 TB of them, up to ~0.6 GB of catalog.
const MD5_CHECKPOINTS_KEPT: u64 = 1 << 22;

/// 8 MiB containers: 2 MiB shards at 4+2, big enough for sequential I/O, small enough that 16 parallel
/// uploads stay well under 1 GiB of buffers.
pub const DEFAULT_CONTAINER_TARGET: usize = 8 * 1024 * 1024;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Container ids are reserved in the catalog in blocks, so an id is never reused after a crash.
const CONTAINER_ID_BLOCK: u64 = 1024;

pub struct Store {
    cfg: StoreConfig,
    store_id: StoreId,
    catalog: Catalog,
    disks: DiskSet,
    /// The store's geometry k+m and every narrower k'+m a small container is sealed with
    /// (`Geometry::for_container`): index k'-1.
    erasures: Vec<Erasure>,
    dedup: DedupIndex,
    /// (next id, first id not reserved)
    container_ids: Mutex<(u64, u64)>,
    last_seq: AtomicU64,
    commit_lock: Mutex<()>,
    /// Uploads' batch buffers and containers' build buffers, reused (see buffers.rs).
    batch_buffers: buffers::BufferPool,
    container_buffers: buffers::BufferPool,
    /// Output buffers of group compression (a group's frame until it is copied into its container).
    frame_buffers: buffers::BufferPool,
    /// Parity shard buffers of sealed containers, reused as they are by the next seal
    /// (`Erasure::encode_borrowed_reusing`): fresh ones were faulted in and zeroed by the kernel at every seal,
    /// ~55% of unique ingest's page faults once the server was warm. At most m x `SEAL_SLOTS`, each
    /// `parity_buffer_len` long (~3 MiB at the default container size).
    parity_buffers: buffers::BufferPool,
    parity_buffer_len: usize,
    /// Bounds the seals encoding and writing at once (`SEAL_SLOTS`).
    seal_slots: buffers::Slots,
    /// Uploads' last containers waiting to be sealed together (final_seal.rs).
    final_seals: final_seal::FinalSeals,
    /// The threads the seals write their shard files on: one per shard of every seal slot.
    shard_writers: io_threads::IoThreads,
    /// Containers a restore found degraded, reconstructed once and kept for its next frames (reconstructed.rs).
    reconstructed: reconstructed::ReconstructedContainers,
    /// MD5 states of streams at their checkpoints (md5_lanes.rs); new ones go to the catalog with each seal.
    md5_memo: Arc<md5_lanes::Md5Memo>,
    jobs: jobs::Jobs,
    _lock: File,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("cairn.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // An advisory flock: released by the kernel when the process dies, so a crash never leaves it stale.
    f.try_lock()
        .map_err(|_| StoreError::Locked(dir.display().to_string()))?;
    Ok(f)
}

impl Store {
    pub fn open(cfg: StoreConfig) -> Result<Arc<Store>> {
        let disks = cfg.configured_disks();
        Self::open_with(cfg, &|p| Arc::new(FileDisk::new(p)) as Arc<dyn Disk>, disks)
    }

    /// Opens with a custom disk constructor (tests pass `FaultyDisk`s).
    pub fn open_with(
        cfg: StoreConfig,
        make_disk: &dyn Fn(&Path) -> Arc<dyn Disk>,
        configured: Vec<(PathBuf, DiskState)>,
    ) -> Result<Arc<Store>> {
        let geometry = Geometry::new(cfg.k, cfg.m)?;
        cfg.chunker.validate()?;
        if cfg.container_target < 64 * 1024 || cfg.container_target > 256 * 1024 * 1024 {
            return Err(StoreError::Config(
                "container_target must be between 64 KiB and 256 MiB".into(),
            ));
        }
        std::fs::create_dir_all(&cfg.data_dir)?;
        let lock = lock_data_dir(&cfg.data_dir)?;
        let catalog = Catalog::open(&cfg.catalog_path())?;
        let now = now_ms();

        let store_id = catalog.write(|tx| {
            Ok(match catalog::meta_get(tx, "store_id")? {
                Some(s) => StoreId::from_hex(&s).ok_or_else(|| {
                    StoreError::Config(format!("catalog has a malformed store_id {s:?}"))
                })?,
                None => {
                    let id = StoreId::random();
                    catalog::meta_set(tx, "store_id", &id.to_hex())?;
                    catalog::meta_set(tx, "format", "1")?;
                    id
                }
            })
        })?;

        // Configured directories the catalog does not know yet become new disks (first start, or added capacity).
        let known = catalog.read(catalog::list_disks)?;
        for (path, state) in &configured {
            let key = path_key(path);
            if known.iter().any(|d| d.path == key) {
                continue;
            }
            std::fs::create_dir_all(path)?;
            let d = make_disk(path);
            if let Ok(bytes) = d.read_all(Path::new(MARKER_FILE)) {
                // A marker of this very store on a directory the catalog does not list can only come from a
                // registration transaction that was interrupted (crash between writing the marker and the
                // commit). No shard is ever placed on an unregistered disk, so registering it again is safe.
                let ours =
                    DiskMarker::decode(&bytes).is_some_and(|m| m.store_id == store_id.to_hex());
                if ours {
                    tracing::warn!(path = %path.display(),
                        "disk carries a marker of this store from an interrupted registration: registering it again");
                } else {
                    return Err(StoreError::Config(format!(
                        "{} already carries a Cairn disk marker the catalog does not know; if the catalog was lost \
                     run `cairn catalog rebuild`, otherwise use an empty directory",
                        path.display()
                    )));
                }
            }
            catalog.write(|tx| {
                let id = catalog::insert_disk(tx, &key, state.as_str(), now)?;
                let marker = DiskMarker::new(store_id, id, now);
                d.write_durable(Path::new(MARKER_FILE), &[&marker.encode()])?;
                Ok(())
            })?;
        }

        let rows = catalog.read(catalog::list_disks)?;
        let mut entries = Vec::new();
        for row in rows {
            let path = PathBuf::from(&row.path);
            let disk = make_disk(&path);
            let mut state = DiskState::parse(&row.state).unwrap_or(DiskState::Failed);
            if state != DiskState::Failed && state != DiskState::Retired {
                match check_marker(disk.as_ref(), store_id, row.id) {
                    MarkerCheck::Ok => {
                        let _ = disk.clean_tmp();
                    }
                    problem => {
                        tracing::error!(disk = %row.id, path = %row.path, ?problem,
                            "disk is missing or foreign: marking it failed; it will not be written again");
                        state = DiskState::Failed;
                        catalog.write(|tx| {
                            catalog::set_disk_state(tx, row.id, state.as_str())?;
                            catalog::add_event(
                                tx,
                                now,
                                "disk-failed",
                                None,
                                &format!("disk {} {problem:?}", row.id),
                            )
                        })?;
                    }
                }
            }
            entries.push(Arc::new(DiskEntry::new(
                row.id, path, disk, state, row.shards,
            )));
        }

        // Uploads never committed (crash, dropped connection): release their pins.
        let orphans = catalog.read(catalog::orphan_uploads)?;
        if !orphans.is_empty() {
            tracing::info!(
                count = orphans.len(),
                "releasing uploads left unfinished by the last run"
            );
            catalog.write(|tx| {
                for u in &orphans {
                    catalog::release_upload(tx, u)?;
                }
                Ok(())
            })?;
        }

        // Successors recorded under other chunker parameters would make following cut where scanning does not.
        let chunker = cfg.chunker;
        let forgotten = catalog.write(|tx| {
            catalog::keep_successors_of_chunker(
                tx,
                &format!("{}/{}/{}", chunker.min, chunker.avg, chunker.max),
            )
        })?;
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "chunker parameters changed: recorded chunk successors forgotten"
            );
        }
        let dedup = catalog.read(|c| Ok(DedupIndex::load(c, 64)?))?;
        let next_container = catalog.read(|c| {
            let reserved =
                catalog::meta_get(c, "container_id_reserved")?.and_then(|s| s.parse::<u64>().ok());
            Ok(reserved.unwrap_or(0).max(catalog::max_container_id(c)? + 1))
        })?;
        let last_seq = catalog.read(|c| {
            Ok(c.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM objects), 0), COALESCE((SELECT MAX(seq) FROM buckets), 0))",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })?;

        // Two per upload: one being filled, one with the MD5 lanes (md5_lanes.rs).
        let batch_buffers = buffers::BufferPool::new(
            2 * BUFFERS_KEPT,
            ingest::batch_capacity(cfg.chunker.max as usize),
        );
        let container_buffers = buffers::BufferPool::new(BUFFERS_KEPT, container_capacity(&cfg));
        // A batch compresses its groups at once (2-4 of them in a 4 MiB batch), several uploads at a time.
        let frame_buffers = buffers::BufferPool::new(
            FRAME_BUFFERS_KEPT,
            zstd::zstd_safe::compress_bound(GROUP_TARGET_RAW + cfg.chunker.max as usize),
        );
        // Made at the shard length of the largest container, so that no seal grows one; as many as the seals
        // in flight use.
        let parity_buffer_len = geometry.shard_len(container_capacity(&cfg));
        let parity_buffers =
            buffers::BufferPool::new(SEAL_SLOTS * usize::from(geometry.m), parity_buffer_len);
        let store = Store {
            erasures: (1..=geometry.k)
                .map(|k| Erasure::new(Geometry { k, m: geometry.m }))
                .collect::<std::result::Result<_, _>>()?,
            cfg,
            store_id,
            catalog,
            disks: DiskSet::new(entries),
            dedup,
            container_ids: Mutex::new((next_container, next_container)),
            last_seq: AtomicU64::new(last_seq),
            commit_lock: Mutex::new(()),
            batch_buffers,
            frame_buffers,
            container_buffers,
            parity_buffers,
            parity_buffer_len,
            seal_slots: buffers::Slots::new(SEAL_SLOTS),
            final_seals: final_seal::FinalSeals::default(),
            shard_writers: io_threads::IoThreads::new(
                SEAL_SLOTS * geometry.width(),
                "cairn-shard-write",
            ),
            reconstructed: reconstructed::ReconstructedContainers::new(
                reconstructed::RECONSTRUCTED_KEPT,
            ),
            md5_memo: Arc::new(md5_lanes::Md5Memo::durable()),
            jobs: jobs::Jobs::default(),
            _lock: lock,
        };
        let writable = store.disks.writable_loads().len();
        if writable < geometry.width() {
            tracing::error!(
                writable,
                needed = geometry.width(),
                "DEGRADED: fewer writable disks than the stripe width; writes will fail until disks are replaced"
            );
        }
        Ok(Arc::new(store))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }
    /// Containers reconstructed whole from parity for restores since the store opened (read.rs).
    pub fn containers_reconstructed(&self) -> u64 {
        self.reconstructed.made()
    }
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn disks(&self) -> &DiskSet {
        &self.disks
    }
    pub fn dedup(&self) -> &DedupIndex {
        &self.dedup
    }

    /// A new container id; reserves another block in the catalog first when the current one is used up.
    fn alloc_container_id(&self) -> Result<ContainerId> {
        let mut g = self
            .container_ids
            .lock()
            .map_err(|_| StoreError::Config("id allocator poisoned".into()))?;
        if g.0 >= g.1 {
            let until = g.0 + CONTAINER_ID_BLOCK;
            self.catalog
                .write(|tx| catalog::meta_set(tx, "container_id_reserved", &until.to_string()))?;
            g.1 = until;
        }
        let id = g.0;
        g.0 += 1;
        Ok(ContainerId(id))
    }

    /// Strictly increasing, and above the wall clock in nanoseconds so it keeps growing after a catalog rebuild.
    fn next_seq(&self) -> u64 {
        let now = now_nanos();
        let mut cur = self.last_seq.load(Ordering::SeqCst);
        loop {
            let next = now.max(cur + 1);
            match self
                .last_seq
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(v) => cur = v,
            }
        }
    }

    /// Marks a disk failed after it vanished or kept failing (never written again).
    pub(crate) fn note_disk_error(&self, disk: DiskId, err: &std::io::Error) {
        let Some(d) = self.disks.get(disk) else {
            return;
        };
        let n = d.io_errors.fetch_add(1, Ordering::SeqCst) + 1;
        let gone = !d.disk.is_present()
            || check_marker(d.disk.as_ref(), self.store_id, disk) != MarkerCheck::Ok;
        let new_state = if gone || n >= IO_ERROR_FAIL_THRESHOLD {
            DiskState::Failed
        } else if d.state() == DiskState::Active {
            DiskState::Suspect
        } else {
            return;
        };
        if d.state() == new_state {
            return;
        }
        tracing::error!(%disk, path = %d.path.display(), error = %err, state = %new_state, "disk error");
        d.set_state(new_state);
        let _ = self.catalog.write(|tx| {
            catalog::set_disk_state(tx, disk, new_state.as_str())?;
            catalog::add_event(
                tx,
                now_ms(),
                "disk-state",
                None,
                &format!("disk {disk} -> {new_state}: {err}"),
            )
        });
    }
}

/// I/O errors after which a still-present disk is failed.
pub const IO_ERROR_FAIL_THRESHOLD: u32 = 16;

/// Disk paths are stored as given if absolute, else made absolute, so the catalog survives a changed cwd.
pub(crate) fn path_key(p: &Path) -> String {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    abs.to_string_lossy().into_owned()
}
