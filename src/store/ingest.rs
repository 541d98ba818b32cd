//! Ingest: chunk -> BLAKE3 -> dedup -> zstd -> container -> seal (storage-format.md §4, §6).
//!
//! Memory per upload is bounded: one batch of chunks (`BATCH_BYTES`), one open container
//! (`container_target`) and one segment of at most `MAX_SEGMENT_ENTRIES` entries, whatever the object size.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use md5::{Digest, Md5};

use super::frames::FrameBatch;
use super::md5_lanes::{BatchBytes, Md5Stream};
use crate::core::md5x::Md5State;
use rayon::prelude::*;
use rusqlite::Transaction;

use super::api::{ObjectInfo, ObjectMeta, PartInfo, PutCondition, SealedUpload};
use super::catalog;
use super::dedup::ChunkLocation;
use super::error::Result;
use super::final_seal::FinalSeal;
use super::objects::PartRecord;
use super::{Store, now_ms};
use crate::core::chunker::chunks_at;
use crate::core::container::{
    Codec, ContainerBuilder, EntryType, GroupSlot, compress_chunk_reusing,
    compress_group_bytes_into, compress_group_into, plan_group_spans,
};
use crate::core::follow::{NextChunk, StreamFollower, follow_cuts};
use crate::core::ids::{ChunkId, ContainerId, IdMap, IdSet, UploadId};
use crate::core::records::{ObjectCommitRecord, SegmentRecord, SourceRef, encode_segment_entries};

/// Chunks are hashed and compressed in parallel batches of about this many bytes.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// A stream's first batch, and the first after following a remembered sequence ended (the stream changed
/// there), is cut at twice the chunker's `max` (at least this many bytes): where the stream repeats a
/// remembered one, the sequence is found (or found again a chunk or two after a change) within it, and the rest
/// is followed as it arrives (`Upload::following`). Of a repeated 16 MiB part ~1% is then copied, not 1/4, and
/// each place a night's stream changed costs ~200 KB of copying, not a 4 MiB batch.
const PROBE_BATCH_BYTES: usize = 128 * 1024;
/// Capacity of a batch buffer: it starts with the previous batch's unfinished bytes (at most two chunks: a
/// followed chunk whose cut could not be checked yet goes back with them, core::follow), is cut once it
/// holds BATCH_BYTES, and writes (network reads, well under 1 MiB) are split so that it never
/// holds more than this. Beyond `max_chunk` bytes a buffer always has a final chunk to cut.
pub(super) fn batch_capacity(max_chunk: usize) -> usize {
    BATCH_BYTES + (1 << 20) + max_chunk
}

/// A segment (and so the container carrying it) is sealed at this many entries even if the container holds
/// few new chunks: keeps memory flat when a long stream is all duplicates.
const MAX_SEGMENT_ENTRIES: usize = 64 * 1024;

/// The most a container takes before it is sealed whatever the stream's declared rest (see
/// `Upload::container_full`): 1.5 x the target. It may pass this by one span.
pub(crate) fn container_limit(target: usize) -> usize {
    target + target / 2
}

/// What one span of a batch stores (see `plan_group_spans`).
enum SpanPayload {
    /// Only duplicates.
    Nothing,
    /// One new chunk: its zstd frame, or None to store it raw.
    Alone(Option<Vec<u8>>),
    /// Several new chunks: whether the group pays, and the buffer its frame is in (from the store's
    /// `frame_buffers`, given back once the frame is in the container).
    Group(bool, Vec<u8>),
}

