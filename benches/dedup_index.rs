//! The chunk index at scale (issue 2: "a bench synthesises ids and reports lookup and insert rates and RAM at
//! 1 M, 10 M and 100 M chunks"; storage-format.md §7).
//!
//! Random 32-byte chunk ids (deterministic) go into a real SQLite file with the catalog's `chunks` table and
//! pragmas (WAL, synchronous = FULL, 64 MiB page cache, 64 MiB WAL between checkpoints), 1000 rows per transaction in containers of 100
//! chunks, as the store commits them at container seal, and through `DedupIndex::note_inserted`. At each
//! checkpoint the index is rebuilt the way a restart does (`DedupIndex::load`) and lookups are timed:
//! (a) new ids (answered by the Bloom filter), (b) duplicates in stream order (locality cache: one query per
//! container), (c) random existing ids (cold: point query + container load each). Also VmRSS and the size of
//! the database on disk. The OS page cache is warm (the file was just written): "cold" means not in Cairn's
//! own caches.
//!
//! `CAIRN_INDEX_BENCH_MAX` (default 10000000 under `cargo bench`, 10000 under `cargo test`) caps the run;
//! checkpoints are 1 M, 10 M, 100 M up to it. `CAIRN_INDEX_BENCH_DIR` places the database (default: a temp
//! dir, deleted afterwards).

use std::time::Instant;

mod common;
use common::thread_cpu_secs;

use cairn::core::container::{Codec, GroupSlot};
use cairn::core::ids::{ChunkId, ContainerId};
use cairn::store::dedup::{ChunkLocation, DedupIndex};
use rusqlite::Connection;
const PER_CONTAINER: u64 = 100;
const PER_TXN: u64 = 1000;
const CACHE_CONTAINERS: usize = 64;

fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Chunk id number `i`: uniform bytes like a BLAKE3 output, without hashing data.
fn id(i: u64) -> ChunkId {
    let mut b = [0u8; 32];
    for (k, w) in b.chunks_mut(8).enumerate() {
        w.copy_from_slice(&fmix(fmix(i).wrapping_add(k as u64 + 0x5EED)).to_le_bytes());
    }
    ChunkId(b)
}

fn location(i: u64) -> ChunkLocation {
    ChunkLocation {
        container: ContainerId(1 + i / PER_CONTAINER),
        offset: 32 + (i % PER_CONTAINER) * 70_000,
        stored_len: 40_000,
        raw_len: 65_536,
        codec: Codec::Zstd,
        // Most chunks live in groups (storage-format.md §4.5): rows carry the two group columns.
        group: Some(GroupSlot {
            offset: (i % 40) as u32 * 26_000,
            group_raw: 1_040_000,
        }),
    }
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn open(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "cache_size", -65536).unwrap();
    conn.pragma_update(None, "temp_store", "MEMORY").unwrap();
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        cairn::store::catalog::WAL_AUTOCHECKPOINT_PAGES,
    )
    .unwrap();
    conn
}

fn insert(conn: &mut Connection, index: &DedupIndex, from: u64, to: u64) {
    let mut i = from;
    while i < to {
        let end = (i + PER_TXN).min(to);
        let rows: Vec<(ChunkId, ChunkLocation)> = (i..end).map(|j| (id(j), location(j))).collect();
        let tx = conn.transaction().unwrap();
        for (cid, l) in &rows {
            cairn::store::catalog::insert_chunk(&tx, cid, l).unwrap();
        }
        tx.commit().unwrap();
        index.note_inserted(&rows);
        i = end;
    }
}

/// The catalog's part of sealing containers, through the real `Catalog` (its pragmas, one transaction per
/// container): `containers` containers of `per_container` new chunks whose segment names each once, the
/// store's way (`insert_chunks_with_refs`: each row inserted with its refs) against the earlier one (rows
/// inserted with refs 0, then `add_chunk_refs`), in alternating rounds. Returns the mean CPU seconds per
/// 100 k chunks of each: (insert + update, insert with refs).
fn seal_path_cpu(rounds: usize, containers: u64, per_container: u64) -> (f64, f64) {
    use cairn::store::catalog::{self, Catalog};
    let mut spent = [0f64; 2];
    for _ in 0..rounds {
        for (way, total) in spent.iter_mut().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let cat = Catalog::open(&dir.path().join("catalog.sqlite")).expect("catalog");
            let cpu = thread_cpu_secs();
            for c in 0..containers {
                let rows: Vec<(ChunkId, ChunkLocation)> = (c * per_container
                    ..(c + 1) * per_container)
                    .map(|j| (id(j), location(j)))
                    .collect();
                let entries: Vec<(ChunkId, u32)> = rows.iter().map(|(i, _)| (*i, 65_536)).collect();
                cat.write(|tx| {
                    if way == 0 {
                        for (i, l) in &rows {
                            catalog::insert_chunk(tx, i, l)?;
                        }
                        catalog::add_chunk_refs(tx, &entries, 1)
                    } else {
                        catalog::insert_chunks_with_refs(
                            tx,
                            &rows,
                            &catalog::segment_refs(&entries),
                            &[],
                        )
                        .map(drop)
                    }
                })
                .expect("seal transaction");
            }
            *total += thread_cpu_secs() - cpu;
        }
    }
    let per_100k = 100_000.0 / (rounds as u64 * containers * per_container) as f64;
    (spent[0] * per_100k, spent[1] * per_100k)
}

