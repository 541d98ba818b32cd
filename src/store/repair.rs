//! Disk health, rebuild onto spares and scrub: the executors of `core::plan` (storage-format.md §3 rules).
//!
//! Both jobs work container by container and commit each repair in its own catalog transaction, so the catalog
//! itself is the checkpoint: a restarted rebuild re-plans from what is still missing, and scrub resumes from
//! `meta.scrub_cursor`. New shard files are written with the durable-write rule before the catalog points at
//! them; bad files are moved to `quarantine/`, never deleted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::params;

use super::catalog::{self, ContainerRow};
use super::disk::shard_path;
use super::diskset::{DiskState, MarkerCheck, check_marker};
use super::error::{Result, StoreError};
use super::jobs::{Job, JobKind};
use super::{Store, now_ms};
use crate::core::container::{EntryType, decode_chunk, parse_container};
use crate::core::erasure::{Erasure, Geometry};
use crate::core::ids::{ChunkId, ContainerId, DiskId};
use crate::core::plan::{ContainerShards, plan_rebuild};
use crate::core::shard::{SHARD_HEADER_LEN, ShardHeader, encode_trailer, verify_shard_file};

/// A bad or missing shard: (shard index, what is wrong).
type ShardProblem = (usize, String);

/// Containers repaired or scrubbed at once: overlaps one container's disk I/O with another's hashing.
const REPAIR_THREADS: usize = 4;

