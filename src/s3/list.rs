//! ListObjectsV2 and ListObjects (V1). Both are one store page each: the store walks keys in byte order
//! from a marker, so a page costs the same at key 10 and at key 1,000,000.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::CairnS3;
use super::util::{etag, timestamp};
use crate::store::ListPage;

/// S3's `encoding-type=url`: everything but unreserved characters and '/' is percent-encoded.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, KEY_ENCODE).to_string()
}

/// Continuation tokens are opaque to clients: base64url of the key to continue after.
pub fn encode_token(marker: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(marker.as_bytes())
}

pub fn decode_token(token: &str) -> S3Result<String> {
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

fn max_keys(m: Option<i32>) -> S3Result<usize> {
    match m {
        None => Ok(1000),
        Some(n) if n < 0 => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "max-keys must be non-negative",
        )),
        Some(n) => Ok(usize::try_from(n).unwrap_or(1000).min(1000)),
    }
}

struct Encoder(bool);

impl Encoder {
    fn s(&self, v: String) -> String {
        if self.0 { url_encode(&v) } else { v }
    }
    fn o(&self, v: Option<String>) -> Option<String> {
        v.map(|v| self.s(v))
    }
}

fn encoder(e: Option<&EncodingType>) -> S3Result<Encoder> {
    match e.map(|e| e.as_str()) {
        None => Ok(Encoder(false)),
        Some(EncodingType::URL) => Ok(Encoder(true)),
        Some(other) => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("Invalid Encoding Method specified in Request: {other}"),
        )),
    }
}

fn contents(page: &ListPage, enc: &Encoder) -> (Vec<Object>, Vec<CommonPrefix>) {
    let objects = page
        .objects
        .iter()
        .map(|o| Object {
            key: Some(enc.s(o.key.clone())),
            e_tag: Some(etag(o.etag())),
            last_modified: Some(timestamp(o.created_unix_ms)),
            size: i64::try_from(o.size).ok(),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    let prefixes = page
        .common_prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(enc.s(p.clone())),
        })
        .collect();
    (objects, prefixes)
}

impl CairnS3 {
    async fn page(
        &self,
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        after: Option<String>,
        max: usize,
    ) -> S3Result<ListPage> {
        if max == 0 {
            let b = bucket.clone();
            self.run(move |s| s.head_bucket(&b)).await?;
            return Ok(ListPage::default());
        }
        self.run(move |s| {
            s.list_objects(
                &bucket,
                &prefix,
                delimiter.as_deref(),
                after.as_deref(),
                max,
            )
        })
        .await
    }

    pub(super) async fn list_objects_v2_impl(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        let enc = encoder(i.encoding_type.as_ref())?;
        let max = max_keys(i.max_keys)?;
        let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
        let after = match &i.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => i.start_after.clone().filter(|s| !s.is_empty()),
        };
        let prefix = i.prefix.clone().unwrap_or_default();
        let page = self
            .page(i.bucket.clone(), prefix, delimiter, after, max)
            .await?;
        let (objects, prefixes) = contents(&page, &enc);
        let key_count = i32::try_from(objects.len() + prefixes.len()).unwrap_or(i32::MAX);
        let next = if page.is_truncated {
            page.next_marker.as_deref().map(encode_token)
        } else {
            None
        };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(enc.s(i.prefix.unwrap_or_default())),
            delimiter: enc.o(i.delimiter),
            max_keys: i32::try_from(max).ok(),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            next_continuation_token: next,
            start_after: enc.o(i.start_after),
            is_truncated: Some(page.is_truncated),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    pub(super) async fn list_objects_impl(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        let enc = encoder(i.encoding_type.as_ref())?;
        let max = max_keys(i.max_keys)?;
        let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
        let after = i.marker.clone().filter(|m| !m.is_empty());
        let prefix = i.prefix.clone().unwrap_or_default();
        let page = self
            .page(i.bucket.clone(), prefix, delimiter, after, max)
            .await?;
        let (objects, prefixes) = contents(&page, &enc);
        // S3 sends NextMarker only with a delimiter; sending it always is allowed and saves clients guessing.
        let next_marker = if page.is_truncated {
            enc.o(page.next_marker.clone())
        } else {
            None
        };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: Some(enc.s(i.prefix.unwrap_or_default())),
            delimiter: enc.o(i.delimiter),
            marker: Some(enc.s(i.marker.unwrap_or_default())),
            max_keys: i32::try_from(max).ok(),
            is_truncated: Some(page.is_truncated),
            next_marker,
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_slashes_and_unreserved() {
        assert_eq!(url_encode("a b/c+d~e_f.g-h"), "a%20b/c%2Bd~e_f.g-h");
        assert_eq!(url_encode("ключ"), "%D0%BA%D0%BB%D1%8E%D1%87");
    }

    #[test]
    fn tokens_round_trip() {
        for k in ["", "a", "dir/file name+ü", "\u{1}"] {
            assert_eq!(decode_token(&encode_token(k)).unwrap(), k);
        }
        assert!(decode_token("!!!").is_err());
    }

    #[test]
    fn max_keys_is_capped() {
        assert_eq!(max_keys(None).unwrap(), 1000);
        assert_eq!(max_keys(Some(5000)).unwrap(), 1000);
        assert_eq!(max_keys(Some(3)).unwrap(), 3);
        assert!(max_keys(Some(-1)).is_err());
    }
}
