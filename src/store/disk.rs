//! All disk access goes through the `Disk` trait, so tests can inject faults (`FaultyDisk`).
//! Paths given to a `Disk` are relative to the disk's root (storage-format.md §1).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::ids::ContainerId;

pub const MARKER_FILE: &str = "CAIRN-DISK";
pub const SHARDS_DIR: &str = "shards";
pub const TMP_DIR: &str = "tmp";
pub const QUARANTINE_DIR: &str = "quarantine";

/// Relative path of shard `index` of `container` (storage-format.md §1).
pub fn shard_path(container: ContainerId, index: usize) -> PathBuf {
    PathBuf::from(format!(
        "{SHARDS_DIR}/{:04x}/{}.{:02}.shard",
        container.0 >> 12,
        container,
        index
    ))
}

/// Parses a shard file name `<16 hex>.<2 digits>.shard` back into (container, index).
pub fn parse_shard_name(name: &str) -> Option<(ContainerId, usize)> {
    let stem = name.strip_suffix(".shard")?;
    let (id, idx) = stem.split_once('.')?;
    if id.len() != 16 {
        return None;
    }
    let id = u64::from_str_radix(id, 16).ok()?;
    let idx = idx.parse().ok()?;
    Some((ContainerId(id), idx))
}

pub trait Disk: Send + Sync {
    fn root(&self) -> &Path;
    /// Writes a complete file durably: tmp file, write, fsync, rename, fsync directory (storage-format.md §9).
    fn write_durable(&self, rel: &Path, parts: &[&[u8]]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, rel: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// `read_at` for bytes read once (a restore's healthy path): a real disk reads large ranges with O_DIRECT,
    /// past the page cache.
    fn read_at_once(&self, rel: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_at(rel, offset, buf)
    }
    /// `read_at_once` of `len` bytes at `offset`, handed to `use_bytes` where they were read: a real disk
    /// lends its aligned O_DIRECT buffer, so the bytes are neither copied into a buffer of the caller's nor
    /// is such a buffer zeroed first (both were ~6% of a restore's CPU, session 29).
    fn read_once_with(
        &self,
        rel: &Path,
        offset: u64,
        len: usize,
        use_bytes: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        lend_read(len, use_bytes, |buf| self.read_at_once(rel, offset, buf))
    }
    fn read_all(&self, rel: &Path) -> io::Result<Vec<u8>>;
    /// Reads a whole file that is read once (scrub, rebuild): its bytes are `buf[range]`. A real disk reads
    /// large files with O_DIRECT into an aligned part of the buffer, reusing `reuse` (a buffer of an earlier
    /// read, or empty) when it is large enough: neither zeroed nor faulted in again.
    fn read_once(
        &self,
        rel: &Path,
        reuse: Vec<u8>,
    ) -> io::Result<(Vec<u8>, std::ops::Range<usize>)> {
        let _ = reuse;
        let v = self.read_all(rel)?;
        let n = v.len();
        Ok((v, 0..n))
    }
    fn file_len(&self, rel: &Path) -> io::Result<u64>;
    fn remove(&self, rel: &Path) -> io::Result<()>;
    /// Moves a bad file to `quarantine/` (never deletes it).
    fn quarantine(&self, rel: &Path) -> io::Result<PathBuf>;
    /// Relative paths of every shard file on the disk.
    fn list_shards(&self) -> io::Result<Vec<PathBuf>>;
    /// Deletes leftovers of unacknowledged writes in `tmp/`.
    fn clean_tmp(&self) -> io::Result<usize>;
    /// Whether the disk's root directory is there at all.
    fn is_present(&self) -> bool;
    /// Closes any files kept open for reading (the disk failed or was retired).
    fn release_handles(&self) {}
}

/// `read` into a buffer of `len` bytes of its own, then lent to `use_bytes`: `Disk::read_once_with` where no
/// O_DIRECT buffer can be lent.
fn lend_read(
    len: usize,
    use_bytes: &mut dyn FnMut(&[u8]),
    read: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len];
    read(&mut buf)?;
    use_bytes(&buf);
    Ok(())
}

