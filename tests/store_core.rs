//! The chunk store through its library API, on real files in a temp dir: round trips, ranges, dedup,
//! degraded reads after disk loss and bit rot, refusal to serve with m+1 losses, catalog check and rebuild.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use cairn::core::chunker::{ChunkerParams, chunk_ranges};
use cairn::core::records::decode_segment_entries;
use cairn::store::recover::{check_catalog, rebuild_catalog};
use cairn::store::{ObjectMeta, PartRecord, PutCondition, Store, StoreConfig, StoreError};

fn config(dir: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::embedded(dir.join("data"));
    cfg.chunker = ChunkerParams {
        min: 4 * 1024,
        avg: 16 * 1024,
        max: 64 * 1024,
    };
    cfg.container_target = 256 * 1024;
    cfg
}

/// Deterministic mixed data: half text-like (compressible), half pseudo-random.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 8192) % 2 == 0 {
            out.extend_from_slice(format!("row {} value {}\n", out.len(), x % 1000).as_bytes());
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn put(store: &Arc<Store>, bucket: &str, key: &str, bytes: &[u8]) {
    let mut up = store.begin_upload().unwrap();
    for piece in bytes.chunks(70_001) {
        up.write(piece).unwrap();
    }
    let info = up
        .finish_object(bucket, key, ObjectMeta::default())
        .unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(info.etag(), format!("\"{:032x}\"", md5_of(bytes)));
}

fn md5_of(b: &[u8]) -> u128 {
    use md5::Digest;
    u128::from_be_bytes(md5::Md5::digest(b).into())
}

fn get(
    store: &Arc<Store>,
    bucket: &str,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, String> {
    let (_, mut r) = store
        .open_object(bucket, key, range)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads like the S3 response body does: the chunks as they were decoded (`ObjectReader::next_frame`, no
/// copy), at most `cap` bytes a frame, none empty before the end.
fn get_frames(
    store: &Arc<Store>,
    bucket: &str,
    key: &str,
    range: Option<std::ops::Range<u64>>,
    cap: usize,
) -> Vec<u8> {
    let (_, mut r) = store.open_object(bucket, key, range).unwrap();
    let mut out = Vec::new();
    loop {
        let frame = r.next_frame(cap).unwrap();
        if frame.is_empty() {
            break;
        }
        assert!(frame.len() <= cap, "{} > {cap}", frame.len());
        out.extend_from_slice(&frame);
    }
    assert!(
        r.next_frame(cap).unwrap().is_empty(),
        "nothing after the end"
    );
    out
}

fn shard_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for disk in std::fs::read_dir(root.join("data/disks")).unwrap() {
        let shards = disk.unwrap().path().join("shards");
        if let Ok(dirs) = std::fs::read_dir(shards) {
            for d in dirs {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    out.push(f.unwrap().path());
                }
            }
        }
    }
    out.sort();
    out
}

fn stored_bytes(root: &Path) -> u64 {
    shard_files(root)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn round_trip_ranges_overwrite_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("backups").unwrap();
    assert!(matches!(
        store.create_bucket("backups"),
        Err(StoreError::BucketExists(_))
    ));
    let a = data(1, 3_000_000);
    put(&store, "backups", "a", &a);
    put(&store, "backups", "empty", &[]);
    put(&store, "backups", "tiny", b"x");
    assert_eq!(get(&store, "backups", "a", None).unwrap(), a);
    assert_eq!(get(&store, "backups", "empty", None).unwrap(), b"");
    assert_eq!(get(&store, "backups", "tiny", None).unwrap(), b"x");
    for r in [
        0..1,
        5..70_000,
        1_000_000..2_999_999,
        2_999_999..3_000_000,
        17..17,
    ] {
        assert_eq!(
            get(&store, "backups", "a", Some(r.clone())).unwrap(),
            &a[r.start as usize..r.end as usize]
        );
    }
    assert!(matches!(
        store.open_object("backups", "a", Some(0..3_000_001)),
        Err(StoreError::InvalidRange)
    ));
    // Overwrite, then delete.
    let b = data(2, 100_000);
    put(&store, "backups", "a", &b);
    assert_eq!(get(&store, "backups", "a", None).unwrap(), b);
    assert!(store.delete_object("backups", "a").unwrap());
    assert!(!store.delete_object("backups", "a").unwrap());
    assert!(matches!(
        store.head_object("backups", "a"),
        Err(StoreError::NoSuchKey { .. })
    ));
    assert!(matches!(
        store.delete_bucket("backups"),
        Err(StoreError::BucketNotEmpty(_))
    ));
    let problems = store.catalog().read(check_catalog).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    // After the deletes, no chunk of `a`'s first version is referenced any more.
    let live: i64 = store
        .catalog()
        .read(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM chunk_refs WHERE refs > 0", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .unwrap();
    let tiny_chunks = 1;
    assert_eq!(live, tiny_chunks);
}

/// Reads of an object bigger than several read-ahead windows (4 MiB each; chunk groups of up to 2 MiB),
/// whole and in ranges that start and end around window ends: a window is extended to the end of the group its
/// last chunk lies in, never past the requested range.
#[test]
fn reads_across_read_ahead_windows_and_group_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("backups").unwrap();
    let big = data(7, 13_000_000);
    put(&store, "backups", "big", &big);
    assert_eq!(get(&store, "backups", "big", None).unwrap(), big);
    let mib = 1u64 << 20;
    for r in [
        0..4 * mib,
        4 * mib - 1..4 * mib + 1,
        3 * mib..9 * mib,
        4 * mib + 12_345..8 * mib - 7,
        8 * mib..13_000_000,
        12_999_000..13_000_000,
    ] {
        assert_eq!(
            get(&store, "backups", "big", Some(r.clone())).unwrap(),
            &big[r.start as usize..r.end as usize],
            "range {r:?}"
        );
        for cap in [1 << 20, 10_007] {
            assert!(
                get_frames(&store, "backups", "big", Some(r.clone()), cap)
                    == big[r.start as usize..r.end as usize],
                "range {r:?} in frames of at most {cap}"
            );
        }
    }
    assert!(get_frames(&store, "backups", "big", None, 1 << 20) == big);
    // Readers keep several windows in flight on the read pool. A reader abandoned after its first bytes leaves
    // nothing behind that holds the store: it closes and reopens at once.
    let (_, mut abandoned) = store.open_object("backups", "big", None).unwrap();
    let mut first = vec![0u8; 100_000];
    abandoned.read_exact(&mut first).unwrap();
    assert_eq!(first, &big[..100_000]);
    drop(abandoned);
    drop(store);
    let store = Store::open(config(dir.path())).expect("reopen right after the reads");
    assert_eq!(
        get(&store, "backups", "big", Some(0..1000)).unwrap(),
        &big[..1000]
    );
}

#[test]
fn duplicate_ingest_stores_almost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("bkt").unwrap();
    let a = data(3, 8_000_000);
    // (chunks, sum of their references) in `chunk_refs`.
    let refs = |store: &Arc<Store>| -> (i64, i64) {
        store
            .catalog()
            .read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(refs), 0) FROM chunk_refs",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap()
    };
    put(&store, "bkt", "full-1", &a);
    let once = stored_bytes(dir.path());
    let (chunks, refs_once) = refs(&store);
    assert!(
        chunks > 100 && refs_once >= chunks,
        "{chunks} chunks, {refs_once} refs"
    );
    put(&store, "bkt", "full-2", &a);
    let twice = stored_bytes(dir.path());
    assert!(
        (twice as f64) < once as f64 * 1.01,
        "once {once}, twice {twice}"
    );
    // The second full added one reference per entry to the rows the first one made, and no row.
    assert_eq!(refs(&store), (chunks, 2 * refs_once));
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
    assert_eq!(get(&store, "bkt", "full-2", None).unwrap(), a);
    // A copy shares chunks too.
    store
        .copy_object("bkt", "full-2", "bkt", "copy", None)
        .unwrap();
    assert!((stored_bytes(dir.path()) as f64) < once as f64 * 1.01);
    assert_eq!(get(&store, "bkt", "copy", None).unwrap(), a);
    assert_eq!(
        store.head_object("bkt", "copy").unwrap().etag(),
        store.head_object("bkt", "full-1").unwrap().etag()
    );

    // The catalog check finds a reference count that disagrees with the segments, and a chunk whose
    // `chunk_refs` row sits under another container than its `chunks` row names.
    let (first, second): (Vec<u8>, Vec<u8>) = store
        .catalog()
        .read(|c| {
            let mut st = c.prepare("SELECT id FROM chunk_refs ORDER BY id LIMIT 2")?;
            let ids: Vec<Vec<u8>> = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((ids[0].clone(), ids[1].clone()))
        })
        .unwrap();
    store
        .catalog()
        .write(|tx| {
            tx.execute(
                "UPDATE chunk_refs SET refs = refs + 1 WHERE id = ?1",
                [&first],
            )?;
            tx.execute(
                "UPDATE chunk_refs SET container_id = 999999 WHERE id = ?1",
                [&second],
            )?;
            Ok(())
        })
        .unwrap();
    let problems = store.catalog().read(check_catalog).unwrap();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&hex(&first)) && p.contains("segments reference it"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&hex(&second)) && p.contains("no chunk_refs row"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&hex(&second)) && p.contains("container 999999"))
    );
}