/// A batch's bytes: a batch buffer, or the body frames of a followed stream (copied out only if a chunk of
/// them turns out to be new).
#[derive(Clone, Copy)]
enum BatchSource<'a> {
    Buffer(&'a [u8]),
    Frames(&'a FrameBatch),
}

/// A repeated stream followed as it arrives: the body frames since the last batch, kept as they came.
struct Following {
    follower: StreamFollower,
    /// Offsets of `follower` and `ends` count from the start of these.
    frames: FrameBatch,
    /// Ends and ids of the chunks confirmed in `frames`.
    ends: Vec<usize>,
    ids: Vec<ChunkId>,
}

struct OpenContainer {
    builder: ContainerBuilder,
    new_chunks: Vec<(ChunkId, ChunkLocation)>,
}

/// A stream being ingested. Dropping it without `finish_*` aborts it (nothing becomes visible).
pub struct Upload {
    store: Arc<Store>,
    id: UploadId,
    /// MD5 of the batches processed so far (the bytes still in `pending` are not in it yet),
    /// hashed in the MD5 lanes together with other uploads' batches.
    md5: Md5Stream,
    /// The MD5 of the whole stream, once drained.
    md5_digest: Option<[u8; 16]>,
    /// The stream has ended: its last chunks are cut and processed.
    drained: bool,
    size: u64,
    /// The batch buffer (from the store's pool): body bytes as they arrive, chunked in place once it holds
    /// BATCH_BYTES (no copy into a chunker's buffer and out again). It starts with the previous batch's last
    /// chunk, which was not final yet. `pending_ends` holds the ends of its final chunks while it is processed.
    pending: Vec<u8>,
    /// The bytes after the last final chunk of the batch just processed (not final yet): the front of the next
    /// batch buffer.
    unfinished: Vec<u8>,
    pending_ends: Vec<usize>,
    /// Ids of a leading run of the chunks ending at `pending_ends`, hashed while cutting (core::follow); the
    /// rest are hashed in parallel when the batch is processed.
    pending_ids: Vec<ChunkId>,
    /// The last final chunk cut so far: where following a remembered sequence resumes.
    last_chunk: Option<ChunkId>,
    /// Bytes cut by following a remembered sequence instead of scanning (for tests and figures).
    followed: u64,
    /// Of `followed`, bytes followed as they arrived, never copied into a batch buffer.
    followed_in_frames: u64,
    /// The stream is being followed as it arrives (core::follow::StreamFollower): body frames go to it, not
    /// into `pending`. None while the stream is cut in batch buffers (scanning, or following within one).
    following: Option<Following>,
    /// The next batch is cut at PROBE_BATCH_BYTES: the stream just started, following just ended, or the last
    /// batch followed a remembered sequence in part.
    probing: bool,
    /// The last chunk named in the segment so far, with its container where known: the predecessor of the
    /// next one in `successors`.
    named_last: Option<(ChunkId, Option<ContainerId>)>,
    /// Which chunk followed which since the last seal, recorded in `chunk_refs.next` by the next one.
    successors: Vec<catalog::Successor>,
    open: Option<OpenContainer>,
    /// Chunk ids stored in the open container, so repeats within it dedup.
    open_ids: IdSet<ChunkId>,
    segment_no: u32,
    segment_start: u64,
    segment: Vec<(ChunkId, u32)>,
    /// The container of each `segment` entry where known (the catalog then updates the chunk's references by
    /// (container, id), reading nothing else: `catalog::ChunkRefs`).
    segment_homes: Vec<Option<ContainerId>>,
    logical: u64,
    /// The stream's length when the client declared it (Content-Length): lets the last container of a stream
    /// take the stream's rest instead of leaving it to a small container of its own (`container_full`).
    expected_len: Option<u64>,
    registered: bool,
    done: bool,
}

/// What the final seal of an upload also commits.
// One value per finished upload, on the stack: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Finish {
    Sealed,
    Part(PartRecord),
    Object {
        record: ObjectCommitRecord,
        info: ObjectInfo,
        cond: PutCondition,
    },
}

impl Store {
    /// The catalog's MD5 state for a stream fingerprint (md5_lanes.rs), if recorded. A hint: a read error or
    /// a malformed row only means hashing.
    fn recorded_md5_state(&self, fingerprint: &[u8; 32]) -> Option<Md5State> {
        match self
            .catalog
            .read(|c| catalog::md5_checkpoint(c, fingerprint))
        {
            Ok(row) => row.as_deref().and_then(Md5State::from_bytes),
            Err(e) => {
                tracing::warn!(error = %e, "reading an MD5 checkpoint failed: hashing instead");
                None
            }
        }
    }

    pub fn begin_upload(self: &Arc<Self>) -> Result<Upload> {
        Ok(Upload {
            store: self.clone(),
            id: UploadId::random(),
            md5: {
                // Batch buffers go back to the pool as soon as their MD5 is done, from whichever thread.
                let store = self.clone();
                let recycle = store.clone();
                Md5Stream::with_memo(
                    Some(Box::new(move |b| recycle.batch_buffers.give(b))),
                    self.md5_memo.clone(),
                    Some(Box::new(move |fingerprint| {
                        store.recorded_md5_state(fingerprint)
                    })),
                )
            },
            md5_digest: None,
            drained: false,
            size: 0,
            pending: Vec::new(),
            unfinished: Vec::new(),
            pending_ends: Vec::new(),
            pending_ids: Vec::new(),
            last_chunk: None,
            followed: 0,
            followed_in_frames: 0,
            following: None,
            probing: true,
            named_last: None,
            successors: Vec::new(),
            open: None,
            open_ids: IdSet::default(),
            segment_no: 0,
            segment_start: 0,
            segment: Vec::new(),
            segment_homes: Vec::new(),
            logical: 0,
            expected_len: None,
            registered: false,
            done: false,
        })
    }
}

impl Upload {
    pub fn id(&self) -> UploadId {
        self.id
    }

