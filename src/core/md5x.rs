//! MD5 of many independent streams at once. S3 makes the MD5 of every PUT body its ETag, and one MD5 stream
//! is serial (each 64-byte block depends on the previous one): at ~640 MB/s per core it was a quarter of the
//! server's CPU in unique ingest. Independent streams (concurrent uploads and parts) can share one core's SIMD
//! lanes: 8 streams in the 8 32-bit lanes of AVX2, as MinIO's md5-simd does. Pure computation; the store's
//! `md5_lanes` service decides which streams go together.

use md5::block_api::compress as compress_scalar;

const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
/// Lanes of the SIMD kernel.
pub const LANES: usize = 8;

/// One MD5 stream's running state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Md5State {
    h: [u32; 4],
    /// Bytes hashed so far (including `tail`).
    len: u64,
    /// Bytes of an incomplete block, waiting for more.
    tail: [u8; 64],
    tail_len: usize,
}

impl Default for Md5State {
    fn default() -> Self {
        Md5State {
            h: INIT,
            len: 0,
            tail: [0; 64],
            tail_len: 0,
        }
    }
}

impl Md5State {
    pub fn new() -> Md5State {
        Md5State::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes `data` on this thread alone.
    pub fn update(&mut self, data: &[u8]) {
        let whole = self.take_head(data);
        if self.tail_len != 0 {
            // `data` ended inside the partial block: nothing whole to hash.
            return;
        }
        let (blocks, rest) = whole.as_chunks::<64>();
        compress_scalar(&mut self.h, blocks);
        self.keep_tail(rest);
    }

    /// Completes a partial block from the front of `data` (compressing it when full); returns the rest.
    fn take_head<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        self.len += data.len() as u64;
        if self.tail_len == 0 {
            return data;
        }
        let n = (64 - self.tail_len).min(data.len());
        self.tail[self.tail_len..self.tail_len + n].copy_from_slice(&data[..n]);
        self.tail_len += n;
        if self.tail_len == 64 {
            compress_scalar(&mut self.h, &[self.tail]);
            self.tail_len = 0;
        }
        &data[n..]
    }

    /// Keeps the last < 64 bytes for the next update (called only when `tail` is empty).
    fn keep_tail(&mut self, rest: &[u8]) {
        debug_assert!(self.tail_len == 0 && rest.len() < 64);
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// The state as bytes (storage-format.md §7 `md5_checkpoints.state`): the four words little-endian, the
    /// length hashed (u64 LE), then the `length % 64` bytes of the incomplete block.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.tail_len);
        for w in self.h {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.tail[..self.tail_len]);
        out
    }

    /// A state from [`Md5State::to_bytes`]; None unless the bytes are exactly that shape.
    pub fn from_bytes(b: &[u8]) -> Option<Md5State> {
        let word = |i: usize| -> Option<[u8; 4]> { b.get(4 * i..4 * i + 4)?.try_into().ok() };
        let mut h = [0u32; 4];
        for (i, w) in h.iter_mut().enumerate() {
            *w = u32::from_le_bytes(word(i)?);
        }
        let len = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
        let tail_len = (len % 64) as usize;
        if b.len() != 24 + tail_len {
            return None;
        }
        let mut tail = [0u8; 64];
        tail[..tail_len].copy_from_slice(&b[24..]);
        Some(Md5State {
            h,
            len,
            tail,
            tail_len,
        })
    }

    /// The digest (RFC 1321 padding: 0x80, zeros, the bit length little-endian).
    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 128];
        pad[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        pad[self.tail_len] = 0x80;
        let total = if self.tail_len < 56 { 64 } else { 128 };
        pad[total - 8..total].copy_from_slice(&bits.to_le_bytes());
        let (blocks, _) = pad[..total].as_chunks::<64>();
        compress_scalar(&mut self.h, blocks);
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(self.h) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// Hashes `data[i]` into `states[i]` for every i, with up to [`LANES`] streams sharing the SIMD lanes of one
/// core. The result is exactly that of `states[i].update(data[i])` for each i.
pub fn update_many(states: &mut [&mut Md5State], data: &[&[u8]]) {
    let pieces: Vec<[&[u8]; 1]> = data.iter().map(|d| [*d]).collect();
    let pieces: Vec<&[&[u8]]> = pieces.iter().map(|p| &p[..]).collect();
    update_many_pieces(states, &pieces, |_, _, _| {});
}

/// Where one stream is in its pieces.
struct Feed<'a> {
    stream: usize,
    next_piece: usize,
    /// Whole blocks of the current piece not hashed yet.
    blocks: &'a [[u8; 64]],
    /// The current piece's last < 64 bytes, kept as the tail once its blocks are hashed.
    rest: Option<&'a [u8]>,
}

