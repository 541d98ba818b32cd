//! `cairn serve` configuration: a TOML file (every field documented in `deploy/cairn.example.toml`) whose
//! defaults are the embedded default of the README: 127.0.0.1:9000, `./cairn-data`, six directory-disks
//! (4+2) and one hot spare under `<data>/disks/`.
//!
//! Parsing is strict (`deny_unknown_fields`), so a typo is an error rather than a silently ignored setting;
//! [`Config::validate`] explains every problem in words an admin can act on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::chunker::ChunkerParams;
use crate::store::StoreConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
pub const DEFAULT_DATA_DIR: &str = "./cairn-data";

/// The whole configuration file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Data directory: catalog, lock file, credentials, keys; the default disks live under it.
    pub data_dir: PathBuf,
    /// Base domains for virtual-host-style addressing (`bucket.<domain>`); other hosts are path-style.
    pub domains: Vec<String>,
    /// Region reported by GetBucketLocation.
    pub region: String,
    pub tls: Option<TlsConfig>,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub multipart: MultipartConfig,
    pub maintenance: MaintenanceConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data disks (directories, normally one mount point per disk). Empty = `<data>/disks/d00..d05`.
    pub disks: Vec<PathBuf>,
    /// Hot spares. Empty together with `disks` = `<data>/disks/spare00`.
    pub spares: Vec<PathBuf>,
    /// Data shards per container.
    pub k: u8,
    /// Parity shards per container.
    pub m: u8,
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    /// A container is sealed once its body reaches this many bytes.
    pub container_target: usize,
    pub zstd_level: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests served at once; more wait (backpressure) up to `queue_timeout_secs`.
    pub max_concurrent_requests: usize,
    /// Requests allowed to wait for a slot; beyond that the answer is 503 SlowDown at once.
    pub max_queued_requests: usize,
    pub queue_timeout_secs: u64,
    /// Largest body of a single PutObject / UploadPart (S3: 5 GiB).
    pub max_object_body: u64,
    /// Largest XML request body (DeleteObjects, CompleteMultipartUpload, ...).
    pub max_xml_body: usize,
    /// Longest accepted presigned URL lifetime (S3: 7 days).
    pub max_presign_expiry_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MultipartConfig {
    /// Multipart uploads initiated longer ago than this are aborted and their parts released.
    pub abandon_after_hours: u64,
    /// How often the cleanup runs.
    pub cleanup_interval_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// How often every disk's presence and marker are checked; a vanished disk is failed at the next check.
    pub health_check_interval_ms: u64,
    /// Start a rebuild onto a spare by itself when a failed disk holds data.
    pub auto_rebuild: bool,
    /// Throttle of rebuilds the server starts by itself, in MB/s; 0 = as fast as the disks allow.
    pub rebuild_throttle_mb_s: f64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            health_check_interval_ms: 5000,
            auto_rebuild: true,
            rebuild_throttle_mb_s: 0.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            data_dir: DEFAULT_DATA_DIR.into(),
            domains: vec!["localhost".into()],
            region: "us-east-1".into(),
            tls: None,
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            multipart: MultipartConfig::default(),
            maintenance: MaintenanceConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let c = ChunkerParams::DEFAULT;
        StorageConfig {
            disks: Vec::new(),
            spares: Vec::new(),
            k: 4,
            m: 2,
            chunk_min: c.min,
            chunk_avg: c.avg,
            chunk_max: c.max,
            container_target: crate::store::DEFAULT_CONTAINER_TARGET,
            zstd_level: crate::store::DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_concurrent_requests: 64,
            max_queued_requests: 1024,
            queue_timeout_secs: 60,
            max_object_body: 5 << 30,
            max_xml_body: 4 << 20,
            max_presign_expiry_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for MultipartConfig {
    fn default() -> Self {
        MultipartConfig {
            abandon_after_hours: 7 * 24,
            cleanup_interval_secs: 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Every problem found, each as one sentence; empty means valid.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "listen = {:?} is not an IP:port address, e.g. \"127.0.0.1:9000\"",
                self.listen
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir must not be empty".into());
        }
        for d in &self.domains {
            if d.is_empty() || d.contains(':') || d.contains('/') {
                p.push(format!(
                    "domains: {d:?} must be a bare host name without port, e.g. \"s3.example.lan\""
                ));
            }
        }
        if self.maintenance.health_check_interval_ms < 10 {
            p.push("maintenance.health_check_interval_ms must be at least 10".into());
        }
        let throttle = self.maintenance.rebuild_throttle_mb_s;
        if !throttle.is_finite() || throttle < 0.0 {
            p.push("maintenance.rebuild_throttle_mb_s must be 0 (unthrottled) or a positive number of MB/s".into());
        }
        let s = &self.storage;
        if s.k == 0 {
            p.push("storage.k (data shards) must be at least 1".into());
        }
        let width = usize::from(s.k) + usize::from(s.m);
        if width > 255 {
            p.push(format!(
                "storage.k + storage.m = {width} is more than 255 shards"
            ));
        }
        let (disks, spares) = self.disk_paths();
        if disks.len() < width {
            p.push(format!(
                "storage.disks lists {} disks but k + m = {width} needs at least {width}: every shard of a \
                 container goes to a different disk",
                disks.len()
            ));
        }
        let mut all: Vec<&PathBuf> = disks.iter().chain(spares.iter()).collect();
        all.sort();
        for w in all.windows(2) {
            if w[0] == w[1] {
                p.push(format!(
                    "disk {} is listed twice (in storage.disks or storage.spares)",
                    w[0].display()
                ));
            }
        }
        if let Err(e) = self.chunker().validate() {
            p.push(format!("storage.chunk_min/avg/max: {e}"));
        }
        if s.container_target < 64 * 1024 {
            p.push(format!(
                "storage.container_target = {} is too small; use at least 65536",
                s.container_target
            ));
        }
        if !(1..=22).contains(&s.zstd_level) {
            p.push(format!(
                "storage.zstd_level = {} is outside zstd's 1..=22",
                s.zstd_level
            ));
        }
        let l = &self.limits;
        if l.max_concurrent_requests == 0 {
            p.push("limits.max_concurrent_requests must be at least 1".into());
        }
        if l.max_object_body == 0 || l.max_object_body > 5 << 30 {
            p.push(format!(
                "limits.max_object_body = {} must be within 1..=5 GiB (5368709120)",
                l.max_object_body
            ));
        }
        if l.max_xml_body < 64 * 1024 {
            p.push("limits.max_xml_body must be at least 65536 (a DeleteObjects of 1000 keys needs more)".into());
        }
        if l.max_presign_expiry_secs == 0 || l.max_presign_expiry_secs > 7 * 24 * 3600 {
            p.push(format!(
                "limits.max_presign_expiry_secs = {} must be within 1..=604800 (7 days, the S3 maximum)",
                l.max_presign_expiry_secs
            ));
        }
        if self.multipart.abandon_after_hours == 0 {
            p.push("multipart.abandon_after_hours must be at least 1".into());
        }
        if self.multipart.cleanup_interval_secs == 0 {
            p.push("multipart.cleanup_interval_secs must be at least 1".into());
        }
        p
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::Invalid(vec![format!(
                "listen = {:?} is not an IP:port address",
                self.listen
            )])
        })
    }

    pub fn chunker(&self) -> ChunkerParams {
        ChunkerParams {
            min: self.storage.chunk_min,
            avg: self.storage.chunk_avg,
            max: self.storage.chunk_max,
        }
    }

    /// Data disks and spares; the embedded default layout when `storage.disks` is empty.
    pub fn disk_paths(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let s = &self.storage;
        if s.disks.is_empty() {
            let base = self.data_dir.join("disks");
            let disks = (0..6).map(|i| base.join(format!("d{i:02}"))).collect();
            let spares = if s.spares.is_empty() {
                vec![base.join("spare00")]
            } else {
                s.spares.clone()
            };
            (disks, spares)
        } else {
            (s.disks.clone(), s.spares.clone())
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        let (disks, spares) = self.disk_paths();
        StoreConfig {
            data_dir: self.data_dir.clone(),
            disks,
            spares,
            k: self.storage.k,
            m: self.storage.m,
            chunker: self.chunker(),
            container_target: self.storage.container_target,
            zstd_level: self.storage.zstd_level,
        }
    }

    pub fn multipart_max_age(&self) -> Duration {
        Duration::from_secs(self.multipart.abandon_after_hours * 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_matches_the_readme() {
        let c = Config::default();
        assert_eq!(c.problems(), Vec::<String>::new());
        let s = c.store_config();
        assert_eq!(s.data_dir, PathBuf::from("./cairn-data"));
        assert_eq!(s.disks.len(), 6);
        assert_eq!(s.disks[0], PathBuf::from("./cairn-data/disks/d00"));
        assert_eq!(s.disks[5], PathBuf::from("./cairn-data/disks/d05"));
        assert_eq!(s.spares, vec![PathBuf::from("./cairn-data/disks/spare00")]);
        assert_eq!((s.k, s.m), (4, 2));
        assert_eq!(c.listen, "127.0.0.1:9000");
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\nlisten_adress = 1\n").unwrap_err();
        assert!(e.contains("listen_adress"), "{e}");
        let e = Config::parse("[storage]\nkk = 3\n").unwrap_err();
        assert!(e.contains("kk"), "{e}");
    }

    #[test]
    fn example_file_parses_and_is_valid() {
        let text = include_str!("../deploy/cairn.example.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.problems(), Vec::<String>::new());
        // The example shows the defaults: it must not drift from them.
        assert_eq!(c, Config::default());
    }

    #[test]
    fn problems_are_explained() {
        let text = "listen = \"nowhere\"\n[storage]\nk = 4\nm = 2\ndisks = [\"/a\", \"/b\", \"/a\"]\nzstd_level = 0\n";
        let c = Config::parse(text).unwrap();
        let p = c.problems().join("\n");
        assert!(p.contains("not an IP:port"), "{p}");
        assert!(p.contains("needs at least 6"), "{p}");
        assert!(p.contains("listed twice"), "{p}");
        assert!(p.contains("zstd_level"), "{p}");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("invalid configuration"), "{e}");
    }

    #[test]
    fn presign_expiry_cannot_exceed_s3s_week() {
        let c = Config::parse("[limits]\nmax_presign_expiry_secs = 604801\n").unwrap();
        assert!(c.problems().iter().any(|p| p.contains("604800")));
    }
}
