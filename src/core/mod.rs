//! The pure core: no filesystem, network, async or SQLite. Everything here is unit-testable on byte slices.

pub mod chunker;
pub mod container;
pub mod erasure;
pub mod error;
pub mod follow;
pub mod ids;
pub mod md5x;
pub mod placement;
pub mod plan;
pub mod records;
pub mod shard;