impl<'a> Feed<'a> {
    /// Makes `blocks` non-empty, moving on through the stream's pieces (their partial blocks are completed on
    /// the scalar kernel) and calling `done(stream, piece, state)` as each piece is complete; false once the
    /// stream is done. `st.h` must be current.
    fn refill(
        &mut self,
        st: &mut Md5State,
        pieces: &[&'a [u8]],
        done: &mut impl FnMut(usize, usize, &Md5State),
    ) -> bool {
        loop {
            if !self.blocks.is_empty() {
                return true;
            }
            if let Some(rest) = self.rest.take() {
                st.keep_tail(rest);
                done(self.stream, self.next_piece - 1, st);
            }
            let Some(piece) = pieces.get(self.next_piece) else {
                return false;
            };
            self.next_piece += 1;
            let whole = st.take_head(piece);
            if st.tail_len == 0 {
                let (blocks, rest) = whole.as_chunks::<64>();
                self.blocks = blocks;
                self.rest = Some(rest);
            } else {
                // The piece ended inside the partial block: nothing whole, go on to the next piece.
                done(self.stream, self.next_piece - 1, st);
            }
        }
    }
}

/// Hashes the pieces `data[i]` (in order, as one sequence) into `states[i]` for every i, the streams side by
/// side in the SIMD lanes for as long as at least two of them have blocks left. The result is exactly that of
/// calling `states[i].update(piece)` for each piece. `done(i, j, state)` sees stream i's state right after its
/// piece j.
pub fn update_many_pieces(
    states: &mut [&mut Md5State],
    data: &[&[&[u8]]],
    done: impl FnMut(usize, usize, &Md5State),
) {
    let all = vec![usize::MAX; states.len()];
    update_many_pieces_while_wide(states, data, &all, 2, done);
}

/// Where [`update_many_pieces_while_wide`] left a stream: `data[i][piece][offset..]` and the pieces after it
/// are not hashed (the state's length excludes them; it stopped either at the start of a piece or inside one
/// on a block boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    pub piece: usize,
    pub offset: usize,
}

