//! Content-defined chunking (FastCDC 2020), storage-format.md §4.1.
//!
//! [`Chunker`] is push-style because bytes arrive as HTTP body frames of any size; it must cut exactly where
//! chunking the whole body at once would cut, or the same object uploaded twice would not dedup.

use std::ops::Range;

use fastcdc::v2020;

use super::error::CoreError;

/// Chunk size limits in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    /// Chosen with `cargo bench --bench chunk_size` (README, "Chunk size"): the largest average for which a VM
    /// image with 0.5% of its 4 KiB blocks rewritten adds at most 10% new chunk data on its next full (8.4%),
    /// while tar and dump workloads keep within 10% of their best dedup ratio over 7 fulls.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min: 6 * 1024,
        avg: 24 * 1024,
        max: 96 * 1024,
    };

    /// fastcdc v2020 limits. fastcdc only `debug_assert`s these, and an odd size silently shifts its cut
    /// points (fastcdc issue #52), so they are checked here before a store is created with them.
    pub fn validate(&self) -> Result<(), CoreError> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let err = |s: String| Err(CoreError::ChunkerParams(s));
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min) {
            return err(format!(
                "min {min} outside {}..={}",
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX
            ));
        }
        if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg) {
            return err(format!(
                "avg {avg} outside {}..={}",
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX
            ));
        }
        if !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max) {
            return err(format!(
                "max {max} outside {}..={}",
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            ));
        }
        if !(min <= avg && avg <= max) {
            return err(format!("need min <= avg <= max, got {min} / {avg} / {max}"));
        }
        if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            return err(format!("sizes must be even, got {min} / {avg} / {max}"));
        }
        Ok(())
    }

    fn cdc<'a>(&self, data: &'a [u8]) -> v2020::FastCDC<'a> {
        v2020::FastCDC::new(
            data,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
        )
    }
}

/// Push-style streaming chunker. Boundaries are identical to [`chunk_ranges`] over the whole input.
///
/// Why this is exact: fastcdc finds a cut by scanning forward from the chunk start, so a cut found strictly
/// before the end of the buffer depends only on bytes up to it and the one byte at it (fastcdc decides a cut
/// at p with a hash that includes byte p), all in the buffer, and stays a cut however much data follows; a
/// chunk cut at `max` is final as well. Only the last chunk found in the buffer may still grow.
/// Memory: the buffer holds at most `2 * max` bytes.
pub struct Chunker {
    params: ChunkerParams,
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Chunker {
    /// `params` must pass [`ChunkerParams::validate`] (checked in debug builds).
    pub fn new(params: ChunkerParams) -> Chunker {
        debug_assert!(params.validate().is_ok(), "invalid {params:?}");
        Chunker {
            params,
            buf: Vec::with_capacity(2 * params.max as usize),
            ends: Vec::new(),
        }
    }

    /// Scan threshold: the carried-over tail is at most `max` bytes, so each scan sees at least `max` new
    /// bytes and the total rescanning work stays linear.
    fn threshold(&self) -> usize {
        2 * self.params.max as usize
    }

    /// Feeds bytes; calls `emit` with every chunk that is now final, in order.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let take = self
                .threshold()
                .saturating_sub(self.buf.len())
                .min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= self.threshold() {
                self.scan(false, emit);
            }
        }
    }

    /// End of stream: emits the remaining bytes as the last chunk(s).
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        self.scan(true, emit);
        self.buf.clear();
    }

    fn scan(&mut self, at_end: bool, emit: &mut dyn FnMut(&[u8])) {
        self.ends.clear();
        let consumed = final_cuts(self.params, &self.buf, at_end, &mut self.ends);
        chunks_at(&self.buf, &self.ends).for_each(emit);
        self.buf.drain(..consumed);
    }
}

