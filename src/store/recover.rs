//! Disaster recovery and integrity: `cairn catalog rebuild` (storage-format.md §8) and `cairn catalog check`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::catalog::{self, Catalog, ContainerRow};
use super::dedup::ChunkLocation;
use super::disk::{Disk, FileDisk, MARKER_FILE, parse_shard_name};
use super::diskset::DiskMarker;
use super::error::{Result, StoreError};
use super::{StoreConfig, lock_data_dir, now_ms};
use crate::core::container::{Codec, EntryType, parse_container, parse_group};
use crate::core::erasure::{Erasure, Geometry};
use crate::core::ids::{ChunkId, ContainerId, DiskId, UploadId};
use crate::core::records::{
    BucketRecord, ObjectCommitRecord, SegmentRecord, TombstoneRecord, decode_segment_entries,
    encode_segment_entries,
};
use crate::core::shard::verify_shard_file;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub disks: usize,
    pub shard_files: usize,
    pub containers: usize,
    pub containers_unreadable: Vec<u64>,
    pub bad_shard_files: Vec<String>,
    pub chunks: usize,
    pub buckets: usize,
    pub objects: usize,
    /// Objects whose data is incomplete on the disks (a segment missing): named so the admin knows.
    pub objects_damaged: Vec<String>,
    pub old_catalog_moved_to: Option<String>,
}

/// Progress callback: (containers done, containers total).
pub type Progress<'a> = &'a dyn Fn(usize, usize);

