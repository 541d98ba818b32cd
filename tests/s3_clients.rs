//! rclone (provider Other), restic (S3 backend) and s3cmd against a real `cairn serve`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn make_tree(root: &Path) {
    let files: &[(&str, usize)] = &[
        ("a.txt", 10),
        ("docs/readme.md", 4_000),
        ("docs/deep/nested/file with spaces.bin", 70_000),
        ("bin/tool", 3_000_000),
        ("bin/tool.copy", 3_000_000), // same bytes as bin/tool: dedup fodder
        ("empty", 0),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let seed = if name.starts_with("bin/tool") {
            99
        } else {
            i as u64 + 1
        };
        std::fs::write(p, pseudo_random(*len, seed)).unwrap();
    }
}

fn diff_trees(a: &Path, b: &Path) {
    let mut c = Command::new("diff");
    c.arg("-r").arg(a).arg(b);
    assert_ok(&run(c), "diff -r");
}

fn rclone(s: &Server, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("rclone");
    // rclone fails on the machines' AWS_CA_BUNDLE (LoadCustomCABundleError); it is not needed for HTTP.
    c.env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_CAIRN_TYPE", "s3")
        .env("RCLONE_CONFIG_CAIRN_PROVIDER", "Other")
        .env("RCLONE_CONFIG_CAIRN_ACCESS_KEY_ID", ACCESS)
        .env("RCLONE_CONFIG_CAIRN_SECRET_ACCESS_KEY", SECRET)
        .env("RCLONE_CONFIG_CAIRN_ENDPOINT", &s.endpoint)
        .env("RCLONE_CONFIG_CAIRN_REGION", "us-east-1")
        .args(args);
    run(c)
}

fn rclone_ok(s: &Server, args: &[&str]) -> String {
    let out = rclone(s, args);
    assert_ok(&out, &format!("rclone {args:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn rclone_copy_check_sync_delete() {
    let s = Server::start();
    let src = s.scratch("src");
    make_tree(&src);
    let srcs = src.to_str().unwrap();
    rclone_ok(&s, &["mkdir", "cairn:rclone"]);
    rclone_ok(&s, &["copy", srcs, "cairn:rclone/tree"]);
    // check compares sizes and MD5s (the ETags of single-part uploads).
    let out = rclone_ok(&s, &["check", srcs, "cairn:rclone/tree"]);
    assert!(out.contains("0 differences found"), "{out}");
    // sync after a change: one file removed, one changed, one added.
    std::fs::remove_file(src.join("a.txt")).unwrap();
    std::fs::write(src.join("docs/readme.md"), b"changed").unwrap();
    std::fs::write(src.join("new.txt"), b"new").unwrap();
    rclone_ok(&s, &["sync", srcs, "cairn:rclone/tree"]);
    let out = rclone_ok(&s, &["check", srcs, "cairn:rclone/tree"]);
    assert!(out.contains("0 differences found"), "{out}");
    let ls = rclone_ok(&s, &["lsf", "-R", "cairn:rclone/tree"]);
    assert!(!ls.contains("a.txt") && ls.contains("new.txt"), "{ls}");
    let back = s.scratch("back");
    rclone_ok(&s, &["copy", "cairn:rclone/tree", back.to_str().unwrap()]);
    diff_trees(&src, &back);
    rclone_ok(&s, &["delete", "cairn:rclone/tree"]);
    let ls = rclone_ok(&s, &["lsf", "-R", "cairn:rclone"]);
    assert!(!ls.contains("new.txt"), "{ls}");
}

#[test]
fn restic_init_backup_check_restore() {
    let s = Server::start();
    let src = s.scratch("src");
    make_tree(&src);
    let cache = s.scratch("restic-cache");
    let restic = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.env(
            "RESTIC_REPOSITORY",
            format!("s3:{}/restic-repo", s.endpoint),
        )
        .env("RESTIC_PASSWORD", "cairn-test-password")
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_CA_BUNDLE")
        .arg("--cache-dir")
        .arg(&cache)
        .args(args);
        let out = run(c);
        assert_ok(&out, &format!("restic {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    restic(&["init"]);
    restic(&["backup", src.to_str().unwrap()]);
    // A second backup of the same tree adds (almost) nothing.
    restic(&["backup", src.to_str().unwrap()]);
    restic(&["check", "--read-data"]);
    let target = s.scratch("restore");
    restic(&["restore", "latest", "--target", target.to_str().unwrap()]);
    // restic restores the absolute path below the target.
    let restored = target.join(src.strip_prefix("/").unwrap());
    diff_trees(&src, &restored);
    let snaps = restic(&["snapshots"]);
    assert!(snaps.contains("2 snapshots"), "{snaps}");
}

#[test]
fn s3cmd_put_get_ls_del() {
    let s = Server::start();
    let dir = s.scratch("s3cmd");
    let cfg = dir.join("s3cfg");
    let host = s.endpoint.trim_start_matches("http://");
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {ACCESS}\nsecret_key = {SECRET}\nhost_base = {host}\nhost_bucket = {host}\n\
             use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n"
        ),
    )
    .unwrap();
    let s3cmd = |args: &[&str]| {
        let mut c = Command::new("s3cmd");
        c.arg("-c").arg(&cfg).args(args);
        let out = run(c);
        assert_ok(&out, &format!("s3cmd {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let file = dir.join("file.bin");
    std::fs::write(&file, pseudo_random(200_000, 5)).unwrap();
    // s3cmd uses multipart above 15 MB by default; make one such file too.
    let big = dir.join("big.bin");
    std::fs::write(&big, pseudo_random(16_000_000, 6)).unwrap();
    s3cmd(&["mb", "s3://s3cmd-bucket"]);
    s3cmd(&[
        "put",
        file.to_str().unwrap(),
        "s3://s3cmd-bucket/dir/file.bin",
    ]);
    s3cmd(&["put", big.to_str().unwrap(), "s3://s3cmd-bucket/big.bin"]);
    let ls = s3cmd(&["ls", "s3://s3cmd-bucket/dir/"]);
    assert!(ls.contains("s3://s3cmd-bucket/dir/file.bin"), "{ls}");
    let ls = s3cmd(&["ls", "-r", "s3://s3cmd-bucket"]);
    assert!(ls.contains("big.bin"), "{ls}");
    let got = dir.join("got.bin");
    s3cmd(&[
        "get",
        "s3://s3cmd-bucket/dir/file.bin",
        got.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&file).unwrap());
    let got_big = dir.join("got-big.bin");
    s3cmd(&[
        "get",
        "s3://s3cmd-bucket/big.bin",
        got_big.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&got_big).unwrap(),
        std::fs::read(&big).unwrap()
    );
    s3cmd(&["del", "s3://s3cmd-bucket/dir/file.bin"]);
    let ls = s3cmd(&["ls", "-r", "s3://s3cmd-bucket"]);
    assert!(!ls.contains("file.bin"), "{ls}");
}
