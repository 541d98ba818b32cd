//! Disk failures end to end: a real `cairn serve` with directory-disks in a temp dir, real S3 traffic (curl
//! with SigV4), disks deleted or rotted under it, and the real CLI (`cairn status|scrub|rebuild|disk`) checked
//! for its output and exit codes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
const ACCESS: &str = "diskfailroot";
const SECRET: &str = "disk-failure-test-secret-0123";

struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: Option<Child>,
    endpoint: String,
}

impl Rig {
    /// `disks` data disks and `spares` hot spares, 4+2, small containers so there are many of them.
    fn new(disks: usize, spares: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = |name: String| dir.path().join("disks").join(name).display().to_string();
        let disk_list: Vec<String> = (0..disks)
            .map(|i| format!("{:?}", d(format!("d{i:02}"))))
            .collect();
        let spare_list: Vec<String> = (0..spares)
            .map(|i| format!("{:?}", d(format!("s{i:02}"))))
            .collect();
        let config = dir.path().join("cairn.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[storage]\ndisks = [{}]\nspares = [{}]\nk = 4\nm = 2\ncontainer_target = 262144\n[maintenance]\nhealth_check_interval_ms = 200\n",
                dir.path().join("data").display().to_string(),
                disk_list.join(", "),
                spare_list.join(", ")
            ),
        )
        .unwrap();
        let mut rig = Rig {
            dir,
            config,
            server: None,
            endpoint: String::new(),
        };
        rig.start();
        rig
    }

    /// Sets `[maintenance] rebuild_throttle_mb_s` for the next start.
    fn set_rebuild_throttle(&self, mb_s: f64) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let base: String = text
            .lines()
            .filter(|l| !l.starts_with("rebuild_throttle_mb_s"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(
            &self.config,
            format!("{base}rebuild_throttle_mb_s = {mb_s:?}\n"),
        )
        .unwrap();
    }

    fn start(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&self.config);
        cmd.env("CAIRN_ROOT_ACCESS_KEY", ACCESS)
            .env("CAIRN_ROOT_SECRET_KEY", SECRET)
            .env("CAIRN_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let endpoint = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("cairn: listening on ").map(str::to_string))
            .expect("server did not start");
        std::thread::spawn(move || for _ in lines {});
        self.endpoint = endpoint;
        self.server = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn alive(&mut self) -> bool {
        self.server
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn disk(&self, name: &str) -> PathBuf {
        self.dir.path().join("disks").join(name)
    }

    fn curl(&self, extra: &[&str]) -> std::process::Output {
        Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &format!("{ACCESS}:{SECRET}"),
            ])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(extra)
            .output()
            .unwrap()
    }

    fn make_bucket(&self, b: &str) {
        let out = self.curl(&["-X", "PUT", &format!("{}/{b}", self.endpoint)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// PUT; true only for a 2xx answer (the object is then acknowledged).
    fn put(&self, key: &str, data: &[u8]) -> bool {
        let f = self.dir.path().join("upload.tmp");
        std::fs::write(&f, data).unwrap();
        self.curl(&[
            "-T",
            f.to_str().unwrap(),
            &format!("{}/bkt/{key}", self.endpoint),
        ])
        .status
        .success()
    }

    /// `put` from a file of the key's own, so that several threads may PUT at once.
    fn put_concurrently(&self, key: &str, data: &[u8]) -> bool {
        let f = self
            .dir
            .path()
            .join(format!("upload-{}.tmp", key.replace('/', "_")));
        std::fs::write(&f, data).unwrap();
        let ok = self
            .curl(&[
                "-T",
                f.to_str().unwrap(),
                &format!("{}/bkt/{key}", self.endpoint),
            ])
            .status
            .success();
        std::fs::remove_file(&f).unwrap();
        ok
    }

    /// DELETE; true for a 2xx answer.
    fn delete(&self, key: &str) -> bool {
        self.curl(&["-X", "DELETE", &format!("{}/bkt/{key}", self.endpoint)])
            .status
            .success()
    }

    /// GET; None if the server refused or broke off the body.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.curl(&[&format!("{}/bkt/{key}", self.endpoint)]);
        out.status.success().then_some(out.stdout)
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn status(&self) -> serde_json::Value {
        let (_, out, err) = self.cli(&["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out} {err}"))
    }

    /// Waits until no failed disk holds shards, no rebuild runs and every container has full redundancy.
    fn wait_healed(&self, limit: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status();
            let red = &s["redundancy"];
            let running = s["rebuild"]["running"].as_bool().unwrap_or(false);
            let failed_with_data = s["disks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["state"] == "failed" && d["shards"].as_u64().unwrap_or(0) > 0);
            if !running && !failed_with_data && red["full"] == red["containers"] {
                return s;
            }
            assert!(start.elapsed() < limit, "not healed after {limit:?}: {s:#}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn shard_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.dir.path().join("disks"), &mut out);
        out.retain(|p| {
            p.extension().is_some_and(|e| e == "shard")
                && !p.to_string_lossy().contains("quarantine")
        });
        out.sort();
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.kill();
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn body(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = 20_000 + (seed as usize * 7919) % 700_000;
    (0..len)
        .map(|i| {
            if i % 4 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            (x >> ((i % 4) * 8)) as u8
        })
        .collect()
}

#[test]
fn two_disks_lost_mid_ingest_heal_by_themselves() {
    let rig = Rig::new(8, 2);
    rig.make_bucket("bkt");
    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..60u64 {
        if i == 20 {
            std::fs::remove_dir_all(rig.disk("d02")).unwrap();
        }
        if i == 35 {
            std::fs::remove_dir_all(rig.disk("d05")).unwrap();
        }
        let b = body(i);
        if rig.put(&format!("obj-{i}"), &b) {
            acked.insert(format!("obj-{i}"), b);
        }
    }
    assert!(
        acked.len() >= 55,
        "writes should keep succeeding with two disks gone: {} acked",
        acked.len()
    );
    let s = rig.wait_healed(Duration::from_secs(120));
    let states: Vec<&str> = s["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "retired").count(),
        2,
        "{states:?}"
    );
    assert!(
        !states.contains(&"spare"),
        "both spares should have taken over: {states:?}"
    );
    assert_eq!(s["critical"], false);
    for (k, v) in &acked {
        assert_eq!(
            rig.get(k).as_ref(),
            Some(v),
            "{k} differs after the rebuild"
        );
    }
    let (code, out, err) = rig.cli(&["scrub", "--wait", "--json"]);
    assert_eq!(code, 0, "scrub after rebuild should be clean: {out} {err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["bad_shards"], 0);
    assert_eq!(p["containers_done"], p["containers_total"]);
}

/// Shard files per container id, from their names (`<container id>.<index>.shard`).
fn files_per_container(files: &[PathBuf]) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let id = name.split('.').next().unwrap().to_string();
        out.entry(id).or_default().push(f.clone());
    }
    out
}

/// Small objects PUT, then a third of them deleted, by many clients at once: the last containers of uploads,
/// and the tombstone containers of deletes, that end while another seal is under way are sealed together
/// (group commit, storage-format.md §6). Every acknowledged object reads back and every deleted one is gone,
/// the catalog rebuilt from the disks alone finds exactly the same objects again, and they survive two lost
/// disks.
#[test]
fn concurrent_small_puts_and_deletes_are_sealed_together_and_rebuild_from_disks() {
    let mut rig = Rig::new(8, 0);
    rig.make_bucket("bkt");
    let objects: Vec<(String, Vec<u8>)> = (0..96u64)
        .map(|i| {
            let b = body(1000 + i);
            let len = [300, 2_000, 9_000, 19_000][i as usize % 4];
            (format!("many/{i:03}"), b[..len].to_vec())
        })
        .collect();
    let before = files_per_container(&rig.shard_files());
    std::thread::scope(|s| {
        for client in objects.chunks(8) {
            let rig = &rig;
            s.spawn(move || {
                for (k, v) in client {
                    assert!(rig.put_concurrently(k, v), "PUT {k}");
                }
            });
        }
    });
    let after_puts = files_per_container(&rig.shard_files());
    let new = after_puts
        .keys()
        .filter(|id| !before.contains_key(*id))
        .count();
    assert!(
        new < objects.len(),
        "12 clients at once: some containers hold more than one object ({new} containers for {} objects)",
        objects.len()
    );
    for (k, v) in &objects {
        assert_eq!(rig.get(k).as_ref(), Some(v), "{k}");
    }

    // Every third object deleted, again by 12 clients at once: their tombstones share containers too.
    let (deleted, kept): (Vec<_>, Vec<_>) =
        objects.iter().enumerate().partition(|(i, _)| i % 3 == 0);
    let deleted: Vec<&String> = deleted.into_iter().map(|(_, (k, _))| k).collect();
    let kept: Vec<&(String, Vec<u8>)> = kept.into_iter().map(|(_, o)| o).collect();
    std::thread::scope(|s| {
        for client in deleted.chunks(3) {
            let rig = &rig;
            s.spawn(move || {
                for k in client {
                    assert!(rig.delete(k), "DELETE {k}");
                }
            });
        }
    });
    let after_deletes = files_per_container(&rig.shard_files());
    let tombstone_containers = after_deletes
        .keys()
        .filter(|id| !after_puts.contains_key(*id))
        .count();
    assert!(
        (1..deleted.len()).contains(&tombstone_containers),
        "{tombstone_containers} containers for {} deletes",
        deleted.len()
    );
    for k in &deleted {
        assert_eq!(rig.get(k), None, "{k} was deleted");
    }

    // Disaster recovery from the disks alone: the same objects, no more, no fewer.
    rig.kill();
    let (code, out, err) = rig.cli(&["catalog", "rebuild", "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["objects"], kept.len(), "{report:#}");
    assert_eq!(report["objects_damaged"].as_array().map(Vec::len), Some(0));
    let (code, out, err) = rig.cli(&["catalog", "check", "--json"]);
    assert_eq!(code, 0, "catalog check after the rebuild: {out} {err}");
    rig.start();
    // Two disks gone, no spare: still every kept object, from parity, and no deleted one.
    std::fs::remove_dir_all(rig.disk("d02")).unwrap();
    std::fs::remove_dir_all(rig.disk("d05")).unwrap();
    for (k, v) in &kept {
        assert_eq!(
            rig.get(k).as_ref(),
            Some(v),
            "{k} after the rebuild, two disks gone"
        );
    }
    for k in &deleted {
        assert_eq!(rig.get(k), None, "{k} stays deleted after the rebuild");
    }
}

#[test]
fn small_objects_are_sealed_as_three_copies_that_survive_two_lost_disks_and_heal() {
    let rig = Rig::new(8, 2);
    rig.make_bucket("bkt");
    // Objects of 100 to 2400 bytes: with its segment and commit records each seals a container of less than
    // 3968 bytes, which fits one 4 KiB block per shard file as 1+2 (storage-format.md §6).
    let small: Vec<(String, Vec<u8>)> = (0..24u64)
        .map(|i| {
            let b = body(i);
            (format!("small-{i}"), b[..(100 + i as usize * 100)].to_vec())
        })
        .collect();
    let before = files_per_container(&rig.shard_files());
    for (k, v) in &small {
        assert!(rig.put(k, v), "PUT {k}");
    }
    let after = files_per_container(&rig.shard_files());
    let new: Vec<&Vec<PathBuf>> = after
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .map(|(_, f)| f)
        .collect();
    assert_eq!(new.len(), small.len(), "one container per small object");
    for files in &new {
        // k = 1, m = 2: three files on three disks, one 4 KiB block each, where 4+2 would write six.
        assert_eq!(files.len(), 3, "{files:?}");
        let disks: std::collections::BTreeSet<_> =
            files.iter().map(|f| f.parent().unwrap().parent()).collect();
        assert_eq!(disks.len(), 3, "each copy on its own disk: {files:?}");
        for f in *files {
            assert!(std::fs::metadata(f).unwrap().len() <= 4096, "{f:?}");
        }
    }
    // Two disks gone: every small object still reads from its third copy, then both spares take over.
    std::fs::remove_dir_all(rig.disk("d01")).unwrap();
    std::fs::remove_dir_all(rig.disk("d06")).unwrap();
    for (k, v) in &small {
        assert_eq!(rig.get(k).as_ref(), Some(v), "{k} with two disks gone");
    }
    let s = rig.wait_healed(Duration::from_secs(120));
    assert_eq!(s["critical"], false, "{s:#}");
    let healed = files_per_container(&rig.shard_files());
    for id in after.keys().filter(|id| !before.contains_key(*id)) {
        assert_eq!(
            healed[id].len(),
            3,
            "container {id} has its three copies again"
        );
    }
    // Rot one copy of each: scrub finds every one, repairs it, and the objects read back whole.
    for files in healed
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .map(|(_, f)| f)
    {
        let f = &files[0];
        let mut b = std::fs::read(f).unwrap();
        b[64] ^= 0x01;
        std::fs::write(f, b).unwrap();
    }
    let (code, out, err) = rig.cli(&["scrub", "--wait", "--json"]);
    assert_eq!(code, 1, "problems found and repaired: {out} {err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["bad_shards"].as_u64(), Some(small.len() as u64), "{p:#}");
    assert_eq!(p["shards_repaired"].as_u64(), Some(small.len() as u64));
    for (k, v) in &small {
        assert_eq!(rig.get(k).as_ref(), Some(v), "{k} after the scrub");
    }
}

#[test]
fn bit_rot_in_one_percent_of_shard_files_is_found_and_repaired() {
    let mut rig = Rig::new(6, 1);
    rig.make_bucket("bkt");
    let objects: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| (format!("obj-{i}"), body(i + 100)))
        .collect();
    for (k, v) in &objects {
        assert!(rig.put(k, v));
    }
    let files = rig.shard_files();
    let n = files.len().div_ceil(100);
    assert!(
        files.len() >= 100,
        "want at least 100 shard files, have {}",
        files.len()
    );
    for f in files.iter().step_by(files.len() / n).take(n) {
        let mut b = std::fs::read(f).unwrap();
        let i = 64 + (b.len() - 112) / 3;
        b[i] ^= 0xFF;
        std::fs::write(f, b).unwrap();
    }
    // Reads in between: exact bytes, never the rotted ones.
    for (k, v) in &objects {
        assert_eq!(rig.get(k).as_ref(), Some(v), "{k}");
    }
    let (code, out, err) = rig.cli(&["scrub", "--wait", "--json"]);
    assert_eq!(code, 1, "problems found and repaired: {out} {err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["bad_shards"].as_u64(), Some(n as u64), "{p:#}");
    assert_eq!(p["shards_repaired"].as_u64(), Some(n as u64));
    assert_eq!(p["files_quarantined"].as_u64(), Some(n as u64));
    let quarantined: usize = std::fs::read_dir(rig.dir.path().join("disks"))
        .unwrap()
        .map(|d| {
            std::fs::read_dir(d.unwrap().path().join("quarantine"))
                .map(|q| q.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        quarantined, n,
        "bad files are kept in quarantine, never deleted"
    );
    let (code, out, _) = rig.cli(&["scrub", "--wait"]);
    assert_eq!(code, 0, "second scrub is clean: {out}");
    assert!(out.contains("0 bad shards"), "{out}");
    let s = rig.status();
    assert_eq!(
        s["verification"]["bytes_verified_30d"],
        s["verification"]["bytes_total"]
    );
    for (k, v) in &objects {
        assert_eq!(rig.get(k).as_ref(), Some(v), "{k}");
    }
    assert!(rig.alive());
}

#[test]
fn third_disk_loss_names_the_objects_and_serves_nothing_corrupt() {
    let mut rig = Rig::new(6, 0);
    rig.make_bucket("bkt");
    let objects: Vec<(String, Vec<u8>)> = (0..12u64)
        .map(|i| (format!("obj-{i}"), body(i + 200)))
        .collect();
    for (k, v) in &objects {
        assert!(rig.put(k, v));
    }
    for d in ["d00", "d03", "d04"] {
        std::fs::remove_dir_all(rig.disk(d)).unwrap();
    }
    let mut failed = 0;
    for (k, v) in &objects {
        match rig.get(k) {
            Some(got) => assert_eq!(&got, v, "{k}: a successful read must be exact"),
            None => failed += 1,
        }
    }
    assert!(failed > 0);
    assert!(rig.alive(), "the server must stay up");
    let (code, out, _) = rig.cli(&["status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("UNREADABLE"), "{out}");
    let (code, out, err) = rig.cli(&["scrub", "--wait", "--no-repair", "--json"]);
    assert_eq!(code, 2, "{out} {err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    let unrepairable = p["unrepairable"].as_array().unwrap();
    assert!(!unrepairable.is_empty());
    assert!(
        unrepairable
            .iter()
            .any(|u| u.as_str().unwrap().contains("bkt/obj-")),
        "{unrepairable:?}"
    );
    // Listing and healthy metadata still work.
    let out = rig.curl(&[&format!("{}/bkt?list-type=2", rig.endpoint)]);
    assert!(out.status.success());
    assert!(rig.alive());
}

#[test]
fn restart_in_the_middle_of_a_rebuild_resumes_and_finishes() {
    let mut rig = Rig::new(6, 1);
    rig.make_bucket("bkt");
    let objects: Vec<(String, Vec<u8>)> = (0..60u64)
        .map(|i| (format!("obj-{i}"), body(i + 300)))
        .collect();
    for (k, v) in &objects {
        assert!(rig.put(k, v));
    }
    // Restart throttled so the rebuild is slow enough to interrupt.
    rig.kill();
    rig.set_rebuild_throttle(1.0);
    rig.start();
    std::fs::remove_dir_all(rig.disk("d01")).unwrap();
    let start = Instant::now();
    loop {
        let s = rig.status();
        let done = s["rebuild"]["containers_done"].as_u64().unwrap_or(0);
        let total = s["rebuild"]["containers_total"].as_u64().unwrap_or(0);
        if done > 0 && done < total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rebuild never got going: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rig.kill();
    rig.set_rebuild_throttle(0.0);
    rig.start();
    let s = rig.wait_healed(Duration::from_secs(120));
    assert!(
        s["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["state"] == "retired")
    );
    for (k, v) in &objects {
        assert_eq!(rig.get(k).as_ref(), Some(v), "{k}");
    }
    let (code, out, _) = rig.cli(&["scrub", "--wait"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn cli_exit_codes_and_json() {
    let mut rig = Rig::new(6, 1);
    rig.make_bucket("bkt");
    assert!(rig.put("a", &body(1)));
    // Healthy, with a spare: exit 0.
    let (code, out, _) = rig.cli(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Health: OK"), "{out}");
    let s = rig.status();
    assert_eq!(s["k"], 4);
    assert_eq!(s["disks"].as_array().unwrap().len(), 7);
    assert!(s["data"]["logical_bytes"].as_u64().unwrap() > 0);
    // disk list --json; add a spare; fail a disk by hand and watch it heal onto the spare.
    let (code, out, _) = rig.cli(&["disk", "list", "--json"]);
    assert_eq!(code, 0);
    let disks: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(disks.as_array().unwrap().len(), 7);
    let extra = rig.dir.path().join("disks/extra-spare");
    let (code, out, err) = rig.cli(&["disk", "add-spare", extra.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(extra.join("CAIRN-DISK").exists());
    let (code, _, err) = rig.cli(&["disk", "add-spare", extra.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("already"), "{err}");
    let (code, _, err) = rig.cli(&["disk", "fail", "99"]);
    assert_ne!(code, 0);
    assert!(err.contains("no disk 99"), "{err}");
    let (code, out, _) = rig.cli(&["disk", "fail", "2"]);
    assert_eq!(code, 0, "{out}");
    rig.wait_healed(Duration::from_secs(60));
    assert_eq!(rig.get("a"), Some(body(1)));
    // Replace another disk with a new directory: it is rebuilt onto.
    let newdisk = rig.dir.path().join("disks/new-d03");
    let (code, out, err) = rig.cli(&["disk", "replace", "4", "--with", newdisk.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    let s = rig.wait_healed(Duration::from_secs(60));
    let new = s["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"].as_str().unwrap().ends_with("new-d03"))
        .unwrap();
    assert_eq!(new["state"], "active");
    assert_eq!(rig.get("a"), Some(body(1)));
    // rebuild with nothing to do: 0.
    let (code, out, _) = rig.cli(&["rebuild", "--wait"]);
    assert_eq!(code, 0, "{out}");
    // No server: a clear message and exit 2.
    rig.kill();
    let (code, _, err) = rig.cli(&["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("no cairn server is running"), "{err}");
}
