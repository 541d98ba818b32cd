//! Group commit of uploads' last containers (storage-format.md §6). An upload is acknowledged only once its
//! last container is sealed: every shard file written and fsync'd, then the catalog transaction committed.
//! For a small object or a part whose data was all duplicate, that container is a few KB, and the seal's
//! cost is per file and per commit, not per byte. So the last containers of uploads that finish while another
//! seal is under way are sealed together: their entries are moved into one container (`append`), written as
//! one set of shard files, and committed in one transaction, each upload's share under its own savepoint so
//! that one upload's failure (a multipart upload aborted meanwhile) does not fail the others. An upload that
//! finishes while no seal is under way seals at once, as before: nobody waits for a container to fill.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use rusqlite::Transaction;

use super::Store;
use super::catalog;
use super::dedup::ChunkLocation;
use super::error::{Result, StoreError};
use crate::core::container::ContainerBuilder;
use crate::core::ids::{ChunkId, ContainerId};

/// A last container larger than this is sealed alone: its shard writes cost by the byte, and a group of it
/// would only delay the small ones.
pub(super) const GROUP_ITEM_MAX: usize = 1 << 20;

/// What an upload's share of a group's transaction commits besides its chunks and references (its segment,
/// its upload row, its part or object; a record-only container's bucket, commit or tombstone rows), given the
/// store and the id of the container it ended up in. It runs on whichever thread leads the seal.
pub(crate) type CommitFinal =
    Box<dyn FnOnce(&Store, &Transaction<'_>, ContainerId) -> Result<()> + Send>;

/// One upload's last container, ready to seal: its entries, the new chunks they hold (located in `builder`),
/// the references and successors of the segment in it, and what else its transaction commits.
pub(crate) struct FinalSeal {
    pub builder: ContainerBuilder,
    pub new_chunks: Vec<(ChunkId, ChunkLocation)>,
    pub segment_refs: Vec<catalog::ChunkRefs>,
    pub successors: Vec<catalog::Successor>,
    pub commit: CommitFinal,
}

impl FinalSeal {
    /// Moves this upload's entries to the end of `into` and relocates what pointed into its own container.
    fn move_into(self, into: &mut ContainerBuilder, store: &Store) -> Share {
        let old = self.builder.id();
        let new = into.id();
        let (shift, buffer) = into.append(self.builder);
        store.container_buffers.give(buffer);
        let moved = |home: Option<ContainerId>| home.map(|h| if h == old { new } else { h });
        Share {
            new_chunks: self
                .new_chunks
                .into_iter()
                .map(|(id, loc)| {
                    // Every new chunk of an upload lies in its open (last) container.
                    debug_assert_eq!(loc.container, old);
                    (
                        id,
                        ChunkLocation {
                            container: new,
                            offset: loc.offset + shift,
                            ..loc
                        },
                    )
                })
                .collect(),
            segment_refs: self
                .segment_refs
                .into_iter()
                .map(|r| catalog::ChunkRefs {
                    home: moved(r.home),
                    ..r
                })
                .collect(),
            successors: self
                .successors
                .into_iter()
                .map(|s| catalog::Successor {
                    home: moved(s.home),
                    ..s
                })
                .collect(),
            commit: Some(self.commit),
        }
    }

    fn into_share(self) -> (ContainerBuilder, Share) {
        (
            self.builder,
            Share {
                new_chunks: self.new_chunks,
                segment_refs: self.segment_refs,
                successors: self.successors,
                commit: Some(self.commit),
            },
        )
    }
}

/// One upload's part of the container being sealed.
struct Share {
    new_chunks: Vec<(ChunkId, ChunkLocation)>,
    segment_refs: Vec<catalog::ChunkRefs>,
    successors: Vec<catalog::Successor>,
    commit: Option<CommitFinal>,
}

/// Uploads waiting for their last container to be sealed, and the outcomes of those sealed. One of the
/// waiting threads at a time is the leader: it takes what waits, seals it, posts the outcomes, and wakes
/// the others.
#[derive(Default)]
pub(crate) struct FinalSeals {
    state: Mutex<Queue>,
    sealed: Condvar,
}

#[derive(Default)]
struct Queue {
    leading: bool,
    next_ticket: u64,
    waiting: Vec<(u64, FinalSeal)>,
    outcomes: HashMap<u64, Result<()>>,
}

/// Posts an error for every ticket a leader took if it unwinds before posting their outcomes, so that no
/// waiter waits forever, and hands the lead on.
struct LeaderGuard<'q> {
    seals: &'q FinalSeals,
    tickets: Vec<u64>,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut q = self
            .seals
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for t in self.tickets.drain(..) {
            q.outcomes.entry(t).or_insert_with(|| {
                Err(StoreError::Config(
                    "the seal of this upload's last container failed unexpectedly".into(),
                ))
            });
        }
        q.leading = false;
        self.seals.sealed.notify_all();
    }
}

