//! The pure core's error type: malformed bytes, impossible geometry, too few shards.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// Bytes that do not follow storage-format.md; `what` names the structure and field.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A chunk or record whose BLAKE3 does not match.
    #[error("hash mismatch in {what}")]
    HashMismatch { what: &'static str },
    #[error("invalid erasure geometry {k}+{m}: {detail}")]
    Geometry { k: usize, m: usize, detail: String },
    #[error("too few shards to reconstruct: have {have}, need {need}")]
    TooFewShards { have: usize, need: usize },
    #[error("placement needs {need} distinct disks, only {have} available")]
    NotEnoughDisks { need: usize, have: usize },
    #[error("invalid chunker parameters: {0}")]
    ChunkerParams(String),
}
