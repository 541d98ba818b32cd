//! Synthetic backup workloads for choosing and checking the chunk size (issue 2, README "Chunk size").
//!
//! Three generators, each producing "nightly full" number `n = 0, 1, 2, ...` of one kind of backup stream:
//! - [`TarTree`]: a ustar stream of a file tree of text-like and incompressible files; between fulls a fixed
//!   fraction of the files (default 1.5%) changes: edited in place, appended to, added or removed.
//! - [`VmImage`]: a disk image of 4 KiB blocks (zero, compressible, random); between fulls exactly a given
//!   fraction (default 0.5%) of the blocks is rewritten at scattered random positions.
//! - [`DbDump`]: a `pg_dump --inserts` style SQL dump ordered by id; between fulls clusters of rows are inserted
//!   in the middle (shifting everything after them) and a few rows are updated.
//!
//! All are deterministic (same seed and `n` give the same bytes; an own SplitMix64 PRNG, so the output does not
//! move when a dependency changes its algorithms) and streaming: [`std::io::Read`] of any length, with memory
//! bounded by metadata (one small record per file, per rewritten block or per inserted row cluster), never by
//! the stream length. Contents are regenerated from seeds on the fly.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::OnceLock;

/// One of the synthetic workloads; `full(n)` streams nightly full backup `n`.
pub trait Workload: Send + Sync {
    fn name(&self) -> &'static str;
    fn full(&self, n: u32) -> Box<dyn Read + Send>;
}

// ---------------------------------------------------------------------------------------------------------
// Randomness and content

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the sub-stream `tag` of `seed` (files, blocks, rows, fulls each get their own).
fn derive(seed: u64, tag: u64) -> u64 {
    fmix(fmix(seed ^ tag.wrapping_mul(GOLDEN)).wrapping_add(GOLDEN))
}

/// SplitMix64: tiny, fast, and good enough for test data.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        fmix(self.0)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Log-uniform in `lo..=hi`: many small values, a few large ones (file and edit sizes).
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1)) as f64, (hi.max(lo).max(1)) as f64);
        ((l.ln() + self.unit() * (h.ln() - l.ln())).exp() as u64).clamp(lo, hi.max(lo))
    }
    fn fill(&mut self, out: &mut [u8]) {
        let mut it = out.chunks_exact_mut(8);
        for c in &mut it {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = it.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
    /// `k` distinct values of `0..n`, sorted (Floyd's algorithm: O(k) memory however large `n` is).
    fn sample(&mut self, n: u64, k: u64) -> Vec<u64> {
        assert!(k <= n, "cannot sample {k} of {n}");
        let mut set = HashSet::with_capacity(k as usize);
        for j in n - k..n {
            let t = self.below(j + 1);
            if !set.insert(t) {
                set.insert(j);
            }
        }
        let mut v: Vec<u64> = set.into_iter().collect();
        v.sort_unstable();
        v
    }
}

/// Word list for text-like content: fixed, so every workload and seed share it (like a natural language).
fn vocabulary() -> &'static [Vec<u8>] {
    static VOCAB: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    VOCAB.get_or_init(|| {
        let mut r = Rng::new(0x0C41_2B5E_ED00_0001);
        (0..2048)
            .map(|_| {
                let len = 2 + r.below(9) as usize;
                (0..len).map(|_| b'a' + r.below(26) as u8).collect()
            })
            .collect()
    })
}

/// Text-like bytes: lines of Zipf-ish words and numbers, compressing about 3x with zstd (logs, source, docs).
#[derive(Clone, Debug)]
struct TextGen {
    rng: Rng,
    line: Vec<u8>,
    pos: usize,
}

impl TextGen {
    fn new(seed: u64) -> TextGen {
        TextGen {
            rng: Rng::new(seed),
            line: Vec::with_capacity(128),
            pos: 0,
        }
    }

