//! The store's public interface, as the S3 layer, the admin API and the CLI use it.
//! Everything here is synchronous and may block on disk I/O: async callers use `spawn_blocking`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::ids::UploadId;

/// What S3 keeps about an object besides its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Quoted ETag as S3 returns it, e.g. `"9e107d9d372bb6826bd81d3542a419d6"` or `"...-3"` for multipart.
    /// `None` on input to `Upload::finish_object` means: the quoted MD5 of the body.
    pub etag: Option<String>,
    pub content_type: Option<String>,
    /// Other standard headers kept verbatim (content-encoding, cache-control, content-disposition, ...).
    pub headers: BTreeMap<String, String>,
    /// x-amz-meta-* without the prefix, lowercase names.
    pub user_meta: BTreeMap<String, String>,
    /// Verified x-amz-checksum-* values, by algorithm name ("crc32", "crc32c", "crc64nvme", "sha1", "sha256").
    pub checksums: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub seq: u64,
    pub created_unix_ms: u64,
    pub meta: ObjectMeta,
    /// Sizes of the parts for multipart objects (PartNumber reads), one entry otherwise.
    pub part_sizes: Vec<u64>,
}

impl ObjectInfo {
    pub fn etag(&self) -> &str {
        self.meta.etag.as_deref().unwrap_or("")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created_unix_ms: u64,
}

/// Condition checked atomically with the commit of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PutCondition {
    #[default]
    None,
    /// `If-None-Match: *`: fail with `PreconditionFailed` if the key exists.
    IfNoneMatchAny,
    /// `If-Match: "etag"`: fail unless the current object has this ETag.
    IfMatch(String),
}

/// A sealed stream that is not (yet) an object, e.g. a multipart part. Its chunks are pinned until it is used
/// by a commit or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedUpload {
    pub upload_id: UploadId,
    pub size: u64,
    pub md5: [u8; 16],
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// The last key or common prefix returned; continue after it.
    pub next_marker: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartUploadInfo {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub initiated_unix_ms: u64,
    pub meta: ObjectMeta,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
    pub last_modified_unix_ms: u64,
    pub checksums: BTreeMap<String, String>,
}
