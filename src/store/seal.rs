//! Sealing a container: erasure-code it, write every shard to its own disk durably, then commit the catalog
//! transaction that makes it (and whatever rides with it) visible. Shard files are only ever created, never
//! modified, so there is no parity update in place and no write hole (storage-format.md §3, §6).

use rusqlite::Transaction;

use super::catalog::{self, ContainerRow};
use super::dedup::ChunkLocation;
use super::disk::shard_path;
use super::error::{Result, StoreError};
use super::{Store, now_ms};
use crate::core::container::ContainerBuilder;
use crate::core::erasure::{Erasure, Geometry};
use crate::core::ids::{ChunkId, DiskId};
use crate::core::placement::place;
use crate::core::shard::{ShardHeader, encode_trailer};

/// How often a container's shards are re-placed after disk write failures before the write is refused.
const MAX_PLACEMENT_ATTEMPTS: usize = 4;

impl Store {
    /// The coder a container of `container_len` bytes is sealed with: a small one (a segment record alone, a
    /// small object) is split into fewer data shards, as many disk losses survived, fewer files and fsyncs
    /// (`Geometry::for_container`, storage-format.md §6).
    fn erasure_for(&self, container_len: usize) -> &Erasure {
        let store_geometry = Geometry {
            k: self.cfg.k,
            m: self.cfg.m,
        };
        &self.erasures[usize::from(store_geometry.for_container(container_len).k) - 1]
    }

