//! The e2e bench's S3 client: rusty-s3 (SigV4 presigned URLs: UNSIGNED-PAYLOAD, so the client neither hashes
//! the body nor makes the server verify a SHA-256) over ureq (blocking HTTP/1.1, keep-alive pool), except the
//! parts of a file, which go out with `sendfile(2)` ([`Client::put_multipart_file`]).
//!
//! Chosen because on 2 cores the client shares the CPU with the server: boto3 / aws-cli over plain HTTP
//! always sign the payload (SHA-256 on both sides) and add CRC32, and spend Python time per part; through
//! ureq this client costs about two copies per byte, with sendfile the TCP stack alone. Uploads are multipart
//! with parts sent in parallel (what aws-cli and rclone do for big files) or single streaming PUTs with a known
//! Content-Length (what restic does).
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
        let upload_id = self.create_multipart(key)?;
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
        self.complete_multipart(key, &upload_id, etags)
    }

    /// Multipart upload of the file `data` (`len` bytes): each of `parallel` uploaders takes the next part and
    /// sends it with `sendfile(2)` over its own kept-alive HTTP/1.1 connection ([`put_part_sendfile`]).
    ///
    /// Why not ureq here: the client shares the 2 cores with the server, and through ureq each part cost a
    /// zero-fill of the part buffer, a read copy out of the page cache and ureq's copy into its send buffer
    /// before the kernel's own copy into the socket: 0.6 of the client's 1.2 CPU s per 2 GB in a profile.
    /// With sendfile the kernel sends the file's cached pages as they are. A client on another host costs
    /// the server nothing; this one costs it as little as this machine allows.
    pub fn put_multipart_file(
        &self,
        key: &str,
        data: &std::fs::File,
        len: u64,
        part_size: usize,
        parallel: usize,
    ) -> Res<()> {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let upload_id = self.create_multipart(key)?;
        let parts = (len.div_ceil(part_size as u64) as usize).max(1);
        let etags: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; parts]);
        let err: Mutex<Option<String>> = Mutex::new(None);
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..parallel.min(parts) {
                let (etags, err, next, upload_id) = (&etags, &err, &next, &upload_id);
                s.spawn(move || {
                    let mut conn: Option<std::net::TcpStream> = None;
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        if i >= parts || err.lock().expect("err").is_some() {
                            return;
                        }
                        let url = self
                            .bucket
                            .upload_part(Some(&self.creds), key, (i + 1) as u16, upload_id)
                            .sign(SIGN_FOR);
                        let start = i as u64 * part_size as u64;
                        let n = (len - start).min(part_size as u64);
                        match put_part_sendfile(&mut conn, url.as_str(), data, start, n) {
                            Ok(etag) => etags.lock().expect("etags")[i] = Some(etag),
                            Err(e) => {
                                *err.lock().expect("err") =
                                    Some(format!("UploadPart {}: {e}", i + 1));
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = err.into_inner().expect("err") {
            return Err(e);
        }
        self.complete_multipart(key, &upload_id, etags)
    }

    fn create_multipart(&self, key: &str) -> Res<String> {
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
        Ok(created.upload_id().to_string())
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: Mutex<Vec<Option<String>>>,
    ) -> Res<()> {
        let etags: Vec<String> = etags
            .into_inner()
            .expect("etags")
            .into_iter()
            .map(|e| e.unwrap_or_default())
            .collect();
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            upload_id,
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

/// One UploadPart over `conn` (opened, or reopened after the server closed it): the request head, then `len`
/// bytes of `data` from `offset` by `sendfile(2)`, then the response head. Returns the part's ETag.
fn put_part_sendfile(
    conn: &mut Option<std::net::TcpStream>,
    url: &str,
    data: &std::fs::File,
    offset: u64,
    len: u64,
) -> Res<String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    // The bench's endpoint is plain http://host:port.
    let rest = url.strip_prefix("http://").ok_or("not an http:// url")?;
    let (authority, target) = rest.split_at(rest.find('/').ok_or("url without path")?);
    let stream = match conn {
        Some(s) => s,
        None => conn.insert(std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?),
    };
    let head =
        format!("PUT {target} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {len}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut off = offset as libc::off_t;
    let end = (offset + len) as libc::off_t;
    while off < end {
        let want = (end - off).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; `off` is a valid off_t the kernel advances.
        let sent = unsafe { libc::sendfile(stream.as_raw_fd(), data.as_raw_fd(), &mut off, want) };
        if sent <= 0 {
            return Err(format!("sendfile: {}", std::io::Error::last_os_error()));
        }
    }
    let (status, headers, body) = read_response(stream)?;
    if headers
        .get("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        *conn = None;
    }
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    headers
        .get("etag")
        .cloned()
        .ok_or_else(|| "no ETag".to_string())
}

/// Reads one HTTP/1.1 response with a Content-Length body (what the server sends for UploadPart):
/// (status, lower-cased headers, body).
fn read_response(
    stream: &mut std::net::TcpStream,
) -> Res<(u16, std::collections::HashMap<String, String>, String)> {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(1024);
    let mut byte = [0u8; 512];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut byte).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers.contains_key("transfer-encoding") {
        return Err(format!("unexpected chunked response: {head:?}"));
    }
    let body_len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < body_len {
        let n = stream.read(&mut byte).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed in the response body".into());
        }
        body.extend_from_slice(&byte[..n]);
    }
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}
