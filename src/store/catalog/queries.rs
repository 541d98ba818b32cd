//! Catalog queries. Plain functions over a connection or transaction, so they compose into one transaction.

use rusqlite::{Connection, OptionalExtension, params};

use crate::core::container::Codec;
use crate::core::follow::NextChunk;
use crate::core::ids::{ChunkId, ContainerId, DiskId, IdMap, UploadId};
use crate::core::records::{SourceRef, decode_segment_entries};
use crate::store::api::{BucketInfo, ObjectInfo, ObjectMeta};
use crate::store::dedup::ChunkLocation;
use crate::store::error::{Result, StoreError};

// ---------- meta ----------

pub fn meta_get(c: &Connection, key: &str) -> Result<Option<String>> {
    Ok(
        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?,
    )
}

pub fn meta_set(c: &Connection, key: &str, value: &str) -> Result<()> {
    c.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

// ---------- disks ----------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRow {
    pub id: DiskId,
    pub path: String,
    pub state: String,
    pub shards: u64,
    pub bytes: u64,
}

pub fn list_disks(c: &Connection) -> Result<Vec<DiskRow>> {
    let mut st = c.prepare("SELECT id, path, state, shards, bytes FROM disks ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok(DiskRow {
            id: DiskId(r.get(0)?),
            path: r.get(1)?,
            state: r.get(2)?,
            shards: r.get::<_, i64>(3)? as u64,
            bytes: r.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn insert_disk(c: &Connection, path: &str, state: &str, now_ms: u64) -> Result<DiskId> {
    c.execute(
        "INSERT INTO disks(path, state, added_unix_ms) VALUES (?1, ?2, ?3)",
        params![path, state, now_ms as i64],
    )?;
    Ok(DiskId(c.last_insert_rowid() as u32))
}

pub fn insert_disk_with_id(
    c: &Connection,
    id: DiskId,
    path: &str,
    state: &str,
    now_ms: u64,
) -> Result<()> {
    c.execute(
        "INSERT INTO disks(id, path, state, added_unix_ms) VALUES (?1, ?2, ?3, ?4)",
        params![id.0, path, state, now_ms as i64],
    )?;
    Ok(())
}

pub fn set_disk_state(c: &Connection, id: DiskId, state: &str) -> Result<()> {
    c.execute(
        "UPDATE disks SET state = ?2 WHERE id = ?1",
        params![id.0, state],
    )?;
    Ok(())
}

// ---------- containers and shards ----------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: ContainerId,
    pub k: u8,
    pub m: u8,
    pub len: u64,
    pub shard_len: u64,
    pub created_unix_ms: u64,
    /// Disk of shard i, for i in 0..k+m (None if the catalog lost track of it).
    pub disks: Vec<Option<DiskId>>,
}

pub fn insert_container(c: &Connection, row: &ContainerRow) -> Result<()> {
    c.execute(
        "INSERT INTO containers(id, k, m, len, shard_len, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![row.id.0 as i64, row.k, row.m, row.len as i64, row.shard_len as i64, row.created_unix_ms as i64],
    )?;
    let mut st =
        c.prepare_cached("INSERT INTO shards(container_id, idx, disk_id) VALUES (?1, ?2, ?3)")?;
    let mut load =
        c.prepare_cached("UPDATE disks SET shards = shards + 1, bytes = bytes + ?2 WHERE id = ?1")?;
    for (i, d) in row.disks.iter().enumerate() {
        if let Some(d) = d {
            st.execute(params![row.id.0 as i64, i as i64, d.0])?;
            load.execute(params![
                d.0,
                row.shard_len as i64
                    + (crate::core::shard::SHARD_HEADER_LEN + crate::core::shard::SHARD_TRAILER_LEN)
                        as i64
            ])?;
        }
    }
    Ok(())
}

pub fn get_container(c: &Connection, id: ContainerId) -> Result<Option<ContainerRow>> {
    let mut st = c.prepare_cached(
        "SELECT k, m, len, shard_len, created_unix_ms FROM containers WHERE id = ?1",
    )?;
    let row = st
        .query_row([id.0 as i64], |r| {
            Ok(ContainerRow {
                id,
                k: r.get(0)?,
                m: r.get(1)?,
                len: r.get::<_, i64>(2)? as u64,
                shard_len: r.get::<_, i64>(3)? as u64,
                created_unix_ms: r.get::<_, i64>(4)? as u64,
                disks: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut row) = row else { return Ok(None) };
    row.disks = vec![None; row.k as usize + row.m as usize];
    let mut st = c.prepare_cached("SELECT idx, disk_id FROM shards WHERE container_id = ?1")?;
    let mut rows = st.query([id.0 as i64])?;
    while let Some(r) = rows.next()? {
        let idx: i64 = r.get(0)?;
        if let Some(slot) = row.disks.get_mut(idx as usize) {
            *slot = Some(DiskId(r.get(1)?));
        }
    }
    Ok(Some(row))
}

pub fn max_container_id(c: &Connection) -> Result<u64> {
    Ok(
        c.query_row("SELECT COALESCE(MAX(id), 0) FROM containers", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

pub fn add_event(
    c: &Connection,
    now_ms: u64,
    kind: &str,
    container: Option<ContainerId>,
    detail: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO events(at_unix_ms, kind, container_id, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms as i64, kind, container.map(|x| x.0 as i64), detail],
    )?;
    Ok(())
}

/// Where the chunker's parameters (`min/avg/max`) that cut the recorded successors are kept.
const SUCCESSOR_CHUNKER_KEY: &str = "successor_chunker";

/// Makes the recorded successors (`chunk_refs.next`) those of chunker `params`: a successor says where a
/// chunker with the parameters of its day cut, and following one cut with other parameters would place cuts
/// that scanning with today's does not (costing dedup). So when the parameters change, every recorded
/// successor is forgotten, once, at the first open with the new ones. Returns how many were forgotten.
pub fn keep_successors_of_chunker(c: &Connection, params: &str) -> Result<usize> {
    let forgotten = match meta_get(c, SUCCESSOR_CHUNKER_KEY)? {
        Some(recorded) if recorded == params => return Ok(0),
        // Every version that records successors sets the key at open, before its first seal: a catalog
        // without it (new, migrated to version 4 just now, or rebuilt) has none, so no pass over what may
        // be 10^9 rows at the first start after an upgrade.
        None => 0,
        Some(_) => c.execute("UPDATE chunk_refs SET next = 0 WHERE next != 0", [])?,
    };
    meta_set(c, SUCCESSOR_CHUNKER_KEY, params)?;
    Ok(forgotten)
}

// ---------- MD5 checkpoints ----------

/// The recorded MD5 state (`Md5State::to_bytes`) of streams whose chunk ids so far have this fingerprint.
pub fn md5_checkpoint(c: &Connection, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
    Ok(
        c.prepare_cached("SELECT state FROM md5_checkpoints WHERE fingerprint = ?1")?
            .query_row([&fingerprint[..]], |r| r.get(0))
            .optional()?,
    )
}

/// Records checkpoint states (a fingerprint already recorded keeps its state: equal fingerprints mean equal
/// bytes) and lets the oldest beyond the last `keep` go.
pub fn save_md5_checkpoints(
    c: &Connection,
    states: &[([u8; 32], Vec<u8>)],
    keep: u64,
) -> Result<()> {
    if states.is_empty() {
        return Ok(());
    }
    let mut st = c.prepare_cached(
        "INSERT OR IGNORE INTO md5_checkpoints(fingerprint, state) VALUES (?1, ?2)",
    )?;
    for (fingerprint, state) in states {
        st.execute(params![&fingerprint[..], state])?;
    }
    c.prepare_cached(
        "DELETE FROM md5_checkpoints WHERE seq <= (SELECT MAX(seq) FROM md5_checkpoints) - ?1",
    )?
    .execute([keep as i64])?;
    Ok(())
}

// ---------- chunks ----------

/// Inserts a chunk row with refs = 0 unless the id is already indexed (a concurrent upload stored the same
/// chunk first; ours stays in our container as unreferenced bytes that compaction reclaims). Returns whether
/// the row was inserted.
pub fn insert_chunk(c: &Connection, id: &ChunkId, loc: &ChunkLocation) -> Result<bool> {
    insert_chunk_with_refs(c, id, loc, 0, 0)
}

/// `insert_chunk` with the chunk's refs starting at `refs`: its `chunks` row (where it is) and its
/// `chunk_refs` row (how often segments name it, next to its container's other chunks).
fn insert_chunk_with_refs(
    c: &Connection,
    id: &ChunkId,
    loc: &ChunkLocation,
    refs: i64,
    next: u64,
) -> Result<bool> {
    let mut st = c.prepare_cached(
        "INSERT OR IGNORE INTO chunks(id, container_id, offset, stored_len, raw_len, codec, group_offset, group_raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let n = st.execute(params![
        &id.0[..],
        loc.container.0 as i64,
        loc.offset as i64,
        loc.stored_len,
        loc.raw_len,
        loc.codec as u8,
        loc.group.map_or(0, |g| g.offset),
        loc.group.map_or(0, |g| g.group_raw),
    ])?;
    if n != 1 {
        return Ok(false);
    }
    c.prepare_cached(
        "INSERT INTO chunk_refs(container_id, id, refs, next) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        loc.container.0 as i64,
        &id.0[..],
        refs,
        next as i64
    ])?;
    Ok(true)
}

/// Chunk `prev` (in container `home`, where the upload knows it) was followed by `next` in a stream
/// (core::follow): recorded in `prev`'s `chunk_refs.next` in the transaction that seals the segment naming
/// `next`, so a later process can follow the same sequence (storage-format.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Successor {
    pub prev: ChunkId,
    pub home: Option<ContainerId>,
    pub next: NextChunk,
}

/// One chunk a segment names: how often, and the container the upload found it in, when it knows (the update
/// of its `chunk_refs` row then reads nothing else; at 10^9 chunks a read of its `chunks` row would be a
/// random page of an index far bigger than RAM, per repeated chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRefs {
    pub id: ChunkId,
    pub times: i64,
    pub home: Option<ContainerId>,
}

/// The references a segment adds: its distinct chunk ids in ascending order, each with how often the segment
/// names it (see `insert_chunks_with_refs`), and no known container.
pub fn segment_refs(entries: &[(ChunkId, u32)]) -> Vec<ChunkRefs> {
    segment_refs_with_homes(entries, &[])
}

/// `segment_refs` with the container of each entry where the upload knows it (`homes[i]` for `entries[i]`;
/// shorter `homes` leave the rest unknown).
pub fn segment_refs_with_homes(
    entries: &[(ChunkId, u32)],
    homes: &[Option<ContainerId>],
) -> Vec<ChunkRefs> {
    let mut named: Vec<(ChunkId, Option<ContainerId>)> = entries
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, homes.get(i).copied().flatten()))
        .collect();
    named.sort_unstable_by_key(|(id, _)| *id);
    let mut merged: Vec<ChunkRefs> = Vec::with_capacity(named.len());
    for (id, home) in named {
        match merged.last_mut() {
            Some(last) if last.id == id => {
                last.times += 1;
                last.home = last.home.or(home);
            }
            _ => merged.push(ChunkRefs { id, times: 1, home }),
        }
    }
    merged
}

