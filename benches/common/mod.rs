//! Stage kernels shared by `benches/stages.rs` (criterion) and `benches/e2e.rs` (live limits in one run).
//!
//! Every kernel does what the store does per byte, with the store's own parameters: the store's `Chunker`
//! (default 6/24/96 KiB), BLAKE3 per chunk, zstd at `DEFAULT_ZSTD_LEVEL` on the store's chunk groups (§4.5), the store's 4+2
//! `Erasure` on 8 MiB containers. The sample is the start of a `TarTree` full (text-like and incompressible
//! files), so zstd sees what a real backup stream gives it.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn::core::chunker::{ChunkerParams, chunk_ranges};
use cairn::core::container::{
    DEFAULT_ZSTD_LEVEL, compress_chunk_reusing, compress_group, plan_group_spans,
};
use cairn::core::erasure::{Erasure, Geometry};
use cairn::core::md5x::{LANES, Md5State, update_many};
use cairn::workload::TarTree;
use md5::Digest;

pub const MB: f64 = 1e6;
/// Container size the store seals at (`DEFAULT_CONTAINER_TARGET`) and its geometry (`StoreConfig::embedded`).
pub const CONTAINER: usize = 8 * 1024 * 1024;
pub const K: u8 = 4;
pub const M: u8 = 2;

/// The first `bytes` of TarTree full 0 with `seed`.
pub fn sample(seed: u64, bytes: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes);
    TarTree::new(seed, bytes as u64 + (1 << 20))
        .reader(0)
        .take(bytes as u64)
        .read_to_end(&mut v)
        .expect("generator");
    v
}

pub fn chunks(data: &[u8]) -> Vec<Range<usize>> {
    chunk_ranges(data, ChunkerParams::DEFAULT)
}

pub fn blake3_chunks(data: &[u8], ranges: &[Range<usize>]) -> u8 {
    ranges
        .iter()
        .fold(0u8, |a, r| a ^ blake3::hash(&data[r.clone()]).as_bytes()[0])
}

/// The stored form of a stream whose chunks are all new, as the store's ingest makes it (storage-format.md
/// §4.5): spans from `plan_group_spans`, each one zstd frame (a group, or a chunk alone), or None where
/// compression does not pay. Returns (raw byte range, frame) per span.
pub fn store_frames(data: &[u8], ranges: &[Range<usize>]) -> Vec<(Range<usize>, Option<Vec<u8>>)> {
    store_spans(ranges)
        .map(|span| {
            let whole = ranges[span.start].start..ranges[span.end - 1].end;
            (whole, compress_span(data, &ranges[span]))
        })
        .collect()
}

/// The spans the store cuts a batch of all-new chunks into.
fn store_spans(ranges: &[Range<usize>]) -> impl Iterator<Item = Range<usize>> {
    let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let is_new = vec![true; ranges.len()];
    plan_group_spans(&lens, &is_new).into_iter()
}

/// One span's frame, as the store compresses it.
fn compress_span(data: &[u8], ranges: &[Range<usize>]) -> Option<Vec<u8>> {
    let raws: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
    match raws.as_slice() {
        [one] => compress_chunk_reusing(one, DEFAULT_ZSTD_LEVEL),
        _ => compress_group(&raws, DEFAULT_ZSTD_LEVEL),
    }
}

/// Stored bytes of all chunks (the store's grouping and codec choice included), with the store's reused
/// context: a fresh context per frame would understate the machine's limit. Each frame is dropped as soon as
/// it is measured, as the store drops it once copied into its container: holding all of them (64 MiB of
/// input) made every call write its frames into fresh pages, and those page faults cost the stage 8-11% of
/// its speed (262 vs 292 MB/s in one run), a limit the machine does not have, which flattered the unique-
/// ingest ratio by as much.
pub fn zstd_chunks(data: &[u8], ranges: &[Range<usize>]) -> usize {
    store_spans(ranges)
        .map(|span| {
            let raw = ranges[span.end - 1].end - ranges[span.start].start;
            compress_span(data, &ranges[span]).map_or(raw, |f| f.len())
        })
        .sum()
}

