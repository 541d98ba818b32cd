//! Credential files in the data directory (never in the store's catalog, so a catalog rebuild cannot lose or
//! resurrect keys):
//!
//! - `root-credentials.json` — the root key pair, generated at first start unless the environment supplies
//!   `CAIRN_ROOT_ACCESS_KEY` / `CAIRN_ROOT_SECRET_KEY`.
//! - `keys.json` — keys made by `cairn key create`, each limited to named buckets, read-only or read-write.
//!
//! Both are JSON `{"format": 1, ...}`, mode 0600, written temp -> fsync -> rename -> fsync dir. Changes to
//! `keys.json` are serialized between processes with `flock` on `keys.lock`; the server notices a new
//! `keys.json` by its modification time, so `cairn key create` works while the server runs.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const ROOT_FILE: &str = "root-credentials.json";
pub const KEYS_FILE: &str = "keys.json";
const LOCK_FILE: &str = "keys.lock";
pub const ENV_ACCESS: &str = "CAIRN_ROOT_ACCESS_KEY";
pub const ENV_SECRET: &str = "CAIRN_ROOT_SECRET_KEY";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid credentials file: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    ReadOnly,
    ReadWrite,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permission::ReadOnly => "read-only",
            Permission::ReadWrite => "read-write",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub access_key: String,
    pub secret_key: String,
    /// Buckets this key may use; nothing else is visible to it.
    pub buckets: Vec<String>,
    pub permission: Permission,
    pub created_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    format: u32,
    keys: Vec<KeyEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootCredentials {
    pub access_key: String,
    pub secret_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFile {
    format: u32,
    access_key: String,
    secret_key: String,
}

/// Where the root credentials came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSource {
    Environment,
    File,
    /// Generated just now: the caller prints them once.
    Generated,
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rand::random_range(0..alphabet.len())]))
        .collect()
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// 20 characters like AWS access key ids; "CK" marks Cairn keys.
pub fn new_access_key() -> String {
    format!("CK{}", random_string(18, UPPER_DIGITS))
}

/// 40 characters of base62: about 238 bits.
pub fn new_secret_key() -> String {
    random_string(40, BASE62)
}

