//! The in-memory front of the chunk index (storage-format.md §7), built for 10^9 chunks.
//!
//! A dedup lookup must not cost a random disk read per chunk. Following Data Domain (Zhu et al., FAST 2008):
//! 1. A Bloom filter over every indexed chunk id (~9.6 bits per chunk, 7 probes, ~1% false positives)
//!    answers "surely new" from RAM; new data, the common case on a first backup, never touches SQLite.
//! 2. A container-locality cache: when a lookup finds chunk X in container C, the ids of all chunks of C are
//!    loaded (one indexed query) into an LRU of containers, because the next chunks of a repeated backup were
//!    written next to X and sit in C too. Duplicate streams then cost about one query per container, not one
//!    per chunk.
//! 3. Everything else (Bloom false positives, the first chunk of each container) is one indexed SELECT.
//!
//! The Bloom filter is add-only: ids of chunks deleted by compaction stay in it as extra false positives until
//! the next start, when [`DedupIndex::load`] rebuilds it from the table. That costs a query, never a wrong
//! answer: the filter only ever says "surely new" for ids that are not in the table. A chunk committed
//! between a lookup and [`DedupIndex::note_inserted`] is at worst stored twice (the catalog's `INSERT OR
//! IGNORE` keeps the first row; compaction reclaims the second copy).
//!
//! Compaction (§10) must call [`DedupIndex::forget_container`] for every container it retires, and the
//! transaction that adds references to a deduplicated chunk must check that its row still exists: the cache
//! may briefly name a chunk that compaction just dropped.
//!
//! 4. The sequence memo (core::follow): which chunk followed which, from this process's streams and, loaded
//!    with a container's ids, from the catalog's `chunk_refs.next`. A repeated stream is cut by following it,
//!    whether its first copy was written an hour ago or before the last restart.
//!
//! Concurrency: the Bloom filter is lock-free (atomic words), the cache sits behind one mutex held only for
//! hash-map work, never across a SQLite query. `Send + Sync`; each thread passes its own connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rusqlite::{Connection, OptionalExtension, Row};

use crate::core::container::{Codec, GroupSlot};
use crate::core::follow::{NextChunk, SequenceMemo};
use crate::core::ids::{ChunkId, ContainerId, IdMap};
use crate::store::catalog::Catalog;

/// Entries per generation of the sequence memo (core::follow): two tables of 2^20 slots of 16 bytes, 32 MiB
/// allocated at open, remembering the last ~0.9-1.8 M chunks (~22-44 GB of streams at the default 24 KiB
/// average chunk) between loads from the catalog.
pub const SEQUENCE_MEMO_GENERATION: usize = (1 << 20) / 8 * 7;

/// Where a chunk's payload is (storage-format.md §4, §7 `chunks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub container: ContainerId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    /// Set when the chunk is a member of a group (§4.5): `offset`/`stored_len` locate the group's frame.
    pub group: Option<GroupSlot>,
}

/// Counters since creation (all lookups, whichever way they were answered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupStats {
    pub lookups: u64,
    /// Answered "new" by the Bloom filter alone.
    pub bloom_negatives: u64,
    /// Answered from the locality cache.
    pub cache_hits: u64,
    /// Lookups that ran the point SELECT.
    pub db_lookups: u64,
    /// ... and found the chunk (db_lookups - db_hits = Bloom false positives).
    pub db_hits: u64,
    /// Containers loaded into the cache by lookups.
    pub container_loads: u64,
    pub bloom_bytes: u64,
    /// Ids added to the Bloom filter (re-adds counted again) vs. the count it was sized for; past capacity
    /// the false-positive rate climbs, and the next start re-sizes it.
    pub bloom_items: u64,
    pub bloom_capacity: u64,
    pub cached_containers: u64,
    pub cached_chunks: u64,
}