/// Files at least this large are written with O_DIRECT (see [`FileDisk::write_direct`]).
const DIRECT_MIN_LEN: usize = 64 * 1024;
/// O_DIRECT wants buffer address, length and file offset aligned to the logical block size; 4 KiB covers
/// every disk (512e and 4Kn alike).
const DIRECT_ALIGN: usize = 4096;
/// Write buffers kept for reuse per disk, and the largest one kept (bigger ones are freed after use). As
/// many as seals write at once, so that a steady stream of seals allocates none.
const POOLED_BUFFERS: usize = super::SEAL_SLOTS;
const POOLED_BUFFER_MAX: usize = 40 * 1024 * 1024;
/// New pooled buffers are made in multiples of this, so one fits the next few writes of a similar size.
const BUFFER_STEP: usize = 1 << 20;

/// A directory on a real filesystem (normally the mount point of one JBOD disk).
pub struct FileDisk {
    root: PathBuf,
    tmp_counter: AtomicU64,
    /// Cleared the first time the filesystem refuses O_DIRECT (tmpfs on older kernels, some FUSE mounts):
    /// from then on this disk writes through the page cache.
    direct: AtomicBool,
    buffers: Mutex<Vec<Vec<u8>>>,
    /// Shard files kept open for `read_at`: a restore reads ~30 chunks of a container in a row, and an
    /// open + close per chunk (per shard, in a degraded read) was a large part of its system time. Entries are
    /// dropped whenever this store replaces, removes or quarantines the file, and all of them when the disk
    /// fails; shard files are otherwise immutable, so a kept handle never reads stale bytes.
    handles: Mutex<HashMap<PathBuf, Arc<File>>>,
    /// The same, opened with O_DIRECT, for `read_at_once`'s large reads.
    direct_handles: Mutex<HashMap<PathBuf, Arc<File>>>,
}

/// Read handles kept open per disk (the map is emptied when it reaches this size). Small, so that even a
/// 24-disk box stays far below the default limit of 1024 open files: a read window touches a few containers.
const OPEN_HANDLES: usize = 32;

impl FileDisk {
    pub fn new(root: impl Into<PathBuf>) -> FileDisk {
        FileDisk {
            root: root.into(),
            tmp_counter: AtomicU64::new(0),
            direct: AtomicBool::new(true),
            buffers: Mutex::new(Vec::new()),
            handles: Mutex::new(HashMap::new()),
            direct_handles: Mutex::new(HashMap::new()),
        }
    }

    fn read_handle(&self, rel: &Path) -> io::Result<Arc<File>> {
        Self::kept_handle(&self.handles, rel, || File::open(self.root.join(rel)))
    }

    fn direct_read_handle(&self, rel: &Path) -> io::Result<Arc<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        Self::kept_handle(&self.direct_handles, rel, || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(self.root.join(rel))
        })
    }

    /// A handle kept in `handles` for `rel`, or a new one from `open` (then kept).
    fn kept_handle(
        handles: &Mutex<HashMap<PathBuf, Arc<File>>>,
        rel: &Path,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        if let Some(f) = handles.lock().ok().and_then(|h| h.get(rel).cloned()) {
            // A kept handle would go on reading a file someone deleted (or a directory-disk removed with
            // rm -r): an fstat, far cheaper than open + close, tells, and then the path decides.
            use std::os::unix::fs::MetadataExt;
            if f.metadata().is_ok_and(|m| m.nlink() > 0) {
                return Ok(f);
            }
            if let Ok(mut h) = handles.lock() {
                h.remove(rel);
            }
        }
        let f = Arc::new(open()?);
        if let Ok(mut h) = handles.lock() {
            if h.len() >= OPEN_HANDLES {
                h.clear();
            }
            h.insert(rel.to_path_buf(), f.clone());
        }
        Ok(f)
    }

    fn forget_handle(&self, rel: &Path) {
        for handles in [&self.handles, &self.direct_handles] {
            if let Ok(mut h) = handles.lock() {
                h.remove(rel);
            }
        }
    }

    fn fsync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn write_buffered(tmp: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()
    }

    /// Writes `parts` to a new file with O_DIRECT from an aligned, reused buffer, then trims the block
    /// padding and fsyncs. Shards are written once and not read back soon, so copying them into the page
    /// cache only cost CPU: the kernel's copy (copy_folio_from_iter) was a fifth of the server's CPU time in
    /// unique ingest. The fsync still follows, for the file size and the disk's volatile write cache.
    fn write_direct(&self, tmp: &Path, parts: &[&[u8]], total: usize) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let padded = total.next_multiple_of(DIRECT_ALIGN);
        let mut buf = self.take_buffer(padded + DIRECT_ALIGN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let image = &mut buf[start..start + padded];
        let mut at = 0;
        for p in parts {
            image[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        image[at..].fill(0);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_DIRECT)
                .open(tmp)?;
            f.write_all(image)?;
            f.set_len(total as u64)?;
            f.sync_all()
        })();
        self.give_buffer(buf);
        result
    }
}

