//! Every format version, forever: `tests/fixtures/v1-store/` holds the disks of a small store written by the
//! first format version (no catalog), `v2-store/` the same objects written by container format 2 (chunk
//! groups, storage-format.md §4.5). Every future Cairn must rebuild a catalog from each and read every object
//! back with the recorded BLAKE3. Never regenerate a fixture; add a new one for a new format version.

use std::io::Read;
use std::path::{Path, PathBuf};

use cairn::core::chunker::ChunkerParams;
use cairn::store::recover::rebuild_catalog;
use cairn::store::{ObjectMeta, PutCondition, Store, StoreConfig};

fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}-store"))
}

fn config(data: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::embedded(data);
    cfg.chunker = ChunkerParams {
        min: 2048,
        avg: 8192,
        max: 32768,
    };
    cfg.container_target = 64 * 1024;
    cfg
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The objects of the fixture, rebuilt from their recipe (so the expected bytes need not be stored twice).
fn objects() -> Vec<(&'static str, Vec<u8>)> {
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("line {i} of a fixture text file\n").into_bytes())
        .collect();
    let mut x = 0x1234_5678_9abc_def1u64;
    let random: Vec<u8> = (0..150_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    vec![
        ("empty", Vec::new()),
        ("docs/readme.txt", b"Cairn format v1 fixture\n".to_vec()),
        ("docs/text.txt", text.clone()),
        ("random", random.clone()),
        ("random-copy-by-dedup", random.clone()),
        ("overwritten", b"final version".to_vec()),
        ("copied", text.clone()),
        (
            "multipart",
            [vec![b'z'; 5 * 1024 * 1024], random[..1000].to_vec()].concat(),
        ),
    ]
}

/// Writes the fixture of the current format version. Run once, by hand, when a format version is created
/// (version 1 and 2 were): `CAIRN_WRITE_FIXTURE=2 cargo test --test format_v1_fixture -- --ignored`
#[test]
#[ignore]
fn write_fixture() {
    let Some(version) = std::env::var("CAIRN_WRITE_FIXTURE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return;
    };
    let out = fixture_dir(version);
    assert!(
        !out.exists(),
        "the v{version} fixture exists and must never be rewritten"
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(config(tmp.path())).unwrap();
    store.create_bucket("fixture").unwrap();
    store.create_bucket("deleted-bucket").unwrap();
    store.delete_bucket("deleted-bucket").unwrap();
    let put = |key: &str, data: &[u8]| {
        let mut up = store.begin_upload().unwrap();
        up.write(data).unwrap();
        let meta = ObjectMeta {
            content_type: Some("application/octet-stream".into()),
            ..Default::default()
        };
        up.finish_object("fixture", key, meta).unwrap();
    };
    for (k, d) in objects() {
        match k {
            "overwritten" => {
                put(k, b"first version");
                put(k, &d);
            }
            "copied" => {
                store
                    .copy_object("fixture", "docs/text.txt", "fixture", k, None)
                    .unwrap();
            }
            "multipart" => {
                let id = store
                    .create_multipart("fixture", k, ObjectMeta::default())
                    .unwrap();
                for (n, part) in [(1u32, &d[..5 * 1024 * 1024]), (2, &d[5 * 1024 * 1024..])] {
                    let mut up = store.begin_upload().unwrap();
                    up.write(part).unwrap();
                    let sealed = up.finish_sealed().unwrap();
                    store.put_part(&id, n, sealed, Default::default()).unwrap();
                }
                let parts: Vec<(u32, String)> = store
                    .list_parts(&id, 0, 10)
                    .unwrap()
                    .into_iter()
                    .map(|p| (p.part_number, p.etag))
                    .collect();
                store
                    .complete_multipart(&id, &parts, Default::default(), PutCondition::None)
                    .unwrap();
            }
            _ => put(k, &d),
        }
    }
    put("deleted", b"this object was deleted");
    store.delete_object("fixture", "deleted").unwrap();
    drop(store);
    let mut expected = String::new();
    for (k, d) in objects() {
        expected.push_str(&format!("{k} {} {}\n", d.len(), blake3::hash(&d).to_hex()));
    }
    copy_dir(&tmp.path().join("disks"), &out.join("disks"));
    std::fs::write(out.join("expected.txt"), expected).unwrap();
}

#[test]
fn format_v1_store_rebuilds_and_reads_forever() {
    rebuilds_and_reads(1);
}

#[test]
fn format_v2_store_rebuilds_and_reads_forever() {
    rebuilds_and_reads(2);
}

fn rebuilds_and_reads(version: u32) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &fixture_dir(version).join("disks"),
        &tmp.path().join("disks"),
    );
    let cfg = config(tmp.path());
    let report = rebuild_catalog(&cfg, &|_, _| {}).unwrap();
    assert!(
        report.containers_unreadable.is_empty() && report.objects_damaged.is_empty(),
        "{report:?}"
    );
    if version >= 2 {
        // Version 2 is the one with chunk groups: the fixture must hold some, or it pins nothing new.
        let conn = rusqlite::Connection::open(cfg.catalog_path()).unwrap();
        let grouped: i64 = conn
            .query_row("SELECT COUNT(*) FROM chunks WHERE group_raw > 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(grouped >= 10, "{grouped} grouped chunks");
    }
    let store = Store::open(cfg).unwrap();
    let names: Vec<String> = store
        .list_buckets()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec!["fixture"]);
    let expected = std::fs::read_to_string(fixture_dir(version).join("expected.txt")).unwrap();
    let mut n = 0;
    for line in expected.lines() {
        let mut f = line.split(' ');
        let (key, size, hash) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let (info, mut r) = store.open_object("fixture", key, None).unwrap();
        assert_eq!(info.size.to_string(), size, "{key}");
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(blake3::hash(&v).to_hex().as_str(), hash, "{key}");
        n += 1;
    }
    assert_eq!(n, objects().len());
    assert!(store.head_object("fixture", "deleted").is_err());
    assert!(
        store
            .head_object("fixture", "multipart")
            .unwrap()
            .etag()
            .ends_with("-2\"")
    );
    // The recipe still produces the recorded bytes (guards the expected file against drift).
    for ((k, d), line) in objects().iter().zip(expected.lines()) {
        assert_eq!(
            line,
            format!("{k} {} {}", d.len(), blake3::hash(d).to_hex())
        );
    }
}
