//! Scrub: read every shard, check every chunk, repair from parity, quarantine bad files (storage-format.md §7.2).

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::params;

use super::catalog::{self, ContainerRow};
use super::disk::shard_path;
use super::error::Result;
use super::jobs::Job;
use super::repair::{
    ShardBuffers, ShardPayload, ShardReaders, for_each_parallel, shard_reader_threads,
    with_shard_readers,
};

/// Containers scrubbed at once. Scrub is CPU-bound (every chunk is decompressed and hashed), and each
/// container's shards are read at once (`read_shards`, on the job's shard readers): six in flight keep both
/// the disks and the cores busy, for about 6 x 20 MiB of buffers.
pub const SCRUB_THREADS: usize = 6;

/// Containers per checkpoint: their last-verified times and the resume cursor are committed once all of them
/// are done. The workers drain at each checkpoint (the last container of a batch holds up the other five,
/// then two commits): in the e2e bench's A/B mode a scrub of 403 containers read 1423 MB/s with 256 per
/// batch against 1481 with one batch (medians of four rounds; ~50 ms per drain, ~3% of a scrub at 256).
/// 1024 containers (~8 GB) make it <1%, and an interrupted scrub does at most that again when it resumes.
const SCRUB_BATCH: i64 = 1024;
use super::{Store, now_ms};
use crate::core::ids::ContainerId;

impl Store {
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
        let width = usize::from(self.cfg.k) + usize::from(self.cfg.m);
        // Buffers and reader threads for the whole job, not per batch.
        let buffers = ShardBuffers::new(SCRUB_THREADS, width);
        let readers = shard_reader_threads(SCRUB_THREADS, width);
        let completed = with_shard_readers(readers, |readers| -> Result<bool> {
            loop {
                let batch: Vec<u64> = self.catalog.read(|c| {
                    let mut st =
                        c.prepare("SELECT id FROM containers WHERE id > ?1 ORDER BY id LIMIT ?2")?;
                    let ids = st
                        .query_map(params![last as i64, SCRUB_BATCH], |r| r.get::<_, i64>(0))?
                        .map(|r| r.map(|v| v as u64))
                        .collect::<rusqlite::Result<_>>()?;
                    Ok(ids)
                })?;
                if batch.is_empty() {
                    return Ok(true);
                }
                let done = AtomicU64::new(bytes_done);
                let verified = std::sync::Mutex::new(Vec::with_capacity(batch.len()));
                for_each_parallel(&batch, SCRUB_THREADS, job, |id| {
                    let Ok(Some(row)) = self
                        .catalog
                        .read(|c| catalog::get_container(c, ContainerId(*id)))
                    else {
                        return;
                    };
                    if self.scrub_container(&row, job, repair, &buffers, readers)
                        && let Ok(mut v) = verified.lock()
                    {
                        v.push(row.id);
                    }
                    let d = done.fetch_add(row.len, Ordering::Relaxed) + row.len;
                    job.update(|p| {
                        p.containers_done += 1;
                        p.bytes_done = d;
                    });
                    job.pace(d);
                });
                bytes_done = done.load(Ordering::Relaxed);
                // One transaction (one fsync) per batch for the last-verified times, not one per container.
                let verified = verified.into_inner().unwrap_or_default();
                let now = now_ms() as i64;
                self.catalog.write(|tx| {
                    let mut st = tx.prepare_cached(
                        "UPDATE containers SET last_verified_unix_ms = ?2 WHERE id = ?1",
                    )?;
                    for id in &verified {
                        st.execute(params![id.0 as i64, now])?;
                    }
                    Ok(())
                })?;
                if job.cancelled() {
                    // Containers of an unfinished batch are scrubbed again next time: resume from its start.
                    self.catalog
                        .write(|tx| catalog::meta_set(tx, "scrub_cursor", &last.to_string()))?;
                    return Ok(false);
                }
                last = batch.last().copied().unwrap_or(last);
                self.catalog
                    .write(|tx| catalog::meta_set(tx, "scrub_cursor", &last.to_string()))?;
            }
        })?;
        if !completed {
            return Ok(());
        }
        self.catalog.write(|tx| {
            tx.execute("DELETE FROM meta WHERE key = 'scrub_cursor'", [])?;
            catalog::meta_set(tx, "scrub_last_completed_unix_ms", &now_ms().to_string())
        })?;
        Ok(())
    }

    /// Verifies (and with `repair`, repairs) one container; true when it is now wholly good.
    fn scrub_container<'env>(
        &'env self,
        row: &ContainerRow,
        job: &Job,
        repair: bool,
        buffers: &'env ShardBuffers,
        readers: &ShardReaders<'env>,
    ) -> bool {
        let (mut shards, problems) = self.read_all_shards(row, buffers, readers);
        let good = self.scrub_shards(row, job, repair, &mut shards, &problems);
        buffers.recycle(shards);
        good
    }

    /// Checks (and with `repair`, repairs) one container's shards as they were read.
    fn scrub_shards(
        &self,
        row: &ContainerRow,
        job: &Job,
        repair: bool,
        shards: &mut [Option<ShardPayload>],
        problems: &[(usize, String)],
    ) -> bool {
        if !problems.is_empty() {
            job.update(|p| p.bad_shards += problems.len() as u64);
            for (idx, why) in problems {
                tracing::warn!(container = %row.id, shard = idx, why, "scrub: bad shard");
            }
        }
        if let Err(e) = self.reconstruct_verified(row, shards, true) {
            let what = self.describe_loss(&e, row.id);
            tracing::error!("scrub: {what}");
            job.update(|p| p.unrepairable.push(what));
            return false;
        }
        let mut all_good = problems.is_empty();
        if repair && !problems.is_empty() {
            let mut moves = Vec::new();
            for (idx, _) in problems {
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
                    && self.write_shard(row, *idx, disk, payload.bytes()).is_ok()
                {
                    moves.push((*idx, disk, Some(disk)));
                }
            }
            let repaired = moves.len();
            let _ = self.record_shard(row.id, &moves, 0);
            job.update(|p| p.shards_repaired += repaired as u64);
            all_good = repaired == problems.len();
        }
        all_good
    }
}