/// Inserts a sealed container's new chunk rows and adds the references of the segment sealed with it
/// (`refs`, from `segment_refs*`), in id order. A new chunk's rows start with the references the segment gives
/// it: a chunk is new where a stream first names it, so nearly always in the segment sealed with its own
/// container, and its `chunk_refs` row is then inserted with its count instead of inserted and updated
/// (unique ingest wrote each chunk row twice). The segment's other ids (duplicates, chunks of the upload's
/// earlier containers, and rows a concurrent upload inserted first, which `INSERT OR IGNORE` keeps) are
/// updated in place: by (container, id) where the upload knew the container, else through the chunk's
/// `chunks` row. Returns the ids whose rows were inserted, ascending.
pub fn insert_chunks_with_refs(
    c: &Connection,
    new_chunks: &[(ChunkId, ChunkLocation)],
    refs: &[ChunkRefs],
    successors: &[Successor],
) -> Result<Vec<ChunkId>> {
    let refs_of = |id: &ChunkId| {
        refs.binary_search_by_key(id, |r| r.id)
            .map_or(0, |at| refs[at].times)
    };
    // The successor of each chunk (the stream's latest, where it names a chunk twice), written with the row
    // the segment inserts or updates anyway; what is left names chunks of earlier segments (the one before a
    // container's first entry) and is written on its own below.
    let mut next_of: IdMap<ChunkId, (Option<ContainerId>, NextChunk)> = successors
        .iter()
        .map(|s| (s.prev, (s.home, s.next)))
        .collect();
    let mut sorted: Vec<&(ChunkId, ChunkLocation)> = new_chunks.iter().collect();
    sorted.sort_unstable_by_key(|(id, _)| *id);
    let mut inserted = Vec::with_capacity(sorted.len());
    for (id, loc) in sorted {
        let next = next_of.get(id).map_or(0, |(_, n)| n.word());
        if insert_chunk_with_refs(c, id, loc, refs_of(id), next)? {
            next_of.remove(id);
            inserted.push(*id);
        }
    }
    let mut by_home = c.prepare_cached(ADD_REFS_IN)?;
    let mut by_id = c.prepare_cached(ADD_REFS)?;
    for r in refs {
        if inserted.binary_search(&r.id).is_ok() {
            continue;
        }
        // A stale or missing home (a concurrent upload indexed the chunk in its own container first) falls
        // back to the lookup through `chunks`.
        if let Some(home) = r.home {
            let next = next_of.get(&r.id).map_or(0, |(_, n)| n.word());
            if by_home.execute(params![home.0 as i64, &r.id.0[..], r.times, next as i64])? == 1 {
                next_of.remove(&r.id);
                continue;
            }
        }
        add_refs(&mut by_id, &r.id, r.times)?;
    }
    let mut next_in = c.prepare_cached(SET_NEXT_IN)?;
    let mut next_by_id = c.prepare_cached(SET_NEXT)?;
    for (prev, (home, next)) in next_of {
        // A hint: a chunk whose row is gone (or never was) just has none.
        let done = match home {
            Some(home) => {
                next_in.execute(params![home.0 as i64, &prev.0[..], next.word() as i64])? == 1
            }
            None => false,
        };
        if !done {
            next_by_id.execute(params![&prev.0[..], next.word() as i64])?;
        }
    }
    Ok(inserted)
}

