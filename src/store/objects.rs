//! Buckets, object commits, deletes, copies, listings and multipart uploads: catalog transactions, with a
//! small record container written first so the disks alone can rebuild the catalog (storage-format.md §4.3-4.4).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use md5::{Digest, Md5};
use rusqlite::{OptionalExtension, Transaction, params};

use super::api::*;
use super::catalog::{self, ObjectRow};
use super::error::{Result, StoreError};
use super::final_seal::FinalSeal;
use super::ingest::md5_bytes;
use super::{Store, now_ms};
use crate::core::container::{ContainerBuilder, EntryType};
use crate::core::ids::UploadId;
use crate::core::records::{BucketRecord, ObjectCommitRecord, SourceRef, TombstoneRecord};

/// S3's minimum size of a non-final multipart part.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
pub const MAX_PARTS: u32 = 10_000;

/// S3 bucket naming rules (the subset that matters for path- and virtual-host-style addressing).
pub fn validate_bucket_name(name: &str) -> Result<()> {
    let bad = |why: &'static str| Err(StoreError::InvalidBucketName(name.to_string(), why));
    if name.len() < 3 || name.len() > 63 {
        return bad("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("must begin and end with a letter or digit");
    }
    if name.contains("..") {
        return bad("must not contain two adjacent periods");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("must not be formatted as an IP address");
    }
    Ok(())
}

fn unquote(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

impl Store {
    pub(crate) fn require_bucket(&self, bucket: &str) -> Result<()> {
        self.catalog
            .read(|c| catalog::get_bucket(c, bucket))?
            .map(|_| ())
            .ok_or_else(|| StoreError::NoSuchBucket(bucket.to_string()))
    }

    /// Writes a container holding only `records` and commits `then` with it: sealed with whatever other
    /// uploads' last containers and record containers are waiting (group commit, final_seal.rs), so that many
    /// deletes, bucket records or object commits at once share a few shard files and one transaction.
    fn write_records(
        &self,
        records: &[(EntryType, Vec<u8>)],
        then: impl FnOnce(&Store, &Transaction<'_>) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let id = self.alloc_container_id()?;
        let size: usize = records.iter().map(|r| r.1.len() + 64).sum();
        let mut builder = ContainerBuilder::new(id, now_ms(), size + 128);
        for (ty, payload) in records {
            builder.push_record(*ty, payload);
        }
        self.seal_final(FinalSeal {
            builder,
            new_chunks: Vec::new(),
            segment_refs: Vec::new(),
            successors: Vec::new(),
            commit: Box::new(move |store, tx, _| then(store, tx)),
        })
    }

    // ---------------- buckets ----------------

    pub fn create_bucket(&self, name: &str) -> Result<()> {
        validate_bucket_name(name)?;
        if self
            .catalog
            .read(|c| catalog::get_bucket(c, name))?
            .is_some()
        {
            return Err(StoreError::BucketExists(name.to_string()));
        }
        let seq = self.next_seq();
        let created = now_ms();
        let rec = BucketRecord {
            v: 1,
            bucket: name.to_string(),
            created_unix_ms: created,
            seq,
            deleted: false,
        };
        let name = name.to_string();
        self.write_records(&[(EntryType::Bucket, rec.encode())], move |_, tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO buckets(name, created_unix_ms, seq) VALUES (?1, ?2, ?3)",
                params![name, created as i64, seq as i64],
            )?;
            if n == 0 {
                return Err(StoreError::BucketExists(name));
            }
            Ok(())
        })
    }

    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        self.require_bucket(name)?;
        if self
            .catalog
            .read(|c| catalog::bucket_has_objects(c, name))?
        {
            return Err(StoreError::BucketNotEmpty(name.to_string()));
        }
        let seq = self.next_seq();
        let rec = BucketRecord {
            v: 1,
            bucket: name.to_string(),
            created_unix_ms: now_ms(),
            seq,
            deleted: true,
        };
        let name = name.to_string();
        self.write_records(&[(EntryType::Bucket, rec.encode())], move |_, tx| {
            if catalog::bucket_has_objects(tx, &name)? {
                return Err(StoreError::BucketNotEmpty(name));
            }
            tx.execute("DELETE FROM buckets WHERE name = ?1", [&name])?;
            Ok(())
        })
    }

    pub fn head_bucket(&self, name: &str) -> Result<BucketInfo> {
        self.catalog
            .read(|c| catalog::get_bucket(c, name))?
            .ok_or_else(|| StoreError::NoSuchBucket(name.to_string()))
    }

    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        self.catalog.read(catalog::list_buckets)
    }

    // ---------------- object commits ----------------

    /// Inside a catalog transaction: checks the bucket and `cond`, takes references on `sources`, replaces
    /// whatever object had the key (releasing its references). Last writer by `seq` wins.
    pub(crate) fn commit_in_tx(
        &self,
        tx: &Transaction<'_>,
        info: &ObjectInfo,
        sources: &[SourceRef],
        cond: &PutCondition,
    ) -> Result<()> {
        if catalog::get_bucket(tx, &info.bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket(info.bucket.clone()));
        }
        let existing = catalog::get_object(tx, &info.bucket, &info.key)?;
        match (cond, &existing) {
            (PutCondition::IfNoneMatchAny, Some(_)) => return Err(StoreError::PreconditionFailed),
            (PutCondition::IfMatch(_), None) => return Err(StoreError::PreconditionFailed),
            (PutCondition::IfMatch(e), Some(ex))
                if unquote(e) != unquote(ex.info.etag()) && unquote(e) != "*" =>
            {
                return Err(StoreError::PreconditionFailed);
            }
            _ => {}
        }
        for s in sources {
            catalog::add_upload_refs(tx, &source_upload(s)?, 1)?;
        }
        if let Some(ex) = existing {
            if ex.info.seq > info.seq {
                // A newer commit of this key landed first: ours is superseded at once.
                for s in sources {
                    catalog::add_upload_refs(tx, &source_upload(s)?, -1)?;
                }
                return Ok(());
            }
            release_sources(tx, &ex.sources)?;
        }
        catalog::put_object_row(tx, info, sources)
    }

    /// Makes an object out of sealed uploads; see the API docs in `api.rs`.
    pub fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        sources: &[SealedUpload],
        mut meta: ObjectMeta,
        cond: PutCondition,
    ) -> Result<ObjectInfo> {
        if meta.etag.is_none() {
            meta.etag = Some(match sources {
                [one] => format!("\"{}\"", hex::encode(one.md5)),
                many => multipart_etag(many.iter().map(|s| s.md5)),
            });
        }
        let refs: Vec<SourceRef> = self.catalog.read(|c| {
            sources
                .iter()
                .map(|s| {
                    let segments: u32 = c.query_row(
                        "SELECT segments FROM uploads WHERE id = ?1",
                        [&s.upload_id.0[..]],
                        |r| r.get(0),
                    )?;
                    Ok(SourceRef {
                        upload_id: s.upload_id.to_hex(),
                        segments,
                        size: s.size,
                    })
                })
                .collect()
        })?;
        self.commit_sources(bucket, key, refs, meta, cond)
    }

    fn commit_sources(
        &self,
        bucket: &str,
        key: &str,
        sources: Vec<SourceRef>,
        meta: ObjectMeta,
        cond: PutCondition,
    ) -> Result<ObjectInfo> {
        self.require_bucket(bucket)?;
        let _guard = if cond != PutCondition::None {
            let g = self
                .commit_lock
                .lock()
                .map_err(|_| StoreError::Config("commit lock poisoned".into()))?;
            // Check before writing the commit record, so a refused commit leaves no record on disk.
            let existing = self.catalog.read(|c| catalog::get_object(c, bucket, key))?;
            match (&cond, &existing) {
                (PutCondition::IfNoneMatchAny, Some(_)) | (PutCondition::IfMatch(_), None) => {
                    return Err(StoreError::PreconditionFailed);
                }
                (PutCondition::IfMatch(e), Some(ex))
                    if unquote(e) != unquote(ex.info.etag()) && unquote(e) != "*" =>
                {
                    return Err(StoreError::PreconditionFailed);
                }
                _ => {}
            }
            Some(g)
        } else {
            None
        };
        let seq = self.next_seq();
        let created = now_ms();
        let size = sources.iter().map(|s| s.size).sum();
        let info = ObjectInfo {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size,
            seq,
            created_unix_ms: created,
            meta: meta.clone(),
            part_sizes: sources.iter().map(|s| s.size).collect(),
        };
        let record = ObjectCommitRecord {
            v: 1,
            bucket: bucket.to_string(),
            key: key.to_string(),
            seq,
            size,
            created_unix_ms: created,
            meta,
            sources: sources.clone(),
        };
        let committed = info.clone();
        self.write_records(&[(EntryType::Commit, record.encode())], move |store, tx| {
            store.commit_in_tx(tx, &committed, &sources, &cond)
        })?;
        Ok(info)
    }

    pub fn release_upload(&self, sealed: SealedUpload) -> Result<()> {
        self.catalog.write(|tx| {
            let refs: Option<i64> = tx
                .query_row(
                    "SELECT refs FROM uploads WHERE id = ?1",
                    [&sealed.upload_id.0[..]],
                    |r| r.get(0),
                )
                .optional()?;
            if refs.is_some_and(|r| r <= 0) {
                catalog::release_upload(tx, &sealed.upload_id)?;
            }
            Ok(())
        })
    }

    pub fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        Ok(self.object_row(bucket, key)?.info)
    }

    pub(crate) fn object_row(&self, bucket: &str, key: &str) -> Result<ObjectRow> {
        self.catalog.read(|c| {
            if catalog::get_bucket(c, bucket)?.is_none() {
                return Err(StoreError::NoSuchBucket(bucket.to_string()));
            }
            catalog::get_object(c, bucket, key)?.ok_or_else(|| StoreError::NoSuchKey {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })
        })
    }

    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<bool> {
        let deleted = self.delete_objects(bucket, &[key.to_string()])?;
        Ok(deleted.first().copied().unwrap_or(false))
    }

    /// Deletes many keys with one tombstone container and one transaction (DeleteObjects batches of 1000).
    /// Returns, per key, whether an object was deleted.
    pub fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<Vec<bool>> {
        self.require_bucket(bucket)?;
        let present: Vec<bool> = self.catalog.read(|c| {
            keys.iter()
                .map(|k| Ok(catalog::get_object(c, bucket, k)?.is_some()))
                .collect()
        })?;
        if !present.iter().any(|p| *p) {
            return Ok(present);
        }
        let seq = self.next_seq();
        let records: Vec<(EntryType, Vec<u8>)> = keys
            .iter()
            .zip(&present)
            .filter(|(_, p)| **p)
            .map(|(k, _)| {
                let t = TombstoneRecord {
                    v: 1,
                    bucket: bucket.to_string(),
                    key: k.clone(),
                    seq,
                };
                (EntryType::Tombstone, t.encode())
            })
            .collect();
        // Filled in by the transaction, on whichever thread leads the seal.
        let deleted = Arc::new(Mutex::new(vec![false; keys.len()]));
        let (marks, bucket, keys) = (Arc::clone(&deleted), bucket.to_string(), keys.to_vec());
        self.write_records(&records, move |_, tx| {
            let mut marks = marks
                .lock()
                .map_err(|_| StoreError::Config("delete marks poisoned".into()))?;
            for (i, k) in keys.iter().enumerate() {
                if let Some(ex) = catalog::get_object(tx, &bucket, k)?
                    && ex.info.seq < seq
                {
                    catalog::delete_object_row(tx, &bucket, k)?;
                    release_sources(tx, &ex.sources)?;
                    marks[i] = true;
                }
            }
            Ok(())
        })?;
        let out = deleted
            .lock()
            .map_err(|_| StoreError::Config("delete marks poisoned".into()))?
            .clone();
        Ok(out)
    }

    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
    ) -> Result<ObjectInfo> {
        let src = self.object_row(src_bucket, src_key)?;
        let mut meta = meta.unwrap_or_else(|| src.info.meta.clone());
        // A copy has the same bytes, so the same ETag.
        meta.etag = src.info.meta.etag.clone();
        self.commit_sources(dst_bucket, dst_key, src.sources, meta, PutCondition::None)
    }

    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage> {
        self.require_bucket(bucket)?;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut page = ListPage::default();
        if max_keys == 0 {
            return Ok(page);
        }
        let mut cursor = after.unwrap_or("").to_string();
        // Continuing after a common prefix skips everything under it.
        let mut skip_prefix: Option<String> = delimiter.and_then(|d| {
            let rest = cursor.strip_prefix(prefix)?;
            (rest.ends_with(d) && rest.find(d).map(|i| i + d.len()) == Some(rest.len()))
                .then(|| cursor.clone())
        });
        let mut count = 0usize;
        'outer: loop {
            let batch = self
                .catalog
                .read(|c| catalog::list_object_rows(c, bucket, prefix, &cursor, 1000))?;
            if batch.is_empty() {
                break;
            }
            let batch_len = batch.len();
            for row in batch {
                let key = row.info.key.clone();
                cursor = key.clone();
                if let Some(sp) = &skip_prefix
                    && key.starts_with(sp.as_str())
                {
                    continue;
                }
                if count >= max_keys {
                    page.is_truncated = true;
                    break 'outer;
                }
                if let Some(d) = delimiter
                    && let Some(pos) = key[prefix.len()..].find(d)
                {
                    let cp = key[..prefix.len() + pos + d.len()].to_string();
                    page.next_marker = Some(cp.clone());
                    page.common_prefixes.push(cp.clone());
                    count += 1;
                    // Jump past every key under this prefix.
                    cursor = format!("{cp}\u{10FFFF}");
                    skip_prefix = Some(cp);
                    continue 'outer;
                }
                page.next_marker = Some(key);
                page.objects.push(row.info);
                count += 1;
            }
            if batch_len < 1000 {
                break;
            }
        }
        if !page.is_truncated {
            page.next_marker = None;
        }
        Ok(page)
    }

    // ---------------- multipart ----------------

    pub fn create_multipart(&self, bucket: &str, key: &str, meta: ObjectMeta) -> Result<String> {
        self.require_bucket(bucket)?;
        let id = UploadId::random().to_hex();
        let meta_json =
            serde_json::to_string(&meta).map_err(|e| StoreError::Config(e.to_string()))?;
        self.catalog.write(|tx| {
            tx.execute(
                "INSERT INTO multipart(id, bucket, key, initiated_unix_ms, meta_json) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, bucket, key, now_ms() as i64, meta_json],
            )?;
            Ok(())
        })?;
        Ok(id)
    }

    pub fn put_part(
        &self,
        upload_id: &str,
        part_number: u32,
        sealed: SealedUpload,
        checksums: BTreeMap<String, String>,
    ) -> Result<PartInfo> {
        let part = PartRecord::new(upload_id, part_number, checksums)?;
        self.catalog.write(|tx| part.record(tx, &sealed))?;
        Ok(part.info(&sealed))
    }

    pub fn get_multipart(&self, upload_id: &str) -> Result<MultipartUploadInfo> {
        self.catalog.read(|c| mpu_exists(c, upload_id))
    }

    pub fn list_parts(
        &self,
        upload_id: &str,
        after_part: u32,
        max_parts: usize,
    ) -> Result<Vec<PartInfo>> {
        self.catalog.read(|c| {
            mpu_exists(c, upload_id)?;
            parts_of(c, upload_id, after_part, max_parts)
        })
    }

    pub fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after_key: Option<&str>,
        after_upload_id: Option<&str>,
        max: usize,
    ) -> Result<Vec<MultipartUploadInfo>> {
        self.require_bucket(bucket)?;
        self.catalog.read(|c| {
            let mut st = c.prepare(
                "SELECT id, key, initiated_unix_ms, meta_json FROM multipart
                 WHERE bucket = ?1 AND (key > ?2 OR (key = ?2 AND id > ?3)) ORDER BY key, id",
            )?;
            let ak = after_key.unwrap_or("");
            let au = if after_key.is_some() {
                after_upload_id.unwrap_or("\u{10FFFF}")
            } else {
                ""
            };
            let rows = st.query_map(params![bucket, ak, au], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (id, key, at, meta) = r?;
                if !key.starts_with(prefix) {
                    continue;
                }
                out.push(MultipartUploadInfo {
                    upload_id: id,
                    bucket: bucket.to_string(),
                    key,
                    initiated_unix_ms: at as u64,
                    meta: serde_json::from_str(&meta).unwrap_or_default(),
                });
                if out.len() >= max {
                    break;
                }
            }
            Ok(out)
        })
    }

    pub fn abort_multipart(&self, upload_id: &str) -> Result<()> {
        self.catalog.write(|tx| {
            mpu_exists(tx, upload_id)?;
            drop_multipart(tx, upload_id)
        })
    }

    /// `checksums`: the object's composite checksums (e.g. `crc32` = `"<b64>-N"`), stored and echoed on GET/HEAD.
    pub fn complete_multipart(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        checksums: BTreeMap<String, String>,
        cond: PutCondition,
    ) -> Result<ObjectInfo> {
        let (mpu, stored) = self.catalog.read(|c| {
            let mpu = mpu_exists(c, upload_id)?;
            let stored = parts_of(c, upload_id, 0, MAX_PARTS as usize)?;
            Ok((mpu, stored))
        })?;
        if parts.is_empty() {
            return Err(StoreError::InvalidArgument(
                "CompleteMultipartUpload needs at least one part".into(),
            ));
        }
        let mut chosen = Vec::with_capacity(parts.len());
        let mut last = 0u32;
        for (i, (num, etag)) in parts.iter().enumerate() {
            if *num <= last {
                return Err(StoreError::InvalidPartOrder);
            }
            last = *num;
            let Some(p) = stored.iter().find(|p| p.part_number == *num) else {
                return Err(StoreError::InvalidPart {
                    part_number: *num,
                    reason: "was not uploaded".into(),
                });
            };
            if unquote(etag) != unquote(&p.etag) {
                return Err(StoreError::InvalidPart {
                    part_number: *num,
                    reason: "ETag does not match".into(),
                });
            }
            if i + 1 < parts.len() && p.size < MIN_PART_SIZE {
                return Err(StoreError::EntityTooSmall {
                    part_number: *num,
                    size: p.size,
                });
            }
            chosen.push(*num);
        }
        let sources: Vec<(SourceRef, [u8; 16])> = self.catalog.read(|c| {
            chosen
                .iter()
                .map(|num| {
                    let (uid, size, md5, segments): (Vec<u8>, i64, Vec<u8>, u32) = c.query_row(
                        "SELECT p.upload_id, p.size, p.md5, u.segments FROM parts p JOIN uploads u ON u.id = p.upload_id
                         WHERE p.mpu_id = ?1 AND p.part_number = ?2",
                        params![upload_id, num],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )?;
                    let uid = UploadId(uid.try_into().map_err(|_| StoreError::Config("bad upload id".into()))?);
                    let md5: [u8; 16] = md5.try_into().map_err(|_| StoreError::Config("bad md5".into()))?;
                    Ok((SourceRef { upload_id: uid.to_hex(), segments, size: size as u64 }, md5))
                })
                .collect()
        })?;
        let mut meta = mpu.meta.clone();
        meta.etag = Some(multipart_etag(sources.iter().map(|s| s.1)));
        meta.checksums = checksums;
        let refs: Vec<SourceRef> = sources.into_iter().map(|s| s.0).collect();
        let info = self.commit_sources(&mpu.bucket, &mpu.key, refs, meta, cond)?;
        // The object holds its own references now; drop the parts' (unused parts are released here).
        self.catalog.write(|tx| drop_multipart(tx, upload_id))?;
        Ok(info)
    }

    pub fn expire_multipart_older_than(&self, age: Duration) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        let ids: Vec<String> = self.catalog.read(|c| {
            let mut st = c.prepare("SELECT id FROM multipart WHERE initiated_unix_ms < ?1")?;
            let ids = st
                .query_map([cutoff as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(ids)
        })?;
        for id in &ids {
            self.catalog.write(|tx| drop_multipart(tx, id))?;
        }
        Ok(ids.len())
    }
}