    /// A word index skewed towards small indices (product of two uniforms), like word frequencies.
    fn word(&mut self) -> &'static [u8] {
        let r = self.rng.next_u64();
        let i = ((r & 0x7ff) * ((r >> 11) & 0x7ff)) >> 11;
        &vocabulary()[i as usize]
    }

    fn next_line(&mut self) {
        self.line.clear();
        self.pos = 0;
        let words = 3 + self.rng.below(12);
        for w in 0..words {
            if w > 0 {
                self.line.push(b' ');
            }
            if self.rng.below(8) == 0 {
                let v = self.rng.below(1_000_000);
                self.line.extend_from_slice(v.to_string().as_bytes());
            } else {
                let word = self.word();
                self.line.extend_from_slice(word);
            }
        }
        self.line.push(b'\n');
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut o = 0;
        while o < out.len() {
            if self.pos == self.line.len() {
                self.next_line();
            }
            let n = (out.len() - o).min(self.line.len() - self.pos);
            out[o..o + n].copy_from_slice(&self.line[self.pos..self.pos + n]);
            o += n;
            self.pos += n;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Zero,
    Text,
    Random,
}

/// A sequential generator of one kind of content.
#[derive(Clone, Debug)]
enum Content {
    Zero,
    Text(TextGen),
    Random(Rng),
}

impl Content {
    fn new(kind: Kind, seed: u64) -> Content {
        match kind {
            Kind::Zero => Content::Zero,
            Kind::Text => Content::Text(TextGen::new(seed)),
            Kind::Random => Content::Random(Rng::new(seed)),
        }
    }
    fn fill(&mut self, out: &mut [u8]) {
        match self {
            Content::Zero => out.fill(0),
            Content::Text(t) => t.fill(out),
            Content::Random(r) => r.fill(out),
        }
    }
    fn bytes(kind: Kind, seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Content::new(kind, seed).fill(&mut v);
        v
    }
}

/// Size of the pieces readers generate at a time.
const PIECE: usize = 64 * 1024;

/// Adapts a "produce the next piece" function to `Read`.
struct PieceReader<S> {
    state: S,
    buf: Vec<u8>,
    pos: usize,
    next: fn(&mut S, &mut Vec<u8>) -> bool,
}

impl<S> PieceReader<S> {
    fn new(state: S, next: fn(&mut S, &mut Vec<u8>) -> bool) -> PieceReader<S> {
        PieceReader {
            state,
            buf: Vec::with_capacity(PIECE),
            pos: 0,
            next,
        }
    }
}

impl<S> Read for PieceReader<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if !(self.next)(&mut self.state, &mut self.buf) {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------------------
// TarTree

/// Nightly full tar backups of a slowly changing file tree.
///
/// File sizes are log-uniform in three classes (85% 512 B-64 KiB, 13% 64 KiB-1 MiB, 2% 1-16 MiB; mean about
/// 170 KiB), 60% of files text-like and 40% incompressible (media, archives). Between fulls
/// `round(files * change_fraction)` (at least 1) distinct files change: 45% edited in place (1-4 regions of
/// 16 B-16 KiB overwritten), 40% appended to (256 B up to 10% of the file, like logs), 7.5% removed; and as
/// many new files as the 7.5% are added. A changed file also gets a new mtime in its header.
#[derive(Clone, Debug)]
pub struct TarTree {
    pub seed: u64,
    /// The size of full 0 (approximately: whole files are added until it is reached).
    pub approx_bytes: u64,
    pub change_fraction: f64,
}

#[derive(Clone, Debug)]
struct TarFile {
    /// Sort key; the path is derived from it, so sorting by key is sorting by path.
    key: u64,
    kind: Kind,
    seed: u64,
    base_len: u64,
    /// (length, content seed) of the pieces appended after the base.
    appends: Vec<(u64, u64)>,
    /// (offset, length, content seed) of regions overwritten in place, applied in order.
    overlays: Vec<(u64, u64, u64)>,
    mtime: u64,
}

impl TarFile {
    fn len(&self) -> u64 {
        self.base_len + self.appends.iter().map(|a| a.0).sum::<u64>()
    }
    fn path(&self) -> String {
        let ext = match (self.kind, self.key % 3) {
            (Kind::Text, 0) => "txt",
            (Kind::Text, 1) => "log",
            (Kind::Text, _) => "rs",
            (_, 0) => "jpg",
            (_, 1) => "zip",
            (_, _) => "bin",
        };
        format!(
            "data/d{:02}/s{:02}/{:012x}.{ext}",
            self.key >> 59,
            (self.key >> 54) & 31,
            self.key & 0xffff_ffff_ffff
        )
    }
}

const EPOCH: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

impl TarTree {
    pub fn new(seed: u64, approx_bytes: u64) -> TarTree {
        TarTree {
            seed,
            approx_bytes,
            change_fraction: 0.015,
        }
    }

    pub fn with_change_fraction(mut self, f: f64) -> TarTree {
        self.change_fraction = f;
        self
    }

    fn new_file(r: &mut Rng, full: u32) -> TarFile {
        let class = r.below(100);
        let base_len = if class < 85 {
            r.log_uniform(512, 64 << 10)
        } else if class < 98 {
            r.log_uniform(64 << 10, 1 << 20)
        } else {
            r.log_uniform(1 << 20, 16 << 20)
        };
        TarFile {
            key: r.next_u64(),
            kind: if r.below(10) < 6 {
                Kind::Text
            } else {
                Kind::Random
            },
            seed: r.next_u64(),
            base_len,
            appends: Vec::new(),
            overlays: Vec::new(),
            mtime: EPOCH + u64::from(full) * DAY - r.below(DAY * 365),
        }
    }

    /// How many files change between full `n-1` and `n`, given the number of files in `n-1`.
    pub fn changes_for(&self, files: usize) -> usize {
        ((files as f64 * self.change_fraction).round() as usize).max(1)
    }

    /// The file list of full `n`, sorted by path (metadata only: O(files) memory).
    fn files(&self, n: u32) -> Vec<TarFile> {
        let mut r = Rng::new(derive(self.seed, 0));
        let mut files = Vec::new();
        let mut total = 0;
        while total < self.approx_bytes {
            let f = TarTree::new_file(&mut r, 0);
            total += f.base_len;
            files.push(f);
        }
        files.sort_unstable_by_key(|f| f.key);
        for full in 1..=n {
            let mut r = Rng::new(derive(self.seed, u64::from(full)));
            let changes = self.changes_for(files.len()).min(files.len());
            let picked = r.sample(files.len() as u64, changes as u64);
            let mut removed = HashSet::new();
            let mut added = 0;
            let mtime = EPOCH + u64::from(full) * DAY;
            for i in picked {
                let f = &mut files[i as usize];
                let len = f.len();
                let action = r.below(1000);
                if action < 450 {
                    for _ in 0..1 + r.below(4) {
                        let l = r.log_uniform(16, (16 << 10).min(len));
                        let off = r.below(len - l + 1);
                        f.overlays.push((off, l, r.next_u64()));
                    }
                } else if action < 850 {
                    let l = r.log_uniform(256, (len / 10).clamp(1024, 1 << 20));
                    f.appends.push((l, r.next_u64()));
                } else if action < 925 {
                    removed.insert(i as usize);
                    continue;
                } else {
                    added += 1; // this slot's change is a new file instead
                    continue;
                }
                f.mtime = mtime;
            }
            let mut i = 0;
            files.retain(|_| {
                i += 1;
                !removed.contains(&(i - 1))
            });
            for _ in 0..added {
                let mut f = TarTree::new_file(&mut r, full);
                f.mtime = mtime;
                files.push(f);
            }
            files.sort_unstable_by_key(|f| f.key);
        }
        files
    }

    /// Streams full `n` as a ustar archive.
    pub fn reader(&self, n: u32) -> impl Read + Send + use<> {
        let state = TarState {
            files: self.files(n),
            next_file: 0,
            body: None,
            trailer_left: None,
            written: 0,
        };
        PieceReader::new(state, TarState::next_piece)
    }
}

impl Workload for TarTree {
    fn name(&self) -> &'static str {
        "tar"
    }
    fn full(&self, n: u32) -> Box<dyn Read + Send> {
        Box::new(self.reader(n))
    }
}

/// Streams one file's body: base content, then appends, with in-place overlays patched over.
struct BodyGen {
    segments: Vec<(u64, Content)>,
    seg: usize,
    seg_left: u64,
    pos: u64,
    len: u64,
    /// (offset, bytes); small (<= 16 KiB each), materialised when the file starts.
    overlays: Vec<(u64, Vec<u8>)>,
}

impl BodyGen {
    fn new(f: &TarFile) -> BodyGen {
        let mut segments = vec![(f.base_len, Content::new(f.kind, f.seed))];
        segments.extend(f.appends.iter().map(|&(l, s)| (l, Content::new(f.kind, s))));
        let overlays = f
            .overlays
            .iter()
            .map(|&(off, l, s)| (off, Content::bytes(f.kind, s, l as usize)))
            .collect();
        BodyGen {
            seg_left: segments[0].0,
            segments,
            seg: 0,
            pos: 0,
            len: f.len(),
            overlays,
        }
    }

    /// Appends up to `max` body bytes to `out`; false at the end of the body.
    fn next(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        let start = self.pos;
        let n = (self.len - self.pos).min(max as u64) as usize;
        if n == 0 {
            return false;
        }
        let base = out.len();
        out.resize(base + n, 0);
        let mut o = base;
        while o < base + n {
            while self.seg_left == 0 {
                self.seg += 1;
                self.seg_left = self.segments[self.seg].0;
            }
            let k = (base + n - o).min(self.seg_left as usize);
            self.segments[self.seg].1.fill(&mut out[o..o + k]);
            self.seg_left -= k as u64;
            o += k;
        }
        self.pos += n as u64;
        let end = self.pos;
        for (off, bytes) in &self.overlays {
            let (a, b) = ((*off).max(start), (off + bytes.len() as u64).min(end));
            if a < b {
                let dst = base + (a - start) as usize;
                let src = (a - off) as usize;
                out[dst..dst + (b - a) as usize]
                    .copy_from_slice(&bytes[src..src + (b - a) as usize]);
            }
        }
        true
    }
}

struct TarState {
    files: Vec<TarFile>,
    next_file: usize,
    body: Option<BodyGen>,
    trailer_left: Option<u64>,
    written: u64,
}

/// A POSIX ustar header (readable by `tar tvf`).
fn ustar_header(path: &str, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], off: usize, s: &[u8]| h[off..off + s.len()].copy_from_slice(s);
    assert!(path.len() < 100, "path too long for ustar: {path}");
    put(&mut h, 0, path.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0001750\0");
    put(&mut h, 116, b"0001750\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, format!("{mtime:011o}\0").as_bytes());
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 265, b"cairn");
    put(&mut h, 297, b"cairn");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

impl TarState {
    fn next_piece(&mut self, out: &mut Vec<u8>) -> bool {
        let before = out.len();
        self.piece(out);
        self.written += (out.len() - before) as u64;
        out.len() > before
    }

    fn piece(&mut self, out: &mut Vec<u8>) {
        if let Some(body) = &mut self.body {
            if body.next(out, PIECE) {
                return;
            }
            let pad = (512 - (body.len % 512) as usize) % 512;
            out.resize(out.len() + pad, 0);
            self.body = None;
            if pad > 0 {
                return;
            }
        }
        if self.next_file < self.files.len() {
            let f = &self.files[self.next_file];
            self.next_file += 1;
            out.extend_from_slice(&ustar_header(&f.path(), f.len(), f.mtime));
            self.body = Some(BodyGen::new(f));
            return;
        }
        // End of archive: two zero blocks, then padding to GNU tar's 10240-byte record.
        let left = self.trailer_left.get_or_insert_with(|| {
            let end = self.written + 1024;
            end.div_ceil(10240) * 10240 - self.written
        });
        let n = (*left).min(PIECE as u64) as usize;
        *left -= n as u64;
        out.resize(out.len() + n, 0);
    }
}

// ---------------------------------------------------------------------------------------------------------
// VmImage

/// Bytes per VM image block.
pub const VM_BLOCK: u64 = 4096;

/// A VM disk image of fixed size, made of 4 KiB blocks.
///
/// Layout of full 0 in 64 KiB extents (a filesystem allocates in runs): 25% zero (unused space), 35%
/// text-like, 40% random. Between full `j-1` and `j` exactly `round(blocks * rewrite_fraction)` distinct blocks,
/// chosen uniformly, are rewritten with new text-like or random content (never zero, so every rewrite changes
/// the block).
#[derive(Clone, Debug)]
pub struct VmImage {
    pub seed: u64,
    /// Rounded down to whole blocks.
    pub size: u64,
    pub rewrite_fraction: f64,
}

impl VmImage {
    pub fn new(seed: u64, size: u64) -> VmImage {
        VmImage {
            seed,
            size: size / VM_BLOCK * VM_BLOCK,
            rewrite_fraction: 0.005,
        }
    }

    pub fn with_rewrite_fraction(mut self, f: f64) -> VmImage {
        self.rewrite_fraction = f;
        self
    }

    pub fn blocks(&self) -> u64 {
        self.size / VM_BLOCK
    }

    /// How many blocks each full rewrites.
    pub fn rewrites_per_full(&self) -> u64 {
        ((self.blocks() as f64 * self.rewrite_fraction).round() as u64).min(self.blocks())
    }

    /// The blocks rewritten between full `n-1` and `n` (n >= 1), sorted.
    pub fn rewritten(&self, n: u32) -> Vec<u64> {
        let mut r = Rng::new(derive(self.seed, u64::from(n)));
        r.sample(self.blocks(), self.rewrites_per_full())
    }

    /// Streams full `n` (exactly `size` bytes).
    pub fn reader(&self, n: u32) -> impl Read + Send + use<> {
        // block -> the last full that rewrote it; O(n * rewrites) memory.
        let mut last: HashMap<u64, u32> = HashMap::new();
        for j in 1..=n {
            for b in self.rewritten(j) {
                last.insert(b, j);
            }
        }
        let mut versions: Vec<(u64, u32)> = last.into_iter().collect();
        versions.sort_unstable();
        let state = VmState {
            seed: self.seed,
            blocks: self.blocks(),
            next: 0,
            versions,
            vi: 0,
        };
        PieceReader::new(state, VmState::next_piece)
    }
}

impl Workload for VmImage {
    fn name(&self) -> &'static str {
        "vm-image"
    }
    fn full(&self, n: u32) -> Box<dyn Read + Send> {
        Box::new(self.reader(n))
    }
}

struct VmState {
    seed: u64,
    blocks: u64,
    next: u64,
    versions: Vec<(u64, u32)>,
    vi: usize,
}

impl VmState {
    fn next_piece(&mut self, out: &mut Vec<u8>) -> bool {
        let per_piece = PIECE as u64 / VM_BLOCK;
        let end = (self.next + per_piece).min(self.blocks);
        if self.next == end {
            return false;
        }
        out.resize(((end - self.next) * VM_BLOCK) as usize, 0);
        for (i, b) in (self.next..end).enumerate() {
            let block = &mut out[i * VM_BLOCK as usize..(i + 1) * VM_BLOCK as usize];
            let mut version = 0;
            if self.vi < self.versions.len() && self.versions[self.vi].0 == b {
                version = self.versions[self.vi].1;
                self.vi += 1;
            }
            let (kind, seed) = if version == 0 {
                let extent = b / 16;
                let kind = match derive(self.seed, extent | (1 << 63)) % 100 {
                    0..25 => Kind::Zero,
                    25..60 => Kind::Text,
                    _ => Kind::Random,
                };
                (kind, derive(self.seed, b))
            } else {
                let s = derive(derive(self.seed, b), u64::from(version));
                let kind = if s.is_multiple_of(2) {
                    Kind::Text
                } else {
                    Kind::Random
                };
                (kind, s)
            };
            Content::new(kind, seed).fill(block);
        }
        self.next = end;
        true
    }
}

// ---------------------------------------------------------------------------------------------------------
// DbDump

/// A text SQL dump of one `orders` table, one `INSERT` per row, ordered by id (`pg_dump --inserts`).
///
/// Full 0 has `rows` rows with ids spaced 10^7 apart. Between full `j-1` and `j`:
/// `round(rows * insert_fraction)` (default 0.5%) new rows arrive in clusters of 1-64 at uniformly random places
/// in the id order (a clustered key such as (customer, order)), shifting every byte after them; and
/// `round(rows * update_fraction)` (default 0.01%) existing rows change their status, amount and updated_at columns (which
/// may change their length). The dump header carries the dump date, so it changes every night.
#[derive(Clone, Debug)]
pub struct DbDump {
    pub seed: u64,
    pub rows: u64,
    pub insert_fraction: f64,
    pub update_fraction: f64,
}

/// Mean length of a generated row, used to size a dump from bytes.
const DB_ROW_BYTES: u64 = 220;
const DB_MAX_CLUSTER: u64 = 64;

impl DbDump {
    /// A dump of about `approx_bytes`.
    pub fn new(seed: u64, approx_bytes: u64) -> DbDump {
        DbDump {
            seed,
            rows: (approx_bytes / DB_ROW_BYTES).max(1),
            insert_fraction: 0.005,
            update_fraction: 0.0001,
        }
    }

    pub fn inserts_per_full(&self) -> u64 {
        (self.rows as f64 * self.insert_fraction).round() as u64
    }

    pub fn updates_per_full(&self) -> u64 {
        ((self.rows as f64 * self.update_fraction).round() as u64).min(self.rows)
    }

    /// Clusters inserted by full `j`: (gap = the base row they follow, cluster size), sorted by gap.
    fn clusters(&self, j: u32) -> Vec<(u64, u64)> {
        let mut r = Rng::new(derive(self.seed, u64::from(j)));
        let mut left = self.inserts_per_full();
        let mut out = Vec::new();
        while left > 0 {
            let n = (1 + r.below(DB_MAX_CLUSTER)).min(left);
            out.push((r.below(self.rows), n));
            left -= n;
        }
        out.sort_unstable();
        out
    }

    /// Base rows updated by full `j`, sorted.
    fn updated(&self, j: u32) -> Vec<u64> {
        let mut r = Rng::new(derive(self.seed, u64::from(j) | (1 << 62)));
        r.sample(self.rows, self.updates_per_full())
    }

    /// Streams full `n`. Ids stay ordered for `n < 10_000`.
    pub fn reader(&self, n: u32) -> impl Read + Send + use<> {
        assert!(n < 10_000, "DbDump ids support fulls 0..10000");
        // (gap, full, cluster index within (gap, full), size)
        let mut inserts: Vec<(u64, u32, u64, u64)> = Vec::new();
        let mut updates: HashMap<u64, u32> = HashMap::new();
        for j in 1..=n {
            let mut prev = (u64::MAX, 0);
            for (gap, size) in self.clusters(j) {
                // Several clusters in one gap in one night: number them so ids stay distinct.
                let idx = if prev.0 == gap { prev.1 + 1 } else { 0 };
                prev = (gap, idx);
                inserts.push((gap, j, idx, size));
            }
            for row in self.updated(j) {
                updates.insert(row, j);
            }
        }
        inserts.sort_unstable();
        let state = DbState {
            seed: self.seed,
            n,
            rows: self.rows,
            next: 0,
            inserts,
            ii: 0,
            updates,
            header_done: false,
            footer_done: false,
        };
        PieceReader::new(state, DbState::next_piece)
    }
}

impl Workload for DbDump {
    fn name(&self) -> &'static str {
        "db-dump"
    }
    fn full(&self, n: u32) -> Box<dyn Read + Send> {
        Box::new(self.reader(n))
    }
}