pub fn get_chunk(c: &Connection, id: &ChunkId) -> Result<Option<ChunkLocation>> {
    let mut st = c.prepare_cached(
        "SELECT container_id, offset, stored_len, raw_len, codec, group_offset, group_raw FROM chunks WHERE id = ?1",
    )?;
    let row = st
        .query_row([&id.0[..]], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u8>(4)?,
                crate::store::dedup::group_slot(r.get(5)?, r.get(6)?),
            ))
        })
        .optional()?;
    let Some((cid, off, stored, raw, codec, group)) = row else {
        return Ok(None);
    };
    let codec = Codec::from_u8(codec).ok_or_else(|| {
        StoreError::Config(format!("catalog: chunk {id} has unknown codec {codec}"))
    })?;
    Ok(Some(ChunkLocation {
        container: ContainerId(cid as u64),
        offset: off as u64,
        stored_len: stored,
        raw_len: raw,
        codec,
        group,
    }))
}

/// Adds `delta` to the refs of every chunk a segment names, once per entry. The updates go in id order and
/// repeats are merged (one update of `delta * n` for an id named n times: zero blocks of a VM image repeat
/// thousands of times): ids are random, so in stream order every update seeks a random leaf of the chunk
/// index, and at scale, where the index outgrows the page cache, sorted updates share the leaves they touch.
pub fn add_chunk_refs(c: &Connection, entries: &[(ChunkId, u32)], delta: i64) -> Result<()> {
    let mut st = c.prepare_cached(ADD_REFS)?;
    for r in segment_refs(entries) {
        add_refs(&mut st, &r.id, delta * r.times)?;
    }
    Ok(())
}

