//! Small helpers shared by the operation modules: blocking store calls, DTO conversions, HTTP conditions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use s3s::dto::{ETag, ETagCondition, Metadata, Timestamp, TimestampFormat};
use s3s::{S3Error, S3Result, s3_error};

use super::CairnS3;
use super::error::{internal, store_error};
use crate::store::{ObjectInfo, ObjectMeta, PutCondition, Store, StoreError};

impl CairnS3 {
    /// Runs a (blocking) store call off the async runtime.
    pub(super) async fn run<T, F>(&self, f: F) -> S3Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Store>) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(internal)?
            .map_err(store_error)
    }
}

/// Drops (aborts) an unfinished upload off the runtime: abort may touch the disks.
pub fn discard<T: Send + 'static>(x: T) {
    tokio::task::spawn_blocking(move || drop(x));
}

pub fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// `"abc"` -> ETag::Strong("abc"); ETags in the store are kept quoted, as S3 returns them.
pub fn etag(quoted: &str) -> ETag {
    ETag::Strong(unquote(quoted).to_owned())
}

pub fn unquote(s: &str) -> &str {
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s)
}

pub fn quote(s: &str) -> String {
    format!("\"{}\"", unquote(s))
}

fn etag_matches(cond: &ETagCondition, current: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == unquote(current),
    }
}

/// Standard headers kept with an object (names as stored in `ObjectMeta::headers`).
pub struct StdHeaders {
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub expires: Option<Timestamp>,
}

pub fn http_date(t: &Timestamp) -> Option<String> {
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).ok()?;
    String::from_utf8(buf).ok()
}

impl StdHeaders {
    pub fn into_map(self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("cache-control", self.cache_control);
        put("content-disposition", self.content_disposition);
        put("content-encoding", self.content_encoding);
        put("content-language", self.content_language);
        put("expires", self.expires.as_ref().and_then(http_date));
        m
    }

    pub fn from_map(m: &BTreeMap<String, String>) -> StdHeaders {
        StdHeaders {
            cache_control: m.get("cache-control").cloned(),
            content_disposition: m.get("content-disposition").cloned(),
            content_encoding: m.get("content-encoding").cloned(),
            content_language: m.get("content-language").cloned(),
            expires: m
                .get("expires")
                .and_then(|v| Timestamp::parse(TimestampFormat::HttpDate, v).ok()),
        }
    }
}