/// Writes `bytes` to `path` durably with mode 0600: temp file, fsync, rename, fsync directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // An existing temp file keeps its old mode; force 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Root credentials: from the environment if both variables are set, else from the data directory, else
/// generated there.
pub fn root_credentials(data_dir: &Path) -> Result<(RootCredentials, RootSource), KeyError> {
    let env_a = std::env::var(ENV_ACCESS).ok().filter(|s| !s.is_empty());
    let env_s = std::env::var(ENV_SECRET).ok().filter(|s| !s.is_empty());
    match (env_a, env_s) {
        (Some(access_key), Some(secret_key)) => {
            validate_pair(&access_key, &secret_key)?;
            return Ok((
                RootCredentials {
                    access_key,
                    secret_key,
                },
                RootSource::Environment,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(KeyError::Invalid(format!(
                "set both {ENV_ACCESS} and {ENV_SECRET}, or neither"
            )));
        }
    }
    let path = data_dir.join(ROOT_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let f: RootFile = serde_json::from_slice(&bytes).map_err(|e| KeyError::Malformed {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if f.format != FORMAT {
                return Err(KeyError::Malformed {
                    path,
                    detail: format!("unknown format {}", f.format),
                });
            }
            Ok((
                RootCredentials {
                    access_key: f.access_key,
                    secret_key: f.secret_key,
                },
                RootSource::File,
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let f = RootFile {
                format: FORMAT,
                access_key: new_access_key(),
                secret_key: new_secret_key(),
            };
            let json = serde_json::to_vec_pretty(&f).expect("serializable");
            write_private(&path, &json)?;
            Ok((
                RootCredentials {
                    access_key: f.access_key,
                    secret_key: f.secret_key,
                },
                RootSource::Generated,
            ))
        }
        Err(e) => Err(KeyError::Io { path, source: e }),
    }
}

fn validate_pair(access_key: &str, secret_key: &str) -> Result<(), KeyError> {
    if access_key.len() < 3
        || access_key.len() > 128
        || !access_key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(KeyError::Invalid(format!(
            "{ENV_ACCESS}: 3..=128 printable characters without '/'"
        )));
    }
    if secret_key.len() < 8 || secret_key.len() > 128 {
        return Err(KeyError::Invalid(format!(
            "{ENV_SECRET}: 8..=128 characters"
        )));
    }
    Ok(())
}

pub fn keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_FILE)
}

/// Keys from `keys.json`; none if the file does not exist.
pub fn load_keys(path: &Path) -> Result<Vec<KeyEntry>, KeyError> {
    match fs::read(path) {
        Ok(bytes) => {
            let f: KeysFile = serde_json::from_slice(&bytes).map_err(|e| KeyError::Malformed {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
            if f.format != FORMAT {
                return Err(KeyError::Malformed {
                    path: path.to_owned(),
                    detail: format!("unknown format {}", f.format),
                });
            }
            Ok(f.keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(KeyError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Holds `flock(LOCK_EX)` on `keys.lock` while alive.
struct KeysLock {
    _file: File,
}

impl KeysLock {
    fn take(data_dir: &Path) -> Result<KeysLock, KeyError> {
        fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let path = data_dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        // std's File::lock is flock(LOCK_EX) on Unix; released when the File closes.
        f.lock().map_err(io_err(&path))?;
        Ok(KeysLock { _file: f })
    }
}

fn save_keys(data_dir: &Path, keys: Vec<KeyEntry>) -> Result<(), KeyError> {
    let f = KeysFile {
        format: FORMAT,
        keys,
    };
    write_private(
        &keys_path(data_dir),
        &serde_json::to_vec_pretty(&f).expect("serializable"),
    )
}

/// Bucket names as S3 allows them (3-63 lowercase letters, digits, '-', '.').
pub fn valid_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

pub fn create_key(
    data_dir: &Path,
    buckets: &[String],
    permission: Permission,
) -> Result<KeyEntry, KeyError> {
    if buckets.is_empty() {
        return Err(KeyError::Invalid(
            "a key needs at least one bucket (--bucket NAME)".into(),
        ));
    }
    if let Some(b) = buckets.iter().find(|b| !valid_bucket_name(b)) {
        return Err(KeyError::Invalid(format!(
            "{b:?} is not a valid bucket name"
        )));
    }
    let _lock = KeysLock::take(data_dir)?;
    let mut keys = load_keys(&keys_path(data_dir))?;
    let mut buckets = buckets.to_vec();
    buckets.sort();
    buckets.dedup();
    let entry = KeyEntry {
        access_key: new_access_key(),
        secret_key: new_secret_key(),
        buckets,
        permission,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    keys.push(entry.clone());
    save_keys(data_dir, keys)?;
    Ok(entry)
}

/// Returns whether the key existed.
pub fn delete_key(data_dir: &Path, access_key: &str) -> Result<bool, KeyError> {
    let _lock = KeysLock::take(data_dir)?;
    let mut keys = load_keys(&keys_path(data_dir))?;
    let before = keys.len();
    keys.retain(|k| k.access_key != access_key);
    if keys.len() == before {
        return Ok(false);
    }
    save_keys(data_dir, keys)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_delete_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = create_key(
            dir.path(),
            &["bk1".into(), "bk2".into(), "bk1".into()],
            Permission::ReadOnly,
        )
        .unwrap();
        let k2 = create_key(dir.path(), &["bk3".into()], Permission::ReadWrite).unwrap();
        assert_eq!(k1.buckets, vec!["bk1".to_string(), "bk2".to_string()]);
        assert!(k1.access_key.starts_with("CK") && k1.access_key.len() == 20);
        assert_eq!(k1.secret_key.len(), 40);
        let keys = load_keys(&keys_path(dir.path())).unwrap();
        assert_eq!(keys, vec![k1.clone(), k2.clone()]);
        let mode = fs::metadata(keys_path(dir.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(delete_key(dir.path(), &k1.access_key).unwrap());
        assert!(!delete_key(dir.path(), &k1.access_key).unwrap());
        assert_eq!(load_keys(&keys_path(dir.path())).unwrap(), vec![k2]);
    }

    #[test]
    fn bad_bucket_names_and_empty_lists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(create_key(dir.path(), &[], Permission::ReadOnly).is_err());
        assert!(create_key(dir.path(), &["Bad_Name".into()], Permission::ReadOnly).is_err());
    }

    #[test]
    fn root_credentials_are_generated_once_with_mode_0600() {
        // The environment may carry CAIRN_ROOT_*; this test only runs the file path when it does not.
        if std::env::var_os(ENV_ACCESS).is_some() || std::env::var_os(ENV_SECRET).is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (c1, s1) = root_credentials(dir.path()).unwrap();
        assert_eq!(s1, RootSource::Generated);
        let (c2, s2) = root_credentials(dir.path()).unwrap();
        assert_eq!(s2, RootSource::File);
        assert_eq!(c1, c2);
        let mode = fs::metadata(dir.path().join(ROOT_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
