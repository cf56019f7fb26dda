//! Persistence: every app's record in `state_dir/state.json`, written atomically after each
//! change, read back at startup (then adopted: see [`super::lifecycle::adopt`]).

use super::{lock, AppRecord, AppSlot, Controller};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tracing::{error, warn};

pub(super) const STATE_FILE: &str = "state.json";

#[derive(Serialize, Deserialize, Default)]
pub(super) struct StateFile {
    pub(super) version: u32,
    pub(super) apps: BTreeMap<String, AppRecord>,
}

impl StateFile {
    /// The persisted records in `dir` (none when the file is missing or unreadable).
    pub(super) fn load(dir: &Path) -> StateFile {
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(
                    "{}: unreadable state ({e}); rebuilding from the cgroups",
                    dir.join(STATE_FILE).display()
                );
                StateFile::default()
            }),
            Err(_) => StateFile::default(),
        }
    }
}

impl Controller {
    /// Write every app's record to state.json atomically (temp file, fsync, rename, fsync dir).
    pub fn persist(&self) {
        let _g = lock(&self.persist_lock);
        let sf = StateFile {
            version: 1,
            apps: self
                .apps
                .iter()
                .map(|(n, s)| (n.clone(), lock(&s.st).clone()))
                .collect(),
        };
        let dir = &self.cfg.state_dir;
        let res = (|| -> std::io::Result<()> {
            let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&sf).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(STATE_FILE))?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = res {
            error!("persisting state to {}: {e}", dir.display());
        }
    }

    pub(super) fn set<R>(&self, slot: &AppSlot, f: impl FnOnce(&mut AppRecord) -> R) -> R {
        let r = f(&mut lock(&slot.st));
        self.persist();
        r
    }
}
