//! Multipart uploads. Each part is one sealed upload in the store (so parts dedup against everything);
//! completion validates parts (InvalidPart, InvalidPartOrder, EntityTooSmall) and commits in the store.

use std::collections::BTreeMap;
use std::io::Read;

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::CairnS3;
use super::checksum::{Algo, Wanted, composite, parse_content_md5};
use super::objects::ChecksumFields;
use super::stream::ingest;
use super::util::*;
use crate::store::{MultipartUploadInfo, PartInfo, PartRecord, StoreError};

const MAX_PART_NUMBER: i32 = 10_000;

fn part_number(n: i32) -> S3Result<u32> {
    if (1..=MAX_PART_NUMBER).contains(&n) {
        Ok(n as u32)
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}

fn no_such_upload() -> S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been \
         aborted or completed."
    )
}

/// `bytes=first-last` of `x-amz-copy-source-range`, checked against the source size.
fn copy_range(spec: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last"
        )
    };
    let r = spec.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = r.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b || b >= size {
        return Err(s3_error!(
            InvalidRange,
            "The requested range is not satisfiable"
        ));
    }
    Ok(a..b + 1)
}

fn part_checksum(p: &CompletedPart, a: Algo) -> Option<&String> {
    match a {
        Algo::Crc32 => p.checksum_crc32.as_ref(),
        Algo::Crc32c => p.checksum_crc32c.as_ref(),
        Algo::Crc64Nvme => p.checksum_crc64nvme.as_ref(),
        Algo::Sha1 => p.checksum_sha1.as_ref(),
        Algo::Sha256 => p.checksum_sha256.as_ref(),
    }
}

