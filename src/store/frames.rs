//! A batch made of a request body's frames as they arrived (shared `Bytes`, never copied): what a repeated
//! stream is ingested from while it is followed (core::follow::StreamFollower). Only what must be stored or
//! MD5-hashed after all is copied out, on demand.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

/// Frames back to back; offsets count from the first frame's first byte.
#[derive(Default, Clone)]
pub struct FrameBatch {
    frames: VecDeque<Bytes>,
    len: usize,
}

impl FrameBatch {
    pub fn new() -> FrameBatch {
        FrameBatch::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.len += frame.len();
            self.frames.push_back(frame);
        }
    }

    /// Takes the first `n` bytes off as a batch of their own (the frame at the split is shared, not copied).
    pub fn split_to(&mut self, n: usize) -> FrameBatch {
        assert!(n <= self.len, "split at {n} of {} bytes", self.len);
        let mut front = FrameBatch::new();
        while front.len < n {
            let want = n - front.len;
            let Some(first) = self.frames.front_mut() else {
                break;
            };
            if first.len() <= want {
                front.push(self.frames.pop_front().unwrap_or_default());
            } else {
                front.push(first.split_to(want));
            }
        }
        self.len -= n;
        front
    }

    /// The frames in order (the first may be a tail of what arrived).
    #[cfg(test)]
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter()
    }

    pub fn into_frames(self) -> VecDeque<Bytes> {
        self.frames
    }

    /// Appends bytes `range` of the batch to `out`.
    pub fn copy_range_into(&self, range: Range<usize>, out: &mut Vec<u8>) {
        assert!(range.end <= self.len, "{range:?} of {} bytes", self.len);
        let mut at = 0;
        for f in &self.frames {
            let (start, end) = (at, at + f.len());
            at = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                break;
            }
            out.extend_from_slice(&f[range.start.max(start) - start..range.end.min(end) - start]);
        }
    }

    /// Bytes `range` of the batch in one buffer of their own.
    pub fn to_vec(&self, range: Range<usize>) -> Vec<u8> {
        let mut v = Vec::with_capacity(range.len());
        self.copy_range_into(range, &mut v);
        v
    }
}

impl From<Bytes> for FrameBatch {
    fn from(frame: Bytes) -> FrameBatch {
        let mut b = FrameBatch::new();
        b.push(frame);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(data: &[u8], sizes: &[usize]) -> FrameBatch {
        let mut b = FrameBatch::new();
        let mut at = 0;
        for &s in sizes.iter().cycle() {
            if at >= data.len() {
                break;
            }
            let end = (at + s).min(data.len());
            b.push(Bytes::copy_from_slice(&data[at..end]));
            at = end;
        }
        b
    }

    #[test]
    fn ranges_and_splits_see_the_bytes_back_to_back() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = batch_of(&data, &[1, 999, 3000, 17]);
        assert_eq!(b.len(), data.len());
        for r in [
            0..0,
            0..1,
            0..10_000,
            5..1005,
            999..1000,
            4000..4017,
            9_999..10_000,
        ] {
            assert_eq!(b.to_vec(r.clone()), &data[r]);
        }
        let front = b.split_to(2_500);
        assert_eq!(front.len(), 2_500);
        assert_eq!(front.to_vec(0..2_500), &data[..2_500]);
        assert_eq!(b.len(), 7_500);
        assert_eq!(b.to_vec(0..7_500), &data[2_500..]);
        let rest = b.split_to(7_500);
        assert_eq!(b.len(), 0);
        assert_eq!(rest.frames().map(|f| f.len()).sum::<usize>(), 7_500);
        // An empty frame adds nothing.
        b.push(Bytes::new());
        assert_eq!(b.frames().count(), 0);
    }
}