/// The Bloom filter never sizes below this many chunks (1.2 MB).
pub const MIN_BLOOM_CHUNKS: u64 = 1_000_000;
/// -ln(0.01) / ln(2)^2: bits per item for a 1% false-positive rate.
const BITS_PER_ITEM: f64 = 9.585;
/// Probes per id. Optimal is 9.585 * ln 2 = 6.6.
const PROBES: usize = 7;
/// Startup sizing (see [`DedupIndex::load`]): catalog bytes per chunk row. benches/dedup_index.rs measures
/// ~107 (row in the WITHOUT ROWID table + its `chunk_refs` row); other tables only make the
/// estimate larger, i.e. err towards more RAM and fewer false positives, never towards an overfull filter.
const CATALOG_BYTES_PER_CHUNK: u64 = 100;

struct Bloom {
    words: Box<[AtomicU64]>,
    bits: u64,
    capacity: u64,
    items: AtomicU64,
}

impl Bloom {
    fn new(expected: u64) -> Bloom {
        let capacity = expected.max(MIN_BLOOM_CHUNKS);
        let bits = ((capacity as f64 * BITS_PER_ITEM).ceil() as u64).div_ceil(64) * 64;
        Bloom {
            words: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
            bits,
            capacity,
            items: AtomicU64::new(0),
        }
    }

    /// The probe positions. A chunk id is already a uniform hash, so no hashing: probe `i` reduces the 64-bit
    /// window at byte `4i` onto `0..bits` by multiply-shift, which depends on the window's high half, i.e. on
    /// the id's 32-bit word `i + 1`: seven probes, seven independent words.
    fn positions(&self, id: &ChunkId) -> [u64; PROBES] {
        let b = id.as_bytes();
        std::array::from_fn(|i| {
            let w = u64::from_le_bytes(b[4 * i..4 * i + 8].try_into().expect("8 bytes"));
            ((u128::from(w) * u128::from(self.bits)) >> 64) as u64
        })
    }

    fn insert(&self, id: &ChunkId) {
        for p in self.positions(id) {
            self.words[(p / 64) as usize].fetch_or(1 << (p % 64), Relaxed);
        }
        self.items.fetch_add(1, Relaxed);
    }

    fn may_contain(&self, id: &ChunkId) -> bool {
        self.positions(id)
            .iter()
            .all(|&p| self.words[(p / 64) as usize].load(Relaxed) & (1 << (p % 64)) != 0)
    }
}

/// LRU of whole containers' chunk lists: which container holds each cached chunk (all ingest needs to know:
/// that the chunk is stored, and where its references go).
struct LocalityCache {
    capacity: usize,
    chunks: IdMap<ChunkId, ContainerId>,
    /// container -> (tick of last use, its cached ids)
    containers: IdMap<ContainerId, (u64, Vec<ChunkId>)>,
    /// Use order with lazy deletion: an entry is live when its tick equals the container's last use.
    order: VecDeque<(ContainerId, u64)>,
    tick: u64,
    last_touched: Option<ContainerId>,
}

