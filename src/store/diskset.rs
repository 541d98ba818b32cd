//! Disk membership: which directories are disks of this store, their markers (storage-format.md §2) and
//! states. States are persisted in the catalog; the in-memory copy is what the I/O paths consult.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::core::ids::{DiskId, StoreId};
use crate::core::placement::DiskLoad;
use crate::store::disk::{Disk, MARKER_FILE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    Active,
    /// I/O errors seen; still used, watched.
    Suspect,
    /// Gone, foreign or failed by the admin: never written again.
    Failed,
    Spare,
    Rebuilding,
    Retired,
}

impl DiskState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskState::Active => "active",
            DiskState::Suspect => "suspect",
            DiskState::Failed => "failed",
            DiskState::Spare => "spare",
            DiskState::Rebuilding => "rebuilding",
            DiskState::Retired => "retired",
        }
    }
    pub fn parse(s: &str) -> Option<DiskState> {
        Some(match s {
            "active" => DiskState::Active,
            "suspect" => DiskState::Suspect,
            "failed" => DiskState::Failed,
            "spare" => DiskState::Spare,
            "rebuilding" => DiskState::Rebuilding,
            "retired" => DiskState::Retired,
            _ => return None,
        })
    }
    /// New containers may be placed here. A spare being rebuilt onto takes new writes too: it is a healthy
    /// disk, and with the embedded 4+2 on six disks it is what keeps writes going after one disk fails.
    pub fn writable(&self) -> bool {
        matches!(
            self,
            DiskState::Active | DiskState::Suspect | DiskState::Rebuilding
        )
    }
    /// Shards on this disk count as present.
    pub fn healthy(&self) -> bool {
        self.writable()
    }
}

impl fmt::Display for DiskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The disk marker file (storage-format.md §2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMarker {
    pub magic: String,
    pub format: u32,
    pub store_id: String,
    pub disk_id: u32,
    pub created_unix_ms: u64,
}

pub const MARKER_MAGIC: &str = "cairn-disk";

impl DiskMarker {
    pub fn new(store: StoreId, disk: DiskId, now_ms: u64) -> DiskMarker {
        DiskMarker {
            magic: MARKER_MAGIC.into(),
            format: 1,
            store_id: store.to_hex(),
            disk_id: disk.0,
            created_unix_ms: now_ms,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
    pub fn decode(b: &[u8]) -> Option<DiskMarker> {
        let m: DiskMarker = serde_json::from_slice(b).ok()?;
        (m.magic == MARKER_MAGIC && m.format == 1).then_some(m)
    }
}

/// What a disk's marker says about it right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkerCheck {
    Ok,
    Missing,
    Foreign(String),
}

pub fn check_marker(disk: &dyn Disk, store: StoreId, id: DiskId) -> MarkerCheck {
    if !disk.is_present() {
        return MarkerCheck::Missing;
    }
    match disk.read_all(Path::new(MARKER_FILE)) {
        Err(_) => MarkerCheck::Missing,
        Ok(b) => match DiskMarker::decode(&b) {
            None => MarkerCheck::Foreign("unreadable marker".into()),
            Some(m) if m.store_id != store.to_hex() => {
                MarkerCheck::Foreign(format!("belongs to store {}", m.store_id))
            }
            Some(m) if m.disk_id != id.0 => {
                MarkerCheck::Foreign(format!("marked as disk {}", m.disk_id))
            }
            Some(_) => MarkerCheck::Ok,
        },
    }
}

pub struct DiskEntry {
    pub id: DiskId,
    pub path: PathBuf,
    pub disk: Arc<dyn Disk>,
    state: RwLock<DiskState>,
    /// Shards stored (for placement).
    pub shards: AtomicU64,
    pub io_errors: AtomicU32,
}

impl DiskEntry {
    pub fn new(
        id: DiskId,
        path: PathBuf,
        disk: Arc<dyn Disk>,
        state: DiskState,
        shards: u64,
    ) -> DiskEntry {
        DiskEntry {
            id,
            path,
            disk,
            state: RwLock::new(state),
            shards: AtomicU64::new(shards),
            io_errors: AtomicU32::new(0),
        }
    }
    pub fn state(&self) -> DiskState {
        self.state.read().map(|s| *s).unwrap_or(DiskState::Failed)
    }
    pub fn set_state(&self, s: DiskState) {
        if let Ok(mut g) = self.state.write() {
            *g = s;
        }
        if matches!(s, DiskState::Failed | DiskState::Retired) {
            // Nothing reads it any more; open files would only keep a pulled disk busy (umount: EBUSY).
            self.disk.release_handles();
        }
    }
}

/// All disks of the store, by id.
#[derive(Default)]
pub struct DiskSet {
    disks: RwLock<Vec<Arc<DiskEntry>>>,
}

impl DiskSet {
    pub fn new(disks: Vec<Arc<DiskEntry>>) -> DiskSet {
        DiskSet {
            disks: RwLock::new(disks),
        }
    }
    pub fn all(&self) -> Vec<Arc<DiskEntry>> {
        self.disks.read().map(|d| d.clone()).unwrap_or_default()
    }
    pub fn get(&self, id: DiskId) -> Option<Arc<DiskEntry>> {
        self.disks.read().ok()?.iter().find(|d| d.id == id).cloned()
    }
    pub fn add(&self, e: Arc<DiskEntry>) {
        if let Ok(mut d) = self.disks.write() {
            d.push(e);
        }
    }
    /// Loads of the disks new shards may go to.
    pub fn writable_loads(&self) -> Vec<DiskLoad> {
        self.all()
            .iter()
            .filter(|d| d.state().writable())
            .map(|d| DiskLoad {
                id: d.id,
                shards: d.shards.load(Ordering::Relaxed),
            })
            .collect()
    }
}
