//! Container codec (storage-format.md §4): header, entries (chunks and records), footer; chunk compression
//! policy (§4.1). Everything works on byte slices; writing and reading files is the store's job.

use super::error::CoreError;
use super::ids::{ChunkId, ContainerId};

pub const CONTAINER_HEADER_LEN: usize = 32;
pub const ENTRY_HEADER_LEN: usize = 48;
pub const FOOTER_LEN: usize = 32;
pub const CONTAINER_MAGIC: [u8; 8] = *b"CAIRNCTR";
pub const FOOTER_MAGIC: [u8; 8] = *b"CAIRNFTR";
/// Version written. Version 2 added chunk group entries (type 6, §4.5); version 1 containers are read forever.
pub const CONTAINER_VERSION: u16 = 2;
/// Oldest version read.
pub const MIN_CONTAINER_VERSION: u16 = 1;
/// Raw chunk length limit, §4.1.
pub const MAX_RAW_CHUNK_LEN: u32 = 16 * 1024 * 1024;
/// Default zstd level for chunks, §4.1.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Entry type byte, §4.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    Chunk = 1,
    Segment = 2,
    Commit = 3,
    Bucket = 4,
    Tombstone = 5,
    /// Several chunks compressed as one zstd frame (§4.5, container version 2).
    Group = 6,
}

impl EntryType {
    pub fn from_u8(b: u8) -> Option<EntryType> {
        Some(match b {
            1 => EntryType::Chunk,
            2 => EntryType::Segment,
            3 => EntryType::Commit,
            4 => EntryType::Bucket,
            5 => EntryType::Tombstone,
            6 => EntryType::Group,
            _ => return None,
        })
    }
}

/// Chunk payload encoding, §4.1.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

// Little-endian field readers that never panic: `None` when the slice is too short.
pub(crate) fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
pub(crate) fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
pub(crate) fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}
pub(crate) fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn malformed(what: &'static str, detail: impl Into<String>) -> CoreError {
    CoreError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Builds one container in memory. Entries are appended; `seal` adds the footer.
pub struct ContainerBuilder {
    id: ContainerId,
    buf: Vec<u8>,
    entries: u32,
}

impl ContainerBuilder {
    /// Writes the header. `capacity` is a hint for the buffer (bytes).
    pub fn new(id: ContainerId, created_unix_ms: u64, capacity: usize) -> ContainerBuilder {
        Self::with_version(id, created_unix_ms, capacity, CONTAINER_VERSION)
    }

    /// Builds into `buf` (cleared first; its capacity is reused, see the store's buffer pool).
    pub fn with_buffer(id: ContainerId, created_unix_ms: u64, buf: Vec<u8>) -> ContainerBuilder {
        Self::start(id, created_unix_ms, buf, CONTAINER_VERSION)
    }

    /// The buffer back, for reuse, when the container is abandoned.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// A container of an older `version` (golden tests pin the bytes of every version; a version 1
    /// container must not get group entries).
    pub fn with_version(
        id: ContainerId,
        created_unix_ms: u64,
        capacity: usize,
        version: u16,
    ) -> ContainerBuilder {
        let buf = Vec::with_capacity(capacity.max(CONTAINER_HEADER_LEN + FOOTER_LEN));
        Self::start(id, created_unix_ms, buf, version)
    }

    /// Writes the header into `buf` (cleared first).
    fn start(
        id: ContainerId,
        created_unix_ms: u64,
        mut buf: Vec<u8>,
        version: u16,
    ) -> ContainerBuilder {
        buf.clear();
        buf.extend_from_slice(&CONTAINER_MAGIC);
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&[0u8; 6]); // reserved
        buf.extend_from_slice(&id.0.to_le_bytes());
        buf.extend_from_slice(&created_unix_ms.to_le_bytes());
        debug_assert_eq!(buf.len(), CONTAINER_HEADER_LEN);
        ContainerBuilder {
            id,
            buf,
            entries: 0,
        }
    }

    pub fn id(&self) -> ContainerId {
        self.id
    }

    /// Bytes so far including the header, excluding the footer.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Always false: the header is written at construction (here for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn entry_count(&self) -> u32 {
        self.entries
    }

    /// Appends a chunk entry; returns the offset of its PAYLOAD within the container.
    /// `stored` comes from [`compress_chunk`], so it is at most 16 MiB (+ zstd overhead, never kept).
    pub fn push_chunk(&mut self, id: &ChunkId, codec: Codec, raw_len: u32, stored: &[u8]) -> u64 {
        self.push(EntryType::Chunk, codec, raw_len, id.as_bytes(), stored)
    }

    /// Appends a record entry (id field = BLAKE3 of payload); returns the payload offset.
    pub fn push_record(&mut self, ty: EntryType, payload: &[u8]) -> u64 {
        debug_assert!(ty != EntryType::Chunk && ty != EntryType::Group);
        let hash = blake3::hash(payload);
        let n = stored_len(payload);
        self.push_parts(ty, Codec::Raw, n, hash.as_bytes(), &[payload])
    }

    /// Appends a chunk group (§4.5): `members` in the order their bytes were concatenated, `frame` the zstd
    /// frame of that concatenation (from [`compress_group`]). Returns the offset of the FRAME within the
    /// container: with the frame length and a member's [`GroupSlot`] it is what the catalog stores.
    pub fn push_group(&mut self, members: &[(ChunkId, u32)], frame: &[u8]) -> u64 {
        let table = encode_group_table(members);
        let raw_total: u64 = members.iter().map(|(_, l)| u64::from(*l)).sum();
        let raw_total = u32::try_from(raw_total).expect("group over 4 GiB");
        debug_assert!(raw_total <= MAX_GROUP_RAW_LEN);
        let hash = blake3::hash(&table);
        let payload_at = self.push_parts(
            EntryType::Group,
            Codec::Zstd,
            raw_total,
            hash.as_bytes(),
            &[&table, frame],
        );
        payload_at + table.len() as u64
    }

    fn push(
        &mut self,
        ty: EntryType,
        codec: Codec,
        raw_len: u32,
        id: &[u8; 32],
        payload: &[u8],
    ) -> u64 {
        self.push_parts(ty, codec, raw_len, id, &[payload])
    }

    fn push_parts(
        &mut self,
        ty: EntryType,
        codec: Codec,
        raw_len: u32,
        id: &[u8; 32],
        payload: &[&[u8]],
    ) -> u64 {
        let total: usize = payload.iter().map(|p| p.len()).sum();
        let total = u32::try_from(total).expect("entry payload over 4 GiB");
        let start = self.buf.len();
        self.buf.push(ty as u8);
        self.buf.push(codec as u8);
        self.buf.extend_from_slice(&[0u8; 2]);
        self.buf.extend_from_slice(&total.to_le_bytes());
        self.buf.extend_from_slice(&raw_len.to_le_bytes());
        self.buf.extend_from_slice(id);
        let crc = crc32fast::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(self.buf.len() - start, ENTRY_HEADER_LEN);
        let offset = self.buf.len() as u64;
        for p in payload {
            self.buf.extend_from_slice(p);
        }
        self.entries += 1;
        offset
    }

    /// Moves every entry of `other` (another container still being built) to the end of this one, in order,
    /// byte for byte: an entry's header holds no offset and no container id, so the entries stay valid.
    /// Returns how far `other`'s payload offsets moved (add it to every offset `other`'s pushes returned) and
    /// `other`'s buffer, for reuse. Used to seal the last containers of concurrent uploads as one (group
    /// commit, storage-format.md §6).
    pub fn append(&mut self, other: ContainerBuilder) -> (u64, Vec<u8>) {
        let shift = (self.buf.len() - CONTAINER_HEADER_LEN) as u64;
        self.buf
            .extend_from_slice(&other.buf[CONTAINER_HEADER_LEN.min(other.buf.len())..]);
        self.entries += other.entries;
        (shift, other.buf)
    }

    /// Appends the footer and returns the container bytes.
    pub fn seal(mut self) -> Vec<u8> {
        let footer_offset = self.buf.len() as u64;
        let start = self.buf.len();
        self.buf.extend_from_slice(&FOOTER_MAGIC);
        self.buf.extend_from_slice(&self.entries.to_le_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        self.buf.extend_from_slice(&footer_offset.to_le_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        let crc = crc32fast::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(self.buf.len() - start, FOOTER_LEN);
        self.buf
    }
}

/// Payloads are bounded far below 4 GiB by the callers (chunks <= 16 MiB, records are small JSON);
/// a violation is a programming error, not input corruption.
fn stored_len(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).expect("entry payload over 4 GiB")
}