/// Decompresses every frame `store_frames` made (what a restore does per byte); raw bytes out.
pub fn unzstd_chunks(comp: &[(Range<usize>, Option<Vec<u8>>)]) -> usize {
    let mut d = zstd::bulk::Decompressor::new().expect("zstd context");
    comp.iter()
        .map(|(raw, frame)| match frame {
            Some(f) => d.decompress(f, raw.len()).expect("unzstd").len(),
            None => raw.len(),
        })
        .sum()
}

pub fn md5(data: &[u8]) -> u8 {
    md5::Md5::digest(data)[0]
}

/// MD5 as the store runs it with 8 uploads in flight: `data` cut into 8 streams hashed together in the SIMD
/// lanes of one core (`core::md5x`, as the store's MD5 lanes do).
pub fn md5_lanes(data: &[u8]) -> u8 {
    let part = data.len().div_ceil(LANES).max(1);
    let pieces: Vec<&[u8]> = data.chunks(part).collect();
    let mut states: Vec<Md5State> = pieces.iter().map(|_| Md5State::new()).collect();
    let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
    update_many(&mut refs, &pieces);
    states.into_iter().fold(0, |a, s| a ^ s.finalize()[0])
}

pub fn sha256(data: &[u8]) -> u8 {
    sha2::Sha256::digest(data)[0]
}

pub fn erasure() -> Erasure {
    Erasure::new(Geometry::new(K, M).expect("geometry")).expect("erasure")
}

/// Data shards of `container` split the way the store does it.
pub fn data_shards(container: &[u8], k: usize) -> Vec<Vec<u8>> {
    let s = container.len().div_ceil(k).next_multiple_of(64);
    (0..k)
        .map(|j| {
            let mut v = container[(j * s).min(container.len())..((j + 1) * s).min(container.len())]
                .to_vec();
            v.resize(s, 0);
            v
        })
        .collect()
}

pub fn rs_simd_encode(data: &[Vec<u8>], m: usize) -> Vec<Vec<u8>> {
    reed_solomon_simd::encode(data.len(), m, data).expect("rs-simd encode")
}

/// Reconstructs data shards 0 and 1 from the rest (the worst case for a read: two data shards gone).
pub fn rs_simd_reconstruct(data: &[Vec<u8>], parity: &[Vec<u8>]) -> usize {
    let k = data.len();
    let orig = data.iter().enumerate().skip(2);
    let rec = parity.iter().enumerate();
    let out = reed_solomon_simd::decode(k, parity.len(), orig, rec).expect("rs-simd decode");
    out.len()
}

pub fn rs_erasure_reconstruct(e: &Erasure, shards: &[Vec<u8>]) -> usize {
    let mut s: Vec<Option<Vec<u8>>> = shards.iter().map(|v| Some(v.clone())).collect();
    s[0] = None;
    s[1] = None;
    e.reconstruct_data(&mut s).expect("reconstruct");
    s.len()
}

/// Runs `f` (which processes `bytes` bytes) until `min` has passed (at least once); MB/s of its fastest
/// call. The fastest, not the mean: a limit is what the machine can do, and on a shared VM neighbours slow
/// some calls down (with the mean over 1.5 s, zstd's stage measured 165-216 MB/s within one day, and a low
/// limit flattered Cairn's ratios).
pub fn rate(bytes: usize, min: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut fastest = f64::INFINITY;
    loop {
        let call = Instant::now();
        f();
        fastest = fastest.min(call.elapsed().as_secs_f64());
        if start.elapsed() >= min {
            break;
        }
    }
    bytes as f64 / fastest.max(1e-9) / MB
}

/// Sequential write of `bytes` in 1 MiB writes, then fsync; MB/s. The file is removed afterwards.
pub fn disk_write_fsync(dir: &Path, bytes: usize) -> std::io::Result<f64> {
    let p = dir.join("cairn-bench-disk.tmp");
    let buf: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n])?;
        left -= n;
    }
    f.sync_all()?;
    let r = bytes as f64 / t.elapsed().as_secs_f64() / MB;
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(r)
}

/// Writes `bytes`, fsyncs, evicts the file from the page cache, then reads it back sequentially; MB/s of the
/// read (a real disk read, not a page-cache copy).
pub fn disk_read_cold(dir: &Path, bytes: usize) -> std::io::Result<f64> {
    let p = dir.join("cairn-bench-read.tmp");
    {
        let mut f = File::create(&p)?;
        let buf = vec![0x5au8; 1 << 20];
        for _ in 0..bytes.div_ceil(buf.len()) {
            f.write_all(&buf)?;
        }
        f.sync_all()?;
    }
    evict(&p);
    let t = Instant::now();
    let mut f = File::open(&p)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    let r = total as f64 / t.elapsed().as_secs_f64() / MB;
    std::fs::remove_file(&p)?;
    Ok(r)
}

