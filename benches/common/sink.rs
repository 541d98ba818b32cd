//! The e2e bench's receive-and-hash sink: the least any S3 server must do with a body on this machine, measured
//! end to end with the bench's own client.
//!
//! Why: the duplicate-ingest target is a ratio to the hash-only limit (CDC + BLAKE3 on all cores), but on the
//! bench's machine the client shares the cores and the kernel's loopback receive costs the receiver more than
//! its stage suggests (its ACKs run the sender's transmit in softirq). The stage figures can only estimate
//! what is left; this sink measures it. It is the same HTTP stack as `cairn serve` (tokio's multi-thread
//! runtime, hyper-util's auto builder, a 1 MiB HTTP/1 read buffer, TCP_NODELAY), answers the multipart calls
//! the client makes, and for an upload part does nothing but BLAKE3 its body frames as they arrive: no
//! chunking, no MD5, no store. Whatever Cairn does beyond that is Cairn's.
//!
//! It runs as a child process (the bench binary started again with [`SINK_ENV`]) so that its CPU is metered
//! apart from the client's, as the server's is.
#![allow(dead_code)]

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

/// Set in the environment of the bench binary started as the sink.
pub const SINK_ENV: &str = "CAIRN_BENCH_SINK";

const LISTENING: &str = "sink: listening on ";

/// Runs the sink (never returns) if this process was started as one: call first thing in `main`.
pub fn run_if_asked() {
    if std::env::var_os(SINK_ENV).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{LISTENING}http://{}", listener.local_addr().expect("addr"));
        let mut builder = Builder::new(TokioExecutor::new());
        // As src/server.rs configures it.
        builder.http1().max_buf_size(1 << 20);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    std::process::exit(0);
}

/// Multipart calls as the bench client makes them; an upload part's body is BLAKE3-hashed as it arrives.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    let xml = |body: String| {
        Response::builder()
            .header("content-type", "application/xml")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
    let resp = match *req.method() {
        // CreateMultipartUpload (`?uploads`); CompleteMultipartUpload names its upload.
        Method::POST if !query.contains("uploadId=") => xml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult xmlns=\"{NS}\"><Bucket>bench</Bucket><Key>sink</Key><UploadId>sink</UploadId></InitiateMultipartUploadResult>"
        )),
        Method::POST => {
            let _ = req.into_body().collect().await;
            xml(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult xmlns=\"{NS}\"><Bucket>bench</Bucket><Key>sink</Key><ETag>\"sink\"</ETag></CompleteMultipartUploadResult>"
            ))
        }
        Method::PUT => {
            let mut body = req.into_body();
            let mut hasher = blake3::Hasher::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(data) = f.data_ref() {
                            hasher.update(data);
                        }
                    }
                    Err(_) => break,
                }
            }
            let tag = hasher.finalize();
            Response::builder()
                .header("etag", format!("\"{}\"", &tag.to_hex().as_str()[..32]))
                .body(Full::new(Bytes::new()))
                .expect("response")
        }
        _ => Response::new(Full::new(Bytes::new())),
    };
    Ok(resp)
}

/// The sink as a child process of the bench.
pub struct Sink {
    pub endpoint: String,
    child: Child,
}

impl Sink {
    pub fn start() -> Sink {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env(SINK_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the sink");
        let endpoint = super::server::listening_endpoint(&mut child, LISTENING)
            .expect("the sink exited before listening");
        Sink { endpoint, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