/// The 48-byte header in front of every entry, §4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub ty: EntryType,
    pub codec: Codec,
    pub stored_len: u32,
    pub raw_len: u32,
    /// Chunk: chunk id. Record: BLAKE3 of the payload.
    pub id: [u8; 32],
}

/// Parses the entry header at the start of `b` (checks CRC, type, codec, reserved bytes and the length
/// rules of §4/§4.1).
pub fn parse_entry_header(b: &[u8]) -> Result<EntryHeader, CoreError> {
    const W: &str = "container entry header";
    let h = b
        .get(..ENTRY_HEADER_LEN)
        .ok_or_else(|| malformed(W, format!("{} bytes, need {ENTRY_HEADER_LEN}", b.len())))?;
    let crc = le_u32(h, 44).ok_or_else(|| malformed(W, "short"))?;
    if crc32fast::hash(&h[..44]) != crc {
        return Err(malformed(W, "CRC mismatch"));
    }
    let ty = EntryType::from_u8(h[0]).ok_or_else(|| malformed(W, format!("type {}", h[0])))?;
    let codec = Codec::from_u8(h[1]).ok_or_else(|| malformed(W, format!("codec {}", h[1])))?;
    if h[2..4] != [0, 0] {
        return Err(malformed(W, "reserved bytes not zero"));
    }
    let stored_len = le_u32(h, 4).ok_or_else(|| malformed(W, "short"))?;
    let raw_len = le_u32(h, 8).ok_or_else(|| malformed(W, "short"))?;
    let id = array::<32>(h, 12).ok_or_else(|| malformed(W, "short"))?;
    if ty == EntryType::Chunk {
        if !(1..=MAX_RAW_CHUNK_LEN).contains(&raw_len) {
            return Err(malformed(W, format!("chunk raw length {raw_len}")));
        }
        if codec == Codec::Raw && stored_len != raw_len {
            return Err(malformed(W, "raw chunk with stored length != raw length"));
        }
    } else if ty == EntryType::Group {
        if codec != Codec::Zstd {
            return Err(malformed(W, "chunk group not zstd"));
        }
        if !(1..=MAX_GROUP_RAW_LEN).contains(&raw_len) {
            return Err(malformed(W, format!("chunk group raw length {raw_len}")));
        }
        if (stored_len as usize) < GROUP_COUNT_LEN + GROUP_MEMBER_LEN {
            return Err(malformed(W, "chunk group without members"));
        }
    } else if codec != Codec::Raw || raw_len != stored_len {
        return Err(malformed(W, "record with codec or raw length set"));
    }
    Ok(EntryHeader {
        ty,
        codec,
        stored_len,
        raw_len,
        id,
    })
}

/// The 32-byte container header, §4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerHeader {
    pub id: ContainerId,
    pub created_unix_ms: u64,
}

/// Parses the container header at the start of `b`.
pub fn parse_container_header(b: &[u8]) -> Result<ContainerHeader, CoreError> {
    const W: &str = "container header";
    let h = b
        .get(..CONTAINER_HEADER_LEN)
        .ok_or_else(|| malformed(W, format!("{} bytes", b.len())))?;
    if h[..8] != CONTAINER_MAGIC {
        return Err(malformed(W, "bad magic"));
    }
    let version = le_u16(h, 8).ok_or_else(|| malformed(W, "short"))?;
    if !(MIN_CONTAINER_VERSION..=CONTAINER_VERSION).contains(&version) {
        return Err(malformed(W, format!("unsupported version {version}")));
    }
    if h[10..16].iter().any(|&x| x != 0) {
        return Err(malformed(W, "reserved bytes not zero"));
    }
    Ok(ContainerHeader {
        id: ContainerId(le_u64(h, 16).ok_or_else(|| malformed(W, "short"))?),
        created_unix_ms: le_u64(h, 24).ok_or_else(|| malformed(W, "short"))?,
    })
}

/// One entry of a parsed container; `payload` borrows from the container bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEntry<'a> {
    pub header: EntryHeader,
    /// Offset of the payload within the container (what the catalog stores for chunks).
    pub payload_offset: u64,
    pub payload: &'a [u8],
}

/// Parses a whole sealed container: header, all entries, footer; checks magics, CRCs, entry count and
/// footer offset. Record payload hashes are checked (HashMismatch); chunk payloads are NOT decoded here.
pub fn parse_container(bytes: &[u8]) -> Result<(ContainerHeader, Vec<ParsedEntry<'_>>), CoreError> {
    let mut entries = Vec::new();
    let header = walk_container(&Pieces::whole(bytes), |e| {
        entries.push(ParsedEntry {
            header: e.header.clone(),
            payload_offset: e.payload.start as u64,
            payload: &bytes[e.payload.clone()],
        });
        Ok(())
    })?;
    Ok((header, entries))
}

/// An entry as [`walk_container`] found it.
struct EntrySpan {
    header: EntryHeader,
    /// The payload's place in the container.
    payload: std::ops::Range<usize>,
    /// A group's member table length (0 for other entries).
    table_len: usize,
}

/// The structure check behind [`parse_container`] and [`verify_container_pieces`]: header, footer, every
/// entry header (CRC) and payload bound, the entry count, and the hashes of records and group member tables.
/// Each entry is handed to `visit` in order; chunk payloads are not decoded here. Reads the pieces where they
/// lie and copies only what straddles two of them.
fn walk_container(
    c: &Pieces<'_>,
    mut visit: impl FnMut(&EntrySpan) -> Result<(), CoreError>,
) -> Result<ContainerHeader, CoreError> {
    const W: &str = "container entry";
    let mut scratch = Vec::new();
    let short = || malformed("container", "shorter than its structure says");
    let header = parse_container_header(
        c.contiguous(0..CONTAINER_HEADER_LEN.min(c.len()), &mut scratch)
            .ok_or_else(short)?,
    )?;
    let footer_at = footer_offset(c.len())?;
    let count = parse_footer(
        c.contiguous(footer_at..c.len(), &mut scratch)
            .ok_or_else(short)?,
        footer_at,
    )?;
    let mut found = 0usize;
    let mut pos = CONTAINER_HEADER_LEN;
    while pos < footer_at {
        let header_end = (pos + ENTRY_HEADER_LEN).min(footer_at);
        let header = parse_entry_header(
            c.contiguous(pos..header_end, &mut scratch)
                .ok_or_else(short)?,
        )
        .map_err(|e| malformed(W, format!("at offset {pos}: {e}")))?;
        let start = pos + ENTRY_HEADER_LEN;
        let end = start
            .checked_add(header.stored_len as usize)
            .filter(|&end| end <= footer_at)
            .ok_or_else(|| malformed(W, format!("at offset {pos}: payload overruns footer")))?;
        let mut table_len = 0;
        match header.ty {
            EntryType::Chunk => {}
            EntryType::Group => {
                // The id field covers the member table; the members are verified by their own ids on decode.
                let count_end = (start + GROUP_COUNT_LEN).min(end);
                let n = c
                    .contiguous(start..count_end, &mut scratch)
                    .ok_or_else(short)?;
                table_len = group_table_len_of(n, end - start).ok_or_else(|| {
                    malformed("chunk group", format!("at offset {pos}: bad member count"))
                })?;
                let table = c
                    .contiguous(start..start + table_len, &mut scratch)
                    .ok_or_else(short)?;
                if *blake3::hash(table).as_bytes() != header.id {
                    return Err(CoreError::HashMismatch {
                        what: "chunk group member table",
                    });
                }
            }
            _ => {
                let mut h = blake3::Hasher::new();
                for s in c.slices(start..end).ok_or_else(short)? {
                    h.update(s);
                }
                if *h.finalize().as_bytes() != header.id {
                    return Err(CoreError::HashMismatch {
                        what: "container record",
                    });
                }
            }
        }
        visit(&EntrySpan {
            header,
            payload: start..end,
            table_len,
        })?;
        found += 1;
        pos = end;
    }
    if found != count as usize {
        return Err(malformed(
            "container footer",
            format!("entry count {count}, found {found}"),
        ));
    }
    Ok(header)
}

/// Where the footer of a container of `len` bytes starts.
fn footer_offset(len: usize) -> Result<usize, CoreError> {
    len.checked_sub(FOOTER_LEN)
        .filter(|&f| f >= CONTAINER_HEADER_LEN)
        .ok_or_else(|| malformed("container", format!("{len} bytes is too short")))
}

