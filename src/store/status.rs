//! `cairn status`: disks, capacity, dedup and compression, redundancy margins, verification coverage and jobs.

use serde::{Deserialize, Serialize};

use super::diskset::DiskState;
use super::error::Result;
use super::jobs::{JobKind, JobProgress};
use super::{Store, now_ms};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskStatus {
    pub id: u32,
    pub path: String,
    pub state: DiskState,
    pub shards: u64,
    pub bytes_used: u64,
    /// Filesystem size and free space (None if the disk is unreachable).
    pub fs_total: Option<u64>,
    pub fs_available: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// Sum of the filesystems of the writable disks.
    pub raw_total: u64,
    pub raw_available: u64,
    /// What can still be stored after parity (raw available x k/(k+m)).
    pub usable_available: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DataStats {
    pub buckets: u64,
    pub objects: u64,
    /// What clients wrote (sum of object sizes).
    pub logical_bytes: u64,
    /// Distinct chunk bytes referenced, before compression.
    pub unique_bytes: u64,
    /// Chunk bytes on disk after compression, before parity.
    pub stored_bytes: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Redundancy {
    pub containers: u64,
    /// All m parity shards' worth of margin.
    pub full: u64,
    /// Some margin lost, at least one more loss survivable.
    pub reduced: u64,
    /// Exactly k shards left: the next loss loses data.
    pub zero_margin: u64,
    /// Fewer than k shards: unreadable.
    pub lost: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Verification {
    pub containers_verified_30d: u64,
    pub bytes_verified_30d: u64,
    pub bytes_total: u64,
    pub last_scrub_completed_unix_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub k: u8,
    pub m: u8,
    pub disks: Vec<DiskStatus>,
    pub capacity: Capacity,
    pub data: DataStats,
    pub redundancy: Redundancy,
    pub verification: Verification,
    pub rebuild: Option<JobProgress>,
    pub scrub: Option<JobProgress>,
    /// Plain-language problems, loudest first. Empty = healthy.
    pub warnings: Vec<String>,
    /// Some data is unreadable, or a disk failed and no spare can take its place.
    pub critical: bool,
}

impl Store {
    pub fn status(&self) -> Result<StatusReport> {
        let k = self.cfg.k;
        let m = self.cfg.m;
        let mut disks = Vec::new();
        let mut capacity = Capacity::default();
        let rows = self.catalog.read(super::catalog::list_disks)?;
        // Directory-disks sharing one filesystem (the embedded default) count its space once.
        let mut seen_fs = std::collections::HashSet::new();
        for d in self.disks.all() {
            let row = rows.iter().find(|r| r.id == d.id);
            let stats = d
                .disk
                .is_present()
                .then(|| fs4::statvfs(&d.path).ok())
                .flatten();
            let fs_id = std::fs::metadata(&d.path)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m));
            if d.state().writable()
                && let Some(s) = &stats
                && fs_id.is_some_and(|id| seen_fs.insert(id))
            {
                capacity.raw_total += s.total_space();
                capacity.raw_available += s.available_space();
            }
            disks.push(DiskStatus {
                id: d.id.0,
                path: d.path.display().to_string(),
                state: d.state(),
                shards: row.map(|r| r.shards).unwrap_or(0),
                bytes_used: row.map(|r| r.bytes).unwrap_or(0),
                fs_total: stats.as_ref().map(|s| s.total_space()),
                fs_available: stats.as_ref().map(|s| s.available_space()),
            });
        }
        capacity.usable_available = capacity.raw_available * k as u64 / (k as u64 + m as u64);

        let (data, redundancy, verification) = self.catalog.read(|c| {
            let mut data = DataStats::default();
            c.query_row("SELECT COUNT(*) FROM buckets", [], |r| r.get::<_, i64>(0)).map(|v| data.buckets = v as u64)?;
            c.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects", [], |r| {
                data.objects = r.get::<_, i64>(0)? as u64;
                data.logical_bytes = r.get::<_, i64>(1)? as u64;
                Ok(())
            })?;
            c.query_row(
                // A group member (§4.5) is charged its share of the group's frame, by raw size.
                "SELECT COALESCE(SUM(c.raw_len), 0),
                        COALESCE(SUM(CASE WHEN c.group_raw > 0 THEN c.stored_len * c.raw_len / c.group_raw ELSE c.stored_len END), 0)
                 FROM chunk_refs r JOIN chunks c ON c.id = r.id WHERE r.refs > 0",
                [],
                |r| {
                    data.unique_bytes = r.get::<_, i64>(0)? as u64;
                    data.stored_bytes = r.get::<_, i64>(1)? as u64;
                    Ok(())
                },
            )?;
            data.dedup_ratio = ratio(data.logical_bytes, data.unique_bytes);
            data.compression_ratio = ratio(data.unique_bytes, data.stored_bytes);

            let mut red = Redundancy::default();
            let mut st = c.prepare(
                "SELECT c.k, c.m, (SELECT COUNT(*) FROM shards s JOIN disks d ON d.id = s.disk_id
                   WHERE s.container_id = c.id AND d.state IN ('active', 'suspect', 'rebuilding'))
                 FROM containers c",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let (ck, cm, healthy): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                red.containers += 1;
                let margin = healthy - ck;
                match margin {
                    x if x < 0 => red.lost += 1,
                    0 => red.zero_margin += 1,
                    x if x < cm => red.reduced += 1,
                    _ => red.full += 1,
                }
            }
            let since = now_ms().saturating_sub(30 * 24 * 3600 * 1000) as i64;
            let mut ver = Verification::default();
            c.query_row(
                "SELECT COALESCE(SUM(last_verified_unix_ms >= ?1), 0),
                        COALESCE(SUM(CASE WHEN last_verified_unix_ms >= ?1 THEN len ELSE 0 END), 0),
                        COALESCE(SUM(len), 0) FROM containers",
                [since],
                |r| {
                    ver.containers_verified_30d = r.get::<_, i64>(0)? as u64;
                    ver.bytes_verified_30d = r.get::<_, i64>(1)? as u64;
                    ver.bytes_total = r.get::<_, i64>(2)? as u64;
                    Ok(())
                },
            )?;
            ver.last_scrub_completed_unix_ms =
                super::catalog::meta_get(c, "scrub_last_completed_unix_ms")?.and_then(|s| s.parse().ok());
            Ok((data, red, ver))
        })?;

        let rebuild = self.job(JobKind::Rebuild).map(|j| j.progress());
        let scrub = self.job(JobKind::Scrub).map(|j| j.progress());
        let mut warnings = Vec::new();
        let mut critical = false;
        if redundancy.lost > 0 {
            critical = true;
            warnings.push(format!(
                "{} containers are UNREADABLE (more than m={m} shards lost)",
                redundancy.lost
            ));
        }
        let spares = disks.iter().filter(|d| d.state == DiskState::Spare).count();
        let failed_with_data = disks
            .iter()
            .filter(|d| d.state == DiskState::Failed && d.shards > 0)
            .count();
        if failed_with_data > 0 {
            let rebuilding = rebuild.as_ref().is_some_and(|r| r.running);
            let has_target = spares > 0 || disks.iter().any(|d| d.state == DiskState::Rebuilding);
            if !has_target && !rebuilding {
                critical = true;
                warnings.push(format!(
                    "DEGRADED: {failed_with_data} failed disk(s) hold data and no spare is available: add one with `cairn disk add-spare PATH`"
                ));
            } else {
                warnings.push(format!(
                    "{failed_with_data} failed disk(s) being rebuilt onto spares"
                ));
            }
        }
        if redundancy.zero_margin > 0 {
            warnings.push(format!(
                "{} containers have zero margin: one more disk loss loses data",
                redundancy.zero_margin
            ));
        }
        if redundancy.reduced > 0 {
            warnings.push(format!(
                "{} containers have reduced redundancy",
                redundancy.reduced
            ));
        }
        let writable = disks.iter().filter(|d| d.state.writable()).count();
        if writable < (k + m) as usize {
            critical = true;
            warnings.push(format!(
                "only {writable} writable disks for {k}+{m} stripes: new writes are refused until a disk is added"
            ));
        }
        if spares == 0 && !critical {
            warnings.push("no hot spare: after the next disk failure, rebuilds wait for `cairn disk add-spare PATH`".into());
        }
        if let Some(j) = rebuild.as_ref().filter(|j| !j.unrepairable.is_empty()) {
            critical = true;
            warnings.push(format!(
                "rebuild could not repair {} containers",
                j.unrepairable.len()
            ));
        }
        Ok(StatusReport {
            k,
            m,
            disks,
            capacity,
            data,
            redundancy,
            verification,
            rebuild,
            scrub,
            warnings,
            critical,
        })
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}
