//! Verified reads. Every chunk is checked against its BLAKE3 before a byte leaves; missing or corrupt shards are
//! reconstructed from parity (degraded read) and the event recorded; with fewer than k good shards the reader
//! fails with `DataLost`, naming the container and the objects it affects (storage-format.md §3 recovery rules).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::api::ObjectInfo;
use super::catalog::{self, ContainerRow, SegmentRow};
use super::dedup::ChunkLocation;
use super::disk::shard_path;
use super::diskset::{DiskEntry, DiskState};
use super::error::{Result, StoreError};
use super::io_threads::{KeptThreads, Pending};
use super::reconstructed::DataShards;
use super::{Store, now_ms};
use crate::core::container::{decode_chunk, decode_group, group_member, member_range};
use crate::core::erasure::{Erasure, Geometry};
use crate::core::ids::{ChunkId, ContainerId, UploadId};
use crate::core::shard::SHARD_HEADER_LEN;

/// Bytes read ahead in parallel by a reader: decompression and BLAKE3 checks of a restore use every core, and
/// the shard reads of the window overlap. A window spans several chunk groups (§4.5, up to 2 MiB each) so
/// their decompression runs in parallel; it bounds a reader's memory (plus one chunk past it).
const READ_AHEAD_BYTES: u64 = 4 * 1024 * 1024;
const READ_AHEAD_MAX_CHUNKS: usize = 512;

/// The threads that read and verify read-ahead windows, one run of frames (`plan_read_runs`) per task. Chunk
/// reads block on the disk (a cold restore, and a degraded read waits on k shards per chunk), so there are more
/// threads than cores: with one thread per core the cores sat a third idle in both, waiting for two reads at a
/// time. Plain threads sleeping on a channel: in a rayon pool, as until session 29, idle threads looked for
/// work before sleeping, yielding the CPU each time, ~34,000 context switches per 2 GB restored.
fn read_threads() -> &'static KeptThreads {
    static THREADS: OnceLock<KeptThreads> = OnceLock::new();
    THREADS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        KeptThreads::new((cores * 4).clamp(8, 64), "cairn-read")
    })
}

/// Threads that read the shards of containers being reconstructed (`Store::reconstruct_container`), kept
/// for the process: a degraded restore reconstructs every container with a shard on a missing disk, and a
/// thread started per shard read cost ~33 us of CPU each on the bench's VM (session 28). As many as the read
/// pool's threads can wait on at k = 4, up to 64; more reads wait their turn.
fn reconstruct_readers() -> &'static KeptThreads {
    static THREADS: OnceLock<KeptThreads> = OnceLock::new();
    THREADS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        KeptThreads::new((cores * 12).clamp(16, 64), "cairn-shard-read")
    })
}

/// Reads bytes `within` a shard file's payload (after its header) from disk `d`.
fn read_shard_file(
    d: &DiskEntry,
    path: &std::path::Path,
    within: u64,
    buf: &mut [u8],
    once: bool,
) -> io::Result<()> {
    let offset = SHARD_HEADER_LEN as u64 + within;
    if once {
        d.disk.read_at_once(path, offset, buf)
    } else {
        d.disk.read_at(path, offset, buf)
    }
}

/// Where chunk `id` is, and its container (`containers` caches the rows already read).
fn locate_in(
    c: &rusqlite::Connection,
    id: &ChunkId,
    containers: &mut HashMap<ContainerId, ContainerRow>,
) -> Result<(ChunkLocation, ContainerRow)> {
    let loc = catalog::get_chunk(c, id)?.ok_or_else(|| StoreError::Corrupt {
        container: ContainerId(0),
        detail: format!("chunk {id} is not in the index"),
    })?;
    if let Some(row) = containers.get(&loc.container) {
        return Ok((loc, row.clone()));
    }
    let row = catalog::get_container(c, loc.container)?.ok_or_else(|| StoreError::Corrupt {
        container: loc.container,
        detail: "container is not in the catalog".into(),
    })?;
    containers.insert(loc.container, row.clone());
    Ok((loc, row))
}

/// Where one stored frame of a read window lies, for [`plan_read_runs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameSpot {
    container: ContainerId,
    offset: u64,
    stored_len: u32,
    /// A chunk stored alone (not a group's frame).
    alone: bool,
}

/// The most bytes one read of a run of chunks stored alone covers.
const RUN_MAX_BYTES: u64 = 1 << 20;
/// The most bytes between two chunks of a run (their entry headers lie between them; a larger gap holds
/// something else, read for nothing).
const RUN_MAX_GAP: u64 = 4096;

