//! Following remembered chunk sequences: a repeated stream (a second full backup) is cut without scanning.
//!
//! Content-defined chunking scans every byte (FastCDC ~2.5 GB/s per core here, ~30% of the server's CPU in
//! duplicate ingest). A second full sends the same chunks in the same order, so after a chunk whose successor
//! is remembered ([`SequenceMemo`]: the successor's length and a tag of its id), ingest hashes that many bytes
//! and, if the id matches, takes the cut without scanning: the BLAKE3 hash it needs anyway is the check.
//!
//! Why the cuts are exactly those of scanning ([`super::chunker::chunk_ranges`] of the whole stream): FastCDC
//! finds a cut by scanning forward from the chunk's start, so where a chunk ends depends only on the bytes
//! from its start to its end and on the one byte after it (see "The byte after a cut"). The memo remembers
//! only chunks whose end was found that way (a content match, or `max`), never a stream's last chunk (cut by
//! the stream's end). By induction every position a chunk is followed from is a true cut, and equal bytes
//! from a true cut, followed by an equal byte, end where the remembered chunk ended. A false tag match (2^-40
//! per attempt on differing bytes) would only place one cut where scanning would not: that costs dedup,
//! never data, since every chunk is stored under the hash of its own bytes.
//!
//! The byte after a cut: fastcdc v2020 cuts at position p when the gear hash that includes byte p matches
//! its mask, so the chunk ends before the byte that decided its cut. A chunk whose bytes match a remembered
//! one ends where it did only if the byte after it is the one that followed it then: the first byte of its
//! remembered successor. So a followed chunk is confirmed only once its successor matched as well; where
//! following stops, the last chunk that matched is scanned again from its start (unless it is `max` bytes
//! long: a cut by length reads no byte after it). Without this, an edit starting right after a remembered
//! cut left a cut there that scanning does not make (found by the proptest below, in CI).
//!
//! The memo holds the last ~1-2 M chunks; the store also records each successor in the catalog
//! (`chunk_refs.next`, storage-format.md §7) and suggests a container's recorded successors to the memo when
//! the dedup index loads it, so a stream written before a restart, or longer ago than the memo reaches, is
//! followed as well. A recorded successor obeys the same rule (content or `max` cuts only), and the catalog
//! forgets them all when the chunker's parameters change.
//!
//! When a remembered successor does not match (new data), up to [`PROBE_CHUNKS`] chunks are cut one at a
//! time by scanning, each looked up again: after a small change the stream is back on a remembered sequence
//! within a chunk or two. Beyond that the rest of the buffer is cut in one scan (and hashed in parallel by
//! the caller), as without a memo.
//!
//! [`follow_cuts`] needs the batch in one buffer, which ingest fills by copying the body into it. Once a cut
//! leaves a chunk whose successor is remembered, ingest follows the rest as it arrives instead
//! ([`StreamFollower`]): the same rule, the same cuts, the body frames hashed as they come and kept as they
//! are; where following ends, the bytes from there on go back to batches and [`follow_cuts`].

use super::chunker::{ChunkerParams, final_cuts, first_cut};
use super::ids::ChunkId;

/// Chunks cut one at a time by scanning after a miss, looking for a remembered sequence to follow again.
pub const PROBE_CHUNKS: usize = 4;

/// Bits of a successor's id kept to check it (the rest of the entry holds its length).
const TAG_BITS: u32 = 40;
const LEN_BITS: u32 = 64 - TAG_BITS;

/// The chunk that followed a remembered chunk: its length (1..=2^24 bytes, §4.1 allows at most 16 MiB) and
/// 40 bits of its id, packed in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextChunk(u64);

impl NextChunk {
    /// None for a length the packing cannot hold (never for a chunk of a valid chunker).
    pub fn new(len: usize, id: &ChunkId) -> Option<NextChunk> {
        let stored = u64::try_from(len).ok()?.checked_sub(1)?;
        (stored < 1 << LEN_BITS).then_some(NextChunk(tag(id) << LEN_BITS | stored))
    }

    pub fn chunk_len(self) -> usize {
        (self.0 & ((1 << LEN_BITS) - 1)) as usize + 1
    }

