//! The HTTP(S) server: takes a bound listener and a shutdown future (so tests bind port 0), serves the S3
//! router over HTTP/1.1 and HTTP/2 (TLS via rustls, ALPN), and runs the abandoned-multipart cleanup.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::auth::Keyring;
use crate::config::{Config, LimitsConfig};
use crate::s3::{S3Settings, hardening};
use crate::store::Store;

/// Everything `run` needs besides the listener, the store and the shutdown signal.
#[derive(Clone)]
pub struct ServerOptions {
    pub keyring: Arc<Keyring>,
    pub s3: S3Settings,
    pub limits: LimitsConfig,
    pub multipart_max_age: Duration,
    pub cleanup_interval: Duration,
}

impl ServerOptions {
    pub fn from_config(cfg: &Config, keyring: Arc<Keyring>) -> ServerOptions {
        ServerOptions {
            keyring,
            s3: S3Settings {
                region: cfg.region.clone(),
                domains: cfg.domains.clone(),
                max_xml_body: cfg.limits.max_xml_body,
            },
            limits: cfg.limits.clone(),
            multipart_max_age: cfg.multipart_max_age(),
            cleanup_interval: Duration::from_secs(cfg.multipart.cleanup_interval_secs),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("TLS key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls acceptor from PEM files (ring provider; HTTP/2 and HTTP/1.1 by ALPN).
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |detail: String| TlsError::Cert {
        path: cert.display().to_string(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate found in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The axum app: hardening layer in front of the s3s service.
pub fn router(store: Arc<Store>, opts: &ServerOptions) -> Router {
    let s3 = crate::s3::service(store, opts.keyring.clone(), opts.s3.clone());
    let hardening = hardening::Hardening::new(opts.limits.clone());
    Router::new()
        .fallback(move |req: Request| {
            let s3 = s3.clone();
            async move {
                let req = req.map(s3s::Body::http_body_unsync);
                match s3.call(req).await {
                    Ok(resp) => resp.map(axum::body::Body::new),
                    Err(e) => {
                        tracing::error!("s3 service error: {e:?}");
                        let mut r = axum::response::Response::new(axum::body::Body::empty());
                        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    }
                }
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            hardening,
            hardening::layer,
        ))
}

/// The most a connection's read buffer grows to (hyper's default is ~400 KiB). An upload's body arrives in reads
/// of up to this size: with 1 MiB a duplicate full backup took 2.7-2.9 server CPU s per 2 GB instead of 3.1-3.3
/// (three A/B rounds of the e2e bench, docs/performance-history.md, session 14; unique ingest unchanged within noise,
/// 4 MiB measured the same as 1 MiB). hyper bounds a request head by the same size, so a head may be up to 1 MiB
/// before the request is refused (431); the buffer only grows while reads fill it.
const HTTP1_READ_BUFFER_MAX: usize = 1 << 20;

/// glibc's malloc serves allocations from this size up with their own mmap, and gives them back to the kernel
/// when freed; its default moves between 128 KiB and 32 MiB with what was freed last. The server's big
/// buffers are pooled, so few are freed, the threshold stayed low, and every buffer of 0.1-4 MiB that is not
/// pooled (hyper's read buffers, scrub's shard and group buffers, zstd's output) was a fresh mapping: faulted
/// in and zeroed page by page, and unmapped again, which holds the process's mmap lock against the O_DIRECT
/// reads of the other threads. From the heap they are reused. With this and the trim threshold below, in the
/// e2e bench's A/B mode (three alternating rounds, 2 GB): server page faults in unique ingest 107k against
/// 123k, in a scrub 29k against 49k, and scrub read 1272 against 1133 MB/s; the peak RSS in the bench's RSS
/// section stayed within its noise (session 19: docs/performance-history.md).
const MALLOC_MMAP_THRESHOLD: i32 = 64 << 20;
/// Free memory at the top of glibc's heap kept for reuse rather than returned to the kernel.
const MALLOC_TRIM_THRESHOLD: i32 = 256 << 20;

/// Sets glibc's mmap and trim thresholds (above) for the server process, unless the environment chose its own
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, read by glibc itself). Other C libraries: nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (name, param, value) in [
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MALLOC_MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            MALLOC_TRIM_THRESHOLD,
        ),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: mallopt only sets allocator parameters; it is called before the server's threads start.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets open requests finish (up to 30 s).
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    store: Arc<Store>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = router(store.clone(), &opts);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cleanup = tokio::spawn(cleanup_loop(
        store,
        opts.multipart_max_age,
        opts.cleanup_interval,
        stop_rx,
    ));

    let mut builder = Builder::new(TokioExecutor::new());
    // Slowloris guard: a client must send its request head within this time.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        .max_buf_size(HTTP1_READ_BUFFER_MAX);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection(TokioIo::new(tcp), svc)
                                .into_owned(),
                        )
                        .await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    watcher
                        .watch(
                            builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .into_owned(),
                        )
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("some connections were still open at shutdown"),
    }
    let _ = cleanup.await;
    Ok(())
}

async fn cleanup_loop(
    store: Arc<Store>,
    age: Duration,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.expire_multipart_older_than(age)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("aborted {n} abandoned multipart upload(s)"),
            Ok(Err(e)) => tracing::warn!("multipart cleanup: {e}"),
            Err(e) => tracing::warn!("multipart cleanup task: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
