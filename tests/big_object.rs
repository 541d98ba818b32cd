//! Size and memory: a 20 GB object (CAIRN_BIG_OBJECT_GB overrides) streams in and out with flat memory, and the
//! same 1 GB ingested twice stores less than 1.01x of once. This binary holds only these tests, so the
//! process's peak RSS (VmHWM) is theirs.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use cairn::store::{ObjectMeta, Store, StoreConfig};

const MIB: usize = 1 << 20;

/// Deterministic, unique, mildly compressible bytes, generated fast enough not to be the bottleneck.
struct Gen {
    x: u64,
    left: u64,
}

impl Gen {
    fn new(seed: u64, len: u64) -> Gen {
        Gen {
            x: seed | 1,
            left: len,
        }
    }
}

impl Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (buf.len() as u64).min(self.left) as usize
        } else {
            n
        };
        for w in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            // 6 random bits per byte: unique data that zstd still shrinks a little.
            let v = (self.x & 0x3F3F_3F3F_3F3F_3F3F) | 0x4040_4040_4040_4040;
            w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn peak_rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn ingest(store: &Arc<Store>, key: &str, mut src: impl Read) -> blake3::Hash {
    let mut up = store.begin_upload().unwrap();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        up.write(&buf[..n]).unwrap();
    }
    up.finish_object("big", key, ObjectMeta::default()).unwrap();
    h.finalize()
}

fn read_back(store: &Arc<Store>, key: &str) -> (blake3::Hash, u64) {
    let (_, mut r) = store.open_object("big", key, None).unwrap();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    (h.finalize(), total)
}

fn stored_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let mut t = 0;
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            t += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
        t
    }
    walk(&dir.join("disks"))
}

#[test]
fn huge_object_streams_with_flat_memory_and_duplicate_gigabyte_dedups() {
    let gb: u64 = std::env::var("CAIRN_BIG_OBJECT_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::embedded(dir.path().join("data"));
    let store = Store::open(cfg.clone()).unwrap();
    store.create_bucket("big").unwrap();

    // Same 1 GB twice: the second copy adds < 1% to what is stored.
    let one_gb = 1_000_000_000u64;
    let h1 = ingest(&store, "full-1", Gen::new(7, one_gb));
    let once = stored_bytes(&cfg.data_dir);
    let h2 = ingest(&store, "full-2", Gen::new(7, one_gb));
    let twice = stored_bytes(&cfg.data_dir);
    assert_eq!(h1, h2);
    assert!(
        (twice as f64) < once as f64 * 1.01,
        "1 GB stored {once} B once, {twice} B twice"
    );
    assert_eq!(read_back(&store, "full-2"), (h2, one_gb));
    let rss_small = peak_rss_mib();

    // The huge object.
    let size = gb * 1_000_000_000;
    let h = ingest(&store, "huge", Gen::new(42, size));
    assert_eq!(store.head_object("big", "huge").unwrap().size, size);
    let rss_ingest = peak_rss_mib();
    assert_eq!(read_back(&store, "huge"), (h, size));
    let rss_read = peak_rss_mib();
    eprintln!(
        "peak RSS: after 1 GB objects {rss_small} MiB, after {gb} GB ingest {rss_ingest} MiB, after read {rss_read} MiB"
    );
    assert!(
        rss_read < 1024,
        "peak RSS {rss_read} MiB: memory is not bounded"
    );
    // Flat in object size: a 20x larger object may not need much more memory than the 1 GB ones did.
    assert!(
        rss_read < rss_small + 256,
        "RSS grew with object size: {rss_small} -> {rss_read} MiB"
    );
}
