//! Integrity checks that s3s leaves to the implementation: Content-MD5 (InvalidDigest / BadDigest) and the
//! flexible checksums `x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}`, given as a header or, with
//! aws-chunked bodies, as a trailer named by `x-amz-trailer`. Verified values are stored with the object and
//! echoed by GET/HEAD in checksum mode.
//!
//! Everything here is pure: [`Wanted`] is parsed from headers, a [`Hasher`] runs over the body (on the
//! blocking side of the upload), and [`Wanted::verify`] compares.

use std::collections::BTreeMap;

use hyper::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algo {
    pub const ALL: [Algo; 5] = [
        Algo::Crc32,
        Algo::Crc32c,
        Algo::Crc64Nvme,
        Algo::Sha1,
        Algo::Sha256,
    ];

    /// Lowercase name, as stored in `ObjectMeta::checksums`.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "crc32",
            Algo::Crc32c => "crc32c",
            Algo::Crc64Nvme => "crc64nvme",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }

    pub fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Accepts `CRC32`, `crc32`, `x-amz-checksum-crc32`, ...
    pub fn parse(s: &str) -> Option<Algo> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("x-amz-checksum-").unwrap_or(&s);
        Algo::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn digest_len(self) -> usize {
        match self {
            Algo::Crc32 | Algo::Crc32c => 4,
            Algo::Crc64Nvme => 8,
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Algo::Crc32 => "CRC32",
            Algo::Crc32c => "CRC32C",
            Algo::Crc64Nvme => "CRC64NVME",
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
        }
    }
}

fn b64decode(s: &str) -> Option<Vec<u8>> {
    base64_simd::STANDARD.decode_to_vec(s.trim()).ok()
}

pub fn b64encode(b: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(b)
}

/// A checksum value is well formed if it is base64 of exactly the algorithm's digest length.
fn check_format(algo: Algo, value: &str) -> S3Result<()> {
    match b64decode(value) {
        Some(d) if d.len() == algo.digest_len() => Ok(()),
        _ => Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            format!("Value for {} header is invalid.", algo.header()),
        )),
    }
}

/// Parses `Content-MD5`: base64 of 16 bytes, else InvalidDigest.
pub fn parse_content_md5(value: &str) -> S3Result<[u8; 16]> {
    b64decode(value)
        .and_then(|d| <[u8; 16]>::try_from(d.as_slice()).ok())
        .ok_or_else(|| s3_error!(InvalidDigest, "The Content-MD5 you specified is not valid."))
}

pub fn check_content_md5(expected: Option<&[u8; 16]>, actual: &[u8; 16]) -> S3Result<()> {
    match expected {
        Some(e) if e != actual => Err(s3_error!(
            BadDigest,
            "The Content-MD5 you specified did not match what we received."
        )),
        _ => Ok(()),
    }
}

/// The checksums a request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Value given in a header (verified against the body).
    pub header: Option<(Algo, String)>,
    /// Algorithm whose value arrives as a trailer.
    pub trailer: Option<Algo>,
    /// Algorithm named only by `x-amz-sdk-checksum-algorithm` (computed and stored, nothing to verify).
    pub compute: Option<Algo>,
}

impl Wanted {
    pub fn from_headers(h: &HeaderMap) -> S3Result<Wanted> {
        let mut w = Wanted::default();
        for algo in Algo::ALL {
            if let Some(v) = h.get(algo.header()) {
                let v = v.to_str().map_err(|_| invalid_header(algo))?;
                check_format(algo, v)?;
                if w.header.is_some() {
                    return Err(s3_error!(
                        InvalidRequest,
                        "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
                    ));
                }
                w.header = Some((algo, v.trim().to_owned()));
            }
        }
        if let Some(t) = h.get("x-amz-trailer") {
            let t = t.to_str().unwrap_or_default();
            // Only checksum trailers exist today; anything else is ignored like S3 ignores unknown trailers.
            for name in t.split(',') {
                if let Some(a) = Algo::parse(name).filter(|_| {
                    name.trim()
                        .to_ascii_lowercase()
                        .starts_with("x-amz-checksum-")
                }) {
                    if w.header.is_some() || w.trailer.is_some() {
                        return Err(s3_error!(
                            InvalidRequest,
                            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
                        ));
                    }
                    w.trailer = Some(a);
                }
            }
        }
        let sdk = h
            .get("x-amz-sdk-checksum-algorithm")
            .or_else(|| h.get("x-amz-checksum-algorithm"));
        if let Some(v) = sdk {
            let v = v.to_str().unwrap_or_default();
            let a = Algo::parse(v).ok_or_else(|| {
                S3Error::with_message(
                    S3ErrorCode::InvalidRequest,
                    format!("Checksum algorithm {v:?} is not supported"),
                )
            })?;
            if w.header.is_none() && w.trailer.is_none() {
                w.compute = Some(a);
            }
        }
        Ok(w)
    }