    /// Appends `data` to the stream. Prefer [`Upload::write_bytes`] where the bytes are owned already: a
    /// followed stream keeps them as they are instead of copying them.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_writable()?;
        while !data.is_empty() {
            if self.following.is_some() {
                return self.write_bytes(Bytes::copy_from_slice(data));
            }
            let taken = self.fill_batch(data)?;
            self.size += taken as u64;
            data = &data[taken..];
        }
        Ok(())
    }

    /// Appends a body frame to the stream. While the stream repeats a remembered one, the frame is hashed as it
    /// is and kept (shared) until its chunks are stored, never copied.
    pub fn write_bytes(&mut self, data: Bytes) -> Result<()> {
        self.check_writable()?;
        self.size += data.len() as u64;
        // Frames still to take: where following ends, the frames not followed come back to be cut (by scanning
        // in a probing batch, and followed again after it if the stream is back on a remembered sequence).
        let mut frames = VecDeque::from([data]);
        while let Some(mut frame) = frames.pop_front() {
            while !frame.is_empty() {
                if self.following.is_some() {
                    if let Some(rest) = self.follow(frame)? {
                        for f in rest.into_frames().into_iter().rev() {
                            frames.push_front(f);
                        }
                    }
                    break;
                }
                let taken = self.fill_batch(&frame)?;
                frame.advance(taken);
            }
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.drained {
            return Err(super::StoreError::Config(
                "write after the upload's end".into(),
            ));
        }
        Ok(())
    }

    /// Copies as much of `data` into the batch buffer as fits, and cuts the buffer once it holds a batch; after
    /// a cut the stream may go on followed (`start_following`). Returns the bytes taken (never 0).
    fn fill_batch(&mut self, data: &[u8]) -> Result<usize> {
        let max = self.store.cfg.chunker.max as usize;
        let batch = if self.probing {
            PROBE_BATCH_BYTES.max(2 * max)
        } else {
            BATCH_BYTES
        };
        self.fill_batch_buffer();
        // Up to the batch's size (the rest of a frame may go to a follower), or what the buffer holds if it is
        // past that already (no final chunk yet). Never 0: past `max` bytes a buffer always has a final chunk.
        let room = if self.pending.len() < batch {
            batch - self.pending.len()
        } else {
            batch_capacity(max)
                .saturating_sub(self.pending.len())
                .max(1)
        };
        let taken = room.min(data.len());
        self.pending.extend_from_slice(&data[..taken]);
        if self.pending.len() >= batch {
            self.cut_batch(false)?;
            self.start_following()?;
        }
        Ok(taken)
    }

    /// After a batch was cut: if the last chunk's successor is remembered, the stream goes on through a
    /// follower, starting with the unfinished chunk's bytes.
    fn start_following(&mut self) -> Result<()> {
        if self.following.is_some() || !self.pending.is_empty() {
            // Following already, or the buffer holds no final chunk yet (it was not cut).
            return Ok(());
        }
        let Some(last) = self.last_chunk else {
            return Ok(());
        };
        let Some(next) = self
            .store
            .dedup
            .next_of_loading(&self.store.catalog, &last)?
        else {
            return Ok(());
        };
        self.following = Some(Following {
            follower: StreamFollower::new(self.store.cfg.chunker, next, 0),
            frames: FrameBatch::new(),
            ends: Vec::new(),
            ids: Vec::new(),
        });
        let unfinished = Bytes::from(std::mem::take(&mut self.unfinished));
        if let Some(rest) = self.follow(unfinished)? {
            // At most the unfinished chunk's bytes: back where they were.
            self.unfinished = rest.to_vec(0..rest.len());
        }
        Ok(())
    }

    /// Feeds a frame to the follower. Its confirmed chunks are processed once they make a batch; if following
    /// ends, they are processed at once and the frames from there on are returned, to be cut by scanning.
    fn follow(&mut self, frame: Bytes) -> Result<Option<FrameBatch>> {
        let Some(f) = self.following.as_mut() else {
            return Ok(Some(FrameBatch::from(frame)));
        };
        let (dedup, catalog) = (&self.store.dedup, &self.store.catalog);
        let mut failed = None;
        let stop = f.follower.feed(
            &frame,
            |id| {
                dedup.next_of_loading(catalog, id).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    None
                })
            },
            &mut f.ends,
            &mut f.ids,
        );
        f.frames.push(frame);
        if let Some(e) = failed {
            return Err(e);
        }
        if stop.is_none() && f.follower.confirmed() < BATCH_BYTES {
            return Ok(None);
        }
        self.process_followed()?;
        Ok(stop.map(|_| self.stop_following()))
    }

    /// Processes the chunks the follower confirmed so far as a batch of frames.
    fn process_followed(&mut self) -> Result<()> {
        let Some(f) = self.following.as_mut() else {
            return Ok(());
        };
        let confirmed = f.follower.confirmed();
        if confirmed == 0 {
            return Ok(());
        }
        let batch = f.frames.split_to(confirmed);
        f.follower.rebase(confirmed);
        let ends = std::mem::take(&mut f.ends);
        let ids = std::mem::take(&mut f.ids);
        self.followed += confirmed as u64;
        self.followed_in_frames += confirmed as u64;
        let lens = chunk_lens(&ends);
        let arrivals = self.remember_sequence(&lens, &ids, false);
        let shared = Arc::new(batch);
        self.md5
            .feed(BatchBytes::Frames(shared.clone()), &ends, &ids)
            .map_err(md5_lost)?;
        self.store_chunks(BatchSource::Frames(&shared), &ends, &lens, &ids, &arrivals)
    }

    /// Ends following (its confirmed chunks processed already) and returns the frames not followed. The next
    /// batch is a probing one.
    fn stop_following(&mut self) -> FrameBatch {
        self.probing = true;
        match self.following.take() {
            Some(f) => {
                debug_assert!(f.ends.is_empty(), "confirmed chunks are processed first");
                f.frames
            }
            None => FrameBatch::new(),
        }
    }

    /// Makes `pending` a batch buffer to fill: after a cut, one from the store's pool with the unfinished
    /// chunk in front. (The whole batch at once: growing by doubling copied ~4 MiB per upload (realloc), 0.6%
    /// of the server's CPU in unique ingest, and fresh pages cost page faults.)
    fn fill_batch_buffer(&mut self) {
        if self.pending.capacity() == 0 {
            self.pending = self.store.batch_buffers.take();
            self.pending.extend_from_slice(&self.unfinished);
            self.unfinished.clear();
        }
    }

    /// Cuts the batch buffer's final chunks (all of them `at_end`) and processes them. The last chunk, which
    /// more input may still extend, is kept for the next batch buffer: only those bytes (at most `max`) are
    /// copied, where pushing the body through a chunker of its own copied every byte twice. Where the stream
    /// repeats a remembered chunk sequence, cuts are taken from the memo instead of scanning (core::follow).
    fn cut_batch(&mut self, at_end: bool) -> Result<()> {
        if self.pending.is_empty() && self.unfinished.is_empty() {
            // Nothing to cut (an empty stream, or one that ended right after a cut): no buffer is taken.
            return Ok(());
        }
        self.fill_batch_buffer();
        self.pending_ends.clear();
        self.pending_ids.clear();
        let (dedup, catalog) = (&self.store.dedup, &self.store.catalog);
        let mut failed = None;
        let cuts = follow_cuts(
            self.store.cfg.chunker,
            &self.pending,
            at_end,
            self.last_chunk,
            |id| {
                dedup.next_of_loading(catalog, id).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    None
                })
            },
            &mut self.pending_ends,
            &mut self.pending_ids,
        );
        if let Some(e) = failed {
            return Err(e);
        }
        self.followed += cuts.followed as u64;
        // A batch that followed a remembered sequence somewhere is followed by a probing one: the stream is
        // repeating one, and the next cut may leave it followable as it arrives. New data goes in full batches.
        self.probing = cuts.followed > 0;
        let consumed = cuts.consumed;
        if consumed == 0 {
            // No final chunk yet (only when `max` exceeds BATCH_BYTES): keep filling.
            return Ok(());
        }
        self.unfinished.extend_from_slice(&self.pending[consumed..]);
        self.pending.truncate(consumed);
        self.process_batch(at_end)
    }

    /// Bytes cut by following a remembered chunk sequence instead of scanning.
    pub fn followed_bytes(&self) -> u64 {
        self.followed
    }

    /// Of [`Upload::followed_bytes`], those followed as they arrived (never copied into a batch buffer).
    pub fn followed_in_frames(&self) -> u64 {
        self.followed_in_frames
    }

    /// Bytes whose MD5 state came from the memo or the catalog instead of being hashed.
    pub fn md5_remembered_bytes(&self) -> u64 {
        self.md5.remembered()
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// MD5 of the whole stream (for Content-MD5 checks before committing). Ends the stream: call it after the
    /// last write.
    pub fn md5(&mut self) -> Result<[u8; 16]> {
        self.drain()?;
        Ok(self.digest())
    }

    /// The stream's MD5 once drained; only read after `drain` (intermediate seals do not use it).
    fn digest(&self) -> [u8; 16] {
        self.md5_digest.unwrap_or_default()
    }

    /// Hashes the chunks in `pending`, feeds the batch to the MD5 lanes (see md5_lanes.rs), which skip what
    /// they remember by chunk ids and hand the buffer back to the pool once its pieces are hashed, and then
    /// stores the chunks. The MD5 pieces are handed over before compressing: other uploads' combiners take
    /// them along in the lanes meanwhile, where at a part's end they would be hashed alone.
    fn process_batch(&mut self, at_end: bool) -> Result<()> {
        let buffer = std::mem::take(&mut self.pending);
        let ends = std::mem::take(&mut self.pending_ends);
        let result = if buffer.is_empty() {
            self.pending = buffer;
            Ok(())
        } else {
            let shared = Arc::new(buffer);
            let chunks: Vec<&[u8]> = chunks_at(&shared, &ends).collect();
            // Chunk ids first: the MD5 lanes skip what they remember by its chunk ids (md5_lanes.rs). Those
            // hashed while cutting are kept.
            let mut ids = std::mem::take(&mut self.pending_ids);
            let rest: Vec<ChunkId> = chunks[ids.len().min(chunks.len())..]
                .par_iter()
                .map(|c| ChunkId::of(c))
                .collect();
            ids.extend(rest);
            let lens = chunk_lens(&ends);
            let arrivals = self.remember_sequence(&lens, &ids, at_end);
            self.md5
                .feed(BatchBytes::Buffer(shared.clone()), &ends, &ids)
                .map_err(md5_lost)?;
            self.store_chunks(BatchSource::Buffer(&shared), &ends, &lens, &ids, &arrivals)?;
            // Back to the pool now unless pieces of it still wait for the MD5 lanes (they give it back).
            if let Ok(b) = Arc::try_unwrap(shared) {
                self.store.batch_buffers.give(b);
            }
            // The next batch (if any) goes into another buffer, taken at its first write.
            Ok(())
        };
        self.pending_ends = ends;
        self.pending_ends.clear();
        result
    }

    /// Remembers which chunk followed which (core::follow), except the stream's last chunk, which its end cut.
    /// Returns each chunk as its predecessor's successor (None for the stream's last), for the catalog.
    fn remember_sequence(
        &mut self,
        lens: &[usize],
        ids: &[ChunkId],
        at_end: bool,
    ) -> Vec<Option<NextChunk>> {
        let remembered = if at_end {
            ids.len().saturating_sub(1)
        } else {
            ids.len()
        };
        let arrivals: Vec<Option<NextChunk>> = lens
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (&len, id))| (i < remembered).then(|| NextChunk::new(len, id)).flatten())
            .collect();
        let prevs = std::iter::once(self.last_chunk).chain(ids.iter().copied().map(Some));
        self.store.dedup.remember_sequence(
            prevs
                .zip(&arrivals)
                .filter_map(|(prev, next)| Some((prev?, (*next)?))),
        );
        self.last_chunk = ids.last().copied();
        arrivals
    }

    /// Stores the batch's chunks (of `batch`, ending at `ends`, `lens` long) with their ids.
    fn store_chunks(
        &mut self,
        batch: BatchSource<'_>,
        ends: &[usize],
        lens: &[usize],
        ids: &[ChunkId],
        arrivals: &[Option<NextChunk>],
    ) -> Result<()> {
        if ends.is_empty() {
            return Ok(());
        }

        // Classify in stream order: a chunk is new unless the open container, this batch or the index has it.
        // `homes` learns the container of every chunk the batch names: from the index, the open container, or
        // where a new chunk is stored below (a repeat of it later in the batch follows its first copy).
        let mut is_new = vec![false; ids.len()];
        let mut batch_new: IdSet<ChunkId> = IdSet::default();
        let mut homes: IdMap<ChunkId, ContainerId> = IdMap::default();
        let open_id = self.open.as_ref().map(|o| o.builder.id());
        self.store.catalog.read(|conn| {
            for (i, id) in ids.iter().enumerate() {
                if batch_new.contains(id) || homes.contains_key(id) {
                    continue;
                }
                if self.open_ids.contains(id) {
                    if let Some(open) = open_id {
                        homes.insert(*id, open);
                    }
                    continue;
                }
                match self.store.dedup.lookup(conn, id)? {
                    Some(container) => {
                        homes.insert(*id, container);
                    }
                    None => {
                        is_new[i] = true;
                        batch_new.insert(*id);
                    }
                }
            }
            Ok(())
        })?;

        // A followed batch of frames is all duplicates, short of a chunk the memo knew and the store does not
        // have (its upload was abandoned): only then are its bytes copied into one buffer.
        let mut copied = None;
        let buffer: &[u8] = match batch {
            BatchSource::Buffer(b) => b,
            BatchSource::Frames(_) if !is_new.contains(&true) => &[],
            BatchSource::Frames(f) => {
                let mut b = self.store.batch_buffers.take();
                f.copy_range_into(0..f.len(), &mut b);
                &copied.insert(b)[..]
            }
        };
        let chunks: Vec<&[u8]> = if buffer.is_empty() {
            Vec::new()
        } else {
            chunks_at(buffer, ends).collect()
        };

        // New chunks are compressed in groups (§4.5): the stream is cut into spans, each holding at most one
        // group's worth of new chunks; spans compress in parallel and are then stored in stream order.
        let level = self.store.cfg.zstd_level;
        let spans = plan_group_spans(lens, &is_new);
        let stored: Vec<SpanPayload> = spans
            .par_iter()
            .map(|span| {
                let members: Vec<&[u8]> = span
                    .clone()
                    .filter(|&i| is_new[i])
                    .map(|i| chunks[i])
                    .collect();
                match members.as_slice() {
                    [] => SpanPayload::Nothing,
                    [one] => SpanPayload::Alone(compress_chunk_reusing(one, level)),
                    _ => {
                        let mut frame = self.store.frame_buffers.take();
                        // All of the span is new: its chunks lie back to back in the batch buffer already.
                        let pays = if members.len() == span.len() {
                            let from = span.start.checked_sub(1).map_or(0, |i| ends[i]);
                            let to = ends[span.end - 1];
                            compress_group_bytes_into(&buffer[from..to], level, &mut frame)
                        } else {
                            compress_group_into(&members, level, &mut frame)
                        };
                        SpanPayload::Group(pays, frame)
                    }
                }
            })
            .collect();

        for (span, payload) in spans.into_iter().zip(stored) {
            let new_in_span = span.clone().filter(|&i| is_new[i]);
            match payload {
                SpanPayload::Nothing => {}
                SpanPayload::Alone(zstd) => {
                    for i in new_in_span {
                        let (codec, bytes): (Codec, &[u8]) = match &zstd {
                            Some(z) => (Codec::Zstd, z),
                            None => (Codec::Raw, chunks[i]),
                        };
                        self.push_alone(&ids[i], codec, chunks[i].len() as u32, bytes)?;
                    }
                }
                // The group did not pay: its chunks are stored raw, one entry each.
                SpanPayload::Group(false, frame) => {
                    self.store.frame_buffers.give(frame);
                    for i in new_in_span {
                        self.push_alone(&ids[i], Codec::Raw, chunks[i].len() as u32, chunks[i])?;
                    }
                }
                SpanPayload::Group(true, frame) => {
                    let members: Vec<(ChunkId, u32)> = new_in_span
                        .map(|i| (ids[i], chunks[i].len() as u32))
                        .collect();
                    let open = self.open_container()?;
                    let container = open.builder.id();
                    let offset = open.builder.push_group(&members, &frame);
                    let group_raw: u32 = members.iter().map(|(_, l)| l).sum();
                    let mut at = 0u32;
                    for (id, raw_len) in &members {
                        open.new_chunks.push((
                            *id,
                            ChunkLocation {
                                container,
                                offset,
                                stored_len: frame.len() as u32,
                                raw_len: *raw_len,
                                codec: Codec::Zstd,
                                group: Some(GroupSlot {
                                    offset: at,
                                    group_raw,
                                }),
                            },
                        ));
                        at += raw_len;
                    }
                    self.store.frame_buffers.give(frame);
                    self.open_ids.extend(members.iter().map(|(id, _)| *id));
                }
            }
            if let Some(open) = &self.open {
                let here = open.builder.id();
                for i in span.clone().filter(|&i| is_new[i]) {
                    homes.entry(ids[i]).or_insert(here);
                }
            }
            for i in span {
                let raw_len = lens[i] as u32;
                let home = homes.get(&ids[i]).copied();
                if let (Some((prev, prev_home)), Some(next)) = (self.named_last, arrivals[i]) {
                    self.successors.push(catalog::Successor {
                        prev,
                        home: prev_home,
                        next,
                    });
                }
                self.named_last = Some((ids[i], home));
                self.segment.push((ids[i], raw_len));
                self.segment_homes.push(home);
                self.logical += u64::from(raw_len);
            }
            let full = self
                .open
                .as_ref()
                .is_some_and(|o| self.container_full(o.builder.len()));
            if full || self.segment.len() >= MAX_SEGMENT_ENTRIES {
                self.seal_current(None)?;
            }
        }
        drop(chunks);
        if let Some(b) = copied {
            self.store.batch_buffers.give(b);
        }
        Ok(())
    }

    /// Whether the open container, `len` bytes so far, is sealed now (between spans, so it may pass a limit
    /// by one span). At `container_target`, unless the client declared the stream's length and its rest is
    /// expected to fit up to 1.5 x the target: that rest would otherwise end the stream as a container of its
    /// own of a few MB, six more shard files, and each file costs a create, an fsync, a rename and a directory
    /// fsync whatever its size (~0.3 ms of CPU here). A 16 MiB part of the bench's data was often an 8-10 MB
    /// and a 2-6 MB container; now it is one whenever its rest fits.
    fn container_full(&self, len: usize) -> bool {
        let target = self.store.cfg.container_target;
        if len < target {
            return false;
        }
        let limit = container_limit(target);
        if len >= limit {
            return true;
        }
        let Some(total) = self.expected_len else {
            return true;
        };
        // What is left of the stream, stored as this container stored its bytes so far (compressed,
        // deduplicated) with a quarter more for a rest that compresses worse, plus room for its entries' and
        // segment's records. A rest that turns out bigger still stops at `limit`.
        let rest = total.saturating_sub(self.logical);
        let raw_here = self.logical.saturating_sub(self.segment_start).max(1);
        let rest_stored = rest.saturating_mul(len as u64) / raw_here * 5 / 4 + 64 * 1024;
        len as u64 + rest_stored > limit as u64
    }

    /// The client declared the stream's length (Content-Length): see `container_full`. A wrong value only
    /// changes where containers are sealed.
    pub fn expect_len(&mut self, total: u64) {
        self.expected_len = Some(total);
    }

    /// Stores one chunk in its own entry (§4.1) in the open container.
    fn push_alone(&mut self, id: &ChunkId, codec: Codec, raw_len: u32, bytes: &[u8]) -> Result<()> {
        let open = self.open_container()?;
        let offset = open.builder.push_chunk(id, codec, raw_len, bytes);
        open.new_chunks.push((
            *id,
            ChunkLocation {
                container: open.builder.id(),
                offset,
                stored_len: bytes.len() as u32,
                raw_len,
                codec,
                group: None,
            },
        ));
        self.open_ids.insert(*id);
        Ok(())
    }

    fn open_container(&mut self) -> Result<&mut OpenContainer> {
        if self.open.is_none() {
            let id = self.store.alloc_container_id()?;
            let buf = self.store.container_buffers.take();
            self.open = Some(OpenContainer {
                builder: ContainerBuilder::with_buffer(id, now_ms(), buf),
                new_chunks: Vec::new(),
            });
        }
        // The branch above guarantees Some.
        self.open
            .as_mut()
            .ok_or_else(|| super::StoreError::Config("no open container".into()))
    }

    /// Seals the open container with the current segment (and, at the end, the upload's final state: then
    /// together with other uploads' last containers, `Store::seal_final`).
    fn seal_current(&mut self, finish: Option<Finish>) -> Result<()> {
        if self.segment.is_empty() && finish.is_none() && self.open.is_none() {
            return Ok(());
        }
        self.open_container()?;
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        let entries = std::mem::take(&mut self.segment);
        let homes = std::mem::take(&mut self.segment_homes);
        let segment = (!entries.is_empty()).then_some(SegmentRecord {
            upload: self.id,
            segment_no: self.segment_no,
            logical_start: self.segment_start,
            entries,
        });
        if let Some(seg) = &segment {
            open.builder.push_record(EntryType::Segment, &seg.encode());
        }
        if let Some(Finish::Object { record, .. }) = &finish {
            open.builder
                .push_record(EntryType::Commit, &record.encode());
        }
        let upload = self.id;
        let (size, md5) = (self.size, self.digest());
        let segment_refs = segment
            .as_ref()
            .map(|seg| catalog::segment_refs_with_homes(&seg.entries, &homes))
            .unwrap_or_default();
        let successors = std::mem::take(&mut self.successors);
        let sealed_segment = segment.is_some();
        let last = finish.is_some();
        // What the transaction commits besides the container and its chunks, given the container the segment
        // ended up in (the upload's own, or the group's its last container was moved into).
        let segment_row = segment.map(|seg| {
            (
                seg.segment_no,
                seg.logical_start,
                encode_segment_entries(&seg.entries),
            )
        });
        let commit =
            move |store: &Store, tx: &Transaction<'_>, container: ContainerId| -> Result<()> {
                catalog::upsert_upload_open(tx, &upload, now_ms())?;
                if let Some((segment_no, logical_start, entries)) = &segment_row {
                    catalog::insert_segment(
                        tx,
                        &upload,
                        *segment_no,
                        *logical_start,
                        container,
                        entries,
                    )?;
                }
                let sealed = SealedUpload {
                    upload_id: upload,
                    size,
                    md5,
                };
                match &finish {
                    None => Ok(()),
                    Some(Finish::Sealed) => catalog::seal_upload(tx, &upload, size, &md5, 0),
                    Some(Finish::Part(part)) => {
                        catalog::seal_upload(tx, &upload, size, &md5, 0)?;
                        part.record(tx, &sealed)
                    }
                    Some(Finish::Object { record, info, cond }) => {
                        catalog::seal_upload(tx, &upload, size, &md5, 0)?;
                        store.commit_in_tx(tx, info, &record.sources, cond)
                    }
                }
            };
        if last {
            // The upload's last container: sealed with whatever other uploads finish meanwhile.
            self.store.seal_final(FinalSeal {
                builder: open.builder,
                new_chunks: open.new_chunks,
                segment_refs,
                successors,
                commit: Box::new(commit),
            })?;
        } else {
            let container = open.builder.id();
            let store = &self.store;
            store.seal_container(
                open.builder,
                &open.new_chunks,
                &segment_refs,
                &successors,
                |tx| commit(store, tx, container),
            )?;
        }
        self.registered = true;
        self.open_ids.clear();
        if sealed_segment {
            self.segment_no += 1;
        }
        self.segment_start = self.logical;
        Ok(())
    }

    /// Ends the stream: flushes the chunker, processes the last batch, and collects the MD5. Idempotent.
    fn drain(&mut self) -> Result<()> {
        if !self.drained {
            self.drained = true;
            self.process_followed()?;
            // At most two chunks' bytes (the follower's last matched chunk, not confirmed, and the one it was
            // hashing): the stream's last chunks.
            let rest = self.stop_following();
            rest.copy_range_into(0..rest.len(), &mut self.unfinished);
            self.cut_batch(true)?;
            let state = self.md5.state().map_err(md5_lost)?;
            tracing::debug!(
                upload = %self.id.to_hex(),
                bytes = self.size,
                md5_remembered = self.md5.remembered(),
                cut_by_following = self.followed,
                followed_in_frames = self.followed_in_frames,
                "upload drained"
            );
            self.md5_digest = Some(state.finalize());
        }
        Ok(())
    }

    fn source_ref(&self) -> SourceRef {
        SourceRef {
            upload_id: self.id.to_hex(),
            segments: self.segment_no,
            size: self.size,
        }
    }

    /// Seals the stream and commits it as object `bucket/key` in one step (the commit record rides in the last
    /// container). Returns only when the object is durable.
    pub fn finish_object(
        mut self,
        bucket: &str,
        key: &str,
        mut meta: ObjectMeta,
    ) -> Result<ObjectInfo> {
        self.store.require_bucket(bucket)?;
        self.drain()?;
        if meta.etag.is_none() {
            meta.etag = Some(format!("\"{}\"", hex::encode(self.digest())));
        }
        let seq = self.store.next_seq();
        let created = now_ms();
        // The segment sealed with the commit counts too.
        let segments = self.segment_no + u32::from(!self.segment.is_empty());
        let source = SourceRef {
            segments,
            ..self.source_ref()
        };
        let info = ObjectInfo {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: self.size,
            seq,
            created_unix_ms: created,
            meta: meta.clone(),
            part_sizes: vec![self.size],
        };
        let record = ObjectCommitRecord {
            v: 1,
            bucket: bucket.to_string(),
            key: key.to_string(),
            seq,
            size: self.size,
            created_unix_ms: created,
            meta,
            sources: vec![source],
        };
        self.seal_current(Some(Finish::Object {
            record,
            info: info.clone(),
            cond: PutCondition::None,
        }))?;
        self.done = true;
        Ok(info)
    }

    /// Seals the stream without making it an object (multipart parts, conditional PUTs).
    /// Ends the stream and records it as part `part.part_number` of a multipart upload, in the transaction
    /// that seals it.
    pub fn finish_part(mut self, part: PartRecord) -> Result<PartInfo> {
        // Refused before any shard is written if the upload is gone (aborted while the part streamed): the
        // transaction below would refuse it too, but after writing shard files nothing then refers to.
        self.store.get_multipart(part.mpu_id())?;
        self.drain()?;
        self.seal_current(Some(Finish::Part(part.clone())))?;
        self.done = true;
        Ok(part.info(&SealedUpload {
            upload_id: self.id,
            size: self.size,
            md5: self.digest(),
        }))
    }

    pub fn finish_sealed(mut self) -> Result<SealedUpload> {
        self.drain()?;
        self.seal_current(Some(Finish::Sealed))?;
        self.done = true;
        Ok(SealedUpload {
            upload_id: self.id,
            size: self.size,
            md5: self.digest(),
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.store
            .batch_buffers
            .give(std::mem::take(&mut self.pending));
        if let Some(open) = self.open.take() {
            self.store
                .container_buffers
                .give(open.builder.into_buffer());
        }
        if !self.done && self.registered {
            let id = self.id;
            if let Err(e) = self
                .store
                .catalog
                .write(|tx| catalog::release_upload(tx, &id))
            {
                tracing::warn!(upload = %id.to_hex(), error = %e, "could not release an aborted upload; it is released at the next start");
            }
        }
    }
}

/// Chunk lengths from their ends in a batch.
fn chunk_lens(ends: &[usize]) -> Vec<usize> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let len = end - start;
            start = end;
            len
        })
        .collect()
}

fn md5_lost(e: super::md5_lanes::Md5LaneError) -> super::StoreError {
    super::StoreError::Config(e.to_string())
}

pub(crate) fn md5_bytes(h: Md5) -> [u8; 16] {
    let out = h.finalize();
    let mut a = [0u8; 16];
    a.copy_from_slice(&out);
    a
}
