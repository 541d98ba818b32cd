//! Shard file codec (storage-format.md §3): 64-byte header, payload of S bytes, 48-byte trailer. Format 2
//! (written since session 7) checks the payload with XXH3-128; format 1 (BLAKE3) is read forever.

use super::container::{array, le_u16, le_u64};
use super::erasure::Geometry;
use super::error::CoreError;
use super::ids::{ContainerId, StoreId};

pub const SHARD_HEADER_LEN: usize = 64;
pub const SHARD_TRAILER_LEN: usize = 48;
pub const SHARD_MAGIC: [u8; 8] = *b"CAIRNSHD";
pub const SHARD_END_MAGIC: [u8; 8] = *b"CAIRNEND";
/// The format written. Versions 1 and 2 differ only in the trailer's payload checksum (§3).
pub const SHARD_VERSION: u16 = 2;
/// Format 1: the trailer holds the payload's BLAKE3.
pub const SHARD_VERSION_BLAKE3: u16 = 1;

fn malformed(what: &'static str, detail: impl Into<String>) -> CoreError {
    CoreError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// The fixed header of a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub k: u8,
    pub m: u8,
    pub index: u8,
    pub container: ContainerId,
    pub store: StoreId,
    /// Container length L.
    pub container_len: u64,
    /// Shard payload length S.
    pub shard_len: u64,
}

impl ShardHeader {
    pub fn encode(&self) -> [u8; SHARD_HEADER_LEN] {
        self.encode_as(SHARD_VERSION)
    }

