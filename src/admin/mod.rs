//! The admin interface the CLI talks to while the server runs: a Unix socket `<data>/admin.sock`, mode 0600,
//! so only the store's owner can reach it (never anonymous, never over the network). Protocol: the client
//! sends one JSON `Request` line; the server answers with zero or more `{"progress": ...}` lines (for
//! `wait`ing jobs) and one final `Response` line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::ids::DiskId;
use crate::store::Store;
use crate::store::diskset::DiskState;
use crate::store::jobs::JobKind;

pub const SOCKET_NAME: &str = "admin.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    DiskList,
    DiskFail {
        id: u32,
    },
    DiskReplace {
        id: u32,
        path: PathBuf,
    },
    DiskAddSpare {
        path: PathBuf,
    },
    DiskAdd {
        path: PathBuf,
    },
    Rebuild {
        wait: bool,
        throttle_mb_s: f64,
    },
    Scrub {
        wait: bool,
        repair: bool,
        throttle_mb_s: f64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default)]
    pub error: Option<String>,
}

/// Listens on the admin socket on a thread of its own; each connection gets a thread (admin traffic is rare).
pub fn spawn(store: Arc<Store>, data_dir: &Path) -> std::io::Result<PathBuf> {
    let path = socket_path(data_dir);
    // A socket file left by a killed server: nobody answers on it, so it is safe to replace.
    if path.exists() && UnixStream::connect(&path).is_err() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let store = store.clone();
            std::thread::spawn(move || {
                if let Err(e) = serve_conn(&store, conn) {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    });
    Ok(path)
}

fn serve_conn(store: &Arc<Store>, conn: UnixStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let mut out = conn;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(store, req, &mut out),
        Err(e) => Response {
            ok: false,
            result: serde_json::Value::Null,
            error: Some(format!("bad request: {e}")),
        },
    };
    writeln!(out, "{}", serde_json::to_string(&resp).unwrap_or_default())?;
    out.flush()
}

fn ok(v: impl Serialize) -> Response {
    Response {
        ok: true,
        result: serde_json::to_value(v).unwrap_or_default(),
        error: None,
    }
}

fn err(e: impl std::fmt::Display) -> Response {
    Response {
        ok: false,
        result: serde_json::Value::Null,
        error: Some(e.to_string()),
    }
}

fn handle(store: &Arc<Store>, req: Request, out: &mut UnixStream) -> Response {
    let mb = |x: f64| if x > 0.0 { (x * 1e6) as u64 } else { 0 };
    match req {
        Request::Status => store.status().map_or_else(err, ok),
        Request::DiskList => store.status().map_or_else(err, |s| ok(s.disks)),
        Request::DiskFail { id } => store.fail_disk(DiskId(id)).map_or_else(err, |_| ok(id)),
        Request::DiskReplace { id, path } => {
            store
                .replace_disk(DiskId(id), &path)
                .map_or_else(err, |new| {
                    store.start_job(JobKind::Rebuild, 0, true);
                    ok(new.0)
                })
        }
        Request::DiskAddSpare { path } => store
            .add_disk(&path, DiskState::Spare)
            .map_or_else(err, |id| ok(id.0)),
        Request::DiskAdd { path } => store
            .add_disk(&path, DiskState::Active)
            .map_or_else(err, |id| ok(id.0)),
        Request::Rebuild {
            wait,
            throttle_mb_s,
        } => run_job(store, JobKind::Rebuild, wait, true, mb(throttle_mb_s), out),
        Request::Scrub {
            wait,
            repair,
            throttle_mb_s,
        } => run_job(store, JobKind::Scrub, wait, repair, mb(throttle_mb_s), out),
    }
}

fn run_job(
    store: &Arc<Store>,
    kind: JobKind,
    wait: bool,
    repair: bool,
    throttle: u64,
    out: &mut UnixStream,
) -> Response {
    let job = store.start_job(kind, throttle, repair);
    if wait {
        let mut p = job.progress();
        // A progress line every half second; the answer as soon as the job ends.
        while p.running {
            let line = serde_json::json!({ "progress": p });
            if writeln!(out, "{line}").is_err() {
                // The client went away; the job goes on.
                return err("client disconnected");
            }
            p = job.wait_finished(Duration::from_millis(500));
        }
    }
    ok(job.progress())
}
