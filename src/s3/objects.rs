//! Object operations: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects, CopyObject.

use std::collections::BTreeMap;
use std::ops::Range;

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::CairnS3;
use super::checksum::{Algo, Wanted, parse_content_md5};
use super::error::store_error;
use super::stream::{ingest, reader_body};
use super::util::*;
use crate::store::{ObjectInfo, ObjectMeta, PutCondition};

/// The checksum fields of an output, from stored values by algorithm name.
#[derive(Default)]
pub(super) struct ChecksumFields {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub kind: Option<ChecksumType>,
}

impl ChecksumFields {
    pub fn from(m: &BTreeMap<String, String>) -> ChecksumFields {
        let get = |a: Algo| m.get(a.name()).cloned();
        let composite = m.values().any(|v| v.contains('-'));
        ChecksumFields {
            crc32: get(Algo::Crc32),
            crc32c: get(Algo::Crc32c),
            crc64nvme: get(Algo::Crc64Nvme),
            sha1: get(Algo::Sha1),
            sha256: get(Algo::Sha256),
            kind: (!m.is_empty()).then(|| {
                ChecksumType::from_static(if composite {
                    ChecksumType::COMPOSITE
                } else {
                    ChecksumType::FULL_OBJECT
                })
            }),
        }
    }
}

/// What GET and HEAD answer with, before the body.
struct ReadPlan {
    info: ObjectInfo,
    range: Option<Range<u64>>,
    content_range: Option<String>,
    parts_count: Option<i32>,
    checksums: ChecksumFields,
}

#[allow(clippy::too_many_arguments)]
fn plan_read(
    info: ObjectInfo,
    conds: &ReadConditions,
    range: Option<&s3s::dto::Range>,
    part_number: Option<i32>,
    checksum_mode: Option<&ChecksumMode>,
) -> S3Result<ReadPlan> {
    conds.check(&info, false)?;
    let size = info.size;
    let mut parts_count = None;
    let r = match (range, part_number) {
        (Some(_), Some(_)) => {
            return Err(s3_error!(
                InvalidRequest,
                "Cannot specify both Range header and partNumber"
            ));
        }
        (Some(r), None) => Some(
            r.check(size)
                .map_err(|_| s3_error!(InvalidRange, "The requested range is not satisfiable"))?,
        ),
        (None, Some(n)) => {
            let parts = &info.part_sizes;
            let idx = usize::try_from(n)
                .ok()
                .filter(|&i| i >= 1 && i <= parts.len().max(1));
            let Some(idx) = idx else {
                let mut e = S3Error::with_message(
                    S3ErrorCode::Custom("InvalidPartNumber".into()),
                    "The requested partnumber is not satisfiable",
                );
                e.set_status_code(hyper::StatusCode::RANGE_NOT_SATISFIABLE);
                return Err(e);
            };
            if parts.len() > 1 {
                parts_count = i32::try_from(parts.len()).ok();
            }
            let start: u64 = parts.iter().take(idx - 1).sum();
            let len = parts.get(idx - 1).copied().unwrap_or(size);
            // A single-part object read as part 1 is the whole object (200, no Content-Range), as on S3.
            if parts.len() > 1 {
                Some(start..start + len)
            } else {
                None
            }
        }
        (None, None) => None,
    };
    let content_range = r
        .as_ref()
        .map(|r| format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1)));
    // Never a full-object checksum on a range or a part of a multipart object.
    let enabled = checksum_mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    let checksums = if enabled && r.is_none() {
        ChecksumFields::from(&info.meta.checksums)
    } else {
        ChecksumFields::default()
    };
    Ok(ReadPlan {
        info,
        range: r,
        content_range,
        parts_count,
        checksums,
    })
}

