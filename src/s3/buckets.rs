//! Bucket operations. Versioning and object lock do not exist (yet): their getters answer as S3 does for a
//! bucket that never had them.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::CairnS3;
use super::util::timestamp;
use crate::auth::Principal;

fn owner() -> Owner {
    Owner {
        display_name: Some("cairn".into()),
        id: Some("cairn".into()),
    }
}

impl CairnS3 {
    pub(super) async fn create_bucket_impl(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        let b = bucket.clone();
        self.run(move |s| s.create_bucket(&b)).await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    pub(super) async fn delete_bucket_impl(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.run(move |s| s.delete_bucket(&bucket)).await?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    pub(super) async fn head_bucket_impl(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let bucket = req.input.bucket;
        self.run(move |s| s.head_bucket(&bucket)).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.settings.region.clone()),
            ..Default::default()
        }))
    }

    pub(super) async fn list_buckets_impl(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let principal = req
            .credentials
            .as_ref()
            .and_then(|c| self.keyring.principal(&c.access_key))
            .ok_or_else(|| s3_error!(AccessDenied))?;
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let all = self.run(|s| s.list_buckets()).await?;
        let buckets = all
            .into_iter()
            .filter(|b| principal == Principal::Root || principal.may_see_bucket(&b.name))
            .filter(|b| b.name.starts_with(&prefix))
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(timestamp(b.created_unix_ms)),
                bucket_region: Some(self.settings.region.clone()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            prefix: req.input.prefix,
            continuation_token: None,
        }))
    }

    pub(super) async fn get_bucket_location_impl(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let bucket = req.input.bucket;
        self.run(move |s| s.head_bucket(&bucket)).await?;
        // S3 reports us-east-1 as an empty LocationConstraint.
        let region = &self.settings.region;
        let location_constraint =
            (region != "us-east-1").then(|| BucketLocationConstraint::from(region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    pub(super) async fn get_bucket_versioning_impl(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let bucket = req.input.bucket;
        self.run(move |s| s.head_bucket(&bucket)).await?;
        // Never versioned: an empty VersioningConfiguration.
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    pub(super) async fn get_object_lock_configuration_impl(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        let bucket = req.input.bucket;
        self.run(move |s| s.head_bucket(&bucket)).await?;
        Err(s3_error!(
            ObjectLockConfigurationNotFoundError,
            "Object Lock configuration does not exist for this bucket"
        ))
    }
}