/// Rebuilds the catalog from the disks alone. The old catalog, if any, is moved aside (never deleted).
pub fn rebuild_catalog(cfg: &StoreConfig, progress: Progress<'_>) -> Result<RebuildReport> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let mut report = RebuildReport::default();
    let path = cfg.catalog_path();
    if path.exists() {
        let aside = cfg
            .data_dir
            .join(format!("catalog.sqlite.before-rebuild-{}", now_ms()));
        std::fs::rename(&path, &aside)?;
        for ext in ["-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{ext}", path.display()));
            if p.exists() {
                std::fs::rename(&p, format!("{}{ext}", aside.display()))?;
            }
        }
        report.old_catalog_moved_to = Some(aside.display().to_string());
    }

    // Disks: every configured directory with a marker.
    let mut disks: Vec<(DiskId, PathBuf, Arc<dyn Disk>, bool)> = Vec::new();
    let mut store_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut markers = Vec::new();
    for (p, spare) in cfg
        .disks
        .iter()
        .map(|p| (p, false))
        .chain(cfg.spares.iter().map(|p| (p, true)))
    {
        let d: Arc<dyn Disk> = Arc::new(FileDisk::new(p));
        match d
            .read_all(Path::new(MARKER_FILE))
            .ok()
            .and_then(|b| DiskMarker::decode(&b))
        {
            Some(m) => {
                *store_ids.entry(m.store_id.clone()).or_default() += 1;
                markers.push((m, p.clone(), d, spare));
            }
            None => tracing::warn!(path = %p.display(), "no readable disk marker; skipping"),
        }
    }
    let Some(store_hex) = store_ids
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| s.clone())
    else {
        return Err(StoreError::Config(
            "no disk with a Cairn marker found: nothing to rebuild from".into(),
        ));
    };
    for (m, p, d, spare) in markers {
        if m.store_id != store_hex {
            tracing::warn!(path = %p.display(), store = %m.store_id, "disk belongs to another store; skipping");
            continue;
        }
        disks.push((DiskId(m.disk_id), p, d, spare));
    }
    report.disks = disks.len();

    let cat = Catalog::open(&path)?;
    let now = now_ms();
    cat.write(|tx| {
        catalog::meta_set(tx, "store_id", &store_hex)?;
        catalog::meta_set(tx, "format", "1")?;
        for (id, p, _, spare) in &disks {
            let key = super::path_key(p);
            catalog::insert_disk_with_id(
                tx,
                *id,
                &key,
                if *spare { "spare" } else { "active" },
                now,
            )?;
        }
        Ok(())
    })?;

    // Shard files by container.
    let mut by_container: BTreeMap<u64, Vec<(usize, DiskId, PathBuf)>> = BTreeMap::new();
    for (id, _, d, _) in &disks {
        for rel in d.list_shards()? {
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some((cid, idx)) = parse_shard_name(&name) {
                by_container.entry(cid.0).or_default().push((idx, *id, rel));
                report.shard_files += 1;
            }
        }
    }
    let disk_of: HashMap<DiskId, Arc<dyn Disk>> =
        disks.iter().map(|(id, _, d, _)| (*id, d.clone())).collect();

    let mut commits: HashMap<(String, String), ObjectCommitRecord> = HashMap::new();
    let mut tombstones: HashMap<(String, String), u64> = HashMap::new();
    let mut buckets: HashMap<String, BucketRecord> = HashMap::new();
    let total = by_container.len();
    let mut max_id = 0u64;
    for (n, (cid, files)) in by_container.into_iter().enumerate() {
        progress(n, total);
        max_id = max_id.max(cid);
        let container = ContainerId(cid);
        let Some((row, bytes)) = read_container(container, &files, &disk_of, &mut report) else {
            report.containers_unreadable.push(cid);
            continue;
        };
        let (_, entries) = match parse_container(&bytes) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(%container, error = %e, "container does not parse");
                report.containers_unreadable.push(cid);
                continue;
            }
        };
        cat.write(|tx| {
            catalog::insert_container(tx, &row)?;
            for e in &entries {
                match e.header.ty {
                    EntryType::Chunk => {
                        let loc = ChunkLocation {
                            container,
                            offset: e.payload_offset,
                            stored_len: e.header.stored_len,
                            raw_len: e.header.raw_len,
                            codec: e.header.codec,
                            group: None,
                        };
                        if catalog::insert_chunk(tx, &ChunkId(e.header.id), &loc)? {
                            report.chunks += 1;
                        }
                    }
                    EntryType::Group => {
                        let g = parse_group(e.payload, e.header.raw_len)?;
                        for (id, raw_len, slot) in &g.members {
                            let loc = ChunkLocation {
                                container,
                                offset: e.payload_offset + g.frame_start as u64,
                                stored_len: g.frame.len() as u32,
                                raw_len: *raw_len,
                                codec: e.header.codec,
                                group: Some(*slot),
                            };
                            if catalog::insert_chunk(tx, id, &loc)? {
                                report.chunks += 1;
                            }
                        }
                    }
                    EntryType::Segment => {
                        let seg = SegmentRecord::decode(e.payload)?;
                        tx.execute(
                            "INSERT OR IGNORE INTO segments(upload_id, segment_no, logical_start, container_id, entries)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![
                                &seg.upload.0[..],
                                seg.segment_no,
                                seg.logical_start as i64,
                                cid as i64,
                                encode_segment_entries(&seg.entries)
                            ],
                        )?;
                    }
                    EntryType::Commit => {
                        let r = ObjectCommitRecord::decode(e.payload)?;
                        let k = (r.bucket.clone(), r.key.clone());
                        if commits.get(&k).is_none_or(|old| old.seq < r.seq) {
                            commits.insert(k, r);
                        }
                    }
                    EntryType::Tombstone => {
                        let r = TombstoneRecord::decode(e.payload)?;
                        let t = tombstones.entry((r.bucket, r.key)).or_default();
                        *t = (*t).max(r.seq);
                    }
                    EntryType::Bucket => {
                        let r = BucketRecord::decode(e.payload)?;
                        if buckets.get(&r.bucket).is_none_or(|old| old.seq < r.seq) {
                            buckets.insert(r.bucket.clone(), r);
                        }
                    }
                }
            }
            Ok(())
        })?;
        report.containers += 1;
    }
    progress(total, total);

    // Replay: newest state per bucket and per key.
    cat.write(|tx| {
        for b in buckets.values().filter(|b| !b.deleted) {
            tx.execute(
                "INSERT INTO buckets(name, created_unix_ms, seq) VALUES (?1, ?2, ?3)",
                params![b.bucket, b.created_unix_ms as i64, b.seq as i64],
            )?;
            report.buckets += 1;
        }
        let mut upload_refs: HashMap<UploadId, i64> = HashMap::new();
        for ((bucket, key), rec) in &commits {
            let Some(b) = buckets.get(bucket) else { continue };
            if b.deleted || b.seq > rec.seq {
                continue; // the bucket was deleted (or re-created) after this commit
            }
            if tombstones.get(&(bucket.clone(), key.clone())).is_some_and(|t| *t > rec.seq) {
                continue;
            }
            let mut complete = true;
            for s in &rec.sources {
                let u = s.upload()?;
                let have: u32 = tx.query_row(
                    "SELECT COUNT(*) FROM segments WHERE upload_id = ?1",
                    [&u.0[..]],
                    |r| r.get(0),
                )?;
                complete &= have == s.segments;
                *upload_refs.entry(u).or_default() += 1;
            }
            if !complete {
                report.objects_damaged.push(format!("{bucket}/{key}"));
            }
            let info = super::api::ObjectInfo {
                bucket: bucket.clone(),
                key: key.clone(),
                size: rec.size,
                seq: rec.seq,
                created_unix_ms: rec.created_unix_ms,
                meta: rec.meta.clone(),
                part_sizes: rec.sources.iter().map(|s| s.size).collect(),
            };
            catalog::put_object_row(tx, &info, &rec.sources)?;
            report.objects += 1;
        }
        // Uploads of live objects keep their segments and pin their chunks; the rest is garbage.
        for (u, refs) in &upload_refs {
            let segs: Vec<Vec<u8>> = {
                let mut st = tx.prepare("SELECT entries FROM segments WHERE upload_id = ?1")?;
                st.query_map([&u.0[..]], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            let size: u64 = segs
                .iter()
                .map(|b| decode_segment_entries(b).map(|e| e.iter().map(|x| x.1 as u64).sum::<u64>()))
                .sum::<std::result::Result<u64, _>>()?;
            for b in &segs {
                catalog::add_chunk_refs(tx, &decode_segment_entries(b)?, 1)?;
            }
            tx.execute(
                "INSERT INTO uploads(id, state, refs, size, segments, created_unix_ms) VALUES (?1, 'sealed', ?2, ?3, ?4, ?5)",
                params![&u.0[..], refs, size as i64, segs.len() as i64, now as i64],
            )?;
        }
        tx.execute("DELETE FROM segments WHERE upload_id NOT IN (SELECT id FROM uploads)", [])?;
        catalog::meta_set(tx, "container_id_reserved", &(max_id + 1).to_string())?;
        Ok(())
    })?;
    Ok(report)
}

/// Reads a container back from its shard files: good shards only, reconstructing from parity if needed.
fn read_container(
    id: ContainerId,
    files: &[(usize, DiskId, PathBuf)],
    disks: &HashMap<DiskId, Arc<dyn Disk>>,
    report: &mut RebuildReport,
) -> Option<(ContainerRow, Vec<u8>)> {
    let mut good: BTreeMap<usize, (DiskId, Vec<u8>)> = BTreeMap::new();
    let mut header = None;
    for (idx, disk, rel) in files {
        let bytes = disks.get(disk).and_then(|d| d.read_all(rel).ok());
        match bytes.as_deref().map(verify_shard_file) {
            Some(Ok(h)) if h.container == id && h.index as usize == *idx => {
                let payload = bytes.unwrap_or_default()[crate::core::shard::SHARD_HEADER_LEN
                    ..crate::core::shard::SHARD_HEADER_LEN + h.shard_len as usize]
                    .to_vec();
                header.get_or_insert(h);
                good.entry(*idx).or_insert((*disk, payload));
            }
            _ => report
                .bad_shard_files
                .push(format!("disk {disk}: {}", rel.display())),
        }
    }
    let h = header?;
    let g = Geometry::new(h.k, h.m).ok()?;
    let erasure = Erasure::new(g).ok()?;
    let mut shards: Vec<Option<Vec<u8>>> = (0..g.width())
        .map(|i| good.get(&i).map(|x| x.1.clone()))
        .collect();
    erasure.reconstruct_data(&mut shards).ok()?;
    let data: Vec<Vec<u8>> = shards
        .into_iter()
        .take(g.k as usize)
        .collect::<Option<Vec<_>>>()?;
    let bytes = erasure.join(&data, h.container_len as usize);
    let row = ContainerRow {
        id,
        k: h.k,
        m: h.m,
        len: h.container_len,
        shard_len: h.shard_len,
        created_unix_ms: now_ms(),
        disks: (0..g.width()).map(|i| good.get(&i).map(|x| x.0)).collect(),
    };
    Some((row, bytes))
}

/// Cross-checks the catalog against itself. Returns the problems found (empty = consistent).
pub fn check_catalog(c: &Connection) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let ic: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if ic != "ok" {
        problems.push(format!("sqlite integrity_check: {ic}"));
    }
    // Expected chunk refs = one per entry of every segment of every upload still recorded.
    let mut expected: HashMap<ChunkId, i64> = HashMap::new();
    {
        let mut st = c.prepare("SELECT upload_id, segment_no, entries FROM segments")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let entries = decode_segment_entries(&r.get::<_, Vec<u8>>(2)?)?;
            for (id, _) in entries {
                *expected.entry(id).or_default() += 1;
            }
        }
    }
    {
        // A chunk's references are its `chunk_refs` row, keyed by the container its `chunks` row names.
        let mut st = c.prepare(
            "SELECT c.id, r.refs, c.container_id, c.codec, c.raw_len, c.group_offset, c.group_raw
             FROM chunks c LEFT JOIN chunk_refs r ON r.container_id = c.container_id AND r.id = c.id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id = ChunkId::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or(ChunkId([0; 32]));
            let want = expected.remove(&id).unwrap_or(0);
            let Some(refs) = r.get::<_, Option<i64>>(1)? else {
                problems.push(format!(
                    "chunk {id}: no chunk_refs row in container {}",
                    r.get::<_, i64>(2)?
                ));
                continue;
            };
            if refs != want {
                problems.push(format!(
                    "chunk {id}: refs {refs}, segments reference it {want} times"
                ));
            }
            let codec = Codec::from_u8(r.get(3)?);
            if codec.is_none() {
                problems.push(format!("chunk {id}: unknown codec"));
            }
            // A group member (§4.5) lies inside its zstd group.
            let (raw_len, group_offset, group_raw): (i64, i64, i64) =
                (r.get(4)?, r.get(5)?, r.get(6)?);
            if group_raw > 0 && (codec != Some(Codec::Zstd) || group_offset + raw_len > group_raw) {
                problems.push(format!(
                    "chunk {id}: group slot {group_offset}+{raw_len} outside its group of {group_raw} bytes"
                ));
            }
            let cid: i64 = r.get(2)?;
            if catalog::get_container(c, ContainerId(cid as u64))?.is_none() {
                problems.push(format!("chunk {id}: container {cid} missing"));
            }
        }
    }
    for (id, n) in expected {
        problems.push(format!(
            "segments reference chunk {id} ({n} times) that is not in the index"
        ));
    }
    {
        let mut st = c.prepare(
            "SELECT r.id, r.container_id FROM chunk_refs r
             LEFT JOIN chunks c ON c.id = r.id AND c.container_id = r.container_id WHERE c.id IS NULL",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id = ChunkId::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or(ChunkId([0; 32]));
            problems.push(format!(
                "chunk_refs row of chunk {id} in container {} that the chunk index does not place there",
                r.get::<_, i64>(1)?
            ));
        }
    }
    // Upload refs = objects + parts using them; every object's uploads complete and sized right.
    let mut upload_users: HashMap<Vec<u8>, i64> = HashMap::new();
    {
        let mut st = c.prepare("SELECT bucket, key, size, sources_json FROM objects")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (bucket, key, size): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let sources: Vec<crate::core::records::SourceRef> =
                serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default();
            let mut total = 0u64;
            for s in &sources {
                let Ok(u) = s.upload() else {
                    problems.push(format!("{bucket}/{key}: malformed upload id"));
                    continue;
                };
                *upload_users.entry(u.0.to_vec()).or_default() += 1;
                let (segs, bytes) = upload_extent(c, &u)?;
                if segs != s.segments as u64 || bytes != s.size {
                    problems.push(format!(
                        "{bucket}/{key}: upload {} has {segs} segments / {bytes} bytes, object expects {} / {}",
                        u.to_hex(),
                        s.segments,
                        s.size
                    ));
                }
                total += s.size;
            }
            if total != size as u64 {
                problems.push(format!(
                    "{bucket}/{key}: sources sum to {total}, object size {size}"
                ));
            }
        }
    }
    {
        let mut st = c.prepare("SELECT upload_id FROM parts")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            *upload_users.entry(r.get(0)?).or_default() += 1;
        }
    }
    {
        let mut st = c.prepare("SELECT id, refs, state FROM uploads")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id: Vec<u8> = r.get(0)?;
            let refs: i64 = r.get(1)?;
            let state: String = r.get(2)?;
            let users = upload_users.get(&id).copied().unwrap_or(0);
            if refs != users && state == "sealed" && refs > 0 {
                problems.push(format!(
                    "upload {}: refs {refs}, used by {users}",
                    hex::encode(&id)
                ));
            }
        }
    }
    {
        let mut st = c.prepare(
            "SELECT c.id, c.k + c.m, COUNT(s.idx) FROM containers c LEFT JOIN shards s ON s.container_id = c.id GROUP BY c.id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (id, width, have): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if have != width {
                problems.push(format!(
                    "container {id:016x}: {have} of {width} shard locations recorded"
                ));
            }
        }
    }
    Ok(problems)
}

fn upload_extent(c: &Connection, u: &UploadId) -> Result<(u64, u64)> {
    let mut st = c.prepare_cached("SELECT entries FROM segments WHERE upload_id = ?1")?;
    let mut rows = st.query([&u.0[..]])?;
    let (mut segs, mut bytes) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        segs += 1;
        bytes += decode_segment_entries(&r.get::<_, Vec<u8>>(0)?)?
            .iter()
            .map(|e| e.1 as u64)
            .sum::<u64>();
    }
    Ok((segs, bytes))
}