/// Checks the footer `f` (FOOTER_LEN bytes found at `footer_at`); the entry count it records.
fn parse_footer(f: &[u8], footer_at: usize) -> Result<u32, CoreError> {
    const W: &str = "container footer";
    if f.len() != FOOTER_LEN || f[..8] != FOOTER_MAGIC {
        return Err(malformed(W, "bad magic"));
    }
    if le_u32(f, 28) != Some(crc32fast::hash(&f[..28])) {
        return Err(malformed(W, "CRC mismatch"));
    }
    if f[12..16] != [0; 4] || f[24..28] != [0; 4] {
        return Err(malformed(W, "reserved bytes not zero"));
    }
    let count = le_u32(f, 8).ok_or_else(|| malformed(W, "short"))?;
    if le_u64(f, 16) != Some(footer_at as u64) {
        return Err(malformed(W, "footer offset does not match its position"));
    }
    Ok(count)
}

/// A container lying in pieces back to back (the data shards of its stripe), not joined into one buffer.
pub struct Pieces<'a> {
    pieces: Vec<&'a [u8]>,
    /// Where each piece starts within the container.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Pieces<'a> {
    /// The first `len` bytes of `pieces` back to back (None if they hold fewer).
    pub fn new(pieces: &[&'a [u8]], len: usize) -> Option<Pieces<'a>> {
        let mut kept = Vec::with_capacity(pieces.len());
        let mut starts = Vec::with_capacity(pieces.len());
        let mut at = 0;
        for p in pieces {
            if at >= len {
                break;
            }
            let take = (len - at).min(p.len());
            if take == 0 {
                continue;
            }
            starts.push(at);
            kept.push(&p[..take]);
            at += take;
        }
        (at == len).then_some(Pieces {
            pieces: kept,
            starts,
            len,
        })
    }

    /// One contiguous container.
    pub fn whole(bytes: &'a [u8]) -> Pieces<'a> {
        Pieces {
            pieces: vec![bytes],
            starts: vec![0],
            len: bytes.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slices that hold `range`, in order (None if it reaches past the end).
    pub fn slices(&self, range: std::ops::Range<usize>) -> Option<Vec<&'a [u8]>> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        let first = self
            .starts
            .partition_point(|&s| s <= range.start)
            .checked_sub(1);
        let mut out = Vec::new();
        let mut at = range.start;
        for (p, &start) in self
            .pieces
            .iter()
            .zip(&self.starts)
            .skip(first.unwrap_or(0))
        {
            if at >= range.end {
                break;
            }
            let end = (start + p.len()).min(range.end);
            if end > at {
                out.push(&p[at - start..end - start]);
                at = end;
            }
        }
        Some(out)
    }

    /// `range` as one slice: borrowed when it lies in one piece, else copied into `scratch`.
    pub fn contiguous<'s>(
        &self,
        range: std::ops::Range<usize>,
        scratch: &'s mut Vec<u8>,
    ) -> Option<&'s [u8]>
    where
        'a: 's,
    {
        let slices = self.slices(range)?;
        if let [one] = slices.as_slice() {
            return Some(one);
        }
        scratch.clear();
        for s in slices {
            scratch.extend_from_slice(s);
        }
        Some(scratch.as_slice())
    }
}

/// Checks a whole container as [`parse_container`] does on the joined bytes (structure, CRCs, record and
/// member table hashes) and, with `check_chunks`, every chunk as [`decode_chunk`] / [`verify_group`] do, but
/// reads the pieces where they lie: only what straddles two pieces is copied (entry headers, the footer,
/// group member tables, single chunks; a group's frame, only when its chunks are checked; records are hashed
/// piece by piece). Joining the data shards first copied every byte of every container scrub or rebuild read
/// (~7% of scrub's CPU in the bench, where nearly every group straddles a shard boundary: there it saves
/// the copy of what does not, and all of rebuild's).
pub fn verify_container_pieces(c: &Pieces<'_>, check_chunks: bool) -> Result<(), CoreError> {
    let mut scratch = Vec::new();
    let short = || malformed("container", "shorter than its structure says");
    walk_container(c, |e| {
        if !check_chunks {
            return Ok(());
        }
        let (h, start, end) = (&e.header, e.payload.start, e.payload.end);
        let at_entry =
            |err: CoreError| malformed("container entry", format!("chunk at {start}: {err}"));
        match h.ty {
            EntryType::Chunk => {
                let payload = c.contiguous(start..end, &mut scratch).ok_or_else(short)?;
                verify_chunk(h.codec, h.raw_len, payload, &ChunkId(h.id)).map_err(at_entry)
            }
            EntryType::Group => {
                let table = c
                    .contiguous(start..start + e.table_len, &mut scratch)
                    .ok_or_else(short)?;
                let group = parse_group(table, h.raw_len).map_err(at_entry)?;
                let frame = c.slices(start + e.table_len..end).ok_or_else(short)?;
                verify_group_pieces(&group.members, &frame, h.raw_len).map_err(at_entry)
            }
            _ => Ok(()),
        }
    })
    .map(|_| ())
}

/// [`verify_group`] of a frame that lies in pieces: decompressed where it lies when that is one piece, else
/// from a copy. (zstd's streaming decoder takes the pieces as they are, but was measured slower: it decodes
/// blocks with its literals apart from the output, and the ~5% of scrub's CPU that the copies cost went into
/// its sequence decoding instead.)
fn verify_group_pieces(
    members: &[(ChunkId, u32, GroupSlot)],
    frame: &[&[u8]],
    group_raw: u32,
) -> Result<(), CoreError> {
    match frame {
        [one] => verify_group_frame(members, one, group_raw),
        _ => FRAME_BUF.with(|cell| {
            let mut joined = cell.borrow_mut();
            joined.clear();
            joined.reserve(thread_buffer_size(frame.iter().map(|p| p.len()).sum()));
            for piece in frame {
                joined.extend_from_slice(piece);
            }
            verify_group_frame(members, &joined, group_raw)
        }),
    }
}

/// Compression policy (§4.1): zstd at `level`; keep it only if it saves at least 1/32 of raw, else Raw.
pub fn compress_chunk(raw: &[u8], level: i32) -> (Codec, Vec<u8>) {
    match compress_chunk_reusing(raw, level) {
        Some(z) => (Codec::Zstd, z),
        None => (Codec::Raw, raw.to_vec()),
    }
}

/// [`compress_chunk`] without the raw copy: the zstd frame, or None where the chunk is stored raw (the caller
/// stores the slice it already has). The thread's compression context is reused: one per chunk, as
/// `zstd::bulk::compress` makes, cost ~5% of unique ingest (ZSTD_createCCtx + its memset). zstd output is
/// deterministic for a level, so the bytes are the same either way.
pub fn compress_chunk_reusing(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    let z = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        slot.as_mut().and_then(|(_, c)| c.compress(raw).ok())
    })?;
    pays(raw, z)
}

// ---------- chunk groups (§4.5) ----------

/// A group's member table: a u32 count, then per member its chunk id and raw length.
const GROUP_COUNT_LEN: usize = 4;
const GROUP_MEMBER_LEN: usize = 36;
/// Reader limit on a group's decompressed size (the writer stays far below, see [`GROUP_TARGET_RAW`]).
pub const MAX_GROUP_RAW_LEN: u32 = 16 * 1024 * 1024;
/// Writer policy (§4.5): a group closes at this many members or raw bytes. Measured on the tar workload at
/// zstd-3 (README): chunks alone 0.679 of raw, groups of 16 0.633, of ~40 (1 MiB) 0.629; restic's 1 MiB blobs
/// 0.635. 2 MiB since session 7: with a window over the whole group ([`group_compressor`]) 2 MiB groups store
/// about as little as 1 MiB groups did with zstd's double-fast parameters, at 1.2-1.4x the speed. A random
/// read of one chunk decompresses up to this much.
pub const GROUP_TARGET_CHUNKS: usize = 128;
pub const GROUP_TARGET_RAW: usize = 2 * 1024 * 1024;

/// A span never covers more chunks than this, new or not, so a long run of duplicates still reaches the
/// container and segment checks of the ingest loop often.
pub const MAX_SPAN_CHUNKS: usize = 256;

