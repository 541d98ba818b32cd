//! `cairn serve`: the S3 API over the store. Without flags it is the README's embedded default:
//! 127.0.0.1:9000, ./cairn-data, six directory-disks (4+2) and one hot spare.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use cairn::auth::{Keyring, RootSource, keys};
use cairn::config::{Config, TlsConfig};
use cairn::server::{self, ServerOptions};
use cairn::store::Store;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Data directory (catalog, credentials; the default disks live under it) [default: ./cairn-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9000]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// TOML configuration file (see deploy/cairn.example.toml); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The configuration `serve` (and `key`) use: the file if given, then flags on top.
pub fn effective_config(config: Option<&PathBuf>, data: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = data {
        cfg.data_dir = d;
    }
    Ok(cfg)
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    server::tune_allocator();
    let mut cfg = effective_config(a.config.as_ref(), a.data)?;
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        cfg.tls = Some(TlsConfig { cert, key });
    }
    cfg.validate()?;
    let addr = cfg.listen_addr()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;

    let (root, source) = keys::root_credentials(&cfg.data_dir)?;
    if source == RootSource::Generated {
        println!(
            "cairn: generated root credentials (shown only now; kept in {}, mode 0600):\n  access key: {}\n  secret key: {}",
            cfg.data_dir.join(keys::ROOT_FILE).display(),
            root.access_key,
            root.secret_key
        );
    }
    let tls = match &cfg.tls {
        Some(t) => Some(server::load_tls(&t.cert, &t.key)?),
        None => None,
    };
    let store = Store::open(cfg.store_config()).context("cannot open the store")?;
    cairn::admin::spawn(store.clone(), &cfg.data_dir).context("cannot open the admin socket")?;
    // Disk health checks and automatic rebuild onto spares.
    let m = &cfg.maintenance;
    store.spawn_maintenance(
        std::time::Duration::from_millis(m.health_check_interval_ms),
        m.auto_rebuild
            .then_some((m.rebuild_throttle_mb_s * 1e6) as u64),
    );
    let keyring = Arc::new(Keyring::new(root, &cfg.data_dir));
    let opts = ServerOptions::from_config(&cfg, keyring);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => bail!("cannot listen on {addr}: {e}"),
        };
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Tests and scripts parse this line to find the port when listening on port 0.
        println!("cairn: listening on {scheme}://{local}");
        server::run(listener, tls, store, opts, shutdown_signal()).await?;
        println!("cairn: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
