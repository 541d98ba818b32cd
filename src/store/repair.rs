//! Disk health, jobs and the shard-level repair helpers that `rebuild` and `scrub` share
//! (storage-format.md §3 rules).
//!
//! Both jobs work container by container and commit each repair in its own catalog transaction, so the catalog
//! itself is the checkpoint: a restarted rebuild re-plans from what is still missing, and scrub resumes from
//! `meta.scrub_cursor`. New shard files are written with the durable-write rule before the catalog points at
//! them; bad files are moved to `quarantine/`, never deleted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::params;

use super::buffers::BufferPool;
use super::catalog::{self, ContainerRow};
use super::disk::shard_path;
use super::diskset::{DiskEntry, DiskState, MarkerCheck, check_marker};
use super::error::{Result, StoreError};
use super::io_threads::serve_jobs;
use super::jobs::{Job, JobKind};
use super::{Store, now_ms};
use crate::core::container::{Pieces, verify_container_pieces};
use crate::core::erasure::{Erasure, Geometry};
use crate::core::ids::{ContainerId, DiskId};
use crate::core::shard::{SHARD_HEADER_LEN, ShardHeader, encode_trailer, verify_shard_file};

/// A bad or missing shard: (shard index, what is wrong).
type ShardProblem = (usize, String);

/// A verified shard's payload where it was read: `buf[at..at + len]` (the O_DIRECT buffer holds the header in
/// front of it and the trailer behind). Containers are parsed and reconstructed from these slices as they lie;
/// a reconstructed shard is a buffer of its own. (Moving every payload to the front of its buffer was ~half of
/// scrub's copying: each shard's bytes once, then the data shards again to join them.)
pub(super) struct ShardPayload {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl ShardPayload {
    /// A payload that fills its buffer (a reconstructed shard).
    fn whole(buf: Vec<u8>) -> ShardPayload {
        let len = buf.len();
        ShardPayload { buf, at: 0, len }
    }

    /// The buffer back, for the next read.
    fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl AsRef<[u8]> for ShardPayload {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsMut<[u8]> for ShardPayload {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// How reconstruction makes a missing shard.
impl FromIterator<u8> for ShardPayload {
    fn from_iter<I: IntoIterator<Item = u8>>(bytes: I) -> ShardPayload {
        ShardPayload::whole(bytes.into_iter().collect())
    }
}

/// Containers repaired or scrubbed at once: overlaps one container's disk I/O with another's hashing.
pub(super) const REPAIR_THREADS: usize = 4;

/// The shard read buffers of one scrub or rebuild: each container's shards are read into the buffers the
/// containers before it gave back. A fresh buffer per shard file was zeroed (calloc from glibc's heap) or
/// faulted in page by page (a fresh mapping): ~5% of scrub's CPU in memset alone. The pool lives as long as
/// the job and holds at most a buffer per shard of the containers in flight.
pub(super) struct ShardBuffers(BufferPool);

/// The largest shard read buffer kept for reuse. A default container (8 MiB, up to 12 MiB for a stream's
/// last) has shards of at most 3 MiB at k = 4, 6 MiB at k = 2; shards of containers made with a larger
/// `container_target` are read into buffers of their own and freed after use. The pool never holds more
/// than the reads in flight held.
const SHARD_BUFFER_MAX: usize = 17 << 20;

impl ShardBuffers {
    /// For `threads` containers in flight of at most `width` shards each.
    pub(super) fn new(threads: usize, width: usize) -> ShardBuffers {
        ShardBuffers(BufferPool::any_size(threads * width, SHARD_BUFFER_MAX))
    }

    /// Gives the buffers of a container's shards back.
    pub(super) fn recycle(&self, shards: Vec<Option<ShardPayload>>) {
        for s in shards.into_iter().flatten() {
            self.0.give(s.into_buffer());
        }
    }
}

/// One shard read handed to a job's [`ShardReaders`].
type ReadTask<'env> = Box<dyn FnOnce() + Send + 'env>;

/// Threads that read shard files for one scrub or rebuild, kept for the whole job: the shards a container
/// still needs are read at once (`read_shards`), and a thread spawned per shard (five per container) made a
/// scrub of 2 GB (403 containers) create ~2,000 threads, ~60 million at 100 TB. Each start and exit maps and
/// unmaps its stack and signal stack, which takes the process's mmap lock for writing, and every O_DIRECT
/// read of the other threads waits for that lock to pin its buffer. (On the bench's VM the change measured
/// within the noise: docs/performance-history.md, session 20.)
pub(super) struct ShardReaders<'env> {
    queue: std::sync::mpsc::Sender<ReadTask<'env>>,
}

impl<'env> ShardReaders<'env> {
    /// Runs `task` on a reader thread, or gives it back if none is left to take it (the caller then runs it
    /// itself).
    fn run(&self, task: ReadTask<'env>) -> std::result::Result<(), ReadTask<'env>> {
        self.queue.send(task).map_err(|e| e.0)
    }
}

/// Calls `body` with `threads` shard readers, which end when it returns.
pub(super) fn with_shard_readers<'env, R>(
    threads: usize,
    body: impl FnOnce(&ShardReaders<'env>) -> R,
) -> R {
    let (queue, tasks) = std::sync::mpsc::channel::<ReadTask<'env>>();
    let tasks = std::sync::Mutex::new(tasks);
    std::thread::scope(|s| {
        for _ in 0..threads {
            // A read that panics drops its reply: its requester reports the shard as unread.
            s.spawn(|| serve_jobs(&tasks));
        }
        let readers = ShardReaders { queue };
        let out = body(&readers);
        // Closing the queue ends the readers; the scope waits for them.
        drop(readers);
        out
    })
}

/// Reader threads for `workers` containers in flight of `width` shards each: every shard of each but the one
/// its worker reads itself.
pub(super) fn shard_reader_threads(workers: usize, width: usize) -> usize {
    workers * width.saturating_sub(1)
}

/// Runs `f` on every item with `threads` workers taking items in order (so a plan's priority order holds
/// approximately), until done or the job is cancelled.
pub(super) fn for_each_parallel<T: Sync>(
    items: &[T],
    threads: usize,
    job: &Job,
    f: impl Fn(&T) + Sync,
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| {
                while !job.cancelled() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    f(item);
                }
            });
        }
    });
}