    pub fn algos(&self) -> Vec<Algo> {
        let mut v: Vec<Algo> = self
            .header
            .iter()
            .map(|(a, _)| *a)
            .chain(self.trailer)
            .chain(self.compute)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Compares what was computed over the body with what the request claimed; returns the verified values
    /// to store, by lowercase algorithm name. `trailers` are the aws-chunked trailing headers, if any.
    pub fn verify(
        &self,
        computed: &BTreeMap<Algo, String>,
        trailers: Option<&HeaderMap>,
    ) -> S3Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let get = |a: Algo| {
            computed
                .get(&a)
                .cloned()
                .ok_or_else(|| s3_error!(InternalError, "checksum not computed"))
        };
        if let Some((a, v)) = &self.header {
            let c = get(*a)?;
            if !same_digest(&c, v) {
                return Err(mismatch(*a));
            }
            out.insert(a.name().to_owned(), c);
        }
        if let Some(a) = self.trailer {
            let v = trailers
                .and_then(|t| t.get(a.header()))
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    S3Error::with_message(
                        S3ErrorCode::InvalidRequest,
                        format!("The trailer {} is missing", a.header()),
                    )
                })?;
            check_format(a, v)?;
            let c = get(a)?;
            if !same_digest(&c, v) {
                return Err(mismatch(a));
            }
            out.insert(a.name().to_owned(), c);
        }
        if let Some(a) = self.compute {
            out.insert(a.name().to_owned(), get(a)?);
        }
        Ok(out)
    }
}

fn same_digest(a: &str, b: &str) -> bool {
    matches!((b64decode(a), b64decode(b)), (Some(x), Some(y)) if x == y)
}

fn invalid_header(a: Algo) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::InvalidRequest,
        format!("Value for {} header is invalid.", a.header()),
    )
}

fn mismatch(a: Algo) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::BadDigest,
        format!(
            "The {} you specified did not match the calculated checksum.",
            a.upper()
        ),
    )
}

/// Runs the wanted algorithms over a body, piece by piece.
pub struct Hasher {
    inner: ChecksumHasher,
    algos: Vec<Algo>,
}

