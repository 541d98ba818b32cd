//! Shard file codec (storage-format.md §3): 64-byte header, payload of S bytes, 48-byte trailer.

use super::container::{array, le_u16, le_u64};
use super::erasure::Geometry;
use super::error::CoreError;
use super::ids::{ContainerId, StoreId};

pub const SHARD_HEADER_LEN: usize = 64;
pub const SHARD_TRAILER_LEN: usize = 48;
pub const SHARD_MAGIC: [u8; 8] = *b"CAIRNSHD";
pub const SHARD_END_MAGIC: [u8; 8] = *b"CAIRNEND";
pub const SHARD_VERSION: u16 = 1;

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
        let mut b = [0u8; SHARD_HEADER_LEN];
        b[..8].copy_from_slice(&SHARD_MAGIC);
        b[8..10].copy_from_slice(&SHARD_VERSION.to_le_bytes());
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
        if version != SHARD_VERSION {
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

/// BLAKE3 of the payload, S, magic `CAIRNEND`.
pub fn encode_trailer(payload: &[u8]) -> [u8; SHARD_TRAILER_LEN] {
    let mut t = [0u8; SHARD_TRAILER_LEN];
    t[..32].copy_from_slice(blake3::hash(payload).as_bytes());
    t[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    t[40..48].copy_from_slice(&SHARD_END_MAGIC);
    t
}

/// Checks trailer magic, repeated length and BLAKE3 of payload.
pub fn check_trailer(trailer: &[u8], payload: &[u8]) -> Result<(), CoreError> {
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
    if trailer[..32] != *blake3::hash(payload).as_bytes() {
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
            format!("{} bytes, header says {} (torn?)", bytes.len(), h.file_len()),
        ));
    }
    let trailer_at = bytes.len() - SHARD_TRAILER_LEN;
    check_trailer(
        &bytes[trailer_at..],
        &bytes[SHARD_HEADER_LEN..trailer_at],
    )?;
    Ok(h)
}

/// Builds a whole shard file (header + payload + trailer), for writers and tests.
pub fn encode_shard_file(header: &ShardHeader, payload: &[u8]) -> Vec<u8> {
    debug_assert_eq!(header.shard_len, payload.len() as u64);
    let mut out = Vec::with_capacity(payload.len() + SHARD_HEADER_LEN + SHARD_TRAILER_LEN);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out.extend_from_slice(&encode_trailer(payload));
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
        let h = header(4, 2, 5, len);
        let payload: Vec<u8> = (0..h.shard_len).map(|i| (i * 7) as u8).collect();
        encode_shard_file(&h, &payload)
    }

    #[test]
    fn verify_good_file() {
        let f = file(1000);
        assert_eq!(f.len(), 256 + 112);
        assert_eq!(verify_shard_file(&f).unwrap(), header(4, 2, 5, 1000));
    }

    #[test]
    fn detects_damage() {
        let f = file(1000);
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
            prop_assert_eq!(check_trailer(&encode_trailer(&payload), &payload), Ok(()));
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
            let _ = check_trailer(&f[split..], &f[..split]);
        }
    }
}