    /// Whether `id` is (with 40-bit certainty) the remembered successor's.
    pub fn is(self, id: &ChunkId) -> bool {
        self.0 >> LEN_BITS == tag(id)
    }

    /// The packed word, as the catalog keeps it (storage-format.md §7 `chunk_refs.next`). Never 0 for a
    /// remembered successor: those are cut by content or at `max`, so longer than one byte.
    pub fn word(self) -> u64 {
        self.0
    }

    /// A word from the catalog; 0 means no successor is known.
    pub fn from_word(word: u64) -> Option<NextChunk> {
        (word != 0).then_some(NextChunk(word))
    }
}

/// The id's 8 bytes from `at` as a word (ids are uniform hashes).
fn id_word(id: &ChunkId, at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[at..at + 8]);
    u64::from_le_bytes(b)
}

/// 40 bits of an id other than the memo's key (its first 8 bytes, `slot_key`).
fn tag(id: &ChunkId) -> u64 {
    id_word(id, 8) >> LEN_BITS
}

/// A slot no key occupies (a real key of this value is stored as its neighbour: see `slot_key`).
const EMPTY: u64 = u64::MAX;

/// One generation: an open-addressing table of (key, successor) slots, sized once and never grown, so its
/// memory is fixed from the start (no rehash doubling it for a moment, no RSS growing with the stream).
struct Table {
    slots: Vec<[u64; 2]>,
    len: usize,
}

impl Table {
    fn new(slots: usize) -> Table {
        // Filled with a non-zero value: the pages are written (resident) now, not as the first streams arrive.
        Table {
            slots: vec![[EMPTY, 0]; slots],
            len: 0,
        }
    }

    /// The slot holding `key`, or the empty one where it would go (the table is never full: see `remember`).
    fn find(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        while self.slots[i][0] != key && self.slots[i][0] != EMPTY {
            i = (i + 1) & mask;
        }
        i
    }

    fn get(&self, key: u64) -> Option<NextChunk> {
        let slot = self.slots[self.find(key)];
        (slot[0] == key).then_some(NextChunk(slot[1]))
    }

    fn insert(&mut self, key: u64, next: NextChunk) {
        let i = self.find(key);
        if self.slots[i][0] == EMPTY {
            self.len += 1;
        }
        self.slots[i] = [key, next.0];
    }

    fn clear(&mut self) {
        self.slots.fill([EMPTY, 0]);
        self.len = 0;
    }
}

/// The memo's key for a chunk: its id's first 8 bytes; the one value that means "empty" moves to its
/// neighbour.
fn slot_key(id: &ChunkId) -> u64 {
    match id_word(id, 0) {
        EMPTY => EMPTY - 1,
        k => k,
    }
}

/// Chunk -> the chunk that followed it, for the most recent chunks ingested. Two generations of at most
/// `generation` entries each, in tables of fixed size allocated (and written) up front: ~16 bytes x 8/7 per
/// entry, so memory is the same from the first stream on. When the current generation is full, the older
/// one is cleared and becomes the current one. Every chunk ingested is remembered again, so a sequence that
/// keeps repeating stays.
pub struct SequenceMemo {
    tables: [Table; 2],
    current: usize,
    generation: usize,
}

impl SequenceMemo {
    pub fn new(generation: usize) -> SequenceMemo {
        let generation = generation.max(1);
        // At most 7/8 full, so probes stay short and a probe always ends at an empty slot.
        let slots = (generation * 8).div_ceil(7).next_power_of_two();
        SequenceMemo {
            tables: [Table::new(slots), Table::new(slots)],
            current: 0,
            generation,
        }
    }

    /// The remembered successor of chunk `id`.
    pub fn next_of(&self, id: &ChunkId) -> Option<NextChunk> {
        let k = slot_key(id);
        self.tables[self.current]
            .get(k)
            .or_else(|| self.tables[1 - self.current].get(k))
    }

    /// Chunk `prev` was followed by `next`. Only for cuts found by content or at `max` (module doc).
    pub fn remember(&mut self, prev: &ChunkId, next: NextChunk) {
        if self.tables[self.current].len >= self.generation {
            self.current = 1 - self.current;
            self.tables[self.current].clear();
        }
        self.tables[self.current].insert(slot_key(prev), next);
    }