/// Cuts a batch of chunks (lengths `lens`, `is_new[i]` when chunk i must be stored) into consecutive spans,
/// each holding at most one group: at most [`GROUP_TARGET_CHUNKS`] new chunks of at most [`GROUP_TARGET_RAW`]
/// raw bytes together (a single larger chunk makes a span of its own), and at most [`MAX_SPAN_CHUNKS`] chunks.
/// The spans cover `0..lens.len()` in order.
pub fn plan_group_spans(lens: &[usize], is_new: &[bool]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    let (mut members, mut raw) = (0usize, 0usize);
    for (i, (&len, &new)) in lens.iter().zip(is_new).enumerate() {
        let group_full =
            new && members > 0 && (members >= GROUP_TARGET_CHUNKS || raw + len > GROUP_TARGET_RAW);
        if group_full || i - start >= MAX_SPAN_CHUNKS {
            spans.push(start..i);
            start = i;
            (members, raw) = (0, 0);
        }
        if new {
            members += 1;
            raw += len;
        }
    }
    if start < lens.len() {
        spans.push(start..lens.len());
    }
    spans
}

/// Where a chunk lies in a group's decompressed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSlot {
    /// Offset of the chunk's first byte in the decompressed group.
    pub offset: u32,
    /// Decompressed size of the whole group.
    pub group_raw: u32,
}

fn encode_group_table(members: &[(ChunkId, u32)]) -> Vec<u8> {
    let mut t = Vec::with_capacity(GROUP_COUNT_LEN + GROUP_MEMBER_LEN * members.len());
    let n = u32::try_from(members.len()).expect("group member count");
    t.extend_from_slice(&n.to_le_bytes());
    for (id, len) in members {
        t.extend_from_slice(id.as_bytes());
        t.extend_from_slice(&len.to_le_bytes());
    }
    t
}

/// Length of the member table at the start of a group payload, if the count fits the payload.
fn group_table_len(payload: &[u8]) -> Option<usize> {
    group_table_len_of(payload, payload.len())
}

/// [`group_table_len`] of a payload of `payload_len` bytes that starts with `head` (at least its count).
fn group_table_len_of(head: &[u8], payload_len: usize) -> Option<usize> {
    let n = le_u32(head, 0)? as usize;
    let len = n
        .checked_mul(GROUP_MEMBER_LEN)?
        .checked_add(GROUP_COUNT_LEN)?;
    (n >= 1 && len <= payload_len).then_some(len)
}

/// A parsed group payload: its members with their slots, and the zstd frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedGroup<'a> {
    pub members: Vec<(ChunkId, u32, GroupSlot)>,
    /// Offset of the frame within the payload.
    pub frame_start: usize,
    pub frame: &'a [u8],
}

/// Parses a group entry's payload (§4.5); `raw_len` is the entry header's, which must equal the members' sum.
pub fn parse_group(payload: &[u8], raw_len: u32) -> Result<ParsedGroup<'_>, CoreError> {
    const W: &str = "chunk group";
    let table_len = group_table_len(payload).ok_or_else(|| malformed(W, "bad member count"))?;
    let mut members = Vec::with_capacity((table_len - GROUP_COUNT_LEN) / GROUP_MEMBER_LEN);
    let mut at = 0u64;
    for e in payload[GROUP_COUNT_LEN..table_len].chunks_exact(GROUP_MEMBER_LEN) {
        let id = ChunkId(array::<32>(e, 0).ok_or_else(|| malformed(W, "short"))?);
        let len = le_u32(e, 32).ok_or_else(|| malformed(W, "short"))?;
        if !(1..=MAX_RAW_CHUNK_LEN).contains(&len) {
            return Err(malformed(W, format!("member raw length {len}")));
        }
        let offset = u32::try_from(at).map_err(|_| malformed(W, "members overflow"))?;
        members.push((
            id,
            len,
            GroupSlot {
                offset,
                group_raw: raw_len,
            },
        ));
        at += u64::from(len);
    }
    if at != u64::from(raw_len) {
        return Err(malformed(
            W,
            format!("members hold {at} bytes, header says {raw_len}"),
        ));
    }
    Ok(ParsedGroup {
        members,
        frame_start: table_len,
        frame: &payload[table_len..],
    })
}

/// Compresses the concatenation of `raws` as one frame, with the §4.1 rule applied to the whole group: None
/// when it does not pay (the caller then stores the chunks raw, one entry each).
///
/// For levels 1-3 a group is compressed with parameters of our own ([`group_compressor`]), not zstd's.
pub fn compress_group(raws: &[&[u8]], level: i32) -> Option<Vec<u8>> {
    let mut frame = Vec::new();
    compress_group_into(raws, level, &mut frame).then_some(frame)
}

/// [`compress_group`] into `frame` (its old bytes are dropped, its allocation reused): true when the group
/// pays and `frame` holds its frame.
pub fn compress_group_into(raws: &[&[u8]], level: i32, frame: &mut Vec<u8>) -> bool {
    GROUP_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        for r in raws {
            buf.extend_from_slice(r);
        }
        compress_group_bytes_into(&buf, level, frame)
    })
}

/// [`compress_group`] of members already back to back in memory (the usual case: a run of new chunks).
pub fn compress_group_bytes(concatenated: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut frame = Vec::new();
    compress_group_bytes_into(concatenated, level, &mut frame).then_some(frame)
}

/// [`compress_group_bytes`] into `frame`, as [`compress_group_into`]. The store passes pooled buffers: a
/// fresh ~2 MiB output buffer per group was most of the page faults left in a long upload.
pub fn compress_group_bytes_into(concatenated: &[u8], level: i32, frame: &mut Vec<u8>) -> bool {
    frame.clear();
    frame.reserve(zstd::zstd_safe::compress_bound(concatenated.len()));
    let compressed = GROUP_COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = group_compressor(level).map(|c| (level, c));
        }
        slot.as_mut()
            .is_some_and(|(_, c)| c.compress_to_buffer(concatenated, frame).is_ok())
    });
    compressed && pays_len(concatenated.len(), frame.len())
}

/// Levels 1-3 compress groups with zstd's "fast" strategy over the whole group (2 MiB window) with a
/// 2^14..2^16-entry hash table, instead of zstd's own double-fast parameters for these levels: fast looks up
/// one hash table per position where double-fast looks up two, and the window over the whole group finds the
/// matches that the 256 KiB window of zstd's small-input row missed.
/// Measured with `cargo bench --bench compression` (README, "Compression"; one core), against zstd's
/// <= 256 KiB double-fast row (window 256 KiB, tables 2^16) on 1 MiB groups: 267 -> 318 MB/s on the bench's
/// tar workload at +0.1% stored bytes (0.6705 -> 0.6713 of raw), and 369 -> 506 MB/s on a tar of this
/// machine's /usr (docs, binaries, Python, headers) with 2.9% fewer bytes (0.5324 -> 0.5172). Levels from 4
/// up keep zstd's own parameters.
fn group_compressor(level: i32) -> Option<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter::{HashLog, MinMatch, Strategy, WindowLog};
    let mut c = zstd::bulk::Compressor::new(level).ok()?;
    // (hash log, minimum match) of the fast strategy for this level.
    let fast = match level {
        1 => Some((14, 6)),
        2 => Some((15, 5)),
        3 => Some((16, 5)),
        _ => None,
    };
    if let Some((hash_log, min_match)) = fast {
        c.set_parameter(Strategy(zstd::zstd_safe::Strategy::ZSTD_fast))
            .ok()?;
        c.set_parameter(WindowLog(GROUP_WINDOW_LOG)).ok()?;
        c.set_parameter(HashLog(hash_log)).ok()?;
        c.set_parameter(MinMatch(min_match)).ok()?;
    }
    Some(c)
}

/// A group's match window: the whole of a group of [`GROUP_TARGET_RAW`] bytes.
const GROUP_WINDOW_LOG: u32 = 21;
const _: () = assert!(1 << GROUP_WINDOW_LOG >= GROUP_TARGET_RAW);

/// The §4.1 rule: keep the frame only if it saves at least 1/32 of the raw size.
fn pays(raw: &[u8], z: Vec<u8>) -> Option<Vec<u8>> {
    pays_len(raw.len(), z.len()).then_some(z)
}

fn pays_len(raw: usize, compressed: usize) -> bool {
    compressed < raw && (raw - compressed) * 32 >= raw
}

/// Decompresses a whole group frame (bounded to `group_raw`, which must come out exactly).
pub fn decode_group(frame: &[u8], group_raw: u32) -> Result<Vec<u8>, CoreError> {
    check_group_raw(group_raw)?;
    let raw = decompress_reusing(frame, group_raw as usize).map_err(group_zstd_error)?;
    check_group_decoded(raw.len(), group_raw)?;
    Ok(raw)
}

