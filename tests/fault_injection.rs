//! Fault injection through the `Disk` trait (FaultyDisk): I/O errors after N operations, torn writes, bit flips
//! on read, a disk vanishing mid-ingest. The store must keep every acknowledged object readable and correct,
//! route new shards around bad disks, and refuse (not corrupt) when more than m shards are gone.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cairn::core::chunker::ChunkerParams;
use cairn::store::disk::{Disk, FaultyDisk};
use cairn::store::diskset::DiskState;
use cairn::store::recover::{check_catalog, rebuild_catalog};
use cairn::store::{ObjectMeta, Store, StoreConfig, StoreError};

struct Rig {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    faulty: BTreeMap<String, Arc<FaultyDisk>>,
    store: Arc<Store>,
}

/// Eight disks with 4+2, so two shards can always be re-placed.
fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::embedded(dir.path().join("data"));
    cfg.disks = (0..8)
        .map(|i| dir.path().join(format!("data/disks/d{i:02}")))
        .collect();
    cfg.spares.clear();
    cfg.chunker = ChunkerParams {
        min: 4 * 1024,
        avg: 16 * 1024,
        max: 64 * 1024,
    };
    cfg.container_target = 256 * 1024;
    let made: Mutex<BTreeMap<String, Arc<FaultyDisk>>> = Mutex::new(BTreeMap::new());
    let make = |p: &Path| -> Arc<dyn Disk> {
        let d = Arc::new(FaultyDisk::new(p));
        made.lock().unwrap().insert(name(p), d.clone());
        d
    };
    let configured = cfg
        .disks
        .iter()
        .map(|p| (p.clone(), DiskState::Active))
        .collect();
    let store = Store::open_with(cfg.clone(), &make, configured).unwrap();
    store.create_bucket("bkt").unwrap();
    let faulty = made.into_inner().unwrap();
    Rig {
        _dir: dir,
        cfg,
        faulty,
        store,
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            (x >> (i % 3 * 8)) as u8
        })
        .collect()
}

fn put(store: &Arc<Store>, key: &str, data: &[u8]) -> Result<(), StoreError> {
    let mut up = store.begin_upload()?;
    for p in data.chunks(50_000) {
        up.write(p)?;
    }
    up.finish_object("bkt", key, ObjectMeta::default())
        .map(|_| ())
}

fn get(store: &Arc<Store>, key: &str) -> Result<Vec<u8>, String> {
    let (_, mut r) = store
        .open_object("bkt", key, None)
        .map_err(|e| e.to_string())?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).map_err(|e| e.to_string())?;
    Ok(v)
}

fn disk_state(store: &Store, disk_name: &str) -> DiskState {
    store
        .disks()
        .all()
        .iter()
        .find(|d| name(&d.path) == disk_name)
        .unwrap()
        .state()
}

#[test]
fn io_errors_after_n_ops_reroute_writes_and_fail_the_disk() {
    let r = rig();
    let bad = &r.faulty["d03"];
    bad.fail_after(5);
    // Twelve containers of six shards over eight disks: d03 is chosen for far more than five writes.
    let objects: Vec<Vec<u8>> = (0..12).map(|i| body(i + 1, 600_000)).collect();
    for (i, o) in objects.iter().enumerate() {
        put(&r.store, &format!("o{i}"), o).unwrap();
    }
    assert!(!bad.injected().is_empty(), "the fault never fired");
    // Every object reads back; none of the shards after the fault landed on d03.
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(&get(&r.store, &format!("o{i}")).unwrap(), o);
    }
    assert_ne!(disk_state(&r.store, "d03"), DiskState::Active);
    assert!(r.store.catalog().read(check_catalog).unwrap().is_empty());
}