struct DbState {
    seed: u64,
    n: u32,
    rows: u64,
    next: u64,
    inserts: Vec<(u64, u32, u64, u64)>,
    ii: usize,
    updates: HashMap<u64, u32>,
    header_done: bool,
    footer_done: bool,
}

const STATUSES: [&str; 5] = ["new", "paid", "shipped", "delivered", "returned"];

impl DbState {
    fn next_piece(&mut self, out: &mut Vec<u8>) -> bool {
        if !self.header_done {
            self.header_done = true;
            let day = 1 + self.n;
            out.extend_from_slice(
                format!(
                    "--\n-- PostgreSQL database dump (synthetic, Cairn workload)\n-- Dumped on day {day}\n--\n\n\
                     CREATE TABLE public.orders (\n    id bigint PRIMARY KEY,\n    customer_id integer NOT NULL,\n    \
                     customer text NOT NULL,\n    email text NOT NULL,\n    created_at timestamp NOT NULL,\n    \
                     updated_at timestamp NOT NULL,\n    amount numeric(12,2) NOT NULL,\n    status text NOT NULL,\n    \
                     note text\n);\n\n"
                )
                .as_bytes(),
            );
            return true;
        }
        if self.next == self.rows {
            if self.footer_done {
                return false;
            }
            self.footer_done = true;
            out.extend_from_slice(b"\n--\n-- PostgreSQL database dump complete\n--\n");
            return true;
        }
        while out.len() < PIECE && self.next < self.rows {
            let row = self.next;
            self.next += 1;
            let version = self.updates.get(&row).copied().unwrap_or(0);
            self.row(out, row * 10_000_000, derive(self.seed, row), version);
            while self.ii < self.inserts.len() && self.inserts[self.ii].0 == row {
                let (gap, full, idx, size) = self.inserts[self.ii];
                self.ii += 1;
                for k in 0..size {
                    // id = gap * 10^7 + full * 1000 + position; clusters of one night in one gap follow each other.
                    let pos = idx * DB_MAX_CLUSTER + k;
                    let id = gap * 10_000_000 + u64::from(full) * 1000 + pos.min(999);
                    let seed = derive(derive(self.seed, gap), (u64::from(full) << 32) | pos);
                    self.row(out, id, seed, 0);
                }
            }
        }
        true
    }

