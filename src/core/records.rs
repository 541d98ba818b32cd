//! Record payloads stored in containers: manifest segments (storage-format.md §4.2, binary), object commits
//! (§4.3), bucket records and tombstones (§4.4, JSON).

use serde::{Deserialize, Serialize};

use super::container::{MAX_RAW_CHUNK_LEN, array, le_u32, le_u64};
use super::error::CoreError;
use super::ids::{ChunkId, UploadId};
use crate::store::api::ObjectMeta;

pub const SEGMENT_HEADER_LEN: usize = 32;
pub const SEGMENT_ENTRY_LEN: usize = 36;
/// The `v` of every JSON record written by this version.
pub const RECORD_VERSION: u32 = 1;

fn malformed(what: &'static str, detail: impl Into<String>) -> CoreError {
    CoreError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Which chunks, in order, make up a stretch of one upload (§4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRecord {
    pub upload: UploadId,
    pub segment_no: u32,
    /// Offset of the segment's first byte within the upload.
    pub logical_start: u64,
    /// (chunk id, raw length).
    pub entries: Vec<(ChunkId, u32)>,
}

impl SegmentRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEGMENT_HEADER_LEN + SEGMENT_ENTRY_LEN * self.entries.len());
        b.extend_from_slice(&self.upload.0);
        b.extend_from_slice(&self.segment_no.to_le_bytes());
        let n = u32::try_from(self.entries.len()).expect("segment of over 4 billion chunks");
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&self.logical_start.to_le_bytes());
        b.extend_from_slice(&encode_segment_entries(&self.entries));
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentRecord, CoreError> {
        const W: &str = "segment record";
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(malformed(W, format!("{} bytes", b.len())));
        }
        let short = || malformed(W, "short");
        let upload = UploadId(array::<16>(b, 0).ok_or_else(short)?);
        let segment_no = le_u32(b, 16).ok_or_else(short)?;
        let n = le_u32(b, 20).ok_or_else(short)?;
        let logical_start = le_u64(b, 24).ok_or_else(short)?;
        let body = &b[SEGMENT_HEADER_LEN..];
        if body.len() as u64 != u64::from(n) * SEGMENT_ENTRY_LEN as u64 {
            return Err(malformed(
                W,
                format!("{n} entries but {} bytes of entries", body.len()),
            ));
        }
        Ok(SegmentRecord {
            upload,
            segment_no,
            logical_start,
            entries: decode_segment_entries(body)?,
        })
    }

    /// Sum of the entries' raw lengths.
    pub fn logical_len(&self) -> u64 {
        self.entries.iter().map(|(_, n)| u64::from(*n)).sum()
    }
}

/// Encodes just the entries (32-byte id + u32 LE raw length each); the catalog stores this blob.
pub fn encode_segment_entries(entries: &[(ChunkId, u32)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(SEGMENT_ENTRY_LEN * entries.len());
    for (id, len) in entries {
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(&len.to_le_bytes());
    }
    b
}

/// Inverse of [`encode_segment_entries`]; raw lengths must be 1..=16 MiB (§4.1).
pub fn decode_segment_entries(b: &[u8]) -> Result<Vec<(ChunkId, u32)>, CoreError> {
    const W: &str = "segment entries";
    if !b.len().is_multiple_of(SEGMENT_ENTRY_LEN) {
        return Err(malformed(
            W,
            format!("{} bytes is not a multiple of {SEGMENT_ENTRY_LEN}", b.len()),
        ));
    }
    b.chunks_exact(SEGMENT_ENTRY_LEN)
        .map(|e| {
            let id = ChunkId(array::<32>(e, 0).ok_or_else(|| malformed(W, "short"))?);
            let len = le_u32(e, 32).ok_or_else(|| malformed(W, "short"))?;
            if !(1..=MAX_RAW_CHUNK_LEN).contains(&len) {
                return Err(malformed(W, format!("chunk raw length {len}")));
            }
            Ok((id, len))
        })
        .collect()
}

/// One source of an object: a sealed upload (§4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// 32 lowercase hex digits.
    pub upload_id: String,
    pub segments: u32,
    pub size: u64,
}

