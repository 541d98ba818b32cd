//! MD5 lanes: the batches of concurrent uploads are hashed together, up to eight streams at a time in the SIMD
//! lanes of one core (`core::md5x`).
//!
//! An upload feeds each batch (once its chunks are cut and hashed, before they are compressed) to its
//! [`Md5Stream`] as pieces; the MD5 of a stream is needed only at its end (the ETag), so pieces are allowed to
//! wait. Whoever has a reason to hash (every open stream, or three quarters of the lanes' worth of streams,
//! has a piece waiting; an upload has `MAX_OUTSTANDING` pieces unhashed; an upload ended) takes the waiting
//! pieces at once and hashes them with the streams side by side in the lanes, a lane moving on to its
//! stream's next piece as one ends ("flat combining"): no extra thread, and every upload thread takes its
//! share of the work. Streams whose pieces are not needed yet leave the lanes when too few would go on: their
//! rests wait for company. The last holder of a batch buffer hands it back to the store's pool.
//!
//! A second full backup sends the same bytes again; their MD5 is already known. At content-defined
//! checkpoints (after a chunk whose id starts with six zero bits, ~every 64 chunks, and at a stream's end) the
//! state is remembered under a fingerprint of the stream's chunk ids so far (a BLAKE3 chain: equal
//! fingerprints mean equal bytes, the same assumption as dedup itself). A stream that reaches a remembered
//! fingerprint takes that state and drops its pieces still waiting: duplicate data is not MD5-hashed again.
//! The memo is a bounded in-memory table (`MEMO_ENTRIES`) per store; the store also records new checkpoints in
//! its catalog (`md5_checkpoints`, written with its next seal) and looks a checkpoint up there when memory
//! does not know it, so a repeated stream is spared its MD5 after a restart too, and for streams longer ago
//! than memory reaches.
//!
//! Measured (docs/performance-history.md): handing the MD5 state over with each batch and taking it back at the next one
//! left ~2 of 8 lanes busy in duplicate ingest (and a scalar pass whenever one batch waited alone), MD5 45% of
//! the server's CPU. A single hashing thread was tried before that and serialised MD5 onto one core.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::frames::FrameBatch;
use crate::core::ids::ChunkId;
use crate::core::md5x::{LANES, Md5State, update_many_pieces_while_wide};

/// Pieces (parts of batches between checkpoints, ~1-2 MB) of one stream that may wait unhashed; its next
/// hand-over first waits for the oldest. A stream's backlog is the company other streams find in the lanes
/// when they must be hashed at once (a part's end): measured with 8 uploads of 16 MiB parts, 2 left 12% of
/// MD5's bytes to the scalar kernel, 4 left 2%. Four pieces hold at most four batch buffers; peak RSS with 16
/// parallel uploads stayed below what it was with 2 (docs/performance-history.md).
const MAX_OUTSTANDING: usize = 4;
/// Batch tails a stream that has not diverged holds back at most, waiting for its next checkpoint.
const MAX_CARRIED: usize = MAX_OUTSTANDING;
/// Remembered checkpoint states (~200 B each with the table's overhead): ~13 MiB, covering the last ~150 GB
/// of streams at one checkpoint per ~2.3 MB.
const MEMO_ENTRIES: usize = 1 << 16;
/// A chunk whose id has these bits of its first byte clear ends a checkpoint (1 in 64).
const CHECKPOINT_MASK: u8 = 0b0011_1111;
/// Streams not needed now leave the lanes once fewer than this many (or than the open streams, if fewer)
/// would go on (see `combine`); that many streams with pieces waiting start a combiner.
const MIN_WIDTH: usize = LANES * 3 / 4;
/// At most this many pieces are taken by one combiner (besides all of the stream it works for).
const MAX_COMBINE: usize = 3 * LANES;
/// A waiter whose batch another thread is hashing gives up after this long (that thread died).
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Why a stream's MD5 is not available.
#[derive(Debug, thiserror::Error)]
pub enum Md5LaneError {
    #[error("the thread hashing this upload's MD5 stopped before delivering it")]
    Lost,
}

struct StreamInner {
    state: Md5State,
    /// Pieces hashed into `state` so far.
    hashed: u64,
    /// A combiner holds this stream's state and some of its pieces.
    busy: bool,
    /// A combiner failed while holding the stream: its MD5 is lost.
    broken: bool,
    /// The upload is gone (its `Md5Stream` dropped): pieces a combiner stopped in are not queued again.
    abandoned: bool,
}

/// Where a batch buffer goes once nobody needs it any more (the store's pool).
pub type Recycle = Box<dyn Fn(Vec<u8>) + Send + Sync>;

struct Stream {
    inner: Mutex<StreamInner>,
    changed: Condvar,
    recycle: Option<Recycle>,
    /// Where the states at this stream's checkpoints are remembered (by whichever thread hashes them).
    memo: Arc<Md5Memo>,
}

