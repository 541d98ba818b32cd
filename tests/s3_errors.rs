//! Error paths against a real `cairn serve`, each answered with the right S3 error code and nothing stored:
//! bad signature, SigV2, expired / over-long / tampered presigns, unknown bucket or key, wrong Content-MD5,
//! wrong checksum, x-amz-content-sha256 mismatch, truncated body, client disconnect mid-upload. The checks
//! live in tests/clients/error_paths.py (boto3 plus raw SigV4-signed sockets).

mod common;

use common::*;

#[test]
fn error_paths_answer_the_right_code_and_store_nothing() {
    let mut s = Server::start();
    let out = s.python_ok("error_paths.py", &[]);
    assert!(out.contains("OK "), "{out}");
    eprintln!("{}", out.trim());
    assert!(s.alive(), "the server died during the error paths");
}

#[test]
fn first_start_generates_root_credentials_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || {
        let mut child = Command::new(cairn_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .env_remove("CAIRN_ROOT_ACCESS_KEY")
            .env_remove("CAIRN_ROOT_SECRET_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("cairn: listening on") {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        text
    };
    let first = start();
    assert!(first.contains("generated root credentials"), "{first}");
    let file = data.join("root-credentials.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored = std::fs::read_to_string(&file).unwrap();
    let secret_line = first
        .lines()
        .find(|l| l.trim_start().starts_with("secret key:"))
        .unwrap();
    let secret = secret_line.split(':').nth(1).unwrap().trim();
    assert!(stored.contains(secret));
    let second = start();
    assert!(
        !second.contains("generated") && !second.contains(secret),
        "printed twice:\n{second}"
    );
}

#[test]
fn bad_config_is_explained_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n[storage]\nk = 4\nm = 2\ndisks = [\"/tmp/a\"]\nbogus = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(cairn_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus"), "{err}");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n[storage]\nk = 4\nm = 2\ndisks = [\"/tmp/a\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(cairn_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs at least 6"), "{err}");
}

/// hyper bounds a request head by the connection's read buffer (`HTTP1_READ_BUFFER_MAX` in src/server.rs,
/// 1 MiB): a bigger head is refused with 431 before any of it is parsed as S3, and the server goes on.
#[test]
fn an_oversized_request_head_is_refused_and_the_server_goes_on() {
    let mut s = Server::start();
    let filler = "a".repeat(3 << 19); // 1.5 MiB in one header line
    let head =
        format!("GET /bucket/key HTTP/1.1\r\nHost: 127.0.0.1\r\nx-amz-meta-big: {filler}\r\n\r\n");
    let answer = raw_http(s.port, head.as_bytes(), false);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 1.5 MiB head: {:?}",
        &answer[..answer.len().min(200)]
    );
    assert!(s.alive(), "the server died on an oversized head");
    // An ordinary request on a new connection is still served (unsigned: refused by S3 auth, not by HTTP).
    let answer = raw_http(
        s.port,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        false,
    );
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "{:?}",
        &answer[..answer.len().min(200)]
    );
}
