//! Per-stage throughput of Cairn's write and read paths (issue 5, item 1), with criterion:
//! FastCDC (the store's chunker), BLAKE3 per chunk, zstd at `DEFAULT_ZSTD_LEVEL` (compress and decompress),
//! Reed-Solomon 4+2 on 8 MiB containers with reed-solomon-erasure (what `core::erasure` uses) and
//! reed-solomon-simd side by side (encode, and reconstruct of two lost data shards), MD5 (the ETag), SHA-256
//! (SigV4 signed payloads), the shard trailer's XXH3-128 (xxhash-rust and twox-hash, in cache and cold), the
//! hash maps keyed by chunk ids (std's SipHash against `IdMap`), and sequential write + fsync.
//!
//! `cargo bench --bench stages` (one core per stage; `benches/e2e.rs` turns these into pipeline limits).
//! Under `cargo test` criterion runs each function once on a small sample.

use std::hint::black_box;
use std::time::Duration;

use cairn::core::ids::{ChunkId, ContainerId, IdMap};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod common;
use common::*;

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn stages(c: &mut Criterion) {
    let size = if bench_mode() { 32 << 20 } else { 1 << 20 };
    let data = sample(1, size);
    let ranges = chunks(&data);
    let comp = store_frames(&data, &ranges);

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("fastcdc", |b| b.iter(|| black_box(chunks(&data).len())));
    g.bench_function("blake3", |b| {
        b.iter(|| black_box(blake3_chunks(&data, &ranges)))
    });
    g.bench_function("zstd_compress", |b| {
        b.iter(|| black_box(zstd_chunks(&data, &ranges)))
    });
    g.bench_function("zstd_decompress", |b| {
        b.iter(|| black_box(unzstd_chunks(&comp)))
    });
    g.bench_function("md5", |b| b.iter(|| black_box(md5(&data))));
    g.bench_function("sha256", |b| b.iter(|| black_box(sha256(&data))));
    g.finish();

    let container = &data[..CONTAINER.min(data.len())];
    let e = erasure();
    let shards = e.encode(container);
    let (dat, par) = shards.split_at(K as usize);
    let mut g = c.benchmark_group("reed_solomon_4+2");
    g.throughput(Throughput::Bytes(container.len() as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("store_encode", |b| {
        b.iter(|| black_box(e.encode(container).len()))
    });
    g.bench_function("erasure_encode", |b| {
        b.iter(|| black_box(rs_erasure_encode(dat, M as usize).len()))
    });
    g.bench_function("simd_encode", |b| {
        b.iter(|| black_box(rs_simd_encode(dat, M as usize).len()))
    });
    g.bench_function("erasure_reconstruct2", |b| {
        b.iter(|| black_box(rs_erasure_reconstruct(&e, &shards)))
    });
    g.bench_function("simd_reconstruct2", |b| {
        b.iter(|| black_box(rs_simd_reconstruct(dat, par)))
    });
    g.finish();

    // The shard trailer's XXH3-128 (storage-format.md §3), in the two crates that compute it bit for bit the
    // same: once on one shard in cache, and once walking over 1 GiB of shards, as scrub hashes a shard it has
    // just read from disk (O_DIRECT: not in any cache). The store uses twox-hash for the second case.
    let shard_len = (CONTAINER / K as usize).min(size);
    let cold_shards: Vec<Vec<u8>> = (0..if bench_mode() { 512 } else { 2 })
        .map(|i| sample(100 + i, shard_len))
        .collect();
    let hot = &cold_shards[0];
    let mut g = c.benchmark_group("shard_checksum");
    g.throughput(Throughput::Bytes(shard_len as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("xxhash_rust_in_cache", |b| {
        b.iter(|| black_box(xxhash_rust::xxh3::xxh3_128(hot)))
    });
    g.bench_function("twox_hash_in_cache", |b| {
        b.iter(|| black_box(twox_hash::XxHash3_128::oneshot(hot)))
    });
    let mut next = 0;
    g.bench_function("xxhash_rust_cold", |b| {
        b.iter(|| {
            next = (next + 1) % cold_shards.len();
            black_box(xxhash_rust::xxh3::xxh3_128(&cold_shards[next]))
        })
    });
    g.bench_function("twox_hash_cold", |b| {
        b.iter(|| {
            next = (next + 1) % cold_shards.len();
            black_box(twox_hash::XxHash3_128::oneshot(&cold_shards[next]))
        })
    });
    g.finish();
    drop(cold_shards);

    // The dedup cache's pattern in a duplicate stream: a container's chunk ids go in, each is looked up once,
    // and they go out when it is evicted. std's SipHash against `IdMap` (foldhash), per chunk id.
    let ids: Vec<ChunkId> = (0..4096u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("id_maps");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("std_siphash_insert_get_remove", |b| {
        let mut map: std::collections::HashMap<ChunkId, ContainerId> =
            std::collections::HashMap::new();
        b.iter(|| cache_round(&mut map, &ids))
    });
    g.bench_function("idmap_foldhash_insert_get_remove", |b| {
        let mut map: IdMap<ChunkId, ContainerId> = IdMap::default();
        b.iter(|| cache_round(&mut map, &ids))
    });
    g.finish();

    let dir = tempfile::tempdir_in(
        std::env::var_os("CAIRN_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .expect("tempdir");
    let disk_bytes = if bench_mode() { 256 << 20 } else { 1 << 20 };
    let mut g = c.benchmark_group("disk");
    g.throughput(Throughput::Bytes(disk_bytes as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("write_fsync", |b| {
        b.iter(|| disk_write_fsync(dir.path(), disk_bytes).expect("disk write"))
    });
    g.finish();
}

/// Containers of 128 ids each into `map`, every id looked up, then every container's ids removed.
fn cache_round<S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<ChunkId, ContainerId, S>,
    ids: &[ChunkId],
) {
    for (n, container) in ids.chunks(128).enumerate() {
        for id in container {
            map.insert(*id, ContainerId(n as u64));
        }
    }
    for id in ids {
        black_box(map.get(id));
    }
    for id in ids {
        map.remove(id);
    }
}

criterion_group!(benches, stages);
criterion_main!(benches);