impl SourceRef {
    pub fn new(upload: UploadId, segments: u32, size: u64) -> SourceRef {
        SourceRef {
            upload_id: upload.to_hex(),
            segments,
            size,
        }
    }

    /// The parsed upload id (records are validated on decode, so this fails only for hand-built values).
    pub fn upload(&self) -> Result<UploadId, CoreError> {
        UploadId::from_hex(&self.upload_id)
            .ok_or_else(|| malformed("source ref", format!("upload id {:?}", self.upload_id)))
    }
}

/// Object commit (§4.3). `meta`'s fields are flattened into the top-level JSON object, as the spec lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCommitRecord {
    pub v: u32,
    pub bucket: String,
    pub key: String,
    pub seq: u64,
    pub size: u64,
    pub created_unix_ms: u64,
    #[serde(flatten)]
    pub meta: ObjectMeta,
    pub sources: Vec<SourceRef>,
}

/// Bucket created or deleted (§4.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub v: u32,
    pub bucket: String,
    pub created_unix_ms: u64,
    pub seq: u64,
    pub deleted: bool,
}

/// Object deleted (§4.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneRecord {
    pub v: u32,
    pub bucket: String,
    pub key: String,
    pub seq: u64,
}

fn to_json<T: Serialize>(r: &T) -> Vec<u8> {
    // Cannot fail: plain structs with string keys.
    serde_json::to_vec(r).expect("record serializes")
}

fn from_json<'a, T: Deserialize<'a>>(what: &'static str, b: &'a [u8]) -> Result<T, CoreError> {
    serde_json::from_slice(b).map_err(|e| malformed(what, e.to_string()))
}

fn check_version(what: &'static str, v: u32) -> Result<(), CoreError> {
    if v != RECORD_VERSION {
        return Err(malformed(what, format!("unsupported version {v}")));
    }
    Ok(())
}

impl ObjectCommitRecord {
    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Rejects `v != 1` and source upload ids that are not 32 hex digits.
    pub fn decode(b: &[u8]) -> Result<ObjectCommitRecord, CoreError> {
        const W: &str = "object commit record";
        let r: ObjectCommitRecord = from_json(W, b)?;
        check_version(W, r.v)?;
        for s in &r.sources {
            s.upload()?;
        }
        Ok(r)
    }
}

impl BucketRecord {
    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(b: &[u8]) -> Result<BucketRecord, CoreError> {
        const W: &str = "bucket record";
        let r: BucketRecord = from_json(W, b)?;
        check_version(W, r.v)?;
        Ok(r)
    }
}