#[test]
fn degraded_reads_survive_two_lost_disks_and_bit_rot_but_not_three() {
    let dir = tempfile::tempdir().unwrap();
    let objects: Vec<Vec<u8>> = (0..4).map(|i| data(10 + i, 700_000)).collect();
    {
        let store = Store::open(config(dir.path())).unwrap();
        store.create_bucket("bkt").unwrap();
        for (i, o) in objects.iter().enumerate() {
            put(&store, "bkt", &format!("o{i}"), o);
        }
    }
    // Flip a byte in the middle of every shard file of disk d02: bit rot.
    for f in shard_files(dir.path())
        .iter()
        .filter(|p| p.to_string_lossy().contains("/d02/"))
    {
        let mut b = std::fs::read(f).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x40;
        std::fs::write(f, b).unwrap();
    }
    let store = Store::open(config(dir.path())).unwrap();
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(&get(&store, "bkt", &format!("o{i}"), None).unwrap(), o);
    }
    // Lose a whole disk directory as well: still m = 2 failures, everything reads.
    std::fs::remove_dir_all(dir.path().join("data/disks/d04")).unwrap();
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(&get(&store, "bkt", &format!("o{i}"), None).unwrap(), o);
    }
    let events: i64 = store
        .catalog()
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM events WHERE kind = 'degraded-read'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert!(events > 0);
    // A third loss: reads fail cleanly, naming the container; never wrong bytes.
    std::fs::remove_dir_all(dir.path().join("data/disks/d00")).unwrap();
    let mut failed = 0;
    for (i, o) in objects.iter().enumerate() {
        match get(&store, "bkt", &format!("o{i}"), None) {
            Ok(got) => assert_eq!(&got, o, "a read that succeeds must be correct"),
            Err(e) => {
                failed += 1;
                assert!(e.contains("unreadable") || e.contains("lost"), "{e}");
            }
        }
    }
    assert!(failed > 0);
}

#[test]
fn a_restore_reconstructs_each_degraded_container_once_not_frame_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::embedded(dir.path().join("data"));
    let object = data(77, 64 * 1024 * 1024);
    {
        let store = Store::open(cfg.clone()).unwrap();
        store.create_bucket("bkt").unwrap();
        put(&store, "bkt", "big", &object);
    }
    let lost = "d01";
    std::fs::remove_dir_all(dir.path().join("data/disks").join(lost)).unwrap();
    let store = Store::open(cfg).unwrap();
    // Containers holding chunks with a data shard on the lost disk, and the frames stored in them.
    let (affected, frames): (i64, i64) = store
        .catalog()
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(DISTINCT ch.container_id), COUNT(DISTINCT ch.container_id || ':' || ch.offset)
                 FROM chunks ch JOIN shards s ON s.container_id = ch.container_id
                 JOIN disks d ON d.id = s.disk_id
                 WHERE d.path LIKE ?1 AND s.idx < 4",
                [format!("%{lost}")],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .unwrap();
    assert!(affected >= 1, "the lost disk held data shards");
    assert!(
        frames >= 2 * affected,
        "several frames per container, or the test shows nothing: {frames} frames in {affected}"
    );
    assert_eq!(get(&store, "bkt", "big", None).unwrap(), object);
    let made = store.containers_reconstructed();
    assert!(
        made >= 1 && made <= affected as u64,
        "reconstructed {made} times for {affected} degraded containers ({frames} frames)"
    );
    // A range inside the object reads right from the kept reconstructions and from fresh ones alike.
    let range = 5_000_000..39_000_123u64;
    assert_eq!(
        get(&store, "bkt", "big", Some(range.clone())).unwrap(),
        object[range.start as usize..range.end as usize]
    );
    // Restores at once, sharing the kept reconstructions and the read threads, each get every byte. (With the
    // shard reads of a reconstruction on the rayon read pool of earlier sessions, this deadlocked: a pool
    // thread waiting for them stole another frame of the container it was reconstructing. They stay on
    // threads of their own: queued behind the read threads' tasks, every read thread could wait on them.)
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert!(get(&store, "bkt", "big", None).unwrap() == object));
        }
    });
    // Single-chunk reads (no restore stream) stay on the frame-by-frame path: nothing more reconstructed whole.
    let before = store.containers_reconstructed();
    let (chunk_id,): (Vec<u8>,) = store
        .catalog()
        .read(|c| {
            Ok(c.query_row(
                "SELECT ch.id FROM chunks ch JOIN shards s ON s.container_id = ch.container_id
                 JOIN disks d ON d.id = s.disk_id WHERE d.path LIKE ?1 AND s.idx < 4 LIMIT 1",
                [format!("%{lost}")],
                |r| Ok((r.get(0)?,)),
            )?)
        })
        .unwrap();
    let id = cairn::core::ids::ChunkId(chunk_id.try_into().unwrap());
    let chunk = store.read_chunk(&id).unwrap();
    assert_eq!(cairn::core::ids::ChunkId::of(&chunk), id);
    assert_eq!(store.containers_reconstructed(), before);
}