impl FileDisk {
    /// Reads a whole file with O_DIRECT: scrub and rebuild read every shard once, and through the page cache
    /// the kernel's copy and page-cache bookkeeping were ~20% of a scrub's CPU time. Small files and
    /// filesystems without O_DIRECT are read normally.
    fn read_direct(
        &self,
        path: &Path,
        reuse: Vec<u8>,
    ) -> io::Result<(Vec<u8>, std::ops::Range<usize>)> {
        use std::os::unix::fs::OpenOptionsExt;
        let buffered = || {
            let v = fs::read(path)?;
            let n = v.len();
            Ok((v, 0..n))
        };
        if !self.direct.load(Ordering::Relaxed) {
            return buffered();
        }
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return buffered(),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len() as usize;
        if len < DIRECT_MIN_LEN {
            return buffered();
        }
        let padded = len.next_multiple_of(DIRECT_ALIGN);
        let need = padded + DIRECT_ALIGN;
        // A reused buffer's old bytes are simply overwritten. A new one is a zeroed allocation (calloc): when
        // it comes from a fresh mapping glibc skips the memset, but from its heap it clears every byte, which
        // was ~5% of scrub's CPU; and a fresh mapping is faulted in page by page. Hence the reuse.
        let mut buf = reuse;
        if buf.capacity() < need {
            buf = vec![0u8; need];
        } else if buf.len() < need {
            buf.resize(need, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let image = &mut buf[start..start + padded];
        let mut at = 0;
        while at < len {
            match f.read(&mut image[at..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EINVAL: this filesystem takes no O_DIRECT reads after all.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return buffered(),
                Err(e) => return Err(e),
            }
            if at < len && at % DIRECT_ALIGN != 0 {
                // A short read off the block grid cannot be continued with O_DIRECT.
                return buffered();
            }
        }
        Ok((buf, start..start + len))
    }

    /// Reads `len` bytes at `offset` with O_DIRECT, if the read is large enough and the filesystem takes
    /// O_DIRECT (false: the caller reads through the page cache), and lends them to `use_bytes` where they
    /// lie: the block-aligned span around them is read into an aligned, pooled buffer. A healthy restore reads
    /// every byte once; through the page cache the kernel's copy out of freshly filled pages was 21-35% of a
    /// restore's CPU on this project's VMs (docs/performance-history.md), and a large restore would evict
    /// everything else the server has cached. (A degraded read re-reads the same shard rows for each frame of
    /// a container: it stays on the page cache.)
    fn read_direct_if_large(
        &self,
        rel: &Path,
        offset: u64,
        len: usize,
        use_bytes: &mut dyn FnMut(&[u8]),
    ) -> io::Result<bool> {
        if len < DIRECT_MIN_LEN || !self.direct.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.read_at_direct_with(rel, offset, len, use_bytes)
            .inspect_err(|_| self.forget_handle(rel))
    }

    /// The O_DIRECT read of [`Self::read_direct_if_large`]; Ok(false) where the filesystem refuses it.
    fn read_at_direct_with(
        &self,
        rel: &Path,
        offset: u64,
        len: usize,
        use_bytes: &mut dyn FnMut(&[u8]),
    ) -> io::Result<bool> {
        let f = match self.direct_read_handle(rel) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) => return Err(e),
        };
        let align = DIRECT_ALIGN as u64;
        let lo = offset - offset % align;
        let skip = (offset - lo) as usize;
        let need = skip + len;
        let span = need.next_multiple_of(DIRECT_ALIGN);
        let mut pooled = self.take_buffer(span + DIRECT_ALIGN);
        let start = pooled.as_ptr().align_offset(DIRECT_ALIGN);
        let image = &mut pooled[start..start + span];
        let mut at = 0;
        let result = loop {
            if at >= need {
                use_bytes(&image[skip..need]);
                break Ok(true);
            }
            match f.read_at(&mut image[at..], lo + at as u64) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                // A short read ends at the file's end; one off the block grid cannot go on with O_DIRECT.
                Ok(n) if (at + n) % DIRECT_ALIGN != 0 && at + n < need => {
                    break Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EINVAL: this filesystem takes no O_DIRECT reads after all.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        self.give_buffer(pooled);
        result
    }

    /// A buffer of at least `len` bytes from the pool (its contents are whatever the last user left): the
    /// smallest kept one that is long enough, else a new one rounded up to `BUFFER_STEP`. Kept buffers are
    /// never grown: growing one reallocated it (a copy) and zeroed the growth, and with shards of 2-3 MiB and
    /// manifests of a few KiB sharing the pool that happened at most seals, faulting in fresh pages each time.
    fn take_buffer(&self, len: usize) -> Vec<u8> {
        let kept = self.buffers.lock().ok().and_then(|mut pool| {
            let fit = (0..pool.len())
                .filter(|&i| pool[i].len() >= len)
                .min_by_key(|&i| pool[i].len())?;
            Some(pool.swap_remove(fit))
        });
        kept.unwrap_or_else(|| vec![0; len.next_multiple_of(BUFFER_STEP)])
    }

    /// Back to the pool; when it is full, in place of its smallest buffer if this one is larger (so the pool
    /// comes to hold buffers that fit the largest writes), unless it is too big to keep.
    fn give_buffer(&self, buf: Vec<u8>) {
        if buf.len() > POOLED_BUFFER_MAX {
            return;
        }
        if let Ok(mut pool) = self.buffers.lock() {
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            } else if let Some(smallest) = (0..pool.len()).min_by_key(|&i| pool[i].len())
                && pool[smallest].len() < buf.len()
            {
                pool[smallest] = buf;
            }
        }
    }
}

impl Disk for FileDisk {
    fn root(&self) -> &Path {
        &self.root
    }

    fn write_durable(&self, rel: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let tmp_dir = self.root.join(TMP_DIR);
        if !tmp_dir.is_dir() {
            // Refuse to recreate the root of a vanished disk: only create tmp/ inside an existing root.
            if !self.root.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "disk root is missing",
                ));
            }
            fs::create_dir_all(&tmp_dir)?;
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = tmp_dir.join(format!("{}-{n}.tmp", std::process::id()));
        let result = (|| {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            if total >= DIRECT_MIN_LEN && self.direct.load(Ordering::Relaxed) {
                match self.write_direct(&tmp, parts, total) {
                    Ok(()) => {}
                    // EINVAL: this filesystem (or its block size) does not take O_DIRECT.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::info!(disk = %self.root.display(),
                            "filesystem refuses O_DIRECT writes; writing through the page cache");
                        self.direct.store(false, Ordering::Relaxed);
                        let _ = fs::remove_file(&tmp);
                        Self::write_buffered(&tmp, parts)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                Self::write_buffered(&tmp, parts)?;
            }
            let dest = self.root.join(rel);
            let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
            if !parent.is_dir() {
                fs::create_dir_all(&parent)?;
                if let Some(pp) = parent.parent() {
                    Self::fsync_dir(pp)?;
                }
            }
            fs::rename(&tmp, &dest)?;
            self.forget_handle(rel);
            Self::fsync_dir(&parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn read_at_once(&self, rel: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len();
        if self.read_direct_if_large(rel, offset, len, &mut |b| buf.copy_from_slice(b))? {
            return Ok(());
        }
        self.read_at(rel, offset, buf)
    }

    fn read_once_with(
        &self,
        rel: &Path,
        offset: u64,
        len: usize,
        use_bytes: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        if self.read_direct_if_large(rel, offset, len, use_bytes)? {
            return Ok(());
        }
        lend_read(len, use_bytes, |buf| self.read_at(rel, offset, buf))
    }

    fn read_at(&self, rel: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.read_handle(rel)?;
        let r = f.read_exact_at(buf, offset);
        if r.is_err() {
            self.forget_handle(rel);
        }
        r
    }

    fn release_handles(&self) {
        for handles in [&self.handles, &self.direct_handles] {
            if let Ok(mut h) = handles.lock() {
                h.clear();
            }
        }
    }

    fn read_all(&self, rel: &Path) -> io::Result<Vec<u8>> {
        fs::read(self.root.join(rel))
    }

    fn read_once(
        &self,
        rel: &Path,
        reuse: Vec<u8>,
    ) -> io::Result<(Vec<u8>, std::ops::Range<usize>)> {
        self.read_direct(&self.root.join(rel), reuse)
    }

    fn file_len(&self, rel: &Path) -> io::Result<u64> {
        Ok(fs::metadata(self.root.join(rel))?.len())
    }

    fn remove(&self, rel: &Path) -> io::Result<()> {
        self.forget_handle(rel);
        let p = self.root.join(rel);
        fs::remove_file(&p)?;
        if let Some(parent) = p.parent() {
            Self::fsync_dir(parent)?;
        }
        Ok(())
    }

    fn quarantine(&self, rel: &Path) -> io::Result<PathBuf> {
        self.forget_handle(rel);
        let qdir = self.root.join(QUARANTINE_DIR);
        fs::create_dir_all(&qdir)?;
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dest = qdir.join(format!("{name}.{stamp}.bad"));
        fs::rename(self.root.join(rel), &dest)?;
        Self::fsync_dir(&qdir)?;
        Ok(dest)
    }

    fn list_shards(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let dir = self.root.join(SHARDS_DIR);
        let top = match fs::read_dir(&dir) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.root.is_dir() => return Ok(out),
            Err(e) => return Err(e),
        };
        for sub in top {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                if parse_shard_name(&name.to_string_lossy()).is_some() {
                    out.push(PathBuf::from(SHARDS_DIR).join(sub.file_name()).join(name));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn clean_tmp(&self) -> io::Result<usize> {
        let dir = self.root.join(TMP_DIR);
        let mut n = 0;
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    fs::remove_file(e?.path())?;
                    n += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(n)
    }

    fn is_present(&self) -> bool {
        self.root.is_dir()
    }
}

/// What `FaultyDisk` does wrong. Tests flip these at run time.
#[derive(Default)]
pub struct Faults {
    /// Operations left before every operation fails (negative = never fail).
    pub ops_left: AtomicI64,
    /// Writes store only the first half of the file, then fail (a torn write that still reached disk).
    pub torn_writes: AtomicBool,
    /// Reads return data with one bit flipped.
    pub flip_bits: AtomicBool,
    /// The disk is gone: everything fails with NotFound.
    pub vanished: AtomicBool,
}

/// A `FileDisk` with injectable faults, for tests.
pub struct FaultyDisk {
    inner: FileDisk,
    pub faults: Faults,
    log: Mutex<Vec<String>>,
}

impl FaultyDisk {
    pub fn new(root: impl Into<PathBuf>) -> FaultyDisk {
        let faults = Faults::default();
        faults.ops_left.store(-1, Ordering::SeqCst);
        FaultyDisk {
            inner: FileDisk::new(root),
            faults,
            log: Mutex::new(Vec::new()),
        }
    }

    /// Fail every operation after `n` more succeed.
    pub fn fail_after(&self, n: i64) {
        self.faults.ops_left.store(n, Ordering::SeqCst);
    }

    pub fn injected(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn gate(&self, what: &str) -> io::Result<()> {
        if self.faults.vanished.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "injected: disk vanished",
            ));
        }
        let left = self.faults.ops_left.load(Ordering::SeqCst);
        if left == 0 {
            if let Ok(mut l) = self.log.lock() {
                l.push(format!("fail {what}"));
            }
            return Err(io::Error::other("injected: I/O error"));
        }
        if left > 0 {
            self.faults.ops_left.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Disk for FaultyDisk {
    fn root(&self) -> &Path {
        self.inner.root()
    }
    fn write_durable(&self, rel: &Path, parts: &[&[u8]]) -> io::Result<()> {
        self.gate("write")?;
        if self.faults.torn_writes.load(Ordering::SeqCst) {
            let all: Vec<u8> = parts.concat();
            let half = &all[..all.len() / 2];
            // A torn write that bypassed the rename protocol (e.g. a buggy filesystem): half a file in place.
            let dest = self.inner.root().join(rel);
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p)?;
            }
            fs::write(dest, half)?;
            return Err(io::Error::other("injected: torn write"));
        }
        self.inner.write_durable(rel, parts)
    }
    fn release_handles(&self) {
        self.inner.release_handles()
    }

    fn read_at(&self, rel: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.gate("read")?;
        self.inner.read_at(rel, offset, buf)?;
        if self.faults.flip_bits.load(Ordering::SeqCst) && !buf.is_empty() {
            buf[buf.len() / 2] ^= 0x10;
        }
        Ok(())
    }
    fn read_all(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.gate("read")?;
        let mut v = self.inner.read_all(rel)?;
        if self.faults.flip_bits.load(Ordering::SeqCst) && !v.is_empty() {
            let i = v.len() / 2;
            v[i] ^= 0x10;
        }
        Ok(v)
    }
    fn file_len(&self, rel: &Path) -> io::Result<u64> {
        self.gate("stat")?;
        self.inner.file_len(rel)
    }
    fn remove(&self, rel: &Path) -> io::Result<()> {
        self.gate("remove")?;
        self.inner.remove(rel)
    }
    fn quarantine(&self, rel: &Path) -> io::Result<PathBuf> {
        self.gate("quarantine")?;
        self.inner.quarantine(rel)
    }
    fn list_shards(&self) -> io::Result<Vec<PathBuf>> {
        self.gate("list")?;
        self.inner.list_shards()
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        self.gate("clean")?;
        self.inner.clean_tmp()
    }
    fn is_present(&self) -> bool {
        !self.faults.vanished.load(Ordering::SeqCst) && self.inner.is_present()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffers_are_reused_whole_and_the_pool_keeps_the_largest() {
        let disk = FileDisk::new("/nonexistent-cairn-test");
        let big = disk.take_buffer(3 << 20);
        assert_eq!(big.len(), 3 << 20, "new buffers come in whole steps");
        let big_at = big.as_ptr();
        disk.give_buffer(big);
        let small = disk.take_buffer(10_000);
        assert_eq!(
            small.as_ptr(),
            big_at,
            "a kept buffer serves a smaller write as it is"
        );
        assert_eq!(small.len(), 3 << 20, "never shrunk, so never grown again");
        disk.give_buffer(small);
        let larger = disk.take_buffer((3 << 20) + 1);
        assert_ne!(larger.as_ptr(), big_at, "too small a buffer is not grown");
        assert_eq!(larger.len(), 4 << 20);
        // The pool fills up with small buffers; larger ones then take the smallest ones' places.
        disk.give_buffer(larger);
        for _ in 1..POOLED_BUFFERS {
            disk.give_buffer(vec![0; BUFFER_STEP]);
        }
        disk.give_buffer(vec![0; 2 * BUFFER_STEP]);
        disk.give_buffer(vec![0; BUFFER_STEP / 2]);
        disk.give_buffer(vec![0; POOLED_BUFFER_MAX + 1]);
        let mut kept: Vec<usize> = disk
            .buffers
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.len())
            .collect();
        kept.sort();
        // The 3 MiB buffer stayed in the pool when the larger write passed it by.
        let mut want = vec![BUFFER_STEP; POOLED_BUFFERS - 3];
        want.extend([2 * BUFFER_STEP, 3 << 20, 4 << 20]);
        assert_eq!(kept, want, "bounded, largest kept, oversized dropped");
        let fit = disk.take_buffer(BUFFER_STEP + 1);
        assert_eq!(fit.len(), 2 * BUFFER_STEP, "the smallest buffer that fits");
    }

    #[test]
    fn shard_names_round_trip() {
        let p = shard_path(ContainerId(0x12345), 3);
        assert_eq!(p, PathBuf::from("shards/0012/0000000000012345.03.shard"));
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(parse_shard_name(&name), Some((ContainerId(0x12345), 3)));
        assert_eq!(parse_shard_name("x.shard"), None);
        assert_eq!(parse_shard_name("0000000000012345.zz.shard"), None);
    }

    #[test]
    fn durable_write_leaves_no_tmp_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDisk::new(dir.path());
        let p = shard_path(ContainerId(7), 1);
        d.write_durable(&p, &[b"abc", b"def"]).unwrap();
        assert_eq!(d.read_all(&p).unwrap(), b"abcdef");
        let mut buf = [0u8; 2];
        d.read_at(&p, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"cd");
        assert_eq!(d.list_shards().unwrap(), vec![p.clone()]);
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
        let q = d.quarantine(&p).unwrap();
        assert!(q.exists());
        assert!(d.list_shards().unwrap().is_empty());
    }

    #[test]
    fn read_once_returns_exactly_the_file_small_or_large() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDisk::new(dir.path());
        // Below and above the O_DIRECT threshold, on and off the 4 KiB grid.
        for (n, len) in [
            1000usize,
            DIRECT_MIN_LEN,
            DIRECT_MIN_LEN + 1,
            3 * DIRECT_MIN_LEN + 4097,
        ]
        .into_iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
            let p = shard_path(ContainerId(100 + n as u64), 0);
            d.write_durable(&p, &[&data[..7], &data[7..]]).unwrap();
            let (buf, at) = d.read_once(&p, Vec::new()).unwrap();
            assert_eq!(&buf[at], &data[..], "file of {len} bytes");
            // Again into that buffer, and into one too small and one full of other bytes.
            for reuse in [buf, vec![7u8; 100], vec![0xAB; len + 3 * DIRECT_ALIGN]] {
                let (buf, at) = d.read_once(&p, reuse).unwrap();
                assert_eq!(&buf[at], &data[..], "file of {len} bytes, read again");
            }
        }
        let missing = d
            .read_once(&shard_path(ContainerId(99), 0), Vec::new())
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn read_at_serves_any_range_directly_or_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDisk::new(dir.path());
        let len = 3 * DIRECT_MIN_LEN + 4097;
        let data: Vec<u8> = (0..len).map(|i| (i * 131 / 7) as u8).collect();
        let p = shard_path(ContainerId(5), 2);
        d.write_durable(&p, &[&data]).unwrap();
        // Large reads (O_DIRECT) on and off the 4 KiB grid, up to the file's last byte; small ones buffered.
        for (offset, n) in [
            (0, len),
            (1, DIRECT_MIN_LEN),
            (4095, DIRECT_MIN_LEN + 2),
            (4096, 2 * DIRECT_MIN_LEN),
            (len - DIRECT_MIN_LEN, DIRECT_MIN_LEN),
            (len - 5, 5),
            (100, 10),
        ] {
            for once in [true, false] {
                let mut buf = vec![0u8; n];
                if once {
                    d.read_at_once(&p, offset as u64, &mut buf).unwrap();
                } else {
                    d.read_at(&p, offset as u64, &mut buf).unwrap();
                }
                assert!(buf == data[offset..offset + n], "{n} bytes at {offset}");
            }
            // The same bytes lent where they were read, once and only once.
            let mut lent = Vec::new();
            d.read_once_with(&p, offset as u64, n, &mut |b| lent.push(b.to_vec()))
                .unwrap();
            assert_eq!(lent.len(), 1);
            assert!(
                lent[0] == data[offset..offset + n],
                "{n} bytes lent at {offset}"
            );
        }
        if d.direct.load(Ordering::Relaxed) {
            assert!(d.direct_handles.lock().unwrap().contains_key(&p));
        }
        // Past the end: an error on both paths, as `read_exact_at` gives.
        for (offset, n) in [(len - DIRECT_MIN_LEN + 1, DIRECT_MIN_LEN), (len - 3, 4)] {
            let err = d
                .read_at_once(&p, offset as u64, &mut vec![0; n])
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{n} at {offset}");
            let mut called = false;
            let err = d
                .read_once_with(&p, offset as u64, n, &mut |_| called = true)
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{n} at {offset}");
            assert!(!called, "nothing lent from a short read");
        }
        // A removed file is not read through a kept handle.
        d.remove(&p).unwrap();
        let err = d
            .read_at_once(&p, 0, &mut vec![0; DIRECT_MIN_LEN])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn vanished_root_is_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("disk");
        fs::create_dir(&root).unwrap();
        let d = FileDisk::new(&root);
        fs::remove_dir_all(&root).unwrap();
        assert!(
            d.write_durable(&shard_path(ContainerId(1), 0), &[b"x"])
                .is_err()
        );
        assert!(!root.exists());
    }

    #[test]
    fn faulty_disk_injects() {
        let dir = tempfile::tempdir().unwrap();
        let d = FaultyDisk::new(dir.path());
        let p = shard_path(ContainerId(1), 0);
        d.fail_after(1);
        d.write_durable(&p, &[b"hello"]).unwrap();
        assert!(d.read_all(&p).is_err());
        d.fail_after(-1);
        d.faults.flip_bits.store(true, Ordering::SeqCst);
        assert_ne!(d.read_all(&p).unwrap(), b"hello");
        d.faults.vanished.store(true, Ordering::SeqCst);
        assert!(!d.is_present());
        assert_eq!(d.read_all(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