impl CairnS3 {
    pub(super) async fn put_object_impl(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let wanted = Wanted::from_headers(&req.headers)?;
        let trailers = req.trailing_headers.clone();
        let i = req.input;
        let md5 = i
            .content_md5
            .as_deref()
            .map(parse_content_md5)
            .transpose()?;
        let cond = put_condition(i.if_match, i.if_none_match)?;
        let (bucket, key) = (i.bucket, i.key);
        {
            // Fail before reading a possibly large body into nowhere.
            let b = bucket.clone();
            self.run(move |s| s.head_bucket(&b)).await?;
        }
        let ing = ingest(&self.store, i.body, &wanted.algos()).await?;
        let t = trailers.as_ref().and_then(|t| t.take());
        let (ing, checksums) = ing.verified(i.content_length, md5.as_ref(), &wanted, t.as_ref())?;
        let headers = StdHeaders {
            cache_control: i.cache_control,
            content_disposition: i.content_disposition,
            content_encoding: i.content_encoding,
            content_language: i.content_language,
            expires: i.expires,
        };
        let mut meta = new_meta(i.content_type, headers, i.metadata);
        meta.checksums = checksums;
        let upload = ing.upload;
        let info = self
            .run(move |s| {
                if cond == PutCondition::None {
                    return upload.finish_object(&bucket, &key, meta);
                }
                let sealed = upload.finish_sealed()?;
                s.commit_object(&bucket, &key, &[sealed], meta, cond)
                    .inspect_err(|_| {
                        if let Err(e) = s.release_upload(sealed) {
                            tracing::warn!("releasing an uncommitted upload: {e}");
                        }
                    })
            })
            .await?;
        let c = ChecksumFields::from(&info.meta.checksums);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(info.etag())),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            checksum_type: c.kind,
            ..Default::default()
        }))
    }

    pub(super) async fn get_object_impl(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let i = req.input;
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let info = self.run(move |s| s.head_object(&b, &k)).await?;
        let conds = ReadConditions {
            if_match: i.if_match,
            if_none_match: i.if_none_match,
            if_modified_since: i.if_modified_since,
            if_unmodified_since: i.if_unmodified_since,
        };
        let plan = plan_read(
            info,
            &conds,
            i.range.as_ref(),
            i.part_number,
            i.checksum_mode.as_ref(),
        )?;
        let (b, k, range) = (i.bucket, i.key, plan.range.clone());
        let (opened, reader) = self.run(move |s| s.open_object(&b, &k, range)).await?;
        if opened.seq != plan.info.seq {
            // Overwritten between HEAD and open: the headers would describe another object.
            return Err(s3_error!(
                InternalError,
                "The object changed while it was being read; retry"
            ));
        }
        let len = plan
            .range
            .as_ref()
            .map_or(plan.info.size, |r| r.end - r.start);
        let info = &plan.info;
        let h = StdHeaders::from_map(&info.meta.headers);
        let c = plan.checksums;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(reader_body(reader, len)),
            accept_ranges: Some("bytes".into()),
            content_length: i64::try_from(len).ok(),
            content_range: plan.content_range,
            content_type: info.meta.content_type.clone(),
            cache_control: h.cache_control,
            content_disposition: h.content_disposition,
            content_encoding: h.content_encoding,
            content_language: h.content_language,
            expires: h.expires,
            e_tag: Some(etag(info.etag())),
            last_modified: Some(timestamp(info.created_unix_ms)),
            metadata: metadata_out(&info.meta.user_meta),
            parts_count: plan.parts_count,
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            checksum_type: c.kind,
            ..Default::default()
        }))
    }

    pub(super) async fn head_object_impl(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let i = req.input;
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let info = self.run(move |s| s.head_object(&b, &k)).await?;
        let conds = ReadConditions {
            if_match: i.if_match,
            if_none_match: i.if_none_match,
            if_modified_since: i.if_modified_since,
            if_unmodified_since: i.if_unmodified_since,
        };
        let plan = plan_read(
            info,
            &conds,
            i.range.as_ref(),
            i.part_number,
            i.checksum_mode.as_ref(),
        )?;
        let len = plan
            .range
            .as_ref()
            .map_or(plan.info.size, |r| r.end - r.start);
        let info = &plan.info;
        let h = StdHeaders::from_map(&info.meta.headers);
        let c = plan.checksums;
        let mut resp = S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: i64::try_from(len).ok(),
            content_range: plan.content_range.clone(),
            content_type: info.meta.content_type.clone(),
            cache_control: h.cache_control,
            content_disposition: h.content_disposition,
            content_encoding: h.content_encoding,
            content_language: h.content_language,
            expires: h.expires,
            e_tag: Some(etag(info.etag())),
            last_modified: Some(timestamp(info.created_unix_ms)),
            metadata: metadata_out(&info.meta.user_meta),
            parts_count: plan.parts_count,
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            checksum_type: c.kind,
            ..Default::default()
        });
        if plan.content_range.is_some() {
            resp.status = Some(hyper::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    pub(super) async fn delete_object_impl(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let i = req.input;
        // 204 whether or not the key existed, as S3 does.
        self.run(move |s| s.delete_object(&i.bucket, &i.key))
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    pub(super) async fn delete_objects_impl(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let i = req.input;
        let objects = i.delete.objects;
        if objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "The request must contain no more than 1000 keys"
            ));
        }
        if objects.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema"
            ));
        }
        let quiet = i.delete.quiet.unwrap_or(false);
        let bucket = i.bucket;
        // One tombstone container and one catalog transaction for the whole batch (Veeam deletes in 1000s);
        // if the batch fails, every key reports that error.
        let keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
        let batch = keys.clone();
        let result = self
            .run(move |s| {
                s.head_bucket(&bucket)?;
                Ok(s.delete_objects(&bucket, &batch))
            })
            .await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        match result {
            Ok(_) => {
                if !quiet {
                    deleted = keys
                        .into_iter()
                        .map(|key| DeletedObject {
                            key: Some(key),
                            ..Default::default()
                        })
                        .collect();
                }
            }
            Err(e) => {
                let e = store_error(e);
                errors = keys
                    .into_iter()
                    .map(|key| Error {
                        code: Some(e.code().as_str().to_owned()),
                        key: Some(key),
                        message: e.message().map(str::to_owned),
                        version_id: None,
                    })
                    .collect();
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    pub(super) async fn copy_object_impl(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let i = req.input;
        let CopySource::Bucket {
            bucket: sb,
            key: sk,
            version_id,
        } = i.copy_source
        else {
            return Err(s3_error!(NotImplemented, "Access points are not supported"));
        };
        if version_id.is_some_and(|v| v.as_ref() != "null") {
            return Err(s3_error!(NoSuchVersion, "Versioning is not enabled"));
        }
        let (sb, sk) = (sb.to_string(), sk.to_string());
        let replace = match i.metadata_directive.as_ref().map(|d| d.as_str()) {
            None | Some(MetadataDirective::COPY) => false,
            Some(MetadataDirective::REPLACE) => true,
            Some(other) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("Unknown metadata directive {other:?}"),
                ));
            }
        };
        if sb == i.bucket && sk == i.key && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the \
                 object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let (b, k) = (sb.clone(), sk.clone());
        let src = self.run(move |s| s.head_object(&b, &k)).await?;
        let conds = ReadConditions {
            if_match: i.copy_source_if_match,
            if_none_match: i.copy_source_if_none_match,
            if_modified_since: i.copy_source_if_modified_since,
            if_unmodified_since: i.copy_source_if_unmodified_since,
        };
        conds.check(&src, true)?;
        let meta = replace.then(|| {
            let headers = StdHeaders {
                cache_control: i.cache_control,
                content_disposition: i.content_disposition,
                content_encoding: i.content_encoding,
                content_language: i.content_language,
                expires: i.expires,
            };
            ObjectMeta {
                // Same bytes, same ETag and checksums; only the descriptive metadata is replaced.
                etag: src.meta.etag.clone(),
                checksums: src.meta.checksums.clone(),
                ..new_meta(i.content_type, headers, i.metadata)
            }
        });
        let (db, dk) = (i.bucket, i.key);
        let info = self
            .run(move |s| s.copy_object(&sb, &sk, &db, &dk, meta))
            .await?;
        let c = ChecksumFields::from(&info.meta.checksums);
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(info.etag())),
                last_modified: Some(timestamp(info.created_unix_ms)),
                checksum_crc32: c.crc32,
                checksum_crc32c: c.crc32c,
                checksum_crc64nvme: c.crc64nvme,
                checksum_sha1: c.sha1,
                checksum_sha256: c.sha256,
                checksum_type: c.kind,
            }),
            ..Default::default()
        }))
    }
}