    /// Chunk `prev` was followed by `next` in a stream written earlier (the catalog's record, loaded with its
    /// container): remembered unless the memo already knows a successor of `prev`, which is as recent or more.
    pub fn suggest(&mut self, prev: &ChunkId, next: NextChunk) {
        if self.next_of(prev).is_none() {
            self.remember(prev, next);
        }
    }

    pub fn len(&self) -> usize {
        self.tables[0].len + self.tables[1].len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the tables take (allocated and written when the memo is made).
    pub fn table_bytes(&self) -> usize {
        self.tables.iter().map(|t| t.slots.len() * 16).sum()
    }
}

/// What [`follow_cuts`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cuts {
    /// The end of the last final chunk (as [`final_cuts`] returns it).
    pub consumed: usize,
    /// Bytes of chunks taken from the memo without scanning.
    pub followed: usize,
}

/// Cuts `buf` (which starts at a cut, after chunk `prev` if any) exactly as [`final_cuts`] does, following
/// remembered successors (`next_of`) where they match. Appends the ends of the final chunks to `ends`, and to
/// `ids` the ids of a leading run of them (those it hashed to follow or probe; the caller hashes the rest).
pub fn follow_cuts(
    params: ChunkerParams,
    buf: &[u8],
    at_end: bool,
    mut prev: Option<ChunkId>,
    mut next_of: impl FnMut(&ChunkId) -> Option<NextChunk>,
    ends: &mut Vec<usize>,
    ids: &mut Vec<ChunkId>,
) -> Cuts {
    debug_assert_eq!(ends.len(), ids.len());
    let first = ends.len();
    let (mut pos, mut followed, mut probes) = (0, 0, PROBE_CHUNKS);
    // The start of the last chunk pushed while it was followed and its cut is not yet checked against the
    // byte after it (module doc, "The byte after a cut").
    let mut unchecked: Option<usize> = None;
    // The last two extents hashed and their ids: after a miss, the chunk scanned again and the successor tried
    // again are not rehashed.
    let mut hashed: [Option<(usize, usize, ChunkId)>; 2] = [None; 2];
    let id_of = |start: usize, end: usize, hashed: &mut [Option<(usize, usize, ChunkId)>; 2]| {
        if let Some(&(_, _, id)) = hashed.iter().flatten().find(|h| (h.0, h.1) == (start, end)) {
            return id;
        }
        let id = ChunkId::of(&buf[start..end]);
        *hashed = [Some((start, end, id)), hashed[0]];
        id
    };
    loop {
        if let Some(next) = prev.as_ref().and_then(&mut next_of) {
            let end = pos + next.chunk_len();
            if end <= buf.len() {
                let id = id_of(pos, end, &mut hashed);
                if next.is(&id) {
                    ends.push(end);
                    ids.push(id);
                    followed += end - pos;
                    // A chunk of `max` bytes was cut by its length, not by the byte after it.
                    unchecked = (end - pos < params.max as usize).then_some(pos);
                    (pos, prev, probes) = (end, Some(id), PROBE_CHUNKS);
                    continue;
                }
            }
        }
        if let Some(start) = unchecked.take() {
            // Following stops right after a chunk whose bytes matched but whose cut depends on a byte the
            // match did not cover: it is scanned again from its start (and not rehashed if it ends there).
            ends.pop();
            ids.pop();
            followed -= pos - start;
            pos = start;
        }
        if probes == 0 {
            break;
        }
        probes -= 1;
        let Some(len) = first_cut(params, &buf[pos..], at_end) else {
            return Cuts {
                consumed: pos,
                followed,
            };
        };
        let end = pos + len;
        let id = id_of(pos, end, &mut hashed);
        ends.push(end);
        ids.push(id);
        (pos, prev) = (end, Some(id));
    }
    let scanned_from = ends.len();
    let rest = final_cuts(params, &buf[pos..], at_end, ends);
    ends[scanned_from..].iter_mut().for_each(|e| *e += pos);
    debug_assert!(ends[first..].windows(2).all(|w| w[0] < w[1]));
    Cuts {
        consumed: pos + rest,
        followed,
    }
}

