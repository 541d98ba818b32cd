//! k+m Reed-Solomon erasure coding of sealed containers (storage-format.md §3).

use std::borrow::Cow;

use reed_solomon_erasure::galois_8::ReedSolomon;

use super::error::CoreError;

/// Shard payloads are a multiple of this many bytes (storage-format.md §3).
pub const SHARD_ALIGN: usize = 64;

/// Header and trailer bytes around a shard's payload in its file (storage-format.md §3).
pub const SHARD_FILE_OVERHEAD: usize = 112;

/// The allocation unit [`Geometry::for_container`] counts in: ext4's and XFS's default block. A shard file
/// takes whole blocks however few bytes it holds.
pub const FS_BLOCK: usize = 4096;

/// k data shards + m parity shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    pub k: u8,
    pub m: u8,
}

impl Geometry {
    /// k in 1..=16, m in 1..=3. (k = 1 is m+1 copies: a store may be laid out so, and a store of wider k
    /// seals a container too small to be worth splitting so, [`Geometry::for_container`].)
    pub fn new(k: u8, m: u8) -> Result<Geometry, CoreError> {
        let err = |detail: &str| {
            Err(CoreError::Geometry {
                k: k.into(),
                m: m.into(),
                detail: detail.to_string(),
            })
        };
        if !(1..=16).contains(&k) {
            return err("k must be in 1..=16");
        }
        if !(1..=3).contains(&m) {
            return err("m must be in 1..=3");
        }
        Ok(Geometry { k, m })
    }

    /// k+m.
    pub fn width(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// S = round_up(ceil(L/k), 64), at least 64.
    pub fn shard_len(&self, container_len: usize) -> usize {
        let k = usize::from(self.k.max(1));
        container_len
            .div_ceil(k)
            .next_multiple_of(SHARD_ALIGN)
            .max(SHARD_ALIGN)
    }

    /// The geometry a container of `container_len` bytes is sealed with in a store of this geometry
    /// (storage-format.md §6): the same m, so it survives the same disk losses, and the smallest k' in 1..=k
    /// whose k'+m shard files allocate no more filesystem blocks than k+m files would. Fewer files cost fewer
    /// fsyncs at the seal and fewer opens and seeks at every read, rebuild and scrub; never more space. A
    /// container of up to ~8 KiB (a small object, a bucket record) is 1+m one- or two-block files instead of
    /// k+m of one block, as is one of 15.9-16.3 KB; the segment record that ends a repeated 16 MiB part
    /// (~17-19 KB) is 2+m for a 4+m store; for 4+2 from about 147 KB on it is k itself.
    pub fn for_container(&self, container_len: usize) -> Geometry {
        let at = |k: u8| Geometry { k, m: self.m };
        let widest = self.blocks(container_len);
        (1..self.k)
            .map(at)
            .find(|g| g.blocks(container_len) <= widest)
            .unwrap_or(*self)
    }

    /// Filesystem blocks ([`FS_BLOCK`]) the k+m shard files of a `container_len`-byte container allocate.
    pub fn blocks(&self, container_len: usize) -> usize {
        let file = self.shard_len(container_len) + SHARD_FILE_OVERHEAD;
        self.width() * file.div_ceil(FS_BLOCK)
    }

    /// [`Geometry::shard_len`] for a length read from disk: checked, so a hostile header cannot overflow it.
    pub fn shard_len_u64(&self, container_len: u64) -> Option<u64> {
        let k = u64::from(self.k.max(1));
        container_len
            .div_ceil(k)
            .checked_next_multiple_of(SHARD_ALIGN as u64)
            .map(|s| s.max(SHARD_ALIGN as u64))
    }
}

/// A shard buffer reconstruction can work in: its bytes in place, and a way to make a missing one (`Vec<u8>`,
/// or a payload left inside the buffer it was read into).
pub trait Shard: AsRef<[u8]> + AsMut<[u8]> + FromIterator<u8> {}
impl<T: AsRef<[u8]> + AsMut<[u8]> + FromIterator<u8>> Shard for T {}

/// Encoder/decoder for one geometry. `Send + Sync`: the decode-matrix cache inside is behind a mutex.
pub struct Erasure {
    geometry: Geometry,
    rs: ReedSolomon,
}

impl Erasure {
    pub fn new(g: Geometry) -> Result<Erasure, CoreError> {
        let g = Geometry::new(g.k, g.m)?; // a deserialized Geometry skipped the checks
        let rs = ReedSolomon::new(g.k.into(), g.m.into()).map_err(|e| CoreError::Geometry {
            k: g.k.into(),
            m: g.m.into(),
            detail: format!("{e:?}"),
        })?;
        Ok(Erasure { geometry: g, rs })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Pads the container with zeros to k*S, splits into k data shards, computes m parity shards.
    /// Returns k+m Vecs of S bytes. (The store uses [`Erasure::encode_borrowed`], which copies less.)
    pub fn encode(&self, container: &[u8]) -> Vec<Vec<u8>> {
        let e = self.encode_borrowed(container);
        (0..self.geometry.width())
            .map(|i| e.shard(i).to_vec())
            .collect()
    }

    /// Same shards as [`Erasure::encode`], but data shards that lie wholly inside `container` are borrowed
    /// from it instead of copied: only the zero-padded tail shard and the parity are allocated. Copying every
    /// data shard made the store's encode 15x slower than the RS arithmetic itself (copies and page faults).
    pub fn encode_borrowed<'a>(&self, container: &'a [u8]) -> EncodedShards<'a> {
        self.encode_borrowed_reusing(container, Vec::new())
    }