/// The chunk's container comes from its `chunks` row (a read); the update itself lands in `chunk_refs` next to
/// the container's other chunks, which a repeated stream names one after another.
const ADD_REFS: &str = "UPDATE chunk_refs SET refs = refs + ?2
     WHERE container_id = (SELECT container_id FROM chunks WHERE id = ?1) AND id = ?1";
/// `ADD_REFS` where the container is known, also recording the chunk's successor unless ?4 is 0 (none known).
const ADD_REFS_IN: &str =
    "UPDATE chunk_refs SET refs = refs + ?3, next = CASE ?4 WHEN 0 THEN next ELSE ?4 END
     WHERE container_id = ?1 AND id = ?2";
/// A chunk's successor alone, where its container is known, or through its `chunks` row.
const SET_NEXT_IN: &str = "UPDATE chunk_refs SET next = ?3 WHERE container_id = ?1 AND id = ?2";
const SET_NEXT: &str = "UPDATE chunk_refs SET next = ?2
     WHERE container_id = (SELECT container_id FROM chunks WHERE id = ?1) AND id = ?1";

/// Runs `ADD_REFS` for one id; a segment naming a chunk the index lacks is a catalog integrity error.
fn add_refs(st: &mut rusqlite::CachedStatement<'_>, id: &ChunkId, delta: i64) -> Result<()> {
    if st.execute(params![&id.0[..], delta])? != 1 {
        return Err(StoreError::Config(format!(
            "catalog integrity: segment references unknown chunk {id}"
        )));
    }
    Ok(())
}