/// Cuts a window's frames (in window order) into runs read together: consecutive chunks stored alone in one
/// container, each starting at most [`RUN_MAX_GAP`] bytes after the one before ends, at most
/// [`RUN_MAX_BYTES`] from the first's start to the last's end; every other frame is a run of its own. Chunks
/// that do not compress are stored alone, one entry each (§4.5): read one by one, a restore of such data made
/// a read of 16-64 KiB per chunk, below the O_DIRECT threshold, so through the page cache and its copy.
fn plan_read_runs(frames: &[FrameSpot]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let joins = runs.last().is_some_and(|run| {
            let (first, prev) = (&frames[run.start], &frames[i - 1]);
            let prev_end = prev.offset + u64::from(prev.stored_len);
            f.alone
                && prev.alone
                && f.container == prev.container
                && f.offset >= prev_end
                && f.offset - prev_end <= RUN_MAX_GAP
                && f.offset + u64::from(f.stored_len) - first.offset <= RUN_MAX_BYTES
        });
        match runs.last_mut() {
            Some(run) if joins => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// The verified chunks of one stored frame (`at`, as read: `stored`): a chunk alone, or members of a group,
/// which is decompressed once. None if any does not verify.
fn decode_frame(
    at: &ChunkLocation,
    chunks: &[(ChunkId, ChunkLocation)],
    stored: &[u8],
) -> Option<Vec<Bytes>> {
    match at.group {
        None => chunks
            .iter()
            .map(|(id, l)| {
                decode_chunk(l.codec, l.raw_len, stored, id)
                    .ok()
                    .map(Bytes::from)
            })
            .collect(),
        Some(g) => {
            let raw = decode_group(stored, g.group_raw).ok()?;
            // Members most of the group are served as slices of it (copying each out was ~3% of a restore's
            // CPU, session 29); a few members of a larger group are copied out, so that a window of dedup
            // hits into many groups holds about the bytes it serves, not whole groups.
            let served: u64 = chunks.iter().map(|(_, l)| u64::from(l.raw_len)).sum();
            if served.saturating_mul(2) >= raw.len() as u64 {
                let raw = Bytes::from(raw);
                chunks
                    .iter()
                    .map(|(id, l)| {
                        let range = member_range(&raw, l.group?, l.raw_len, id).ok()?;
                        Some(raw.slice(range))
                    })
                    .collect()
            } else {
                chunks
                    .iter()
                    .map(|(id, l)| {
                        group_member(&raw, l.group?, l.raw_len, id)
                            .ok()
                            .map(Bytes::from)
                    })
                    .collect()
            }
        }
    }
}

/// One stored frame to read for a window: its container, where it is, and the (window position, chunk) pairs
/// it serves.
type ReadUnit = (
    ContainerRow,
    ChunkLocation,
    Vec<(usize, ChunkId, ChunkLocation)>,
);

/// Read-ahead windows in flight per reader, the one being served included. A window's shard reads touch one
/// or two disks (a container's data is k contiguous shards, 2 MiB each at the default size), so a reader
/// reading one window at a time kept about one disk of a JBOD busy (`cargo bench --bench jbod`: a restore
/// at 9% of twelve disks); the windows after the current one are read and verified meanwhile on the read
/// pool, which also keeps the cores busy while the client takes the current one. Bounds a reader's memory
/// to this many windows (each up to `READ_AHEAD_BYTES` plus the rest of its last group).
const READ_AHEAD_WINDOWS: usize = 4;

/// A planned read-ahead window: where each chunk lies in the object, and the chunks, read and verified (or
/// their errors, kept for when they are reached) on the read threads.
struct Window {
    /// (absolute offset in the object, length) of each chunk not yet served, in order.
    spans: VecDeque<(u64, u64)>,
    chunks: WindowChunks,
}

enum WindowChunks {
    Ready(VecDeque<Result<Bytes>>),
    Reading(ReadingWindow),
    /// Planning failed (a catalog error, a missing segment): the reader returns it when it gets here.
    Failed(Option<StoreError>),
}

/// A window's reads as planned (`Store::plan_window`).
struct WindowReads {
    /// Chunks in the window.
    len: usize,
    /// The window positions of chunks that could not be located, with why.
    unlocated: Vec<(usize, StoreError)>,
    /// The frames to read, in runs.
    runs: Vec<Vec<ReadUnit>>,
}

/// For each unit of a run, the window positions of its chunks and their container.
type UnitPositions = Vec<Vec<(usize, ContainerId)>>;

/// What a run's task gives back: each unit's chunks, or its error.
type RunChunks = Vec<Result<Vec<Bytes>>>;

fn unit_positions(run: &[ReadUnit]) -> UnitPositions {
    run.iter()
        .map(|(_, _, members)| members.iter().map(|(i, _, l)| (*i, l.container)).collect())
        .collect()
}

/// A window being read: each run's task, and where its chunks go.
struct ReadingWindow {
    len: usize,
    unlocated: Vec<(usize, StoreError)>,
    runs: Vec<(UnitPositions, Pending<RunChunks>)>,
}

impl ReadingWindow {
    /// Waits for every run and puts the window's chunks (or their errors) in order.
    fn wait(self) -> VecDeque<Result<Bytes>> {
        let mut out: Vec<Option<Result<Bytes>>> = (0..self.len).map(|_| None).collect();
        for (i, e) in self.unlocated {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(Err(e));
            }
        }
        for (positions, pending) in self.runs {
            let mut results = pending.wait().unwrap_or_default().into_iter();
            for members in positions {
                // None: the run's task ended without an answer (it panicked); its chunks are not served.
                let result = results.next().unwrap_or_else(|| {
                    Err(StoreError::Corrupt {
                        container: members.first().map_or(ContainerId(0), |m| m.1),
                        detail: "read worker stopped".into(),
                    })
                });
                place_unit(&mut out, members, result);
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Corrupt {
                        container: ContainerId(0),
                        detail: "read window lost a chunk".into(),
                    })
                })
            })
            .collect()
    }
}

/// Puts one unit's chunks (or its error, for each of them) at their window positions.
fn place_unit(
    out: &mut [Option<Result<Bytes>>],
    members: Vec<(usize, ContainerId)>,
    result: Result<Vec<Bytes>>,
) {
    match result {
        Ok(chunks) => {
            for ((i, _), raw) in members.into_iter().zip(chunks) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(Ok(raw));
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let mut first = Some(e);
            for (i, container) in members {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(Err(first.take().unwrap_or_else(|| StoreError::Corrupt {
                        container,
                        detail: msg.clone(),
                    })));
                }
            }
        }
    }
}

/// A window as planned: its chunk ids, (absolute offset, length) of each, and where each is stored.
type PlannedWindow = (
    Vec<ChunkId>,
    VecDeque<(u64, u64)>,
    Vec<Result<(ChunkLocation, ContainerRow)>>,
);

/// Walks an object's sources and segments ahead of the reader, a window at a time.
struct Planner {
    /// (upload, size) of each source, in order.
    sources: Vec<(UploadId, u64)>,
    /// Absolute offset where the next window starts (inside its first chunk for a range read).
    at: u64,
    end: u64,
    src_idx: usize,
    src_base: u64,
    seg: Option<SegmentRow>,
    entry_idx: usize,
    /// Logical start (within the source) of `seg.entries[entry_idx]`.
    entry_start: u64,
    failed: bool,
}