    fn encode_as(&self, version: u16) -> [u8; SHARD_HEADER_LEN] {
        let mut b = [0u8; SHARD_HEADER_LEN];
        b[..8].copy_from_slice(&SHARD_MAGIC);
        b[8..10].copy_from_slice(&version.to_le_bytes());
        b[10] = self.k;
        b[11] = self.m;
        b[12] = self.index;
        b[16..24].copy_from_slice(&self.container.0.to_le_bytes());
        b[24..40].copy_from_slice(&self.store.0);
        b[40..48].copy_from_slice(&self.container_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.shard_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the header at the start of `b`. Besides magic, version, CRC and reserved bytes it checks that
    /// the geometry is valid, `index < k+m`, and `S` is the shard length §3 derives from `L` and `k`.
    /// The caller still compares container id, index and store id with what it expected.
    pub fn decode(b: &[u8]) -> Result<ShardHeader, CoreError> {
        const W: &str = "shard header";
        let b = b
            .get(..SHARD_HEADER_LEN)
            .ok_or_else(|| malformed(W, format!("{} bytes, need {SHARD_HEADER_LEN}", b.len())))?;
        if b[..8] != SHARD_MAGIC {
            return Err(malformed(W, "bad magic"));
        }
        let crc = u32::from_le_bytes(array::<4>(b, 60).ok_or_else(|| malformed(W, "short"))?);
        if crc32fast::hash(&b[..60]) != crc {
            return Err(malformed(W, "CRC mismatch"));
        }
        let version = le_u16(b, 8).ok_or_else(|| malformed(W, "short"))?;
        if version != SHARD_VERSION && version != SHARD_VERSION_BLAKE3 {
            return Err(malformed(W, format!("unsupported version {version}")));
        }
        if b[13..16] != [0; 3] || b[56..60] != [0; 4] {
            return Err(malformed(W, "reserved bytes not zero"));
        }
        let h = ShardHeader {
            k: b[10],
            m: b[11],
            index: b[12],
            container: ContainerId(le_u64(b, 16).ok_or_else(|| malformed(W, "short"))?),
            store: StoreId(array::<16>(b, 24).ok_or_else(|| malformed(W, "short"))?),
            container_len: le_u64(b, 40).ok_or_else(|| malformed(W, "short"))?,
            shard_len: le_u64(b, 48).ok_or_else(|| malformed(W, "short"))?,
        };
        let g = Geometry::new(h.k, h.m).map_err(|e| malformed(W, e.to_string()))?;
        if usize::from(h.index) >= g.width() {
            return Err(malformed(W, format!("index {} of {}", h.index, g.width())));
        }
        if g.shard_len_u64(h.container_len) != Some(h.shard_len) {
            return Err(malformed(
                W,
                format!(
                    "shard length {} does not fit container length {}",
                    h.shard_len, h.container_len
                ),
            ));
        }
        Ok(h)
    }

    pub fn geometry(&self) -> Result<Geometry, CoreError> {
        Geometry::new(self.k, self.m)
    }

    /// Size of the whole file, S + 112.
    pub fn file_len(&self) -> u64 {
        self.shard_len
            .saturating_add((SHARD_HEADER_LEN + SHARD_TRAILER_LEN) as u64)
    }
}

/// The trailer of a shard file written now: payload checksum (§3, format 2), S, magic `CAIRNEND`.
pub fn encode_trailer(payload: &[u8]) -> [u8; SHARD_TRAILER_LEN] {
    encode_trailer_as(SHARD_VERSION, payload)
}

fn encode_trailer_as(version: u16, payload: &[u8]) -> [u8; SHARD_TRAILER_LEN] {
    let mut t = [0u8; SHARD_TRAILER_LEN];
    t[..32].copy_from_slice(&payload_checksum(version, payload));
    t[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    t[40..48].copy_from_slice(&SHARD_END_MAGIC);
    t
}

/// The trailer's 32-byte checksum field: format 1 BLAKE3; format 2 XXH3-128 (little endian) and 16 zero
/// bytes. Why XXH3 (README, "Shard checksums"): chunk reads verify every chunk's BLAKE3 whatever this holds;
/// the trailer only tells scrub and rebuild which shard went bad, and BLAKE3 of every shard was ~2.5% of
/// unique ingest and ~9% of scrub. XXH3-128 runs ~5.6x faster on a 2 MiB shard here and misses a corruption
/// with probability ~2^-128, like BLAKE3 for any error that is not made on purpose. Computed with twox-hash,
/// which picks AVX2 at run time: xxhash-rust (which wrote format 2 until session 29, bit for bit the same)
/// compiles only the SSE2 loop without `-C target-cpu`. `cargo bench --bench stages`, group `shard_checksum`:
/// a shard not in any cache (as scrub hashes one it has just read with O_DIRECT) 7.4 GiB/s against
/// twox-hash's 10.5, one in cache 21 against 32; scrub's CPU for 2 GB fell ~9% (2.40 -> 2.19 s).
fn payload_checksum(version: u16, payload: &[u8]) -> [u8; 32] {
    let mut c = [0u8; 32];
    if version == SHARD_VERSION_BLAKE3 {
        c.copy_from_slice(blake3::hash(payload).as_bytes());
    } else {
        c[..16].copy_from_slice(&twox_hash::XxHash3_128::oneshot(payload).to_le_bytes());
    }
    c
}

/// Checks trailer magic, repeated length and the payload checksum of a shard file of this format `version`.
pub fn check_trailer(version: u16, trailer: &[u8], payload: &[u8]) -> Result<(), CoreError> {
    const W: &str = "shard trailer";
    if trailer.len() != SHARD_TRAILER_LEN {
        return Err(malformed(W, format!("{} bytes", trailer.len())));
    }
    if trailer[40..48] != SHARD_END_MAGIC {
        return Err(malformed(W, "bad magic"));
    }
    if le_u64(trailer, 32) != Some(payload.len() as u64) {
        return Err(malformed(W, "length does not match the payload"));
    }
    if trailer[..32] != payload_checksum(version, payload) {
        return Err(CoreError::HashMismatch {
            what: "shard payload",
        });
    }
    Ok(())
}

/// Whole-file check used by scrub and catalog rebuild: header, size == S+112, trailer hash. Returns the
/// header.
pub fn verify_shard_file(bytes: &[u8]) -> Result<ShardHeader, CoreError> {
    let h = ShardHeader::decode(bytes)?;
    if bytes.len() as u64 != h.file_len() {
        return Err(malformed(
            "shard file",
            format!(
                "{} bytes, header says {} (torn?)",
                bytes.len(),
                h.file_len()
            ),
        ));
    }
    // `decode` accepted the version.
    let version = le_u16(bytes, 8).unwrap_or(SHARD_VERSION);
    let trailer_at = bytes.len() - SHARD_TRAILER_LEN;
    check_trailer(
        version,
        &bytes[trailer_at..],
        &bytes[SHARD_HEADER_LEN..trailer_at],
    )?;
    Ok(h)
}

/// Builds a whole shard file (header + payload + trailer), for writers and tests.
pub fn encode_shard_file(header: &ShardHeader, payload: &[u8]) -> Vec<u8> {
    encode_shard_file_as(SHARD_VERSION, header, payload)
}

/// [`encode_shard_file`] in an older format `version` (tests of what older stores hold).
pub fn encode_shard_file_as(version: u16, header: &ShardHeader, payload: &[u8]) -> Vec<u8> {
    debug_assert_eq!(header.shard_len, payload.len() as u64);
    let mut out = Vec::with_capacity(payload.len() + SHARD_HEADER_LEN + SHARD_TRAILER_LEN);
    out.extend_from_slice(&header.encode_as(version));
    out.extend_from_slice(payload);
    out.extend_from_slice(&encode_trailer_as(version, payload));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(k: u8, m: u8, index: u8, len: u64) -> ShardHeader {
        let g = Geometry::new(k, m).unwrap();
        ShardHeader {
            k,
            m,
            index,
            container: ContainerId(0x1234_5678),
            store: StoreId([7; 16]),
            container_len: len,
            shard_len: g.shard_len_u64(len).unwrap(),
        }
    }

    fn file(len: u64) -> Vec<u8> {
        file_as(SHARD_VERSION, len)
    }

    fn file_as(version: u16, len: u64) -> Vec<u8> {
        let h = header(4, 2, 5, len);
        let payload: Vec<u8> = (0..h.shard_len).map(|i| (i * 7) as u8).collect();
        encode_shard_file_as(version, &h, &payload)
    }

    #[test]
    fn verify_good_file() {
        let f = file(1000);
        assert_eq!(f.len(), 256 + 112);
        assert_eq!(verify_shard_file(&f).unwrap(), header(4, 2, 5, 1000));
    }

    #[test]
    fn detects_damage() {
        for version in [SHARD_VERSION, SHARD_VERSION_BLAKE3] {
            let f = file_as(version, 1000);
            assert_eq!(verify_shard_file(&f).unwrap(), header(4, 2, 5, 1000));
            let mut torn = f.clone();
            torn.pop();
            assert!(matches!(
                verify_shard_file(&torn),
                Err(CoreError::Malformed { .. })
            ));
            let mut rot = f.clone();
            rot[SHARD_HEADER_LEN + 3] ^= 4;
            assert_eq!(
                verify_shard_file(&rot),
                Err(CoreError::HashMismatch {
                    what: "shard payload"
                })
            );
            let mut hdr = f.clone();
            hdr[17] ^= 1;
            assert!(verify_shard_file(&hdr).is_err());
            let mut end = f;
            let n = end.len();
            end[n - 1] = b'X';
            assert!(verify_shard_file(&end).is_err());
        }
    }

    #[test]
    fn each_format_is_checked_by_its_own_checksum() {
        let v2 = file(1000);
        let v1 = file_as(SHARD_VERSION_BLAKE3, 1000);
        assert_eq!(&v2[8..10], &2u16.to_le_bytes());
        assert_eq!(&v1[8..10], &1u16.to_le_bytes());
        let trailer = |f: &[u8]| f.len() - SHARD_TRAILER_LEN;
        // Format 2: XXH3-128 of the payload, then 16 zero bytes.
        let t = trailer(&v2);
        let payload = &v2[SHARD_HEADER_LEN..t];
        assert_eq!(
            v2[t..t + 16],
            xxhash_rust::xxh3::xxh3_128(payload).to_le_bytes()
        );
        assert_eq!(v2[t + 16..t + 32], [0u8; 16]);
        // A shard-sized payload too (the proptest above stays below 9000 bytes).
        let big: Vec<u8> = (0..(2u32 << 20) + 77)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(
            payload_checksum(SHARD_VERSION, &big)[..16],
            xxhash_rust::xxh3::xxh3_128(&big).to_le_bytes()
        );
        let mut stray = v2.clone();
        stray[t + 20] = 1;
        assert!(verify_shard_file(&stray).is_err(), "reserved bytes checked");
        // Format 1: BLAKE3 of the same payload.
        let t1 = trailer(&v1);
        assert_eq!(v1[t1..t1 + 32], *blake3::hash(payload).as_bytes());
        // A header that names the other format fails the checksum: the version decides.
        let mut relabelled = v2.clone();
        relabelled[8..10].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32fast::hash(&relabelled[..60]);
        relabelled[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            verify_shard_file(&relabelled),
            Err(CoreError::HashMismatch {
                what: "shard payload"
            })
        );
        let mut unknown = v2;
        unknown[8..10].copy_from_slice(&3u16.to_le_bytes());
        let crc = crc32fast::hash(&unknown[..60]);
        unknown[60..64].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            verify_shard_file(&unknown),
            Err(CoreError::Malformed { .. })
        ));
    }

    #[test]
    fn header_consistency_checked() {
        let mut h = header(4, 2, 6, 1000);
        assert!(ShardHeader::decode(&h.encode()).is_err()); // index out of range
        h.index = 0;
        h.shard_len += 64;
        assert!(ShardHeader::decode(&h.encode()).is_err());
        h.shard_len -= 64;
        h.k = 1;
        assert!(ShardHeader::decode(&h.encode()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn header_round_trip(k in 2u8..=16, m in 1u8..=3, idx: u8, len: u64, c: u64, s: [u8; 16]) {
            let g = Geometry::new(k, m).unwrap();
            let h = ShardHeader {
                k, m, index: idx % g.width() as u8, container: ContainerId(c), store: StoreId(s),
                container_len: len, shard_len: g.shard_len_u64(len).unwrap(),
            };
            prop_assert_eq!(ShardHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn trailer_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..1000)) {
            prop_assert_eq!(check_trailer(SHARD_VERSION, &encode_trailer(&payload), &payload), Ok(()));
            let v1 = encode_trailer_as(SHARD_VERSION_BLAKE3, &payload);
            prop_assert_eq!(check_trailer(SHARD_VERSION_BLAKE3, &v1, &payload), Ok(()));
        }

        /// Format 2 trailers were written with xxhash-rust's `xxh3_128` before session 29; the store now
        /// computes them with twox-hash. Every length class of XXH3 (0-16, 17-128, 129-240 bytes, then
        /// stripes, whole 1 KiB blocks and a partial last stripe) must give the same 128 bits, or shards
        /// written before would read as bad.
        #[test]
        fn trailer_checksum_is_the_xxh3_128_written_before(payload in proptest::collection::vec(any::<u8>(), 0..9000), cut: usize) {
            let payload = &payload[..cut % (payload.len() + 1)];
            prop_assert_eq!(
                &payload_checksum(SHARD_VERSION, payload)[..16],
                &xxhash_rust::xxh3::xxh3_128(payload).to_le_bytes()[..]
            );
        }

        #[test]
        fn mutated_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut: usize, truncate: bool) {
            let mut f = file(700);
            for (at, x) in flips {
                let n = f.len();
                f[at % n] ^= x;
            }
            if truncate {
                f.truncate(cut % (f.len() + 1));
            }
            let _ = verify_shard_file(&f);
            let _ = ShardHeader::decode(&f);
            let split = cut % (f.len() + 1);
            let _ = check_trailer(SHARD_VERSION, &f[split..], &f[..split]);
        }
    }
}

/// Golden test pinning format v1 forever (and shard format 2 since): a deterministic container, its 4+2 shard
/// files, and their BLAKE3.
/// If this fails, the on-disk bytes changed: add a format version and a read path, never edit the constants.
#[cfg(test)]
mod golden_v1 {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::container::{
        Codec, ContainerBuilder, EntryType, compress_chunk, decode_chunk, parse_container,
    };
    use crate::core::erasure::Erasure;
    use crate::core::ids::{ChunkId, UploadId};
    use crate::core::records::{
        BucketRecord, ObjectCommitRecord, SegmentRecord, SourceRef, TombstoneRecord,
    };
    use crate::store::api::ObjectMeta;

    /// A zstd frame (level 3) of `TEXT`, pasted as bytes so a zstd upgrade cannot change the golden layout.
    const TEXT: &[u8] =
        b"cairn golden chunk. cairn golden chunk. cairn golden chunk. cairn golden chunk. ";
    const TEXT_ZSTD_HEX: &str =
        "28b52ffd2050dd0000a0636169726e20676f6c64656e206368756e6b2e20010072d26402";

    /// Builds the golden container: one raw chunk, one zstd chunk, and one record of each type.
    fn golden_container() -> Vec<u8> {
        let raw: Vec<u8> = (0u16..300).map(|i| (i * 31 % 251) as u8).collect();
        let zstd = hex::decode(TEXT_ZSTD_HEX).unwrap();
        let upload = UploadId([0x11; 16]);
        let mut b =
            ContainerBuilder::with_version(ContainerId(0x0123_4567_89ab), 1_700_000_000_000, 0, 1);
        b.push_chunk(&ChunkId::of(&raw), Codec::Raw, raw.len() as u32, &raw);
        b.push_chunk(&ChunkId::of(TEXT), Codec::Zstd, TEXT.len() as u32, &zstd);
        let seg = SegmentRecord {
            upload,
            segment_no: 0,
            logical_start: 0,
            entries: vec![
                (ChunkId::of(&raw), 300),
                (ChunkId::of(TEXT), TEXT.len() as u32),
            ],
        };
        b.push_record(EntryType::Segment, &seg.encode());
        let commit = ObjectCommitRecord {
            v: 1,
            bucket: "golden".into(),
            key: "dir/object.bin".into(),
            seq: 1_700_000_000_000_000_000,
            size: 300 + TEXT.len() as u64,
            created_unix_ms: 1_700_000_000_000,
            meta: ObjectMeta {
                etag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
                content_type: Some("application/octet-stream".into()),
                headers: BTreeMap::new(),
                user_meta: BTreeMap::from([("k".into(), "v".into())]),
                checksums: BTreeMap::new(),
            },
            sources: vec![SourceRef::new(upload, 1, 300 + TEXT.len() as u64)],
        };
        b.push_record(EntryType::Commit, &commit.encode());
        let bucket = BucketRecord {
            v: 1,
            bucket: "golden".into(),
            created_unix_ms: 1_699_999_999_000,
            seq: 1_699_999_999_000_000_000,
            deleted: false,
        };
        b.push_record(EntryType::Bucket, &bucket.encode());
        let tomb = TombstoneRecord {
            v: 1,
            bucket: "golden".into(),
            key: "old".into(),
            seq: 1_700_000_000_000_000_001,
        };
        b.push_record(EntryType::Tombstone, &tomb.encode());
        b.seal()
    }

    /// The shard files of format `version` (1: BLAKE3 trailers, pinned below; 2: XXH3-128 trailers).
    fn golden_shard_files_as(version: u16, container: &[u8]) -> Vec<Vec<u8>> {
        let g = Geometry::new(4, 2).unwrap();
        let e = Erasure::new(g).unwrap();
        e.encode(container)
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                let h = ShardHeader {
                    k: 4,
                    m: 2,
                    index: i as u8,
                    container: ContainerId(0x0123_4567_89ab),
                    store: StoreId([0x5a; 16]),
                    container_len: container.len() as u64,
                    shard_len: payload.len() as u64,
                };
                encode_shard_file_as(version, &h, payload)
            })
            .collect()
    }