/// A group's raw length (entry header) within what a reader accepts.
fn check_group_raw(group_raw: u32) -> Result<(), CoreError> {
    if !(1..=MAX_GROUP_RAW_LEN).contains(&group_raw) {
        return Err(malformed("chunk group", format!("raw length {group_raw}")));
    }
    Ok(())
}

/// A group decodes to exactly its header's raw length.
fn check_group_decoded(decoded: usize, group_raw: u32) -> Result<(), CoreError> {
    if decoded != group_raw as usize {
        return Err(malformed(
            "chunk group",
            format!("decoded {decoded} bytes, header says {group_raw}"),
        ));
    }
    Ok(())
}

fn group_zstd_error(e: std::io::Error) -> CoreError {
    malformed("chunk group", format!("zstd: {e}"))
}

/// Checks every member of a parsed group against its id (scrub): the frame is decompressed into a buffer
/// kept per thread, where [`decode_group`]'s fresh buffer per group cost page faults and zeroing.
pub fn verify_group(group: &ParsedGroup<'_>, group_raw: u32) -> Result<(), CoreError> {
    verify_group_frame(&group.members, group.frame, group_raw)
}

fn verify_group_frame(
    members: &[(ChunkId, u32, GroupSlot)],
    frame: &[u8],
    group_raw: u32,
) -> Result<(), CoreError> {
    check_group_raw(group_raw)?;
    VERIFY_BUF.with(|cell| {
        let mut raw = cell.borrow_mut();
        raw.clear();
        raw.reserve(thread_buffer_size(group_raw as usize));
        // Writes into the spare capacity only: more output than that is an error, and a length other than
        // `group_raw` is caught below.
        with_decompressor(|d| d.decompress_to_buffer(frame, &mut *raw))
            .map_err(group_zstd_error)?;
        check_group_decoded(raw.len(), group_raw)?;
        for (id, len, slot) in members {
            verify_member(&raw, *slot, *len, id)?;
        }
        Ok(())
    })
}

/// One member's bytes within a decoded group, verified against its id.
fn member_bytes<'a>(
    group: &'a [u8],
    slot: GroupSlot,
    raw_len: u32,
    id: &ChunkId,
) -> Result<&'a [u8], CoreError> {
    let range = member_range(group, slot, raw_len, id)?;
    Ok(&group[range])
}

/// Where one member lies within a decoded group, verified against its id (a reader that keeps the group
/// serves the member as a slice of it).
pub fn member_range(
    group: &[u8],
    slot: GroupSlot,
    raw_len: u32,
    id: &ChunkId,
) -> Result<std::ops::Range<usize>, CoreError> {
    let start = slot.offset as usize;
    let end = start
        .checked_add(raw_len as usize)
        .filter(|&end| end <= group.len())
        .ok_or_else(|| malformed("chunk group member", "outside the group"))?;
    if ChunkId::of(&group[start..end]) != *id {
        return Err(CoreError::HashMismatch { what: "chunk" });
    }
    Ok(start..end)
}

/// One member out of a decoded group, verified against its id.
pub fn group_member(
    group: &[u8],
    slot: GroupSlot,
    raw_len: u32,
    id: &ChunkId,
) -> Result<Vec<u8>, CoreError> {
    member_bytes(group, slot, raw_len, id).map(<[u8]>::to_vec)
}

/// Checks one member of a decoded group against its id without copying it (scrub).
pub fn verify_member(
    group: &[u8],
    slot: GroupSlot,
    raw_len: u32,
    id: &ChunkId,
) -> Result<(), CoreError> {
    member_bytes(group, slot, raw_len, id).map(|_| ())
}

thread_local! {
    /// The concatenation a group is compressed from, reused per thread.
    static GROUP_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Groups' compression context, apart from single chunks' (it carries the parameters of
    /// [`group_compressor`]).
    static GROUP_COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread: creating one per chunk (what `zstd::bulk::decompress` does)
    /// allocated and cleared ~100 KiB each time and showed as ZSTD_createDCtx in restore and scrub profiles.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// A group's decompressed bytes while [`verify_group`] checks them.
    static VERIFY_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A group's frame joined from the pieces it straddles ([`verify_container_pieces`]).
    static FRAME_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn decompress_reusing(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    with_decompressor(|d| d.decompress(stored, capacity))
}

/// What a thread's reused buffer is grown to for `len` bytes: groups and frames differ by a few KiB, and
/// reserving each one's exact length reallocated (a copy, fresh pages) nearly every time a larger one came.
fn thread_buffer_size(len: usize) -> usize {
    len.next_multiple_of(THREAD_BUFFER_STEP)
}
const THREAD_BUFFER_STEP: usize = 256 * 1024;

/// Runs `f` with this thread's zstd decompression context, made on first use.
fn with_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<R>,
) -> std::io::Result<R> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(d) => f(d),
            None => f(slot.insert(zstd::bulk::Decompressor::new()?)),
        }
    })
}

/// What chunk payload errors name.
const CHUNK_PAYLOAD: &str = "chunk payload";

/// A chunk's raw length as its entry or location states it: 1 to [`MAX_RAW_CHUNK_LEN`].
fn check_chunk_raw_len(raw_len: u32) -> Result<(), CoreError> {
    if !(1..=MAX_RAW_CHUNK_LEN).contains(&raw_len) {
        return Err(malformed(CHUNK_PAYLOAD, format!("raw length {raw_len}")));
    }
    Ok(())
}

/// A chunk's decoded bytes: `raw_len` of them, hashing to `id`.
fn check_decoded_chunk(raw: &[u8], raw_len: u32, id: &ChunkId) -> Result<(), CoreError> {
    if raw.len() != raw_len as usize {
        return Err(malformed(
            CHUNK_PAYLOAD,
            format!("decoded {} bytes, header says {raw_len}", raw.len()),
        ));
    }
    if ChunkId::of(raw) != *id {
        return Err(CoreError::HashMismatch { what: "chunk" });
    }
    Ok(())
}

/// Decompresses (bounded to `raw_len`: never allocates more than that, rejects oversize output) and verifies
/// BLAKE3 == id.
pub fn decode_chunk(
    codec: Codec,
    raw_len: u32,
    stored: &[u8],
    id: &ChunkId,
) -> Result<Vec<u8>, CoreError> {
    check_chunk_raw_len(raw_len)?;
    let raw = match codec {
        Codec::Raw if stored.len() != raw_len as usize => {
            return Err(malformed(
                CHUNK_PAYLOAD,
                format!("{} stored bytes, header says {raw_len}", stored.len()),
            ));
        }
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => decompress_reusing(stored, raw_len as usize)
            .map_err(|e| malformed(CHUNK_PAYLOAD, format!("zstd: {e}")))?,
    };
    check_decoded_chunk(&raw, raw_len, id)?;
    Ok(raw)
}

