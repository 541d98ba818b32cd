//! The store layer's error type. Corruption and disk loss carry the ids an admin needs.

use crate::core::ids::{ContainerId, DiskId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("object {bucket}/{key} does not exist")]
    NoSuchKey { bucket: String, key: String },
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    #[error("bucket {0:?} is not empty")]
    BucketNotEmpty(String),
    #[error("invalid bucket name {0:?}: {1}")]
    InvalidBucketName(String, &'static str),
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("multipart upload {0:?} does not exist")]
    NoSuchUpload(String),
    #[error("part {part_number} is invalid: {reason}")]
    InvalidPart { part_number: u32, reason: String },
    #[error("parts must be listed in ascending order")]
    InvalidPartOrder,
    #[error(
        "part {part_number} is {size} bytes, smaller than the 5 MiB minimum of a non-final part"
    )]
    EntityTooSmall { part_number: u32, size: u64 },
    #[error("range not satisfiable")]
    InvalidRange,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Fewer than k good shards: the container cannot be read. `objects` names what is affected.
    #[error(
        "container {container} is unreadable ({have} of {need} shards good); affected objects: {objects:?}"
    )]
    DataLost {
        container: ContainerId,
        have: usize,
        need: usize,
        objects: Vec<String>,
    },
    #[error("corrupt data in container {container}: {detail}")]
    Corrupt {
        container: ContainerId,
        detail: String,
    },
    #[error("not enough writable disks: need {need}, have {have}")]
    NotEnoughDisks { need: usize, have: usize },
    #[error("disk {disk} ({path}): {detail}")]
    Disk {
        disk: DiskId,
        path: String,
        detail: String,
    },
    #[error("the store at {0} is in use by another process (lock held)")]
    Locked(String),
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
    #[error("format: {0}")]
    Format(#[from] crate::core::error::CoreError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