/// Reads every shard file under `disks` (one directory per directory-disk) the way scrub reads them, and does
/// nothing else: the store's own `Disk::read_once` (O_DIRECT into an aligned buffer), containers in id order
/// and the shards of one container one after another, `threads` containers at once (scrub's
/// `SCRUB_THREADS`). The I/O bound of a scrub of exactly these files, measured under the disk's conditions
/// of the moment: on this VM a sequential read of one fresh file and the reads of the store's files can
/// differ by 2x within a minute. Returns (bytes read, MB/s).
pub fn read_shards_raw(disks: &Path, threads: usize) -> (u64, f64) {
    use cairn::store::disk::{Disk, FileDisk, parse_shard_name};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    let mut dirs: Vec<_> = std::fs::read_dir(disks)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    let disks: Vec<FileDisk> = dirs.into_iter().map(FileDisk::new).collect();
    let mut containers: BTreeMap<_, Vec<(usize, usize, std::path::PathBuf)>> = BTreeMap::new();
    for (d, disk) in disks.iter().enumerate() {
        for rel in disk.list_shards().unwrap_or_default() {
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some((container, index)) = parse_shard_name(name) {
                containers
                    .entry(container)
                    .or_default()
                    .push((index, d, rel));
            }
        }
    }
    let mut work: Vec<_> = containers.into_values().collect();
    for shards in &mut work {
        shards.sort();
    }
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                // Each read into the buffer of the one before, as scrub reuses its read buffers.
                let mut buf = Vec::new();
                while let Some(shards) = work.get(next.fetch_add(1, Relaxed)) {
                    for (_, d, rel) in shards {
                        if let Ok((read, range)) =
                            disks[*d].read_once(rel, std::mem::take(&mut buf))
                        {
                            bytes.fetch_add(range.len() as u64, Relaxed);
                            buf = read;
                        }
                    }
                }
            });
        }
    });
    let bytes = bytes.load(Relaxed);
    (bytes, bytes as f64 / MB / t.elapsed().as_secs_f64())
}

/// Drops a (clean) file's pages from the page cache, so the next read goes to the disk.
#[allow(unsafe_code)]
pub fn evict(p: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = File::open(p) {
        // SAFETY: plain syscall on an fd owned by `f`, which outlives the call; no memory is passed.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Calls `visit` with the path and metadata of every regular file under `dir` (recursively).
pub fn for_each_file(dir: &Path, visit: &mut impl FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => for_each_file(&p, visit),
            Ok(t) if t.is_file() => {
                if let Ok(m) = e.metadata() {
                    visit(&p, &m);
                }
            }
            _ => {}
        }
    }
}

/// Evicts every file under `dir` (recursively) from the page cache.
pub fn evict_tree(dir: &Path) {
    for_each_file(dir, &mut |p, _| evict(p));
}

/// Bytes of all regular files under `dir`.
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut bytes = 0;
    for_each_file(dir, &mut |_, m| bytes += m.len());
    bytes
}

pub mod s3;
pub mod server;

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
pub fn proc_cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clk_tck()
}

/// CPU seconds all processes on the machine spent busy (not idle or waiting for I/O).
pub fn machine_busy_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / clk_tck()
}

#[allow(unsafe_code)]
fn clk_tck() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// reed-solomon-erasure on pre-split data shards (same input as `rs_simd_encode`).
pub fn rs_erasure_encode(data: &[Vec<u8>], m: usize) -> Vec<Vec<u8>> {
    let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(data.len(), m).expect("rs");
    let mut parity = vec![vec![0u8; data[0].len()]; m];
    rs.encode_sep(data, &mut parity).expect("encode");
    parity
}