// ---------- uploads and segments ----------

pub fn upsert_upload_open(c: &Connection, id: &UploadId, now_ms: u64) -> Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO uploads(id, state, refs, size, segments, created_unix_ms) VALUES (?1, 'open', 0, 0, 0, ?2)",
        params![&id.0[..], now_ms as i64],
    )?;
    Ok(())
}

pub fn insert_segment(
    c: &Connection,
    upload: &UploadId,
    segment_no: u32,
    logical_start: u64,
    container: ContainerId,
    entries_blob: &[u8],
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO segments(upload_id, segment_no, logical_start, container_id, entries) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![&upload.0[..], segment_no, logical_start as i64, container.0 as i64, entries_blob])?;
    c.prepare_cached("UPDATE uploads SET segments = segments + 1 WHERE id = ?1")?
        .execute([&upload.0[..]])?;
    Ok(())
}

pub fn seal_upload(
    c: &Connection,
    id: &UploadId,
    size: u64,
    md5: &[u8; 16],
    refs: i64,
) -> Result<()> {
    let n = c.execute(
        "UPDATE uploads SET state = 'sealed', size = ?2, md5 = ?3, refs = ?4 WHERE id = ?1",
        params![&id.0[..], size as i64, &md5[..], refs],
    )?;
    if n != 1 {
        return Err(StoreError::Config(format!(
            "catalog integrity: upload {} missing at seal",
            id.to_hex()
        )));
    }
    Ok(())
}

/// Segment numbers and logical starts of an upload, with their entries blob.
pub struct SegmentRow {
    pub segment_no: u32,
    pub logical_start: u64,
    pub entries: Vec<(ChunkId, u32)>,
}

/// The segment holding logical offset `off` of the upload.
pub fn find_segment(c: &Connection, upload: &UploadId, off: u64) -> Result<Option<SegmentRow>> {
    let mut st = c.prepare_cached(
        "SELECT segment_no, logical_start, entries FROM segments
         WHERE upload_id = ?1 AND logical_start <= ?2 ORDER BY logical_start DESC, segment_no DESC LIMIT 1",
    )?;
    segment_query(&mut st, params![&upload.0[..], off as i64])
}

pub fn get_segment(
    c: &Connection,
    upload: &UploadId,
    segment_no: u32,
) -> Result<Option<SegmentRow>> {
    let mut st = c.prepare_cached(
        "SELECT segment_no, logical_start, entries FROM segments WHERE upload_id = ?1 AND segment_no = ?2",
    )?;
    segment_query(&mut st, params![&upload.0[..], segment_no])
}