#[test]
fn catalog_rebuild_from_disks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut expected = Vec::new();
    {
        let store = Store::open(cfg.clone()).unwrap();
        store.create_bucket("one").unwrap();
        store.create_bucket("two").unwrap();
        store.create_bucket("gone").unwrap();
        store.delete_bucket("gone").unwrap();
        for i in 0..6 {
            let d = data(100 + i, 200_000 * (i as usize + 1));
            let bucket = if i % 2 == 0 { "one" } else { "two" };
            put(&store, bucket, &format!("k{i}"), &d);
            expected.push((bucket, format!("k{i}"), d));
        }
        // Overwritten and deleted keys must come back in their final state.
        put(&store, "one", "k0", b"second version");
        expected[0].2 = b"second version".to_vec();
        store.delete_object("two", "k1").unwrap();
        expected.remove(1);
        store
            .copy_object("one", "k2", "two", "copied", None)
            .unwrap();
        let k2 = expected.iter().find(|e| e.1 == "k2").unwrap().2.clone();
        expected.push(("two", "copied".into(), k2));
        // Multipart: two parts.
        let id = store
            .create_multipart("one", "mp", ObjectMeta::default())
            .unwrap();
        let p1 = data(7, 5 * 1024 * 1024);
        let p2 = data(8, 1000);
        for (n, p) in [(1u32, &p1), (2, &p2)] {
            let mut up = store.begin_upload().unwrap();
            up.write(p).unwrap();
            let sealed = up.finish_sealed().unwrap();
            store.put_part(&id, n, sealed, Default::default()).unwrap();
        }
        let parts = store.list_parts(&id, 0, 100).unwrap();
        let list: Vec<(u32, String)> = parts
            .iter()
            .map(|p| (p.part_number, p.etag.clone()))
            .collect();
        let info = store
            .complete_multipart(&id, &list, Default::default(), PutCondition::None)
            .unwrap();
        assert!(info.etag().ends_with("-2\""));
        expected.push(("one", "mp".into(), [p1, p2].concat()));
        assert!(store.catalog().read(check_catalog).unwrap().is_empty());
    }
    std::fs::remove_file(cfg.catalog_path()).unwrap();
    let _ = std::fs::remove_file(format!("{}-wal", cfg.catalog_path().display()));
    let _ = std::fs::remove_file(format!("{}-shm", cfg.catalog_path().display()));
    let report = rebuild_catalog(&cfg, &|_, _| {}).unwrap();
    assert!(report.containers_unreadable.is_empty(), "{report:?}");
    assert!(report.objects_damaged.is_empty(), "{report:?}");
    assert_eq!(report.objects, expected.len());
    let store = Store::open(cfg).unwrap();
    let names: Vec<String> = store
        .list_buckets()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec!["one", "two"]);
    for (bucket, key, d) in &expected {
        assert_eq!(
            &get(&store, bucket, key, None).unwrap(),
            d,
            "{bucket}/{key}"
        );
    }
    assert!(matches!(
        store.head_object("two", "k1"),
        Err(StoreError::NoSuchKey { .. })
    ));
    let problems = store.catalog().read(check_catalog).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    // The small containers (bucket records, tombstone, "second version", the 1000-byte part) were sealed
    // as 1+2 and come back from their shard headers so (storage-format.md §6).
    let narrow: i64 = store
        .catalog()
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM containers WHERE k = 1 AND m = 2",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert!(narrow >= 4, "{narrow} narrow containers");
    // The rebuilt store keeps working: new writes, then everything still consistent.
    put(&store, "two", "after", b"after rebuild");
    assert_eq!(get(&store, "two", "after", None).unwrap(), b"after rebuild");
}

#[test]
fn multipart_parts_dedup_and_abandoned_uploads_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("bkt").unwrap();
    let a = data(21, 12 * 1024 * 1024);
    put(&store, "bkt", "whole", &a);
    let once = stored_bytes(dir.path());
    // The same bytes as two multipart parts: the parts dedup against the object already stored.
    let id = store
        .create_multipart("bkt", "parts", ObjectMeta::default())
        .unwrap();
    for (n, part) in [(1u32, &a[..6 * 1024 * 1024]), (2, &a[6 * 1024 * 1024..])] {
        let mut up = store.begin_upload().unwrap();
        up.write(part).unwrap();
        store
            .put_part(&id, n, up.finish_sealed().unwrap(), Default::default())
            .unwrap();
    }
    let list: Vec<(u32, String)> = store
        .list_parts(&id, 0, 10)
        .unwrap()
        .into_iter()
        .map(|p| (p.part_number, p.etag))
        .collect();
    store
        .complete_multipart(&id, &list, Default::default(), PutCondition::None)
        .unwrap();
    assert_eq!(get(&store, "bkt", "parts", None).unwrap(), a);
    let after = stored_bytes(dir.path());
    assert!(
        (after as f64) < once as f64 * 1.05,
        "parts stored again: {once} -> {after}"
    );
    // An abandoned upload pins its parts until it expires; then they are released.
    let id = store
        .create_multipart("bkt", "abandoned", ObjectMeta::default())
        .unwrap();
    let mut up = store.begin_upload().unwrap();
    up.write(&data(22, 300_000)).unwrap();
    store
        .put_part(&id, 1, up.finish_sealed().unwrap(), Default::default())
        .unwrap();
    let pinned = |s: &Arc<Store>| -> i64 {
        s.catalog()
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get(0))?))
            .unwrap()
    };
    let before = pinned(&store);
    assert_eq!(
        store
            .expire_multipart_older_than(std::time::Duration::from_secs(3600))
            .unwrap(),
        0
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(
        store
            .expire_multipart_older_than(std::time::Duration::ZERO)
            .unwrap(),
        1
    );
    assert_eq!(pinned(&store), before - 1);
    assert!(matches!(
        store.list_parts(&id, 0, 10),
        Err(StoreError::NoSuchUpload(_))
    ));
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
}