/// Follows a remembered chunk sequence through a stream that arrives in pieces of any size, hashing each piece
/// as it arrives and keeping none of it: ingest hands it a client's body frames as they come, so a repeated
/// stream is neither copied into a batch buffer nor scanned (the copy was ~15% of the server's CPU in
/// duplicate ingest). Positions are offsets in the caller's batch, the pieces fed so far back to back.
///
/// It starts at a true cut whose successor is remembered (the rule of [`follow_cuts`]) and confirms one chunk
/// after another while each matches; where one does not, or a matched chunk has no remembered successor, it
/// stops and says where following ended: the caller cuts the bytes from there on by scanning. A chunk whose
/// bytes matched is confirmed only once its successor matched too (module doc, "The byte after a cut"), so
/// following ends at the start of the last chunk that matched, unless it is `max` bytes long.
pub struct StreamFollower {
    next: NextChunk,
    hasher: blake3::Hasher,
    /// Where the chunk being hashed starts.
    chunk_start: usize,
    /// Bytes fed so far.
    fed: usize,
    /// The last chunk that matched, while the byte after it is not yet known to be the remembered one: its
    /// start and id.
    matched: Option<(usize, ChunkId)>,
    /// The chunker's `max`: a chunk that long was cut by its length, whatever byte follows it.
    max_chunk: usize,
}

impl StreamFollower {
    /// Following from offset `at` of the batch, a true cut whose remembered successor is `next`.
    pub fn new(params: ChunkerParams, next: NextChunk, at: usize) -> StreamFollower {
        StreamFollower {
            next,
            hasher: blake3::Hasher::new(),
            chunk_start: at,
            fed: at,
            matched: None,
            max_chunk: params.max as usize,
        }
    }

    /// Where the first chunk not confirmed starts: every byte before it is in a confirmed chunk.
    pub fn confirmed(&self) -> usize {
        self.matched.map_or(self.chunk_start, |(start, _)| start)
    }

