//! The e2e bench's S3 client: rusty-s3 (SigV4 presigned URLs: UNSIGNED-PAYLOAD, so the client neither hashes
//! the body nor makes the server verify a SHA-256) over ureq (blocking HTTP/1.1, keep-alive pool).
//!
//! Chosen because on 2 cores the client shares the CPU with the server: boto3 / aws-cli over plain HTTP
//! always sign the payload (SHA-256 on both sides) and add CRC32, and spend Python time per part; this
//! client costs about one memcpy per byte. Uploads are multipart with parts sent in parallel (what aws-cli
//! and rclone do for big files) or single streaming PUTs with a known Content-Length (what restic does).
#![allow(dead_code)]

use std::io::Read;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use rusty_s3::actions::{CompleteMultipartUpload, CreateMultipartUpload, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

const SIGN_FOR: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Client {
    bucket: Bucket,
    creds: Credentials,
    agent: ureq::Agent,
}

pub type Res<T> = Result<T, String>;

fn check(
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> Res<ureq::http::Response<ureq::Body>> {
    let mut r = r.map_err(|e| format!("{what}: {e}"))?;
    if !r.status().is_success() {
        let body = r.body_mut().read_to_string().unwrap_or_default();
        return Err(format!("{what}: HTTP {}: {body}", r.status()));
    }
    Ok(r)
}

impl Client {
    pub fn new(endpoint: &str, bucket: &str, access: &str, secret: &str) -> Client {
        let url = endpoint.parse().expect("endpoint url");
        let bucket =
            Bucket::new(url, UrlStyle::Path, bucket.to_string(), "us-east-1").expect("bucket");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections_per_host(64)
            .build()
            .new_agent();
        Client {
            bucket,
            creds: Credentials::new(access, secret),
            agent,
        }
    }

    pub fn create_bucket(&self) -> Res<()> {
        let url = self.bucket.create_bucket(&self.creds).sign(SIGN_FOR);
        check(self.agent.put(url.as_str()).send_empty(), "CreateBucket").map(|_| ())
    }

    /// One PUT streaming `len` bytes from `body`.
    pub fn put(&self, key: &str, len: u64, mut body: impl Read) -> Res<()> {
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(SIGN_FOR);
        let r = self
            .agent
            .put(url.as_str())
            .header("content-length", len.to_string())
            .send(ureq::SendBody::from_reader(&mut body));
        check(r, "PutObject").map(|_| ())
    }

    /// Multipart upload of `len` bytes: `read_part(part_index, buf)` fills a part; `parallel` parts in flight.
    pub fn put_multipart(
        &self,
        key: &str,
        len: u64,
        part_size: usize,
        parallel: usize,
        read_part: impl FnMut(usize, &mut Vec<u8>) + Send,
    ) -> Res<()> {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), key)
            .sign(SIGN_FOR);
        let mut r = check(
            self.agent.post(url.as_str()).send_empty(),
            "CreateMultipartUpload",
        )?;
        let xml = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let created = CreateMultipartUpload::parse_response(&xml).map_err(|e| format!("{e:?}"))?;
        let upload_id = created.upload_id().to_string();
        let parts = (len.div_ceil(part_size as u64) as usize).max(1);
        let etags: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; parts]);
        let err: Mutex<Option<String>> = Mutex::new(None);
        // The producer reads parts in order (generators are sequential); uploaders take them from a channel
        // bounded to `parallel`, so the client holds at most 2 * parallel parts.
        let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(parallel);
        let rx = Mutex::new(rx);
        // Sent part buffers come back for reuse: a fresh 64 MiB buffer per part cost the client a page fault
        // per 4 KiB, CPU the server then lacked on a 2-core machine.
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::scope(|s| {
            for _ in 0..parallel {
                let free_tx = free_tx.clone();
                let (rx, etags, err, upload_id) = (&rx, &etags, &err, &upload_id);
                s.spawn(move || {
                    loop {
                        let next = rx.lock().expect("rx").recv();
                        let Ok((i, buf)) = next else { return };
                        let url = self
                            .bucket
                            .upload_part(Some(&self.creds), key, (i + 1) as u16, upload_id)
                            .sign(SIGN_FOR);
                        let r = self.agent.put(url.as_str()).send(&buf[..]);
                        let _ = free_tx.send(buf);
                        match check(r, "UploadPart") {
                            Ok(r) => {
                                let etag = r
                                    .headers()
                                    .get("etag")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                etags.lock().expect("etags")[i] = Some(etag);
                            }
                            Err(e) => {
                                *err.lock().expect("err") = Some(e);
                                return;
                            }
                        }
                    }
                });
            }
            let mut read_part = read_part;
            for i in 0..parts {
                let mut buf = free_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(part_size));
                buf.clear();
                read_part(i, &mut buf);
                if tx.send((i, buf)).is_err() {
                    break;
                }
            }
            drop(tx);
        });
        if let Some(e) = err.into_inner().expect("err") {
            return Err(e);
        }
        let etags: Vec<String> = etags
            .into_inner()
            .expect("etags")
            .into_iter()
            .map(|e| e.unwrap_or_default())
            .collect();
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            &upload_id,
            etags.iter().map(|s| s.as_str()),
        );
        let url = action.sign(SIGN_FOR);
        let body = CompleteMultipartUpload::body(action);
        check(
            self.agent.post(url.as_str()).send(body),
            "CompleteMultipartUpload",
        )
        .map(|_| ())
    }

    /// GETs `key` and feeds the body to `sink` in pieces; returns the bytes received.
    pub fn get(&self, key: &str, mut sink: impl FnMut(&[u8])) -> Res<u64> {
        let url = self
            .bucket
            .get_object(Some(&self.creds), key)
            .sign(SIGN_FOR);
        let mut r = check(self.agent.get(url.as_str()).call(), "GetObject")?;
        let mut rd = r.body_mut().with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = rd
                .read(&mut buf)
                .map_err(|e| format!("GetObject body: {e}"))?;
            if n == 0 {
                return Ok(total);
            }
            sink(&buf[..n]);
            total += n as u64;
        }
    }
}
