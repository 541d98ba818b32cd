//! `cairn key create|list|delete` against a running server: keys are limited to their buckets, read-only
//! keys only read, and a deleted key stops working, all without restarting the server.

mod common;

use std::process::{Command, Output};

use common::*;

fn key_cmd(s: &Server, args: &[&str]) -> String {
    let mut c = Command::new(cairn_bin());
    c.arg("key").args(args).arg("--data").arg(s.data_dir());
    let out = run(c);
    assert_ok(&out, &format!("cairn key {args:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

fn aws_as(s: &Server, ak: &str, sk: &str, args: &[&str]) -> Output {
    let mut c = Command::new(if std::path::Path::new("/usr/bin/aws").exists() {
        "/usr/bin/aws"
    } else {
        "aws"
    });
    c.arg("--endpoint-url").arg(&s.endpoint).args(args);
    s.aws_env(&mut c);
    c.env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", sk);
    run(c)
}

/// Failed with `code`, or with a bare 403 where the cli made a HEAD request first (HEAD answers have no body).
fn denied(out: &Output, code: &str) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    !out.status.success()
        && (err.contains(code) || err.contains("(403) when calling the HeadObject"))
}

#[test]
fn bucket_limited_read_only_and_read_write_keys() {
    let s = Server::start();
    s.aws_ok(&["s3", "mb", "s3://mine"]);
    s.aws_ok(&["s3", "mb", "s3://theirs"]);
    let f = s.scratch("k").join("f.txt");
    std::fs::write(&f, b"content").unwrap();
    let fs = f.to_str().unwrap();
    s.aws_ok(&["s3", "cp", "--no-progress", fs, "s3://mine/f.txt"]);
    s.aws_ok(&["s3", "cp", "--no-progress", fs, "s3://theirs/f.txt"]);

    let ro = key_cmd(&s, &["create", "--bucket", "mine", "--read-only"]);
    let (ro_ak, ro_sk) = (field(&ro, "access key:"), field(&ro, "secret key:"));
    let rw = key_cmd(&s, &["create", "--bucket", "mine"]);
    let (rw_ak, rw_sk) = (field(&rw, "access key:"), field(&rw, "secret key:"));
    let list = key_cmd(&s, &["list"]);
    assert!(
        list.contains(&ro_ak) && list.contains(&rw_ak) && list.contains("read-only"),
        "{list}"
    );
    assert!(!list.contains(&ro_sk), "secrets must not be listed");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data_dir().join("keys.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // read-only: reads its bucket, cannot write it, cannot see the other bucket
    let out = aws_as(&s, &ro_ak, &ro_sk, &["s3", "cp", "s3://mine/f.txt", "-"]);
    assert_ok(&out, "read-only GET");
    assert_eq!(out.stdout, b"content");
    assert!(denied(
        &aws_as(
            &s,
            &ro_ak,
            &ro_sk,
            &["s3", "cp", "--no-progress", fs, "s3://mine/new.txt"]
        ),
        "AccessDenied"
    ));
    assert!(denied(
        &aws_as(&s, &ro_ak, &ro_sk, &["s3", "rm", "s3://mine/f.txt"]),
        "AccessDenied"
    ));
    assert!(denied(
        &aws_as(&s, &ro_ak, &ro_sk, &["s3", "cp", "s3://theirs/f.txt", "-"]),
        "AccessDenied"
    ));
    let buckets = aws_as(&s, &ro_ak, &ro_sk, &["s3", "ls"]);
    assert_ok(&buckets, "ls buckets");
    let text = String::from_utf8_lossy(&buckets.stdout);
    assert!(text.contains("mine") && !text.contains("theirs"), "{text}");

    // read-write: writes its bucket, but nothing else; cannot copy out of a bucket it may not read
    assert_ok(
        &aws_as(
            &s,
            &rw_ak,
            &rw_sk,
            &["s3", "cp", "--no-progress", fs, "s3://mine/new.txt"],
        ),
        "rw PUT",
    );
    assert!(denied(
        &aws_as(
            &s,
            &rw_ak,
            &rw_sk,
            &["s3", "cp", "--no-progress", fs, "s3://theirs/new.txt"]
        ),
        "AccessDenied"
    ));
    assert!(denied(
        &aws_as(
            &s,
            &rw_ak,
            &rw_sk,
            &["s3", "cp", "s3://theirs/f.txt", "s3://mine/stolen.txt"]
        ),
        "AccessDenied"
    ));
    assert!(denied(
        &aws_as(&s, &rw_ak, &rw_sk, &["s3", "mb", "s3://another"]),
        "AccessDenied"
    ));

    // delete: the key stops working at once
    let out = key_cmd(&s, &["delete", &ro_ak]);
    assert!(out.contains("deleted"), "{out}");
    assert!(denied(
        &aws_as(&s, &ro_ak, &ro_sk, &["s3", "cp", "s3://mine/f.txt", "-"]),
        "InvalidAccessKeyId"
    ));
    let mut c = Command::new(cairn_bin());
    c.args(["key", "delete", &ro_ak, "--data"])
        .arg(s.data_dir());
    assert!(
        !run(c).status.success(),
        "deleting a missing key reports failure"
    );
}