#[test]
fn torn_writes_are_never_acknowledged_as_shards() {
    let r = rig();
    let shards_on_d01 = |store: &Store| -> i64 {
        store
            .catalog()
            .read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM shards s JOIN disks d ON d.id = s.disk_id WHERE d.path LIKE '%/d01'",
                    [],
                    |x| x.get(0),
                )?)
            })
            .unwrap()
    };
    let before = shards_on_d01(&r.store);
    r.faulty["d01"]
        .faults
        .torn_writes
        .store(true, Ordering::SeqCst);
    let objects: Vec<Vec<u8>> = (0..5).map(|i| body(i + 10, 400_000)).collect();
    for (i, o) in objects.iter().enumerate() {
        put(&r.store, &format!("o{i}"), o).unwrap();
    }
    // The half-written files on d01 are not in the catalog: reads never touch them.
    r.faulty["d01"]
        .faults
        .torn_writes
        .store(false, Ordering::SeqCst);
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(&get(&r.store, &format!("o{i}")).unwrap(), o);
    }
    assert_eq!(
        shards_on_d01(&r.store),
        before,
        "a torn shard was recorded in the catalog"
    );
    // Disaster recovery sees the torn files, skips them as bad, and still recovers every object.
    let cfg = r.cfg.clone();
    drop(r.store);
    std::fs::remove_file(cfg.catalog_path()).unwrap();
    let report = rebuild_catalog(&cfg, &|_, _| {}).unwrap();
    assert!(
        !report.bad_shard_files.is_empty(),
        "torn files should be reported: {report:?}"
    );
    assert!(report.containers_unreadable.is_empty());
    let store = Store::open(cfg).unwrap();
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(&get(&store, &format!("o{i}")).unwrap(), o);
    }
}

#[test]
fn bit_flips_on_read_are_caught_and_repaired_from_parity() {
    let r = rig();
    let objects: Vec<Vec<u8>> = (0..4).map(|i| body(i + 20, 500_000)).collect();
    for (i, o) in objects.iter().enumerate() {
        put(&r.store, &format!("o{i}"), o).unwrap();
    }
    for d in ["d00", "d05"] {
        r.faulty[d].faults.flip_bits.store(true, Ordering::SeqCst);
    }
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(
            &get(&r.store, &format!("o{i}")).unwrap(),
            o,
            "two rotting disks: still exact"
        );
    }
    // A third rotting disk: some containers exceed m bad shards. Reads either return the exact bytes or fail;
    // corrupt bytes are never served.
    r.faulty["d02"]
        .faults
        .flip_bits
        .store(true, Ordering::SeqCst);
    r.faulty["d06"]
        .faults
        .flip_bits
        .store(true, Ordering::SeqCst);
    let mut errors = 0;
    for (i, o) in objects.iter().enumerate() {
        match get(&r.store, &format!("o{i}")) {
            Ok(v) => assert_eq!(&v, o),
            Err(_) => errors += 1,
        }
    }
    assert!(
        errors > 0,
        "with four rotting disks of eight some container should be unreadable"
    );
}

#[test]
fn a_disk_vanishing_mid_ingest_loses_nothing() {
    let r = rig();
    let mut written = Vec::new();
    for i in 0..8u64 {
        if i == 3 {
            r.faulty["d06"]
                .faults
                .vanished
                .store(true, Ordering::SeqCst);
        }
        let o = body(i + 30, 300_000);
        put(&r.store, &format!("o{i}"), &o).unwrap();
        written.push(o);
    }
    assert_eq!(disk_state(&r.store, "d06"), DiskState::Failed);
    // A second disk lost for reads only: m = 2 still covers every container.
    r.faulty["d02"].fail_after(0);
    for (i, o) in written.iter().enumerate() {
        assert_eq!(&get(&r.store, &format!("o{i}")).unwrap(), o);
    }
    // The failed disk is persisted: after reopening (with the directory really gone) it stays failed.
    let cfg = r.cfg.clone();
    drop(r.store);
    std::fs::remove_dir_all(cfg.disks[6].clone()).unwrap();
    let store = Store::open(cfg).unwrap();
    let d06 = store
        .disks()
        .all()
        .into_iter()
        .find(|d| name(&d.path) == "d06")
        .unwrap();
    assert_eq!(d06.state(), DiskState::Failed);
    assert!(
        !PathBuf::from(&d06.path).exists(),
        "a failed disk's directory must not be recreated"
    );
    for (i, o) in written.iter().enumerate() {
        assert_eq!(&get(&store, &format!("o{i}")).unwrap(), o);
    }
}

#[test]
fn too_few_disks_refuses_writes_cleanly() {
    let r = rig();
    for d in ["d00", "d01", "d02"] {
        r.faulty[d].faults.vanished.store(true, Ordering::SeqCst);
    }
    let err = put(&r.store, "nope", &body(99, 300_000)).unwrap_err();
    assert!(matches!(err, StoreError::NotEnoughDisks { .. }), "{err}");
    assert!(matches!(
        r.store.head_object("bkt", "nope"),
        Err(StoreError::NoSuchKey { .. })
    ));
    assert!(r.store.catalog().read(check_catalog).unwrap().is_empty());
}