    fn row(&self, out: &mut Vec<u8>, id: u64, seed: u64, version: u32) {
        use std::io::Write;
        let mut r = Rng::new(seed);
        let customer_id = r.below(2_000_000);
        let vocab = vocabulary();
        let first = std::str::from_utf8(&vocab[r.below(2048) as usize]).unwrap_or("x");
        let last = std::str::from_utf8(&vocab[r.below(2048) as usize]).unwrap_or("x");
        let created = 1_600_000_000 + r.below(100_000_000);
        let mut note = vec![0u8; r.below(80) as usize];
        TextGen::new(r.next_u64()).fill(&mut note);
        for b in note.iter_mut() {
            if *b == b'\n' {
                *b = b' ';
            }
        }
        // Mutable columns come from (seed, version): an update changes them and nothing else.
        let mut m = Rng::new(derive(seed, u64::from(version)));
        let amount = m.below(10_000_000);
        let status = STATUSES[m.below(STATUSES.len() as u64) as usize];
        let updated = created + u64::from(version) * DAY + m.below(DAY);
        let _ = writeln!(
            out,
            "INSERT INTO public.orders VALUES ({id}, {customer_id}, '{first} {last}', '{first}.{last}@example.com', \
             to_timestamp({created}), to_timestamp({updated}), {}.{:02}, '{status}', '{}');",
            amount / 100,
            amount % 100,
            String::from_utf8_lossy(&note),
        );
    }
}