pub fn user_meta(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

pub fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    if m.is_empty() {
        None
    } else {
        Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

pub fn new_meta(
    content_type: Option<String>,
    headers: StdHeaders,
    meta: Option<Metadata>,
) -> ObjectMeta {
    ObjectMeta {
        etag: None,
        content_type,
        headers: headers.into_map(),
        user_meta: user_meta(meta),
        checksums: BTreeMap::new(),
    }
}

/// `If-None-Match: *` / `If-Match: "etag"` on a write.
pub fn put_condition(
    if_match: Option<ETagCondition>,
    if_none_match: Option<ETagCondition>,
) -> S3Result<PutCondition> {
    match (if_match, if_none_match) {
        (None, None) => Ok(PutCondition::None),
        (None, Some(ETagCondition::Any)) => Ok(PutCondition::IfNoneMatchAny),
        (Some(ETagCondition::ETag(e)), None) => Ok(PutCondition::IfMatch(quote(e.value()))),
        (None, Some(ETagCondition::ETag(_))) => Err(s3_error!(
            NotImplemented,
            "If-None-Match on a write only supports '*'"
        )),
        (Some(ETagCondition::Any), None) => Err(s3_error!(
            NotImplemented,
            "If-Match on a write needs an ETag"
        )),
        (Some(_), Some(_)) => Err(s3_error!(
            NotImplemented,
            "If-Match and If-None-Match cannot be combined"
        )),
    }
}

/// Read conditions (RFC 9110 §13.2.2 order, as S3 evaluates them). `copy` turns 304 into 412, as
/// CopyObject's `x-amz-copy-source-if-*` do.
pub struct ReadConditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<Timestamp>,
    pub if_unmodified_since: Option<Timestamp>,
}

fn secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

impl ReadConditions {
    pub fn check(&self, info: &ObjectInfo, copy: bool) -> S3Result<()> {
        let modified = i64::try_from(info.created_unix_ms / 1000).unwrap_or(i64::MAX);
        let failed = || {
            s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            )
        };
        let not_modified = || {
            if copy {
                failed()
            } else {
                S3Error::new(s3s::S3ErrorCode::NotModified)
            }
        };
        if let Some(c) = &self.if_match {
            if !etag_matches(c, info.etag()) {
                return Err(failed());
            }
        } else if let Some(t) = &self.if_unmodified_since
            && modified > secs(t)
        {
            return Err(failed());
        }
        if let Some(c) = &self.if_none_match {
            if etag_matches(c, info.etag()) {
                return Err(not_modified());
            }
        } else if let Some(t) = &self.if_modified_since
            && modified <= secs(t)
        {
            return Err(not_modified());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(etag: &str, ms: u64) -> ObjectInfo {
        ObjectInfo {
            bucket: "b".into(),
            key: "k".into(),
            size: 1,
            seq: 1,
            created_unix_ms: ms,
            meta: ObjectMeta {
                etag: Some(etag.into()),
                ..Default::default()
            },
            part_sizes: vec![1],
        }
    }

    fn cond(s: &str) -> ETagCondition {
        ETagCondition::parse_http_header(s.as_bytes()).unwrap()
    }

    #[test]
    fn conditions_follow_rfc_order() {
        let i = info("\"abc\"", 10_000);
        let none = ReadConditions {
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_unmodified_since: None,
        };
        assert!(none.check(&i, false).is_ok());
        let m = ReadConditions {
            if_match: Some(cond("\"abc\"")),
            ..none_c()
        };
        assert!(m.check(&i, false).is_ok());
        let m = ReadConditions {
            if_match: Some(cond("\"xyz\"")),
            ..none_c()
        };
        assert_eq!(
            m.check(&i, false).unwrap_err().code().as_str(),
            "PreconditionFailed"
        );
        let n = ReadConditions {
            if_none_match: Some(cond("\"abc\"")),
            ..none_c()
        };
        assert_eq!(
            n.check(&i, false).unwrap_err().code().as_str(),
            "NotModified"
        );
        assert_eq!(
            n.check(&i, true).unwrap_err().code().as_str(),
            "PreconditionFailed"
        );
        let later = timestamp(20_000);
        let earlier = timestamp(5_000);
        let ims = ReadConditions {
            if_modified_since: Some(later.clone()),
            ..none_c()
        };
        assert_eq!(
            ims.check(&i, false).unwrap_err().code().as_str(),
            "NotModified"
        );
        let ims = ReadConditions {
            if_modified_since: Some(earlier.clone()),
            ..none_c()
        };
        assert!(ims.check(&i, false).is_ok());
        let ius = ReadConditions {
            if_unmodified_since: Some(earlier),
            ..none_c()
        };
        assert_eq!(
            ius.check(&i, false).unwrap_err().code().as_str(),
            "PreconditionFailed"
        );
        // If-Match that holds overrides a failing If-Unmodified-Since (S3 and RFC agree).
        let both = ReadConditions {
            if_match: Some(cond("\"abc\"")),
            if_unmodified_since: Some(timestamp(1)),
            ..none_c()
        };
        assert!(both.check(&i, false).is_ok());
    }

    fn none_c() -> ReadConditions {
        ReadConditions {
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_unmodified_since: None,
        }
    }

    #[test]
    fn put_conditions() {
        assert_eq!(
            put_condition(None, Some(ETagCondition::Any)).unwrap(),
            PutCondition::IfNoneMatchAny
        );
        assert_eq!(
            put_condition(Some(cond("\"e\"")), None).unwrap(),
            PutCondition::IfMatch("\"e\"".into())
        );
        assert!(put_condition(None, Some(cond("\"e\""))).is_err());
    }

    #[test]
    fn std_headers_round_trip() {
        let h = StdHeaders {
            cache_control: Some("no-cache".into()),
            content_disposition: None,
            content_encoding: Some("gzip".into()),
            content_language: None,
            expires: Some(timestamp(1_700_000_000_000)),
        };
        let m = h.into_map();
        let back = StdHeaders::from_map(&m);
        assert_eq!(back.cache_control.as_deref(), Some("no-cache"));
        assert_eq!(back.expires, Some(timestamp(1_700_000_000_000)));
    }
}