impl FinalSeals {
    fn lock(&self) -> Result<MutexGuard<'_, Queue>> {
        self.state
            .lock()
            .map_err(|_| StoreError::Config("final seal queue poisoned".into()))
    }
}

/// The oldest waiting seals that fit one container of `target` bytes together (at least one).
fn take_group(waiting: &mut Vec<(u64, FinalSeal)>, target: usize) -> Vec<(u64, FinalSeal)> {
    let mut total = 0usize;
    let mut n = 0;
    for (_, s) in waiting.iter() {
        let len = s.builder.len();
        if n > 0 && total + len > target {
            break;
        }
        total += len;
        n += 1;
    }
    waiting.drain(..n).collect()
}

impl Store {
    /// Seals an upload's last container, with the last containers of other uploads finishing meanwhile
    /// (module doc). Returns when this upload's share is durable, or its error.
    pub(crate) fn seal_final(&self, seal: FinalSeal) -> Result<()> {
        if seal.builder.len() > GROUP_ITEM_MAX {
            return self.seal_together(vec![seal]).pop().unwrap_or(Ok(()));
        }
        let seals = &self.final_seals;
        let mut q = seals.lock()?;
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.waiting.push((ticket, seal));
        loop {
            if let Some(outcome) = q.outcomes.remove(&ticket) {
                return outcome;
            }
            if q.leading {
                q = seals
                    .sealed
                    .wait(q)
                    .map_err(|_| StoreError::Config("final seal queue poisoned".into()))?;
                continue;
            }
            q.leading = true;
            let group = take_group(&mut q.waiting, self.cfg.container_target);
            drop(q);
            let (tickets, group): (Vec<u64>, Vec<FinalSeal>) = group.into_iter().unzip();
            let mut guard = LeaderGuard {
                seals,
                tickets: tickets.clone(),
            };
            let outcomes = self.seal_together(group);
            q = seals.lock()?;
            for (t, outcome) in tickets.into_iter().zip(outcomes) {
                q.outcomes.insert(t, outcome);
            }
            guard.tickets.clear();
            // The guard hands the lead on and wakes the waiters once `q` is released.
            drop(q);
            drop(guard);
            q = seals.lock()?;
        }
    }

    /// Seals `group` (at least one) as one container and commits each upload's share under its own savepoint
    /// in one transaction. One outcome per upload, in order.
    fn seal_together(&self, group: Vec<FinalSeal>) -> Vec<Result<()>> {
        let n = group.len();
        let mut group = group.into_iter();
        let Some(first) = group.next() else {
            return Vec::new();
        };
        let (mut builder, first_share) = first.into_share();
        let mut shares = vec![first_share];
        for seal in group {
            shares.push(seal.move_into(&mut builder, self));
        }
        let id = builder.id();
        if n > 1 {
            tracing::debug!(container = %id, uploads = n, bytes = builder.len(), "last containers sealed together");
        }
        let row = match self.write_shards(builder) {
            Ok(row) => row,
            Err(e) => return shared_failure(e, n),
        };
        let md5_states = self.unsaved_md5_states();
        let mut outcomes: Vec<Result<Vec<ChunkId>>> = Vec::with_capacity(n);
        let committed = self.catalog.write(|tx| {
            catalog::insert_container(tx, &row)?;
            catalog::save_md5_checkpoints(tx, &md5_states, super::MD5_CHECKPOINTS_KEPT)?;
            for share in &mut shares {
                tx.execute_batch("SAVEPOINT final_seal")?;
                let outcome = (|| {
                    let inserted = catalog::insert_chunks_with_refs(
                        tx,
                        &share.new_chunks,
                        &share.segment_refs,
                        &share.successors,
                    )?;
                    if let Some(commit) = share.commit.take() {
                        commit(self, tx, id)?;
                    }
                    Ok(inserted)
                })();
                if outcome.is_ok() {
                    tx.execute_batch("RELEASE final_seal")?;
                } else {
                    tx.execute_batch("ROLLBACK TO final_seal; RELEASE final_seal")?;
                }
                outcomes.push(outcome);
            }
            // Nothing of any upload to commit: the container row goes too (as a lone upload's failed seal).
            if outcomes.iter().all(Result::is_err) {
                return Err(StoreError::Config(
                    "no upload of the group committed".into(),
                ));
            }
            Ok(())
        });
        match committed {
            Ok(()) => {
                self.count_shards(&row);
                outcomes
                    .into_iter()
                    .zip(&shares)
                    .map(|(outcome, share)| {
                        outcome.map(|inserted| {
                            self.note_committed_chunks(&share.new_chunks, &inserted);
                        })
                    })
                    .collect()
            }
            // Every share failed on its own: each gets its own error.
            Err(_) if outcomes.len() == n && outcomes.iter().all(Result::is_err) => {
                outcomes.into_iter().map(|o| o.map(|_| ())).collect()
            }
            Err(e) => shared_failure(e, n),
        }
    }
}