/// Object `i` of series `seed` for `cairn debug ingest-loop` and the crash test that checks it: deterministic,
/// 0..max_size bytes, a mix of repeated (dedupable) and unique runs.
pub fn numbered_object(seed: u64, i: u64, max_size: u64) -> Vec<u8> {
    let mut x = (seed << 20) ^ i ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % max_size.max(1)) as usize;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let v = next();
        if v % 3 == 0 {
            out.extend_from_slice(&[b'a' + (v % 7) as u8; 4096]);
        } else {
            for _ in 0..512 {
                out.extend_from_slice(&next().to_le_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut r: impl Read) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    /// Parses the ustar stream back into (path, mtime, body).
    fn untar(b: &[u8]) -> Vec<(String, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut p = 0;
        while p + 512 <= b.len() && b[p] != 0 {
            let h = &b[p..p + 512];
            let sum: u32 = h
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(c)
                    }
                })
                .sum();
            let field = |a: usize, l: usize| {
                let s = std::str::from_utf8(&h[a..a + l]).unwrap();
                u64::from_str_radix(s.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap()
            };
            assert_eq!(u64::from(sum), field(148, 8), "header checksum");
            let name = std::str::from_utf8(&h[..100])
                .unwrap()
                .trim_end_matches('\0');
            let size = field(124, 12) as usize;
            let body = b[p + 512..p + 512 + size].to_vec();
            out.push((name.to_string(), field(136, 12), body));
            p += 512 + size.div_ceil(512) * 512;
        }
        assert!(b[p..].iter().all(|&c| c == 0), "trailer is zeros");
        assert_eq!(b.len() % 10240, 0);
        out
    }

    #[test]
    fn read_in_odd_sizes_gives_same_bytes() {
        let w = DbDump::new(3, 300_000);
        let whole = all(w.reader(2));
        let mut r = w.reader(2);
        let mut got = Vec::new();
        let mut buf = [0u8; 777];
        loop {
            let n = r.read(&mut buf[..1 + got.len() % 777]).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn tar_is_deterministic_and_changes_about_1_5_percent_of_files() {
        let w = TarTree::new(7, 48 << 20);
        let a = all(w.reader(3));
        assert_eq!(a, all(w.reader(3)), "same seed and n, same bytes");
        assert_ne!(a, all(TarTree::new(8, 48 << 20).reader(3)));
        let b = all(w.reader(4));
        let (fa, fb) = (untar(&a), untar(&b));
        let ma: HashMap<_, _> = fa.iter().map(|(p, t, d)| (p.clone(), (*t, d))).collect();
        let mb: HashMap<_, _> = fb.iter().map(|(p, t, d)| (p.clone(), (*t, d))).collect();
        let removed = ma.keys().filter(|p| !mb.contains_key(*p)).count();
        let added = mb.keys().filter(|p| !ma.contains_key(*p)).count();
        let mut changed = 0;
        for (p, (t, d)) in &mb {
            if let Some((t0, d0)) = ma.get(p) {
                if d != d0 {
                    changed += 1;
                    assert!(t > t0, "a changed file gets a new mtime");
                } else {
                    assert_eq!(t, t0, "an unchanged file keeps its header");
                }
            }
        }
        let expect = w.changes_for(fa.len());
        assert!(
            fa.len() > 150,
            "enough files to mean something: {}",
            fa.len()
        );
        // Every picked file is changed, removed, or swapped for an added one.
        assert_eq!(
            changed + removed + added,
            expect,
            "{changed} + {removed} + {added}"
        );
        assert!(changed > 0);
        let frac = expect as f64 / fa.len() as f64;
        assert!((0.01..=0.02).contains(&frac), "{frac}");
    }

    #[test]
    fn vm_image_rewrites_exactly_the_promised_blocks() {
        let w = VmImage::new(11, 16 << 20);
        let a = all(w.reader(2));
        assert_eq!(a.len() as u64, 16 << 20);
        assert_eq!(a, all(w.reader(2)));
        let b = all(w.reader(3));
        let differing: Vec<u64> = (0..w.blocks())
            .filter(|&i| {
                let r = (i * VM_BLOCK) as usize..((i + 1) * VM_BLOCK) as usize;
                a[r.clone()] != b[r]
            })
            .collect();
        assert_eq!(w.rewrites_per_full(), 20, "0.5% of 4096 blocks");
        assert_eq!(differing, w.rewritten(3));
        // A mix of block kinds: some zero blocks and some compressible.
        let zero = a.chunks(4096).filter(|c| c.iter().all(|&x| x == 0)).count();
        assert!(zero > 400 && zero < 2000, "{zero}");
    }

    #[test]
    fn db_dump_inserts_in_the_middle_in_id_order() {
        let w = DbDump::new(5, 4 << 20);
        let a = all(w.reader(1));
        assert_eq!(a, all(w.reader(1)));
        let b = all(w.reader(2));
        let ids = |d: &[u8]| -> Vec<u64> {
            std::str::from_utf8(d)
                .unwrap()
                .lines()
                .filter_map(|l| l.strip_prefix("INSERT INTO public.orders VALUES ("))
                .map(|l| l.split(',').next().unwrap().parse().unwrap())
                .collect()
        };
        let (ia, ib) = (ids(&a), ids(&b));
        assert!(
            ib.windows(2).all(|w| w[0] < w[1]),
            "ordered by id, no duplicates"
        );
        assert_eq!(ib.len() - ia.len(), w.inserts_per_full() as usize);
        let sa: HashSet<_> = ia.iter().collect();
        let new: Vec<usize> = (0..ib.len()).filter(|&i| !sa.contains(&ib[i])).collect();
        assert!(
            new[0] < ib.len() / 2,
            "inserted in the middle, not appended"
        );
        // Rows present in both: all but the updated ones are byte-identical.
        let lines = |d: &[u8]| -> HashMap<u64, String> {
            std::str::from_utf8(d)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("INSERT"))
                .map(|l| {
                    (
                        l[34..].split(',').next().unwrap().parse().unwrap(),
                        l.to_string(),
                    )
                })
                .collect()
        };
        let (la, lb) = (lines(&a), lines(&b));
        let updated = la.iter().filter(|(id, l)| lb[*id] != **l).count();
        let expect = w.updates_per_full() as usize;
        // An update may pick a row updated the night before again, or redraw the same values (rarely).
        assert!(
            updated <= expect && updated + 2 >= expect,
            "{updated} vs {expect}"
        );
        let mean_row = a.len() as f64 / ia.len() as f64;
        assert!((120.0..300.0).contains(&mean_row), "{mean_row}");
    }
}
