//! Checks in front of s3s for what s3s 0.14 does not do itself:
//!
//! - SigV2, in header (`Authorization: AWS ...`) and query (`?AWSAccessKeyId=..&Signature=..`) form, is
//!   refused: only SigV4 is accepted.
//! - Presigned URLs: `X-Amz-Expires` is capped (7 days, or less by config); a presigned request carrying
//!   `x-amz-*` headers that are not in `X-Amz-SignedHeaders` is refused (they could change what the URL's
//!   owner allowed, e.g. `x-amz-copy-source`).
//! - Body sizes: object bodies up to `max_object_body`, everything else (XML) up to `max_xml_body`, both by
//!   `Content-Length` up front and by counting (bodies without a length).
//! - Content-MD5 / x-amz-checksum-* on XML requests (DeleteObjects carries CRC32 instead of Content-MD5
//!   from the newest SDKs): s3s parses the XML before the operation sees it, so they are verified here.
//! - POST-object (browser form uploads) is refused: s3s would buffer the whole file in memory.
//! - Concurrency: at most `max_concurrent_requests` requests are served at once (the slot is held until the
//!   response body is sent); others wait (backpressure), and beyond `max_queued_requests` or
//!   `queue_timeout` they get 503 SlowDown, which every S3 client retries.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method};
use s3s::{S3Error, S3ErrorCode, s3_error};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::checksum::{Hasher, Wanted, check_content_md5, parse_content_md5};
use crate::config::LimitsConfig;

pub struct Hardening {
    limits: LimitsConfig,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Hardening {
    pub fn new(limits: LimitsConfig) -> Arc<Hardening> {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1)));
        Arc::new(Hardening {
            limits,
            slots,
            waiting: AtomicUsize::new(0),
        })
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, S3Error> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Decrements on drop, so a client that gives up while waiting does not leak a queue place.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if queued >= self.limits.max_queued_requests {
            return Err(slow_down());
        }
        let wait = Duration::from_secs(self.limits.queue_timeout_secs);
        let r = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        match r {
            Ok(Ok(p)) => Ok(p),
            _ => Err(slow_down()),
        }
    }
}

fn slow_down() -> S3Error {
    s3_error!(SlowDown, "Please reduce your request rate.")
}

/// What kind of body a request may carry, decided from method and query alone (the path's meaning depends
/// on virtual hosting, which s3s resolves later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// PutObject / UploadPart (or a bucket-level PUT such as CreateBucket, which is capped by s3s's XML limit).
    Object,
    /// XML or nothing.
    Xml,
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn unsupported_auth() -> S3Error {
    s3_error!(
        InvalidRequest,
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
    )
}

