//! Containers reconstructed from parity for degraded reads, kept while a restore walks through them.
//!
//! A degraded read of one frame needs the same rows of k shards: for a frame of L bytes it reads k x L and
//! decodes the missing rows, so reading a whole container frame by frame read its k shards k times over (and
//! a frame straddling two shards, all k shards whole). A restore that meets a container with an unreadable
//! data shard now reconstructs that container once, keeps its data shards here, and serves the container's
//! other frames from them. Containers are never modified (storage-format.md §3), so a kept reconstruction
//! cannot go stale; every frame served from it is still verified by its chunk hashes, and one that does not
//! verify (a surviving shard rotten as well) goes the frame-by-frame way, trying shard subsets.
//!
//! Memory: at most `capacity` containers are kept (least recently used first out); a reconstruction in use
//! by a reader outlives its eviction only as long as that read.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::core::ids::ContainerId;

/// How many reconstructed containers are kept: each is its k data shards (up to `container_capacity`, ~14
/// MiB at the default target). Four hold the containers a few restore streams are in at once.
pub(crate) const RECONSTRUCTED_KEPT: usize = 4;

/// A container's data shards, all k of them, reconstructed where a shard was unreadable.
pub(crate) struct DataShards {
    pub shards: Vec<Vec<u8>>,
    /// Shard indexes that could not be read (missing or on a failed disk) when it was reconstructed.
    pub unreadable: Vec<usize>,
}

impl DataShards {
    /// Container bytes `range`, copied out of the data shards; None if the range lies outside them.
    pub fn range(&self, range: Range<u64>) -> Option<Vec<u8>> {
        let shard_len = self.shards.first()?.len() as u64;
        if shard_len == 0
            || range.start > range.end
            || range.end > shard_len * self.shards.len() as u64
        {
            return None;
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut pos = range.start;
        while pos < range.end {
            let shard = &self.shards[(pos / shard_len) as usize];
            let within = (pos % shard_len) as usize;
            let n = (shard_len - within as u64).min(range.end - pos) as usize;
            out.extend_from_slice(&shard[within..within + n]);
            pos += n as u64;
        }
        Some(out)
    }
}

/// None: fewer than k shards could be read (the caller reports the loss its own way).
type Slot = OnceLock<Option<Arc<DataShards>>>;

pub(crate) struct ReconstructedContainers {
    capacity: usize,
    /// Most recently used first.
    kept: Mutex<VecDeque<(ContainerId, Arc<Slot>)>>,
    /// Reconstructions made since the process started.
    made: AtomicU64,
}

impl ReconstructedContainers {
    pub fn new(capacity: usize) -> ReconstructedContainers {
        ReconstructedContainers {
            capacity: capacity.max(1),
            kept: Mutex::new(VecDeque::new()),
            made: AtomicU64::new(0),
        }
    }

    /// The kept reconstruction of `id`, or the one `reconstruct` makes. Threads asking for the same container
    /// at once (a window's frames are read in parallel) wait for one reconstruction instead of each making
    /// their own. A failed reconstruction is not kept, so the next read tries the disks again.
    pub fn get_or_reconstruct(
        &self,
        id: ContainerId,
        reconstruct: impl FnOnce() -> Option<DataShards>,
    ) -> Option<Arc<DataShards>> {
        let slot = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let slot = match kept.iter().position(|(c, _)| *c == id) {
                Some(i) => kept.remove(i).map(|(_, s)| s),
                None => None,
            }
            .unwrap_or_default();
            kept.push_front((id, slot.clone()));
            kept.truncate(self.capacity);
            slot
        };
        let got = slot
            .get_or_init(|| {
                let made = reconstruct().map(Arc::new);
                if made.is_some() {
                    self.made.fetch_add(1, Ordering::Relaxed);
                }
                made
            })
            .clone();
        if got.is_none() {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.retain(|(c, s)| !(*c == id && Arc::ptr_eq(s, &slot)));
        }
        got
    }

    /// Containers reconstructed since the process started.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Containers kept now, most recently used first.
    #[cfg(test)]
    pub fn kept(&self) -> Vec<ContainerId> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().map(|(c, _)| *c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn shards(k: usize, len: usize) -> DataShards {
        DataShards {
            shards: (0..k)
                .map(|i| (0..len).map(|j| (i * len + j) as u8).collect())
                .collect(),
            unreadable: vec![1],
        }
    }

    #[test]
    fn a_range_is_copied_across_shard_boundaries() {
        let d = shards(4, 10);
        let joined: Vec<u8> = d.shards.concat();
        for (a, b) in [
            (0, 0),
            (0, 40),
            (3, 7),
            (8, 12),
            (9, 31),
            (10, 20),
            (39, 40),
        ] {
            assert_eq!(
                d.range(a..b).unwrap(),
                joined[a as usize..b as usize],
                "{a}..{b}"
            );
        }
        assert!(d.range(30..41).is_none());
        #[allow(clippy::reversed_empty_ranges)] // a reversed range must be refused, not panic
        let reversed = 5..4;
        assert!(d.range(reversed).is_none());
    }

    #[test]
    fn a_container_is_reconstructed_once_and_the_least_recently_used_leaves_first() {
        let cache = ReconstructedContainers::new(2);
        let made = AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, Ordering::SeqCst);
            Some(shards(2, 8))
        };
        cache.get_or_reconstruct(ContainerId(1), make).unwrap();
        cache.get_or_reconstruct(ContainerId(1), make).unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 1);
        cache.get_or_reconstruct(ContainerId(2), make).unwrap();
        cache.get_or_reconstruct(ContainerId(1), make).unwrap(); // 1 is now the most recent
        cache.get_or_reconstruct(ContainerId(3), make).unwrap(); // evicts 2
        assert_eq!(made.load(Ordering::SeqCst), 3);
        assert_eq!(cache.kept(), vec![ContainerId(3), ContainerId(1)]);
        cache.get_or_reconstruct(ContainerId(2), make).unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_failed_reconstruction_is_not_kept() {
        let cache = ReconstructedContainers::new(4);
        assert!(cache.get_or_reconstruct(ContainerId(7), || None).is_none());
        assert!(cache.kept().is_empty());
        assert!(
            cache
                .get_or_reconstruct(ContainerId(7), || Some(shards(2, 4)))
                .is_some()
        );
    }

    #[test]
    fn threads_asking_at_once_share_one_reconstruction() {
        let cache = ReconstructedContainers::new(4);
        let made = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let d = cache
                        .get_or_reconstruct(ContainerId(9), || {
                            made.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Some(shards(3, 16))
                        })
                        .unwrap();
                    assert_eq!(d.shards.len(), 3);
                });
            }
        });
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert_eq!(cache.made(), 1);
    }
}