/// CPU seconds (user + system) the calling thread has used so far.
#[allow(unsafe_code)]
pub fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives on this stack frame for the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// The kernel's part of receiving a request body: `bytes` of the file `from` sent over a loopback TCP
/// connection by another thread with `sendfile(2)`, as the bench's client sends parts, and read in 256 KiB
/// reads (hyper reads up to 400 KiB at a time), in `rounds` equal rounds. MB per CPU second of the reading
/// thread, which pays what a server pays for a body: the copy out of the socket and the ACKs it sends.
/// The bytes come from the file's pages as the client's do, not from a buffer the sender just wrote (that
/// left them in the CPU's cache and measured the copy ~2x cheaper than a server's receive of parts).
/// Like `rate`, the best round: alone on the machine the figure was 5,300-9,300 from a hot buffer, and
/// right after the disk stages, with writeback still running, half that.
pub fn socket_receive_cpu(from: &Path, bytes: usize, rounds: usize) -> std::io::Result<f64> {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    let file = File::open(from)?;
    let file_len = file.metadata()?.len() as usize;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let round = (bytes.min(file_len) / rounds.max(1)).max(1);
    let total = round * rounds.max(1);
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let s = TcpStream::connect(addr)?;
        let mut off: libc::off_t = 0;
        let end = total as libc::off_t;
        while off < end {
            let want = (end - off) as usize;
            // SAFETY: both descriptors are open for the call; `off` is a valid off_t the kernel advances.
            let sent = unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            if sent <= 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    // Reads as large as the server's (its connections read up to `HTTP1_READ_BUFFER_MAX`, 1 MiB, at a time;
    // fewer, larger reads send fewer window updates, whose loopback softirqs the reader pays).
    let mut buf = vec![0u8; 1 << 20];
    let mut best = 0f64;
    for _ in 0..rounds.max(1) {
        let cpu = thread_cpu_secs();
        let mut got = 0usize;
        while got < round {
            let want = (round - got).min(buf.len());
            match conn.read(&mut buf[..want])? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        let spent = thread_cpu_secs() - cpu;
        best = best.max(got as f64 / MB / spent.max(1e-9));
    }
    sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))??;
    Ok(best)
}

/// The kernel's part of storing shards: `rounds` rounds of `containers` containers' shards (`shards` is one
/// container's k+m shards) written the way the store writes them, through the store's own
/// `FileDisk::write_durable` (O_DIRECT write of header + shard + XXH3 trailer, fsync, rename into place,
/// directory fsync) onto k+m directories under `dir`. MB of shard files per CPU second of the writing thread
/// (the fsync's wait is not CPU), in the best round (as `rate`: alone it measured 2,100-2,500, right after
/// the disk stages 1,000-1,600).
/// The files stay until `dir` is removed: deleting thousands of files right before an ingest phase makes
/// ext4 without a journal skip the recently deleted inodes at every new file (`recently_deleted`), a tax the
/// phase would then pay.
pub fn shard_write_cpu(
    dir: &Path,
    shards: &[&[u8]],
    containers: usize,
    rounds: usize,
) -> std::io::Result<f64> {
    use cairn::core::ids::{ContainerId, StoreId};
    use cairn::core::shard::{ShardHeader, encode_trailer};
    use cairn::store::disk::{Disk, FileDisk, shard_path};
    let disks: Vec<FileDisk> = (0..shards.len())
        .map(|i| {
            let root = dir.join(format!("disk-{i}"));
            std::fs::create_dir_all(&root).map(|()| FileDisk::new(root))
        })
        .collect::<std::io::Result<_>>()?;
    let store = StoreId([7; 16]);
    let container_len = shards.iter().take(K as usize).map(|s| s.len() as u64).sum();
    let mut best = 0f64;
    for round in 0..rounds.max(1) {
        let cpu = thread_cpu_secs();
        let mut written = 0usize;
        for c in 0..containers {
            let container = ContainerId((round * containers + c) as u64 + 1);
            for (index, (disk, shard)) in disks.iter().zip(shards).enumerate() {
                let header = ShardHeader {
                    k: K,
                    m: M,
                    index: index as u8,
                    container,
                    store,
                    container_len,
                    shard_len: shard.len() as u64,
                }
                .encode();
                let trailer = encode_trailer(shard);
                disk.write_durable(&shard_path(container, index), &[&header, shard, &trailer])?;
                written += header.len() + shard.len() + trailer.len();
            }
        }
        let spent = thread_cpu_secs() - cpu;
        best = best.max(written as f64 / MB / spent.max(1e-9));
    }
    Ok(best)
}
pub mod sink;