impl LocalityCache {
    fn new(capacity: usize) -> LocalityCache {
        LocalityCache {
            capacity: capacity.max(1),
            chunks: IdMap::default(),
            containers: IdMap::default(),
            order: VecDeque::new(),
            tick: 0,
            last_touched: None,
        }
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    fn get(&mut self, id: &ChunkId) -> Option<ContainerId> {
        let c = *self.chunks.get(id)?;
        self.touch(c);
        Some(c)
    }

    fn touch(&mut self, c: ContainerId) {
        // A duplicate stream hits one container many times in a row; only the first hit reorders.
        if self.last_touched == Some(c) {
            return;
        }
        let Some(entry) = self.containers.get_mut(&c) else {
            return;
        };
        self.tick += 1;
        entry.0 = self.tick;
        self.order.push_back((c, self.tick));
        self.last_touched = Some(c);
        if self.order.len() > 4 * self.capacity + 64 {
            let containers = &self.containers;
            self.order
                .retain(|(c, t)| containers.get(c).is_some_and(|e| e.0 == *t));
        }
    }

    fn insert(&mut self, c: ContainerId, entries: impl IntoIterator<Item = ChunkId>) {
        let ids = &mut self
            .containers
            .entry(c)
            .or_insert_with(|| (0, Vec::new()))
            .1;
        for id in entries {
            if self.chunks.insert(id, c).is_none() {
                ids.push(id);
            }
        }
        self.last_touched = None;
        self.touch(c);
        while self.containers.len() > self.capacity {
            let Some((victim, t)) = self.order.pop_front() else {
                break;
            };
            if self.containers.get(&victim).is_some_and(|e| e.0 == t) {
                self.remove(victim);
            }
        }
    }

    fn remove(&mut self, c: ContainerId) {
        if let Some((_, ids)) = self.containers.remove(&c) {
            for id in ids {
                if self.chunks.get(&id) == Some(&c) {
                    self.chunks.remove(&id);
                }
            }
        }
        if self.last_touched == Some(c) {
            self.last_touched = None;
        }
    }
}

/// The dedup index front: Bloom filter + container-locality LRU over the catalog's `chunks` table.
pub struct DedupIndex {
    bloom: Bloom,
    cache: Mutex<LocalityCache>,
    /// Which chunk followed which (core::follow). Never locked while `cache` is.
    sequences: Mutex<SequenceMemo>,
    lookups: AtomicU64,
    bloom_negatives: AtomicU64,
    cache_hits: AtomicU64,
    db_lookups: AtomicU64,
    db_hits: AtomicU64,
    container_loads: AtomicU64,
}

/// The catalog's (group_offset, group_raw) pair: group_raw 0 means "not in a group" (§7).
pub(crate) fn group_slot(offset: u32, group_raw: u32) -> Option<GroupSlot> {
    (group_raw > 0).then_some(GroupSlot { offset, group_raw })
}

fn chunk_id(r: &Row<'_>, i: usize) -> rusqlite::Result<ChunkId> {
    let b: Vec<u8> = r.get(i)?;
    ChunkId::from_slice(&b).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            format!("chunk id of {} bytes", b.len()).into(),
        )
    })
}

impl DedupIndex {
    /// An empty index; the Bloom filter is sized for `max(expected_chunks, 1M)` at ~1% false positives.
    pub fn new(expected_chunks: u64, cache_containers: usize) -> DedupIndex {
        DedupIndex {
            bloom: Bloom::new(expected_chunks),
            cache: Mutex::new(LocalityCache::new(cache_containers)),
            sequences: Mutex::new(SequenceMemo::new(SEQUENCE_MEMO_GENERATION)),
            lookups: AtomicU64::new(0),
            bloom_negatives: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            db_lookups: AtomicU64::new(0),
            db_hits: AtomicU64::new(0),
            container_loads: AtomicU64::new(0),
        }
    }

    /// Startup: adds every chunk id in the table to the Bloom filter (one streaming scan).
    ///
    /// The filter is sized before the scan from the catalog's size (an exact `count(*)` would be a second full
    /// scan): `db bytes / 100` chunks, an overestimate because other tables share the file. A store that
    /// tracks its chunk count (and wants headroom for growth until the next start) should call
    /// [`DedupIndex::load_with_capacity`] instead. An overfull filter only costs speed: at 2x its capacity
    /// about 15% of new ids need a query.
    pub fn load(conn: &Connection, cache_containers: usize) -> Result<DedupIndex, rusqlite::Error> {
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let bytes = (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64);
        Self::load_with_capacity(conn, bytes / CATALOG_BYTES_PER_CHUNK, cache_containers)
    }