    const CONTAINER_BLAKE3: &str =
        "1a6737305b15d187282abf1a3ab4aee3ff9cd3f49c7280fdb6d0a26e9c58052c";
    const SHARD_BLAKE3: [&str; 6] = [
        "d82f3dc56c725c4bc192813e3a114e4ef824f05064d4247253d8af5f45984edc",
        "9d4ea4f21a6d1ee8731a6fa0f501be580a48be7ce32466812dd84c9ccc8f278a",
        "fa104091a827191892229bc9515a4b6a70398dbd0df18e5fcb7e764b5cb47dde",
        "0a4bc22d2f9013cda85e74a36721ac705a2b4b711e9a74c3682ce96ef982cd9a",
        "72cabe5771592046b3175686f5cacfba2c1792ebdbc686c94f99f17fc74f9dab",
        "b5c6274b126083a6d8dcfaf2d193da351d7f3edcfdbfac1091b15a8e85c8bec8",
    ];

    #[test]
    fn golden_container_reads_back() {
        let c = golden_container();
        let (h, entries) = parse_container(&c).unwrap();
        assert_eq!(h.id, ContainerId(0x0123_4567_89ab));
        assert_eq!(entries.len(), 6);
        let text = &entries[1];
        assert_eq!(text.header.codec, Codec::Zstd);
        let id = ChunkId(text.header.id);
        assert_eq!(
            decode_chunk(Codec::Zstd, text.header.raw_len, text.payload, &id).unwrap(),
            TEXT
        );
        assert_eq!(compress_chunk(TEXT, 3).0, Codec::Zstd);
        let seg = SegmentRecord::decode(entries[2].payload).unwrap();
        assert_eq!(seg.entries.len(), 2);
        ObjectCommitRecord::decode(entries[3].payload).unwrap();
        BucketRecord::decode(entries[4].payload).unwrap();
        TombstoneRecord::decode(entries[5].payload).unwrap();
        for version in [SHARD_VERSION_BLAKE3, SHARD_VERSION] {
            for (i, f) in golden_shard_files_as(version, &c).iter().enumerate() {
                assert_eq!(usize::from(verify_shard_file(f).unwrap().index), i);
            }
        }
    }