    /// Feeds the batch's next bytes; appends each chunk confirmed to `ends` and `ids`. Returns where following
    /// ended if it did (always [`StreamFollower::confirmed`]): the bytes from there on (fed or not) are not
    /// followed, and the follower is spent.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut next_of: impl FnMut(&ChunkId) -> Option<NextChunk>,
        ends: &mut Vec<usize>,
        ids: &mut Vec<ChunkId>,
    ) -> Option<usize> {
        while !bytes.is_empty() {
            let end = self.chunk_start + self.next.chunk_len();
            let take = (end - self.fed).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.fed += take;
            bytes = &bytes[take..];
            if self.fed < end {
                break;
            }
            let id = ChunkId(*self.hasher.finalize().as_bytes());
            self.hasher.reset();
            if !self.next.is(&id) {
                return Some(self.confirmed());
            }
            // The remembered successor's first byte is the one after the matched chunk: its cut holds.
            if let Some((_, matched)) = self.matched.take() {
                ends.push(self.chunk_start);
                ids.push(matched);
            }
            if end - self.chunk_start < self.max_chunk {
                self.matched = Some((self.chunk_start, id));
            } else {
                ends.push(end);
                ids.push(id);
            }
            self.chunk_start = end;
            match next_of(&id) {
                Some(next) => self.next = next,
                None => return Some(self.confirmed()),
            }
        }
        None
    }

    /// The batch's first `n` bytes (confirmed chunks) were taken away: offsets now count from there.
    pub fn rebase(&mut self, n: usize) {
        debug_assert!(n <= self.confirmed());
        self.chunk_start -= n;
        self.fed -= n;
        if let Some((start, _)) = self.matched.as_mut() {
            *start -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;
    use crate::core::chunker::chunk_ranges;
    use crate::core::chunker::tests::{SMALL, feed_in_batches, random_bytes};
    use proptest::prelude::*;

    /// Ingest's way: `data` arrives in pieces ending at `splits`, is cut into batches of `batch` bytes with
    /// follow_cuts, the unfinished chunk carried over; every final chunk is remembered after its predecessor
    /// except the stream's last. Returns the chunk ranges and the bytes followed.
    fn ingest(
        memo: &mut SequenceMemo,
        data: &[u8],
        splits: &[usize],
        batch: usize,
    ) -> (Vec<Range<usize>>, usize) {
        let (mut out, mut followed, mut prev) = (Vec::new(), 0, None::<ChunkId>);
        feed_in_batches(data, splits, batch, |buf, buf_start, at_end| {
            let (mut ends, mut ids) = (Vec::new(), Vec::new());
            let cuts = follow_cuts(
                SMALL,
                buf,
                at_end,
                prev,
                |id| memo.next_of(id),
                &mut ends,
                &mut ids,
            );
            assert!(ids.len() <= ends.len());
            let mut start = 0;
            for (i, &end) in ends.iter().enumerate() {
                let id = ChunkId::of(&buf[start..end]);
                if let Some(known) = ids.get(i) {
                    assert_eq!(*known, id, "a returned id is the chunk's");
                }
                let last_of_stream = at_end && i + 1 == ends.len();
                if let (Some(p), false) = (prev, last_of_stream) {
                    memo.remember(&p, NextChunk::new(end - start, &id).unwrap());
                }
                out.push(buf_start + start..buf_start + end);
                (start, prev) = (end, Some(id));
            }
            assert_eq!(start, cuts.consumed);
            followed += cuts.followed;
            cuts.consumed
        });
        (out, followed)
    }

    /// Ingest's way with a [`StreamFollower`] (store::ingest): pieces ending at `splits` are appended to a batch
    /// cut with follow_cuts once it holds `batch` bytes; when a cut leaves a final chunk with a remembered
    /// successor, the pieces go through a follower instead (not kept) until it stops, and the bytes from its
    /// stop on go back into a batch. Returns the chunk ranges and the bytes confirmed by a follower.
    fn ingest_streaming(
        memo: &mut SequenceMemo,
        data: &[u8],
        splits: &[usize],
        batch: usize,
    ) -> (Vec<Range<usize>>, usize) {
        let mut piece_ends: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
        piece_ends.sort_unstable();
        piece_ends.push(data.len());
        let mut out: Vec<Range<usize>> = Vec::new();
        let (mut prev, mut streamed) = (None::<ChunkId>, 0);
        // Bytes taken so far: data[..pos]. Without a follower the batch is data[from..pos]; a follower's offsets
        // count from `from`.
        let (mut from, mut pos) = (0, 0);
        let mut follower: Option<StreamFollower> = None;
        // Records chunks ending at `ends` (absolute), each remembered after its predecessor.
        fn record(
            data: &[u8],
            out: &mut Vec<Range<usize>>,
            prev: &mut Option<ChunkId>,
            memo: &mut SequenceMemo,
            ends: &[usize],
            ids: Option<&[ChunkId]>,
            at_end: bool,
        ) {
            for (i, &end) in ends.iter().enumerate() {
                let start = out.last().map_or(0, |r| r.end);
                let id = ChunkId::of(&data[start..end]);
                if let Some(ids) = ids {
                    assert_eq!(ids[i], id, "a confirmed id is the chunk's");
                }
                if let (Some(p), false) = (*prev, at_end && i + 1 == ends.len()) {
                    memo.remember(&p, NextChunk::new(end - start, &id).unwrap());
                }
                out.push(start..end);
                *prev = Some(id);
            }
        }
        // Cuts the batch data[batch] with follow_cuts and records its final chunks; returns the bytes consumed.
        fn cut_batch(
            data: &[u8],
            out: &mut Vec<Range<usize>>,
            prev: &mut Option<ChunkId>,
            memo: &mut SequenceMemo,
            batch: Range<usize>,
            at_end: bool,
        ) -> usize {
            let (mut ends, mut ids) = (Vec::new(), Vec::new());
            let cuts = follow_cuts(
                SMALL,
                &data[batch.clone()],
                at_end,
                *prev,
                |id| memo.next_of(id),
                &mut ends,
                &mut ids,
            );
            let ends: Vec<usize> = ends.iter().map(|e| batch.start + e).collect();
            record(data, out, prev, memo, &ends, None, at_end);
            cuts.consumed
        }
        for piece_end in piece_ends {
            while pos < piece_end {
                if let Some(f) = follower.as_mut() {
                    let (mut ends, mut ids) = (Vec::new(), Vec::new());
                    let before = f.confirmed();
                    let stop = f.feed(
                        &data[pos..piece_end],
                        |id| memo.next_of(id),
                        &mut ends,
                        &mut ids,
                    );
                    streamed += f.confirmed() - before;
                    pos = piece_end;
                    let ends: Vec<usize> = ends.iter().map(|e| from + e).collect();
                    record(data, &mut out, &mut prev, memo, &ends, Some(&ids), false);
                    if let Some(at) = stop {
                        follower = None;
                        from += at;
                    }
                    continue;
                }
                pos = piece_end.min(from + batch).max(pos + 1);
                if pos - from < batch {
                    continue;
                }
                from += cut_batch(data, &mut out, &mut prev, memo, from..pos, false);
                if let Some(next) = prev.as_ref().and_then(|p| memo.next_of(p)) {
                    // The unfinished chunk's bytes are the follower's first piece.
                    let mut f = StreamFollower::new(SMALL, next, 0);
                    let (mut ends, mut ids) = (Vec::new(), Vec::new());
                    let stop = f.feed(&data[from..pos], |id| memo.next_of(id), &mut ends, &mut ids);
                    streamed += f.confirmed();
                    let ends: Vec<usize> = ends.iter().map(|e| from + e).collect();
                    record(data, &mut out, &mut prev, memo, &ends, Some(&ids), false);
                    match stop {
                        Some(at) => from += at,
                        None => follower = Some(f),
                    }
                }
            }
        }
        if let Some(f) = follower.take() {
            from += f.confirmed();
        }
        cut_batch(data, &mut out, &mut prev, memo, from..pos, true);
        (out, streamed)
    }

    #[test]
    fn a_repeated_stream_is_followed_as_it_arrives() {
        let data = random_bytes(2, 600_000);
        let mut memo = SequenceMemo::new(1 << 14);
        let (first, streamed) = ingest_streaming(&mut memo, &data, &[100_000, 250_001], 64 * 1024);
        assert_eq!(first, chunk_ranges(&data, SMALL));
        assert_eq!(streamed, 0, "nothing remembered yet");
        // Other pieces, one byte at a time for a while: all but the first batch (it finds the sequence) and
        // the last chunk (never remembered) goes through the follower.
        let splits: Vec<usize> = (200_000..200_300).chain([7, 300_000, 450_001]).collect();
        let (again, streamed) = ingest_streaming(&mut memo, &data, &splits, 50_000);
        assert_eq!(again, first);
        let tail = first[first.len() - 1].len();
        assert!(
            streamed > data.len() - 50_000 - SMALL.max as usize - tail,
            "{streamed}"
        );
        assert!(streamed < data.len() - tail);
    }

    #[test]
    fn a_follower_stops_at_the_first_chunk_that_differs_or_has_no_successor() {
        let data = random_bytes(3, 200_000);
        let ranges = chunk_ranges(&data, SMALL);
        let mut memo = SequenceMemo::new(1 << 14);
        let ids: Vec<ChunkId> = ranges
            .iter()
            .map(|r| ChunkId::of(&data[r.clone()]))
            .collect();
        // Remembered up to chunk 10 only.
        for i in 1..=10 {
            memo.remember(
                &ids[i - 1],
                NextChunk::new(ranges[i].len(), &ids[i]).unwrap(),
            );
        }
        let start = ranges[1].start;
        let mut f = StreamFollower::new(SMALL, memo.next_of(&ids[0]).unwrap(), 0);
        let (mut ends, mut got) = (Vec::new(), Vec::new());
        let stop = f.feed(&data[start..], |id| memo.next_of(id), &mut ends, &mut got);
        // Chunk 10 has no successor, so the byte after it is not known to be the one it was cut before.
        assert_eq!(stop, Some(ranges[10].start - start));
        assert_eq!(got, ids[1..10]);
        // A byte changed inside chunk 5: chunks 1-3 are confirmed (4 matched, but 5 did not), following ends
        // where chunk 4 starts.
        let mut edited = data.clone();
        edited[ranges[5].start + 3] ^= 1;
        let mut f = StreamFollower::new(SMALL, memo.next_of(&ids[0]).unwrap(), 0);
        let (mut ends, mut got) = (Vec::new(), Vec::new());
        let mut stop = None;
        for piece in edited[start..].chunks(1000) {
            stop = f.feed(piece, |id| memo.next_of(id), &mut ends, &mut got);
            if stop.is_some() {
                break;
            }
        }
        assert_eq!(stop, Some(ranges[4].start - start));
        assert_eq!(f.confirmed(), ranges[4].start - start);
        assert_eq!(got, ids[1..4]);
        assert_eq!(
            ends,
            ranges[1..4]
                .iter()
                .map(|r| r.end - start)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_changed_byte_right_after_a_remembered_cut_is_cut_as_scanning_cuts() {
        let data = random_bytes(4, 300_000);
        let ranges = chunk_ranges(&data, SMALL);
        // A byte just after a content cut, changed so that scanning no longer cuts there: the chunk before it
        // keeps its bytes (and would match the memo) but ends elsewhere.
        let (edited, cut) = ranges[3..ranges.len() - 2]
            .iter()
            .filter(|r| r.len() < SMALL.max as usize)
            .find_map(|r| {
                (1..=255u8).find_map(|x| {
                    let mut edited = data.clone();
                    edited[r.end] ^= x;
                    let cuts = chunk_ranges(&edited, SMALL);
                    (!cuts.iter().any(|c| c.end == r.end)).then_some((edited, r.end))
                })
            })
            .expect("some byte after a cut decides it");
        for batch in [20_000, 80_000] {
            let mut memo = SequenceMemo::new(1 << 14);
            let (first, _) = ingest(&mut memo, &data, &[], batch);
            assert_eq!(first, ranges);
            let (again, followed) = ingest(&mut memo, &edited, &[], batch);
            assert_eq!(again, chunk_ranges(&edited, SMALL), "batch {batch}");
            assert!(!again.iter().any(|c| c.end == cut));
            assert!(followed > 0);
            let mut memo = SequenceMemo::new(1 << 14);
            ingest_streaming(&mut memo, &data, &[], batch);
            let (again, streamed) = ingest_streaming(&mut memo, &edited, &[1000, cut - 5], batch);
            assert_eq!(again, chunk_ranges(&edited, SMALL), "batch {batch}");
            assert!(streamed > 0);
        }
    }

    #[test]
    fn next_chunk_packs_length_and_tag() {
        let id = ChunkId::of(b"x");
        for len in [1, 2, 4096, 16 << 20] {
            let n = NextChunk::new(len, &id).unwrap();
            assert_eq!(n.chunk_len(), len);
            assert!(n.is(&id));
            assert!(!n.is(&ChunkId::of(b"y")));
        }
        assert_eq!(NextChunk::new(0, &id), None);
        assert_eq!(NextChunk::new((16 << 20) + 1, &id), None);
    }

    #[test]
    fn a_successor_round_trips_through_its_catalog_word_and_suggestions_never_overwrite() {
        let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
        let next = NextChunk::new(70_000, &b).unwrap();
        assert_ne!(next.word(), 0);
        assert_eq!(NextChunk::from_word(next.word()), Some(next));
        assert_eq!(NextChunk::from_word(0), None);
        let mut memo = SequenceMemo::new(16);
        memo.suggest(&a, next);
        assert_eq!(memo.next_of(&a), Some(next));
        // What the memo learned itself stays over an older record from the catalog.
        memo.suggest(&a, NextChunk::new(100, &c).unwrap());
        assert_eq!(memo.next_of(&a), Some(next));
        memo.remember(&a, NextChunk::new(100, &c).unwrap());
        assert!(memo.next_of(&a).unwrap().is(&c));
    }

    #[test]
    fn memo_keeps_two_generations() {
        let mut memo = SequenceMemo::new(3);
        let ids: Vec<ChunkId> = (0u32..8).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        for w in ids.windows(2) {
            memo.remember(&w[0], NextChunk::new(100, &w[1]).unwrap());
        }
        // 7 remembered with generations of 3: the last generation holds 1, the previous 3, the oldest 3 went.
        assert_eq!(memo.len(), 4);
        assert_eq!(
            memo.table_bytes(),
            2 * 4 * 16,
            "3 entries fit 4 slots at most 7/8 full"
        );
        assert!(memo.next_of(&ids[2]).is_none());
        assert!(memo.next_of(&ids[3]).unwrap().is(&ids[4]));
        assert!(memo.next_of(&ids[6]).unwrap().is(&ids[7]));
        assert!(memo.next_of(&ids[7]).is_none());
    }

    #[test]
    fn a_full_table_still_answers_and_keys_of_every_value_are_kept() {
        // Generations of 7 in 8 slots: the table is as full as it gets; lookups of absent keys end.
        let mut memo = SequenceMemo::new(7);
        assert_eq!(memo.table_bytes(), 2 * 8 * 16);
        let mut id_with_key = |k: u64| {
            let mut id = ChunkId::of(&k.to_le_bytes());
            id.0[..8].copy_from_slice(&k.to_le_bytes());
            id
        };
        // Keys that collide on the low bits, and the empty slot's value.
        let ids: Vec<ChunkId> = [0, 8, 16, 24, u64::MAX, 5, 3]
            .into_iter()
            .map(&mut id_with_key)
            .collect();
        let next = ChunkId::of(b"next");
        for (i, id) in ids.iter().enumerate() {
            memo.remember(id, NextChunk::new(i + 1, &next).unwrap());
        }
        assert_eq!(memo.len(), 7);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(memo.next_of(id).map(|n| n.chunk_len()), Some(i + 1), "{i}");
        }
        assert!(memo.next_of(&id_with_key(40)).is_none());
    }

    #[test]
    fn a_repeated_stream_is_followed_almost_whole() {
        let data = random_bytes(1, 600_000);
        let mut memo = SequenceMemo::new(1 << 14);
        let (first, followed_first) = ingest(&mut memo, &data, &[100_000, 250_001], 64 * 1024);
        assert_eq!(first, chunk_ranges(&data, SMALL));
        assert_eq!(followed_first, 0);
        let (again, followed) = ingest(&mut memo, &data, &[7, 300_000], 50_000);
        assert_eq!(again, first);
        // All but the first chunk (cut by scanning: nothing precedes it), the last (never remembered), and
        // each batch's last followed chunk (scanned again: its successor is not in the batch).
        let (head, tail) = (first[0].len(), first[first.len() - 1].len());
        let batches = data.len().div_ceil(50_000);
        assert!(followed <= data.len() - head - tail, "{followed}");
        assert!(
            followed >= data.len() - head - tail - batches * SMALL.max as usize,
            "{followed}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever was remembered, in whatever pieces and batches the stream arrives, its cuts are scanning's.
        #[test]
        fn following_cuts_exactly_where_scanning_does(
            seed: u64,
            len in 0usize..300_000,
            edits in proptest::collection::vec((0.0f64..1.0, 0usize..3, proptest::collection::vec(any::<u8>(), 1..3000)), 0..6),
            splits in proptest::collection::vec(any::<usize>(), 0..12),
            batch in 1usize..80_000,
            low_entropy: bool,
        ) {
            let mut data = random_bytes(seed, len);
            if low_entropy {
                data.iter_mut().enumerate().for_each(|(i, b)| if (i / 20_000) % 2 == 0 { *b = 0 });
            }
            let mut memo = SequenceMemo::new(1 << 14);
            let (first, _) = ingest(&mut memo, &data, &splits, batch);
            prop_assert_eq!(first, chunk_ranges(&data, SMALL));
            // The next "night": overwrites, insertions and deletions at random places.
            let mut edited = data.clone();
            for (at, kind, bytes) in &edits {
                let at = (edited.len() as f64 * at) as usize;
                let span = at..(at + bytes.len()).min(edited.len());
                match kind {
                    0 => drop(edited.splice(span, bytes.iter().copied())),
                    1 => drop(edited.splice(at..at, bytes.iter().copied())),
                    _ => drop(edited.drain(span)),
                }
            }
            let (again, followed) = ingest(&mut memo, &edited, &splits, batch);
            prop_assert_eq!(again, chunk_ranges(&edited, SMALL));
            // Through a follower where a sequence is remembered: the same cuts.
            let (streamed, _) = ingest_streaming(&mut memo, &edited, &splits, batch);
            prop_assert_eq!(streamed, chunk_ranges(&edited, SMALL));
            if edits.is_empty() && len > 4 * SMALL.max as usize {
                prop_assert!(followed > 0);
            }
        }
    }
}