#[test]
fn interrupted_disk_registration_is_recovered_but_foreign_markers_are_refused() {
    use cairn::store::disk::MARKER_FILE;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    {
        let store = Store::open(cfg.clone()).unwrap();
        store.create_bucket("bkt").unwrap();
        put(&store, "bkt", "k", b"before the new disk");
    }
    // A crash between writing a new disk's marker and committing its catalog row leaves a marker of this
    // store on a directory the catalog does not list.
    let marker_of_disk0 = std::fs::read(cfg.disks[0].join(MARKER_FILE)).unwrap();
    let mut marker: serde_json::Value = serde_json::from_slice(&marker_of_disk0).unwrap();
    marker["disk_id"] = serde_json::json!(4242);
    let new_disk = dir.path().join("data/disks/interrupted");
    std::fs::create_dir_all(&new_disk).unwrap();
    std::fs::write(
        new_disk.join(MARKER_FILE),
        serde_json::to_vec(&marker).unwrap(),
    )
    .unwrap();
    cfg.disks.push(new_disk.clone());
    {
        let store = Store::open(cfg.clone()).unwrap();
        assert_eq!(
            get(&store, "bkt", "k", None).unwrap(),
            b"before the new disk"
        );
        let disks = store
            .catalog()
            .read(cairn::store::catalog::list_disks)
            .unwrap();
        let row = disks
            .iter()
            .find(|d| Path::new(&d.path).ends_with("interrupted"))
            .expect("the interrupted disk is registered");
        assert_eq!(row.state, "active");
        let rewritten: serde_json::Value =
            serde_json::from_slice(&std::fs::read(new_disk.join(MARKER_FILE)).unwrap()).unwrap();
        assert_eq!(rewritten["disk_id"], serde_json::json!(row.id.0));
        put(&store, "bkt", "after", b"written with the new disk");
    }
    // A marker of another store is never taken over.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    marker["store_id"] = serde_json::json!("00".repeat(16));
    std::fs::write(
        foreign.join(MARKER_FILE),
        serde_json::to_vec(&marker).unwrap(),
    )
    .unwrap();
    cfg.disks.push(foreign);
    match Store::open(cfg) {
        Err(StoreError::Config(msg)) => assert!(msg.contains("catalog rebuild"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a foreign disk marker was accepted"),
    }
}

/// New chunks are stored in groups (storage-format.md §4.5): a chunk read alone, any byte range, and a read
/// through bit rot inside a group's frame all come back exact; a duplicate of a grouped chunk dedups.
#[test]
fn grouped_chunks_serve_any_range_and_survive_rot_inside_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let text: Vec<u8> = (0..60_000u32)
        .flat_map(|i| format!("{i:08} some log line with a counter {}\n", i % 97).into_bytes())
        .collect();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("bkt").unwrap();
    put(&store, "bkt", "text", &text);
    let (grouped, groups, alone): (i64, i64, i64) = store
        .catalog()
        .read(|c| {
            Ok(c.query_row(
                "SELECT SUM(group_raw > 0), COUNT(DISTINCT CASE WHEN group_raw > 0 THEN container_id || '/' || offset END),
                        SUM(group_raw = 0) FROM chunks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .unwrap();
    assert!(
        grouped > 40 && groups >= 2 && groups < grouped,
        "{grouped} in {groups} groups, {alone} alone"
    );
    // Ranges: tiny, across chunk and group boundaries, open to the end.
    let n = text.len() as u64;
    let mut x = 77u64;
    for _ in 0..40 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let a = (x >> 11) % n;
        let len = 1 + (x >> 40) % 200_000;
        let b = (a + len).min(n);
        assert_eq!(
            get(&store, "bkt", "text", Some(a..b)).unwrap(),
            &text[a as usize..b as usize]
        );
    }
    assert_eq!(
        get(&store, "bkt", "text", Some(n - 1..n)).unwrap(),
        &text[text.len() - 1..]
    );
    // The second half again, with new bytes in front: the grouped chunks of the first upload dedup.
    let before = stored_bytes(dir.path());
    let mut second = b"a new header that shifts everything\n".to_vec();
    second.extend_from_slice(&text[text.len() / 2..]);
    put(&store, "bkt", "second", &second);
    let added = stored_bytes(dir.path()) - before;
    assert!(
        added < second.len() as u64 / 10,
        "second upload added {added} bytes"
    );
    assert_eq!(get(&store, "bkt", "second", None).unwrap(), second);
    drop(store);
    // Rot in every data shard's payload: each group frame crossing it is rebuilt from parity on read.
    for f in shard_files(dir.path()) {
        let mut b = std::fs::read(&f).unwrap();
        if b.len() > 4096 && b[12] < 2 {
            // shard index 0 or 1 (header byte 12, storage-format.md §3): data shards
            let i = 64 + (b.len() - 176) / 3;
            b[i] ^= 0x10;
            std::fs::write(&f, b).unwrap();
        }
    }
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(get(&store, "bkt", "text", None).unwrap(), text);
    assert_eq!(get(&store, "bkt", "second", None).unwrap(), second);
}

/// Chunks that do not compress are stored alone, one entry each, and a restore reads a run of them with one
/// read (`plan_read_runs` in store/read.rs). Whole reads and ranges come back right, with runs broken by
/// groups of text and by chunks that dedup against earlier ones; rot inside a run is repaired from parity.
#[test]
fn chunks_stored_alone_are_read_in_runs_and_survive_rot_inside_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("bkt").unwrap();
    let random = noise(41, 3_000_000);
    // Noise, a stretch of text (grouped), noise again, and the first noise repeated (dedup hits that point
    // back into earlier containers).
    let mut mixed = noise(42, 700_000);
    mixed.extend((0..8_000u32).flat_map(|i| format!("{i:06} a text line\n").into_bytes()));
    mixed.extend_from_slice(&noise(43, 500_000));
    mixed.extend_from_slice(&random[..600_000]);
    put(&store, "bkt", "random", &random);
    put(&store, "bkt", "mixed", &mixed);
    let (alone, grouped): (i64, i64) = store
        .catalog()
        .read(|c| {
            Ok(c.query_row(
                "SELECT SUM(group_raw = 0), SUM(group_raw > 0) FROM chunks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .unwrap();
    assert!(
        alone > 100 && grouped > 0,
        "{alone} alone, {grouped} grouped"
    );
    assert_eq!(get(&store, "bkt", "random", None).unwrap(), random);
    assert_eq!(get(&store, "bkt", "mixed", None).unwrap(), mixed);
    let mut x = 5u64;
    for (key, bytes) in [("random", &random), ("mixed", &mixed)] {
        let n = bytes.len() as u64;
        for _ in 0..30 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let a = (x >> 11) % n;
            let b = (a + 1 + (x >> 40) % 400_000).min(n);
            assert_eq!(
                get(&store, "bkt", key, Some(a..b)).unwrap(),
                &bytes[a as usize..b as usize],
                "{key} {a}..{b}"
            );
            assert!(
                get_frames(&store, "bkt", key, Some(a..b), 65_536) == bytes[a as usize..b as usize],
                "{key} {a}..{b} in frames"
            );
        }
        assert!(get_frames(&store, "bkt", key, None, 1 << 20) == **bytes);
    }
    drop(store);
    // Rot in the middle of every data shard 0 and 1: the chunks of a run that cross it fail their hash and
    // are read again frame by frame, from parity.
    let mut rotted = 0;
    for f in shard_files(dir.path()) {
        let mut b = std::fs::read(&f).unwrap();
        if b.len() > 4096 && b[12] < 2 {
            let i = 64 + (b.len() - 176) / 2;
            b[i] ^= 0x10;
            std::fs::write(&f, b).unwrap();
            rotted += 1;
        }
    }
    assert!(rotted >= 4, "{rotted} shard files rotted");
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(get(&store, "bkt", "random", None).unwrap(), random);
    assert_eq!(get(&store, "bkt", "mixed", None).unwrap(), mixed);
}

/// A part is sealed and recorded in one transaction (`Upload::finish_part`): a part uploaded again replaces
/// the first, a part for an aborted upload is refused with NoSuchUpload and leaves no reference behind.
#[test]
fn parts_recorded_with_their_seal_replace_and_refuse_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.create_bucket("bkt").unwrap();
    let id = store
        .create_multipart("bkt", "mp", ObjectMeta::default())
        .unwrap();
    let first = data(31, 6 * 1024 * 1024);
    let second = data(32, 6 * 1024 * 1024);
    let tail = data(33, 1000);
    for (n, body) in [(1u32, &first), (1, &second), (2, &tail)] {
        let mut up = store.begin_upload().unwrap();
        up.write(body).unwrap();
        let part = up
            .finish_part(PartRecord::new(&id, n, Default::default()).unwrap())
            .unwrap();
        assert_eq!(part.size, body.len() as u64);
        assert_eq!(
            part.etag,
            format!(
                "\"{}\"",
                hex::encode(<md5::Md5 as md5::Digest>::digest(body))
            )
        );
    }
    let list: Vec<(u32, String)> = store
        .list_parts(&id, 0, 10)
        .unwrap()
        .into_iter()
        .map(|p| (p.part_number, p.etag))
        .collect();
    assert_eq!(list.len(), 2, "part 1 was replaced, not added");
    store
        .complete_multipart(&id, &list, Default::default(), PutCondition::None)
        .unwrap();
    let mut want = second.clone();
    want.extend_from_slice(&tail);
    assert_eq!(get(&store, "bkt", "mp", None).unwrap(), want);
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());

    // A part for an upload aborted meanwhile: refused, and nothing of it stays referenced. (One within a
    // stream's first batch, 128 KiB: nothing of it is sealed before its end, so no shard is written either.)
    let gone = store
        .create_multipart("bkt", "gone", ObjectMeta::default())
        .unwrap();
    store.abort_multipart(&gone).unwrap();
    let before = stored_bytes(dir.path());
    let mut up = store.begin_upload().unwrap();
    up.write(&data(34, 120 * 1024)).unwrap();
    let refused = up.finish_part(PartRecord::new(&gone, 1, Default::default()).unwrap());
    assert!(
        matches!(refused, Err(StoreError::NoSuchUpload(_))),
        "{refused:?}"
    );
    assert_eq!(stored_bytes(dir.path()), before, "no shard written for it");
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
    assert!(matches!(
        PartRecord::new(&id, 0, Default::default()),
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Pseudo-random bytes: zstd cannot shrink them, so a container holds about as many bytes as it was given.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_declared_length_lets_the_last_container_take_the_rest_within_half_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let target = 3 << 20;
    cfg.container_target = target;
    let store = Store::open(cfg).unwrap();
    store.create_bucket("bkt").unwrap();
    // Distinct container ids among the shard files (`<id>.<index>.shard`): a small container has fewer
    // than k+m files (storage-format.md §6).
    let containers = |root: &Path| {
        shard_files(root)
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let put_declared = |key: &str, bytes: &[u8], declared: Option<u64>| {
        let mut up = store.begin_upload().unwrap();
        if let Some(n) = declared {
            up.expect_len(n);
        }
        for piece in bytes.chunks(70_001) {
            up.write(piece).unwrap();
        }
        up.finish_object("bkt", key, ObjectMeta::default()).unwrap();
    };

    // 4.2 MB: one batch of 4 MiB fills a container past its 3 MiB target; the last 0.2 MB would be a
    // container of its own.
    let small_rest = noise(1, 4_400_000);
    let empty = containers(dir.path());
    put_declared("undeclared", &small_rest, None);
    let before = containers(dir.path());
    assert_eq!(
        before - empty,
        2,
        "without a declared length the target seals"
    );
    put_declared("declared", &noise(2, 4_400_000), Some(4_400_000));
    assert_eq!(
        containers(dir.path()) - before,
        1,
        "the declared rest fits in 1.5 x the target: one container"
    );

    // A rest that does not fit is not taken: containers stay within 1.5 x the target plus one group.
    let before = containers(dir.path());
    let big = noise(3, 9 << 20);
    put_declared("big", &big, Some(big.len() as u64));
    assert!(containers(dir.path()) - before >= 2);
    let max_shard = shard_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    assert!(
        max_shard <= ((target + target / 2 + (2 << 20) + (256 << 10)) / 4) as u64,
        "largest shard {max_shard} B"
    );
    // Every container fits the build buffer the store makes for one: none grows (copies) it at a seal.
    let largest: i64 = store
        .catalog()
        .read(|c| Ok(c.query_row("SELECT MAX(len) FROM containers", [], |r| r.get(0))?))
        .unwrap();
    let capacity = cairn::store::container_capacity(store.config());
    assert!(
        largest as usize <= capacity,
        "largest container {largest} B, build buffer {capacity} B"
    );

    // A declared length that is wrong only moves seals: every byte reads back.
    put_declared("lied", &small_rest, Some(1));
    for (key, want) in [
        ("undeclared", &small_rest),
        ("big", &big),
        ("lied", &small_rest),
    ] {
        assert!(
            get(&store, "bkt", key, None).unwrap() == *want,
            "{key} reads back"
        );
    }
    assert!(get(&store, "bkt", "declared", None).unwrap() == noise(2, 4_400_000));
}

/// A stream written in pieces of `piece` bytes and sealed: its MD5, the bytes cut by following a remembered
/// chunk sequence, and its chunk lengths in stream order as its segments in the catalog record them.
/// The night after `night`: twelve scattered 4 KiB blocks rewritten, an insertion and a deletion.
fn next_night(night: &[u8]) -> Vec<u8> {
    let mut next = night.to_vec();
    for i in 0..12 {
        let at = (i * 487_001 + 1234) % (next.len() - 4096);
        next[at..at + 4096].fill(i as u8);
    }
    next.splice(3_000_000..3_000_000, b"inserted ".repeat(100));
    next.drain(5_000_000..5_010_000);
    next
}

fn sealed_stream(store: &Arc<Store>, bytes: &[u8], piece: usize) -> ([u8; 16], u64, Vec<usize>) {
    let mut up = store.begin_upload().unwrap();
    for p in bytes.chunks(piece) {
        up.write(p).unwrap();
    }
    let md5 = up.md5().unwrap();
    let followed = up.followed_bytes();
    let sealed = up.finish_sealed().unwrap();
    let lens = store
        .catalog()
        .read(|c| {
            let mut st =
                c.prepare("SELECT entries FROM segments WHERE upload_id = ?1 ORDER BY segment_no")?;
            let blobs: Vec<Vec<u8>> = st
                .query_map([&sealed.upload_id.0[..]], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(blobs)
        })
        .unwrap()
        .iter()
        .flat_map(|b| decode_segment_entries(b).unwrap())
        .map(|(_, len)| len as usize)
        .collect();
    (md5, followed, lens)
}

#[test]
fn a_repeated_stream_is_cut_by_following_it_exactly_where_scanning_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let params = cfg.chunker;
    let store = Store::open(cfg).unwrap();
    let scanned = |b: &[u8]| -> Vec<usize> {
        chunk_ranges(b, params)
            .into_iter()
            .map(|r| r.len())
            .collect()
    };
    let night1 = data(5, 6_000_000);
    let (md5, followed, lens) = sealed_stream(&store, &night1, 70_001);
    assert_eq!(md5, md5_of(&night1).to_be_bytes());
    assert_eq!(followed, 0, "nothing remembered yet");
    assert_eq!(lens, scanned(&night1));

    // The same stream in other pieces (so other batch boundaries): every chunk but the first (nothing
    // precedes it) and the last (its cut was the stream's end, never remembered) is followed.
    repeat_is_followed_whole(&store, &night1, 1_000_003, &lens);

    // The next night: scattered 4 KiB blocks rewritten, an insertion and a deletion. Cuts stay scanning's;
    // the stream is back on the remembered sequence a chunk or two after each change.
    let night2 = next_night(&night1);
    let (md5, followed, lens2) = sealed_stream(&store, &night2, 262_144);
    assert_eq!(md5, md5_of(&night2).to_be_bytes());
    assert_eq!(lens2, scanned(&night2));
    assert!(
        followed as f64 > 0.8 * night2.len() as f64,
        "followed {followed} of {}",
        night2.len()
    );
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
}

/// Writes `night` again (in pieces of `piece` bytes): its MD5 is right, its cuts are `lens` (the first
/// copy's), and it is followed whole but for what [`followable`] leaves out.
fn repeat_is_followed_whole(store: &Arc<Store>, night: &[u8], piece: usize, lens: &[usize]) {
    let (md5, followed, again) = sealed_stream(store, night, piece);
    assert_eq!(md5, md5_of(night).to_be_bytes());
    assert_eq!(again, lens);
    let (all, max) = followable(lens);
    assert!(
        (all - max..=all).contains(&(followed as usize)),
        "followed {followed} of {all} followable"
    );
}

/// Of a repeated stream cut into chunks of `lens`, the bytes that can be followed: all but its first chunk
/// (nothing precedes it), its last (cut by the stream's end, never remembered), and the one before the last
/// (the byte after a followed chunk is checked by following its successor: core::follow). Also the most a
/// stream arriving as body frames leaves out beyond that: the last chunk its first (probing) batch follows
/// is scanned again, its successor not being in the batch.
fn followable(lens: &[usize]) -> (usize, usize) {
    let n = lens.len();
    let all = lens.iter().sum::<usize>() - lens[0] - lens[n - 1] - lens[n - 2];
    (all, *lens.iter().max().unwrap())
}

/// Writes `bytes` as object `key` in body frames (as the S3 layer hands them over: owned, of `sizes` in
/// turn); returns the bytes followed in all and those followed as they arrived (never copied).
fn put_frames(store: &Arc<Store>, key: &str, bytes: &[u8], sizes: &[usize]) -> (u64, u64) {
    let mut up = store.begin_upload().unwrap();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at == bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        up.write_bytes(bytes::Bytes::copy_from_slice(&bytes[at..end]))
            .unwrap();
        at = end;
    }
    up.md5().unwrap();
    let followed = (up.followed_bytes(), up.followed_in_frames());
    let info = up.finish_object("bkt", key, ObjectMeta::default()).unwrap();
    assert_eq!(info.etag(), format!("\"{:032x}\"", md5_of(bytes)));
    followed
}

/// A repeated stream arriving in body frames is followed as it arrives: past its first batch (128 KiB, where
/// the remembered sequence is found), no byte of it is copied into a batch buffer, and it reads back whole.
/// Where it changed, or where the memo knows chunks the store never kept (an upload abandoned before its
/// seal), the bytes are cut and stored as usual.
#[test]
fn a_repeated_stream_in_body_frames_is_followed_as_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Containers larger than the abandoned upload below processes: none of its chunks is sealed.
    cfg.container_target = 8 << 20;
    let store = Store::open(cfg.clone()).unwrap();
    store.create_bucket("bkt").unwrap();
    let scanned = |b: &[u8]| -> Vec<usize> {
        chunk_ranges(b, cfg.chunker)
            .into_iter()
            .map(|r| r.len())
            .collect()
    };
    let night1 = data(41, 7_000_000);
    // Frames of the sizes hyper hands over, from a few bytes to 1 MiB.
    let sizes = [65_536, 1 << 20, 7, 300_001, 16_384, 1];
    assert_eq!(put_frames(&store, "n1", &night1, &sizes), (0, 0));
    let (followed, in_frames) = put_frames(&store, "n1-again", &night1, &sizes);
    let lens = scanned(&night1);
    let tail = lens[lens.len() - 1] as u64;
    let (all, max) = followable(&lens);
    assert!(
        (all - max..=all).contains(&(followed as usize)),
        "followed {followed} of {all} followable"
    );
    let first_batch = (128 << 10) + cfg.chunker.max as u64;
    assert!(
        in_frames >= night1.len() as u64 - first_batch - tail,
        "{in_frames} of {} followed as they arrived",
        night1.len()
    );
    assert!(get(&store, "bkt", "n1-again", None).unwrap() == night1);

    // The next night's changes are cut by scanning; the stream is followed again after each.
    let night2 = next_night(&night1);
    let (followed, in_frames) = put_frames(&store, "n2", &night2, &sizes);
    assert!(
        followed as f64 > 0.7 * night2.len() as f64,
        "{followed} of {}",
        night2.len()
    );
    // Each of its 14 changes costs a probing batch or two of 128 KiB cut by scanning (copied).
    assert!(in_frames as f64 > 0.7 * night2.len() as f64, "{in_frames}");
    assert!(get(&store, "bkt", "n2", None).unwrap() == night2);
    assert!(
        get(&store, "bkt", "n2", Some(2_999_000..3_100_000)).unwrap()
            == night2[2_999_000..3_100_000]
    );

    // An upload abandoned mid-stream: the memo learned its chunks, but those of its open container were never
    // stored. The same stream again is followed through them, and they are stored from its frames.
    let night3 = data(42, 6_000_000);
    let mut abandoned = store.begin_upload().unwrap();
    for piece in night3.chunks(1 << 20) {
        abandoned
            .write_bytes(bytes::Bytes::copy_from_slice(piece))
            .unwrap();
    }
    drop(abandoned);
    let (followed, in_frames) = put_frames(&store, "n3", &night3, &sizes);
    assert!(followed > 0 && in_frames > 0, "{followed} {in_frames}");
    assert!(get(&store, "bkt", "n3", None).unwrap() == night3);
    assert_eq!(get(&store, "bkt", "n1", None).unwrap(), night1);
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
    drop(store);
    // Everything committed reads back after a restart too.
    let store = Store::open(cfg).unwrap();
    assert!(get(&store, "bkt", "n3", None).unwrap() == night3);
    assert!(get(&store, "bkt", "n1-again", None).unwrap() == night1);
}

/// A second full backup in concurrent multipart parts (as the S3 layer hands them over, in body frames): every
/// part is followed, and takes its whole MD5 from the memo, none of it hashed again. (Part streams whose batch
/// ended before a checkpoint used to hash the held-back tail.)
#[test]
fn a_repeated_full_in_concurrent_parts_takes_every_md5_from_the_memo() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::embedded(dir.path().join("data"))).unwrap();
    let parts: Vec<Vec<u8>> = (0..12).map(|i| data(100 + i, 8 << 20)).collect();
    let write_all = || -> Vec<(u64, u64, [u8; 16])> {
        std::thread::scope(|s| {
            let writers: Vec<_> = parts
                .chunks(3)
                .map(|mine| {
                    let store = store.clone();
                    s.spawn(move || {
                        mine.iter()
                            .map(|part| {
                                let mut up = store.begin_upload().unwrap();
                                for frame in part.chunks(1 << 20) {
                                    up.write_bytes(bytes::Bytes::copy_from_slice(frame))
                                        .unwrap();
                                }
                                let md5 = up.md5().unwrap();
                                let got = (up.md5_remembered_bytes(), up.followed_in_frames(), md5);
                                up.finish_sealed().unwrap();
                                got
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            writers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        })
    };
    let first = write_all();
    for (part, (remembered, in_frames, md5)) in parts.iter().zip(first) {
        assert_eq!((remembered, in_frames), (0, 0));
        assert_eq!(md5, md5_of(part).to_be_bytes());
    }
    for _ in 0..2 {
        for (part, (remembered, in_frames, md5)) in parts.iter().zip(write_all()) {
            assert_eq!(md5, md5_of(part).to_be_bytes());
            assert_eq!(remembered, part.len() as u64, "MD5 taken from the memo");
            assert!(in_frames > part.len() as u64 * 9 / 10, "{in_frames}");
        }
    }
}

/// The sequence memo is in memory, but the catalog records which chunk followed which (`chunk_refs.next`):
/// after a restart a repeated stream is followed as whole as in the process that wrote it, with scanning's
/// cuts; a night's changes are recorded for the next night after another restart; and a chunker with other
/// parameters forgets every recorded successor (following them would cut where it does not).
#[test]
fn a_stream_written_before_a_restart_is_followed_from_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let scanned = |b: &[u8], params: ChunkerParams| -> Vec<usize> {
        chunk_ranges(b, params)
            .into_iter()
            .map(|r| r.len())
            .collect()
    };
    let night1 = data(11, 6_000_000);
    let lens1 = {
        let store = Store::open(cfg.clone()).unwrap();
        let (_, followed, lens) = sealed_stream(&store, &night1, 70_001);
        assert_eq!(followed, 0, "nothing remembered yet");
        assert_eq!(lens, scanned(&night1, cfg.chunker));
        lens
    };
    assert!(lens1.len() > 100);

    let night2 = next_night(&night1);
    let lens2 = {
        let store = Store::open(cfg.clone()).unwrap();
        repeat_is_followed_whole(&store, &night1, 1_000_003, &lens1);
        // The next night, in the same process: its changes are recorded with its seals.
        let (md5, _, lens2) = sealed_stream(&store, &night2, 262_144);
        assert_eq!(md5, md5_of(&night2).to_be_bytes());
        assert_eq!(lens2, scanned(&night2, cfg.chunker));
        assert!(store.catalog().read(check_catalog).unwrap().is_empty());
        lens2
    };

    // After another restart the second night repeats: followed whole, through the places it changed too.
    // A stream with a run of zeros, which the chunker cuts at `max`, is recorded too.
    let mut zeros = data(12, 3_000_000);
    zeros[1_000_000..2_000_000].fill(0);
    {
        let store = Store::open(cfg.clone()).unwrap();
        repeat_is_followed_whole(&store, &night2, 333_333, &lens2);
        let (_, _, lens) = sealed_stream(&store, &zeros, 100_000);
        let max = cfg.chunker.max as usize;
        assert!(lens.iter().filter(|&&l| l == max).count() > 10);
    }

    // Same min and avg, a larger max: the same content cuts, but the zeros are cut at the new max. Following
    // the old successors would cut them at the old one.
    let mut other = cfg.clone();
    other.chunker.max *= 2;
    let store = Store::open(other.clone()).unwrap();
    let (md5, followed, lens4) = sealed_stream(&store, &zeros, 262_144);
    assert_eq!(md5, md5_of(&zeros).to_be_bytes());
    assert_eq!(lens4, scanned(&zeros, other.chunker));
    assert_ne!(lens4, scanned(&zeros, cfg.chunker));
    assert_eq!(followed, 0, "no successor of the old chunker is followed");
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
}

/// Writes `bytes` as one sealed upload; returns its MD5 and how many of its bytes took their MD5 state from
/// the memo or the catalog instead of being hashed.
fn md5_of_upload(store: &Arc<Store>, bytes: &[u8]) -> ([u8; 16], u64) {
    let mut up = store.begin_upload().unwrap();
    for p in bytes.chunks(300_007) {
        up.write(p).unwrap();
    }
    let md5 = up.md5().unwrap();
    let remembered = up.md5_remembered_bytes();
    up.finish_sealed().unwrap();
    (md5, remembered)
}

/// The MD5 states at a stream's checkpoints are recorded in the catalog: after a restart a repeated stream's
/// MD5 (its ETag) is taken from there instead of hashed, whole; a stream changed in its middle takes the part
/// before the change; the digests are right either way.
#[test]
fn a_repeated_streams_md5_comes_from_the_catalog_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let stream = data(21, 8_000_000);
    let mut changed = stream.clone();
    changed[5_000_000..5_000_100].fill(7);
    {
        let store = Store::open(cfg.clone()).unwrap();
        let (md5, remembered) = md5_of_upload(&store, &stream);
        assert_eq!(md5, md5_of(&stream).to_be_bytes());
        assert_eq!(remembered, 0, "a new store knows no stream");
    }
    let store = Store::open(cfg.clone()).unwrap();
    let (md5, remembered) = md5_of_upload(&store, &stream);
    assert_eq!(md5, md5_of(&stream).to_be_bytes());
    assert_eq!(
        remembered,
        stream.len() as u64,
        "all of it, from the catalog"
    );
    drop(store);
    let store = Store::open(cfg).unwrap();
    let (md5, remembered) = md5_of_upload(&store, &changed);
    assert_eq!(md5, md5_of(&changed).to_be_bytes());
    assert!(
        remembered > 3_000_000 && remembered <= 5_000_000,
        "the part before the change: {remembered}"
    );
    assert!(store.catalog().read(check_catalog).unwrap().is_empty());
}

/// A scrub resumes from its checkpoint (`meta.scrub_cursor`, written after each batch of containers and when
/// cancelled): containers at or below the cursor are not read again, every one after it is verified and gets
/// its last-verified time, and a finished scrub clears the cursor and records its completion. The cursor is
/// set as an interrupted scrub leaves it, on a closed store.
#[test]
fn scrub_resumes_after_its_checkpoint() {
    use cairn::store::jobs::{Job, JobKind};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let catalog = cfg.catalog_path();
    {
        let store = Store::open(cfg.clone()).unwrap();
        store.create_bucket("backups").unwrap();
        for i in 0..4 {
            put(&store, "backups", &format!("o{i}"), &data(40 + i, 600_000));
        }
    }
    let ids: Vec<i64> = {
        let c = rusqlite::Connection::open(&catalog).unwrap();
        let mut st = c.prepare("SELECT id FROM containers ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert!(ids.len() >= 4, "several containers: {ids:?}");
    let cursor = ids[ids.len() / 2];
    rusqlite::Connection::open(&catalog)
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES('scrub_cursor', ?1)",
            [cursor.to_string()],
        )
        .unwrap();

    let store = Store::open(cfg).unwrap();
    let job = Job::new(JobKind::Scrub, 0, true);
    store.run_scrub(&job, true).unwrap();
    let p = job.progress();
    let after = ids.iter().filter(|id| **id > cursor).count() as u64;
    assert_eq!(
        p.containers_done,
        ids.len() as u64,
        "the ones before count as done"
    );
    assert_eq!(p.shards_repaired, 0);
    drop(store);

    let c = rusqlite::Connection::open(&catalog).unwrap();
    let verified: Vec<(i64, Option<i64>)> = {
        let mut st = c
            .prepare("SELECT id, last_verified_unix_ms FROM containers ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    for (id, when) in &verified {
        assert_eq!(
            when.is_some(),
            *id > cursor,
            "container {id}: verified only after the cursor {cursor}"
        );
    }
    assert_eq!(
        verified.iter().filter(|(_, w)| w.is_some()).count() as u64,
        after
    );
    let meta = |key: &str| -> Option<String> {
        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .ok()
    };
    assert_eq!(
        meta("scrub_cursor"),
        None,
        "a finished scrub clears its cursor"
    );
    assert!(meta("scrub_last_completed_unix_ms").is_some());
}