/// Streams an object's bytes; every chunk is verified against its BLAKE3 before a byte is returned.
pub struct ObjectReader {
    store: Arc<Store>,
    plan: Planner,
    windows: VecDeque<Window>,
    pos: u64,
    /// The current chunk (as far as the read goes), handed out without a copy by `next_frame`.
    buf: Bytes,
    buf_pos: usize,
}

impl Store {
    /// `range` is absolute byte offsets (end exclusive) within the object; `InvalidRange` otherwise.
    pub fn open_object(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ObjectReader)> {
        let row = self.object_row(bucket, key)?;
        let range = range.unwrap_or(0..row.info.size);
        if range.start > range.end || range.end > row.info.size {
            return Err(StoreError::InvalidRange);
        }
        let mut sources = Vec::with_capacity(row.sources.len());
        for s in &row.sources {
            let id = UploadId::from_hex(&s.upload_id).ok_or_else(|| {
                StoreError::Config(format!("catalog: malformed upload id {:?}", s.upload_id))
            })?;
            sources.push((id, s.size));
        }
        let reader = ObjectReader {
            store: self.clone(),
            plan: Planner {
                sources,
                at: range.start,
                end: range.end,
                src_idx: 0,
                src_base: 0,
                seg: None,
                entry_idx: 0,
                entry_start: 0,
                failed: false,
            },
            windows: VecDeque::new(),
            pos: range.start,
            buf: Bytes::new(),
            buf_pos: 0,
        };
        Ok((row.info, reader))
    }

    /// Where a chunk is, and its container.
    fn locate(&self, id: &ChunkId) -> Result<(ChunkLocation, ContainerRow)> {
        self.catalog.read(|c| locate_in(c, id, &mut HashMap::new()))
    }

    /// Locates a read-ahead window in one catalog read: `ids` (the first of `entries`, which start at logical
    /// `start`), extended to the end of the chunk group its last chunk lies in, within the requested range
    /// (`end`). Returns the window's ids and where each is, with its container.
    ///
    /// One transaction for the window: a read transaction per chunk (pool, locks, two queries) was ~6% of a
    /// restore's CPU, half of it in the file locks SQLite takes per transaction; the containers a window
    /// touches are read once. The extension: a group cut by the window's end was decompressed (in a degraded
    /// read also reconstructed) again by the next window; with 2 MiB groups in 4 MiB windows that cost a
    /// degraded restore ~20% of its CPU (docs/performance-history.md, session 7).
    fn locate_window(
        &self,
        mut ids: Vec<ChunkId>,
        entries: &[(ChunkId, u32)],
        start: u64,
        end: u64,
    ) -> (Vec<ChunkId>, Vec<Result<(ChunkLocation, ContainerRow)>>) {
        let base = ids.len();
        let located = self.catalog.read(|c| {
            let mut containers = HashMap::new();
            let mut located: Vec<_> = ids
                .iter()
                .map(|id| locate_in(c, id, &mut containers))
                .collect();
            let group_of = |l: &Result<(ChunkLocation, ContainerRow)>| match l {
                Ok((loc, _)) if loc.group.is_some() => Some((loc.container, loc.offset)),
                _ => None,
            };
            let Some(group) = located.last().and_then(group_of) else {
                return Ok(located);
            };
            let mut at = start
                + entries[..base]
                    .iter()
                    .map(|(_, l)| u64::from(*l))
                    .sum::<u64>();
            for (id, len) in &entries[base..] {
                if at >= end || located.len() >= 2 * READ_AHEAD_MAX_CHUNKS {
                    break;
                }
                let loc = locate_in(c, id, &mut containers);
                if group_of(&loc) != Some(group) {
                    break;
                }
                located.push(loc);
                at += u64::from(*len);
            }
            Ok(located)
        });
        match located {
            Ok(located) => {
                ids.extend(entries[base..located.len()].iter().map(|(id, _)| *id));
                (ids, located)
            }
            Err(e) => {
                let detail = format!("catalog read failed: {e}");
                let located = ids
                    .iter()
                    .map(|_| Err(StoreError::Config(detail.clone())))
                    .collect();
                (ids, located)
            }
        }
    }