impl Stream {
    /// Waits while a combiner holds this stream; Lost if it never lets go or failed.
    fn wait_idle<'a>(
        &'a self,
        mut g: MutexGuard<'a, StreamInner>,
    ) -> Result<MutexGuard<'a, StreamInner>, Md5LaneError> {
        while g.busy {
            let (guard, timeout) = self
                .changed
                .wait_timeout(g, STALL_LIMIT)
                .unwrap_or_else(|e| e.into_inner());
            g = guard;
            if timeout.timed_out() && g.busy {
                return Err(Md5LaneError::Lost);
            }
        }
        if g.broken {
            return Err(Md5LaneError::Lost);
        }
        Ok(g)
    }

    /// Drops a piece's hold on its batch; the last holder of a pool buffer recycles it.
    fn release_batch(&self, data: BatchBytes) {
        if let BatchBytes::Buffer(b) = data {
            self.release(b);
        }
    }

    /// Drops a piece's hold on its buffer; the last holder recycles it.
    fn release(&self, data: Arc<Vec<u8>>) {
        if let (Ok(buffer), Some(recycle)) = (Arc::try_unwrap(data), &self.recycle) {
            recycle(buffer);
        }
    }
}

struct Job {
    stream: Arc<Stream>,
    data: Arc<Vec<u8>>,
    range: Range<usize>,
    /// The fingerprint of the stream up to this piece's end, if that is a checkpoint.
    checkpoint: Option<[u8; 32]>,
}

/// Where a batch fed to a stream lies: a batch buffer of the store's pool, or the body frames a followed
/// stream arrived in (store::frames). A piece of frames that must be hashed after all is copied out into a
/// buffer of its own when handed over (a stream whose MD5 the memo knows never is).
#[derive(Clone)]
pub enum BatchBytes {
    Buffer(Arc<Vec<u8>>),
    Frames(Arc<FrameBatch>),
}

impl BatchBytes {
    fn len(&self) -> usize {
        match self {
            BatchBytes::Buffer(b) => b.len(),
            BatchBytes::Frames(f) => f.len(),
        }
    }
}

/// A piece to hash: bytes of a batch, and the fingerprint if it ends at a checkpoint.
type Piece = (BatchBytes, Range<usize>, Option<[u8; 32]>);

/// Fingerprint of a stream's chunk-id sequence so far -> the MD5 state after those bytes.
#[derive(Default)]
struct Memo {
    states: HashMap<[u8; 32], Md5State>,
    order: VecDeque<[u8; 32]>,
    /// Remembered here and not yet handed to the catalog (only for a memo that keeps them: `Md5Memo::durable`).
    unsaved: Vec<([u8; 32], Md5State)>,
}

impl Memo {
    fn remember(&mut self, key: [u8; 32], state: &Md5State) -> bool {
        if self.states.contains_key(&key) {
            return false;
        }
        if self.order.len() >= MEMO_ENTRIES
            && let Some(old) = self.order.pop_front()
        {
            self.states.remove(&old);
        }
        self.order.push_back(key);
        self.states.insert(key, state.clone());
        true
    }
}

/// The checkpoint states of one store's streams (see the module doc).
#[derive(Default)]
pub struct Md5Memo {
    inner: Mutex<Memo>,
    /// New states are kept for [`Md5Memo::take_unsaved`] (the store records them in its catalog).
    durable: bool,
}

impl Md5Memo {
    /// A memo in memory only.
    pub fn new() -> Md5Memo {
        Md5Memo::default()
    }