impl Hasher {
    pub fn new(algos: &[Algo]) -> Hasher {
        let mut inner = ChecksumHasher::default();
        for a in algos {
            match a {
                Algo::Crc32 => inner.crc32 = Some(Crc32::new()),
                Algo::Crc32c => inner.crc32c = Some(Crc32c::new()),
                Algo::Crc64Nvme => inner.crc64nvme = Some(Crc64Nvme::new()),
                Algo::Sha1 => inner.sha1 = Some(Sha1::new()),
                Algo::Sha256 => inner.sha256 = Some(Sha256::new()),
            }
        }
        Hasher {
            inner,
            algos: algos.to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.algos.is_empty()
    }

    pub fn update(&mut self, data: &[u8]) {
        if !self.algos.is_empty() {
            self.inner.update(data);
        }
    }

    /// Base64 values by algorithm.
    pub fn finish(self) -> BTreeMap<Algo, String> {
        let c = self.inner.finalize();
        let mut out = BTreeMap::new();
        for (a, v) in [
            (Algo::Crc32, c.checksum_crc32),
            (Algo::Crc32c, c.checksum_crc32c),
            (Algo::Crc64Nvme, c.checksum_crc64nvme),
            (Algo::Sha1, c.checksum_sha1),
            (Algo::Sha256, c.checksum_sha256),
        ] {
            if let Some(v) = v {
                out.insert(a, v);
            }
        }
        out
    }
}

/// S3's composite ("checksum of checksums") value of a multipart object: the algorithm over the
/// concatenated raw part digests, base64, then `-N`.
pub fn composite(algo: Algo, part_values: &[String]) -> Option<String> {
    let mut h = Hasher::new(&[algo]);
    for v in part_values {
        let raw = b64decode(v).filter(|d| d.len() == algo.digest_len())?;
        h.update(&raw);
    }
    let v = h.finish().remove(&algo)?;
    Some(format!("{v}-{}", part_values.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn compute(algos: &[Algo], data: &[u8]) -> BTreeMap<Algo, String> {
        let mut h = Hasher::new(algos);
        // Split to prove incremental hashing equals one-shot.
        let (a, b) = data.split_at(data.len() / 3);
        h.update(a);
        h.update(b);
        h.finish()
    }

    #[test]
    fn known_values() {
        // Reference values for "hello world" (as AWS documents / boto3 computes them).
        let c = compute(&Algo::ALL, b"hello world");
        assert_eq!(c[&Algo::Crc32], "DUoRhQ==");
        assert_eq!(c[&Algo::Crc32c], "yZRlqg==");
        assert_eq!(c[&Algo::Sha1], "Kq5sNclPz7QV2+lfQIuc6R7oRu0=");
        assert_eq!(
            c[&Algo::Sha256],
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
        assert_eq!(c[&Algo::Crc64Nvme].len(), 12);
    }

    #[test]
    fn header_checksum_verified() {
        let w = Wanted::from_headers(&headers(&[("x-amz-checksum-crc32", "DUoRhQ==")])).unwrap();
        assert_eq!(w.algos(), vec![Algo::Crc32]);
        let ok = w
            .verify(&compute(&w.algos(), b"hello world"), None)
            .unwrap();
        assert_eq!(ok.get("crc32").map(String::as_str), Some("DUoRhQ=="));
        let bad = w
            .verify(&compute(&w.algos(), b"hello worle"), None)
            .unwrap_err();
        assert_eq!(bad.code().as_str(), "BadDigest");
    }

    #[test]
    fn malformed_values_are_invalid_requests() {
        for v in ["not base64!", "AAAA", "DUoRhQ==DUoRhQ=="] {
            let e = Wanted::from_headers(&headers(&[("x-amz-checksum-crc32", v)])).unwrap_err();
            assert_eq!(e.code().as_str(), "InvalidRequest", "{v}");
        }
        let e = Wanted::from_headers(&headers(&[
            ("x-amz-checksum-crc32", "DUoRhQ=="),
            ("x-amz-checksum-crc32c", "yZRlqg=="),
        ]))
        .unwrap_err();
        assert_eq!(e.code().as_str(), "InvalidRequest");
    }

    #[test]
    fn trailer_checksum_verified() {
        let w = Wanted::from_headers(&headers(&[("x-amz-trailer", "x-amz-checksum-crc64nvme")]))
            .unwrap();
        assert_eq!(w.trailer, Some(Algo::Crc64Nvme));
        let c = compute(&w.algos(), b"hello world");
        let good = headers(&[("x-amz-checksum-crc64nvme", c[&Algo::Crc64Nvme].as_str())]);
        assert!(w.verify(&c, Some(&good)).is_ok());
        let other = compute(&w.algos(), b"bye");
        let bad = headers(&[("x-amz-checksum-crc64nvme", other[&Algo::Crc64Nvme].as_str())]);
        assert_eq!(
            w.verify(&c, Some(&bad)).unwrap_err().code().as_str(),
            "BadDigest"
        );
        assert_eq!(
            w.verify(&c, None).unwrap_err().code().as_str(),
            "InvalidRequest"
        );
    }

    #[test]
    fn sdk_algorithm_alone_is_computed_and_stored() {
        let w =
            Wanted::from_headers(&headers(&[("x-amz-sdk-checksum-algorithm", "SHA256")])).unwrap();
        assert_eq!(w.compute, Some(Algo::Sha256));
        let out = w
            .verify(&compute(&w.algos(), b"hello world"), None)
            .unwrap();
        assert_eq!(
            out["sha256"],
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
    }

    #[test]
    fn content_md5() {
        // MD5("hello world") = 5eb63bbbe01eeed093cb22bb8f5acdc3
        let md5 = hex::decode("5eb63bbbe01eeed093cb22bb8f5acdc3").unwrap();
        let md5: [u8; 16] = md5.try_into().unwrap();
        let given = parse_content_md5("XrY7u+Ae7tCTyyK7j1rNww==").unwrap();
        assert!(check_content_md5(Some(&given), &md5).is_ok());
        assert_eq!(
            check_content_md5(Some(&[0; 16]), &md5)
                .unwrap_err()
                .code()
                .as_str(),
            "BadDigest"
        );
        assert_eq!(
            parse_content_md5("abc").unwrap_err().code().as_str(),
            "InvalidDigest"
        );
        assert_eq!(
            parse_content_md5("AAAA").unwrap_err().code().as_str(),
            "InvalidDigest"
        );
    }

    #[test]
    fn composite_of_parts() {
        let p1 = compute(&[Algo::Crc32], b"part one")[&Algo::Crc32].clone();
        let p2 = compute(&[Algo::Crc32], b"part two")[&Algo::Crc32].clone();
        let c = composite(Algo::Crc32, &[p1, p2]).unwrap();
        assert!(c.ends_with("-2"), "{c}");
    }
}
