//! What the agent persists: the desired state and the ids in the maps, written atomically,
//! and read back on start.

use std::{io::Write as _, path::Path};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::state::{Desired, Ids};

/// What is persisted: the desired state and the ids in the maps.
#[derive(Serialize, Deserialize)]
pub(super) struct Persisted {
    /// FNV-1a of the config file the state grew from.
    pub config_hash: String,
    pub desired: Desired,
    pub ids: Ids,
}

/// FNV-1a 64: a stable digest of the config text (not for security).
pub fn fnv1a(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The persisted state, if readable (whatever config it grew from: the caller compares
/// `config_hash`).
pub(super) fn restore(state_file: &Path) -> Option<Persisted> {
    let text = std::fs::read_to_string(state_file).ok()?;
    serde_json::from_str::<Persisted>(&text)
        .map_err(|e| warn!(file = %state_file.display(), "unreadable state file ({e}): starting from the config"))
        .ok()
}
