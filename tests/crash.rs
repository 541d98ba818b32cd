//! Crash consistency: the real `cairn` binary is killed with SIGKILL mid-ingest at many different points.
//! Afterwards every acknowledged object reads back byte-identical, unacknowledged ones are cleanly absent or
//! complete, `cairn catalog check` passes, and the store keeps accepting writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

fn cairn(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs an ingest loop and kills it after `after`; returns the acknowledged (key -> blake3) pairs.
fn ingest_and_kill(data: &Path, seed: u64, after: Duration) -> Vec<(String, String)> {
    let mut child = Command::new(BIN)
        .args([
            "debug",
            "ingest-loop",
            "--data",
            data.to_str().unwrap(),
            "--seed",
            &seed.to_string(),
        ])
        .args(["--count", "100000", "--max-size", "2000000"])
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some("ACK")).then(|| {
                    (
                        it.next().unwrap_or("").to_string(),
                        it.next().unwrap_or("").to_string(),
                    )
                })
            })
            .collect::<Vec<_>>()
    });
    let start = Instant::now();
    while start.elapsed() < after {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ingest loop exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL: no destructors, no flushes, no clean shutdown.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap()
}

fn verify(data: &Path) -> BTreeMap<String, String> {
    let out = cairn(&["debug", "verify", "--data", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(k, h)| (k.trim_start_matches("crash/").to_string(), h.to_string()))
        })
        .collect()
}

#[test]
fn sigkill_mid_ingest_never_loses_acknowledged_objects() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    // Kill points spread from "during open" to "many objects in", with sub-millisecond variety.
    let rounds = 24u64;
    for round in 0..rounds {
        let ms = 20 + (round * 397) % 1500 + round % 7;
        for (k, h) in ingest_and_kill(&data, round, Duration::from_millis(ms)) {
            acked.insert(k, h);
        }
        if !data.join("catalog.sqlite").exists() {
            // Killed while the very first open was creating the data directory: there is no store yet, nothing
            // can have been acknowledged, and the next round's open must create it from this half state.
            assert!(
                acked.is_empty(),
                "round {round}: objects acknowledged but no catalog"
            );
            continue;
        }
        let check = cairn(&["catalog", "check", "--data", data.to_str().unwrap()]);
        assert!(
            check.status.success(),
            "round {round}: catalog check failed:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        if round % 6 == 5 || round == rounds - 1 {
            let present = verify(&data);
            for (k, h) in &acked {
                assert_eq!(
                    present.get(k),
                    Some(h),
                    "round {round}: acknowledged object {k} lost or changed"
                );
            }
            // Anything present but not acknowledged was killed after its commit and before the ACK line:
            // it must still be complete and correct, i.e. one of the deterministic bodies.
            for (k, h) in &present {
                if !acked.contains_key(k) {
                    let (seed, i) = k.trim_start_matches('s').split_once('-').unwrap();
                    let body = cairn_body(seed.parse().unwrap(), i.parse().unwrap());
                    assert_eq!(
                        &blake3::hash(&body).to_hex().to_string(),
                        h,
                        "unacknowledged {k} is corrupt"
                    );
                }
            }
        }
    }
    assert!(
        acked.len() > 20,
        "too few objects acknowledged ({}) for the test to mean anything",
        acked.len()
    );
    // No temp files survive a restart, and the store still takes writes.
    let tail = ingest_and_kill(&data, 999, Duration::from_millis(1500));
    assert!(!tail.is_empty());
    for disk in std::fs::read_dir(data.join("disks")).unwrap() {
        let tmp = disk.unwrap().path().join("tmp");
        if tmp.exists() {
            // Only the last killed run may have left temp files; they are removed at the next open.
            continue;
        }
    }
    let present = verify(&data);
    for (k, h) in tail {
        assert_eq!(present.get(&k), Some(&h));
    }
    for disk in std::fs::read_dir(data.join("disks")).unwrap() {
        let tmp = disk.unwrap().path().join("tmp");
        let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            leftovers,
            0,
            "{} still has temp files after reopen",
            tmp.display()
        );
    }
}

fn cairn_body(seed: u64, i: u64) -> Vec<u8> {
    cairn::workload::numbered_object(seed, i, 2_000_000)
}
