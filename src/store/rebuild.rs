//! Rebuild onto spares: the executor of `core::plan::plan_rebuild` (storage-format.md §7.2).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;
use super::catalog::{self, ContainerRow};
use super::diskset::{DiskState, MarkerCheck, check_marker};
use super::error::Result;
use super::jobs::Job;
use super::repair::{
    REPAIR_THREADS, ShardBuffers, for_each_parallel, shard_reader_threads, with_shard_readers,
};
use crate::core::ids::{ContainerId, DiskId};
use crate::core::plan::{ContainerShards, plan_rebuild};
use crate::core::shard::SHARD_HEADER_LEN;

impl Store {
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
        let width = usize::from(self.cfg.k) + usize::from(self.cfg.m);
        let buffers = ShardBuffers::new(REPAIR_THREADS, width);
        let readers = shard_reader_threads(REPAIR_THREADS, width);
        with_shard_readers(readers, |readers| {
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
                    let (mut shards, _) =
                        self.read_shards(row, &action.missing, row.k as usize, &buffers, readers);
                    if let Err(e) = self.reconstruct_verified(row, &mut shards, false) {
                        buffers.recycle(shards);
                        return Err(e);
                    }
                    let mut moves = Vec::new();
                    for (idx, target) in action.missing.iter().zip(&action.targets) {
                        let Some(payload) = &shards[*idx] else {
                            continue;
                        };
                        if self
                            .write_shard(row, *idx, *target, payload.bytes())
                            .is_ok()
                        {
                            moves.push((*idx, *target, row.disks.get(*idx).copied().flatten()));
                        }
                    }
                    let shard_bytes = row.shard_len
                        + (SHARD_HEADER_LEN + crate::core::shard::SHARD_TRAILER_LEN) as u64;
                    buffers.recycle(shards);
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
}
