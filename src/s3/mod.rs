//! The S3 edge (async): the s3s service implementation over the store, the hardening layer in front of it,
//! error mapping ([`error::store_error`], the one place) and checksum verification.
//!
//! Request path: hyper -> axum router -> [`hardening`] (SigV2/presign/size/concurrency checks) -> s3s
//! (SigV4, aws-chunked, XML, routing) -> [`crate::auth::Keyring`] (who may do what) -> [`CairnS3`] ->
//! `spawn_blocking` -> store.

pub mod checksum;
pub mod error;
pub mod hardening;
pub mod stream;

mod buckets;
mod list;
mod multipart;
mod objects;
mod util;

use std::sync::Arc;

use s3s::dto::*;
use s3s::host::{S3Host, VirtualHost};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Request, S3Response, S3Result};

use crate::auth::Keyring;
use crate::store::Store;

/// Settings of the S3 layer (a subset of the config file).
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub region: String,
    pub domains: Vec<String>,
    pub max_xml_body: usize,
}

/// The S3 API over a [`Store`].
#[derive(Clone)]
pub struct CairnS3 {
    store: Arc<Store>,
    keyring: Arc<Keyring>,
    settings: Arc<S3Settings>,
}

impl CairnS3 {
    pub fn new(store: Arc<Store>, keyring: Arc<Keyring>, settings: S3Settings) -> CairnS3 {
        CairnS3 {
            store,
            keyring,
            settings: Arc::new(settings),
        }
    }
}

/// Builds the s3s service: SigV4 auth and access checks by `keyring`, virtual hosts under `domains`.
pub fn service(store: Arc<Store>, keyring: Arc<Keyring>, settings: S3Settings) -> S3Service {
    let mut cfg = s3s::config::S3Config::default();
    cfg.xml_max_body_size = settings.max_xml_body;
    // POST-object (browser form uploads) is refused by the hardening layer; keep s3s's buffer small anyway.
    cfg.post_object_max_file_size = 1 << 20;
    let host = DomainHost {
        domains: settings.domains.clone(),
    };
    let mut b = S3ServiceBuilder::new(CairnS3::new(store, keyring.clone(), settings));
    b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        cfg,
    ))));
    b.set_auth(KeyringAuth(keyring.clone()));
    b.set_access(KeyringAuth(keyring));
    b.set_host(host);
    b.build()
}

/// Adapter so one `Arc<Keyring>` serves as both s3s auth and access provider.
struct KeyringAuth(Arc<Keyring>);

#[async_trait::async_trait]
impl s3s::auth::S3Auth for KeyringAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<s3s::auth::SecretKey> {
        self.0.get_secret_key(access_key).await
    }
}

#[async_trait::async_trait]
impl s3s::access::S3Access for KeyringAuth {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        s3s::access::S3Access::check(&*self.0, cx).await
    }
    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        s3s::access::S3Access::copy_object(&*self.0, req).await
    }
    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        s3s::access::S3Access::upload_part_copy(&*self.0, req).await
    }
}

/// Virtual-host-style addressing for `<bucket>.<domain>` under the configured domains; every other host
/// (IP addresses, unknown names) is path-style. Unlike s3s's `SingleDomain`, an unknown host name is not
/// taken for a bucket (CNAME style), so `http://myserver:9000/bucket/key` keeps working.
pub struct DomainHost {
    domains: Vec<String>,
}

impl DomainHost {
    pub fn new(domains: Vec<String>) -> DomainHost {
        DomainHost { domains }
    }
}

impl S3Host for DomainHost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        for d in &self.domains {
            if let Some(bucket) = name
                .strip_suffix(d.as_str())
                .and_then(|b| b.strip_suffix('.'))
                && !bucket.is_empty()
            {
                return Ok(VirtualHost::new(d.as_str()).with_bucket(bucket));
            }
        }
        Ok(VirtualHost::new(name))
    }
}

#[async_trait::async_trait]
impl S3 for CairnS3 {
    // ---- buckets ----
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.create_bucket_impl(req).await
    }
    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.delete_bucket_impl(req).await
    }
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.head_bucket_impl(req).await
    }
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.list_buckets_impl(req).await
    }
    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.get_bucket_location_impl(req).await
    }
    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.get_bucket_versioning_impl(req).await
    }
    async fn get_object_lock_configuration(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        self.get_object_lock_configuration_impl(req).await
    }

    // ---- objects ----
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.put_object_impl(req).await
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.get_object_impl(req).await
    }
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.head_object_impl(req).await
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.delete_object_impl(req).await
    }
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.delete_objects_impl(req).await
    }
    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.copy_object_impl(req).await
    }

    // ---- listing ----
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.list_objects_impl(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.list_objects_v2_impl(req).await
    }

    // ---- multipart ----
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_multipart_upload_impl(req).await
    }
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.upload_part_impl(req).await
    }
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.upload_part_copy_impl(req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_multipart_upload_impl(req).await
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_multipart_upload_impl(req).await
    }
    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.list_parts_impl(req).await
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.list_multipart_uploads_impl(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts_only_under_configured_domains() {
        let h = DomainHost::new(vec!["localhost".into(), "s3.example.lan".into()]);
        let vh = h.parse_host_header("photos.localhost:9000").unwrap();
        assert_eq!(vh.bucket(), Some("photos"));
        let vh = h.parse_host_header("a.b.s3.example.lan").unwrap();
        assert_eq!(vh.bucket(), Some("a.b"));
        assert_eq!(
            h.parse_host_header("localhost:9000").unwrap().bucket(),
            None
        );
        assert_eq!(h.parse_host_header("myserver:9000").unwrap().bucket(), None);
        assert_eq!(h.parse_host_header("notlocalhost").unwrap().bucket(), None);
    }
}