/// `"<md5 of the concatenated part MD5s>-<N>"`, as S3 computes multipart ETags.
pub fn multipart_etag(md5s: impl Iterator<Item = [u8; 16]>) -> String {
    let mut h = Md5::new();
    let mut n = 0;
    for m in md5s {
        h.update(m);
        n += 1;
    }
    format!("\"{}-{n}\"", hex::encode(md5_bytes(h)))
}

fn source_upload(s: &SourceRef) -> Result<UploadId> {
    UploadId::from_hex(&s.upload_id).ok_or_else(|| {
        StoreError::Config(format!("catalog: malformed upload id {:?}", s.upload_id))
    })
}

fn release_sources(tx: &rusqlite::Connection, sources: &[SourceRef]) -> Result<()> {
    for s in sources {
        catalog::add_upload_refs(tx, &source_upload(s)?, -1)?;
    }
    Ok(())
}

fn mpu_exists(c: &rusqlite::Connection, id: &str) -> Result<MultipartUploadInfo> {
    c.query_row(
        "SELECT bucket, key, initiated_unix_ms, meta_json FROM multipart WHERE id = ?1",
        [id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        },
    )
    .optional()?
    .map(|(bucket, key, at, meta)| MultipartUploadInfo {
        upload_id: id.to_string(),
        bucket,
        key,
        initiated_unix_ms: at as u64,
        meta: serde_json::from_str(&meta).unwrap_or_default(),
    })
    .ok_or_else(|| StoreError::NoSuchUpload(id.to_string()))
}

