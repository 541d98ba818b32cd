//! How chunk groups are compressed (README "Compression", storage-format.md §4.5): zstd parameter sets side by
//! side, each on the same chunks cut into groups the way the store cuts them, reporting MB/s on one core and
//! the stored fraction of the raw bytes.
//!
//! Data: 16 slices of 4 MiB spread over the first 2000 MiB of the e2e bench's tar workload (`TarTree`, seed 1,
//! the data the restic comparison uses), or the file named by `CAIRN_COMPRESSION_FILE` (e.g. a tar of `/usr`:
//! `tar cf - /usr/share/doc /usr/bin /usr/lib/python3 /usr/include | head -c 128M > usr.tar`).
//!
//! `cargo bench --bench compression`; under `cargo test` it runs once on 1 MiB as a smoke test.

use std::io::Read;
use std::ops::Range;
use std::time::Duration;

mod common;
use common::{chunks, rate};

use cairn::core::container::{GROUP_TARGET_CHUNKS, GROUP_TARGET_RAW, compress_group_bytes};
use cairn::store::DEFAULT_ZSTD_LEVEL;
use cairn::workload::TarTree;
use zstd::zstd_safe::CParameter::{self, ChainLog, HashLog, MinMatch, Strategy, WindowLog};
use zstd::zstd_safe::Strategy::ZSTD_fast;

/// Consecutive chunks cut into groups of at most `max_chunks` chunks and `max_raw` bytes, as
/// `plan_group_spans` cuts a run of new chunks.
fn groups(ranges: &[Range<usize>], max_chunks: usize, max_raw: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, r) in ranges.iter().enumerate() {
        let members = i - start;
        if members > 0 && (members >= max_chunks || r.end - ranges[start].start > max_raw) {
            out.push(ranges[start].start..ranges[i - 1].end);
            start = i;
        }
    }
    if let (Some(first), Some(last)) = (ranges.get(start), ranges.last()) {
        out.push(first.start..last.end);
    }
    out
}

/// A table row's label, zstd level, parameters, and group size (max chunks, max raw bytes).
type ParamSet = (String, i32, Vec<CParameter>, (usize, usize));

fn sample(benching: bool) -> (String, Vec<u8>) {
    if let Ok(path) = std::env::var("CAIRN_COMPRESSION_FILE") {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        return (path, data);
    }
    let (slices, slice, total) = if benching {
        (16, 4usize << 20, 2000usize << 20)
    } else {
        (1, 1 << 20, 1 << 20)
    };
    let mut reader = TarTree::new(1, total as u64 + (8 << 20)).reader(0);
    // Bytes skipped between slices so that they spread over the whole `total`.
    let gap = if slices > 1 {
        (total - slice) / (slices - 1) - slice
    } else {
        0
    };
    let mut data = vec![0u8; slices * slice];
    let mut skip = vec![0u8; gap];
    for (i, piece) in data.chunks_mut(slice).enumerate() {
        reader.read_exact(piece).expect("read workload");
        if i + 1 < slices {
            reader.read_exact(&mut skip).expect("read workload");
        }
    }
    (format!("TarTree seed 1, {slices} x {slice} B"), data)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (name, data) = sample(benching);
    let ranges = chunks(&data);
    let min = if benching {
        Duration::from_millis(2500)
    } else {
        Duration::ZERO
    };
    println!(
        "# Compression of chunk groups: {name}, {} MB, {} chunks, one core\n",
        data.len() / 1_000_000,
        ranges.len()
    );
    println!("| parameters | groups of | MB/s | stored / raw |\n|---|---|---:|---:|");
    let fast = |window: u32, hash: u32, min_match: u32| {
        vec![
            Strategy(ZSTD_fast),
            WindowLog(window),
            HashLog(hash),
            MinMatch(min_match),
        ]
    };
    let double_fast = |window: u32| vec![WindowLog(window), ChainLog(16), HashLog(16)];
    let old_groups = (64, 1 << 20);
    let new_groups = (GROUP_TARGET_CHUNKS, GROUP_TARGET_RAW);
    let mut sets: Vec<ParamSet> = vec![
        (
            "level 3, zstd's <= 256 KiB double-fast row (window 2^18, chain/hash 2^16): before session 7".into(),
            3,
            double_fast(18),
            old_groups,
        ),
        ("same on larger groups".into(), 3, double_fast(18), new_groups),
        (
            "level 3 double-fast, window 2^20".into(),
            3,
            double_fast(20),
            new_groups,
        ),
    ];
    // zstd's fast strategy (what levels 1-3 use for groups now): (window log, hash log, min match), the last
    // one the store's own.
    for (window, hash, min_match) in [
        (18, 16, 5),
        (20, 16, 5),
        (21, 15, 5),
        (21, 16, 6),
        (21, 17, 5),
        (21, 16, 5),
    ] {
        sets.push((
            format!("fast, window 2^{window}, hash 2^{hash}, min match {min_match}"),
            1,
            fast(window, hash, min_match),
            new_groups,
        ));
    }
    // One table row: `stored_len` compresses one group and returns its stored length. Returns the bytes stored.
    let row = |label: &str,
               (max_chunks, max_raw): (usize, usize),
               stored_len: &mut dyn FnMut(&[u8]) -> usize| {
        let spans = groups(&ranges, max_chunks, max_raw);
        let mut stored = 0usize;
        let speed = rate(data.len(), min, || {
            stored = spans.iter().map(|g| stored_len(&data[g.clone()])).sum();
        });
        println!(
            "| {label} | {max_chunks} / {} MiB | {speed:.0} | {:.4} |",
            max_raw >> 20,
            stored as f64 / data.len() as f64
        );
        stored
    };
    for (label, level, params, group_size) in sets {
        let mut z = zstd::bulk::Compressor::new(level).expect("zstd context");
        for p in &params {
            z.set_parameter(*p).expect("zstd parameter");
        }
        row(&label, group_size, &mut |g| {
            z.compress(g).expect("compress").len()
        });
    }
    // What the store does now, through its own code (the frames it keeps; groups that do not pay count raw).
    let stored = row(
        &format!("the store: `compress_group_bytes` at level {DEFAULT_ZSTD_LEVEL}"),
        new_groups,
        &mut |g| compress_group_bytes(g, DEFAULT_ZSTD_LEVEL).map_or(g.len(), |f| f.len()),
    );
    assert!(stored > 0 && stored <= data.len(), "stored {stored}");
}
