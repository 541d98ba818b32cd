//! Mapping of store errors (and body-stream errors) to S3 error codes. [`store_error`] is the one place a
//! `StoreError` becomes an S3 answer: keep every mapping here so the same condition always gets the same
//! code.

use s3s::{S3Error, S3ErrorCode, StdError, s3_error};

use crate::store::StoreError;

/// The one mapping from the store's errors to S3 error codes.
pub fn store_error(e: StoreError) -> S3Error {
    match e {
        StoreError::NoSuchBucket(_) => {
            s3_error!(NoSuchBucket, "The specified bucket does not exist")
        }
        StoreError::NoSuchKey { .. } => s3_error!(NoSuchKey, "The specified key does not exist."),
        StoreError::BucketExists(_) => s3_error!(
            BucketAlreadyOwnedByYou,
            "Your previous request to create the named bucket succeeded and you already own it."
        ),
        StoreError::BucketNotEmpty(_) => s3_error!(
            BucketNotEmpty,
            "The bucket you tried to delete is not empty"
        ),
        StoreError::InvalidBucketName(_, why) => S3Error::with_message(
            S3ErrorCode::InvalidBucketName,
            format!("The specified bucket is not valid: {why}"),
        ),
        StoreError::PreconditionFailed => {
            s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            )
        }
        StoreError::NoSuchUpload(_) => s3_error!(
            NoSuchUpload,
            "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have \
             been aborted or completed."
        ),
        StoreError::InvalidPart {
            part_number,
            reason,
        } => S3Error::with_message(
            S3ErrorCode::InvalidPart,
            format!(
                "One or more of the specified parts could not be found (part {part_number}: {reason})"
            ),
        ),
        StoreError::InvalidPartOrder => {
            s3_error!(
                InvalidPartOrder,
                "The list of parts was not in ascending order."
            )
        }
        e @ StoreError::EntityTooSmall { .. } => S3Error::with_message(
            S3ErrorCode::EntityTooSmall,
            format!("Your proposed upload is smaller than the minimum allowed object size: {e}"),
        ),
        StoreError::InvalidRange => {
            s3_error!(InvalidRange, "The requested range is not satisfiable")
        }
        StoreError::InvalidArgument(m) => S3Error::with_message(S3ErrorCode::InvalidArgument, m),
        // Capacity, not a client fault: clients retry 503s with backoff.
        e @ StoreError::NotEnoughDisks { .. } => {
            tracing::error!("{e}");
            S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "Not enough writable disks; retry later",
            )
        }
        e @ StoreError::Locked(_) => {
            tracing::error!("{e}");
            s3_error!(ServiceUnavailable)
        }
        // Data loss, corruption, disk, catalog, format and I/O errors: the admin needs the detail (it names
        // containers, disks and objects); the client gets a plain InternalError.
        e => {
            tracing::error!("store error: {e}");
            S3Error::with_message(
                S3ErrorCode::InternalError,
                "We encountered an internal error. Please try again.",
            )
        }
    }
}

/// An error while reading a request body. s3s's stream error types are private, so they are told apart by
/// their messages (pinned s3s version; `tests` below would catch a rename).
pub fn body_error(e: StdError) -> S3Error {
    let text = e.to_string();
    if text.contains("Sha256Mismatch") {
        let mut err = S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        err.set_status_code(hyper::StatusCode::BAD_REQUEST);
        err
    } else if text.contains("SignatureMismatch") {
        s3_error!(SignatureDoesNotMatch, "The chunk signature does not match")
    } else if text.contains("Incomplete") || text.contains("LengthMismatch") {
        s3_error!(
            IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header."
        )
    } else if text.contains("FormatError") || text.contains("TooLarge") || text.contains("TooMany")
    {
        S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            format!("Malformed aws-chunked body: {text}"),
        )
    } else if text.contains("length limit exceeded") {
        s3_error!(
            EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size."
        )
    } else {
        // Typically the client went away mid-body (hyper: "error reading a body from connection").
        tracing::debug!("request body error: {text}");
        s3_error!(IncompleteBody, "The request body ended early")
    }
}

pub fn internal(e: impl std::fmt::Display) -> S3Error {
    tracing::error!("internal error: {e}");
    S3Error::with_message(
        S3ErrorCode::InternalError,
        "We encountered an internal error. Please try again.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases: Vec<(StoreError, &str, u16)> = vec![
            (StoreError::NoSuchBucket("b".into()), "NoSuchBucket", 404),
            (
                StoreError::NoSuchKey {
                    bucket: "b".into(),
                    key: "k".into(),
                },
                "NoSuchKey",
                404,
            ),
            (
                StoreError::BucketExists("b".into()),
                "BucketAlreadyOwnedByYou",
                409,
            ),
            (
                StoreError::BucketNotEmpty("b".into()),
                "BucketNotEmpty",
                409,
            ),
            (
                StoreError::InvalidBucketName("B".into(), "uppercase"),
                "InvalidBucketName",
                400,
            ),
            (StoreError::PreconditionFailed, "PreconditionFailed", 412),
            (StoreError::NoSuchUpload("u".into()), "NoSuchUpload", 404),
            (
                StoreError::InvalidPart {
                    part_number: 2,
                    reason: "etag".into(),
                },
                "InvalidPart",
                400,
            ),
            (StoreError::InvalidPartOrder, "InvalidPartOrder", 400),
            (
                StoreError::EntityTooSmall {
                    part_number: 1,
                    size: 3,
                },
                "EntityTooSmall",
                400,
            ),
            (StoreError::InvalidRange, "InvalidRange", 416),
            (
                StoreError::NotEnoughDisks { need: 6, have: 3 },
                "ServiceUnavailable",
                503,
            ),
            (
                StoreError::Io(std::io::Error::other("x")),
                "InternalError",
                500,
            ),
        ];
        for (e, code, status) in cases {
            let s = store_error(e);
            assert_eq!(s.code().as_str(), code);
            assert_eq!(s.status_code().map(|c| c.as_u16()), Some(status), "{code}");
        }
    }

    #[test]
    fn body_errors() {
        let e = |s: &str| -> StdError { Box::new(std::io::Error::other(s.to_string())) };
        let s = body_error(e("UploadStreamError: Sha256Mismatch"));
        assert_eq!(s.code().as_str(), "XAmzContentSHA256Mismatch");
        assert_eq!(s.status_code().map(|c| c.as_u16()), Some(400));
        assert_eq!(
            body_error(e("AwsChunkedStreamError: SignatureMismatch"))
                .code()
                .as_str(),
            "SignatureDoesNotMatch"
        );
        assert_eq!(
            body_error(e("AwsChunkedStreamError: Incomplete"))
                .code()
                .as_str(),
            "IncompleteBody"
        );
        assert_eq!(
            body_error(e("connection reset")).code().as_str(),
            "IncompleteBody"
        );
    }
}