impl CairnS3 {
    /// The upload, checked to belong to `bucket/key` (S3 answers NoSuchUpload otherwise).
    async fn upload_of(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<MultipartUploadInfo> {
        let id = upload_id.to_owned();
        let info = self.run(move |s| s.get_multipart(&id)).await?;
        if info.bucket != bucket || info.key != key {
            return Err(no_such_upload());
        }
        Ok(info)
    }

    pub(super) async fn create_multipart_upload_impl(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let i = req.input;
        let headers = StdHeaders {
            cache_control: i.cache_control,
            content_disposition: i.content_disposition,
            content_encoding: i.content_encoding,
            content_language: i.content_language,
            expires: i.expires,
        };
        let meta = new_meta(i.content_type, headers, i.metadata);
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let upload_id = self.run(move |s| s.create_multipart(&b, &k, meta)).await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(upload_id),
            checksum_algorithm: i.checksum_algorithm,
            ..Default::default()
        }))
    }

    pub(super) async fn upload_part_impl(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let wanted = Wanted::from_headers(&req.headers)?;
        let trailers = req.trailing_headers.clone();
        let i = req.input;
        let n = part_number(i.part_number)?;
        let md5 = i
            .content_md5
            .as_deref()
            .map(parse_content_md5)
            .transpose()?;
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let ing = ingest(&self.store, i.body, &wanted.algos()).await?;
        let t = trailers.as_ref().and_then(|t| t.take());
        let (ing, checksums) = ing.verified(i.content_length, md5.as_ref(), &wanted, t.as_ref())?;
        let upload = ing.upload;
        let id = i.upload_id;
        // Sealed and recorded in one catalog transaction; on failure nothing of the part is recorded and the
        // dropped upload releases what an intermediate seal registered.
        let part = self
            .run(move |_| upload.finish_part(PartRecord::new(&id, n, checksums)?))
            .await?;
        let c = ChecksumFields::from(&part.checksums);
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part.etag)),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }))
    }

    pub(super) async fn upload_part_copy_impl(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let i = req.input;
        let n = part_number(i.part_number)?;
        let CopySource::Bucket {
            bucket: sb,
            key: sk,
            ..
        } = i.copy_source
        else {
            return Err(s3_error!(NotImplemented, "Access points are not supported"));
        };
        let (sb, sk) = (sb.to_string(), sk.to_string());
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let (b, k) = (sb.clone(), sk.clone());
        let src = self.run(move |s| s.head_object(&b, &k)).await?;
        let conds = ReadConditions {
            if_match: i.copy_source_if_match,
            if_none_match: i.copy_source_if_none_match,
            if_modified_since: i.copy_source_if_modified_since,
            if_unmodified_since: i.copy_source_if_unmodified_since,
        };
        conds.check(&src, true)?;
        let range = i
            .copy_source_range
            .as_deref()
            .map(|r| copy_range(r, src.size))
            .transpose()?;
        let id = i.upload_id;
        // Read and re-ingest in one blocking task: the new part's chunks dedup against the source's, so no
        // data is stored twice.
        let part = self
            .run(move |s| {
                let (opened, mut reader) = s.open_object(&sb, &sk, range.clone())?;
                if opened.seq != src.seq {
                    return Err(StoreError::PreconditionFailed);
                }
                let mut up = s.begin_upload()?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let got = reader.read(&mut buf)?;
                    if got == 0 {
                        break;
                    }
                    up.write(&buf[..got])?;
                }
                let sealed = up.finish_sealed()?;
                s.put_part(&id, n, sealed, BTreeMap::new())
                    .inspect_err(|_| {
                        let _ = s.release_upload(sealed);
                    })
            })
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&part.etag)),
                last_modified: Some(timestamp(part.last_modified_unix_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn complete_multipart_upload_impl(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let i = req.input;
        let cond = put_condition(i.if_match, i.if_none_match)?;
        let completed = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if completed.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let mut parts = Vec::with_capacity(completed.len());
        for p in &completed {
            let (Some(n), Some(e)) = (p.part_number, p.e_tag.as_ref()) else {
                return Err(s3_error!(
                    MalformedXML,
                    "Each part needs a PartNumber and an ETag"
                ));
            };
            parts.push((part_number(n)?, quote(e.value())));
        }
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;

        // Checksums the client sent per part must match the ones verified at UploadPart; when every part has
        // one, the object gets S3's composite checksum.
        let id = i.upload_id.clone();
        let stored: Vec<PartInfo> = self
            .run(move |s| {
                let mut all = Vec::new();
                let mut after = 0;
                loop {
                    let page = s.list_parts(&id, after, 1000)?;
                    let Some(last) = page.last() else { break };
                    after = last.part_number;
                    all.extend(page);
                }
                Ok(all)
            })
            .await?;
        let by_number: BTreeMap<u32, &PartInfo> =
            stored.iter().map(|p| (p.part_number, p)).collect();
        let mut composite_value = None;
        for a in Algo::ALL {
            let mut values = Vec::new();
            for (p, (n, _)) in completed.iter().zip(&parts) {
                let have = by_number.get(n).and_then(|s| s.checksums.get(a.name()));
                if let Some(claimed) = part_checksum(p, a)
                    && have.is_some_and(|h| h != claimed)
                {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidPart,
                        format!(
                            "The {} checksum of part {n} does not match the uploaded part",
                            a.name()
                        ),
                    ));
                }
                if let Some(h) = have {
                    values.push(h.clone());
                }
            }
            if !values.is_empty() && values.len() == parts.len() {
                composite_value = composite(a, &values).map(|v| (a, v));
                break;
            }
        }

        let id = i.upload_id;
        let object_checksums: BTreeMap<String, String> = composite_value
            .iter()
            .map(|(a, v)| (a.name().to_owned(), v.clone()))
            .collect();
        let info = self
            .run(move |s| s.complete_multipart(&id, &parts, object_checksums, cond))
            .await?;
        let mut out = CompleteMultipartUploadOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            e_tag: Some(etag(info.etag())),
            location: Some(format!("/{}/{}", i.bucket, i.key)),
            ..Default::default()
        };
        if let Some((a, v)) = composite_value {
            match a {
                Algo::Crc32 => out.checksum_crc32 = Some(v),
                Algo::Crc32c => out.checksum_crc32c = Some(v),
                Algo::Crc64Nvme => out.checksum_crc64nvme = Some(v),
                Algo::Sha1 => out.checksum_sha1 = Some(v),
                Algo::Sha256 => out.checksum_sha256 = Some(v),
            }
            out.checksum_type = Some(ChecksumType::from_static(ChecksumType::COMPOSITE));
        }
        Ok(S3Response::new(out))
    }

    pub(super) async fn abort_multipart_upload_impl(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let i = req.input;
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let id = i.upload_id;
        self.run(move |s| s.abort_multipart(&id)).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub(super) async fn list_parts_impl(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let i = req.input;
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let max = match i.max_parts {
            None => 1000,
            Some(n) if n < 0 => {
                return Err(s3_error!(InvalidArgument, "max-parts must be non-negative"));
            }
            Some(n) => (n as usize).min(1000),
        };
        let after = u32::try_from(i.part_number_marker.unwrap_or(0).max(0)).unwrap_or(0);
        let id = i.upload_id.clone();
        let mut parts = self.run(move |s| s.list_parts(&id, after, max + 1)).await?;
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = if truncated {
            parts.last().map(|p| p.part_number as i32)
        } else {
            None
        };
        let parts = parts
            .into_iter()
            .map(|p| {
                let c = ChecksumFields::from(&p.checksums);
                Part {
                    part_number: Some(p.part_number as i32),
                    e_tag: Some(etag(&p.etag)),
                    size: i64::try_from(p.size).ok(),
                    last_modified: Some(timestamp(p.last_modified_unix_ms)),
                    checksum_crc32: c.crc32,
                    checksum_crc32c: c.crc32c,
                    checksum_crc64nvme: c.crc64nvme,
                    checksum_sha1: c.sha1,
                    checksum_sha256: c.sha256,
                }
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            max_parts: i32::try_from(max).ok(),
            is_truncated: Some(truncated),
            parts: Some(parts),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    pub(super) async fn list_multipart_uploads_impl(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let i = req.input;
        let max = match i.max_uploads {
            None => 1000,
            Some(n) if n < 0 => {
                return Err(s3_error!(
                    InvalidArgument,
                    "max-uploads must be non-negative"
                ));
            }
            Some(n) => (n as usize).min(1000),
        };
        let (b, prefix) = (i.bucket.clone(), i.prefix.clone().unwrap_or_default());
        let (km, um) = (
            i.key_marker.clone().filter(|s| !s.is_empty()),
            i.upload_id_marker.clone().filter(|s| !s.is_empty()),
        );
        let mut ups = self
            .run(move |s| {
                s.head_bucket(&b)?;
                s.list_multipart_uploads(&b, &prefix, km.as_deref(), um.as_deref(), max + 1)
            })
            .await?;
        let truncated = ups.len() > max;
        ups.truncate(max);
        let (next_key, next_id) = match (truncated, ups.last()) {
            (true, Some(u)) => (Some(u.key.clone()), Some(u.upload_id.clone())),
            _ => (None, None),
        };
        let uploads = ups
            .into_iter()
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.upload_id),
                initiated: Some(timestamp(u.initiated_unix_ms)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            key_marker: i.key_marker,
            upload_id_marker: i.upload_id_marker,
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            max_uploads: i32::try_from(max).ok(),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_ranges() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), 0..10);
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), 5..6);
        assert_eq!(
            copy_range("bytes=5-10", 10).unwrap_err().code().as_str(),
            "InvalidRange"
        );
        assert_eq!(
            copy_range("bytes=-5", 10).unwrap_err().code().as_str(),
            "InvalidArgument"
        );
        assert_eq!(
            copy_range("5-6", 10).unwrap_err().code().as_str(),
            "InvalidArgument"
        );
    }

    #[test]
    fn part_numbers() {
        assert_eq!(part_number(1).unwrap(), 1);
        assert_eq!(part_number(10_000).unwrap(), 10_000);
        assert!(part_number(0).is_err() && part_number(10_001).is_err());
    }
}