    /// Reads and verifies one chunk, reconstructing from parity when needed.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (loc, row) = self.locate(id)?;
        let mut v = self.read_stored(&row, &loc, &[(*id, loc)], false)?;
        v.pop().map(Vec::from).ok_or_else(|| StoreError::Corrupt {
            container: row.id,
            detail: "empty read".into(),
        })
    }

    /// Reads the stored bytes at `at` (a chunk entry's payload or a group's frame) once and returns `chunks`,
    /// all located there, each verified; reconstructs from parity when the healthy read does not verify.
    /// `streaming`: the read is part of a restore that goes on through the container, so a container with an
    /// unreadable data shard is reconstructed whole, once, and kept for the next frames (reconstructed.rs);
    /// a single chunk read reconstructs just the rows it needs.
    fn read_stored(
        &self,
        row: &ContainerRow,
        at: &ChunkLocation,
        chunks: &[(ChunkId, ChunkLocation)],
        streaming: bool,
    ) -> Result<Vec<Bytes>> {
        let decode = |stored: &[u8]| decode_frame(at, chunks, stored);
        let range = at.offset..at.offset + at.stored_len as u64;
        // A restore in a container with a data shard on a failed disk takes all its frames from one
        // reconstruction, which reads each readable shard once; outside a restore, a range that needs such a
        // shard skips the healthy read, which would only fail part way.
        let container_degraded = self.container_degraded(row);
        let known_unreadable = if streaming {
            container_degraded
        } else {
            self.range_hits_unreadable_shard(row, &range)
        };
        let unreadable = if known_unreadable {
            true
        } else {
            match self.read_container_range_with(row, range.clone(), !container_degraded, decode) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => false, // read but wrong: bit rot, which a subset search locates
                Err(_) => true,
            }
        };
        if streaming && unreadable {
            let whole = self
                .reconstructed
                .get_or_reconstruct(row.id, || self.reconstruct_container(row));
            if let Some(whole) = whole
                && let Some(v) = whole.range(range.clone()).and_then(|b| decode(&b))
            {
                self.note_degraded(row.id, &whole.unreadable);
                return Ok(v);
            }
        }
        let (v, bad) = self.degraded_read(row, range, &decode)?;
        self.note_degraded(row.id, &bad);
        Ok(v)
    }

    /// Plans the reads of a window of chunks (`ids`, `located` by `locate_window`): one unit per stored frame,
    /// so the members of one group are read and decompressed once, and the units in runs (`plan_read_runs`),
    /// each read as one task.
    fn plan_window(
        &self,
        ids: &[ChunkId],
        located: Vec<Result<(ChunkLocation, ContainerRow)>>,
    ) -> WindowReads {
        let mut unlocated = Vec::new();
        // Units of work: one per stored frame (container, offset), holding the window positions it serves.
        let mut units: Vec<ReadUnit> = Vec::new();
        let mut unit_of: HashMap<(ContainerId, u64), usize> = HashMap::new();
        for (i, (id, located)) in ids.iter().zip(located).enumerate() {
            match located {
                Err(e) => unlocated.push((i, e)),
                Ok((loc, row)) => {
                    let key = (loc.container, loc.offset);
                    match unit_of.get(&key) {
                        Some(&u) if loc.group.is_some() => units[u].2.push((i, *id, loc)),
                        _ => {
                            unit_of.insert(key, units.len());
                            units.push((row, loc, vec![(i, *id, loc)]));
                        }
                    }
                }
            }
        }
        let frames: Vec<FrameSpot> = units
            .iter()
            .map(|(_, at, _)| FrameSpot {
                container: at.container,
                offset: at.offset,
                stored_len: at.stored_len,
                alone: at.group.is_none(),
            })
            .collect();
        let mut units = units.into_iter();
        let runs = plan_read_runs(&frames)
            .into_iter()
            .map(|run| units.by_ref().take(run.len()).collect())
            .collect();
        WindowReads {
            len: ids.len(),
            unlocated,
            runs,
        }
    }

    /// Reads and verifies one run of a window's units: each unit's chunks, or its error.
    fn read_run(&self, run: &[ReadUnit]) -> RunChunks {
        let read = |(row, at, members): &ReadUnit| {
            let chunks: Vec<(ChunkId, ChunkLocation)> =
                members.iter().map(|(_, id, l)| (*id, *l)).collect();
            self.read_stored(row, at, &chunks, true)
        };
        match run {
            [one] => vec![read(one)],
            several => self.read_alone_run(several, &read),
        }
    }

    /// Starts reading a planned window, a task per run on the read threads.
    fn start_window(self: &Arc<Self>, planned: WindowReads) -> ReadingWindow {
        let runs = planned
            .runs
            .into_iter()
            .map(|run| {
                let positions = unit_positions(&run);
                let store = self.clone();
                let pending = read_threads().start(move || {
                    let chunks = store.read_run(&run);
                    // Let go of the store before the reader can learn the run is done: see `Drop for
                    // ObjectReader`.
                    drop(store);
                    chunks
                });
                (positions, pending)
            })
            .collect();
        ReadingWindow {
            len: planned.len,
            unlocated: planned.unlocated,
            runs,
        }
    }

    /// Chunks stored alone, back to back in one container (a run from [`plan_read_runs`]): their range is read
    /// once on the healthy path and each chunk verified from its slice. A container with an unreadable data
    /// shard, a failed read, or a chunk that does not verify goes the frame-by-frame way (`read`), which
    /// repairs or reports.
    fn read_alone_run(
        &self,
        run: &[ReadUnit],
        read: &(dyn Fn(&ReadUnit) -> Result<Vec<Bytes>> + Sync),
    ) -> RunChunks {
        let (Some((row, first, _)), Some((_, last, _))) = (run.first(), run.last()) else {
            return Vec::new();
        };
        let range = first.offset..last.offset + u64::from(last.stored_len);
        // Each frame decoded from the run's bytes where they were read; None where that failed.
        let decode_run = |b: &[u8]| -> Vec<Option<Vec<Bytes>>> {
            run.iter()
                .map(|(_, at, members)| {
                    let start = usize::try_from(at.offset - range.start).ok()?;
                    let stored = b.get(start..start + at.stored_len as usize)?;
                    let chunks: Vec<(ChunkId, ChunkLocation)> =
                        members.iter().map(|(_, id, l)| (*id, *l)).collect();
                    decode_frame(at, &chunks, stored)
                })
                .collect()
        };
        let from_run = if self.container_degraded(row) {
            None
        } else {
            self.read_container_range_with(row, range.clone(), true, decode_run)
                .ok()
        };
        let mut decoded = from_run.unwrap_or_default().into_iter();
        run.iter()
            .map(|unit| match decoded.next().flatten() {
                Some(chunks) => Ok(chunks),
                None => read(unit),
            })
            .collect()
    }

    fn shard_source(
        &self,
        row: &ContainerRow,
        idx: usize,
    ) -> Option<Arc<super::diskset::DiskEntry>> {
        let disk = self.disks.get(row.disks.get(idx).copied().flatten()?)?;
        (disk.state() != DiskState::Failed && disk.state() != DiskState::Retired).then_some(disk)
    }

    /// Reads bytes `within` shard `idx`; `once` for bytes not read again soon (`Disk::read_at_once`).
    fn read_shard_range(
        &self,
        row: &ContainerRow,
        idx: usize,
        within: u64,
        buf: &mut [u8],
        once: bool,
    ) -> io::Result<()> {
        self.on_shard_source(row, idx, |d| {
            read_shard_file(d, &shard_path(row.id, idx), within, buf, once)
        })
    }

    /// Runs the read `io` on the disk holding shard `idx`, noting a failure against that disk; NotFound if the
    /// shard's disk is failed or unknown.
    fn on_shard_source(
        &self,
        row: &ContainerRow,
        idx: usize,
        io: impl FnOnce(&DiskEntry) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(d) = self.shard_source(row, idx) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "shard's disk is failed or unknown",
            ));
        };
        let r = io(&d);
        if let Err(e) = &r {
            self.note_shard_read_error(&d, e);
        }
        r
    }

    /// Counts a failed shard read against its disk (a missing file on a disk that is there is not a disk
    /// error: the shard's own problem, found by scrub).
    fn note_shard_read_error(&self, d: &DiskEntry, e: &io::Error) {
        if e.kind() != io::ErrorKind::NotFound {
            self.note_disk_error(d.id, e);
        } else if !d.disk.is_present() {
            self.note_disk_error(
                d.id,
                &io::Error::new(io::ErrorKind::NotFound, "disk vanished"),
            );
        }
    }

    /// Container bytes `range`, read straight from the data shards (the healthy path). `once`: past the page
    /// cache, for a container whose data shards are all readable; otherwise some of its frames are read
    /// degraded, which (outside a restore) re-reads the rows of all shards per frame, and finds those the
    /// healthy reads brought into the cache (reading them with O_DIRECT cost a degraded restore ~15%).
    fn read_container_range(
        &self,
        row: &ContainerRow,
        range: Range<u64>,
        once: bool,
    ) -> io::Result<Vec<u8>> {
        let s = row.shard_len;
        let len = usize::try_from(range.end - range.start).map_err(io::Error::other)?;
        let mut out = if once {
            // Appended from where each read lent its bytes: no zeroed buffer first.
            Vec::with_capacity(len)
        } else {
            vec![0u8; len]
        };
        let mut pos = range.start;
        let mut filled = 0usize;
        while pos < range.end {
            let idx = (pos / s) as usize;
            let within = pos % s;
            let n = (s - within).min(range.end - pos) as usize;
            if once {
                self.read_shard_range_with(row, idx, within, n, &mut |b| out.extend_from_slice(b))?;
            } else {
                self.read_shard_range(row, idx, within, &mut out[filled..filled + n], false)?;
            }
            pos += n as u64;
            filled += n;
        }
        if out.len() != len {
            return Err(io::Error::other("a disk read lent fewer bytes than asked"));
        }
        Ok(out)
    }

    /// `Disk::read_once_with` of `len` bytes `within` shard `idx`, its errors noted against the disk.
    fn read_shard_range_with(
        &self,
        row: &ContainerRow,
        idx: usize,
        within: u64,
        len: usize,
        use_bytes: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        self.on_shard_source(row, idx, |d| {
            let offset = SHARD_HEADER_LEN as u64 + within;
            d.disk
                .read_once_with(&shard_path(row.id, idx), offset, len, use_bytes)
        })
    }

    /// `use_bytes` of container bytes `range` (as `read_container_range` reads them). A range within one data
    /// shard, read `once`, is lent where the disk read it (`Disk::read_once_with`): no buffer of its own to
    /// zero and copy into. Such is nearly every frame and run a restore reads.
    fn read_container_range_with<R>(
        &self,
        row: &ContainerRow,
        range: Range<u64>,
        once: bool,
        use_bytes: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let s = row.shard_len;
        let in_one_shard =
            s > 0 && range.start < range.end && range.start / s == (range.end - 1) / s;
        if !(once && in_one_shard) {
            let bytes = self.read_container_range(row, range, once)?;
            return Ok(use_bytes(&bytes));
        }
        let len = usize::try_from(range.end - range.start).map_err(io::Error::other)?;
        let mut use_bytes = Some(use_bytes);
        let mut result = None;
        self.read_shard_range_with(
            row,
            (range.start / s) as usize,
            range.start % s,
            len,
            &mut |bytes: &[u8]| {
                if let Some(f) = use_bytes.take() {
                    result = Some(f(bytes));
                }
            },
        )?;
        result.ok_or_else(|| io::Error::other("the disk read lent no bytes"))
    }

    /// Whether any data shard of the container is on a failed, retired or unknown disk.
    fn container_degraded(&self, row: &ContainerRow) -> bool {
        self.range_hits_unreadable_shard(row, &(0..row.shard_len * u64::from(row.k)))
    }

    /// Whether a data shard holding part of `range` is on a failed, retired or unknown disk.
    fn range_hits_unreadable_shard(&self, row: &ContainerRow, range: &Range<u64>) -> bool {
        let s = row.shard_len;
        if s == 0 || range.start >= range.end {
            return false;
        }
        let (first, last) = (range.start / s, (range.end - 1) / s);
        (first..=last).any(|i| self.shard_source(row, i as usize).is_none())
    }

    /// The container's k data shards, whole: the first k shards that can be read (data shards first, read in
    /// parallel), the missing data shards decoded from them. None if fewer than k can be read or the decode
    /// fails. Nothing here is verified: the frames served from it are, by their chunk hashes.
    fn reconstruct_container(&self, row: &ContainerRow) -> Option<DataShards> {
        let k = row.k as usize;
        let width = k + row.m as usize;
        let s = usize::try_from(row.shard_len).ok()?;
        let read = |i: usize| -> Option<Vec<u8>> {
            let mut b = vec![0u8; s];
            self.read_shard_range(row, i, 0, &mut b, true).ok()?;
            Some(b)
        };
        // Shards expected readable, data shards first; read the first k of them at once.
        let candidates: Vec<usize> = (0..width)
            .filter(|i| self.shard_source(row, *i).is_some())
            .collect();
        let mut pieces: Vec<Option<Vec<u8>>> = vec![None; width];
        // On threads kept for it, not the read threads: this runs on a read thread while other read threads
        // may wait for this very reconstruction, and if its shard reads queued behind theirs, every read thread
        // could end up waiting on reads none is left to do. The kept threads' reads own what they use; their
        // errors are noted here.
        let reads: Vec<_> = candidates
            .iter()
            .take(k)
            .skip(1)
            .map(|&i| {
                let (source, path) = (self.shard_source(row, i), shard_path(row.id, i));
                let pending = reconstruct_readers().start(move || {
                    let d = source?;
                    let mut b = vec![0u8; s];
                    let r = read_shard_file(&d, &path, 0, &mut b, true);
                    Some((d, r.map(|()| b)))
                });
                (i, pending)
            })
            .collect();
        if let Some(&i) = candidates.first() {
            pieces[i] = read(i);
        }
        for (i, pending) in reads {
            pieces[i] = match pending.wait().flatten() {
                Some((_, Ok(b))) => Some(b),
                Some((d, Err(e))) => {
                    self.note_shard_read_error(&d, &e);
                    None
                }
                None => None,
            };
        }
        // Any that failed: the remaining candidates, one at a time, until k are in.
        let mut tried = k.min(candidates.len());
        while tried < candidates.len() && pieces.iter().flatten().count() < k {
            pieces[candidates[tried]] = read(candidates[tried]);
            tried += 1;
        }
        // Unreadable: on a failed disk, or tried and failed (parity not needed stays unread, not bad).
        let unreadable: Vec<usize> = (0..width)
            .filter(|i| pieces[*i].is_none() && !candidates[tried..].contains(i))
            .collect();
        let erasure = Erasure::new(Geometry::new(row.k, row.m).ok()?).ok()?;
        erasure.reconstruct_data(&mut pieces).ok()?;
        let shards: Vec<Vec<u8>> = pieces.into_iter().take(k).collect::<Option<_>>()?;
        Some(DataShards { shards, unreadable })
    }

    /// Reconstructs container bytes `range` from any k shards, trying subsets until `accept` takes the result
    /// (it verifies a chunk hash). Returns the accepted value and the shard indexes found bad.
    pub(crate) fn degraded_read<T>(
        &self,
        row: &ContainerRow,
        range: Range<u64>,
        accept: &dyn Fn(&[u8]) -> Option<T>,
    ) -> Result<(T, Vec<usize>)> {
        let k = row.k as usize;
        let width = k + row.m as usize;
        let s = row.shard_len;
        if s == 0 || range.end > s * k as u64 {
            return Err(StoreError::Corrupt {
                container: row.id,
                detail: "range outside the container".into(),
            });
        }
        // Rows [lo, hi) of every shard cover the requested range.
        let first = range.start / s;
        let last = (range.end.max(1) - 1) / s;
        let (lo, hi) = if first == last {
            (range.start % s, (range.end - 1) % s + 1)
        } else {
            (0, s)
        };
        // Pass 0 reads just the first k shards that answer (the usual case: the missing ones are on failed
        // disks); pass 1 reads the rest only when those did not verify (bit rot in one of them).
        let mut pieces: Vec<Option<Vec<u8>>> = vec![None; width];
        let mut tried = vec![false; width];
        let erasure = Erasure::new(Geometry::new(row.k, row.m)?)?;
        for pass in 0..2 {
            let mut have = pieces.iter().filter(|p| p.is_some()).count();
            for i in 0..width {
                if pass == 0 && have >= k {
                    break;
                }
                if tried[i] {
                    continue;
                }
                tried[i] = true;
                let mut b = vec![0u8; (hi - lo) as usize];
                if self.read_shard_range(row, i, lo, &mut b, false).is_ok() {
                    pieces[i] = Some(b);
                    have += 1;
                }
            }
            let present: Vec<usize> = (0..width).filter(|i| pieces[*i].is_some()).collect();
            if present.len() < k {
                break;
            }
            for subset in combinations(&present, k) {
                let mut trial: Vec<Option<Vec<u8>>> = (0..width)
                    .map(|i| {
                        if subset.contains(&i) {
                            pieces[i].clone()
                        } else {
                            None
                        }
                    })
                    .collect();
                // Only the data shards are needed for the bytes; parity outside the subset stays unchecked.
                if erasure.reconstruct_data(&mut trial).is_err() {
                    continue;
                }
                let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
                let mut pos = range.start;
                while pos < range.end {
                    let idx = (pos / s) as usize;
                    let within = pos % s;
                    let n = (s - within).min(range.end - pos);
                    let Some(shard) = &trial[idx] else { break };
                    let a = (within - lo) as usize;
                    bytes.extend_from_slice(&shard[a..a + n as usize]);
                    pos += n;
                }
                if let Some(v) = accept(&bytes) {
                    let bad: Vec<usize> = (0..width)
                        .filter(|i| match (&pieces[*i], &trial[*i]) {
                            (Some(read), Some(good)) => read != good,
                            (Some(_), None) => false, // a parity shard this read did not need
                            (None, _) => tried[*i],   // unreadable (not merely unread)
                        })
                        .collect();
                    return Ok((v, bad));
                }
            }
            if tried.iter().all(|t| *t) {
                break;
            }
        }
        let readable = pieces.iter().filter(|p| p.is_some()).count();
        Err(self.data_lost(row.id, readable.min(k.saturating_sub(1)), k))
    }

    pub(crate) fn data_lost(&self, container: ContainerId, have: usize, need: usize) -> StoreError {
        let objects = self
            .catalog
            .read(|c| catalog::objects_using_container(c, container, 20))
            .unwrap_or_default();
        tracing::error!(%container, have, need, ?objects, "container unreadable: data lost");
        StoreError::DataLost {
            container,
            have,
            need,
            objects,
        }
    }

    /// Records a degraded read once per container per process (scrub repairs it).
    fn note_degraded(&self, container: ContainerId, bad: &[usize]) {
        static SEEN: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();
        let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
        let first = seen
            .lock()
            .map(|mut s| s.len() < 100_000 && s.insert(container.0))
            .unwrap_or(false);
        if !first {
            return;
        }
        tracing::warn!(%container, ?bad, "degraded read: reconstructed from parity");
        let _ = self.catalog.write(|tx| {
            catalog::add_event(
                tx,
                now_ms(),
                "degraded-read",
                Some(container),
                &format!("bad or missing shards {bad:?}"),
            )
        });
    }
}

