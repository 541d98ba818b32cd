//! Moving bytes between HTTP bodies (async) and the store (sync, blocking). Bodies are never buffered whole:
//! an upload body goes through a bounded channel to a blocking task that calls `Upload::write`, so a slow
//! store slows the client down (backpressure) instead of filling memory; a download is read by a blocking
//! task into a bounded channel that the response body drains.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use s3s::S3Result;
use s3s::dto::StreamingBlob;
use tokio::sync::mpsc;

use super::checksum::{Algo, Hasher, Wanted, check_content_md5};
use super::error::{body_error, internal, store_error};
use super::util::discard;
use crate::store::{ObjectReader, Store, Upload};

/// Pieces handed to `Upload::write` are coalesced to about this size (fewer channel hops and store calls).
const PIECE: usize = 1 << 20;
/// Pieces in flight per upload or download: bounds the memory of one request to a few MiB.
const DEPTH: usize = 4;

/// A body fully written into an (unfinished) upload.
pub struct Ingested {
    pub upload: Upload,
    pub size: u64,
    pub checksums: BTreeMap<Algo, String>,
}

impl Ingested {
    /// Checks the body against what the request promised: Content-Length, Content-MD5 and `x-amz-checksum-*`
    /// in headers or aws-chunked `trailers`. On a mismatch the upload is aborted and the S3 error returned;
    /// otherwise the verified checksums to store come back with the upload.
    pub fn verified(
        mut self,
        content_length: Option<i64>,
        content_md5: Option<&[u8; 16]>,
        wanted: &Wanted,
        trailers: Option<&hyper::HeaderMap>,
    ) -> S3Result<(Ingested, BTreeMap<String, String>)> {
        // The MD5 needs the stream's end flushed through the chunker; only asked for when a header promised one.
        let md5 = match content_md5 {
            Some(_) => match self.upload.md5() {
                Ok(m) => Some(m),
                Err(e) => {
                    discard(self.upload);
                    return Err(store_error(e));
                }
            },
            None => None,
        };
        let check = || {
            if let Some(len) = content_length
                && u64::try_from(len).ok() != Some(self.size)
            {
                return Err(s3s::s3_error!(
                    IncompleteBody,
                    "You did not provide the number of bytes specified by the Content-Length HTTP header."
                ));
            }
            if let (Some(want), Some(got)) = (content_md5, &md5) {
                check_content_md5(Some(want), got)?;
            }
            wanted.verify(&self.checksums, trailers)
        };
        match check() {
            Ok(c) => Ok((self, c)),
            Err(e) => {
                discard(self.upload);
                Err(e)
            }
        }
    }
}

/// Streams `body` into a new upload, computing `algos` on the way. On any body error the upload is dropped,
/// which aborts it: nothing becomes visible.
pub async fn ingest(
    store: &Arc<Store>,
    body: Option<StreamingBlob>,
    algos: &[Algo],
) -> S3Result<Ingested> {
    let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(DEPTH);
    let store = store.clone();
    let mut hasher = Hasher::new(algos);
    // The decoded length the client declared, if any (Content-Length, or x-amz-decoded-content-length).
    let declared = body
        .as_ref()
        .and_then(|b| s3s::stream::ByteStream::remaining_length(b).exact());
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = store.begin_upload()?;
        if let Some(n) = declared {
            upload.expect_len(n as u64);
        }
        let mut size = 0u64;
        while let Some(frames) = rx.blocking_recv() {
            for piece in frames {
                hasher.update(&piece);
                size += piece.len() as u64;
                upload.write_bytes(piece)?;
            }
        }
        Ok::<_, crate::store::StoreError>((upload, size, hasher.finish()))
    });

    let pumped = pump(body, &tx).await;
    drop(tx);
    let written = writer.await.map_err(internal)?;
    // A body error wins over whatever the writer saw: the writer only ever saw a short stream.
    pumped?;
    let (upload, size, checksums) = written.map_err(store_error)?;
    Ok(Ingested {
        upload,
        size,
        checksums,
    })
}

/// Body frames are passed on as they came (no copy), grouped into batches of about `PIECE` bytes.
async fn pump(body: Option<StreamingBlob>, tx: &mpsc::Sender<Vec<Bytes>>) -> S3Result<()> {
    let Some(mut body) = body else { return Ok(()) };
    let mut batch = Vec::new();
    let mut batched = 0usize;
    while let Some(item) = body.next().await {
        let bytes = item.map_err(body_error)?;
        batched += bytes.len();
        batch.push(bytes);
        if batched >= PIECE {
            batched = 0;
            if tx.send(std::mem::take(&mut batch)).await.is_err() {
                return Ok(()); // writer failed; its error is reported
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch).await;
    }
    Ok(())
}

/// Streams an `ObjectReader` as a response body. The chunks go out as they were decoded (`next_frame`, no
/// copy), passed through the channel about `PIECE` bytes at a time.
pub fn reader_body(reader: ObjectReader, len: u64) -> StreamingBlob {
    let (tx, rx) = mpsc::channel::<Result<Vec<Bytes>, std::io::Error>>(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left.min(PIECE as u64)).unwrap_or(PIECE);
            let mut frames = Vec::new();
            let mut filled = 0;
            while filled < want {
                match reader.next_frame(want - filled) {
                    Ok(frame) if frame.is_empty() => break,
                    Ok(frame) => {
                        filled += frame.len();
                        frames.push(frame);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::error!("read failed mid-response: {e}");
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if filled < want {
                // The catalog promised more bytes than the reader gave: never send a short body silently.
                let _ = tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "object ended early",
                )));
                return;
            }
            left -= filled as u64;
            if tx.blocking_send(Ok(frames)).is_err() {
                return; // client went away
            }
        }
    });
    StreamingBlob::wrap(ChannelStream {
        pieces: rx,
        frames: std::collections::VecDeque::new(),
    })
}

/// The response body: the frames of each piece received, one by one.
struct ChannelStream {
    pieces: mpsc::Receiver<Result<Vec<Bytes>, std::io::Error>>,
    frames: std::collections::VecDeque<Bytes>,
}

impl Stream for ChannelStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            match self.pieces.poll_recv(cx) {
                Poll::Ready(Some(Ok(frames))) => self.frames = frames.into(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