    /// [`DedupIndex::load`] with an explicit Bloom capacity (e.g. the expected size of the store).
    pub fn load_with_capacity(
        conn: &Connection,
        expected_chunks: u64,
        cache_containers: usize,
    ) -> Result<DedupIndex, rusqlite::Error> {
        let index = DedupIndex::new(expected_chunks, cache_containers);
        let mut st = conn.prepare("SELECT id FROM chunks")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            // Borrow the blob in place: at 10^9 rows an allocation per row is measurable.
            let b = r.get_ref(0)?.as_blob()?;
            let id = ChunkId::from_slice(b).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Blob,
                    format!("chunk id of {} bytes", b.len()).into(),
                )
            })?;
            index.bloom.insert(&id);
        }
        Ok(index)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LocalityCache> {
        // The cache holds no invariant a panicking holder could break halfway that matters for correctness:
        // every entry is a copy of a committed row.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// "Surely new" from RAM; else the locality cache; else one indexed SELECT, and on a hit all chunks of
    /// that container go into the LRU locality cache. Returns the container holding the chunk, if it is
    /// stored. (Only the container: a container's chunk ids are one range of `chunk_refs`, so loading them
    /// reads a few pages, where their locations would take a seek into `chunks` each.)
    pub fn lookup(
        &self,
        conn: &Connection,
        id: &ChunkId,
    ) -> Result<Option<ContainerId>, rusqlite::Error> {
        self.lookups.fetch_add(1, Relaxed);
        if !self.bloom.may_contain(id) {
            self.bloom_negatives.fetch_add(1, Relaxed);
            return Ok(None);
        }
        if let Some(c) = self.cache().get(id) {
            self.cache_hits.fetch_add(1, Relaxed);
            return Ok(Some(c));
        }
        self.db_lookups.fetch_add(1, Relaxed);
        let mut st = conn.prepare_cached("SELECT container_id FROM chunks WHERE id = ?1")?;
        let Some(c) = st
            .query_row([&id.0[..]], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(None);
        };
        let c = ContainerId(c as u64);
        self.db_hits.fetch_add(1, Relaxed);
        let neighbours = self.container_chunks(conn, c)?;
        self.container_loads.fetch_add(1, Relaxed);
        {
            let mut memo = self.sequences();
            for (id, next) in &neighbours {
                if let Some(next) = NextChunk::from_word(*next) {
                    memo.suggest(id, next);
                }
            }
        }
        self.cache()
            .insert(c, neighbours.into_iter().map(|(id, _)| id));
        Ok(Some(c))
    }

    /// The ids of all chunks of one container with their recorded successors: its range of `chunk_refs`.
    fn container_chunks(
        &self,
        conn: &Connection,
        c: ContainerId,
    ) -> Result<Vec<(ChunkId, u64)>, rusqlite::Error> {
        let mut st =
            conn.prepare_cached("SELECT id, next FROM chunk_refs WHERE container_id = ?1")?;
        st.query_map([c.0 as i64], |r| {
            Ok((chunk_id(r, 0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect()
    }

    fn sequences(&self) -> std::sync::MutexGuard<'_, SequenceMemo> {
        // Every memo entry is a hint checked by hashing: a panicking holder cannot make one unsafe.
        self.sequences.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered successor of chunk `id` (core::follow), from memory.
    pub fn next_of(&self, id: &ChunkId) -> Option<NextChunk> {
        self.sequences().next_of(id)
    }

    /// [`DedupIndex::next_of`], or, when the chunk is stored in a container not loaded since this process
    /// started (a stream written before a restart, or longer ago than the memo's window), that container's
    /// successors loaded from the catalog by looking the chunk up first. New data costs a Bloom probe.
    pub fn next_of_loading(
        &self,
        catalog: &Catalog,
        id: &ChunkId,
    ) -> crate::store::error::Result<Option<NextChunk>> {
        if let Some(next) = self.next_of(id) {
            return Ok(Some(next));
        }
        if !self.bloom.may_contain(id) || self.cache().contains(id) {
            return Ok(None);
        }
        catalog.read(|c| Ok(self.lookup(c, id)?))?;
        Ok(self.next_of(id))
    }

    /// Chunks followed one another in a stream: `(prev, next)` pairs (only cuts by content or at `max`).
    pub fn remember_sequence(&self, pairs: impl IntoIterator<Item = (ChunkId, NextChunk)>) {
        let mut memo = self.sequences();
        for (prev, next) in pairs {
            memo.remember(&prev, next);
        }
    }

    /// After the catalog committed new chunk rows: records them in the Bloom filter, and in the cache (the
    /// container just written is the likeliest to be hit by the rest of the same stream).
    pub fn note_inserted(&self, ids: &[(ChunkId, ChunkLocation)]) {
        for (id, _) in ids {
            self.bloom.insert(id);
        }
        let mut cache = self.cache();
        for group in ids.chunk_by(|a, b| a.1.container == b.1.container) {
            cache.insert(group[0].1.container, group.iter().map(|(id, _)| *id));
        }
    }

    /// Drops a container from the locality cache (compaction retired it or moved its chunks).
    pub fn forget_container(&self, c: ContainerId) {
        self.cache().remove(c);
    }

    pub fn stats(&self) -> DedupStats {
        let cache = self.cache();
        DedupStats {
            lookups: self.lookups.load(Relaxed),
            bloom_negatives: self.bloom_negatives.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            db_lookups: self.db_lookups.load(Relaxed),
            db_hits: self.db_hits.load(Relaxed),
            container_loads: self.container_loads.load(Relaxed),
            bloom_bytes: self.bloom.bits / 8,
            bloom_items: self.bloom.items.load(Relaxed),
            bloom_capacity: self.bloom.capacity,
            cached_containers: cache.containers.len() as u64,
            cached_chunks: cache.chunks.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> String {
        crate::store::catalog::schema::current()
    }

    fn id(i: u64) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    fn loc(c: u64, i: u64) -> ChunkLocation {
        ChunkLocation {
            container: ContainerId(c),
            offset: 32 + i * 1000,
            stored_len: 900 + i as u32,
            raw_len: 1000,
            codec: if i.is_multiple_of(2) {
                Codec::Zstd
            } else {
                Codec::Raw
            },
            group: i.is_multiple_of(3).then_some(GroupSlot {
                offset: 1000 * i as u32,
                group_raw: 10_000,
            }),
        }
    }

    /// Containers 1..=n of 10 chunks each: chunk c*10+i is chunk i of container c.
    fn db(containers: u64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema()).unwrap();
        for c in 1..=containers {
            for i in 0..10 {
                assert!(
                    crate::store::catalog::insert_chunk(&conn, &id(c * 10 + i), &loc(c, i))
                        .unwrap()
                );
            }
        }
        conn
    }

    #[test]
    fn finds_stored_chunks_via_one_query_per_container() {
        let conn = db(5);
        let x = DedupIndex::load(&conn, 2).unwrap();
        // Stream order through container 3: one point query, then cache hits.
        for i in 0..10 {
            assert_eq!(x.lookup(&conn, &id(30 + i)).unwrap(), Some(ContainerId(3)));
        }
        let s = x.stats();
        assert_eq!(
            (s.lookups, s.db_lookups, s.db_hits, s.cache_hits),
            (10, 1, 1, 9)
        );
        assert_eq!((s.cached_containers, s.cached_chunks), (1, 10));
        assert_eq!(s.bloom_items, 50);
    }

    #[test]
    fn new_chunks_are_answered_from_ram() {
        let conn = db(5);
        let x = DedupIndex::load(&conn, 2).unwrap();
        for i in 1000..11_000 {
            assert_eq!(x.lookup(&conn, &id(i)).unwrap(), None);
        }
        let s = x.stats();
        // 1M-chunk filter holding 50 ids: false positives are essentially impossible.
        assert_eq!(s.bloom_negatives, 10_000);
        assert_eq!(s.db_lookups, 0);
    }

    #[test]
    fn bloom_false_positive_rate_is_about_one_percent_at_capacity() {
        // Uniform ids without a million BLAKE3 calls in a debug build.
        let uid = |i: u64| {
            let mut b = [0u8; 32];
            for (k, w) in b.chunks_mut(8).enumerate() {
                let x = (i * 4 + k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                w.copy_from_slice(
                    &(x ^ (x >> 29))
                        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
                        .to_le_bytes(),
                );
            }
            ChunkId(b)
        };
        let b = Bloom::new(1_000_000);
        for i in 0..1_000_000u64 {
            b.insert(&uid(i));
        }
        assert!(
            (0..1_000_000).all(|i| b.may_contain(&uid(i))),
            "no false negatives"
        );
        let fp = (1_000_000..1_200_000)
            .filter(|&i| b.may_contain(&uid(i)))
            .count();
        let rate = fp as f64 / 200_000.0;
        assert!((0.005..0.015).contains(&rate), "{rate}");
        assert_eq!(b.bits / 8, 1_198_128);
    }

    #[test]
    fn lru_evicts_the_least_recently_used_container() {
        let conn = db(4);
        let x = DedupIndex::load(&conn, 2).unwrap();
        x.lookup(&conn, &id(10)).unwrap(); // loads 1
        x.lookup(&conn, &id(20)).unwrap(); // loads 2
        x.lookup(&conn, &id(11)).unwrap(); // hit 1: now 2 is the oldest
        x.lookup(&conn, &id(30)).unwrap(); // loads 3, evicts 2
        let before = x.stats();
        assert_eq!(before.cached_containers, 2);
        x.lookup(&conn, &id(12)).unwrap(); // still cached
        x.lookup(&conn, &id(21)).unwrap(); // evicted: query again
        let s = x.stats();
        assert_eq!(s.cache_hits - before.cache_hits, 1);
        assert_eq!(s.db_lookups - before.db_lookups, 1);
        assert_eq!(s.cached_containers, 2);
        assert_eq!(s.cached_chunks, 20);
    }

    #[test]
    fn note_inserted_makes_new_rows_findable_without_a_query() {
        let conn = db(1);
        let x = DedupIndex::load(&conn, 4).unwrap();
        assert_eq!(x.lookup(&conn, &id(90)).unwrap(), None);
        // The lead's seal commits rows, then notes them.
        let rows: Vec<_> = (0..10).map(|i| (id(90 + i), loc(9, i))).collect();
        x.note_inserted(&rows);
        for (i, (cid, l)) in rows.iter().enumerate() {
            assert_eq!(x.lookup(&conn, cid).unwrap(), Some(l.container), "{i}");
        }
        assert_eq!(x.stats().db_lookups, 0, "answered from the cache");
        x.forget_container(ContainerId(9));
        assert_eq!(x.stats().cached_chunks, 0);
        // Now the Bloom filter says maybe, the table says no: a false positive, answered by one query.
        assert_eq!(x.lookup(&conn, &id(95)).unwrap(), None);
        assert_eq!(x.stats().db_lookups, 1);
    }

    #[test]
    fn loads_from_a_real_wal_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch(&schema()).unwrap();
            for (i, offset, codec) in [(1, 32, 9), (2, 80, 0)] {
                conn.execute(
                    "INSERT INTO chunks VALUES (?1, 7, ?2, 10, 20, ?3, 0, 0)",
                    rusqlite::params![&id(i).0[..], offset, codec],
                )
                .unwrap();
                // Chunk 1 was followed by chunk 2 (20 bytes); chunk 2's successor is unknown.
                let next = if i == 1 {
                    NextChunk::new(20, &id(2)).unwrap().word() as i64
                } else {
                    0
                };
                conn.execute(
                    "INSERT INTO chunk_refs VALUES (7, ?1, 1, ?2)",
                    rusqlite::params![&id(i).0[..], next],
                )
                .unwrap();
            }
        }
        let conn = Connection::open(&path).unwrap();
        let x = DedupIndex::load(&conn, 4).unwrap();
        assert_eq!(x.stats().bloom_items, 2);
        // Dedup needs only the container; both rows load with it.
        assert_eq!(x.lookup(&conn, &id(1)).unwrap(), Some(ContainerId(7)));
        assert_eq!(x.lookup(&conn, &id(2)).unwrap(), Some(ContainerId(7)));
        assert_eq!(x.stats().container_loads, 1);
        assert!(x.lookup(&conn, &id(3)).unwrap().is_none());
        // The container's recorded successors came into the sequence memo with it.
        let next = x.next_of(&id(1)).unwrap();
        assert!(next.is(&id(2)) && next.chunk_len() == 20);
        assert_eq!(x.next_of(&id(2)), None);
        // Codec 9 is not a codec: a read of the location is a clean error, not a panic or a wrong location.
        assert!(crate::store::catalog::get_chunk(&conn, &id(1)).is_err());
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DedupIndex>();
    }
}
