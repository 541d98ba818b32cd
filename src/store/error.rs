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

impl StoreError {
    /// The same failure for another caller (several uploads sealed in one container share its failure, and
    /// the error values of rusqlite and std::io cannot be cloned): the same variant and fields where they are
    /// plain data; the message, and for I/O the kind, otherwise.
    pub fn duplicate(&self) -> StoreError {
        use StoreError as E;
        match self {
            E::NoSuchBucket(b) => E::NoSuchBucket(b.clone()),
            E::NoSuchKey { bucket, key } => E::NoSuchKey {
                bucket: bucket.clone(),
                key: key.clone(),
            },
            E::BucketExists(b) => E::BucketExists(b.clone()),
            E::BucketNotEmpty(b) => E::BucketNotEmpty(b.clone()),
            E::InvalidBucketName(b, why) => E::InvalidBucketName(b.clone(), why),
            E::PreconditionFailed => E::PreconditionFailed,
            E::NoSuchUpload(u) => E::NoSuchUpload(u.clone()),
            E::InvalidPart {
                part_number,
                reason,
            } => E::InvalidPart {
                part_number: *part_number,
                reason: reason.clone(),
            },
            E::InvalidPartOrder => E::InvalidPartOrder,
            E::EntityTooSmall { part_number, size } => E::EntityTooSmall {
                part_number: *part_number,
                size: *size,
            },
            E::InvalidRange => E::InvalidRange,
            E::InvalidArgument(m) => E::InvalidArgument(m.clone()),
            E::DataLost {
                container,
                have,
                need,
                objects,
            } => E::DataLost {
                container: *container,
                have: *have,
                need: *need,
                objects: objects.clone(),
            },
            E::Corrupt { container, detail } => E::Corrupt {
                container: *container,
                detail: detail.clone(),
            },
            E::NotEnoughDisks { need, have } => E::NotEnoughDisks {
                need: *need,
                have: *have,
            },
            E::Disk { disk, path, detail } => E::Disk {
                disk: *disk,
                path: path.clone(),
                detail: detail.clone(),
            },
            E::Locked(p) => E::Locked(p.clone()),
            E::Catalog(e) => E::Io(std::io::Error::other(format!("catalog: {e}"))),
            E::Format(e) => E::Io(std::io::Error::other(format!("format: {e}"))),
            E::Io(e) => E::Io(std::io::Error::new(e.kind(), e.to_string())),
            E::Config(m) => E::Config(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn a_duplicate_says_the_same_and_keeps_plain_variants() {
        let errors = [
            StoreError::NotEnoughDisks { need: 6, have: 3 },
            StoreError::PreconditionFailed,
            StoreError::NoSuchUpload("u1".into()),
            StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left",
            )),
            StoreError::Catalog(rusqlite::Error::InvalidQuery),
        ];
        for e in &errors {
            let d = e.duplicate();
            assert!(d.to_string().contains(&e.to_string()) || d.to_string() == e.to_string());
            assert_eq!(
                std::mem::discriminant(&d) == std::mem::discriminant(e),
                !matches!(e, StoreError::Catalog(_))
            );
        }
        match errors[3].duplicate() {
            StoreError::Io(io) => assert_eq!(io.kind(), std::io::ErrorKind::StorageFull),
            other => panic!("{other:?}"),
        }
    }
}