/// Chunks `buf`, which starts at a cut, and appends the ends of its final chunks to `ends`; returns the end of
/// the last one. Without `at_end` the last chunk found is not final when it reaches the end of `buf` (more
/// input may extend it): the caller keeps those bytes and puts them in front of the next input. Cutting a
/// stream piece by piece this way gives exactly [`chunk_ranges`] of the whole (see [`Chunker`] for why).
/// Ingest cuts its batch buffers in place with it; [`Chunker`] is the same over a buffer of its own.
pub fn final_cuts(params: ChunkerParams, buf: &[u8], at_end: bool, ends: &mut Vec<usize>) -> usize {
    debug_assert!(params.validate().is_ok(), "invalid {params:?}");
    let mut consumed = 0;
    for c in params.cdc(buf) {
        let end = c.offset + c.length;
        if !at_end && end >= buf.len() {
            break; // may still grow with more input
        }
        ends.push(end);
        consumed = end;
    }
    consumed
}

/// The end of `buf`'s first final chunk (`buf` starts at a cut), as [`final_cuts`] would find it; None if more
/// input may still extend it. Scans only that chunk.
pub fn first_cut(params: ChunkerParams, buf: &[u8], at_end: bool) -> Option<usize> {
    debug_assert!(params.validate().is_ok(), "invalid {params:?}");
    let c = params.cdc(buf).next()?;
    let end = c.offset + c.length;
    (at_end || end < buf.len()).then_some(end)
}

/// The chunks of `buf` that end at `ends` (ascending, the first chunk starting at 0), in order.
pub fn chunks_at<'a>(buf: &'a [u8], ends: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    ends.iter().scan(0usize, move |start, &end| {
        let c = &buf[*start..end];
        *start = end;
        Some(c)
    })
}