/// The checks that need only the request head. Returns the body kind and its size limit.
pub fn check_head(
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    limits: &LimitsConfig,
) -> Result<(BodyKind, u64), S3Error> {
    if let Some(a) = header(headers, "authorization")
        && (a.starts_with("AWS ") || a == "AWS")
    {
        return Err(unsupported_auth());
    }
    let q = query_pairs(query);
    let has = |k: &str| q.iter().any(|(n, _)| n == k);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if has("Signature") && !has("X-Amz-Signature") && (has("AWSAccessKeyId") || has("Expires")) {
        return Err(unsupported_auth());
    }
    if has("X-Amz-Signature") || has("X-Amz-Algorithm") || has("X-Amz-Credential") {
        let max = limits.max_presign_expiry_secs;
        let expires = get("X-Amz-Expires").and_then(|v| v.parse::<u64>().ok());
        match expires {
            Some(e) if (1..=max).contains(&e) => {}
            Some(_) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::AuthorizationQueryParametersError,
                    format!("X-Amz-Expires must be less than a week (in seconds) that is {max}"),
                ));
            }
            None => {
                return Err(S3Error::with_message(
                    S3ErrorCode::AuthorizationQueryParametersError,
                    "X-Amz-Expires must be a number of seconds",
                ));
            }
        }
        let signed: Vec<String> = get("X-Amz-SignedHeaders")
            .unwrap_or("")
            .split(';')
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        for name in headers.keys() {
            let n = name.as_str();
            // x-amz-content-sha256 is how a presigned PUT declares its body hash; s3s verifies it.
            if n.starts_with("x-amz-")
                && n != "x-amz-content-sha256"
                && !signed.iter().any(|s| s == n)
            {
                return Err(s3_error!(
                    AccessDenied,
                    "There were headers present in the request which were not signed"
                ));
            }
        }
    }
    if method == Method::POST
        && header(headers, "content-type").is_some_and(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
    {
        return Err(s3_error!(
            NotImplemented,
            "POST object uploads (HTML forms) are not supported"
        ));
    }
    // PUT without a sub-resource (or with partNumber/uploadId) carries an object body.
    let object_query = |k: &str| {
        matches!(k, "partNumber" | "uploadId") || k.to_ascii_lowercase().starts_with("x-amz-")
    };
    let (kind, limit) = if method == Method::PUT && q.iter().all(|(k, _)| object_query(k)) {
        (BodyKind::Object, limits.max_object_body)
    } else {
        (BodyKind::Xml, limits.max_xml_body as u64)
    };
    let decoded =
        header(headers, "x-amz-decoded-content-length").and_then(|v| v.parse::<u64>().ok());
    let length = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    let too_big = || match kind {
        BodyKind::Object => s3_error!(
            EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size."
        ),
        BodyKind::Xml => s3_error!(MaxMessageLengthExceeded, "Your request was too big."),
    };
    if decoded.is_some_and(|d| d > limit) {
        return Err(too_big());
    }
    // aws-chunked framing adds ~90 bytes per chunk (signed) on top of the decoded length.
    let raw_limit = if decoded.is_some() {
        limit + limit / 64 + 65_536
    } else {
        limit
    };
    if length.is_some_and(|l| l > raw_limit) {
        return Err(too_big());
    }
    Ok((kind, raw_limit))
}

/// Verifies Content-MD5 / one x-amz-checksum-* header over a small, fully read body.
pub fn check_small_body(
    headers: &HeaderMap,
    body: &[u8],
    require_digest: bool,
) -> Result<(), S3Error> {
    let md5 = header(headers, "content-md5")
        .map(parse_content_md5)
        .transpose()?;
    let wanted = Wanted::from_headers(headers)?;
    if require_digest && md5.is_none() && wanted.header.is_none() && wanted.trailer.is_none() {
        return Err(s3_error!(
            InvalidRequest,
            "Missing required header for this request: Content-MD5"
        ));
    }
    if let Some(m) = md5 {
        let actual: [u8; 16] = {
            use md5::Digest;
            md5::Md5::digest(body).into()
        };
        check_content_md5(Some(&m), &actual)?;
    }
    if wanted.header.is_some() {
        let mut h = Hasher::new(&wanted.algos());
        h.update(body);
        // Only the header value is checked here; no trailers on a plain body.
        let only_header = Wanted {
            header: wanted.header.clone(),
            trailer: None,
            compute: None,
        };
        only_header.verify(&h.finish(), None)?;
    }
    Ok(())
}