/// All k-subsets of `items`, in lexicographic order (the first is "the first k present shards").
fn combinations(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    let n = items.len();
    let mut out = Vec::new();
    if k == 0 || k > n {
        return out;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        out.push(idx.iter().map(|&i| items[i]).collect());
        let Some(i) = (0..k).rev().find(|&i| idx[i] < n - k + i) else {
            return out;
        };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

impl Planner {
    fn done(&self) -> bool {
        self.failed || self.at >= self.end
    }

    /// The next window: its chunk ids, their spans in the object and where each is; None at the end.
    fn next_window(&mut self, store: &Store) -> Result<Option<PlannedWindow>> {
        if self.done() {
            return Ok(None);
        }
        // Move to the source holding `at`.
        while self.src_idx < self.sources.len()
            && self.at >= self.src_base + self.sources[self.src_idx].1
        {
            self.src_base += self.sources[self.src_idx].1;
            self.src_idx += 1;
            self.seg = None;
        }
        let Some(&(upload, _)) = self.sources.get(self.src_idx) else {
            return Err(StoreError::Corrupt {
                container: ContainerId(0),
                detail: "object shorter than its size".into(),
            });
        };
        let off = self.at - self.src_base;
        loop {
            let need_seek = match &self.seg {
                None => true,
                Some(seg) => self.entry_idx >= seg.entries.len(),
            };
            if need_seek {
                let next = match &self.seg {
                    Some(seg) => store
                        .catalog
                        .read(|c| catalog::get_segment(c, &upload, seg.segment_no + 1))?,
                    None => store
                        .catalog
                        .read(|c| catalog::find_segment(c, &upload, off))?,
                };
                let Some(seg) = next else {
                    return Err(StoreError::Corrupt {
                        container: ContainerId(0),
                        detail: format!(
                            "upload {} has no segment for offset {off}",
                            upload.to_hex()
                        ),
                    });
                };
                self.entry_start = seg.logical_start;
                self.entry_idx = 0;
                self.seg = Some(seg);
            }
            let Some(seg) = &self.seg else { continue };
            let (_, len) = seg.entries[self.entry_idx];
            if off >= self.entry_start + u64::from(len) {
                self.entry_start += u64::from(len);
                self.entry_idx += 1;
                continue;
            }
            // The window: entries from here that start before the end of the requested range.
            let end_in_src = self.end - self.src_base;
            let mut start = self.entry_start;
            let mut window = 0u64;
            let ids: Vec<ChunkId> = seg.entries[self.entry_idx..]
                .iter()
                .take_while(|(_, l)| {
                    let take = start < end_in_src && (window < READ_AHEAD_BYTES);
                    start += u64::from(*l);
                    window += u64::from(*l);
                    take
                })
                .take(READ_AHEAD_MAX_CHUNKS)
                .map(|(c, _)| *c)
                .collect();
            let (ids, located) = store.locate_window(
                ids,
                &seg.entries[self.entry_idx..],
                self.entry_start,
                end_in_src,
            );
            let mut spans = VecDeque::with_capacity(ids.len());
            for (_, len) in &seg.entries[self.entry_idx..self.entry_idx + ids.len()] {
                spans.push_back((self.src_base + self.entry_start, u64::from(*len)));
                self.entry_start += u64::from(*len);
            }
            self.entry_idx += ids.len();
            self.at = self.src_base + self.entry_start;
            return Ok(Some((ids, spans, located)));
        }
    }
}

impl ObjectReader {
    /// Plans windows and starts reading them on the read threads until `READ_AHEAD_WINDOWS` are in flight.
    fn fill_windows(&mut self) {
        while self.windows.len() < READ_AHEAD_WINDOWS && !self.plan.done() {
            let window = match self.plan.next_window(&self.store) {
                Ok(None) => break,
                Ok(Some((ids, spans, located))) => {
                    let planned = self.store.plan_window(&ids, located);
                    let chunks = WindowChunks::Reading(self.store.start_window(planned));
                    Window { spans, chunks }
                }
                Err(e) => {
                    self.plan.failed = true;
                    Window {
                        spans: VecDeque::new(),
                        chunks: WindowChunks::Failed(Some(e)),
                    }
                }
            };
            self.windows.push_back(window);
        }
    }

    fn next_chunk(&mut self) -> Result<()> {
        while self
            .windows
            .front()
            .is_some_and(|w| w.spans.is_empty() && !matches!(w.chunks, WindowChunks::Failed(_)))
        {
            self.windows.pop_front();
        }
        self.fill_windows();
        let Some(window) = self.windows.front_mut() else {
            return Err(StoreError::Corrupt {
                container: ContainerId(0),
                detail: "object shorter than its size".into(),
            });
        };
        window.chunks = match std::mem::replace(&mut window.chunks, WindowChunks::Failed(None)) {
            WindowChunks::Reading(reading) => WindowChunks::Ready(reading.wait()),
            other => other,
        };
        let chunks = match &mut window.chunks {
            WindowChunks::Ready(chunks) => chunks,
            WindowChunks::Failed(e) => {
                return Err(e.take().unwrap_or_else(|| StoreError::Corrupt {
                    container: ContainerId(0),
                    detail: "object read failed earlier".into(),
                }));
            }
            WindowChunks::Reading(_) => {
                return Err(StoreError::Corrupt {
                    container: ContainerId(0),
                    detail: "read-ahead window not received".into(),
                });
            }
        };
        let (Some((start, len)), Some(raw)) = (window.spans.pop_front(), chunks.pop_front()) else {
            return Err(StoreError::Corrupt {
                container: ContainerId(0),
                detail: "read-ahead window empty".into(),
            });
        };
        let raw = raw?;
        if raw.len() as u64 != len || self.pos < start || self.pos >= start + len {
            return Err(StoreError::Corrupt {
                container: ContainerId(0),
                detail: format!(
                    "chunk at object offset {start} has {} bytes, the segment says {len}",
                    raw.len()
                ),
            });
        }
        let skip = (self.pos - start) as usize;
        let take = ((self.plan.end - self.pos) as usize).min(raw.len() - skip);
        self.buf = raw;
        self.buf.truncate(skip + take);
        self.buf_pos = skip;
        Ok(())
    }
}

impl Drop for ObjectReader {
    /// Waits for the windows still being read (a few reads and checks at most): once a reader is gone, no
    /// work it started holds the store, so a store closed right after a read (or a read abandoned by its
    /// client) releases its data directory's lock at once.
    fn drop(&mut self) {
        for window in std::mem::take(&mut self.windows) {
            if let WindowChunks::Reading(reading) = window.chunks {
                for (_, pending) in reading.runs {
                    let _ = pending.wait();
                }
            }
        }
    }
}

impl ObjectReader {
    /// The bytes of the current chunk not yet read, at most `max`, moving on to the next chunk first if the
    /// current one is used up; empty at the end.
    fn next_bytes(&mut self, max: usize) -> io::Result<&[u8]> {
        let range = self.next_range(max)?;
        Ok(&self.buf[range])
    }

    /// Where in `buf` the next at most `max` bytes are (moving on to the next chunk first if needed).
    fn next_range(&mut self, max: usize) -> io::Result<Range<usize>> {
        if self.buf_pos >= self.buf.len() {
            if self.pos >= self.plan.end {
                return Ok(0..0);
            }
            self.next_chunk().map_err(io::Error::other)?;
        }
        let n = max.min(self.buf.len() - self.buf_pos);
        let from = self.buf_pos;
        self.buf_pos += n;
        self.pos += n as u64;
        Ok(from..from + n)
    }

    /// The next at most `max` bytes, at most one chunk's, as they were decoded and verified (no copy); empty
    /// at the end. A response body sends these as they are: copying the chunks into 1 MiB pieces first was
    /// ~5% of a restore's CPU (session 29).
    pub fn next_frame(&mut self, max: usize) -> io::Result<Bytes> {
        let range = self.next_range(max)?;
        Ok(self.buf.slice(range))
    }
}

impl io::Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let bytes = self.next_bytes(out.len())?;
        let n = bytes.len();
        out[..n].copy_from_slice(bytes);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{ContainerId, FrameSpot, RUN_MAX_BYTES, RUN_MAX_GAP, combinations, plan_read_runs};

    fn spot(container: u64, offset: u64, stored_len: u32, alone: bool) -> FrameSpot {
        FrameSpot {
            container: ContainerId(container),
            offset,
            stored_len,
            alone,
        }
    }

    #[test]
    fn adjacent_chunks_stored_alone_are_read_as_one_run() {
        // Back to back with 48-byte entry headers between them: one run.
        let header = 48;
        let mut frames = Vec::new();
        let mut at = 64;
        for len in [20_000u32, 35_000, 17_000, 60_000] {
            frames.push(spot(1, at, len, true));
            at += u64::from(len) + header;
        }
        assert_eq!(plan_read_runs(&frames), vec![0..4]);

        // A group's frame, another container, a gap past RUN_MAX_GAP, and a chunk earlier in the container
        // (a dedup hit pointing back) each start a new run.
        let frames = vec![
            spot(1, 64, 30_000, true),
            spot(1, 30_112, 30_000, true),
            spot(1, 60_160, 1_200_000, false),
            spot(1, 1_260_208, 30_000, true),
            spot(2, 64, 30_000, true),
            spot(2, 30_064 + RUN_MAX_GAP + 1, 30_000, true),
            spot(2, 64, 30_000, true),
            spot(2, 30_112, 30_000, true),
        ];
        assert_eq!(
            plan_read_runs(&frames),
            vec![0..2, 2..3, 3..4, 4..5, 5..6, 6..8]
        );
        assert!(plan_read_runs(&[]).is_empty());
    }

    #[test]
    fn a_run_reads_at_most_run_max_bytes() {
        let len = 40_000u32;
        let frames: Vec<FrameSpot> = (0..100u64)
            .map(|i| spot(7, i * u64::from(len), len, true))
            .collect();
        let runs = plan_read_runs(&frames);
        assert_eq!(runs.first(), Some(&(0..26)));
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 100);
        for r in &runs {
            let (first, last) = (&frames[r.start], &frames[r.end - 1]);
            assert!(last.offset + u64::from(last.stored_len) - first.offset <= RUN_MAX_BYTES);
        }
        // Consecutive and covering the window in order.
        assert!(runs.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn combinations_enumerate_all_subsets() {
        let c = combinations(&[0, 1, 3, 4, 5], 4);
        assert_eq!(c.len(), 5);
        assert_eq!(c[0], vec![0, 1, 3, 4]);
        assert_eq!(c[4], vec![1, 3, 4, 5]);
        assert_eq!(combinations(&[0, 1, 2, 3, 4, 5], 4).len(), 15);
        assert_eq!(combinations(&[1, 2], 2), vec![vec![1, 2]]);
        assert!(combinations(&[1], 2).is_empty());
    }
}