/// One-shot: chunk boundaries of a whole buffer (ranges cover the input exactly).
pub fn chunk_ranges(data: &[u8], params: ChunkerParams) -> Vec<Range<usize>> {
    debug_assert!(params.validate().is_ok(), "invalid {params:?}");
    params
        .cdc(data)
        .map(|c| c.offset..c.offset + c.length)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// Small limits so proptest inputs of a few hundred KiB produce many chunks.
    pub(crate) const SMALL: ChunkerParams = ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
    };

    pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    }

    fn stream(data: &[u8], splits: &[usize], params: ChunkerParams) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut c = Chunker::new(params);
        let mut pos = 0;
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts {
            c.push(&data[pos..cut], &mut |ch| out.push(ch.to_vec()));
            pos = cut;
        }
        c.push(&data[pos..], &mut |ch| out.push(ch.to_vec()));
        c.finish(&mut |ch| out.push(ch.to_vec()));
        out
    }

    /// Ingest's way: input appended to a buffer that starts with the carried unfinished chunk, cut once the
    /// buffer holds `batch` bytes, the unfinished chunk carried into the next buffer.
    fn in_batches(
        data: &[u8],
        splits: &[usize],
        batch: usize,
        params: ChunkerParams,
    ) -> Vec<Range<usize>> {
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        feed_in_batches(data, splits, batch, |buf, buf_start, at_end| {
            ends.clear();
            let consumed = final_cuts(params, buf, at_end, &mut ends);
            let mut start = 0;
            for &end in &ends {
                out.push(buf_start + start..buf_start + end);
                start = end;
            }
            consumed
        });
        out
    }

    /// Feeds `data` as ingest does: pieces ending at `splits` are appended to a buffer that starts with the
    /// carried unfinished chunk; once it holds `batch` bytes, and at the end, `cut(buffer, its offset in data,
    /// at_end)` cuts it and returns how many bytes it consumed (the rest is carried).
    pub(crate) fn feed_in_batches(
        data: &[u8],
        splits: &[usize],
        batch: usize,
        mut cut: impl FnMut(&[u8], usize, bool) -> usize,
    ) {
        let mut ends: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(data.len());
        let (mut buf, mut pos, mut buf_start) = (Vec::new(), 0, 0);
        for end in ends {
            buf.extend_from_slice(&data[pos..end]);
            pos = end;
            if buf.len() >= batch {
                let consumed = cut(&buf, buf_start, false);
                buf.drain(..consumed);
                buf_start += consumed;
            }
        }
        cut(&buf, buf_start, true);
    }

    #[test]
    fn validate_limits() {
        assert!(ChunkerParams::DEFAULT.validate().is_ok());
        assert!(SMALL.validate().is_ok());
        for bad in [
            (32, 256, 1024),
            (64, 128, 1024),
            (64, 256, 512),
            (2048, 1024, 4096),
            (64, 256, 32 << 20),
            (65, 256, 1024),
        ] {
            let p = ChunkerParams {
                min: bad.0,
                avg: bad.1,
                max: bad.2,
            };
            assert!(
                matches!(p.validate(), Err(CoreError::ChunkerParams(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(chunk_ranges(&[], SMALL).is_empty());
        assert!(stream(&[], &[], SMALL).is_empty());
    }

    #[test]
    fn zeros_cut_at_max() {
        let data = vec![0u8; 5 * SMALL.max as usize + 7];
        let r = chunk_ranges(&data, SMALL);
        assert!(r[..5].iter().all(|r| r.len() == SMALL.max as usize));
        assert_eq!(stream(&data, &[1, 16384, 16385], SMALL).len(), r.len());
    }

    #[test]
    fn one_big_push_default_params() {
        let data = random_bytes(7, 3 << 20);
        let whole: Vec<Vec<u8>> = chunk_ranges(&data, ChunkerParams::DEFAULT)
            .into_iter()
            .map(|r| data[r].to_vec())
            .collect();
        assert!(whole.len() > 10);
        assert_eq!(stream(&data, &[], ChunkerParams::DEFAULT), whole);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn ranges_cover_input(seed: u64, len in 0usize..200_000) {
            let data = random_bytes(seed, len);
            let r = chunk_ranges(&data, SMALL);
            let mut pos = 0;
            for x in &r {
                prop_assert_eq!(x.start, pos);
                prop_assert!(x.len() <= SMALL.max as usize);
                pos = x.end;
            }
            prop_assert_eq!(pos, len);
        }

        #[test]
        fn push_with_random_splits_equals_one_shot(
            seed: u64,
            len in 0usize..200_000,
            splits in proptest::collection::vec(any::<usize>(), 0..40),
            low_entropy: bool,
        ) {
            let mut data = random_bytes(seed, len);
            if low_entropy {
                // long runs exercise the cut-at-max path
                data.iter_mut().enumerate().for_each(|(i, b)| if (i / 20_000) % 2 == 0 { *b = 0 });
            }
            let whole: Vec<Vec<u8>> = chunk_ranges(&data, SMALL).into_iter().map(|r| data[r].to_vec()).collect();
            let streamed = stream(&data, &splits, SMALL);
            prop_assert_eq!(streamed.concat(), data);
            prop_assert_eq!(streamed, whole);
        }

        #[test]
        fn cutting_batches_in_place_matches_one_shot(
            seed: u64,
            len in 0usize..300_000,
            splits in proptest::collection::vec(any::<usize>(), 0..20),
            batch in 1usize..100_000,
            low_entropy: bool,
        ) {
            let mut data = random_bytes(seed, len);
            if low_entropy {
                data.iter_mut().enumerate().for_each(|(i, b)| if (i / 20_000) % 2 == 0 { *b = 0 });
            }
            prop_assert_eq!(in_batches(&data, &splits, batch, SMALL), chunk_ranges(&data, SMALL));
        }
    }

    proptest! {
        // 2 MiB per case: fewer cases keep this under a few seconds in debug builds.
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn shift_resistance(seed: u64, at in 0.1f64..0.9, insert in proptest::collection::vec(any::<u8>(), 1..16)) {
            let data = random_bytes(seed, 2 << 20);
            let edit = (data.len() as f64 * at) as usize;
            let mut edited = data[..edit].to_vec();
            edited.extend_from_slice(&insert);
            edited.extend_from_slice(&data[edit..]);
            let max = SMALL.max as usize;
            let before: Vec<Range<usize>> = chunk_ranges(&data, SMALL);
            let after: HashSet<blake3::Hash> =
                chunk_ranges(&edited, SMALL).into_iter().map(|r| blake3::hash(&edited[r])).collect();
            let (mut far_after, mut kept_after) = (0, 0);
            for r in before {
                let h = blake3::hash(&data[r.clone()]);
                if r.end + max < edit {
                    prop_assert!(after.contains(&h), "chunk {:?} before the edit at {} changed", r, edit);
                } else if r.start > edit + max {
                    far_after += 1;
                    kept_after += usize::from(after.contains(&h));
                }
            }
            prop_assert!(kept_after * 10 >= far_after * 9, "only {}/{} chunks after the edit kept", kept_after, far_after);
        }
    }
}