/// [`update_many_pieces`], except that streams whose first `need[i]` pieces are hashed stop once fewer than
/// `min_width` streams (at least 2) are left in the lanes and none of them has a needed piece left: a pass of
/// the lanes costs the same however many of them are filled, so a stream's needed bytes take every other
/// stream along for free, but without one, narrow passes cost more per byte than waiting. (With `min_width`
/// 2 a stream stops when it would go on alone on the scalar kernel: 4.4x the cost per byte of one of 8 AVX2
/// lanes, 5.5x of AVX-512VL's.) The rest can join other streams' pieces later. Returns, per stream, where it
/// stopped (None: all its pieces are hashed).
pub fn update_many_pieces_while_wide(
    states: &mut [&mut Md5State],
    data: &[&[&[u8]]],
    need: &[usize],
    min_width: usize,
    mut done: impl FnMut(usize, usize, &Md5State),
) -> Vec<Option<Stopped>> {
    debug_assert_eq!(states.len(), data.len());
    debug_assert_eq!(need.len(), data.len());
    let mut stopped = vec![None; states.len()];
    let mut feeds: Vec<Feed> = Vec::with_capacity(states.len());
    for (i, st) in states.iter_mut().enumerate() {
        let mut f = Feed {
            stream: i,
            next_piece: 0,
            blocks: &[],
            rest: None,
        };
        if f.refill(st, data[i], &mut done) {
            feeds.push(f);
        }
    }
    let simd = simd_available();
    while feeds.len() >= 2 && simd {
        // The piece in progress is `next_piece - 1`.
        if feeds.len() < min_width && feeds.iter().all(|f| f.next_piece > need[f.stream]) {
            break;
        }
        // The first LANES streams with blocks left, for as many blocks as the shortest of them has.
        let take = feeds.len().min(LANES);
        let n = feeds[..take]
            .iter()
            .map(|f| f.blocks.len())
            .min()
            .unwrap_or(0);
        let mut h = [[0u32; 4]; LANES];
        let mut input: [&[[u8; 64]]; LANES] = [&[]; LANES];
        for lane in 0..LANES {
            // Unused lanes recompute the first stream's blocks; their result is dropped.
            let f = &feeds[lane.min(take - 1)];
            h[lane] = states[f.stream].h;
            input[lane] = &f.blocks[..n];
        }
        compress_lanes(&mut h, &input);
        for (lane, f) in feeds[..take].iter_mut().enumerate() {
            states[f.stream].h = h[lane];
            f.blocks = &f.blocks[n..];
        }
        feeds.retain_mut(|f| f.refill(states[f.stream], data[f.stream], &mut done));
    }
    // Without lanes there is nothing better to wait for: everything is hashed.
    let need_of = |i: usize| if simd { need[i] } else { usize::MAX };
    for mut f in feeds {
        let (i, pieces) = (f.stream, data[f.stream]);
        loop {
            let piece = f.next_piece - 1;
            if piece >= need_of(i) {
                // Inside a piece not needed now, on a block boundary (blocks are left, so no partial block is
                // pending): the state gives back what it counted of this piece beyond here.
                let left = f.blocks.len() * 64 + f.rest.map_or(0, <[u8]>::len);
                let st = &mut *states[i];
                debug_assert_eq!(st.tail_len, 0);
                st.len -= left as u64;
                stopped[i] = Some(Stopped {
                    piece,
                    offset: pieces[piece].len() - left,
                });
                break;
            }
            compress_scalar(&mut states[i].h, f.blocks);
            f.blocks = &[];
            if piece + 1 == need_of(i) {
                // The last piece needed: complete it and stop before the next one.
                if let Some(rest) = f.rest.take() {
                    states[i].keep_tail(rest);
                }
                done(i, piece, states[i]);
                if piece + 1 < pieces.len() {
                    stopped[i] = Some(Stopped {
                        piece: piece + 1,
                        offset: 0,
                    });
                }
                break;
            }
            if !f.refill(states[i], pieces, &mut done) {
                break;
            }
        }
    }
    stopped
}

/// The widest lane kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Avx512Vl,
    Avx2,
    Scalar,
}

fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                Kernel::Avx512Vl
            } else if std::arch::is_x86_feature_detected!("avx2") {
                Kernel::Avx2
            } else {
                Kernel::Scalar
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Kernel::Scalar
    }
}

fn simd_available() -> bool {
    kernel() != Kernel::Scalar
}

/// Compresses `input[lane]` (all the same number of blocks) into `h[lane]` for the 8 lanes.
fn compress_lanes(h: &mut [[u32; 4]; LANES], input: &[&[[u8; 64]]; LANES]) {
    compress_lanes_with(kernel(), h, input);
}

fn compress_lanes_with(k: Kernel, h: &mut [[u32; 4]; LANES], input: &[&[[u8; 64]]; LANES]) {
    match k {
        // SAFETY (both): `kernel()` saw the CPU features the kernel is compiled for (tests pass only kernels
        // `kernel()` allows); the kernels touch memory only through safe slices.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vl => unsafe { avx512::compress8_vl(h, input) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::compress8(h, input) },
        _ => {
            for (state, blocks) in h.iter_mut().zip(input) {
                compress_scalar(state, blocks);
            }
        }
    }
}

/// Per step: message word index and rotation (RFC 1321).
const SCHEDULE: [(usize, i32); 64] = {
    let shifts = [
        [7, 12, 17, 22],
        [5, 9, 14, 20],
        [4, 11, 16, 23],
        [6, 10, 15, 21],
    ];
    let mut s = [(0usize, 0i32); 64];
    let mut i = 0;
    while i < 64 {
        let round = i / 16;
        let g = match round {
            0 => i,
            1 => (5 * i + 1) % 16,
            2 => (3 * i + 5) % 16,
            _ => (7 * i) % 16,
        };
        s[i] = (g, shifts[round][i % 4]);
        i += 1;
    }
    s
};