fn s3_response(e: S3Error) -> Response {
    match e.to_http_response() {
        Ok(r) => r.map(Body::new),
        Err(_) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// The axum middleware.
pub async fn layer(State(h): State<Arc<Hardening>>, req: Request, next: Next) -> Response {
    let (kind, limit) = match check_head(req.method(), req.uri().query(), req.headers(), &h.limits)
    {
        Ok(x) => x,
        Err(e) => return s3_response(e),
    };
    let permit = match h.slot().await {
        Ok(p) => p,
        Err(e) => return s3_response(e),
    };
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let streaming =
        header(&parts.headers, "x-amz-content-sha256").is_some_and(|v| v.starts_with("STREAMING-"));
    let digest_given = parts.headers.contains_key("content-md5")
        || parts
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("x-amz-checksum-") && k != "x-amz-checksum-algorithm");
    let is_delete = parts.method == Method::POST
        && query_pairs(parts.uri.query())
            .iter()
            .any(|(k, _)| k == "delete");
    let body = if kind == BodyKind::Xml
        && parts.method == Method::POST
        && !streaming
        && (digest_given || is_delete)
    {
        // Small by the limit above: read it, verify, hand the bytes on.
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let msg = e.to_string();
                return s3_response(if msg.contains("length limit") {
                    s3_error!(MaxMessageLengthExceeded, "Your request was too big.")
                } else {
                    s3_error!(IncompleteBody, "The request body ended early")
                });
            }
        };
        if let Err(e) = check_small_body(&parts.headers, &bytes, is_delete) {
            return s3_response(e);
        }
        Body::from(bytes)
    } else {
        Body::new(limited)
    };
    let resp = next.run(Request::from_parts(parts, body)).await;
    resp.map(|b| {
        Body::new(Held {
            inner: b,
            _permit: permit,
        })
    })
}

/// A response body that holds the request's concurrency slot until it is sent (or dropped).
struct Held {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    fn code(r: Result<(BodyKind, u64), S3Error>) -> String {
        r.err()
            .map(|e| e.code().as_str().to_owned())
            .unwrap_or_default()
    }

    const PRESIGN: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";

    #[test]
    fn sigv2_is_refused_in_both_forms() {
        let l = LimitsConfig::default();
        let r = check_head(
            &Method::GET,
            None,
            &h(&[("authorization", "AWS AKID:c2lnbmF0dXJl")]),
            &l,
        );
        assert_eq!(code(r), "InvalidRequest");
        let r = check_head(
            &Method::GET,
            Some("AWSAccessKeyId=AKID&Expires=1700000000&Signature=abc%3D"),
            &HeaderMap::new(),
            &l,
        );
        assert_eq!(code(r), "InvalidRequest");
        let v4 = "AWS4-HMAC-SHA256 Credential=AK/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc";
        assert!(check_head(&Method::GET, None, &h(&[("authorization", v4)]), &l).is_ok());
    }

    #[test]
    fn presign_expiry_is_capped_at_a_week() {
        let l = LimitsConfig::default();
        let ok = format!("{PRESIGN}&X-Amz-Expires=604800");
        assert!(check_head(&Method::GET, Some(&ok), &HeaderMap::new(), &l).is_ok());
        let long = format!("{PRESIGN}&X-Amz-Expires=604801");
        assert_eq!(
            code(check_head(&Method::GET, Some(&long), &HeaderMap::new(), &l)),
            "AuthorizationQueryParametersError"
        );
        let missing = PRESIGN.to_string();
        assert_eq!(
            code(check_head(
                &Method::GET,
                Some(&missing),
                &HeaderMap::new(),
                &l
            )),
            "AuthorizationQueryParametersError"
        );
    }

    #[test]
    fn presign_with_unsigned_amz_headers_is_refused() {
        let l = LimitsConfig::default();
        let q = format!("{PRESIGN}&X-Amz-Expires=60");
        let r = check_head(
            &Method::PUT,
            Some(&q),
            &h(&[("x-amz-copy-source", "/other/key")]),
            &l,
        );
        assert_eq!(code(r), "AccessDenied");
        let signed = q.replace(
            "X-Amz-SignedHeaders=host",
            "X-Amz-SignedHeaders=host%3Bx-amz-meta-a",
        );
        assert!(
            check_head(
                &Method::PUT,
                Some(&signed),
                &h(&[("x-amz-meta-a", "1")]),
                &l
            )
            .is_ok()
        );
        assert!(
            check_head(
                &Method::PUT,
                Some(&q),
                &h(&[("content-type", "text/plain")]),
                &l
            )
            .is_ok()
        );
    }

