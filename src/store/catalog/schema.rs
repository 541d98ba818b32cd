//! Catalog schema (storage-format.md §7). Migrations key off `PRAGMA user_version`: a new catalog runs
//! every step from version 1, an older one the steps it lacks, so both end with identical tables.

pub const SCHEMA_VERSION: i64 = 5;

/// The whole current schema, as a new catalog gets it: version 1 and every migration (for tests and benches that
/// build a catalog of their own).
pub fn current() -> String {
    let mut all = String::from(SCHEMA_V1);
    for step in MIGRATIONS {
        all.push_str(step);
    }
    all
}

/// Steps from version `i + 1` to `i + 2`.
pub const MIGRATIONS: &[&str] = &[
    MIGRATE_V1_TO_V2,
    MIGRATE_V2_TO_V3,
    MIGRATE_V3_TO_V4,
    MIGRATE_V4_TO_V5,
];

/// Version 5 changes no table: it marks a store whose `containers` may hold a k narrower than the store's
/// (k = 1 included), as small containers are sealed from then on (storage-format.md §6). A Cairn from before
/// reads such shards as malformed, so the version keeps it from opening the store ("upgrade cairn") instead
/// of finding those containers lost.
pub const MIGRATE_V4_TO_V5: &str = "";

/// Version 4: `chunk_refs.next`, the chunk that followed this one the last time a stream wrote or named it
/// (core::follow's `NextChunk` word: its length - 1 in the low 24 bits, 40 bits of its id above; 0 = none
/// known). A repeated stream is then cut by following it whether or not this process saw the first copy:
/// a container's successors come into the sequence memo with its ids when the dedup index loads it. Only a
/// hint: a wrong one costs a hash, never a cut scanning would not make (core::follow), never data.
///
/// And `md5_checkpoints`: the MD5 state of a stream at a content-defined checkpoint, under the fingerprint of
/// its chunk ids so far (store::md5_lanes), so a repeated stream takes its ETag's MD5 state from here instead
/// of hashing again, after a restart too. `seq` orders them by age: the oldest beyond the last
/// `MD5_CHECKPOINTS_KEPT` go (a hint too: a missing one costs hashing).
pub const MIGRATE_V3_TO_V4: &str = r#"
ALTER TABLE chunk_refs ADD COLUMN next INTEGER NOT NULL DEFAULT 0;
CREATE TABLE md5_checkpoints(
    seq INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL UNIQUE,
    state BLOB NOT NULL
);
"#;

/// Version 2: chunks inside a group (storage-format.md §4.5). `offset`/`stored_len` then locate the group's
/// zstd frame, `group_offset` is the chunk's offset in the decompressed group and `group_raw` the group's
/// decompressed size; 0/0 for a chunk stored in its own entry.
pub const MIGRATE_V1_TO_V2: &str = r#"
ALTER TABLE chunks ADD COLUMN group_offset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chunks ADD COLUMN group_raw INTEGER NOT NULL DEFAULT 0;
"#;

/// Version 3: a chunk's references move from its `chunks` row to `chunk_refs`, keyed by (container, chunk):
/// the rows of one container's chunks sit side by side. A repeated stream names the chunks of the containers
/// its first copy filled, in order, so its reference increments land in a few pages of `chunk_refs` per
/// container instead of one random leaf of `chunks` each (a second full of 2 GB wrote ~200 MB of WAL for
/// them). `chunk_refs` also replaces the `chunks_by_container` index (same key), so a container's chunks are
/// still one range scan, and compaction will read a container's live references there.
pub const MIGRATE_V2_TO_V3: &str = r#"
CREATE TABLE chunk_refs(
    container_id INTEGER NOT NULL,
    id BLOB NOT NULL,
    refs INTEGER NOT NULL,
    PRIMARY KEY(container_id, id)
) WITHOUT ROWID;
INSERT INTO chunk_refs(container_id, id, refs) SELECT container_id, id, refs FROM chunks ORDER BY container_id, id;
DROP INDEX chunks_by_container;
ALTER TABLE chunks DROP COLUMN refs;
"#;

pub const SCHEMA_V1: &str = r#"
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE disks(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    added_unix_ms INTEGER NOT NULL,
    shards INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE containers(
    id INTEGER PRIMARY KEY,
    k INTEGER NOT NULL,
    m INTEGER NOT NULL,
    len INTEGER NOT NULL,
    shard_len INTEGER NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    last_verified_unix_ms INTEGER
);
CREATE TABLE shards(
    container_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    disk_id INTEGER NOT NULL,
    PRIMARY KEY(container_id, idx)
) WITHOUT ROWID;
CREATE INDEX shards_by_disk ON shards(disk_id, container_id);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    container_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    refs INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX chunks_by_container ON chunks(container_id);
CREATE TABLE uploads(
    id BLOB PRIMARY KEY,
    state TEXT NOT NULL,
    refs INTEGER NOT NULL,
    size INTEGER NOT NULL,
    segments INTEGER NOT NULL,
    md5 BLOB,
    created_unix_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE segments(
    upload_id BLOB NOT NULL,
    segment_no INTEGER NOT NULL,
    logical_start INTEGER NOT NULL,
    container_id INTEGER NOT NULL,
    entries BLOB NOT NULL,
    PRIMARY KEY(upload_id, segment_no)
) WITHOUT ROWID;
CREATE INDEX segments_by_offset ON segments(upload_id, logical_start);
CREATE TABLE buckets(name TEXT PRIMARY KEY, created_unix_ms INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE objects(
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    meta_json TEXT NOT NULL,
    sources_json TEXT NOT NULL,
    PRIMARY KEY(bucket, key)
) WITHOUT ROWID;
CREATE TABLE multipart(
    id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    initiated_unix_ms INTEGER NOT NULL,
    meta_json TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX multipart_by_key ON multipart(bucket, key, id);
CREATE TABLE parts(
    mpu_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    upload_id BLOB NOT NULL,
    size INTEGER NOT NULL,
    md5 BLOB NOT NULL,
    checksums_json TEXT NOT NULL,
    modified_unix_ms INTEGER NOT NULL,
    PRIMARY KEY(mpu_id, part_number)
) WITHOUT ROWID;
CREATE TABLE events(
    id INTEGER PRIMARY KEY,
    at_unix_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    container_id INTEGER,
    disk_id INTEGER,
    detail TEXT NOT NULL
);
"#;
