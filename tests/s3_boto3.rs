//! boto3 (newest from pip, default settings: CRC32 checksums, aws-chunked trailers over HTTPS) against a
//! real `cairn serve`, over HTTP and over HTTPS with a test CA. The checks live in
//! tests/clients/boto3_suite.py.

mod common;

use common::*;

fn suite(s: &Server) {
    let out = s.python_ok("boto3_suite.py", &[]);
    assert!(out.contains("OK "), "{out}");
    eprintln!("{}", out.trim());
}

#[test]
fn boto3_over_http() {
    let s = Server::start();
    suite(&s);
}

#[test]
fn boto3_over_https_with_test_ca() {
    let s = Server::start_tls();
    assert!(
        s.endpoint.starts_with("https://127.0.0.1:"),
        "{}",
        s.endpoint
    );
    suite(&s);
}