    /// [`Erasure::encode_borrowed`] writing the parity into `spare` buffers (any contents, any length; taken
    /// from the back, fresh ones made if too few) instead of fresh ones: the encode overwrites every parity
    /// byte, so a reused buffer is neither zeroed nor faulted in again. `EncodedShards::into_parity_buffers`
    /// gives them back.
    pub fn encode_borrowed_reusing<'a>(
        &self,
        container: &'a [u8],
        mut spare: Vec<Vec<u8>>,
    ) -> EncodedShards<'a> {
        let s = self.geometry.shard_len(container.len());
        let k = usize::from(self.geometry.k);
        let data: Vec<Cow<'a, [u8]>> = (0..k)
            .map(|j| {
                let start = (j * s).min(container.len());
                let end = ((j + 1) * s).min(container.len());
                if end - start == s {
                    Cow::Borrowed(&container[start..end])
                } else {
                    let mut v = Vec::with_capacity(s);
                    v.extend_from_slice(&container[start..end]);
                    v.resize(s, 0);
                    Cow::Owned(v)
                }
            })
            .collect();
        let mut parity: Vec<Vec<u8>> = (0..self.geometry.m)
            .map(|_| {
                let mut v = spare.pop().unwrap_or_default();
                // Only growth is zeroed (by resize); a buffer at least S long keeps its length and bytes.
                if v.len() < s {
                    v.resize(s, 0);
                }
                v
            })
            .collect();
        let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(|v| &mut v[..s]).collect();
        // Cannot fail: k data and m parity shards of equal, non-zero length were built just above.
        self.rs
            .encode_sep(&data, &mut outputs)
            .expect("k+m equal non-empty shards");
        EncodedShards {
            data,
            parity,
            shard_len: s,
        }
    }

    /// `shards.len() == k+m`; present entries all have the same length (any length: RS is bytewise, so this
    /// works on a sub-range of every shard). Fills in every missing shard (data and parity).
    pub fn reconstruct<S: Shard>(&self, shards: &mut [Option<S>]) -> Result<(), CoreError> {
        self.reconstruct_inner(shards, false)
    }

    /// Same as [`Erasure::reconstruct`], but only the data shards are guaranteed filled (cheaper, for reads).
    pub fn reconstruct_data<S: Shard>(&self, shards: &mut [Option<S>]) -> Result<(), CoreError> {
        self.reconstruct_inner(shards, true)
    }

    fn reconstruct_inner<S: Shard>(
        &self,
        shards: &mut [Option<S>],
        data_only: bool,
    ) -> Result<(), CoreError> {
        let (k, width) = (usize::from(self.geometry.k), self.geometry.width());
        if shards.len() != width {
            return Err(CoreError::Malformed {
                what: "shard set",
                detail: format!("{} shards given, geometry has {width}", shards.len()),
            });
        }
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < k {
            return Err(CoreError::TooFewShards { have, need: k });
        }
        let mut lens = shards.iter().flatten().map(|s| s.as_ref().len());
        let len = lens.next().unwrap_or(0);
        if lens.any(|l| l != len) {
            return Err(CoreError::Malformed {
                what: "shard set",
                detail: "present shards differ in length".into(),
            });
        }
        if len == 0 {
            // reed-solomon-erasure rejects empty shards; an empty range reconstructs to empty shards.
            shards
                .iter_mut()
                .filter(|s| s.is_none())
                .for_each(|s| *s = Some(S::from_iter(std::iter::empty())));
            return Ok(());
        }
        let r = if data_only {
            self.rs.reconstruct_data(shards)
        } else {
            self.rs.reconstruct(shards)
        };
        r.map_err(|e| CoreError::Malformed {
            what: "shard set",
            detail: format!("reed-solomon: {e:?}"),
        })
    }

    /// Concatenates data shards and truncates to `container_len` (inverse of encode's split).
    pub fn join<S: AsRef<[u8]>>(&self, data_shards: &[S], container_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(container_len);
        for s in data_shards.iter().take(self.geometry.k.into()) {
            if out.len() >= container_len {
                break;
            }
            let s = s.as_ref();
            let take = (container_len - out.len()).min(s.len());
            out.extend_from_slice(&s[..take]);
        }
        out
    }
}