    /// Seals `builder`, writes its shards, then commits one catalog transaction holding the container, its
    /// shard locations, its new chunk rows, the references of the segment sealed with it (`segment_refs`, from
    /// `catalog::segment_refs_with_homes`), the chunk successors its stream showed (`successors`), and whatever
    /// `then` adds. Returns only when all of it is durable.
    pub(crate) fn seal_container(
        &self,
        builder: ContainerBuilder,
        new_chunks: &[(ChunkId, ChunkLocation)],
        segment_refs: &[catalog::ChunkRefs],
        successors: &[catalog::Successor],
        then: impl FnOnce(&Transaction<'_>) -> Result<()>,
    ) -> Result<()> {
        let row = self.write_shards(builder)?;
        let md5_states = self.unsaved_md5_states();
        let inserted_ids = self.catalog.write(|tx| {
            catalog::insert_container(tx, &row)?;
            catalog::save_md5_checkpoints(tx, &md5_states, super::MD5_CHECKPOINTS_KEPT)?;
            let inserted =
                catalog::insert_chunks_with_refs(tx, new_chunks, segment_refs, successors)?;
            then(tx)?;
            Ok(inserted)
        })?;
        self.count_shards(&row);
        self.note_committed_chunks(new_chunks, &inserted_ids);
        Ok(())
    }

    /// MD5 checkpoint states hashed since the last seal (of any upload): they ride along with the next
    /// container's transaction. A hint, so losing them with a failed transaction costs only hashing.
    pub(super) fn unsaved_md5_states(&self) -> Vec<([u8; 32], Vec<u8>)> {
        self.md5_memo
            .take_unsaved()
            .into_iter()
            .map(|(fingerprint, state)| (fingerprint, state.to_bytes()))
            .collect()
    }

    /// After the commit: each disk holding a shard of `row` holds one more.
    pub(super) fn count_shards(&self, row: &ContainerRow) {
        for d in row.disks.iter().flatten() {
            if let Some(e) = self.disks.get(*d) {
                e.shards.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// After the commit: the chunks of `new_chunks` the transaction inserted (`inserted_ids`, sorted; a
    /// concurrent upload may have indexed some first) go into the dedup cache, in stream order as it keeps
    /// them.
    pub(super) fn note_committed_chunks(
        &self,
        new_chunks: &[(ChunkId, ChunkLocation)],
        inserted_ids: &[ChunkId],
    ) {
        let inserted: Vec<(ChunkId, ChunkLocation)> = new_chunks
            .iter()
            .filter(|(id, _)| inserted_ids.binary_search(id).is_ok())
            .copied()
            .collect();
        self.dedup.note_inserted(&inserted);
    }

    /// Seals `builder` and writes its shards, each to its own disk, durably (re-placing shards whose disk
    /// failed the write). Returns the container's catalog row, not yet committed.
    pub(super) fn write_shards(&self, builder: ContainerBuilder) -> Result<ContainerRow> {
        let id = builder.id();
        let created = now_ms();
        let mut bytes = builder.seal();
        let erasure = self.erasure_for(bytes.len());
        let geometry = erasure.geometry();
        let container_len = bytes.len() as u64;
        let shard_len = geometry.shard_len(bytes.len());
        // Padded with zeros in place to k whole shards (the build buffer has room for it), so that every data
        // shard is a slice of it: the encoder copied a short last shard into a fresh buffer otherwise.
        bytes.resize(usize::from(geometry.k) * shard_len, 0);
        // From here to the freeing of the write images, this seal holds parity buffers and one image per
        // disk: the slot bounds how many seals do at once, so the pools below serve them all.
        let slot = self.seal_slots.take();
        let spare: Vec<Vec<u8>> = (0..geometry.m)
            .map(|_| {
                self.parity_buffers
                    .take_as_is()
                    .unwrap_or_else(|| vec![0; self.parity_buffer_len])
            })
            .collect();
        let shards = erasure.encode_borrowed_reusing(&bytes, spare);
        debug_assert_eq!(shards.shard_len(), shard_len);
        let width = geometry.width();

        let mut placed: Vec<Option<DiskId>> = vec![None; width];
        // Disks that failed a write of this container are not tried again for it.
        let mut failed_here: Vec<DiskId> = Vec::new();
        for attempt in 0.. {
            let missing: Vec<usize> = (0..width).filter(|i| placed[*i].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            if attempt >= MAX_PLACEMENT_ATTEMPTS {
                return Err(StoreError::NotEnoughDisks {
                    need: width,
                    have: self.disks.writable_loads().len(),
                });
            }
            let loads: Vec<_> = self
                .disks
                .writable_loads()
                .into_iter()
                .filter(|l| !placed.contains(&Some(l.id)) && !failed_here.contains(&l.id))
                .collect();
            let chosen =
                place(id, &loads, missing.len()).map_err(|_| StoreError::NotEnoughDisks {
                    need: width,
                    have: loads.len() + (width - missing.len()),
                })?;
            let writes: Vec<_> = missing
                .iter()
                .zip(chosen.iter())
                .map(|(&idx, &disk_id)| {
                    let shard = shards.shard(idx);
                    let entry = self.disks.get(disk_id);
                    move || {
                        let Some(entry) = entry else {
                            return (
                                idx,
                                disk_id,
                                Err(std::io::Error::other("disk disappeared from set")),
                            );
                        };
                        let header = ShardHeader {
                            k: geometry.k,
                            m: geometry.m,
                            index: idx as u8,
                            container: id,
                            store: self.store_id,
                            container_len,
                            shard_len: shard.len() as u64,
                        };
                        let trailer = encode_trailer(shard);
                        let r = entry.disk.write_durable(
                            &shard_path(id, idx),
                            &[&header.encode(), shard, &trailer],
                        );
                        (idx, disk_id, r)
                    }
                })
                .collect();
            // All at once, on the threads kept for it; a write that panicked stays unplaced (and is tried
            // again on another disk).
            let results = self.shard_writers.run_all(writes);
            for (idx, disk_id, r) in results.into_iter().flatten() {
                match r {
                    Ok(()) => placed[idx] = Some(disk_id),
                    Err(e) => {
                        failed_here.push(disk_id);
                        self.note_disk_error(disk_id, &e);
                    }
                }
            }
        }

        // The shard images are on disk: free them before the catalog commit waits on its fsync (the parity
        // buffers back to their pool, up to its bound).
        for buffer in shards.into_parity_buffers() {
            self.parity_buffers.give(buffer);
        }
        drop(slot);
        self.container_buffers.give(bytes);
        Ok(ContainerRow {
            id,
            k: geometry.k,
            m: geometry.m,
            len: container_len,
            shard_len: shard_len as u64,
            created_unix_ms: created,
            disks: placed,
        })
    }
}
