//! Who may do what. There is no anonymous access: every request is SigV4-signed (s3s checks the signature
//! with the secret from [`Keyring`]), and [`Keyring`]'s `S3Access` impl then decides whether the signer may
//! run the operation on the bucket: root may do everything; a key from `cairn key create` only touches its
//! named buckets, and a read-only key only reads them.

pub mod keys;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{S3Request, S3Result, s3_error};

pub use keys::{KeyEntry, KeyError, Permission, RootCredentials, RootSource};

/// The signer of a request, as far as permissions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Root,
    Key {
        buckets: Vec<String>,
        permission: Permission,
    },
}

impl Principal {
    pub fn may_see_bucket(&self, bucket: &str) -> bool {
        match self {
            Principal::Root => true,
            Principal::Key { buckets, .. } => buckets.iter().any(|b| b == bucket),
        }
    }

    fn may(&self, bucket: &str, write: bool) -> bool {
        match self {
            Principal::Root => true,
            Principal::Key {
                buckets,
                permission,
            } => {
                buckets.iter().any(|b| b == bucket)
                    && (!write || *permission == Permission::ReadWrite)
            }
        }
    }
}

/// Operations a read-only key may run. Anything not listed counts as a write, so an operation added to
/// s3s later is denied to read-only keys until someone decides otherwise.
fn is_read_op(op: &str) -> bool {
    matches!(
        op,
        "GetObject"
            | "HeadObject"
            | "GetObjectAttributes"
            | "ListObjects"
            | "ListObjectsV2"
            | "HeadBucket"
            | "GetBucketLocation"
            | "GetBucketVersioning"
            | "GetObjectLockConfiguration"
            | "ListParts"
            | "ListMultipartUploads"
            | "ListBuckets"
    )
}

#[derive(Default)]
struct Cache {
    /// (inode, size, mtime) of keys.json when it was read; `None` = not read yet or absent.
    stamp: Option<(u64, u64, SystemTime)>,
    keys: HashMap<String, KeyEntry>,
}

/// Root credentials plus the keys of `keys.json`, re-read when that file changes.
pub struct Keyring {
    root: RootCredentials,
    keys_path: PathBuf,
    cache: Mutex<Cache>,
}

impl Keyring {
    pub fn new(root: RootCredentials, data_dir: &Path) -> Keyring {
        Keyring {
            root,
            keys_path: keys::keys_path(data_dir),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn refresh(&self, cache: &mut Cache) {
        let stamp = std::fs::metadata(&self.keys_path).ok().map(|m| {
            (
                m.ino(),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )
        });
        if stamp == cache.stamp && (stamp.is_some() || cache.keys.is_empty()) {
            return;
        }
        match keys::load_keys(&self.keys_path) {
            Ok(list) => {
                cache.keys = list
                    .into_iter()
                    .map(|k| (k.access_key.clone(), k))
                    .collect();
                cache.stamp = stamp;
            }
            // Keep the last good set rather than locking everyone out over a half-edited file.
            Err(e) => tracing::error!("cannot read access keys: {e}"),
        }
    }

    fn entry(&self, access_key: &str) -> Option<KeyEntry> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut cache);
        cache.keys.get(access_key).cloned()
    }

    pub fn principal(&self, access_key: &str) -> Option<Principal> {
        if access_key == self.root.access_key {
            return Some(Principal::Root);
        }
        self.entry(access_key).map(|k| Principal::Key {
            buckets: k.buckets,
            permission: k.permission,
        })
    }

    fn principal_of<T>(&self, req: &S3Request<T>) -> S3Result<Principal> {
        let cred = req
            .credentials
            .as_ref()
            .ok_or_else(|| s3_error!(AccessDenied, "Signature is required"))?;
        self.principal(&cred.access_key)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }

    fn check_copy_source(&self, p: &Principal, src: &CopySource) -> S3Result<()> {
        match src {
            CopySource::Bucket { bucket, .. } if p.may(bucket, false) => Ok(()),
            CopySource::Bucket { .. } => {
                Err(s3_error!(AccessDenied, "Access Denied to the copy source"))
            }
            _ => Err(s3_error!(NotImplemented, "Access points are not supported")),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for Keyring {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.root.access_key {
            return Ok(SecretKey::from(self.root.secret_key.as_str()));
        }
        match self.entry(access_key) {
            Some(k) => Ok(SecretKey::from(k.secret_key)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

#[async_trait::async_trait]
impl S3Access for Keyring {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(cred) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Anonymous access is not allowed"));
        };
        let Some(p) = self.principal(&cred.access_key) else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        let op = cx.s3_op().name();
        let bucket = match cx.s3_path() {
            S3Path::Root => {
                return if op == "ListBuckets" || p == Principal::Root {
                    Ok(())
                } else {
                    deny()
                };
            }
            S3Path::Bucket { bucket } => bucket,
            S3Path::Object { bucket, .. } => bucket,
        };
        if p.may(bucket, !is_read_op(op)) {
            Ok(())
        } else {
            deny()
        }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let p = self.principal_of(req)?;
        self.check_copy_source(&p, &req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let p = self.principal_of(req)?;
        self.check_copy_source(&p, &req.input.copy_source)
    }
}

fn deny() -> S3Result<()> {
    Err(s3_error!(AccessDenied, "Access Denied"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_limited_to_their_buckets_and_permission() {
        let ro = Principal::Key {
            buckets: vec!["a".into()],
            permission: Permission::ReadOnly,
        };
        let rw = Principal::Key {
            buckets: vec!["a".into()],
            permission: Permission::ReadWrite,
        };
        assert!(ro.may("a", false) && !ro.may("a", true) && !ro.may("b", false));
        assert!(rw.may("a", true) && !rw.may("b", true));
        assert!(Principal::Root.may("anything", true));
        assert!(is_read_op("GetObject") && !is_read_op("PutObject") && !is_read_op("SomeFutureOp"));
    }

    #[test]
    fn keyring_sees_keys_created_after_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootCredentials {
            access_key: "ROOTKEY".into(),
            secret_key: "rootsecret".into(),
        };
        let ring = Keyring::new(root, dir.path());
        assert_eq!(ring.principal("ROOTKEY"), Some(Principal::Root));
        assert_eq!(ring.principal("CKNOPE"), None);
        let k = keys::create_key(dir.path(), &["bkt".into()], Permission::ReadWrite).unwrap();
        assert_eq!(
            ring.principal(&k.access_key),
            Some(Principal::Key {
                buckets: vec!["bkt".into()],
                permission: Permission::ReadWrite
            })
        );
        keys::delete_key(dir.path(), &k.access_key).unwrap();
        assert_eq!(ring.principal(&k.access_key), None);
    }
}