/// The k+m shards of one container: data shards mostly borrowed from it, parity owned.
pub struct EncodedShards<'a> {
    data: Vec<Cow<'a, [u8]>>,
    /// Each at least `shard_len` long (a reused buffer may be longer); the shard is its front.
    parity: Vec<Vec<u8>>,
    shard_len: usize,
}

impl EncodedShards<'_> {
    /// Shard `index` (0..k are data, k..k+m parity). Panics on an index outside the geometry.
    pub fn shard(&self, index: usize) -> &[u8] {
        match self.data.get(index) {
            Some(d) => d,
            None => &self.parity[index - self.data.len()][..self.shard_len],
        }
    }

    /// S: every shard has this length.
    pub fn shard_len(&self) -> usize {
        self.shard_len
    }

    /// The parity buffers, for the next `encode_borrowed_reusing`.
    pub fn into_parity_buffers(self) -> Vec<Vec<u8>> {
        self.parity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn erasure_is_send_sync() {
        assert_send_sync::<Erasure>();
    }

    #[test]
    fn geometry_limits() {
        assert!(Geometry::new(0, 1).is_err());
        assert!(Geometry::new(1, 1).is_ok());
        assert!(Geometry::new(17, 1).is_err());
        assert!(Geometry::new(4, 0).is_err());
        assert!(Geometry::new(4, 4).is_err());
        let g = Geometry::new(4, 2).unwrap();
        assert_eq!(g.width(), 6);
        assert_eq!(g.shard_len(0), 64);
        assert_eq!(g.shard_len(1), 64);
        assert_eq!(g.shard_len(256), 64);
        assert_eq!(g.shard_len(257), 128);
        assert_eq!(g.shard_len_u64(257), Some(128));
        assert_eq!(g.shard_len_u64(u64::MAX), Some(1 << 62));
        assert!(Erasure::new(Geometry { k: 1, m: 9 }).is_err());
    }

    #[test]
    fn small_containers_are_sealed_narrow() {
        let g = Geometry::new(4, 2).unwrap();
        let k_for = |len: usize| g.for_container(len).k;
        // Up to one block per 1+2 file: 3 blocks against 4+2's 6.
        assert_eq!(k_for(0), 1);
        assert_eq!(k_for(700), 1);
        assert_eq!(k_for(3968), 1);
        // Two blocks per 1+2 file tie 4+2's six one-block files: the same space in half the files.
        assert_eq!(k_for(6000), 1);
        assert_eq!(k_for(8064), 1);
        // Past that 1+2 takes 9 blocks and 2+2 8, more than 4+2's 6; 3+2 takes 5.
        assert_eq!(k_for(8065), 3);
        assert_eq!(k_for(10_000), 3);
        // A segment record of ~440 entries (36 bytes each): 1+2 four-block files, 12 blocks like 4+2's; a few
        // entries more (a repeated 16 MiB part's ~480) and 2+2's three-block files are the narrowest fit.
        assert_eq!(k_for(16_000), 1);
        assert_eq!(k_for(16_300), 2);
        assert_eq!(k_for(17_500), 2);
        // 64 KiB: 3+2 files of six blocks take the 30 of 4+2's five-block files.
        assert_eq!(k_for(64 << 10), 3);
        // Large containers keep the store's k: the least parity per byte.
        assert_eq!(k_for(1 << 20), 4);
        assert_eq!(k_for(24 << 20), 4);
        assert_eq!(g.for_container(700).m, 2);
        assert_eq!(g.blocks(700), 6);
        assert_eq!(g.for_container(700).blocks(700), 3);
        // Never wider than the store.
        let one = Geometry::new(1, 2).unwrap();
        assert_eq!(one.for_container(24 << 20), one);
    }

    #[test]
    fn narrow_container_survives_m_losses() {
        let g = Geometry::new(4, 2).unwrap().for_container(900);
        let e = Erasure::new(g).unwrap();
        let container: Vec<u8> = (0..900u32).map(|i| (i * 7 % 251) as u8).collect();
        let shards = e.encode(&container);
        assert_eq!(shards.len(), 3);
        // With one data shard the parity rows are the identity: three copies (storage-format.md §6).
        assert!(shards.iter().all(|s| s == &shards[0]));
        for keep in 0..3 {
            let mut have: Vec<Option<Vec<u8>>> = vec![None; 3];
            have[keep] = Some(shards[keep].clone());
            e.reconstruct(&mut have).unwrap();
            let data: Vec<Vec<u8>> = have.into_iter().map(|s| s.unwrap()).collect();
            assert_eq!(data, shards);
            assert_eq!(e.join(&data[..1], container.len()), container);
        }
    }

    #[test]
    fn empty_container_round_trips() {
        let e = Erasure::new(Geometry::new(4, 2).unwrap()).unwrap();
        let shards = e.encode(&[]);
        assert_eq!(shards.len(), 6);
        assert!(shards.iter().all(|s| s == &vec![0u8; 64]));
        assert!(e.join(&shards[..4], 0).is_empty());
    }

    #[test]
    fn empty_sub_range_reconstructs() {
        let e = Erasure::new(Geometry::new(4, 2).unwrap()).unwrap();
        let mut s: Vec<Option<Vec<u8>>> = vec![Some(vec![]); 6];
        s[1] = None;
        e.reconstruct(&mut s).unwrap();
        assert_eq!(s[1], Some(vec![]));
    }

    fn geometry() -> impl Strategy<Value = Geometry> {
        (1u8..=16, 1u8..=3).prop_map(|(k, m)| Geometry::new(k, m).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn lose_up_to_m_reconstructs(
            g in geometry(),
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            lost_seed in proptest::collection::vec(any::<usize>(), 0..=3),
            corrupt: bool,
            data_only: bool,
        ) {
            let e = Erasure::new(g).unwrap();
            let full = e.encode(&data);
            prop_assert_eq!(full.len(), g.width());
            prop_assert!(full.iter().all(|s| s.len() == g.shard_len(data.len())));
            let mut shards: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
            for i in lost_seed.iter().take(g.m.into()) {
                let i = i % g.width();
                if corrupt {
                    // a shard found bad (flipped bytes) is dropped before reconstruction
                    if let Some(s) = shards[i].as_mut() { s[0] ^= 0xff; }
                }
                shards[i] = None;
            }
            if data_only {
                e.reconstruct_data(&mut shards).unwrap();
                for j in 0..usize::from(g.k) {
                    prop_assert_eq!(shards[j].as_ref(), Some(&full[j]));
                }
            } else {
                e.reconstruct(&mut shards).unwrap();
                let got: Vec<Vec<u8>> = shards.into_iter().map(Option::unwrap).collect();
                prop_assert_eq!(&got, &full);
            }
            prop_assert_eq!(e.join(&full[..usize::from(g.k)], data.len()), data);
        }

        #[test]
        fn reused_parity_buffers_give_the_same_shards(
            g in geometry(),
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            spare_lens in proptest::collection::vec(0usize..3000, 0..=3),
            junk: u8,
        ) {
            let e = Erasure::new(g).unwrap();
            let fresh = e.encode(&data);
            // Spare buffers of any length, full of junk: shorter ones grow, longer ones keep their tail.
            let spare: Vec<Vec<u8>> = spare_lens.iter().map(|&n| vec![junk; n]).collect();
            // Taken from the back: the last m spares are the ones used.
            let used_from = spare.len().saturating_sub(usize::from(g.m));
            let long_enough: Vec<*const u8> = spare[used_from..]
                .iter()
                .filter(|v| v.len() >= g.shard_len(data.len()))
                .map(|v| v.as_ptr())
                .collect();
            let reused = e.encode_borrowed_reusing(&data, spare);
            prop_assert_eq!(reused.shard_len(), g.shard_len(data.len()));
            for (i, want) in fresh.iter().enumerate() {
                prop_assert_eq!(reused.shard(i), &want[..]);
            }
            let back = reused.into_parity_buffers();
            prop_assert_eq!(back.len(), usize::from(g.m));
            // A spare that was long enough is written in place, not reallocated.
            for p in &long_enough {
                prop_assert!(back.iter().any(|v| v.as_ptr() == *p));
            }
        }

        #[test]
        fn lose_m_plus_one_fails(g in geometry(), data in proptest::collection::vec(any::<u8>(), 1..2000), start: usize) {
            let e = Erasure::new(g).unwrap();
            let mut shards: Vec<Option<Vec<u8>>> = e.encode(&data).into_iter().map(Some).collect();
            for n in 0..=usize::from(g.m) {
                shards[(start % g.width() + n) % g.width()] = None;
            }
            let err = e.reconstruct(&mut shards).unwrap_err();
            prop_assert_eq!(err, CoreError::TooFewShards { have: usize::from(g.k) - 1, need: g.k.into() });
            prop_assert!(e.reconstruct_data(&mut shards).is_err());
        }

        #[test]
        fn sub_range_reconstructs(
            g in geometry(),
            data in proptest::collection::vec(any::<u8>(), 1..5000),
            a: usize, b: usize, lost: usize,
        ) {
            let e = Erasure::new(g).unwrap();
            let full = e.encode(&data);
            let s = full[0].len();
            let (a, b) = { let (x, y) = (a % (s + 1), b % (s + 1)); (x.min(y), x.max(y)) };
            let mut shards: Vec<Option<Vec<u8>>> = full.iter().map(|f| Some(f[a..b].to_vec())).collect();
            shards[lost % g.width()] = None;
            e.reconstruct(&mut shards).unwrap();
            for (got, f) in shards.iter().zip(&full) {
                prop_assert_eq!(got.as_deref(), Some(&f[a..b]));
            }
        }

        #[test]
        fn for_container_keeps_m_and_never_widens(g in geometry(), len in 0usize..(1 << 20)) {
            let c = g.for_container(len);
            prop_assert_eq!(c.m, g.m);
            prop_assert!(c.k >= 1 && c.k <= g.k);
            // Never more space than the store's own geometry, and no narrower k' that would also fit.
            prop_assert!(c.blocks(len) <= g.blocks(len));
            for k in 1..c.k {
                let narrower = Geometry { k, m: g.m };
                prop_assert!(narrower.blocks(len) > g.blocks(len));
            }
        }

        #[test]
        fn unequal_lengths_are_malformed(g in geometry()) {
            // Two shards left after losing one, so that their lengths can disagree.
            prop_assume!(g.width() >= 3);
            let e = Erasure::new(g).unwrap();
            let mut shards: Vec<Option<Vec<u8>>> = e.encode(b"abc").into_iter().map(Some).collect();
            if let Some(s) = shards[0].as_mut() { s.pop(); }
            shards[1] = None;
            let is_malformed = matches!(e.reconstruct(&mut shards), Err(CoreError::Malformed { .. }));
            prop_assert!(is_malformed);
            shards.pop();
            let is_malformed = matches!(e.reconstruct(&mut shards), Err(CoreError::Malformed { .. }));
            prop_assert!(is_malformed);
        }
    }
}