    #[test]
    fn format_v1_is_pinned() {
        let c = golden_container();
        let files = golden_shard_files_as(SHARD_VERSION_BLAKE3, &c);
        println!("container {} bytes: {}", c.len(), blake3::hash(&c).to_hex());
        for f in &files {
            println!("shard {} bytes: {}", f.len(), blake3::hash(f).to_hex());
        }
        assert_eq!(c.len(), 1294);
        assert_eq!(blake3::hash(&c).to_hex().as_str(), CONTAINER_BLAKE3);
        assert_eq!(files.len(), 6);
        for (f, want) in files.iter().zip(SHARD_BLAKE3) {
            assert_eq!(f.len(), 384 + 112);
            assert_eq!(blake3::hash(f).to_hex().as_str(), want);
        }
    }

    /// Shard format 2 (XXH3-128 trailers) of the same container, pinned the same way.
    const SHARD_V2_BLAKE3: [&str; 6] = [
        "8e00abd8bee2d2e0d4c1b5dc48887769fbabb2d1f9e74876dd241739f4022cd0",
        "459e10921e54f9c9fc1ec10d878a67ee0130785e6d6bd7cd499193cec8bf32fd",
        "2bd4a63e4c58c8fe9b2410a553612f9536682d8553742fdc8b64393949daf9ec",
        "bf21f45e74e186deb9d296700e1c74a6c160d4aed60e7279311f4d3bd7abf7a6",
        "2c549633af7ee7a578b32643806eefa3819c388ea10d16c1a35a248648f22e69",
        "d68fd1cfc30053b64edd3d2ce91f46d82b07950cf6eba58e1885adaacb69b459",
    ];

    #[test]
    fn shard_format_v2_is_pinned() {
        let c = golden_container();
        let files = golden_shard_files_as(SHARD_VERSION, &c);
        for f in &files {
            println!("shard v2 {} bytes: {}", f.len(), blake3::hash(f).to_hex());
        }
        assert_eq!(files.len(), 6);
        let v1 = golden_shard_files_as(SHARD_VERSION_BLAKE3, &c);
        for ((f, old), want) in files.iter().zip(&v1).zip(SHARD_V2_BLAKE3) {
            assert_eq!(f.len(), 384 + 112);
            // Only the version field, the header CRC and the trailer's checksum differ from format 1.
            assert_eq!(f[10..60], old[10..60]);
            assert_eq!(f[64..448], old[64..448]);
            assert_eq!(f[480..], old[480..]);
            assert_eq!(blake3::hash(f).to_hex().as_str(), want);
        }
    }
}