impl Store {
    /// Checks every disk's presence and marker; a disk that vanished or turned foreign becomes failed.
    /// Returns the disks failed by this check.
    pub fn check_disks(&self) -> Vec<DiskId> {
        let mut failed = Vec::new();
        for d in self.disks.all() {
            if matches!(d.state(), DiskState::Failed | DiskState::Retired) {
                continue;
            }
            let check = check_marker(d.disk.as_ref(), self.store_id, d.id);
            if check != MarkerCheck::Ok {
                self.set_disk_state(d.id, DiskState::Failed, &format!("health check: {check:?}"));
                failed.push(d.id);
            }
        }
        failed
    }

    /// Persists and applies a disk state change, with an event.
    pub fn set_disk_state(&self, disk: DiskId, state: DiskState, why: &str) {
        let Some(d) = self.disks.get(disk) else {
            return;
        };
        if d.state() == state {
            return;
        }
        if state == DiskState::Failed {
            tracing::error!(%disk, path = %d.path.display(), why, "DISK FAILED: it will not be written again");
        } else {
            tracing::warn!(%disk, path = %d.path.display(), %state, why, "disk state change");
        }
        d.set_state(state);
        let _ = self.catalog.write(|tx| {
            catalog::set_disk_state(tx, disk, state.as_str())?;
            catalog::add_event(
                tx,
                now_ms(),
                "disk-state",
                None,
                &format!("disk {disk} -> {state}: {why}"),
            )
        });
    }