fn segment_query(
    st: &mut rusqlite::CachedStatement<'_>,
    p: impl rusqlite::Params,
) -> Result<Option<SegmentRow>> {
    let row = st
        .query_row(p, |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .optional()?;
    let Some((segment_no, start, blob)) = row else {
        return Ok(None);
    };
    Ok(Some(SegmentRow {
        segment_no,
        logical_start: start as u64,
        entries: decode_segment_entries(&blob)?,
    }))
}

/// Adds `delta` to an upload's object references; at 0 the upload is released (its chunk refs dropped and its
/// segments deleted). Returns the new count.
pub fn add_upload_refs(c: &Connection, id: &UploadId, delta: i64) -> Result<i64> {
    let refs: Option<i64> = c
        .query_row(
            "UPDATE uploads SET refs = refs + ?2 WHERE id = ?1 RETURNING refs",
            params![&id.0[..], delta],
            |r| r.get(0),
        )
        .optional()?;
    let Some(refs) = refs else {
        return Err(StoreError::Config(format!(
            "catalog integrity: unknown upload {}",
            id.to_hex()
        )));
    };
    if refs <= 0 {
        release_upload(c, id)?;
    }
    Ok(refs)
}

/// Drops an upload: decrements the refs of every chunk its segments name, deletes segments and the row.
pub fn release_upload(c: &Connection, id: &UploadId) -> Result<()> {
    let blobs: Vec<Vec<u8>> = {
        let mut st = c.prepare_cached("SELECT entries FROM segments WHERE upload_id = ?1")?;
        st.query_map([&id.0[..]], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for b in blobs {
        add_chunk_refs(c, &decode_segment_entries(&b)?, -1)?;
    }
    c.execute("DELETE FROM segments WHERE upload_id = ?1", [&id.0[..]])?;
    c.execute("DELETE FROM uploads WHERE id = ?1", [&id.0[..]])?;
    Ok(())
}

/// Uploads no object or part uses (left by a crash or a dropped request).
pub fn orphan_uploads(c: &Connection) -> Result<Vec<UploadId>> {
    let mut st = c.prepare("SELECT id FROM uploads WHERE refs <= 0")?;
    let ids = st
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .filter_map(|b| b.ok().and_then(|b| b.try_into().ok()).map(UploadId))
        .collect();
    Ok(ids)
}

pub fn upload_md5(c: &Connection, id: &UploadId) -> Result<Option<([u8; 16], u64)>> {
    let row: Option<(Option<Vec<u8>>, i64)> = c
        .query_row(
            "SELECT md5, size FROM uploads WHERE id = ?1",
            [&id.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(m, s)| m.and_then(|m| m.try_into().ok()).map(|m| (m, s as u64))))
}

// ---------- buckets ----------

pub fn get_bucket(c: &Connection, name: &str) -> Result<Option<BucketInfo>> {
    Ok(
        c.prepare_cached("SELECT created_unix_ms FROM buckets WHERE name = ?1")?
            .query_row([name], |r| {
                Ok(BucketInfo {
                    name: name.to_string(),
                    created_unix_ms: r.get::<_, i64>(0)? as u64,
                })
            })
            .optional()?,
    )
}

pub fn list_buckets(c: &Connection) -> Result<Vec<BucketInfo>> {
    let mut st = c.prepare("SELECT name, created_unix_ms FROM buckets ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok(BucketInfo {
            name: r.get(0)?,
            created_unix_ms: r.get::<_, i64>(1)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---------- objects ----------

pub struct ObjectRow {
    pub info: ObjectInfo,
    pub sources: Vec<SourceRef>,
}

const OBJECT_COLS: &str = "bucket, key, seq, size, created_unix_ms, meta_json, sources_json";

fn object_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ObjectInfo, String, String)> {
    Ok((
        ObjectInfo {
            bucket: r.get(0)?,
            key: r.get(1)?,
            seq: r.get::<_, i64>(2)? as u64,
            size: r.get::<_, i64>(3)? as u64,
            created_unix_ms: r.get::<_, i64>(4)? as u64,
            meta: ObjectMeta::default(),
            part_sizes: Vec::new(),
        },
        r.get(5)?,
        r.get(6)?,
    ))
}

fn finish_object_row((mut info, meta, sources): (ObjectInfo, String, String)) -> Result<ObjectRow> {
    info.meta = serde_json::from_str(&meta).map_err(|e| {
        StoreError::Config(format!(
            "catalog: bad meta_json for {}/{}: {e}",
            info.bucket, info.key
        ))
    })?;
    let sources: Vec<SourceRef> = serde_json::from_str(&sources).map_err(|e| {
        StoreError::Config(format!(
            "catalog: bad sources_json for {}/{}: {e}",
            info.bucket, info.key
        ))
    })?;
    info.part_sizes = sources.iter().map(|s| s.size).collect();
    Ok(ObjectRow { info, sources })
}

pub fn get_object(c: &Connection, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {OBJECT_COLS} FROM objects WHERE bucket = ?1 AND key = ?2"
        ))?
        .query_row([bucket, key], object_from_row)
        .optional()?;
    row.map(finish_object_row).transpose()
}

pub fn put_object_row(c: &Connection, info: &ObjectInfo, sources: &[SourceRef]) -> Result<()> {
    let meta = serde_json::to_string(&info.meta).map_err(|e| StoreError::Config(e.to_string()))?;
    let src = serde_json::to_string(sources).map_err(|e| StoreError::Config(e.to_string()))?;
    c.prepare_cached(&format!(
        "INSERT INTO objects({OBJECT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(bucket, key) DO UPDATE SET seq = excluded.seq, size = excluded.size,
         created_unix_ms = excluded.created_unix_ms, meta_json = excluded.meta_json, sources_json = excluded.sources_json"
    ))?
    .execute(params![
        info.bucket,
        info.key,
        info.seq as i64,
        info.size as i64,
        info.created_unix_ms as i64,
        meta,
        src
    ])?;
    Ok(())
}

pub fn delete_object_row(c: &Connection, bucket: &str, key: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM objects WHERE bucket = ?1 AND key = ?2")?
        .execute([bucket, key])?;
    Ok(())
}

/// Up to `limit` objects with `key > after` and the prefix, in byte order.
pub fn list_object_rows(
    c: &Connection,
    bucket: &str,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<ObjectRow>> {
    // Range scan on the primary key: key >= prefix (and > after), stop at the first key without the prefix.
    let lower = if after >= prefix { after } else { prefix };
    let inclusive = after < prefix;
    let sql = format!(
        "SELECT {OBJECT_COLS} FROM objects WHERE bucket = ?1 AND key {} ?2 ORDER BY key LIMIT ?3",
        if inclusive { ">=" } else { ">" }
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params![bucket, lower, limit as i64], object_from_row)?;
    let mut out = Vec::new();
    for r in rows {
        let r = r?;
        if !r.0.key.starts_with(prefix) {
            break;
        }
        out.push(finish_object_row(r)?);
    }
    Ok(out)
}

pub fn bucket_has_objects(c: &Connection, bucket: &str) -> Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM objects WHERE bucket = ?1 LIMIT 1",
        [bucket],
        |_| Ok(()),
    )
    .optional()?
    .is_some()
        || c.query_row(
            "SELECT 1 FROM multipart WHERE bucket = ?1 LIMIT 1",
            [bucket],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Objects whose data lives (partly) in `container`: for error messages naming what a lost container affects.
pub fn objects_using_container(
    c: &Connection,
    container: ContainerId,
    limit: usize,
) -> Result<Vec<String>> {
    let mut st = c.prepare(
        "SELECT DISTINCT o.bucket || '/' || o.key FROM objects o, json_each(o.sources_json) s, segments g, chunk_refs ch
         WHERE g.upload_id = unhex(json_extract(s.value, '$.upload_id'))
           AND ch.container_id = ?1
           AND instr(g.entries, ch.id) > 0
         LIMIT ?2",
    )?;
    let rows = st.query_map(params![container.0 as i64, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
