//! Cairn: a deduplicating, erasure-coded S3 backup target. See README.md and storage-format.md.

pub mod admin;
pub mod auth;
pub mod config;
pub mod core;
pub mod s3;
pub mod server;
pub mod store;
pub mod workload;