    /// A memo whose new states the owner takes with [`Md5Memo::take_unsaved`] to record them.
    pub fn durable() -> Md5Memo {
        Md5Memo {
            inner: Mutex::default(),
            durable: true,
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Md5State> {
        lock(&self.inner).states.get(key).cloned()
    }

    fn remember(&self, key: [u8; 32], state: &Md5State) {
        let mut m = lock(&self.inner);
        // Bounded like the table: when nobody takes them (no seal for a long while), the oldest wait longest.
        if m.remember(key, state) && self.durable && m.unsaved.len() < MEMO_ENTRIES {
            m.unsaved.push((key, state.clone()));
        }
    }

    /// A state read back from the owner's record: remembered in memory, not recorded again.
    fn remember_recorded(&self, key: [u8; 32], state: &Md5State) {
        lock(&self.inner).remember(key, state);
    }

    /// The states remembered since the last call, to be recorded.
    pub fn take_unsaved(&self) -> Vec<([u8; 32], Md5State)> {
        std::mem::take(&mut lock(&self.inner).unsaved)
    }
}

/// The memo of streams made without one of their own (`Md5Stream::new`).
fn process_memo() -> Arc<Md5Memo> {
    static MEMO: OnceLock<Arc<Md5Memo>> = OnceLock::new();
    MEMO.get_or_init(|| Arc::new(Md5Memo::new())).clone()
}

/// Looks a fingerprint up in the store's record of checkpoints (its catalog), when memory does not know it.
pub type RecordedState = Box<dyn Fn(&[u8; 32]) -> Option<Md5State> + Send>;

/// The fingerprint chain's start (versioned, so a change of the rule can never match old entries).
fn fingerprint_start() -> [u8; 32] {
    *blake3::hash(b"cairn md5 memo v1").as_bytes()
}

/// The fingerprint after one more chunk.
fn fingerprint_next(prev: &[u8; 32], id: &ChunkId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(id.as_bytes());
    *h.finalize().as_bytes()
}

fn is_checkpoint(id: &ChunkId) -> bool {
    id.as_bytes()[0] & CHECKPOINT_MASK == 0
}

fn queue() -> &'static Mutex<VecDeque<Job>> {
    static QUEUE: OnceLock<Mutex<VecDeque<Job>>> = OnceLock::new();
    QUEUE.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// Streams that have handed pieces over and not ended yet.
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every step, so a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The MD5 of one upload, fed batch by batch through the shared lanes.
pub struct Md5Stream {
    shared: Arc<Stream>,
    /// Pieces handed over in all.
    submitted: u64,
    /// Fingerprint of the chunk ids fed so far.
    fingerprint: [u8; 32],
    /// Bytes fed.
    fed: u64,
    /// The bytes after the last checkpoint, held back until the next checkpoint (or the end) shows whether
    /// the memo knows them: the tails of one or more batches (a batch may hold no checkpoint), at most
    /// `MAX_CARRIED`.
    carry: Vec<(BatchBytes, Range<usize>)>,
    /// Bytes whose MD5 came from the memo instead of being hashed (for tests and figures).
    remembered: u64,
    /// A checkpoint was not in the memo: this stream's chunk sequence differs from every remembered one,
    /// and since fingerprints chain from the stream's start no later checkpoint can be remembered either
    /// (see `feed`). From then on nothing is held back or looked up.
    diverged: bool,
    /// Counted in OPEN_STREAMS: from its first piece handed over to its end. (A stream that has not
    /// produced a piece yet, a new part still filling its first batch, is not waited for.)
    open: bool,
    /// The store's record of checkpoints, asked when the memo does not know one.
    recorded: Option<RecordedState>,
    /// Ended: `state` was called.
    closed: bool,
}

impl Default for Md5Stream {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Md5Stream {
    /// `recycle` takes batch buffers back as soon as their last piece is hashed (or dropped), by whichever
    /// thread that happens on: a hashed batch does not wait for its upload's next one to be given back.
    pub fn new(recycle: Option<Recycle>) -> Md5Stream {
        Self::with_memo(recycle, process_memo(), None)
    }

    /// A stream remembering its checkpoints in `memo`, and looking those memory does not know up in
    /// `recorded`.
    pub fn with_memo(
        recycle: Option<Recycle>,
        memo: Arc<Md5Memo>,
        recorded: Option<RecordedState>,
    ) -> Md5Stream {
        Md5Stream {
            shared: Arc::new(Stream {
                inner: Mutex::new(StreamInner {
                    state: Md5State::new(),
                    hashed: 0,
                    busy: false,
                    broken: false,
                    abandoned: false,
                }),
                changed: Condvar::new(),
                recycle,
                memo,
            }),
            submitted: 0,
            fingerprint: fingerprint_start(),
            remembered: 0,
            diverged: false,
            fed: 0,
            carry: Vec::new(),
            closed: false,
            open: false,
            recorded,
        }
    }

    /// Feeds one batch: `data` holds whole chunks ending at `ends`, with ids `ids`. Pieces up to a remembered
    /// checkpoint are not hashed (the memo's state is taken); the others are handed over to be hashed after
    /// the pieces before them.
    ///
    /// Once a checkpoint is not remembered the stream has diverged: a later checkpoint's fingerprint covers
    /// this one, and whoever hashed up to that later one remembered this one on the way (or took it from the
    /// memo), so no later lookup can succeed (short of eviction, which only costs hashing). A diverged stream
    /// hands every byte over at once: holding the bytes after the last checkpoint back only left them to be
    /// hashed at the stream's end, alone on the scalar kernel (with 8 unique multipart uploads, ~2.3 MB of
    /// each 16 MiB part), and cost a copy. Identical uploads running at the same time lose what one could
    /// have taken from the other mid-stream; nightly fulls come one after another.
    pub fn feed(
        &mut self,
        data: BatchBytes,
        ends: &[usize],
        ids: &[ChunkId],
    ) -> Result<(), Md5LaneError> {
        let mut pieces: Vec<Piece> = self
            .carry
            .drain(..)
            .map(|(buf, range)| (buf, range, None))
            .collect();
        let mut start = 0usize;
        let mut resume: Option<Md5State> = None;
        for (id, &end) in ids.iter().zip(ends) {
            self.fingerprint = fingerprint_next(&self.fingerprint, id);
            if !is_checkpoint(id) {
                continue;
            }
            let known = self.remembered_state();
            match known {
                Some(state) => {
                    self.remembered += (end - start) as u64;
                    for (buf, range, _) in pieces.drain(..) {
                        self.skip_remembered(buf, range);
                    }
                    resume = Some(state);
                }
                None => {
                    self.diverged = true;
                    pieces.push((data.clone(), start..end, Some(self.fingerprint)));
                }
            }
            start = end;
        }
        self.fed += data.len() as u64;
        if self.diverged {
            if start < data.len() {
                pieces.push((data.clone(), start..data.len(), None));
            }
        } else {
            // Not diverged: every checkpoint so far was remembered, and what `pieces` still holds is the carry
            // of earlier batches (this one had no checkpoint). It waits with this batch's tail for the next
            // checkpoint: handing it over here had a repeated stream hash the carry whenever a batch ended
            // before its next checkpoint (~5-10% of the parts of a duplicate full were partly MD5-hashed).
            // The tails are held in their batches' own buffers, which go back to the pool once the carry is
            // hashed or found remembered (copying them out was 2.8% of the server's CPU in duplicate
            // ingest). A stream holds back only while it has not diverged, so unique data never holds a buffer
            // here. Beyond MAX_CARRIED tails (no checkpoint for that long) the oldest are hashed after all, so
            // that a stream never holds more buffers than that.
            if start < data.len() {
                pieces.push((data.clone(), start..data.len(), None));
            }
            let due = pieces.len().saturating_sub(MAX_CARRIED);
            self.carry = pieces
                .drain(due..)
                .map(|(buf, range, _)| (buf, range))
                .collect();
        }
        if let Some(state) = resume {
            self.resume_at(state)?;
        }
        for (buf, range, checkpoint) in pieces {
            self.submit(buf, range, checkpoint)?;
        }
        Ok(())
    }

    /// The memo's state for the stream so far, unless the stream has diverged (no lookup then).
    fn remembered_state(&self) -> Option<Md5State> {
        if self.diverged {
            return None;
        }
        let memo = &self.shared.memo;
        memo.get(&self.fingerprint).or_else(|| {
            let state = self.recorded.as_ref()?(&self.fingerprint)?;
            memo.remember_recorded(self.fingerprint, &state);
            Some(state)
        })
    }

    /// `buf[range]` is covered by a state taken from the memo: counted as remembered, never hashed, and its hold
    /// on the buffer dropped (the last holder gives it back to the pool).
    fn skip_remembered(&mut self, buf: BatchBytes, range: Range<usize>) {
        self.remembered += range.len() as u64;
        self.shared.release_batch(buf);
    }

    /// Bytes whose MD5 state came from the memo.
    pub fn remembered(&self) -> u64 {
        self.remembered
    }

    /// Everything fed so far is known to hash to `state`: pieces still waiting are dropped unhashed.
    fn resume_at(&mut self, state: Md5State) -> Result<(), Md5LaneError> {
        let waiting: Vec<Job> = loop {
            // Locks in the combiners' order (queue, then stream). A combiner holding this stream may put
            // the rest of a piece back in the queue, so the queue is cleared only once it let go.
            let mut q = lock(queue());
            let mut g = lock(&self.shared.inner);
            if g.busy {
                drop(q);
                drop(self.shared.wait_idle(g)?);
                continue;
            }
            if g.broken {
                return Err(Md5LaneError::Lost);
            }
            let (mine, others): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut *q)
                .into_iter()
                .partition(|j| Arc::ptr_eq(&j.stream, &self.shared));
            *q = others;
            g.state = state;
            g.hashed = self.submitted;
            break mine.into();
        };
        let dropped: u64 = waiting.iter().map(|j| j.range.len() as u64).sum();
        for j in waiting {
            self.shared.release(j.data);
        }
        self.remembered += dropped;
        Ok(())
    }

    /// Hands `data[range]` over to be hashed after the pieces before it. Waits (hashing, usually) if this
    /// stream already has `MAX_OUTSTANDING` pieces unhashed.
    fn submit(
        &mut self,
        data: BatchBytes,
        range: Range<usize>,
        checkpoint: Option<[u8; 32]>,
    ) -> Result<(), Md5LaneError> {
        let (data, range) = match data {
            BatchBytes::Buffer(b) => (b, range),
            // Hashed after all (the stream diverged): the frames' bytes in one buffer for the lanes. Its
            // release offers it to the pool, which keeps only buffers of a batch buffer's size.
            BatchBytes::Frames(f) => {
                let v = f.to_vec(range);
                let len = v.len();
                (Arc::new(v), 0..len)
            }
        };
        let hashed = lock(&self.shared.inner).hashed;
        if self.submitted - hashed >= MAX_OUTSTANDING as u64 {
            self.wait_hashed(self.submitted + 1 - MAX_OUTSTANDING as u64)?;
        }
        self.submitted += 1;
        if !self.open && !self.closed {
            self.open = true;
            OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        }
        let full = {
            let mut q = lock(queue());
            q.push_back(Job {
                stream: self.shared.clone(),
                data,
                range,
                checkpoint,
            });
            // Lanes are as full as they can get once every open stream (up to 8) has a piece waiting, and
            // three quarters full is enough not to let backlogs (and the buffers they hold) grow. One stream
            // alone waits for its cap or its end (a remembered checkpoint may still spare the work).
            let distinct = distinct_streams(&q);
            distinct >= min_width()
        };
        if full {
            combine(None);
        }
        Ok(())
    }

    /// Pieces handed over and not hashed yet.
    #[cfg(test)]
    fn unhashed(&self) -> u64 {
        self.submitted - lock(&self.shared.inner).hashed
    }

    /// The state with every handed-over piece hashed in (hashing what is still waiting, with the pieces of
    /// other streams).
    /// The stream's end is a checkpoint too.
    pub fn state(&mut self) -> Result<Md5State, Md5LaneError> {
        self.close();
        if self.fed == 0 {
            return Ok(Md5State::new());
        }
        let known = self.remembered_state();
        let carry = std::mem::take(&mut self.carry);
        match known {
            Some(state) => {
                for (buf, range) in carry {
                    self.skip_remembered(buf, range);
                }
                self.resume_at(state)?;
            }
            None => {
                for (buf, range) in carry {
                    self.submit(buf, range, None)?;
                }
            }
        }
        self.wait_hashed(self.submitted)?;
        let state = lock(&self.shared.inner).state.clone();
        self.shared.memo.remember(self.fingerprint, &state);
        Ok(state)
    }

    /// No more pieces will come: others stop waiting for this stream to fill the lanes.
    fn close(&mut self) {
        self.closed = true;
        if std::mem::take(&mut self.open) {
            OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Returns once the first `n` pieces are hashed.
    fn wait_hashed(&self, n: u64) -> Result<(), Md5LaneError> {
        loop {
            {
                let g = lock(&self.shared.inner);
                if g.hashed >= n && !g.broken {
                    return Ok(());
                }
                if self.shared.wait_idle(g)?.hashed >= n {
                    return Ok(());
                }
            }
            // Not done and nobody at it: our pieces are in the queue (or were just taken, then we wait).
            combine(Some((&self.shared, n)));
        }
    }
}

impl Drop for Md5Stream {
    /// An abandoned upload takes its pieces out of the queue (no one would hash them for nothing).
    fn drop(&mut self) {
        self.close();
        for (buf, _) in std::mem::take(&mut self.carry) {
            self.shared.release_batch(buf);
        }
        let mut q = lock(queue());
        q.retain(|j| !Arc::ptr_eq(&j.stream, &self.shared));
        lock(&self.shared.inner).abandoned = true;
    }
}

/// The fewest streams worth a pass of the lanes without a needed piece: `MIN_WIDTH`, or every open stream
/// if fewer are open (with 4 uploads, as rclone runs by default, lanes are never fuller than 4), at least 2.
fn min_width() -> usize {
    OPEN_STREAMS.load(Ordering::Relaxed).clamp(2, MIN_WIDTH)
}

fn distinct_streams(q: &VecDeque<Job>) -> usize {
    let mut seen: Vec<&Arc<Stream>> = Vec::with_capacity(LANES);
    for j in q {
        if !seen.iter().any(|s| Arc::ptr_eq(s, &j.stream)) {
            seen.push(&j.stream);
            if seen.len() >= LANES {
                break;
            }
        }
    }
    seen.len()
}

/// Streams a combiner holds; released (and marked broken) if hashing panics.
struct Held {
    streams: Vec<(Arc<Stream>, Vec<Job>)>,
    published: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        for (s, _) in &self.streams {
            let mut g = lock(&s.inner);
            g.busy = false;
            g.broken = true;
            s.changed.notify_all();
        }
    }
}

/// Takes waiting pieces (all of `own`'s, and others up to `MAX_COMBINE`) of streams nobody else is hashing,
/// and hashes them. Pieces of one stream stay in order: a stream is taken whole by one combiner at a time.
/// `own` comes with the number of its pieces that must be hashed when this returns (if it got the stream);
/// other pieces are hashed as far as they have company in the lanes, the rest goes back to the queue.
fn combine(own: Option<(&Arc<Stream>, u64)>) {
    let mut held = Held {
        streams: Vec::new(),
        published: false,
    };
    // Pieces of each held stream that must be hashed (own's up to its target, others' none).
    let mut need: Vec<usize> = Vec::new();
    {
        let mut q = lock(queue());
        let mut taken = 0usize;
        let mut skipped: Vec<Arc<Stream>> = Vec::new();
        let waiting = std::mem::take(&mut *q);
        for job in waiting {
            let is_own = own.is_some_and(|(o, _)| Arc::ptr_eq(o, &job.stream));
            let slot = held
                .streams
                .iter()
                .position(|(s, _)| Arc::ptr_eq(s, &job.stream));
            let take = match slot {
                Some(_) => is_own || taken < MAX_COMBINE,
                None if (!is_own && taken >= MAX_COMBINE)
                    || skipped.iter().any(|s| Arc::ptr_eq(s, &job.stream)) =>
                {
                    false
                }
                None => {
                    let mut g = lock(&job.stream.inner);
                    if g.busy {
                        false
                    } else {
                        g.busy = true;
                        need.push(match own {
                            Some((_, target)) if is_own => {
                                usize::try_from(target.saturating_sub(g.hashed))
                                    .unwrap_or(usize::MAX)
                            }
                            _ => 0,
                        });
                        true
                    }
                }
            };
            if !take {
                // Once a stream's batch stays behind, its later ones must too (order).
                if !skipped.iter().any(|s| Arc::ptr_eq(s, &job.stream)) {
                    skipped.push(job.stream.clone());
                }
                q.push_back(job);
                continue;
            }
            taken += 1;
            match slot {
                Some(i) => held.streams[i].1.push(job),
                None => {
                    let stream = job.stream.clone();
                    held.streams.push((stream, vec![job]));
                }
            }
        }
    }
    if held.streams.is_empty() {
        return;
    }
    let mut states: Vec<Md5State> = held
        .streams
        .iter()
        .map(|(s, _)| lock(&s.inner).state.clone())
        .collect();
    let stops = {
        let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
        let pieces: Vec<Vec<&[u8]>> = held
            .streams
            .iter()
            .map(|(_, jobs)| jobs.iter().map(|j| &j.data[j.range.clone()]).collect())
            .collect();
        let pieces: Vec<&[&[u8]]> = pieces.iter().map(|p| &p[..]).collect();
        let mut remembered: Vec<(usize, [u8; 32], Md5State)> = Vec::new();
        // Beyond what is needed now, streams stop once the lanes would run less than `min_width` wide; their
        // rests wait for company. Pieces end at content-defined checkpoints, so their lengths vary a lot: run
        // to their ends (stopping only a stream that would go on alone), the lanes ran 2.4 wide on average
        // over a unique ingest, and the scalar kernel hashed 36% of MD5's bytes.
        let stops =
            update_many_pieces_while_wide(&mut refs, &pieces, &need, min_width(), |i, j, state| {
                if let Some(key) = held.streams[i].1[j].checkpoint {
                    remembered.push((i, key, state.clone()));
                }
            });
        for (i, key, state) in &remembered {
            held.streams[*i].0.memo.remember(*key, state);
        }
        stops
    };
    held.published = true;
    let mut hashed_jobs: Vec<(Arc<Stream>, Vec<Job>)> = Vec::new();
    let mut q = lock(queue());
    for (((stream, mut jobs), state), stop) in std::mem::take(&mut held.streams)
        .into_iter()
        .zip(states)
        .zip(stops)
    {
        let mut g = lock(&stream.inner);
        let rest: Vec<Job> = match stop {
            Some(stop) => {
                let mut rest = jobs.split_off(stop.piece);
                rest[0].range.start += stop.offset;
                rest
            }
            None => Vec::new(),
        };
        g.state = state;
        g.hashed += jobs.len() as u64;
        if g.abandoned {
            jobs.extend(rest);
        } else {
            // Back to the front: these come before any later piece of the stream still in the queue.
            for j in rest.into_iter().rev() {
                q.push_front(j);
            }
        }
        g.busy = false;
        stream.changed.notify_all();
        drop(g);
        hashed_jobs.push((stream, jobs));
    }
    drop(q);
    for (stream, jobs) in hashed_jobs {
        for j in jobs {
            stream.release(j.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    /// The queue and the memo are process-wide: a combiner of another test may hash a stream's waiting pieces
    /// before its memo lookup drops them. Tests that count remembered bytes exactly run alone (write); the
    /// others may run together (read).
    static QUEUE_USERS: RwLock<()> = RwLock::new(());

    fn shared_queue() -> RwLockReadGuard<'static, ()> {
        QUEUE_USERS.read().unwrap_or_else(|e| e.into_inner())
    }

    fn queue_alone() -> RwLockWriteGuard<'static, ()> {
        QUEUE_USERS.write().unwrap_or_else(|e| e.into_inner())
    }

    fn streams() -> Vec<Vec<u8>> {
        (0..10u32)
            .map(|s| {
                (0..(300_000 + s * 7_777))
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> (s % 5 + 8)) as u8)
                    .collect()
            })
            .collect()
    }

    /// Feeds `data` cut into "chunks" of `chunk` bytes, in batches of whole chunks of at least `batch` bytes
    /// (as ingest does: chunk boundaries depend on the content only, batch boundaries on network reads).
    /// An id made up for a test (salted by `salt`): whether a chunk ends a checkpoint depends on its id only.
    fn made_up_id(salt: &[u8], checkpoint: bool, n: u8) -> ChunkId {
        let mut b = *ChunkId::of(salt).as_bytes();
        b[0] = if checkpoint { 0 } else { 0xff };
        b[1] = n;
        ChunkId(b)
    }

    fn buffer(data: &[u8]) -> BatchBytes {
        BatchBytes::Buffer(Arc::new(data.to_vec()))
    }

    /// `data` as body frames of up to 333 bytes.
    fn frames(data: &[u8]) -> BatchBytes {
        let mut f = FrameBatch::new();
        for piece in data.chunks(333) {
            f.push(bytes::Bytes::copy_from_slice(piece));
        }
        BatchBytes::Frames(Arc::new(f))
    }

    fn feed_all(md5: &mut Md5Stream, data: &[u8], batch: usize, chunk: usize) -> [u8; 16] {
        feed_all_as(md5, data, batch, chunk, buffer)
    }

    fn feed_all_as(
        md5: &mut Md5Stream,
        data: &[u8],
        batch: usize,
        chunk: usize,
        batch_bytes: fn(&[u8]) -> BatchBytes,
    ) -> [u8; 16] {
        let mut from = 0;
        while from < data.len() {
            let to = (from + batch.div_ceil(chunk) * chunk).min(data.len());
            let b = &data[from..to];
            let ends: Vec<usize> = (1..=b.len().div_ceil(chunk))
                .map(|i| (i * chunk).min(b.len()))
                .collect();
            let ids: Vec<ChunkId> = b.chunks(chunk).map(ChunkId::of).collect();
            md5.feed(batch_bytes(b), &ends, &ids).expect("feed");
            assert!(
                md5.unhashed() <= MAX_OUTSTANDING as u64,
                "memory stays bounded"
            );
            // Something else to do meanwhile, so pieces of other threads queue up.
            std::thread::yield_now();
            from = to;
        }
        md5.state().expect("hashed").finalize()
    }

    #[test]
    fn concurrent_streams_get_their_own_digests() {
        let _queue = shared_queue();
        let streams = streams();
        std::thread::scope(|scope| {
            for (n, s) in streams.iter().enumerate() {
                scope.spawn(move || {
                    // Every batch buffer comes back exactly once, whoever hashed its last piece.
                    let recycled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let counter = recycled.clone();
                    let mut md5 = Md5Stream::new(Some(Box::new(move |_| {
                        counter.fetch_add(1, Ordering::Relaxed);
                    })));
                    // Salted chunk sizes: these streams share no fingerprints with other tests'.
                    let chunk = 997 + n;
                    let got = feed_all(&mut md5, s, 65_537, chunk);
                    let want: [u8; 16] = md5::Md5::digest(s).into();
                    assert_eq!(got, want);
                    assert_eq!(md5.unhashed(), 0);
                    // feed_all's batch buffers (a carry holds its batch's own buffer): each recycled at most
                    // once, by whoever dropped its last piece (feed_all drops its own hold without recycling).
                    let batches = s.len().div_ceil(65_537usize.div_ceil(chunk) * chunk);
                    assert!((1..=batches).contains(&recycled.load(Ordering::Relaxed)));
                });
            }
        });
    }

    #[test]
    fn one_stream_alone_is_hashed_in_order() {
        let _queue = shared_queue();
        let s = &streams()[3];
        let mut md5 = Md5Stream::new(None);
        let want: [u8; 16] = md5::Md5::digest(s).into();
        assert_eq!(feed_all(&mut md5, s, 10_000, 1_009), want);
    }

    #[test]
    fn the_same_bytes_again_are_not_hashed_again() {
        let _queue = queue_alone();
        let mut data = streams()[5].clone();
        data.extend_from_slice(&streams()[6]);
        let want: [u8; 16] = md5::Md5::digest(&data).into();
        let mut first = Md5Stream::new(None);
        assert_eq!(feed_all(&mut first, &data, 50_000, 211), want);
        // The same content in other batch sizes (network reads differ), as body frames (a followed stream):
        // same chunks, all of it remembered.
        let mut again = Md5Stream::new(None);
        assert_eq!(feed_all_as(&mut again, &data, 30_011, 211, frames), want);
        assert_eq!(again.remembered(), data.len() as u64);
        // A stream sharing only a prefix: the prefix up to its last checkpoint is remembered, the rest hashed.
        let mut changed = data.clone();
        let at = changed.len() / 2;
        changed[at] ^= 1;
        let mut third = Md5Stream::new(None);
        let want_changed: [u8; 16] = md5::Md5::digest(&changed).into();
        assert_eq!(
            feed_all_as(&mut third, &changed, 50_000, 211, frames),
            want_changed
        );
        assert!(
            third.remembered() > 0 && third.remembered() <= at as u64,
            "remembered {} of a {at}-byte shared prefix",
            third.remembered()
        );
    }

    #[test]
    fn a_stream_unlike_any_remembered_holds_nothing_back() {
        let _queue = shared_queue();
        let id = |checkpoint, n| made_up_id(b"holds nothing back", checkpoint, n);
        let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let mut md5 = Md5Stream::new(None);
        // No checkpoint yet: the memo may still know this prefix, so the bytes are held back.
        md5.feed(buffer(&data[..1000]), &[1000], &[id(false, 1)])
            .expect("feed");
        assert!(!md5.carry.is_empty() && !md5.diverged);
        // A checkpoint the memo does not know: from here on every byte is handed over as it comes.
        md5.feed(
            frames(&data[1000..3000]),
            &[1500, 2000],
            &[id(true, 2), id(false, 3)],
        )
        .expect("feed");
        assert!(md5.diverged);
        assert!(md5.carry.is_empty(), "nothing held back");
        assert_eq!(
            md5.submitted, 3,
            "the carry, up to the checkpoint, the rest"
        );
        md5.feed(buffer(&data[3000..]), &[1000], &[id(true, 4)])
            .expect("feed");
        assert_eq!(md5.remembered(), 0);
        let want: [u8; 16] = md5::Md5::digest(&data).into();
        assert_eq!(md5.state().expect("hashed").finalize(), want);
    }

    #[test]
    fn tails_of_batches_without_a_checkpoint_wait_together() {
        let _queue = shared_queue();
        let id = |checkpoint, n| made_up_id(b"tails wait together", checkpoint, n);
        let data: Vec<u8> = (0..8000u32).map(|i| (i * 11 + 3) as u8).collect();
        let mut first = Md5Stream::new(None);
        // Remembers the checkpoint after chunk 7 (a stream of eight 1000-byte chunks).
        let batch = |n: u8| -> (BatchBytes, [usize; 1], [ChunkId; 1]) {
            let at = usize::from(n) * 1000;
            let bytes = if n.is_multiple_of(2) { buffer } else { frames };
            (bytes(&data[at..at + 1000]), [1000], [id(n == 7, n)])
        };
        for n in 0..8 {
            let (b, ends, ids) = batch(n);
            first.feed(b, &ends, &ids).expect("feed");
        }
        let want: [u8; 16] = md5::Md5::digest(&data).into();
        assert_eq!(first.state().expect("hashed").finalize(), want);

        let mut again = Md5Stream::new(None);
        for n in 0..3 {
            let (b, ends, ids) = batch(n);
            again.feed(b, &ends, &ids).expect("feed");
            // A batch with no checkpoint hands nothing over: its tail waits with the earlier ones.
            assert_eq!(again.submitted, 0);
            assert_eq!(again.carry.len(), usize::from(n) + 1);
        }
        for n in 3..7 {
            let (b, ends, ids) = batch(n);
            again.feed(b, &ends, &ids).expect("feed");
        }
        // Seven tails without a checkpoint: all but MAX_CARRIED handed over (memory stays bounded).
        assert_eq!(again.carry.len(), MAX_CARRIED);
        assert_eq!(again.submitted, 7 - MAX_CARRIED as u64);
        let (b, ends, ids) = batch(7);
        again.feed(b, &ends, &ids).expect("feed");
        assert!(again.carry.is_empty());
        assert_eq!(again.state().expect("remembered").finalize(), want);
    }

    #[test]
    fn a_held_back_tail_stays_in_its_buffer_and_returns_it() {
        let _queue = shared_queue();
        let recycled = Arc::new(AtomicUsize::new(0));
        let counting = || -> Option<Recycle> {
            let counter = recycled.clone();
            Some(Box::new(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }))
        };
        // A chunk that ends no checkpoint (its id's first byte has bits of the mask set).
        let mut not_checkpoint = *ChunkId::of(b"held back tail").as_bytes();
        not_checkpoint[0] = 0xff;
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 13 + 5) as u8).collect();
        let mut md5 = Md5Stream::new(counting());
        let own = Arc::new(data.clone());
        md5.feed(
            BatchBytes::Buffer(own.clone()),
            &[3000],
            &[ChunkId(not_checkpoint)],
        )
        .expect("feed");
        let Some((BatchBytes::Buffer(held), range)) = md5.carry.first().cloned() else {
            panic!("held back: the memo may know it");
        };
        assert!(Arc::ptr_eq(&held, &own), "no copy: the batch's own buffer");
        assert_eq!(range, 0..3000);
        drop((held, own));
        assert_eq!(recycled.load(Ordering::Relaxed), 0, "still held");
        // The stream's end hashes the tail; its buffer then goes back to the pool.
        let want: [u8; 16] = md5::Md5::digest(&data).into();
        assert_eq!(md5.state().expect("hashed").finalize(), want);
        assert_eq!(recycled.load(Ordering::Relaxed), 1);
        // An upload dropped while holding a tail back gives its buffer back too.
        let mut abandoned = Md5Stream::new(counting());
        abandoned
            .feed(buffer(&data), &[3000], &[ChunkId(not_checkpoint)])
            .expect("feed");
        drop(abandoned);
        assert_eq!(recycled.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_abandoned_stream_leaves_the_queue() {
        let _queue = shared_queue();
        let mut md5 = Md5Stream::new(None);
        let data = vec![7u8; 1000];
        md5.feed(buffer(&data), &[1000], &[ChunkId::of(b"abandoned")])
            .expect("feed");
        let shared = md5.shared.clone();
        drop(md5);
        assert!(
            !lock(queue())
                .iter()
                .any(|j| Arc::ptr_eq(&j.stream, &shared))
        );
    }
}
