//! aws cli (Debian's v2) against a real `cairn serve`: mb; cp of a 1 GB file (multipart) up and down and of
//! small files; sync of a tree; ls; rm; presign fetched with curl.

mod common;

use std::process::Command;

use common::*;

#[test]
fn aws_cli_small_files_sync_ls_rm_presign() {
    let s = Server::start();
    s.aws_ok(&["s3", "mb", "s3://backup"]);
    // A second CreateBucket of one's own bucket is 409 BucketAlreadyOwnedByYou.
    let again = s.aws(&["s3api", "create-bucket", "--bucket", "backup"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("BucketAlreadyOwnedByYou"));

    let dir = s.scratch("small");
    std::fs::write(dir.join("hello.txt"), b"hello cairn\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    let hello = dir.join("hello.txt");
    s.aws_ok(&[
        "s3",
        "cp",
        "--no-progress",
        hello.to_str().unwrap(),
        "s3://backup/docs/hello.txt",
    ]);
    let empty = dir.join("empty");
    s.aws_ok(&[
        "s3",
        "cp",
        "--no-progress",
        empty.to_str().unwrap(),
        "s3://backup/empty",
    ]);
    let down = dir.join("down.txt");
    s.aws_ok(&[
        "s3",
        "cp",
        "--no-progress",
        "s3://backup/docs/hello.txt",
        down.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&down).unwrap(), b"hello cairn\n");
    let down_empty = dir.join("down_empty");
    s.aws_ok(&[
        "s3",
        "cp",
        "--no-progress",
        "s3://backup/empty",
        down_empty.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&down_empty).unwrap().len(), 0);

    // sync a tree with nested directories, odd names and a 7 MB file (multipart at aws's 8 MB threshold: no).
    let tree = s.scratch("tree");
    for (i, name) in [
        "a.txt",
        "sub/b.bin",
        "sub/deeper/c d+e.txt",
        "sub/ü-ñ.txt",
        "z/7mb.bin",
    ]
    .iter()
    .enumerate()
    {
        let p = tree.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let len = if name.ends_with("7mb.bin") {
            7_000_000
        } else {
            1000 * (i + 1)
        };
        std::fs::write(&p, pseudo_random(len, i as u64 + 7)).unwrap();
    }
    s.aws_ok(&[
        "s3",
        "sync",
        "--no-progress",
        tree.to_str().unwrap(),
        "s3://backup/tree",
    ]);
    let ls = s.aws_ok(&["s3", "ls", "--recursive", "s3://backup/tree/"]);
    for name in [
        "tree/a.txt",
        "tree/sub/b.bin",
        "tree/sub/deeper/c d+e.txt",
        "tree/sub/ü-ñ.txt",
        "tree/z/7mb.bin",
    ] {
        assert!(ls.contains(name), "{name} missing from:\n{ls}");
    }
    // A second sync finds nothing to do (sizes and times match).
    let again = s.aws_ok(&[
        "s3",
        "sync",
        "--no-progress",
        tree.to_str().unwrap(),
        "s3://backup/tree",
    ]);
    assert!(
        again.trim().is_empty(),
        "second sync uploaded again:\n{again}"
    );
    let back = s.scratch("tree-back");
    s.aws_ok(&[
        "s3",
        "sync",
        "--no-progress",
        "s3://backup/tree",
        back.to_str().unwrap(),
    ]);
    assert_trees_equal(&tree, &back);

    // ls with a delimiter shows prefixes.
    let top = s.aws_ok(&["s3", "ls", "s3://backup/tree/"]);
    assert!(top.contains("PRE sub/") && top.contains("a.txt"), "{top}");

    // presign, then fetch with curl.
    let url = s.aws_ok(&[
        "s3",
        "presign",
        "s3://backup/docs/hello.txt",
        "--expires-in",
        "300",
    ]);
    let out = run({
        let mut c = Command::new("curl");
        c.args(["-sS", "-f", url.trim()]);
        c
    });
    assert_ok(&out, "curl presigned URL");
    assert_eq!(out.stdout, b"hello cairn\n");
    // The same URL with a tampered signature is refused.
    let bad = {
        let u = url.trim();
        let i = u.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
        let flipped = if &u[i..i + 1] == "0" { "1" } else { "0" };
        format!("{}{flipped}{}", &u[..i], &u[i + 1..])
    };
    let out = run({
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/stderr", "-w", "%{http_code}", &bad]);
        c
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    // rm, then the key is gone and the bucket can be emptied and deleted.
    s.aws_ok(&["s3", "rm", "s3://backup/docs/hello.txt"]);
    let head = s.aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "backup",
        "--key",
        "docs/hello.txt",
    ]);
    assert!(!head.status.success());
    let del = s.aws(&["s3", "rb", "s3://backup"]);
    assert!(
        !del.status.success(),
        "deleting a non-empty bucket must fail"
    );
    assert!(String::from_utf8_lossy(&del.stderr).contains("BucketNotEmpty"));
    s.aws_ok(&["s3", "rm", "--recursive", "s3://backup/"]);
    s.aws_ok(&["s3", "rb", "s3://backup"]);
    let ls = s.aws_ok(&["s3", "ls"]);
    assert!(!ls.contains("backup"), "{ls}");
}

#[test]
fn aws_cli_one_gigabyte_multipart_round_trip() {
    let s = Server::start();
    s.aws_ok(&["s3", "mb", "s3://big"]);
    let dir = s.scratch("big");
    let src = dir.join("1g.bin");
    {
        // 1 GiB of pseudo-random data, written in 8 MiB pieces (no 1 GiB buffer in the test either).
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        for i in 0..128u64 {
            f.write_all(&pseudo_random(8 << 20, i + 1)).unwrap();
        }
        f.flush().unwrap();
    }
    s.aws_ok(&[
        "s3",
        "cp",
        "--no-progress",
        src.to_str().unwrap(),
        "s3://big/1g.bin",
    ]);
    let head = s.aws_ok(&["s3api", "head-object", "--bucket", "big", "--key", "1g.bin"]);
    assert!(head.contains("\"ContentLength\": 1073741824"), "{head}");
    // aws cli uses 8 MiB parts: the ETag is md5-of-md5s with the part count.
    assert!(head.contains("-128\\\""), "multipart ETag expected: {head}");
    let dst = dir.join("1g.back");
    s.aws_ok(&[
        "s3",
        "cp",
        "--no-progress",
        "s3://big/1g.bin",
        dst.to_str().unwrap(),
    ]);
    assert!(files_equal(&src, &dst), "downloaded 1 GB file differs");
    s.aws_ok(&["s3", "rm", "s3://big/1g.bin"]);
}

fn files_equal(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        n
    }
}

fn assert_trees_equal(a: &std::path::Path, b: &std::path::Path) {
    let out = run({
        let mut c = Command::new("diff");
        c.arg("-r").arg(a).arg(b);
        c
    });
    assert_ok(&out, "diff -r of synced trees");
}

/// The same bytes uploaded again (a second full backup) get their MD5 from the server's memo of earlier
/// streams instead of being hashed again (store::md5_lanes): the ETags must still be exactly the MD5 (single
/// PUT) and the md5-of-md5s (multipart) of what was sent, also for a copy that differs in one byte.
#[test]
fn repeated_uploads_keep_exact_etags() {
    use md5::{Digest, Md5};
    let s = Server::start();
    s.aws_ok(&["s3", "mb", "s3://fulls"]);
    let dir = s.scratch("fulls");
    let original = pseudo_random(40 << 20, 77);
    let mut changed = original.clone();
    changed[(20 << 20) + 12_345] ^= 0x5a;
    let single_etag = |body: &[u8]| hex::encode(Md5::digest(body));
    let multipart_etag = |body: &[u8]| {
        // aws cli: 8 MiB parts.
        let parts: Vec<&[u8]> = body.chunks(8 << 20).collect();
        let mut all = Md5::new();
        for p in &parts {
            all.update(Md5::digest(p));
        }
        format!("{}-{}", hex::encode(all.finalize()), parts.len())
    };
    let etag_of = |key: &str| {
        let head = s.aws_ok(&["s3api", "head-object", "--bucket", "fulls", "--key", key]);
        let v: serde_json::Value = serde_json::from_str(&head).expect("head-object JSON");
        v["ETag"]
            .as_str()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    };
    for (name, body) in [
        ("night-1", &original),
        ("night-2", &original),
        ("night-3", &changed),
        ("night-4", &original),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        // Single PUT (put-object does not split) and multipart (cp splits at 8 MiB).
        s.aws_ok(&[
            "s3api",
            "put-object",
            "--bucket",
            "fulls",
            "--key",
            &format!("{name}.single"),
            "--body",
            path.to_str().unwrap(),
        ]);
        s.aws_ok(&[
            "s3",
            "cp",
            "--no-progress",
            path.to_str().unwrap(),
            &format!("s3://fulls/{name}.multi"),
        ]);
        assert_eq!(
            etag_of(&format!("{name}.single")),
            single_etag(body),
            "{name} single PUT"
        );
        assert_eq!(
            etag_of(&format!("{name}.multi")),
            multipart_etag(body),
            "{name} multipart"
        );
        let back = dir.join(format!("{name}.back"));
        s.aws_ok(&[
            "s3",
            "cp",
            "--no-progress",
            &format!("s3://fulls/{name}.multi"),
            back.to_str().unwrap(),
        ]);
        assert!(std::fs::read(&back).unwrap() == *body, "{name} reads back");
    }
}
