//! The chunk store: disks, catalog, ingest and verified reads (sync I/O; see storage-format.md).

pub mod api;
pub mod error;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use api::*;
pub use error::{Result, StoreError};

use crate::core::chunker::ChunkerParams;

/// How to open a store. `cairn serve`'s config file maps onto this.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Data disks (directories). Created and marked on first open when empty.
    pub disks: Vec<PathBuf>,
    /// Hot spares.
    pub spares: Vec<PathBuf>,
    pub k: u8,
    pub m: u8,
    pub chunker: ChunkerParams,
    /// A container is sealed once its body reaches this many bytes.
    pub container_target: usize,
    pub zstd_level: i32,
}

pub struct Store {}

/// A stream being ingested. Dropping it without `finish_*` aborts it (nothing becomes visible).
pub struct Upload {}

/// Streams an object's bytes; every chunk is verified against its BLAKE3 before a byte is returned.
pub struct ObjectReader {}

impl std::io::Read for ObjectReader {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        todo!()
    }
}

#[allow(unused_variables)]
impl Store {
    pub fn open(cfg: StoreConfig) -> Result<Arc<Store>> {
        todo!()
    }
    /// Fails with `BucketExists` if it exists, `InvalidBucketName` for names S3 rejects.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        todo!()
    }
    /// `NoSuchBucket`, `BucketNotEmpty` (objects or multipart uploads in progress).
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        todo!()
    }
    pub fn head_bucket(&self, name: &str) -> Result<BucketInfo> {
        todo!()
    }
    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        todo!()
    }
    pub fn begin_upload(self: &Arc<Self>) -> Result<Upload> {
        todo!()
    }
    /// Makes an object out of sealed uploads (used for conditional PUTs: write with `finish_sealed`, then commit
    /// here, where the condition is checked atomically). ETag = quoted MD5 if `meta.etag` is None and there is
    /// exactly one source.
    pub fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        sources: &[SealedUpload],
        meta: ObjectMeta,
        cond: PutCondition,
    ) -> Result<ObjectInfo> {
        todo!()
    }
    /// Releases a sealed upload that will not be committed (e.g. a checksum mismatch was found after sealing).
    pub fn release_upload(&self, sealed: SealedUpload) -> Result<()> {
        todo!()
    }
    pub fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        todo!()
    }
    /// `range` is already resolved to absolute byte offsets (end exclusive) and within the object size;
    /// `InvalidRange` otherwise.
    pub fn open_object(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ObjectReader)> {
        todo!()
    }
    /// Returns whether an object was deleted. `NoSuchBucket` if the bucket is missing.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
        todo!()
    }
    /// Shares chunks with the source; `meta` None keeps the source's metadata (COPY), Some replaces it (REPLACE).
    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
    ) -> Result<ObjectInfo> {
        todo!()
    }
    /// Keys in byte order, starting strictly after `after`. With a delimiter, keys sharing
    /// `prefix + ... + delimiter` fold into one common prefix (counted once towards `max_keys`).
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage> {
        todo!()
    }

    // ---- multipart ----
    /// Returns the new upload id (an opaque string).
    pub fn create_multipart(&self, bucket: &str, key: &str, meta: ObjectMeta) -> Result<String> {
        todo!()
    }
    /// Records (or replaces) a part. The part's ETag is the quoted MD5 of its bytes.
    pub fn put_part(
        &self,
        upload_id: &str,
        part_number: u32,
        sealed: SealedUpload,
        checksums: std::collections::BTreeMap<String, String>,
    ) -> Result<PartInfo> {
        todo!()
    }
    pub fn get_multipart(&self, upload_id: &str) -> Result<MultipartUploadInfo> {
        todo!()
    }
    pub fn list_parts(&self, upload_id: &str, after_part: u32, max_parts: usize) -> Result<Vec<PartInfo>> {
        todo!()
    }
    /// In-progress uploads of a bucket, ordered by (key, upload id), after the given markers.
    pub fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after_key: Option<&str>,
        after_upload_id: Option<&str>,
        max: usize,
    ) -> Result<Vec<MultipartUploadInfo>> {
        todo!()
    }
    pub fn abort_multipart(&self, upload_id: &str) -> Result<()> {
        todo!()
    }
    /// Validates (InvalidPart, InvalidPartOrder, EntityTooSmall), computes the `"md5-of-md5s-N"` ETag, commits.
    pub fn complete_multipart(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        cond: PutCondition,
    ) -> Result<ObjectInfo> {
        todo!()
    }
    /// Aborts multipart uploads initiated longer ago than `age`; returns how many.
    pub fn expire_multipart_older_than(&self, age: Duration) -> Result<usize> {
        todo!()
    }
}

#[allow(unused_variables)]
impl Upload {
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        todo!()
    }
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        todo!()
    }
    /// MD5 of the bytes written so far (for Content-MD5 checks before committing).
    pub fn md5(&self) -> [u8; 16] {
        todo!()
    }
    /// Seals the stream and commits it as object `bucket/key` in one step (the commit record rides in the last
    /// container). Returns only when the object is durable.
    pub fn finish_object(self, bucket: &str, key: &str, meta: ObjectMeta) -> Result<ObjectInfo> {
        todo!()
    }
    /// Seals the stream without making it an object (multipart parts, conditional PUTs).
    pub fn finish_sealed(self) -> Result<SealedUpload> {
        todo!()
    }
}