fn rate(n: u64, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let max: u64 = match std::env::var("CAIRN_INDEX_BENCH_MAX") {
        Ok(s) => s
            .replace('_', "")
            .parse()
            .expect("CAIRN_INDEX_BENCH_MAX: a number of chunks"),
        Err(_) if benching => 10_000_000,
        Err(_) => 10_000,
    };
    let mut checkpoints: Vec<u64> = [1_000_000, 10_000_000, 100_000_000]
        .into_iter()
        .filter(|&c| c <= max)
        .collect();
    if checkpoints.last() != Some(&max) {
        checkpoints.push(max);
    }
    let tmp;
    let dir = match std::env::var("CAIRN_INDEX_BENCH_DIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => {
            tmp = tempfile::tempdir().expect("temp dir");
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chunks-bench.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut conn = open(&path);
    conn.execute_batch(&cairn::store::catalog::schema::current())
        .unwrap();
    println!(
        "dedup_index bench: up to {max} chunks, {PER_CONTAINER} per container, {PER_TXN} per transaction, \
         db {}",
        path.display()
    );
    println!(
        "| chunks | insert/s (this step) | load s | new ids lookup/s | Bloom FP % | dup stream lookup/s | queries per 1000 dup | random existing lookup/s | point SELECT only/s | Bloom MiB | VmRSS MiB | DB MiB | DB B/chunk |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");

    let started = Instant::now();
    let mut index = DedupIndex::new(max, CACHE_CONTAINERS);
    let mut have = 0;
    for &cp in &checkpoints {
        let t = Instant::now();
        insert(&mut conn, &index, have, cp);
        let insert_rate = rate(cp - have, t);
        have = cp;
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").ok();

        // Restart path: rebuild the Bloom filter from the table.
        drop(index);
        let t = Instant::now();
        index = DedupIndex::load(&conn, CACHE_CONTAINERS).unwrap();
        let load_s = t.elapsed().as_secs_f64();
        let s0 = index.stats();

        // (a) ids never stored.
        let n_new = 1_000_000.min(cp);
        let t = Instant::now();
        for i in 0..n_new {
            assert!(index.lookup(&conn, &id((1 << 62) + i)).unwrap().is_none());
        }
        let new_rate = rate(n_new, t);
        let s1 = index.stats();
        let fp = 100.0 * (s1.db_lookups - s0.db_lookups) as f64 / n_new as f64;

        // (b) a repeated backup: a run of existing ids in the order they were written.
        let n_dup = 200_000.min(cp);
        let start = (fmix(cp) % (cp - n_dup + 1)) / PER_CONTAINER * PER_CONTAINER;
        let t = Instant::now();
        for i in start..start + n_dup {
            assert!(index.lookup(&conn, &id(i)).unwrap().is_some());
        }
        let dup_rate = rate(n_dup, t);
        let s2 = index.stats();
        let per_1000 = 1000.0 * (s2.db_lookups - s1.db_lookups) as f64 / n_dup as f64;

        // (c) random existing ids: no locality to exploit.
        let n_rand = 20_000.min(cp);
        let t = Instant::now();
        for k in 0..n_rand {
            let i = fmix(k ^ 0xC0FFEE) % cp;
            assert_eq!(
                index.lookup(&conn, &id(i)).unwrap(),
                Some(location(i).container)
            );
        }
        let rand_rate = rate(n_rand, t);
        // ... and what the point query alone costs (without loading the container's 100 neighbours).
        let mut st = conn
            .prepare_cached("SELECT container_id FROM chunks WHERE id = ?1")
            .unwrap();
        let t = Instant::now();
        for k in 0..n_rand {
            let i = fmix(k ^ 0xBEEF) % cp;
            let c: i64 = st.query_row([&id(i).0[..]], |r| r.get(0)).unwrap();
            assert_eq!(c as u64, location(i).container.0);
        }
        let point_rate = rate(n_rand, t);
        drop(st);

        let db_bytes: u64 = ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "| {cp} | {insert_rate:.0} | {load_s:.1} | {new_rate:.0} | {fp:.2} | {dup_rate:.0} | {per_1000:.1} | {rand_rate:.0} | {point_rate:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
            s2.bloom_bytes as f64 / (1 << 20) as f64,
            rss_mib(),
            db_bytes as f64 / (1 << 20) as f64,
            db_bytes as f64 / cp as f64,
        );
    }
    let (rounds, containers) = if benching { (5, 400) } else { (1, 4) };
    let (two_writes, one_write) = seal_path_cpu(rounds, containers, 250);
    println!(
        "\nSeal path ({containers} containers of 250 new chunks on a fresh catalog, {rounds} alternating rounds): \
         {two_writes:.2} CPU s per 100 k chunks inserted with refs 0 and then updated, {one_write:.2} inserted \
         with their segment's refs ({:.0}% less)",
        100.0 * (1.0 - one_write / two_writes)
    );
    println!("elapsed {:.1} s", started.elapsed().as_secs_f64());
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