/// `e` for each of `n` uploads.
fn shared_failure(e: StoreError, n: usize) -> Vec<Result<()>> {
    let mut out: Vec<Result<()>> = (1..n).map(|_| Err(e.duplicate())).collect();
    out.insert(0, Err(e));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ObjectMeta, PartRecord, PutCondition, StoreConfig};
    use std::io::Read;
    use std::sync::Arc;

    fn containers(store: &Store) -> i64 {
        store
            .catalog
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM containers", [], |r| r.get(0))?))
            .unwrap()
    }

    fn waiting(store: &Store) -> usize {
        store.final_seals.lock().unwrap().waiting.len()
    }

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(seed as u32) as u8
                    ^ seed
            })
            .collect()
    }

    /// Three uploads end while a seal is under way (here: while the test holds the lead): the next leader
    /// seals all three as one container and one transaction. The part whose multipart upload was aborted
    /// meanwhile fails alone; the object and the other part commit, read back, and the catalog is consistent.
    #[test]
    fn uploads_ending_during_a_seal_are_sealed_as_one_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::embedded(dir.path().join("data"));
        cfg.container_target = 256 * 1024;
        let store = Store::open(cfg).unwrap();
        store.create_bucket("bkt").unwrap();
        let kept = store
            .create_multipart("bkt", "kept", ObjectMeta::default())
            .unwrap();
        let aborted = store
            .create_multipart("bkt", "aborted", ObjectMeta::default())
            .unwrap();
        let before = containers(&store);

        // Hold the lead, as a seal under way does.
        store.final_seals.lock().unwrap().leading = true;
        let (object, part, lost) = (bytes(1, 3000), bytes(2, 40_000), bytes(3, 5000));
        let uploader =
            |body: Vec<u8>,
             finish: Box<dyn FnOnce(crate::store::Upload) -> Result<String> + Send>| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut up = store.begin_upload()?;
                    up.write(&body)?;
                    finish(up)
                })
            };
        let put = uploader(
            object.clone(),
            Box::new(|up| Ok(up.finish_object("bkt", "small", ObjectMeta::default())?.key)),
        );
        let kept_id = kept.clone();
        let kept_part = uploader(
            part.clone(),
            Box::new(move |up| {
                Ok(up
                    .finish_part(PartRecord::new(&kept_id, 1, Default::default())?)?
                    .etag)
            }),
        );
        let aborted_id = aborted.clone();
        let aborted_part = uploader(
            lost,
            Box::new(move |up| {
                Ok(up
                    .finish_part(PartRecord::new(&aborted_id, 1, Default::default())?)?
                    .etag)
            }),
        );
        while waiting(&store) < 3 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        store.abort_multipart(&aborted).unwrap();
        {
            let mut q = store.final_seals.lock().unwrap();
            q.leading = false;
            store.final_seals.sealed.notify_all();
        }

        assert_eq!(put.join().unwrap().unwrap(), "small");
        let etag = kept_part.join().unwrap().unwrap();
        let refused = aborted_part.join().unwrap();
        assert!(
            matches!(refused, Err(StoreError::NoSuchUpload(_))),
            "{refused:?}"
        );
        assert_eq!(
            containers(&store),
            before + 1,
            "one container for the three"
        );

        store
            .complete_multipart(&kept, &[(1, etag)], Default::default(), PutCondition::None)
            .unwrap();
        for (key, want) in [("small", &object), ("kept", &part)] {
            let (_, mut r) = store.open_object("bkt", key, None).unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert_eq!(&got, want, "{key}");
        }
        let problems = store
            .catalog
            .read(crate::store::recover::check_catalog)
            .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
    }

    fn seal_of(len: usize) -> FinalSeal {
        let mut builder = ContainerBuilder::new(ContainerId(len as u64), 0, len);
        let header = builder.len();
        if len > header + 48 {
            builder.push_record(
                crate::core::container::EntryType::Segment,
                &vec![0u8; len - header - 48],
            );
        }
        FinalSeal {
            builder,
            new_chunks: Vec::new(),
            segment_refs: Vec::new(),
            successors: Vec::new(),
            commit: Box::new(|_, _, _| Ok(())),
        }
    }

    #[test]
    fn a_group_takes_the_oldest_that_fit_and_always_one() {
        let mut waiting: Vec<(u64, FinalSeal)> = [1000, 3000, 2000, 500]
            .into_iter()
            .enumerate()
            .map(|(i, len)| (i as u64, seal_of(len)))
            .collect();
        let first = take_group(&mut waiting, 4500);
        assert_eq!(first.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [0, 1]);
        // The oldest goes first even when a younger one would fit: nobody is overtaken.
        let second = take_group(&mut waiting, 1000);
        assert_eq!(second.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [2]);
        let third = take_group(&mut waiting, 100);
        assert_eq!(third.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [3]);
        assert!(waiting.is_empty());
        assert!(take_group(&mut waiting, 100).is_empty());
    }
}