fn parts_of(c: &rusqlite::Connection, id: &str, after: u32, max: usize) -> Result<Vec<PartInfo>> {
    let mut st = c.prepare(
        "SELECT part_number, md5, size, modified_unix_ms, checksums_json FROM parts
         WHERE mpu_id = ?1 AND part_number > ?2 ORDER BY part_number LIMIT ?3",
    )?;
    let rows = st.query_map(params![id, after, max as i64], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (part_number, md5, size, at, cks) = r?;
        out.push(PartInfo {
            part_number,
            etag: format!("\"{}\"", hex::encode(md5)),
            size: size as u64,
            last_modified_unix_ms: at as u64,
            checksums: serde_json::from_str(&cks).unwrap_or_default(),
        });
    }
    Ok(out)
}

fn drop_multipart(tx: &rusqlite::Connection, id: &str) -> Result<()> {
    let uploads: Vec<Vec<u8>> = {
        let mut st = tx.prepare("SELECT upload_id FROM parts WHERE mpu_id = ?1")?;
        st.query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for u in uploads {
        if let Ok(u) = <[u8; 16]>::try_from(u) {
            catalog::add_upload_refs(tx, &UploadId(u), -1)?;
        }
    }
    tx.execute("DELETE FROM parts WHERE mpu_id = ?1", [id])?;
    tx.execute("DELETE FROM multipart WHERE id = ?1", [id])?;
    Ok(())
}

/// A part to be recorded for a multipart upload: in its own transaction (`put_part`) or in the one that seals
/// the part's upload (`Upload::finish_part`, one catalog commit per part instead of two).
#[derive(Clone, Debug)]
pub struct PartRecord {
    mpu_id: String,
    part_number: u32,
    checksums: BTreeMap<String, String>,
    checksums_json: String,
    now: u64,
}

impl PartRecord {
    pub fn new(
        mpu_id: &str,
        part_number: u32,
        checksums: BTreeMap<String, String>,
    ) -> Result<PartRecord> {
        if !(1..=MAX_PARTS).contains(&part_number) {
            return Err(StoreError::InvalidArgument(format!(
                "part number must be 1..={MAX_PARTS}"
            )));
        }
        let checksums_json =
            serde_json::to_string(&checksums).map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(PartRecord {
            mpu_id: mpu_id.to_string(),
            part_number,
            checksums,
            checksums_json,
            now: now_ms(),
        })
    }

    pub(crate) fn mpu_id(&self) -> &str {
        &self.mpu_id
    }

    /// Records the part (replacing an earlier upload of the same number, whose reference it drops).
    pub(crate) fn record(&self, tx: &Transaction<'_>, sealed: &SealedUpload) -> Result<()> {
        mpu_exists(tx, &self.mpu_id)?;
        let old: Option<Vec<u8>> = tx
            .query_row(
                "SELECT upload_id FROM parts WHERE mpu_id = ?1 AND part_number = ?2",
                params![self.mpu_id, self.part_number],
                |r| r.get(0),
            )
            .optional()?;
        catalog::add_upload_refs(tx, &sealed.upload_id, 1)?;
        tx.execute(
            "INSERT OR REPLACE INTO parts(mpu_id, part_number, upload_id, size, md5, checksums_json, modified_unix_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                self.mpu_id,
                self.part_number,
                &sealed.upload_id.0[..],
                sealed.size as i64,
                &sealed.md5[..],
                self.checksums_json,
                self.now as i64
            ],
        )?;
        if let Some(old) = old.and_then(|o| o.try_into().ok()).map(UploadId) {
            catalog::add_upload_refs(tx, &old, -1)?;
        }
        Ok(())
    }

    pub(crate) fn info(self, sealed: &SealedUpload) -> PartInfo {
        PartInfo {
            part_number: self.part_number,
            etag: format!("\"{}\"", hex::encode(sealed.md5)),
            size: sealed.size,
            last_modified_unix_ms: self.now,
            checksums: self.checksums,
        }
    }
}