/// [`decode_chunk`]'s checks without handing the bytes out (scrub): a raw chunk is hashed where it lies, a
/// compressed one decoded into the thread's reused buffer. (The copy of every raw chunk and a fresh buffer per
/// compressed one were ~1.6% of scrub's CPU.)
pub fn verify_chunk(
    codec: Codec,
    raw_len: u32,
    stored: &[u8],
    id: &ChunkId,
) -> Result<(), CoreError> {
    check_chunk_raw_len(raw_len)?;
    match codec {
        Codec::Raw => check_decoded_chunk(stored, raw_len, id),
        Codec::Zstd => VERIFY_BUF.with(|cell| {
            let mut raw = cell.borrow_mut();
            raw.clear();
            raw.reserve(thread_buffer_size(raw_len as usize));
            // Into the spare capacity only: output beyond it is an error, as decode_chunk's bound.
            with_decompressor(|d| d.decompress_to_buffer(stored, &mut *raw))
                .map_err(|e| malformed(CHUNK_PAYLOAD, format!("zstd: {e}")))?;
            check_decoded_chunk(&raw, raw_len, id)
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reused_context_gives_fresh_context_bytes() {
        let text: Vec<u8> = (0..100_000u32)
            .map(|i| b"cairn backup "[(i % 13) as usize])
            .collect();
        let noise: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for level in [3, 1, 3] {
            for raw in [&text[..], &noise[..], &text[..10], &text[..]] {
                let fresh = zstd::bulk::compress(raw, level).unwrap();
                let pays = fresh.len() < raw.len() && (raw.len() - fresh.len()) * 32 >= raw.len();
                assert_eq!(
                    super::compress_chunk_reusing(raw, level),
                    pays.then_some(fresh)
                );
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut b = ContainerBuilder::new(ContainerId(7), 1_700_000_000_000, 0);
        let text = b"hello hello hello hello hello hello hello hello".repeat(20);
        let (codec, stored) = compress_chunk(&text, DEFAULT_ZSTD_LEVEL);
        b.push_chunk(&ChunkId::of(&text), codec, text.len() as u32, &stored);
        b.push_chunk(&ChunkId::of(b"xyz"), Codec::Raw, 3, b"xyz");
        let (g1, g2) = (b"first member ".repeat(30), b"second member ".repeat(40));
        let frame = compress_group(&[&g1, &g2], DEFAULT_ZSTD_LEVEL).unwrap();
        b.push_group(
            &[
                (ChunkId::of(&g1), g1.len() as u32),
                (ChunkId::of(&g2), g2.len() as u32),
            ],
            &frame,
        );
        b.push_record(EntryType::Bucket, br#"{"v":1}"#);
        b.seal()
    }

    /// A chunk from its stored bytes as the catalog locates it: a chunk entry's payload, or (with `group`) the
    /// frame of the group holding it. Verified against `id` either way.
    fn decode_located(
        codec: Codec,
        raw_len: u32,
        group: Option<GroupSlot>,
        stored: &[u8],
        id: &ChunkId,
    ) -> Result<Vec<u8>, CoreError> {
        match group {
            None => decode_chunk(codec, raw_len, stored, id),
            Some(slot) => group_member(&decode_group(stored, slot.group_raw)?, slot, raw_len, id),
        }
    }

    /// Decodes every chunk a parsed container holds, as scrub and catalog rebuild see them.
    fn all_chunks(entries: &[ParsedEntry<'_>]) -> Result<Vec<(ChunkId, Vec<u8>)>, CoreError> {
        let mut out = Vec::new();
        for e in entries {
            match e.header.ty {
                EntryType::Chunk => {
                    let id = ChunkId(e.header.id);
                    out.push((
                        id,
                        decode_chunk(e.header.codec, e.header.raw_len, e.payload, &id)?,
                    ));
                }
                EntryType::Group => {
                    let g = parse_group(e.payload, e.header.raw_len)?;
                    let raw = decode_group(g.frame, e.header.raw_len)?;
                    for (id, len, slot) in g.members {
                        out.push((id, group_member(&raw, slot, len, &id)?));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    #[test]
    fn appended_entries_keep_their_bytes_and_move_by_the_returned_shift() {
        // Two uploads' last containers: chunks, a group and records in each.
        let a_text = b"first upload ".repeat(50);
        let mut a = ContainerBuilder::new(ContainerId(10), 1_700_000_000_000, 0);
        let (codec, stored) = compress_chunk(&a_text, DEFAULT_ZSTD_LEVEL);
        let a_chunk_at = a.push_chunk(&ChunkId::of(&a_text), codec, a_text.len() as u32, &stored);
        a.push_record(EntryType::Segment, b"segment of a");
        let (g1, g2) = (b"member one ".repeat(30), b"member two ".repeat(40));
        let frame = compress_group(&[&g1, &g2], DEFAULT_ZSTD_LEVEL).unwrap();
        let mut b = ContainerBuilder::new(ContainerId(11), 1_700_000_000_001, 0);
        let b_raw_at = b.push_chunk(&ChunkId::of(b"xyz"), Codec::Raw, 3, b"xyz");
        let b_group_at = b.push_group(
            &[
                (ChunkId::of(&g1), g1.len() as u32),
                (ChunkId::of(&g2), g2.len() as u32),
            ],
            &frame,
        );
        b.push_record(EntryType::Commit, br#"{"v":1,"key":"b"}"#);
        let b_alone = {
            let mut copy = ContainerBuilder::new(ContainerId(11), 1_700_000_000_001, 0);
            copy.buf = b.buf.clone();
            copy.entries = b.entries;
            copy.seal()
        };
        let (_, b_entries) = parse_container(&b_alone).unwrap();
        let len_before = a.len();

        let (shift, _buffer) = a.append(b);
        assert_eq!(shift, (len_before - CONTAINER_HEADER_LEN) as u64);
        assert_eq!(a.entry_count(), 5);
        let merged = a.seal();
        let (header, entries) = parse_container(&merged).unwrap();
        assert_eq!(
            header.id,
            ContainerId(10),
            "the first container's id and header stay"
        );
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].payload_offset, a_chunk_at);
        for (moved, original) in entries[2..].iter().zip(&b_entries) {
            assert_eq!(moved.header, original.header);
            assert_eq!(moved.payload, original.payload);
            assert_eq!(moved.payload_offset, original.payload_offset + shift);
        }
        // Where b's pushes said its chunks were, plus the shift, is where they are now.
        let raw_at = (b_raw_at + shift) as usize;
        assert_eq!(&merged[raw_at..raw_at + 3], b"xyz");
        let frame_at = (b_group_at + shift) as usize;
        assert_eq!(&merged[frame_at..frame_at + frame.len()], &frame[..]);
        let chunks = all_chunks(&entries).unwrap();
        let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            vec![
                ChunkId::of(&a_text),
                ChunkId::of(b"xyz"),
                ChunkId::of(&g1),
                ChunkId::of(&g2)
            ]
        );
    }

    #[test]
    fn pieces_give_any_range_borrowed_or_joined() {
        let data: Vec<u8> = (0..100u8).collect();
        let pieces = [&data[..10], &data[10..10], &data[10..55], &data[55..]];
        assert!(
            Pieces::new(&pieces, 101).is_none(),
            "fewer bytes than asked for"
        );
        let c = Pieces::new(&pieces, 90).unwrap();
        assert_eq!(c.len(), 90);
        let mut scratch = Vec::new();
        for (from, to) in [
            (0, 0),
            (0, 10),
            (3, 9),
            (9, 11),
            (10, 55),
            (5, 90),
            (89, 90),
            (90, 90),
        ] {
            let got = c.contiguous(from..to, &mut scratch).unwrap().to_vec();
            assert_eq!(got, &data[from..to], "{from}..{to}");
            let joined: Vec<u8> = c.slices(from..to).unwrap().concat();
            assert_eq!(joined, &data[from..to]);
        }
        assert_eq!(
            c.slices(3..9).unwrap().len(),
            1,
            "inside one piece: one slice"
        );
        assert_eq!(
            c.slices(5..90).unwrap().len(),
            3,
            "across pieces, empty ones left out"
        );
        assert!(c.slices(80..91).is_none(), "past the end");
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = c.slices(9..3);
        assert!(backwards.is_none());
    }

    #[test]
    fn groups_round_trip_and_locate_their_members() {
        let members: Vec<Vec<u8>> = (0..5u8)
            .map(|i| format!("member {i} ").repeat(100 + i as usize).into_bytes())
            .collect();
        let raws: Vec<&[u8]> = members.iter().map(Vec::as_slice).collect();
        let frame = compress_group(&raws, DEFAULT_ZSTD_LEVEL).unwrap();
        let table: Vec<(ChunkId, u32)> = raws
            .iter()
            .map(|r| (ChunkId::of(r), r.len() as u32))
            .collect();
        let mut b = ContainerBuilder::new(ContainerId(3), 5, 0);
        b.push_chunk(&ChunkId::of(b"solo"), Codec::Raw, 4, b"solo");
        let frame_at = b.push_group(&table, &frame);
        let bytes = b.seal();
        let (h, entries) = parse_container(&bytes).unwrap();
        assert_eq!(h.id, ContainerId(3));
        let g = &entries[1];
        assert_eq!(g.header.ty, EntryType::Group);
        let parsed = parse_group(g.payload, g.header.raw_len).unwrap();
        // The offset push_group returns is where the frame lies: what the catalog stores.
        assert_eq!(g.payload_offset + parsed.frame_start as u64, frame_at);
        assert_eq!(&bytes[frame_at as usize..][..frame.len()], &frame[..]);
        let mut at = 0;
        for ((id, len, slot), raw) in parsed.members.iter().zip(&raws) {
            assert_eq!((*id, *len), (ChunkId::of(raw), raw.len() as u32));
            assert_eq!(slot.offset, at);
            at += *len;
            let got = decode_located(Codec::Zstd, *len, Some(*slot), &frame, id).unwrap();
            assert_eq!(&got, raw);
        }
        let decoded = all_chunks(&entries).unwrap();
        assert_eq!(decoded.len(), 6);
        // A member asked for under another id, or out of the group, is refused.
        let (id0, len0, slot0) = parsed.members[0];
        assert!(matches!(
            decode_located(
                Codec::Zstd,
                len0,
                Some(slot0),
                &frame,
                &ChunkId::of(b"other")
            ),
            Err(CoreError::HashMismatch { .. })
        ));
        let past = GroupSlot {
            offset: at,
            ..slot0
        };
        assert!(decode_located(Codec::Zstd, len0, Some(past), &frame, &id0).is_err());
        // A reader keeping the decoded group serves each member as the range `member_range` gives.
        let group = decode_group(&frame, at).unwrap();
        for ((id, len, slot), raw) in parsed.members.iter().zip(&raws) {
            let range = member_range(&group, *slot, *len, id).unwrap();
            assert_eq!(&group[range], *raw);
        }
        assert!(matches!(
            member_range(&group, slot0, len0, &ChunkId::of(b"other")),
            Err(CoreError::HashMismatch { .. })
        ));
        assert!(member_range(&group, past, len0, &id0).is_err());
        let overflowing = GroupSlot {
            offset: u32::MAX,
            ..slot0
        };
        assert!(member_range(&group, overflowing, len0, &id0).is_err());
        // A wrong group size is refused rather than trusted.
        let short = GroupSlot {
            group_raw: at - 1,
            ..slot0
        };
        assert!(decode_located(Codec::Zstd, len0, Some(short), &frame, &id0).is_err());
        // Scrub's check of a whole group: passes as it is, fails for a member under another id, a frame that
        // decodes to more or less than the header says, or damaged frame bytes.
        verify_group(&parsed, g.header.raw_len).unwrap();
        let mut renamed = parse_group(g.payload, g.header.raw_len).unwrap();
        renamed.members[2].0 = ChunkId::of(b"other");
        assert!(matches!(
            verify_group(&renamed, g.header.raw_len),
            Err(CoreError::HashMismatch { .. })
        ));
        assert!(verify_group(&parsed, g.header.raw_len - 1).is_err());
        assert!(verify_group(&parsed, g.header.raw_len + 1).is_err());
        let mut damaged_frame = frame.clone();
        let mid = damaged_frame.len() / 2;
        damaged_frame[mid] ^= 0x55;
        let damaged = ParsedGroup {
            frame: &damaged_frame,
            ..parse_group(g.payload, g.header.raw_len).unwrap()
        };
        assert!(verify_group(&damaged, g.header.raw_len).is_err());
        // The thread's buffer holds nothing over: the good group still passes afterwards.
        verify_group(&parsed, g.header.raw_len).unwrap();
        // Member table disagreeing with the header's raw length, or a count past the payload.
        assert!(parse_group(g.payload, g.header.raw_len + 1).is_err());
        let mut bad = g.payload.to_vec();
        bad[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse_group(&bad, g.header.raw_len).is_err());
        // Incompressible members: the group does not pay.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(
            compress_group(&[&noise[..10_000], &noise[10_000..]], 3),
            None
        );
    }

    #[test]
    fn version_1_containers_still_parse() {
        let mut bytes = sample();
        bytes.truncate(0);
        let mut b = ContainerBuilder::new(ContainerId(1), 2, 0);
        b.push_chunk(&ChunkId::of(b"xyz"), Codec::Raw, 3, b"xyz");
        bytes.extend_from_slice(&b.seal());
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert!(parse_container(&bytes).is_ok());
        bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
        assert!(parse_container(&bytes).is_err());
    }

    #[test]
    fn build_and_parse() {
        let mut b = ContainerBuilder::new(ContainerId(9), 123, 1024);
        assert_eq!(b.len(), CONTAINER_HEADER_LEN);
        let raw = b"some chunk bytes".to_vec();
        let id = ChunkId::of(&raw);
        let off = b.push_chunk(&id, Codec::Raw, raw.len() as u32, &raw);
        assert_eq!(off, (CONTAINER_HEADER_LEN + ENTRY_HEADER_LEN) as u64);
        let off2 = b.push_record(EntryType::Tombstone, b"{}");
        assert_eq!(off2, off + raw.len() as u64 + ENTRY_HEADER_LEN as u64);
        assert_eq!(b.entry_count(), 2);
        assert_eq!(b.id(), ContainerId(9));
        let len = b.len();
        let bytes = b.seal();
        assert_eq!(bytes.len(), len + FOOTER_LEN);
        let (h, e) = parse_container(&bytes).unwrap();
        assert_eq!(
            h,
            ContainerHeader {
                id: ContainerId(9),
                created_unix_ms: 123
            }
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].payload, &raw[..]);
        assert_eq!(e[0].payload_offset, off);
        assert_eq!(e[0].header.id, *id.as_bytes());
        assert_eq!(e[1].header.ty, EntryType::Tombstone);
        assert_eq!(e[1].payload, b"{}");
        assert_eq!(&bytes[off2 as usize..off2 as usize + 2], b"{}");
    }

    #[test]
    fn empty_container_parses() {
        let bytes = ContainerBuilder::new(ContainerId(1), 0, 0).seal();
        assert_eq!(bytes.len(), CONTAINER_HEADER_LEN + FOOTER_LEN);
        assert!(parse_container(&bytes).unwrap().1.is_empty());
    }

    #[test]
    fn record_hash_is_checked() {
        let mut bytes = sample();
        let (_, e) = parse_container(&bytes).unwrap();
        let (record_at, table_at) = (
            e[3].payload_offset as usize,
            e[2].payload_offset as usize + 4,
        );
        bytes[record_at] ^= 1;
        assert_eq!(
            parse_container(&bytes).unwrap_err(),
            CoreError::HashMismatch {
                what: "container record"
            }
        );
        // A group's member table is covered by its id field.
        let mut bytes = sample();
        bytes[table_at] ^= 1;
        assert_eq!(
            parse_container(&bytes).unwrap_err(),
            CoreError::HashMismatch {
                what: "chunk group member table"
            }
        );
    }

    #[test]
    fn compress_policy() {
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(100);
        let (c, z) = compress_chunk(&text, 3);
        assert_eq!(c, Codec::Zstd);
        assert!(z.len() < text.len() / 2);
        assert_eq!(
            decode_chunk(c, text.len() as u32, &z, &ChunkId::of(&text)).unwrap(),
            text
        );

        let random: Vec<u8> = (0..65536).map(|_| rand::random::<u8>()).collect();
        let (c, s) = compress_chunk(&random, 3);
        assert_eq!(c, Codec::Raw);
        assert_eq!(s, random);
        assert_eq!(compress_chunk(&[], 3).0, Codec::Raw);
    }

    #[test]
    fn verify_chunk_agrees_with_decode_chunk() {
        let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(10);
        let random: Vec<u8> = (0..70_000).map(|_| rand::random::<u8>()).collect();
        let n = text.len() as u32;
        let (c, z) = compress_chunk(&text, 3);
        assert_eq!(c, Codec::Zstd);
        let id = ChunkId::of(&text);
        // Every case decode_chunk decides, in both codecs, and a larger chunk after a smaller one (the
        // reused buffer grows) and then a smaller one again.
        let cases: Vec<(Codec, u32, &[u8], ChunkId)> = vec![
            (c, n, &z, id),
            (Codec::Raw, n, &text, id),
            (
                Codec::Raw,
                random.len() as u32,
                &random,
                ChunkId::of(&random),
            ),
            (c, n, &z, id),
            (c, n, &z, ChunkId::of(b"other")),
            (Codec::Raw, n, &text, ChunkId::of(b"other")),
            (Codec::Raw, n - 1, &text, id),
            (c, n - 1, &z, id),
            (c, n + 1, &z, id),
            (c, 0, &z, id),
            (c, MAX_RAW_CHUNK_LEN + 1, &z, id),
            (c, n, &z[..z.len() - 3], id),
            (c, n, &text, id),
        ];
        for (i, (codec, len, stored, id)) in cases.into_iter().enumerate() {
            let decoded = decode_chunk(codec, len, stored, &id);
            let verified = verify_chunk(codec, len, stored, &id);
            assert_eq!(verified.is_ok(), decoded.is_ok(), "case {i}");
            if let Err(CoreError::HashMismatch { what }) = decoded {
                assert_eq!(verified, Err(CoreError::HashMismatch { what }), "case {i}");
            }
            assert!(i >= 4 || verified.is_ok(), "case {i} is a good chunk");
        }
    }

    #[test]
    fn decode_rejects_wrong_hash_and_sizes() {
        let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(10);
        let id = ChunkId::of(&text);
        let (c, z) = compress_chunk(&text, 3);
        assert_eq!(c, Codec::Zstd);
        let n = text.len() as u32;
        assert_eq!(
            decode_chunk(c, n, &z, &ChunkId::of(b"other")),
            Err(CoreError::HashMismatch { what: "chunk" })
        );
        assert_eq!(
            decode_chunk(Codec::Raw, n, &text, &ChunkId::of(b"other")),
            Err(CoreError::HashMismatch { what: "chunk" })
        );
        // header claims fewer raw bytes than the frame holds: refused, not over-allocated
        assert!(matches!(
            decode_chunk(c, n - 1, &z, &id),
            Err(CoreError::Malformed { .. })
        ));
        assert!(matches!(
            decode_chunk(c, n + 1, &z, &id),
            Err(CoreError::Malformed { .. })
        ));
        assert!(decode_chunk(c, 0, &z, &id).is_err());
        assert!(decode_chunk(c, MAX_RAW_CHUNK_LEN + 1, &z, &id).is_err());
        assert!(decode_chunk(Codec::Raw, n - 1, &text, &id).is_err());
        assert!(decode_chunk(c, n, &z[..z.len() - 1], &id).is_err());
    }

    #[test]
    fn entry_header_rules() {
        let bytes = sample();
        let h = &bytes[CONTAINER_HEADER_LEN..CONTAINER_HEADER_LEN + ENTRY_HEADER_LEN];
        assert_eq!(parse_entry_header(h).unwrap().ty, EntryType::Chunk);
        assert!(parse_entry_header(&h[..47]).is_err());
        let mut bad = h.to_vec();
        bad[0] = 9;
        let crc = crc32fast::hash(&bad[..44]);
        bad[44..].copy_from_slice(&crc.to_le_bytes());
        assert!(parse_entry_header(&bad).is_err());
        assert_eq!(Codec::from_u8(1), Some(Codec::Zstd));
        assert_eq!(Codec::from_u8(2), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(0u8..4, 1..2000), 0..8),
            records in proptest::collection::vec((2u8..=5, proptest::collection::vec(any::<u8>(), 0..300)), 0..4),
            id: u64, ts: u64,
        ) {
            let mut b = ContainerBuilder::new(ContainerId(id), ts, 0);
            let mut offs = Vec::new();
            for c in &chunks {
                let (codec, stored) = compress_chunk(c, 1);
                offs.push((b.push_chunk(&ChunkId::of(c), codec, c.len() as u32, &stored), codec));
            }
            for (ty, p) in &records {
                b.push_record(EntryType::from_u8(*ty).unwrap(), p);
            }
            let bytes = b.seal();
            let (h, e) = parse_container(&bytes).unwrap();
            prop_assert_eq!(h, ContainerHeader { id: ContainerId(id), created_unix_ms: ts });
            prop_assert_eq!(e.len(), chunks.len() + records.len());
            for (i, c) in chunks.iter().enumerate() {
                let pe = &e[i];
                prop_assert_eq!(pe.payload_offset, offs[i].0);
                prop_assert_eq!(pe.header.codec, offs[i].1);
                let id = ChunkId(pe.header.id);
                prop_assert_eq!(&decode_chunk(pe.header.codec, pe.header.raw_len, pe.payload, &id).unwrap(), c);
            }
            for (j, (ty, p)) in records.iter().enumerate() {
                let pe = &e[chunks.len() + j];
                prop_assert_eq!(pe.header.ty as u8, *ty);
                prop_assert_eq!(pe.payload, &p[..]);
            }
        }

        #[test]
        fn a_container_in_pieces_verifies_as_the_joined_bytes_do(
            groups in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(0u8..6, 1..30_000), 1..5), 0..4),
            chunks in proptest::collection::vec(proptest::collection::vec(0u8..4, 1..3000), 0..4),
            records in proptest::collection::vec((2u8..=5, proptest::collection::vec(any::<u8>(), 0..300)), 0..3),
            cuts in proptest::collection::vec(any::<usize>(), 0..7),
            flip in proptest::option::of((any::<usize>(), 1u8..=255)),
            padding in 0usize..100,
        ) {
            let mut b = ContainerBuilder::new(ContainerId(9), 1, 0);
            for (i, c) in chunks.iter().enumerate() {
                let (codec, stored) = compress_chunk(c, 1);
                b.push_chunk(&ChunkId::of(c), codec, c.len() as u32, &stored);
                if let Some(members) = groups.get(i) {
                    let raws: Vec<&[u8]> = members.iter().map(Vec::as_slice).collect();
                    if let Some(frame) = compress_group(&raws, 3) {
                        let table: Vec<(ChunkId, u32)> =
                            raws.iter().map(|r| (ChunkId::of(r), r.len() as u32)).collect();
                        b.push_group(&table, &frame);
                    }
                }
            }
            for (ty, p) in &records {
                b.push_record(EntryType::from_u8(*ty).unwrap(), p);
            }
            let mut bytes = b.seal();
            if let Some((at, x)) = flip {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            // What scrub checked on the joined container.
            let joined = parse_container(&bytes).and_then(|(_, entries)| {
                for e in &entries {
                    match e.header.ty {
                        EntryType::Chunk => {
                            decode_chunk(e.header.codec, e.header.raw_len, e.payload, &ChunkId(e.header.id))?;
                        }
                        EntryType::Group => {
                            verify_group(&parse_group(e.payload, e.header.raw_len)?, e.header.raw_len)?;
                        }
                        _ => {}
                    }
                }
                Ok(())
            });
            prop_assert!(flip.is_some() || joined.is_ok());
            // The same bytes cut anywhere (shards of any length, the last one padded as a stripe's is).
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            at.sort();
            let mut stored = bytes.clone();
            stored.extend(std::iter::repeat_n(0xEE, padding));
            let mut pieces = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain([stored.len()]) {
                pieces.push(&stored[from..to]);
                from = to;
            }
            let c = Pieces::new(&pieces, bytes.len()).unwrap();
            prop_assert_eq!(verify_container_pieces(&c, true).is_ok(), joined.is_ok());
            // Without the chunks: what parse_container checks.
            prop_assert_eq!(verify_container_pieces(&c, false).is_ok(), parse_container(&bytes).is_ok());
        }

        #[test]
        fn mutated_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut: usize, truncate: bool) {
            let mut bytes = sample();
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            if truncate {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if let Ok((_, entries)) = parse_container(&bytes) {
                let _ = all_chunks(&entries);
            }
            let _ = parse_entry_header(bytes.get(CONTAINER_HEADER_LEN..).unwrap_or(&[]));
        }

        #[test]
        fn group_spans_cover_the_batch_and_respect_the_limits(
            batch in proptest::collection::vec((1usize..300_000, any::<bool>()), 0..600),
        ) {
            let lens: Vec<usize> = batch.iter().map(|b| b.0).collect();
            let is_new: Vec<bool> = batch.iter().map(|b| b.1).collect();
            let spans = plan_group_spans(&lens, &is_new);
            let mut next = 0;
            for s in &spans {
                prop_assert_eq!(s.start, next);
                prop_assert!(s.end > s.start && s.len() <= MAX_SPAN_CHUNKS);
                next = s.end;
                let new: Vec<usize> = s.clone().filter(|&i| is_new[i]).map(|i| lens[i]).collect();
                prop_assert!(new.len() <= GROUP_TARGET_CHUNKS);
                prop_assert!(new.len() <= 1 || new.iter().sum::<usize>() <= GROUP_TARGET_RAW);
            }
            prop_assert_eq!(next, lens.len());
        }

        #[test]
        fn decode_random_stored_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..200), raw_len: u32, zstd: bool) {
            let codec = if zstd { Codec::Zstd } else { Codec::Raw };
            // bounded raw_len keeps the allocation small; the 16 MiB limit is tested separately
            let _ = decode_chunk(codec, raw_len % 100_000, &stored, &ChunkId([0; 32]));
            let mut frame = zstd::bulk::compress(&stored, 1).unwrap();
            let n = frame.len();
            frame[raw_len as usize % n] ^= 0x55;
            let _ = decode_chunk(Codec::Zstd, stored.len().max(1) as u32, &frame, &ChunkId::of(&stored));
        }
    }
}