    /// Shards recorded per disk.
    pub(super) fn shard_counts(&self) -> Result<HashMap<DiskId, u64>> {
        self.catalog.read(|c| {
            let mut st = c.prepare("SELECT disk_id, COUNT(*) FROM shards GROUP BY disk_id")?;
            let rows = st.query_map([], |r| Ok((DiskId(r.get(0)?), r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Whether some container has a shard on a disk that is not healthy (work for a rebuild).
    pub fn needs_rebuild(&self) -> Result<bool> {
        let counts = self.shard_counts()?;
        Ok(self
            .disks
            .all()
            .iter()
            .any(|d| !d.state().healthy() && counts.get(&d.id).copied().unwrap_or(0) > 0))
    }

    /// Starts a job on its own thread unless one of that kind is running; returns the (new or running) job.
    pub fn start_job(
        self: &Arc<Self>,
        kind: JobKind,
        throttle_bytes_per_sec: u64,
        repair: bool,
    ) -> Arc<Job> {
        let slot = self.jobs.slot(kind);
        let mut guard = match slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(j) = guard.as_ref()
            && j.progress().running
        {
            j.set_throttle(throttle_bytes_per_sec);
            return j.clone();
        }
        let job = Arc::new(Job::new(kind, throttle_bytes_per_sec, repair));
        *guard = Some(job.clone());
        let store = self.clone();
        let j = job.clone();
        std::thread::spawn(move || {
            let r = match kind {
                JobKind::Rebuild => store.run_rebuild(&j),
                JobKind::Scrub => store.run_scrub(&j, repair),
            };
            if let Err(e) = &r {
                tracing::error!(?kind, error = %e, "job failed");
            }
            j.finish(r.err().map(|e| e.to_string()));
        });
        job
    }

    pub fn job(&self, kind: JobKind) -> Option<Arc<Job>> {
        self.jobs.current(kind)
    }

    /// Watches disk health every `interval` and, with `auto_rebuild` = Some(throttle in bytes/s, 0 = none),
    /// starts a rebuild by itself when a failed disk holds shards. The thread ends when the store is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>, interval: Duration, auto_rebuild: Option<u64>) {
        let weak: Weak<Store> = Arc::downgrade(self);
        std::thread::spawn(move || {
            loop {
                let Some(store) = weak.upgrade() else { return };
                store.check_disks();
                match store.needs_rebuild() {
                    Ok(true) if auto_rebuild.is_some() => {
                        let running = store
                            .job(JobKind::Rebuild)
                            .is_some_and(|j| j.progress().running);
                        if !running {
                            tracing::warn!("failed disk holds shards: starting rebuild");
                            store.start_job(JobKind::Rebuild, auto_rebuild.unwrap_or(0), true);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "maintenance: cannot read catalog"),
                }
                drop(store);
                std::thread::sleep(interval);
            }
        });
    }

    // ---------------- shard-level helpers ----------------

    /// Reads and verifies every shard file of a container. Returns payloads (None = missing or bad) and the
    /// problems found on healthy disks (index, reason).
    pub(super) fn read_all_shards<'env>(
        &'env self,
        row: &ContainerRow,
        buffers: &'env ShardBuffers,
        readers: &ShardReaders<'env>,
    ) -> (Vec<Option<ShardPayload>>, Vec<ShardProblem>) {
        self.read_shards(row, &[], usize::MAX, buffers, readers)
    }

    /// Like `read_all_shards`, skipping the shards in `skip` and stopping once `enough` good ones are read
    /// (a rebuild needs only k).
    ///
    /// The shards a container still needs are read at once, one by this thread and the others by the job's
    /// `readers`: they live on different disks, and reading them one after another kept one disk per
    /// container busy (a scrub's six containers in flight left half of a 12-disk JBOD idle; `cargo bench
    /// --bench jbod` models it).
    pub(super) fn read_shards<'env>(
        &'env self,
        row: &ContainerRow,
        skip: &[usize],
        enough: usize,
        buffers: &'env ShardBuffers,
        readers: &ShardReaders<'env>,
    ) -> (Vec<Option<ShardPayload>>, Vec<ShardProblem>) {
        let width = row.k as usize + row.m as usize;
        let mut payloads: Vec<Option<ShardPayload>> = (0..width).map(|_| None).collect();
        let mut problems = Vec::new();
        // Index order: data shards first, so a rebuild that needs k reads data shards when it can.
        let mut candidates = Vec::with_capacity(width);
        for idx in (0..width).filter(|idx| !skip.contains(idx)) {
            let Some(disk) = row
                .disks
                .get(idx)
                .copied()
                .flatten()
                .and_then(|d| self.disks.get(d))
            else {
                problems.push((idx, "no location recorded".to_string()));
                continue;
            };
            if disk.state().healthy() {
                candidates.push((idx, disk));
            } // else: the rebuild's business, not a scrub finding
        }
        let mut good = 0;
        let mut next = 0;
        while good < enough && next < candidates.len() {
            let round = &candidates[next..next + (enough - good).min(candidates.len() - next)];
            next += round.len();
            let shared_row = Arc::new(row.clone());
            let others: Vec<_> = round[1..]
                .iter()
                .map(|(idx, disk)| {
                    let (reply, answer) = std::sync::mpsc::channel();
                    let (idx, disk, row) = (*idx, disk.clone(), shared_row.clone());
                    let task: ReadTask<'env> = Box::new(move || {
                        let _ = reply.send(self.read_shard(&row, idx, &disk, buffers));
                    });
                    if let Err(task) = readers.run(task) {
                        task();
                    }
                    (idx, answer)
                })
                .collect();
            let (idx, disk) = &round[0];
            let mut results = vec![(*idx, self.read_shard(row, *idx, disk, buffers))];
            results.extend(others.into_iter().map(|(idx, answer)| {
                let result = answer
                    .recv()
                    .unwrap_or_else(|_| Err("shard reader panicked".to_string()));
                (idx, result)
            }));
            for (idx, result) in results {
                match (result, payloads.get_mut(idx)) {
                    (Ok(payload), Some(slot)) => {
                        *slot = Some(payload);
                        good += 1;
                    }
                    (Err(why), _) => problems.push((idx, why)),
                    (Ok(_), None) => {}
                }
            }
        }
        problems.sort_by_key(|(idx, _)| *idx);
        (payloads, problems)
    }

    /// Reads one shard file and checks its trailer checksum and header; the payload, or what is wrong.
    fn read_shard(
        &self,
        row: &ContainerRow,
        idx: usize,
        disk: &DiskEntry,
        buffers: &ShardBuffers,
    ) -> std::result::Result<ShardPayload, String> {
        let reuse = buffers.0.take_as_is().unwrap_or_default();
        let (bytes, at) = match disk.disk.read_once(&shard_path(row.id, idx), reuse) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.note_disk_error(disk.id, &e);
                }
                return Err(format!("disk {}: {e}", disk.id));
            }
        };
        match verify_shard_file(&bytes[at.clone()]) {
            Ok(h)
                if h.container == row.id
                    && h.index as usize == idx
                    && h.store == self.store_id
                    && h.k == row.k
                    && h.m == row.m
                    && h.shard_len == row.shard_len =>
            {
                // Left where it was read (verify_shard_file checked that the file holds shard_len bytes of it).
                Ok(ShardPayload {
                    buf: bytes,
                    at: at.start + SHARD_HEADER_LEN,
                    len: row.shard_len as usize,
                })
            }
            Ok(_) => Err(format!("disk {}: header names another shard", disk.id)),
            Err(e) => Err(format!("disk {}: {e}", disk.id)),
        }
    }

    /// Fills in every missing shard; checks the reconstructed container's structure (entry header CRCs) and,
    /// with `check_chunks`, every chunk's BLAKE3. Rebuild skips the chunk pass: its inputs were verified by
    /// their shard trailer hashes, so the reconstruction is exact; scrub does the full pass.
    pub(super) fn reconstruct_verified(
        &self,
        row: &ContainerRow,
        shards: &mut [Option<ShardPayload>],
        check_chunks: bool,
    ) -> Result<()> {
        let erasure = Erasure::new(Geometry::new(row.k, row.m)?)?;
        let have = shards.iter().filter(|s| s.is_some()).count();
        erasure
            .reconstruct(shards)
            .map_err(|_| self.data_lost(row.id, have, row.k as usize))?;
        let data: Vec<&[u8]> = shards
            .iter()
            .take(row.k as usize)
            .flatten()
            .map(ShardPayload::bytes)
            .collect();
        // Checked where the data shards lie, not joined into one container first.
        let container =
            Pieces::new(&data, row.len as usize).ok_or_else(|| StoreError::Corrupt {
                container: row.id,
                detail: "its data shards hold fewer bytes than the container".into(),
            })?;
        verify_container_pieces(&container, check_chunks).map_err(|e| StoreError::Corrupt {
            container: row.id,
            detail: format!("container does not verify: {e}"),
        })
    }

    pub(super) fn write_shard(
        &self,
        row: &ContainerRow,
        idx: usize,
        disk: DiskId,
        payload: &[u8],
    ) -> Result<()> {
        let entry = self
            .disks
            .get(disk)
            .ok_or_else(|| StoreError::Config(format!("unknown disk {disk}")))?;
        let header = ShardHeader {
            k: row.k,
            m: row.m,
            index: idx as u8,
            container: row.id,
            store: self.store_id,
            container_len: row.len,
            shard_len: row.shard_len,
        };
        let r = entry.disk.write_durable(
            &shard_path(row.id, idx),
            &[&header.encode(), payload, &encode_trailer(payload)],
        );
        if let Err(e) = r {
            self.note_disk_error(disk, &e);
            return Err(StoreError::Disk {
                disk,
                path: entry.path.display().to_string(),
                detail: e.to_string(),
            });
        }
        Ok(())
    }

    /// Points shard `idx` of `container` at `disk` (after the file was written).
    pub(super) fn record_shard(
        &self,
        container: ContainerId,
        moves: &[(usize, DiskId, Option<DiskId>)],
        shard_bytes: u64,
    ) -> Result<()> {
        self.catalog.write(|tx| {
            for (idx, to, from) in moves {
                tx.execute(
                    "INSERT INTO shards(container_id, idx, disk_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT(container_id, idx) DO UPDATE SET disk_id = excluded.disk_id",
                    params![container.0 as i64, *idx as i64, to.0],
                )?;
                if from != &Some(*to) {
                    tx.execute("UPDATE disks SET shards = shards + 1, bytes = bytes + ?2 WHERE id = ?1", params![to.0, shard_bytes as i64])?;
                    if let Some(f) = from {
                        tx.execute("UPDATE disks SET shards = shards - 1, bytes = bytes - ?2 WHERE id = ?1", params![f.0, shard_bytes as i64])?;
                    }
                }
            }
            Ok(())
        })?;
        for (_, to, from) in moves {
            if from != &Some(*to) {
                if let Some(d) = self.disks.get(*to) {
                    d.shards.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(d) = from.and_then(|f| self.disks.get(f)) {
                    d.shards.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    pub(super) fn describe_loss(&self, e: &StoreError, container: ContainerId) -> String {
        match e {
            StoreError::DataLost {
                objects,
                have,
                need,
                ..
            } => {
                format!(
                    "container {container}: {have} of {need} needed shards left; objects affected: {objects:?}"
                )
            }
            other => {
                let objects = self
                    .catalog
                    .read(|c| catalog::objects_using_container(c, container, 20))
                    .unwrap_or_default();
                format!("container {container}: {other}; objects affected: {objects:?}")
            }
        }
    }
}

impl Store {
    /// Adds a disk (new capacity: `Active`, or a hot `Spare`): creates and marks the directory, records it.
    /// Refuses directories that already carry a Cairn marker.
    pub fn add_disk(&self, path: &std::path::Path, state: DiskState) -> Result<DiskId> {
        use super::disk::{FileDisk, MARKER_FILE};
        use super::diskset::{DiskEntry, DiskMarker};
        let key = super::path_key(path);
        if self
            .disks
            .all()
            .iter()
            .any(|d| super::path_key(&d.path) == key)
        {
            return Err(StoreError::Config(format!(
                "{} is already a disk of this store",
                path.display()
            )));
        }
        std::fs::create_dir_all(path)?;
        let disk: Arc<dyn super::disk::Disk> = Arc::new(FileDisk::new(path));
        if disk.read_all(std::path::Path::new(MARKER_FILE)).is_ok() {
            return Err(StoreError::Config(format!(
                "{} already carries a Cairn disk marker; wipe it first if it is really free",
                path.display()
            )));
        }
        let now = now_ms();
        let id = self.catalog.write(|tx| {
            let id = catalog::insert_disk(tx, &key, state.as_str(), now)?;
            disk.write_durable(
                std::path::Path::new(MARKER_FILE),
                &[&DiskMarker::new(self.store_id, id, now).encode()],
            )?;
            catalog::add_event(
                tx,
                now,
                "disk-added",
                None,
                &format!("disk {id} at {key} as {state}"),
            )?;
            Ok(id)
        })?;
        self.disks.add(Arc::new(DiskEntry::new(
            id,
            path.to_path_buf(),
            disk,
            state,
            0,
        )));
        tracing::info!(%id, path = %path.display(), %state, "disk added");
        Ok(id)
    }

    /// The admin fails a disk: it is never written again and its shards are rebuilt elsewhere.
    pub fn fail_disk(&self, id: DiskId) -> Result<()> {
        if self.disks.get(id).is_none() {
            return Err(StoreError::Config(format!(
                "no disk {id}; see `cairn disk list`"
            )));
        }
        self.set_disk_state(id, DiskState::Failed, "failed by the admin");
        Ok(())
    }

    /// Replaces disk `id` by a new directory: the old one is failed, the new one is rebuilt onto.
    pub fn replace_disk(self: &Arc<Self>, id: DiskId, path: &std::path::Path) -> Result<DiskId> {
        if self.disks.get(id).is_none() {
            return Err(StoreError::Config(format!(
                "no disk {id}; see `cairn disk list`"
            )));
        }
        let new = self.add_disk(path, DiskState::Rebuilding)?;
        self.set_disk_state(id, DiskState::Failed, &format!("replaced by disk {new}"));
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job's readers run tasks side by side on their own threads, a task that panics loses only its own
    /// reply (the requester sees the channel closed), and the readers go on serving and end with the body.
    #[test]
    fn shard_readers_run_tasks_in_parallel_and_outlive_a_panic() {
        let main = std::thread::current().id();
        let started = std::sync::Barrier::new(3);
        let ran_on = with_shard_readers(3, |readers| {
            // Three tasks that only finish once all three have started: they run at once.
            let answers: Vec<_> = (0..3)
                .map(|i| {
                    let (reply, answer) = std::sync::mpsc::channel();
                    let started = &started;
                    assert!(
                        readers
                            .run(Box::new(move || {
                                started.wait();
                                let _ = reply.send((i, std::thread::current().id()));
                            }))
                            .is_ok()
                    );
                    answer
                })
                .collect();
            let ran_on: Vec<_> = answers.iter().map(|a| a.recv().unwrap()).collect();
            let (reply, answer) = std::sync::mpsc::channel::<()>();
            assert!(
                readers
                    .run(Box::new(move || {
                        let _keep = reply;
                        panic!("a shard read that panics");
                    }))
                    .is_ok()
            );
            assert!(
                answer.recv().is_err(),
                "the panicked task's reply is dropped"
            );
            let (reply, answer) = std::sync::mpsc::channel();
            assert!(
                readers
                    .run(Box::new(move || reply.send(7).unwrap()))
                    .is_ok()
            );
            assert_eq!(answer.recv().unwrap(), 7, "the readers still serve");
            ran_on
        });
        assert_eq!(ran_on.len(), 3);
        assert!(ran_on.iter().all(|(_, t)| *t != main));
        assert_eq!(shard_reader_threads(6, 6), 30);
    }

    /// Payloads left inside larger read buffers (junk in front and behind, as header and trailer lie)
    /// reconstruct in place: the missing shards come back equal to the encoder's, the present ones untouched.
    #[test]
    fn payloads_reconstruct_where_they_were_read() {
        let erasure = Erasure::new(Geometry::new(4, 2).unwrap()).unwrap();
        let container: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = erasure.encode(&container);
        let mut shards: Vec<Option<ShardPayload>> = want
            .iter()
            .map(|s| {
                let mut buf = vec![0xAA; 64];
                buf.extend_from_slice(s);
                buf.extend_from_slice(&[0x55; 32]);
                Some(ShardPayload {
                    buf,
                    at: 64,
                    len: s.len(),
                })
            })
            .collect();
        shards[1] = None;
        shards[4] = None;
        erasure.reconstruct(&mut shards).unwrap();
        for (got, want) in shards.iter().zip(&want) {
            assert_eq!(got.as_ref().unwrap().bytes(), &want[..]);
        }
        let data: Vec<&[u8]> = shards[..4]
            .iter()
            .flatten()
            .map(ShardPayload::bytes)
            .collect();
        assert_eq!(erasure.join(&data, container.len()), container);
    }
}
