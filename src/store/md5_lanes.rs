//! MD5 lanes: the batches of concurrent uploads are hashed together, up to eight at a time in the SIMD lanes
//! of one core (`core::md5x`). An upload hands its batch over (with its MD5 state) and goes on chunking and
//! compressing that batch; when it needs the state back (at its next batch, or at the end) and its batch is
//! still waiting, its own thread hashes every waiting batch at once and hands the others their results
//! ("flat combining"). Batches so wait in the queue exactly as long as their uploads do not need them, which
//! is what fills the lanes; no extra thread, and every upload thread takes its share of the work.
//! A single hashing thread was tried first and measured worse: it serialised MD5 onto one core whenever the
//! lanes were not full (duplicate ingest 505 -> 442 MB/s).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::core::md5x::{LANES, Md5State, update_many};

/// At most this many batches are hashed by one combiner at once: two rounds of lanes.
const MAX_COMBINE: usize = 2 * LANES;
/// A waiter whose batch another thread is hashing gives up after this long (that thread died).
const STALL_LIMIT: Duration = Duration::from_secs(120);

type Hashed = (Md5State, Arc<Vec<u8>>);

/// Where a batch's result is delivered.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Hashed>>,
    ready: Condvar,
}

struct Job {
    state: Md5State,
    data: Arc<Vec<u8>>,
    slot: Arc<Slot>,
}

fn queue() -> &'static Mutex<Vec<Job>> {
    static QUEUE: OnceLock<Mutex<Vec<Job>>> = OnceLock::new();
    QUEUE.get_or_init(|| Mutex::new(Vec::new()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every step, so a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handed-over batch.
pub struct PendingMd5 {
    slot: Arc<Slot>,
    data: Arc<Vec<u8>>,
    collected: bool,
}

/// Hands `data` over to be hashed into `state`.
pub fn submit(state: Md5State, data: Arc<Vec<u8>>) -> PendingMd5 {
    let slot = Arc::new(Slot::default());
    lock(queue()).push(Job {
        state,
        data: data.clone(),
        slot: slot.clone(),
    });
    PendingMd5 {
        slot,
        data,
        collected: false,
    }
}

impl PendingMd5 {
    /// The batch being hashed (shared, read-only until it comes back).
    pub fn data(&self) -> Arc<Vec<u8>> {
        self.data.clone()
    }

    /// The state with the batch hashed in, and the batch (for reuse). Hashes it here, with every other
    /// waiting batch, unless another thread already took it; None if that thread never delivered.
    pub fn wait(mut self) -> Option<Hashed> {
        self.collected = true;
        let mine = {
            let mut q = lock(queue());
            match q.iter().position(|j| Arc::ptr_eq(&j.slot, &self.slot)) {
                Some(at) => {
                    let me = q.swap_remove(at);
                    let n = q.len().min(MAX_COMBINE - 1);
                    let others: Vec<Job> = q.drain(..n).collect();
                    Some((me, others))
                }
                None => None,
            }
        };
        if let Some((me, others)) = mine {
            let mut jobs = others;
            jobs.push(me);
            let mut results = hash(jobs);
            // Ours is last; the others are delivered to their waiters.
            let own = results.pop().map(|(_, r)| r);
            for (slot, r) in results {
                *lock(&slot.result) = Some(r);
                slot.ready.notify_all();
            }
            return own;
        }
        let mut result = lock(&self.slot.result);
        loop {
            if let Some(r) = result.take() {
                return Some(r);
            }
            let (guard, timeout) = self
                .slot
                .ready
                .wait_timeout(result, STALL_LIMIT)
                .unwrap_or_else(|e| e.into_inner());
            result = guard;
            if timeout.timed_out() && result.is_none() {
                return None;
            }
        }
    }
}

impl Drop for PendingMd5 {
    /// An abandoned upload takes its batch out of the queue (no one would hash it for nothing).
    fn drop(&mut self) {
        if !self.collected {
            lock(queue()).retain(|j| !Arc::ptr_eq(&j.slot, &self.slot));
        }
    }
}

fn hash(jobs: Vec<Job>) -> Vec<(Arc<Slot>, Hashed)> {
    let mut states: Vec<Md5State> = Vec::with_capacity(jobs.len());
    let mut rest = Vec::with_capacity(jobs.len());
    for j in jobs {
        states.push(j.state);
        rest.push((j.slot, j.data));
    }
    {
        let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
        let slices: Vec<&[u8]> = rest.iter().map(|(_, d)| d.as_slice()).collect();
        update_many(&mut refs, &slices);
    }
    states
        .into_iter()
        .zip(rest)
        .map(|(state, (slot, data))| (slot, (state, data)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    #[test]
    fn concurrent_streams_get_their_own_digests() {
        let streams: Vec<Vec<u8>> = (0..10u32)
            .map(|s| {
                (0..(300_000 + s * 7_777))
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> (s % 5 + 8)) as u8)
                    .collect()
            })
            .collect();
        std::thread::scope(|scope| {
            for s in &streams {
                scope.spawn(move || {
                    let mut state = Md5State::new();
                    for piece in s.chunks(65_537) {
                        let job = submit(state, Arc::new(piece.to_vec()));
                        // Something else to do meanwhile, so batches of other threads queue up.
                        std::thread::yield_now();
                        let (st, back) = job.wait().expect("hashed");
                        assert_eq!(&back[..], piece);
                        state = st;
                    }
                    let want: [u8; 16] = md5::Md5::digest(s).into();
                    assert_eq!(state.finalize(), want);
                });
            }
        });
    }

    #[test]
    fn an_abandoned_batch_leaves_the_queue() {
        let job = submit(Md5State::new(), Arc::new(vec![7u8; 1000]));
        let slot = job.slot.clone();
        drop(job);
        assert!(!lock(queue()).iter().any(|j| Arc::ptr_eq(&j.slot, &slot)));
    }
}
