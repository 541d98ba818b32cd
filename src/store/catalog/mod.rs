//! The SQLite catalog (storage-format.md §7): one writer connection behind a mutex (SQLite allows one writer
//! anyway) and a pool of reader connections (WAL lets them run beside the writer).
//!
//! Locking rules: every mutation runs in one `write()` transaction (BEGIN IMMEDIATE); a container's chunk rows,
//! its segment rows and their chunk reference increments commit together, so a crash never leaves refs that
//! disagree with segments. Readers never take the writer mutex.

pub mod queries;
pub mod schema;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use super::error::{Result, StoreError};

pub use queries::*;

pub struct Catalog {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
}

/// 64 MiB of WAL (4 KiB pages) between checkpoints.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 16384;

/// Page cache of the one writer connection, and of each reader connection (KiB). Readers are as many as
/// concurrent reads (the read threads, ingest threads), so theirs is small: with 64 MiB each, the server's RSS
/// grew with the catalog (362 MiB after a 20 GB upload vs 260 after 2 GB) and could reach GiBs on a
/// many-core host. Pages not cached here are a pread from the OS page cache away.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
const READER_CACHE_KIB: i64 = 2 * 1024;

fn configure(conn: &Connection, cache_kib: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed transaction survives power loss (the WAL is fsync'd at every commit).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // Checkpoint the WAL every WAL_AUTOCHECKPOINT_PAGES instead of SQLite's 1000: random chunk-id inserts dirty
    // one page each, so the default checkpoints (and fsyncs the database file) at nearly every container seal.
    // Measured with benches/dedup_index.rs at 1 M chunks: 20 k -> 41 k inserts/s. Commits still fsync the WAL.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let conn = Connection::open(path)?;
        configure(&conn, WRITER_CACHE_KIB)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0..schema::SCHEMA_VERSION => {
                // One transaction: a crash mid-migration leaves the old version whole.
                let mut steps = String::from("BEGIN;");
                if version == 0 {
                    steps.push_str(schema::SCHEMA_V1);
                }
                for step in &schema::MIGRATIONS[(version.max(1) - 1) as usize..] {
                    steps.push_str(step);
                }
                steps.push_str(&format!(
                    "PRAGMA user_version = {}; COMMIT;",
                    schema::SCHEMA_VERSION
                ));
                if (1..3).contains(&version) {
                    // Version 3 rewrites the chunk index: on a big catalog the admin should know why the
                    // start takes a while (the WAL grows by about the catalog's size meanwhile).
                    tracing::info!(
                        from = version,
                        to = schema::SCHEMA_VERSION,
                        "migrating the catalog schema in one transaction; this rewrites the chunk index"
                    );
                }
                conn.execute_batch(&steps)?;
                if version > 0 {
                    tracing::info!(
                        from = version,
                        to = schema::SCHEMA_VERSION,
                        "catalog schema migrated"
                    );
                }
            }
            schema::SCHEMA_VERSION => {}
            v => {
                return Err(StoreError::Config(format!(
                    "catalog {} has schema version {v}; this cairn understands up to {}: upgrade cairn",
                    path.display(),
                    schema::SCHEMA_VERSION
                )));
            }
        }
        Ok(Catalog {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
        })
    }

    /// Runs `f` in one write transaction; commits if it returns Ok, rolls back otherwise.
    pub fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self
            .writer
            .lock()
            .map_err(|_| StoreError::Config("catalog writer poisoned".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` with a reader connection (a consistent snapshot if `f` opens a transaction).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = {
            let mut pool = self
                .readers
                .lock()
                .map_err(|_| StoreError::Config("catalog pool poisoned".into()))?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&c, READER_CACHE_KIB)?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 16
        {
            pool.push(conn);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::container::{Codec, GroupSlot};
    use crate::core::ids::{ChunkId, ContainerId};
    use crate::store::dedup::ChunkLocation;

    /// A catalog written by schema version 1 (a store from before chunk groups) opens, is migrated in place,
    /// keeps its rows (references moved to `chunk_refs`), and then stores group locations.
    #[test]
    fn version_1_catalog_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let old = ChunkId::of(b"old chunk");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "BEGIN; {} PRAGMA user_version = 1; COMMIT;",
                schema::SCHEMA_V1
            ))
            .unwrap();
            conn.execute(
                "INSERT INTO chunks(id, container_id, offset, stored_len, raw_len, codec, refs)
                 VALUES (?1, 5, 80, 10, 20, 1, 3)",
                [&old.0[..]],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let version: i64 = cat
            .read(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, schema::SCHEMA_VERSION);
        let loc = cat.read(|c| get_chunk(c, &old)).unwrap().unwrap();
        assert_eq!(
            loc,
            ChunkLocation {
                container: ContainerId(5),
                offset: 80,
                stored_len: 10,
                raw_len: 20,
                codec: Codec::Zstd,
                group: None,
            }
        );
        let member = ChunkId::of(b"member");
        let grouped = ChunkLocation {
            group: Some(GroupSlot {
                offset: 4096,
                group_raw: 9000,
            }),
            ..loc
        };
        // Version 3: the old row's 3 references moved to `chunk_refs`, next to its container's other chunks.
        assert_eq!(chunk_refs(&cat, &[old]), vec![3]);
        cat.write(|tx| insert_chunk(tx, &member, &grouped)).unwrap();
        assert_eq!(cat.read(|c| get_chunk(c, &member)).unwrap(), Some(grouped));
        cat.write(|tx| add_chunk_refs(tx, &[(old, 1), (member, 1), (member, 1)], 1))
            .unwrap();
        assert_eq!(chunk_refs(&cat, &[old, member]), vec![4, 2]);
        let in_container_5: Vec<Vec<u8>> = cat
            .read(|c| {
                let mut st =
                    c.prepare("SELECT id FROM chunk_refs WHERE container_id = 5 ORDER BY id")?;
                let ids = st.query_map([], |r| r.get(0))?;
                Ok(ids.collect::<rusqlite::Result<_>>()?)
            })
            .unwrap();
        let mut want = vec![old.0.to_vec(), member.0.to_vec()];
        want.sort();
        assert_eq!(in_container_5, want);
        drop(cat);
        // A fresh catalog ends with the same tables as a migrated one.
        let fresh = dir.path().join("fresh.sqlite");
        drop(Catalog::open(&fresh).unwrap());
        let columns = |p: &Path, table: &str| -> Vec<String> {
            let c = Connection::open(p).unwrap();
            let mut st = c
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(columns(&path, "chunks"), columns(&fresh, "chunks"));
        assert_eq!(columns(&path, "chunk_refs"), columns(&fresh, "chunk_refs"));
        assert_eq!(
            columns(&path, "chunk_refs"),
            ["container_id", "id", "refs", "next"]
        );
        // Version 4: rows from before it know no successor.
        let next: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT next FROM chunk_refs WHERE id = ?1",
                [&old.0[..]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(next, 0);
    }

    /// A chunk stored raw in its own entry of `container`.
    fn raw_location(container: u64) -> ChunkLocation {
        ChunkLocation {
            container: ContainerId(container),
            offset: 0,
            stored_len: 10,
            raw_len: 20,
            codec: Codec::Raw,
            group: None,
        }
    }

    /// The references of each of `ids` (its `chunk_refs` row, found through its container).
    fn chunk_refs(cat: &Catalog, ids: &[ChunkId]) -> Vec<i64> {
        chunk_refs_column(cat, ids, "refs")
            .into_iter()
            .map(|v| v.expect("every chunk has its chunk_refs row"))
            .collect()
    }

    /// `column` of each of `ids`' `chunk_refs` row, None for an id without a row.
    fn chunk_refs_column(cat: &Catalog, ids: &[ChunkId], column: &str) -> Vec<Option<i64>> {
        use rusqlite::OptionalExtension;
        ids.iter()
            .map(|id| {
                cat.read(|c| {
                    Ok(c.query_row(
                        &format!(
                            "SELECT r.{column} FROM chunks c JOIN chunk_refs r
                               ON r.container_id = c.container_id AND r.id = c.id WHERE c.id = ?1"
                        ),
                        [&id.0[..]],
                        |r| r.get(0),
                    )
                    .optional()?)
                })
                .unwrap()
            })
            .collect()
    }

    /// A segment naming chunks in any order and some of them many times adds one reference per entry (merged
    /// into one update per id); an unknown id fails the whole call, and a release takes the references back.
    #[test]
    fn chunk_refs_count_every_entry_of_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let loc = raw_location(1);
        let ids: Vec<ChunkId> = (0..5u8).map(|i| ChunkId::of(&[i])).collect();
        cat.write(|tx| {
            for id in &ids {
                insert_chunk(tx, id, &loc)?;
            }
            Ok(())
        })
        .unwrap();
        // Entry order as a stream would have it: id 3 (a zero block) repeats, id 4 is not named.
        let named = [3usize, 0, 3, 2, 3, 1, 0, 3];
        let entries: Vec<(ChunkId, u32)> = named.iter().map(|&i| (ids[i], 20)).collect();
        let refs = |cat: &Catalog| chunk_refs(cat, &ids);
        cat.write(|tx| add_chunk_refs(tx, &entries, 1)).unwrap();
        assert_eq!(refs(&cat), vec![2, 1, 1, 4, 0]);
        cat.write(|tx| add_chunk_refs(tx, &entries, 1)).unwrap();
        assert_eq!(refs(&cat), vec![4, 2, 2, 8, 0]);

        let unknown = ChunkId::of(b"never stored");
        let mut bad = entries.clone();
        bad.push((unknown, 20));
        assert!(cat.write(|tx| add_chunk_refs(tx, &bad, 1)).is_err());
        assert_eq!(
            refs(&cat),
            vec![4, 2, 2, 8, 0],
            "a failed call changes nothing"
        );

        cat.write(|tx| add_chunk_refs(tx, &entries, -1)).unwrap();
        assert_eq!(refs(&cat), vec![2, 1, 1, 4, 0]);
    }

    /// A container's new chunk rows start with the references of the segment sealed with it; the segment's
    /// other ids (stored before, or inserted first by a concurrent upload) are updated. The end state is the
    /// one an insert with refs 0 and then `add_chunk_refs` gives, and an unknown id fails the whole call.
    #[test]
    fn new_chunks_start_with_their_segment_refs() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let loc = raw_location;
        let ids: Vec<ChunkId> = (0..6u8).map(|i| ChunkId::of(&[i])).collect();
        // 0 and 1 were stored before (refs 1 each); 2 was inserted by a concurrent upload a moment ago.
        cat.write(|tx| {
            for (id, c) in [(ids[0], 1), (ids[1], 1), (ids[2], 2)] {
                insert_chunk(tx, &id, &loc(c))?;
            }
            add_chunk_refs(tx, &[(ids[0], 20), (ids[1], 20)], 1)
        })
        .unwrap();
        // This container stores 2 (lost the race), 3, 4 and 5; its segment names 5 (never), 4 three times.
        let new_chunks: Vec<(ChunkId, ChunkLocation)> = [5usize, 3, 2, 4]
            .iter()
            .map(|&i| (ids[i], loc(9)))
            .collect();
        let named = [4usize, 0, 3, 4, 2, 0, 4];
        let entries: Vec<(ChunkId, u32)> = named.iter().map(|&i| (ids[i], 20)).collect();
        let refs = segment_refs(&entries);
        let inserted = cat
            .write(|tx| insert_chunks_with_refs(tx, &new_chunks, &refs, &[]))
            .unwrap();
        let mut expect_inserted = vec![ids[3], ids[4], ids[5]];
        expect_inserted.sort();
        assert_eq!(inserted, expect_inserted);
        // (refs, container) of each row.
        let state = |cat: &Catalog| -> Vec<(i64, u64)> {
            let containers = ids.iter().map(|id| {
                cat.read(|c| get_chunk(c, id))
                    .unwrap()
                    .map_or(0, |l| l.container.0)
            });
            chunk_refs(cat, &ids).into_iter().zip(containers).collect()
        };
        assert_eq!(
            state(&cat),
            vec![(3, 1), (1, 1), (1, 2), (1, 9), (3, 9), (0, 9)]
        );

        let unknown = ChunkId::of(b"never stored");
        let more = [(ChunkId::of(b"new"), loc(10))];
        let bad = segment_refs(&[(ids[0], 20), (unknown, 20), (more[0].0, 20)]);
        assert!(
            cat.write(|tx| insert_chunks_with_refs(tx, &more, &bad, &[]))
                .is_err()
        );
        assert_eq!(
            state(&cat),
            vec![(3, 1), (1, 1), (1, 2), (1, 9), (3, 9), (0, 9)],
            "a failed call changes nothing"
        );
        assert_eq!(cat.read(|c| get_chunk(c, &more[0].0)).unwrap(), None);
    }

    /// Recorded successors stay while the chunker's parameters do, and are forgotten once when they change.
    #[test]
    fn successors_are_forgotten_when_the_chunker_changes() {
        use crate::core::follow::NextChunk;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let keep = |params: &str| {
            cat.write(|tx| keep_successors_of_chunker(tx, params))
                .unwrap()
        };
        assert_eq!(keep("4096/16384/65536"), 0, "a new catalog has none");
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let next = NextChunk::new(5000, &b).unwrap();
        let refs = segment_refs(&[(a, 20), (b, 20)]);
        let chunks = [(a, raw_location(1)), (b, raw_location(1))];
        let successors = [Successor {
            prev: a,
            home: Some(ContainerId(1)),
            next,
        }];
        cat.write(|tx| insert_chunks_with_refs(tx, &chunks, &refs, &successors))
            .unwrap();
        let recorded = || chunk_refs_column(&cat, &[a], "next")[0];
        assert_eq!(recorded(), Some(next.word() as i64));
        assert_eq!(keep("4096/16384/65536"), 0);
        assert_eq!(recorded(), Some(next.word() as i64));
        assert_eq!(keep("4096/16384/131072"), 1);
        assert_eq!(recorded(), Some(0));
        assert_eq!(keep("4096/16384/131072"), 0);
    }

    /// MD5 checkpoints: a recorded fingerprint keeps its first state, and only the newest `keep` stay.
    #[test]
    fn md5_checkpoints_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let fp = |i: u8| [i; 32];
        let save = |states: &[([u8; 32], Vec<u8>)]| {
            cat.write(|tx| save_md5_checkpoints(tx, states, 3)).unwrap()
        };
        save(&[(fp(1), vec![1]), (fp(2), vec![2])]);
        save(&[(fp(1), vec![9]), (fp(3), vec![3])]);
        let get = |i: u8| cat.read(|c| md5_checkpoint(c, &fp(i))).unwrap();
        assert_eq!(
            (get(1), get(2), get(3)),
            (Some(vec![1]), Some(vec![2]), Some(vec![3]))
        );
        save(&[(fp(4), vec![4]), (fp(5), vec![5])]);
        assert_eq!(
            (1..=5).map(get).collect::<Vec<_>>(),
            [None, None, Some(vec![3]), Some(vec![4]), Some(vec![5])]
        );
        save(&[]);
        assert_eq!(get(3), Some(vec![3]));
    }

    /// The successors a stream showed land in `chunk_refs.next`: with a new chunk's insert, with a named
    /// chunk's reference update, or alone for a chunk of an earlier container (by its known container, else
    /// through `chunks`); a segment entry with no successor known keeps the recorded one; a chunk without a
    /// row is skipped (a hint, not an integrity error).
    #[test]
    fn successors_are_recorded_with_the_rows_a_seal_writes() {
        use crate::core::follow::NextChunk;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let ids: Vec<ChunkId> = (0..6u8).map(|i| ChunkId::of(&[b's', i])).collect();
        let next = |len: usize, i: usize| NextChunk::new(len, &ids[i]).unwrap();
        // Earlier: 0 and 1 in container 1, 2 in container 2 (0 was followed by 1).
        cat.write(|tx| {
            let refs = segment_refs(&[(ids[0], 20), (ids[1], 20)]);
            let first = [(ids[0], raw_location(1)), (ids[1], raw_location(1))];
            let s = [Successor {
                prev: ids[0],
                home: Some(ContainerId(1)),
                next: next(20, 1),
            }];
            insert_chunks_with_refs(tx, &first, &refs, &s)?;
            insert_chunk(tx, &ids[2], &raw_location(2))
        })
        .unwrap();
        // This seal: new 3 and 4 in container 9; the stream went 1 -> 3 -> 0 -> 4 -> 2, with 1 named by the
        // segment before (its container known) and 2 with no container known; 5 was never stored.
        let entries = [(ids[3], 30), (ids[0], 20), (ids[4], 40), (ids[2], 20)];
        let homes = [
            Some(ContainerId(9)),
            Some(ContainerId(1)),
            Some(ContainerId(9)),
            None,
        ];
        let seen = [
            (1, Some(ContainerId(1)), next(30, 3)),
            (3, Some(ContainerId(9)), next(20, 0)),
            (0, Some(ContainerId(1)), next(40, 4)),
            (4, Some(ContainerId(9)), next(20, 2)),
            (5, None, next(10, 2)),
        ];
        let successors: Vec<Successor> = seen
            .iter()
            .map(|&(i, home, next)| Successor {
                prev: ids[i],
                home,
                next,
            })
            .collect();
        let new_chunks = [(ids[3], raw_location(9)), (ids[4], raw_location(9))];
        let refs = segment_refs_with_homes(&entries, &homes);
        cat.write(|tx| insert_chunks_with_refs(tx, &new_chunks, &refs, &successors))
            .unwrap();
        let recorded = |cat: &Catalog| -> Vec<Option<NextChunk>> {
            chunk_refs_column(cat, &ids, "next")
                .into_iter()
                .map(|w| w.and_then(|w| NextChunk::from_word(w as u64)))
                .collect()
        };
        assert_eq!(
            recorded(&cat),
            vec![
                Some(next(40, 4)),
                Some(next(30, 3)),
                None,
                Some(next(20, 0)),
                Some(next(20, 2)),
                None
            ]
        );
        assert_eq!(chunk_refs(&cat, &ids[..5]), vec![2, 1, 1, 1, 1]);
        // A later segment naming 0 and 1 again without successors (a stream's last chunk has none) keeps them.
        let refs =
            segment_refs_with_homes(&[(ids[1], 20), (ids[0], 20)], &[Some(ContainerId(1)); 2]);
        cat.write(|tx| insert_chunks_with_refs(tx, &[], &refs, &[]))
            .unwrap();
        assert_eq!(recorded(&cat)[..2], [Some(next(40, 4)), Some(next(30, 3))]);
        assert_eq!(chunk_refs(&cat, &ids[..2]), vec![3, 2]);
    }

    /// A segment's references land on the `chunk_refs` row under the container the upload knew, or, where
    /// that is stale (a concurrent upload indexed the chunk in its own container first), under the container
    /// the chunk index names.
    #[test]
    fn references_land_under_known_containers_and_fall_back_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let loc = raw_location;
        let old: Vec<ChunkId> = (0..3u8).map(|i| ChunkId::of(&[b'o', i])).collect();
        cat.write(|tx| {
            insert_chunk(tx, &old[0], &loc(1))?;
            insert_chunk(tx, &old[1], &loc(1))?;
            insert_chunk(tx, &old[2], &loc(2))?;
            Ok(())
        })
        .unwrap();
        // 40 new chunks in container 9, and old[2], which this upload stored in
        // container 9 too but a concurrent upload indexed in container 2 first.
        let fresh: Vec<ChunkId> = (0..40u8).map(|i| ChunkId::of(&[b'n', i])).collect();
        let mut new_chunks: Vec<(ChunkId, ChunkLocation)> =
            fresh.iter().map(|id| (*id, loc(9))).collect();
        new_chunks.push((old[2], loc(9)));
        let mut entries: Vec<(ChunkId, u32)> = fresh.iter().map(|id| (*id, 20)).collect();
        let mut homes: Vec<Option<ContainerId>> = vec![Some(ContainerId(9)); fresh.len()];
        // old[0] named twice, its container known; old[1] with a wrong one; old[2] with our own (stale).
        for (id, home) in [(old[0], 1), (old[0], 1), (old[1], 7), (old[2], 9)] {
            entries.push((id, 20));
            homes.push(Some(ContainerId(home)));
        }
        // The last entry has no home at all: looked up through `chunks`.
        entries.push((old[1], 20));
        let refs = segment_refs_with_homes(&entries, &homes);
        assert_eq!(refs.len(), fresh.len() + 3);
        let inserted = cat
            .write(|tx| insert_chunks_with_refs(tx, &new_chunks, &refs, &[]))
            .unwrap();
        assert_eq!(inserted.len(), fresh.len());
        assert_eq!(chunk_refs(&cat, &fresh), vec![1; fresh.len()]);
        assert_eq!(chunk_refs(&cat, &old), vec![2, 2, 1]);
        // Every chunk has its one `chunk_refs` row, under the container its `chunks` row names.
        let (rows, placed): (i64, i64) = cat
            .read(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT COUNT(*) FROM chunk_refs),
                            (SELECT COUNT(*) FROM chunks c JOIN chunk_refs r
                               ON r.container_id = c.container_id AND r.id = c.id)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap();
        assert_eq!((rows, placed), (43, 43));
        assert_eq!(
            cat.read(|c| get_chunk(c, &old[2]))
                .unwrap()
                .map(|l| l.container),
            Some(ContainerId(2))
        );
    }
}