impl TombstoneRecord {
    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(b: &[u8]) -> Result<TombstoneRecord, CoreError> {
        const W: &str = "tombstone record";
        let r: TombstoneRecord = from_json(W, b)?;
        check_version(W, r.v)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_commit() -> ObjectCommitRecord {
        ObjectCommitRecord {
            v: 1,
            bucket: "photos".into(),
            key: "2024/cat.jpg".into(),
            seq: 1_700_000_000_000_000_001,
            size: 12345,
            created_unix_ms: 1_700_000_000_000,
            meta: ObjectMeta {
                etag: Some("\"9e107d9d372bb6826bd81d3542a419d6\"".into()),
                content_type: Some("image/jpeg".into()),
                headers: BTreeMap::from([("cache-control".into(), "no-cache".into())]),
                user_meta: BTreeMap::from([("camera".into(), "x100".into())]),
                checksums: BTreeMap::from([("crc32".into(), "AAAAAA==".into())]),
            },
            sources: vec![SourceRef::new(UploadId([0xab; 16]), 2, 12345)],
        }
    }

    #[test]
    fn commit_json_shape() {
        let r = sample_commit();
        let v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        // §4.3: etag, content_type, user_meta, checksums sit at the top level
        assert_eq!(v["etag"], "\"9e107d9d372bb6826bd81d3542a419d6\"");
        assert_eq!(v["content_type"], "image/jpeg");
        assert_eq!(v["user_meta"]["camera"], "x100");
        assert_eq!(v["sources"][0]["upload_id"], "ab".repeat(16));
        assert_eq!(ObjectCommitRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn rejects_other_versions_and_bad_ids() {
        let mut r = sample_commit();
        r.v = 2;
        assert!(ObjectCommitRecord::decode(&r.encode()).is_err());
        let mut r = sample_commit();
        r.sources[0].upload_id = "zz".into();
        assert!(ObjectCommitRecord::decode(&r.encode()).is_err());
        let b = BucketRecord {
            v: 0,
            bucket: "b".into(),
            created_unix_ms: 1,
            seq: 2,
            deleted: false,
        };
        assert!(BucketRecord::decode(&b.encode()).is_err());
        let t = TombstoneRecord {
            v: 3,
            bucket: "b".into(),
            key: "k".into(),
            seq: 4,
        };
        assert!(TombstoneRecord::decode(&t.encode()).is_err());
        assert!(TombstoneRecord::decode(b"not json").is_err());
    }

    #[test]
    fn segment_layout() {
        let s = SegmentRecord {
            upload: UploadId([1; 16]),
            segment_no: 3,
            logical_start: 1 << 40,
            entries: vec![(ChunkId([2; 32]), 100), (ChunkId([3; 32]), 200)],
        };
        let b = s.encode();
        assert_eq!(b.len(), 32 + 72);
        assert_eq!(&b[16..20], &3u32.to_le_bytes());
        assert_eq!(&b[20..24], &2u32.to_le_bytes());
        assert_eq!(&b[32 + 32..32 + 36], &100u32.to_le_bytes());
        assert_eq!(s.logical_len(), 300);
        assert!(decode_segment_entries(&[0; 35]).is_err());
        let mut zero_len = encode_segment_entries(&s.entries);
        zero_len[32..36].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode_segment_entries(&zero_len).is_err());
    }

    fn segment() -> impl Strategy<Value = SegmentRecord> {
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec((any::<[u8; 32]>(), 1..=MAX_RAW_CHUNK_LEN), 0..20),
        )
            .prop_map(|(u, s, l, e)| SegmentRecord {
                upload: UploadId(u),
                segment_no: s,
                logical_start: l,
                entries: e.into_iter().map(|(id, n)| (ChunkId(id), n)).collect(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn segment_round_trip(s in segment()) {
            prop_assert_eq!(SegmentRecord::decode(&s.encode()), Ok(s.clone()));
            prop_assert_eq!(decode_segment_entries(&encode_segment_entries(&s.entries)), Ok(s.entries));
        }

        #[test]
        fn json_round_trips(
            bucket in "[a-z0-9.-]{3,20}", key in "\\PC{0,40}", seq: u64, size: u64, ts: u64, deleted: bool,
            user in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,10}", 0..4),
        ) {
            let mut c = sample_commit();
            c.bucket = bucket.clone();
            c.key = key.clone();
            c.seq = seq;
            c.size = size;
            c.meta.user_meta = user;
            prop_assert_eq!(ObjectCommitRecord::decode(&c.encode()), Ok(c));
            let b = BucketRecord { v: 1, bucket: bucket.clone(), created_unix_ms: ts, seq, deleted };
            prop_assert_eq!(BucketRecord::decode(&b.encode()), Ok(b));
            let t = TombstoneRecord { v: 1, bucket, key, seq };
            prop_assert_eq!(TombstoneRecord::decode(&t.encode()), Ok(t));
        }

        #[test]
        fn mutated_never_panics(s in segment(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut: usize, truncate: bool) {
            let mut segs = s.encode();
            let mut json = sample_commit().encode();
            for buf in [&mut segs, &mut json] {
                for &(at, x) in &flips {
                    let n = buf.len();
                    buf[at % n] ^= x;
                }
                if truncate {
                    buf.truncate(cut % (buf.len() + 1));
                }
            }
            let _ = SegmentRecord::decode(&segs);
            let _ = decode_segment_entries(segs.get(SEGMENT_HEADER_LEN..).unwrap_or(&[]));
            let _ = ObjectCommitRecord::decode(&json);
            let _ = BucketRecord::decode(&json);
            let _ = TombstoneRecord::decode(&json);
        }
    }
}