const K: [u32; 64] = {
    // floor(abs(sin(i + 1)) * 2^32), RFC 1321 T[i]
    [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ]
};

/// One MD5 step on all lanes (`__m256i` of 8 lanes): message word, constant and shift are compile-time
/// constants (immediate shifts, no bounds checks, no branch on the round), and `a + K + m` is summed before
/// the round function's result arrives, so only the round function, one add, the rotate and the last add wait
/// for the previous step.
#[cfg(target_arch = "x86_64")]
macro_rules! md5_step {
    ($m:ident, $rot:ident, $f:ident, $i:expr, $a:ident, $b:ident, $c:ident, $d:ident) => {{
        const G: usize = SCHEDULE[$i].0;
        const S: i32 = SCHEDULE[$i].1;
        let early = _mm256_add_epi32($a, _mm256_add_epi32($m[G], _mm256_set1_epi32(K[$i] as i32)));
        let sum = _mm256_add_epi32(early, $f($b, $c, $d));
        $a = _mm256_add_epi32($b, $rot::<S, { 32 - S }>(sum));
    }};
}

/// The 64 steps of one block, fully unrolled, added into `state` ([a, b, c, d] as vectors).
#[cfg(target_arch = "x86_64")]
macro_rules! md5_block_steps {
    ($state:ident, $m:ident, $rot:ident, $f1:ident, $f2:ident, $f3:ident, $f4:ident) => {{
        let [mut a, mut b, mut c, mut d] = $state;
        macro_rules! four {
            ($f:ident, $i:expr) => {
                md5_step!($m, $rot, $f, $i, a, b, c, d);
                md5_step!($m, $rot, $f, $i + 1, d, a, b, c);
                md5_step!($m, $rot, $f, $i + 2, c, d, a, b);
                md5_step!($m, $rot, $f, $i + 3, b, c, d, a);
            };
        }
        four!($f1, 0);
        four!($f1, 4);
        four!($f1, 8);
        four!($f1, 12);
        four!($f2, 16);
        four!($f2, 20);
        four!($f2, 24);
        four!($f2, 28);
        four!($f3, 32);
        four!($f3, 36);
        four!($f3, 40);
        four!($f3, 44);
        four!($f4, 48);
        four!($f4, 52);
        four!($f4, 56);
        four!($f4, 60);
        $state = [
            _mm256_add_epi32($state[0], a),
            _mm256_add_epi32($state[1], b),
            _mm256_add_epi32($state[2], c),
            _mm256_add_epi32($state[3], d),
        ];
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{K, LANES, SCHEDULE};

    /// Word `j` of every lane's state, as one vector per word.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn load_state(h: &[[u32; 4]; LANES]) -> [__m256i; 4] {
        std::array::from_fn(|j| {
            let v = |l: usize| h[l][j] as i32;
            _mm256_set_epi32(v(7), v(6), v(5), v(4), v(3), v(2), v(1), v(0))
        })
    }

    /// The inverse of `load_state`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn store_state(h: &mut [[u32; 4]; LANES], words: [__m256i; 4]) {
        let mut out = [[0i32; LANES]; 4];
        for (o, v) in out.iter_mut().zip(words) {
            // SAFETY: `o` is 8 i32s = 32 bytes, the size of one __m256i; unaligned store.
            unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), v) };
        }
        for (l, state) in h.iter_mut().enumerate() {
            for (j, word) in state.iter_mut().enumerate() {
                *word = out[j][l] as u32;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn rotl_const<const L: i32, const R: i32>(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi32::<L>(x), _mm256_srli_epi32::<R>(x))
    }

    /// The 16 message words of block `b` of every lane, word `w` as one vector: each half block is an 8x8
    /// transpose of 32-bit words (8 loads and 24 shuffles), where gathering word by word took 4 inserts each.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn load_block(input: &[&[[u8; 64]]; LANES], b: usize) -> [__m256i; 16] {
        let mut m = [_mm256_setzero_si256(); 16];
        for half in 0..2 {
            let r: [__m256i; LANES] = std::array::from_fn(|l| {
                let bytes: &[u8] = &input[l][b][half * 32..half * 32 + 32];
                // SAFETY: `bytes` is 32 readable bytes (the indexing checked it), the size of one __m256i;
                // unaligned load.
                unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
            });
            let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
            let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
            let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
            let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
            // Lanes 0-3 (u0..u3) and 4-7 (u4..u7) of words j and j + 4 in their two 128-bit halves.
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            let w = &mut m[half * 8..half * 8 + 8];
            w[0] = _mm256_permute2x128_si256::<0x20>(u0, u4);
            w[1] = _mm256_permute2x128_si256::<0x20>(u1, u5);
            w[2] = _mm256_permute2x128_si256::<0x20>(u2, u6);
            w[3] = _mm256_permute2x128_si256::<0x20>(u3, u7);
            w[4] = _mm256_permute2x128_si256::<0x31>(u0, u4);
            w[5] = _mm256_permute2x128_si256::<0x31>(u1, u5);
            w[6] = _mm256_permute2x128_si256::<0x31>(u2, u6);
            w[7] = _mm256_permute2x128_si256::<0x31>(u3, u7);
        }
        m
    }

    /// The round functions, written so that only one or two operations wait for `b`, the value the previous
    /// step just produced (the rest is ready earlier): a step's latency is the kernel's speed limit.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn f1(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        // (b & c) | (!b & d) = d ^ (b & (c ^ d))
        _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn f2(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        // (b & d) | (c & !d)
        _mm256_or_si256(_mm256_and_si256(b, d), _mm256_andnot_si256(d, c))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn f3(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_xor_si256(b, _mm256_xor_si256(c, d))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn f4(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        // c ^ (b | !d)
        _mm256_xor_si256(
            c,
            _mm256_or_si256(b, _mm256_xor_si256(d, _mm256_set1_epi32(-1))),
        )
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn compress8(h: &mut [[u32; 4]; LANES], input: &[&[[u8; 64]]; LANES]) {
        let mut state = load_state(h);
        for blk in 0..input[0].len() {
            let m = load_block(input, blk);
            md5_block_steps!(state, m, rotl_const, f1, f2, f3, f4);
        }
        store_state(h, state);
    }
}

/// The same kernel with AVX-512VL on 256-bit vectors: one-instruction rotates (vprold) and the round functions
/// as one ternary-logic instruction each, which shortens the dependency chain of every step. Measured 1.6x the
/// AVX2 kernel in session 4, when both still looped over the steps; the unrolled kernels have not been compared
/// on an AVX-512 machine yet (the development VM has none; the kernel test covers it wherever it runs).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{load_block, load_state, store_state};
    use super::{K, LANES, SCHEDULE};

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    fn rot<const L: i32, const R: i32>(x: __m256i) -> __m256i {
        _mm256_rol_epi32::<L>(x)
    }

    /// (b & c) | (!b & d)
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    fn f1(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_ternarylogic_epi32::<0xca>(b, c, d)
    }

    /// (b & d) | (c & !d)
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    fn f2(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_ternarylogic_epi32::<0xe4>(b, c, d)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    fn f3(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_ternarylogic_epi32::<0x96>(b, c, d)
    }

    /// c ^ (b | !d)
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    fn f4(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_ternarylogic_epi32::<0x39>(b, c, d)
    }

    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn compress8_vl(h: &mut [[u32; 4]; LANES], input: &[&[[u8; 64]]; LANES]) {
        let mut state = load_state(h);
        for blk in 0..input[0].len() {
            let m = load_block(input, blk);
            md5_block_steps!(state, m, rot, f1, f2, f3, f4);
        }
        store_state(h, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;
    use proptest::prelude::*;

    fn reference(data: &[u8]) -> [u8; 16] {
        md5::Md5::digest(data).into()
    }

    /// A state saved as bytes and read back goes on to the same digest, whether it was hashed alone or in the
    /// lanes; bytes of any other shape are refused.
    #[test]
    fn a_state_round_trips_through_its_bytes() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for cut in [0, 1, 63, 64, 65, 1000, 4999] {
            let mut alone = Md5State::new();
            alone.update(&data[..cut]);
            let mut lanes = [Md5State::new(), Md5State::new()];
            {
                let mut refs: Vec<&mut Md5State> = lanes.iter_mut().collect();
                update_many(&mut refs, &[&data[..cut], &data[..cut / 2]]);
            }
            for (which, st) in [("alone", alone), ("lanes", lanes[0].clone())] {
                let bytes = st.to_bytes();
                assert_eq!(bytes.len(), 24 + cut % 64);
                let mut back = Md5State::from_bytes(&bytes).expect("round trip");
                back.update(&data[cut..]);
                assert_eq!(back.finalize(), reference(&data), "cut {cut} {which}");
                assert_eq!(Md5State::from_bytes(&bytes[..bytes.len() - 1]), None);
                let mut longer = bytes.clone();
                longer.push(0);
                assert_eq!(Md5State::from_bytes(&longer), None);
            }
        }
        assert_eq!(Md5State::from_bytes(&[0; 10]), None);
    }

    #[test]
    fn rfc_1321_vectors() {
        let hex = |d: [u8; 16]| hex::encode(d);
        let one = |s: &[u8]| {
            let mut st = Md5State::new();
            st.update(s);
            hex(st.finalize())
        };
        assert_eq!(one(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(one(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            one(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn simd_lanes_match_scalar_on_long_streams() {
        // 11 streams of different lengths (more than one round of lanes), fed in three uneven pieces.
        let streams: Vec<Vec<u8>> = (0..11u32)
            .map(|s| {
                (0..(70_000 + s * 9_001))
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> (s % 7 + 9)) as u8)
                    .collect()
            })
            .collect();
        let mut states: Vec<Md5State> = (0..streams.len()).map(|_| Md5State::new()).collect();
        for cut in [(0usize, 1usize), (1, 40_123), (40_123, usize::MAX)] {
            let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
            let pieces: Vec<&[u8]> = streams
                .iter()
                .map(|s| &s[cut.0.min(s.len())..cut.1.min(s.len())])
                .collect();
            update_many(&mut refs, &pieces);
        }
        for (st, s) in states.into_iter().zip(&streams) {
            assert_eq!(st.finalize(), reference(s));
        }
    }

    #[test]
    fn every_kernel_this_cpu_runs_matches_the_scalar_one() {
        let data: Vec<u8> = (0..64 * 37u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let (blocks, _) = data.as_chunks::<64>();
        let input: [&[[u8; 64]]; LANES] = std::array::from_fn(|l| &blocks[l..l + 29]);
        let start: [[u32; 4]; LANES] =
            std::array::from_fn(|l| [INIT[0] ^ l as u32, INIT[1], INIT[2], INIT[3]]);
        let mut want = start;
        compress_lanes_with(Kernel::Scalar, &mut want, &input);
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                kernels.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                kernels.push(Kernel::Avx512Vl);
            }
        }
        for k in kernels {
            let mut got = start;
            compress_lanes_with(k, &mut got, &input);
            assert_eq!(got, want, "{k:?}");
        }
    }

    /// `data` cut into pieces at `cuts` (each taken modulo the length + 1, in order).
    fn split_at_cuts<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        at.sort_unstable();
        let mut out = Vec::new();
        let mut from = 0;
        for c in at.into_iter().chain([data.len()]) {
            out.push(&data[from..c]);
            from = c;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn update_many_equals_md5_of_each_stream(
            streams in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..3000), proptest::collection::vec(0usize..3000, 0..4)),
                0..12,
            ),
        ) {
            // Each stream is split at its cut points; round r feeds every stream's r-th piece together.
            let pieces: Vec<Vec<&[u8]>> =
                streams.iter().map(|(data, cuts)| split_at_cuts(data, cuts)).collect();
            let mut states: Vec<Md5State> = streams.iter().map(|_| Md5State::new()).collect();
            for round in 0..5 {
                let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
                let feed: Vec<&[u8]> = pieces.iter().map(|p| p.get(round).copied().unwrap_or(&[])).collect();
                update_many(&mut refs, &feed);
            }
            for (st, (data, _)) in states.into_iter().zip(&streams) {
                prop_assert_eq!(st.len(), data.len() as u64);
                prop_assert_eq!(st.finalize(), reference(data));
            }
        }

        #[test]
        fn update_many_pieces_equals_md5_of_each_stream(
            streams in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..5000), proptest::collection::vec(0usize..5000, 0..6)),
                0..12,
            ),
        ) {
            // Each stream's pieces all at once: lanes refill from the next piece as a stream's blocks run out.
            let pieces: Vec<Vec<&[u8]>> =
                streams.iter().map(|(data, cuts)| split_at_cuts(data, cuts)).collect();
            let mut states: Vec<Md5State> = streams.iter().map(|_| Md5State::new()).collect();
            let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
            let feed: Vec<&[&[u8]]> = pieces.iter().map(|p| &p[..]).collect();
            let mut seen: Vec<(usize, usize, u64)> = Vec::new();
            update_many_pieces(&mut refs, &feed, |i, j, st| seen.push((i, j, st.len())));
            // Every piece is reported once, with the state's length at its end.
            seen.sort_unstable();
            let want: Vec<(usize, usize, u64)> = pieces
                .iter()
                .enumerate()
                .flat_map(|(i, p)| {
                    p.iter().enumerate().scan(0u64, move |at, (j, piece)| {
                        *at += piece.len() as u64;
                        Some((i, j, *at))
                    })
                })
                .collect();
            prop_assert_eq!(seen, want);
            for (st, (data, _)) in states.into_iter().zip(&streams) {
                prop_assert_eq!(st.len(), data.len() as u64);
                prop_assert_eq!(st.finalize(), reference(data));
            }
        }

        #[test]
        fn streams_left_narrow_resume_exactly_where_they_stopped(
            streams in proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..5000),
                    proptest::collection::vec(0usize..5000, 0..6),
                    0usize..8,
                ),
                0..12,
            ),
            min_width in 2usize..=LANES,
        ) {
            // Streams stop, once their needed pieces are hashed, when fewer than `min_width` would go on; their
            // rest (the stopped piece from its offset, then the later pieces) is fed again until every stream
            // is done.
            let pieces: Vec<Vec<&[u8]>> =
                streams.iter().map(|(data, cuts, _)| split_at_cuts(data, cuts)).collect();
            let mut states: Vec<Md5State> = streams.iter().map(|_| Md5State::new()).collect();
            let mut left: Vec<Vec<&[u8]>> = pieces.clone();
            let mut first_round = true;
            while left.iter().any(|p| !p.is_empty()) {
                let active: Vec<usize> = (0..left.len()).filter(|&i| !left[i].is_empty()).collect();
                // After the first round everything is needed, so the loop ends.
                let need: Vec<usize> =
                    active.iter().map(|&i| if first_round { streams[i].2 } else { usize::MAX }).collect();
                let feed: Vec<&[&[u8]]> = active.iter().map(|&i| &left[i][..]).collect();
                let stops = {
                    let mut refs: Vec<&mut Md5State> = Vec::new();
                    for (i, st) in states.iter_mut().enumerate() {
                        if active.contains(&i) {
                            refs.push(st);
                        }
                    }
                    update_many_pieces_while_wide(&mut refs, &feed, &need, min_width, |_, _, _| {})
                };
                let mut next: Vec<Vec<&[u8]>> = vec![Vec::new(); left.len()];
                for (k, &i) in active.iter().enumerate() {
                    if let Some(stop) = stops[k] {
                        prop_assert!(stop.piece >= need[k], "needed pieces are complete");
                        let mut rest = vec![&left[i][stop.piece][stop.offset..]];
                        rest.extend_from_slice(&left[i][stop.piece + 1..]);
                        let done: u64 = pieces[i].iter().map(|p| p.len() as u64).sum::<u64>()
                            - rest.iter().map(|p| p.len() as u64).sum::<u64>();
                        prop_assert_eq!(states[i].len(), done);
                        prop_assert!(stop.offset == 0 || done.is_multiple_of(64), "mid-piece only on a block boundary");
                        next[i] = rest;
                    }
                }
                left = next;
                first_round = false;
            }
            for (st, (data, _, _)) in states.into_iter().zip(&streams) {
                prop_assert_eq!(st.len(), data.len() as u64);
                prop_assert_eq!(st.finalize(), reference(data));
            }
        }
    }
}