/// Runs `f` on every item with `threads` workers taking items in order (so a plan's priority order holds
/// approximately), until done or the job is cancelled.
fn for_each_parallel<T: Sync>(items: &[T], threads: usize, job: &Job, f: impl Fn(&T) + Sync) {
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
    fn shard_counts(&self) -> Result<HashMap<DiskId, u64>> {
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
    fn read_all_shards(&self, row: &ContainerRow) -> (Vec<Option<Vec<u8>>>, Vec<ShardProblem>) {
        self.read_shards(row, &[], usize::MAX)
    }

    /// Like `read_all_shards`, skipping the shards in `skip` and stopping once `enough` good ones are read
    /// (a rebuild needs only k).
    fn read_shards(
        &self,
        row: &ContainerRow,
        skip: &[usize],
        enough: usize,
    ) -> (Vec<Option<Vec<u8>>>, Vec<ShardProblem>) {
        let width = row.k as usize + row.m as usize;
        let mut payloads = vec![None; width];
        let mut problems = Vec::new();
        let mut good = 0;
        for (idx, slot) in payloads.iter_mut().enumerate() {
            if good >= enough {
                break;
            }
            if skip.contains(&idx) {
                continue;
            }
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
            if !disk.state().healthy() {
                continue; // the rebuild's business, not a scrub finding
            }
            let bytes = match disk.disk.read_all(&shard_path(row.id, idx)) {
                Ok(b) => b,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        self.note_disk_error(disk.id, &e);
                    }
                    problems.push((idx, format!("disk {}: {e}", disk.id)));
                    continue;
                }
            };
            match verify_shard_file(&bytes) {
                Ok(h)
                    if h.container == row.id
                        && h.index as usize == idx
                        && h.store == self.store_id
                        && h.k == row.k
                        && h.m == row.m
                        && h.shard_len == row.shard_len =>
                {
                    *slot = Some(
                        bytes[SHARD_HEADER_LEN..SHARD_HEADER_LEN + row.shard_len as usize].to_vec(),
                    );
                    good += 1;
                }
                Ok(_) => {
                    problems.push((idx, format!("disk {}: header names another shard", disk.id)))
                }
                Err(e) => problems.push((idx, format!("disk {}: {e}", disk.id))),
            }
        }
        (payloads, problems)
    }

    /// Fills in every missing shard; checks the reconstructed container's structure (entry header CRCs) and,
    /// with `check_chunks`, every chunk's BLAKE3. Rebuild skips the chunk pass: its inputs were verified by
    /// their shard trailer hashes, so the reconstruction is exact; scrub does the full pass.
    fn reconstruct_verified(
        &self,
        row: &ContainerRow,
        shards: &mut [Option<Vec<u8>>],
        check_chunks: bool,
    ) -> Result<()> {
        let erasure = Erasure::new(Geometry::new(row.k, row.m)?)?;
        let have = shards.iter().filter(|s| s.is_some()).count();
        erasure
            .reconstruct(shards)
            .map_err(|_| self.data_lost(row.id, have, row.k as usize))?;
        let data: Vec<Vec<u8>> = shards
            .iter()
            .take(row.k as usize)
            .flatten()
            .cloned()
            .collect();
        let bytes = erasure.join(&data, row.len as usize);
        let (_, entries) = parse_container(&bytes).map_err(|e| StoreError::Corrupt {
            container: row.id,
            detail: format!("container does not parse: {e}"),
        })?;
        for e in entries
            .iter()
            .filter(|e| check_chunks && e.header.ty == EntryType::Chunk)
        {
            decode_chunk(
                e.header.codec,
                e.header.raw_len,
                e.payload,
                &ChunkId(e.header.id),
            )
            .map_err(|err| StoreError::Corrupt {
                container: row.id,
                detail: format!("chunk at {}: {err}", e.payload_offset),
            })?;
        }
        Ok(())
    }

    fn write_shard(
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
    fn record_shard(
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

    fn describe_loss(&self, e: &StoreError, container: ContainerId) -> String {
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

    // ---------------- rebuild ----------------

    /// Rebuilds every shard that lives on a failed disk onto spares (or other free disks), most endangered
    /// containers first. Safe to run while reads and writes go on; resumable by running it again.
    pub fn run_rebuild(&self, job: &Job) -> Result<()> {
        let counts = self.shard_counts()?;
        let all = self.disks.all();
        let bad: Vec<DiskId> = all
            .iter()
            .filter(|d| !d.state().healthy() && counts.get(&d.id).copied().unwrap_or(0) > 0)
            .map(|d| d.id)
            .collect();
        // One spare per failed disk that holds data.
        let rebuilding = all
            .iter()
            .filter(|d| d.state() == DiskState::Rebuilding)
            .count();
        let mut promote = bad.len().saturating_sub(rebuilding);
        for d in all.iter().filter(|d| d.state() == DiskState::Spare) {
            if promote == 0 {
                break;
            }
            if check_marker(d.disk.as_ref(), self.store_id, d.id) != MarkerCheck::Ok {
                self.set_disk_state(d.id, DiskState::Failed, "spare is missing or foreign");
                continue;
            }
            self.set_disk_state(
                d.id,
                DiskState::Rebuilding,
                "promoted from spare to replace a failed disk",
            );
            promote -= 1;
        }
        if promote > 0 {
            tracing::error!(
                failed_disks = bad.len(),
                "DEGRADED: not enough spares; rebuilding onto free active disks where possible"
            );
        }

        let all = self.disks.all();
        let healthy: HashSet<DiskId> = all
            .iter()
            .filter(|d| d.state().healthy())
            .map(|d| d.id)
            .collect();
        let mut targets: Vec<(u8, u64, DiskId)> = all
            .iter()
            .filter(|d| d.state().writable())
            .map(|d| {
                (
                    u8::from(d.state() != DiskState::Rebuilding),
                    d.shards.load(Ordering::Relaxed),
                    d.id,
                )
            })
            .collect();
        targets.sort();
        let targets: Vec<DiskId> = targets.into_iter().map(|t| t.2).collect();

        let ids: Vec<u64> = self.catalog.read(|c| {
            let mut st = c.prepare(
                "SELECT DISTINCT s.container_id FROM shards s JOIN disks d ON d.id = s.disk_id
                 WHERE d.state NOT IN ('active', 'suspect', 'rebuilding')
                 UNION
                 SELECT c.id FROM containers c WHERE (SELECT COUNT(*) FROM shards s WHERE s.container_id = c.id) < c.k + c.m",
            )?;
            let ids = st.query_map([], |r| r.get::<_, i64>(0))?.map(|r| r.map(|v| v as u64)).collect::<rusqlite::Result<_>>()?;
            Ok(ids)
        })?;
        let mut rows: HashMap<ContainerId, ContainerRow> = HashMap::new();
        let mut layout = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self
                .catalog
                .read(|c| catalog::get_container(c, ContainerId(id)))?
            {
                layout.push(ContainerShards {
                    container: row.id,
                    k: row.k,
                    m: row.m,
                    disks: row.disks.clone(),
                });
                rows.insert(row.id, row);
            }
        }
        let plan = plan_rebuild(&layout, &healthy, &targets);
        let total_bytes: u64 = plan
            .iter()
            .filter_map(|a| rows.get(&a.container))
            .map(|r| r.len)
            .sum();
        job.update(|p| {
            p.containers_total = plan.len() as u64;
            p.bytes_total = total_bytes;
            p.bad_shards = plan.iter().map(|a| a.missing.len() as u64).sum();
        });
        tracing::info!(
            containers = plan.len(),
            bytes = total_bytes,
            "rebuild planned"
        );

        let bytes_done = AtomicU64::new(0);
        for_each_parallel(&plan, REPAIR_THREADS, job, |action| {
            let Some(row) = rows.get(&action.container) else {
                return;
            };
            let outcome = (|| -> Result<u64> {
                if action.is_lost() {
                    return Err(self.data_lost(row.id, action.surviving, row.k as usize));
                }
                if action.targets.is_empty() {
                    return Ok(0);
                }
                // The shards being replaced are rebuilt from parity even if their old disk still answers.
                let (mut shards, _) = self.read_shards(row, &action.missing, row.k as usize);
                self.reconstruct_verified(row, &mut shards, false)?;
                let mut moves = Vec::new();
                for (idx, target) in action.missing.iter().zip(&action.targets) {
                    let Some(payload) = &shards[*idx] else {
                        continue;
                    };
                    if self.write_shard(row, *idx, *target, payload).is_ok() {
                        moves.push((*idx, *target, row.disks.get(*idx).copied().flatten()));
                    }
                }
                let shard_bytes = row.shard_len
                    + (SHARD_HEADER_LEN + crate::core::shard::SHARD_TRAILER_LEN) as u64;
                self.record_shard(row.id, &moves, shard_bytes)?;
                Ok(moves.len() as u64)
            })();
            match outcome {
                Ok(n) => job.update(|p| {
                    p.shards_repaired += n;
                    if (n as usize) < action.missing.len() {
                        p.unplaced += 1;
                    }
                }),
                Err(e) => {
                    let what = self.describe_loss(&e, row.id);
                    tracing::error!("{what}");
                    job.update(|p| p.unrepairable.push(what));
                }
            }
            let done = bytes_done.fetch_add(row.len, Ordering::Relaxed) + row.len;
            job.update(|p| {
                p.containers_done += 1;
                p.bytes_done = done;
            });
            job.pace(done);
        });
        if job.cancelled() {
            return Ok(());
        }
        // Spares that took over are active disks now; failed disks left with nothing are retired.
        let counts = self.shard_counts()?;
        for d in self.disks.all() {
            if d.state() == DiskState::Rebuilding {
                self.set_disk_state(d.id, DiskState::Active, "rebuild finished");
            }
            if d.state() == DiskState::Failed && counts.get(&d.id).copied().unwrap_or(0) == 0 {
                self.set_disk_state(
                    d.id,
                    DiskState::Retired,
                    "all its shards were rebuilt elsewhere",
                );
            }
        }
        Ok(())
    }

    // ---------------- scrub ----------------

    /// Reads every shard of every container, checks shard checksums and every chunk's BLAKE3, repairs bad or
    /// missing shards from parity (unless `repair` is false), quarantines bad files and records the time each
    /// container was last verified. Resumes from the last checkpoint.
    pub fn run_scrub(&self, job: &Job, repair: bool) -> Result<()> {
        let cursor: u64 = self
            .catalog
            .read(|c| catalog::meta_get(c, "scrub_cursor"))?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (total, total_bytes, done, done_bytes): (i64, i64, i64, i64) = self.catalog.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(len), 0), COALESCE(SUM(id <= ?1), 0), COALESCE(SUM(CASE WHEN id <= ?1 THEN len ELSE 0 END), 0) FROM containers",
                [cursor as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?)
        })?;
        job.update(|p| {
            p.containers_total = total as u64;
            p.bytes_total = (total_bytes - done_bytes) as u64;
            p.containers_done = done as u64;
        });
        let mut last = cursor;
        let mut bytes_done = 0u64;
        loop {
            let batch: Vec<u64> = self.catalog.read(|c| {
                let mut st =
                    c.prepare("SELECT id FROM containers WHERE id > ?1 ORDER BY id LIMIT 256")?;
                let ids = st
                    .query_map([last as i64], |r| r.get::<_, i64>(0))?
                    .map(|r| r.map(|v| v as u64))
                    .collect::<rusqlite::Result<_>>()?;
                Ok(ids)
            })?;
            if batch.is_empty() {
                break;
            }
            let done = AtomicU64::new(bytes_done);
            for_each_parallel(&batch, REPAIR_THREADS, job, |id| {
                let Ok(Some(row)) = self
                    .catalog
                    .read(|c| catalog::get_container(c, ContainerId(*id)))
                else {
                    return;
                };
                self.scrub_container(&row, job, repair);
                let d = done.fetch_add(row.len, Ordering::Relaxed) + row.len;
                job.update(|p| {
                    p.containers_done += 1;
                    p.bytes_done = d;
                });
                job.pace(d);
            });
            bytes_done = done.load(Ordering::Relaxed);
            if job.cancelled() {
                // Containers of an unfinished batch are scrubbed again next time: resume from its start.
                self.catalog
                    .write(|tx| catalog::meta_set(tx, "scrub_cursor", &last.to_string()))?;
                return Ok(());
            }
            last = batch.last().copied().unwrap_or(last);
            self.catalog
                .write(|tx| catalog::meta_set(tx, "scrub_cursor", &last.to_string()))?;
        }
        self.catalog.write(|tx| {
            tx.execute("DELETE FROM meta WHERE key = 'scrub_cursor'", [])?;
            catalog::meta_set(tx, "scrub_last_completed_unix_ms", &now_ms().to_string())
        })?;
        Ok(())
    }

    fn scrub_container(&self, row: &ContainerRow, job: &Job, repair: bool) {
        let (mut shards, problems) = self.read_all_shards(row);
        if !problems.is_empty() {
            job.update(|p| p.bad_shards += problems.len() as u64);
            for (idx, why) in &problems {
                tracing::warn!(container = %row.id, shard = idx, why, "scrub: bad shard");
            }
        }
        if let Err(e) = self.reconstruct_verified(row, &mut shards, true) {
            let what = self.describe_loss(&e, row.id);
            tracing::error!("scrub: {what}");
            job.update(|p| p.unrepairable.push(what));
            return;
        }
        let mut all_good = problems.is_empty();
        if repair && !problems.is_empty() {
            let mut moves = Vec::new();
            for (idx, _) in &problems {
                let Some(disk) = row.disks.get(*idx).copied().flatten() else {
                    continue;
                };
                let Some(entry) = self.disks.get(disk) else {
                    continue;
                };
                if !entry.disk.is_present() || !entry.state().writable() {
                    continue;
                }
                let rel = shard_path(row.id, *idx);
                if entry.disk.file_len(&rel).is_ok() {
                    match entry.disk.quarantine(&rel) {
                        Ok(q) => {
                            tracing::warn!(container = %row.id, shard = idx, to = %q.display(), "quarantined bad shard file");
                            job.update(|p| p.files_quarantined += 1);
                        }
                        Err(e) => {
                            tracing::error!(container = %row.id, shard = idx, error = %e, "cannot quarantine bad shard");
                            continue;
                        }
                    }
                }
                if let Some(payload) = &shards[*idx]
                    && self.write_shard(row, *idx, disk, payload).is_ok()
                {
                    moves.push((*idx, disk, Some(disk)));
                }
            }
            let repaired = moves.len();
            let _ = self.record_shard(row.id, &moves, 0);
            job.update(|p| p.shards_repaired += repaired as u64);
            all_good = repaired == problems.len();
        }
        if all_good {
            let _ = self.catalog.write(|tx| {
                tx.execute(
                    "UPDATE containers SET last_verified_unix_ms = ?2 WHERE id = ?1",
                    params![row.id.0 as i64, now_ms() as i64],
                )?;
                Ok(())
            });
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