    #[test]
    fn body_limits() {
        let l = LimitsConfig::default();
        let big = (6u64 << 30).to_string();
        assert_eq!(
            code(check_head(
                &Method::PUT,
                None,
                &h(&[("content-length", &big)]),
                &l
            )),
            "EntityTooLarge"
        );
        let q = Some("partNumber=1&uploadId=abc");
        assert_eq!(
            check_head(&Method::PUT, q, &h(&[("content-length", "1000")]), &l)
                .unwrap()
                .0,
            BodyKind::Object
        );
        let r = check_head(
            &Method::POST,
            Some("delete"),
            &h(&[("content-length", &(10u64 << 20).to_string())]),
            &l,
        );
        assert_eq!(code(r), "MaxMessageLengthExceeded");
        let r = check_head(
            &Method::PUT,
            Some("tagging"),
            &h(&[("content-length", &(10u64 << 20).to_string())]),
            &l,
        );
        assert_eq!(code(r), "MaxMessageLengthExceeded");
        let chunked = h(&[
            ("content-length", "100"),
            ("x-amz-decoded-content-length", &big),
        ]);
        assert_eq!(
            code(check_head(&Method::PUT, None, &chunked, &l)),
            "EntityTooLarge"
        );
    }

    #[tokio::test]
    async fn concurrency_slots_queue_then_slow_down() {
        let limits = LimitsConfig {
            max_concurrent_requests: 1,
            max_queued_requests: 1,
            queue_timeout_secs: 1,
            ..LimitsConfig::default()
        };
        let h = Hardening::new(limits);
        let first = h.slot().await.unwrap();
        // One may wait; it gets the slot as soon as the first is released (backpressure, not an error).
        let h2 = h.clone();
        let waiter = tokio::spawn(async move { h2.slot().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The queue is full: a third is told to slow down at once.
        let third = h.slot().await.unwrap_err();
        assert_eq!(third.code().as_str(), "SlowDown");
        assert_eq!(third.status_code().map(|c| c.as_u16()), Some(503));
        drop(first);
        waiter.await.unwrap().unwrap();
        // Waiting longer than the timeout is SlowDown too.
        let held = h.slot().await.unwrap();
        assert_eq!(h.slot().await.unwrap_err().code().as_str(), "SlowDown");
        drop(held);
    }

    #[test]
    fn post_object_forms_are_refused() {
        let l = LimitsConfig::default();
        let r = check_head(
            &Method::POST,
            None,
            &h(&[("content-type", "multipart/form-data; boundary=x")]),
            &l,
        );
        assert_eq!(code(r), "NotImplemented");
    }

    #[test]
    fn xml_digests() {
        let body = b"<Delete><Object><Key>a</Key></Object></Delete>";
        let md5 = {
            use md5::Digest;
            super::super::checksum::b64encode(&md5::Md5::digest(body))
        };
        assert!(check_small_body(&h(&[("content-md5", &md5)]), body, true).is_ok());
        let e = check_small_body(
            &h(&[("content-md5", "XrY7u+Ae7tCTyyK7j1rNww==")]),
            body,
            true,
        )
        .unwrap_err();
        assert_eq!(e.code().as_str(), "BadDigest");
        let e = check_small_body(&HeaderMap::new(), body, true).unwrap_err();
        assert_eq!(e.code().as_str(), "InvalidRequest");
        let mut hs = Hasher::new(&[super::super::checksum::Algo::Crc32]);
        hs.update(body);
        let crc = hs.finish().into_values().next().unwrap();
        assert!(check_small_body(&h(&[("x-amz-checksum-crc32", &crc)]), body, true).is_ok());
        let e =
            check_small_body(&h(&[("x-amz-checksum-crc32", "AAAAAA==")]), body, true).unwrap_err();
        assert_eq!(e.code().as_str(), "BadDigest");
    }
}
