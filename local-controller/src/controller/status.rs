//! Status: an app's record joined with what the kernel shows now (`GET /v1/apps[/{name}]`).

use super::{lock, Controller, LookupError};
use procswap::cgroup::Memcg;
use torpor_api as api;

impl Controller {
    /// Status of one app (JSON).
    pub fn app_status(&self, name: &str) -> Result<api::AppStatus, LookupError> {
        let slot = self.slot(name)?;
        let rec = lock(&slot.st).clone();
        let o = self.observe(&rec.cgroups);
        let memcg = rec
            .cgroups
            .v1_memory
            .as_ref()
            .map(|d| Memcg::V1(d.clone()))
            .or_else(|| {
                rec.cgroups
                    .v2
                    .as_ref()
                    .filter(|d| d.join("memory.current").exists())
                    .map(|d| Memcg::V2(d.clone()))
            })
            .and_then(|m| m.usage().ok());
        let ov = lock(&slot.mon).status.clone();
        let busy = slot.op.try_lock().is_err();
        Ok(api::AppStatus {
            name: name.to_string(),
            state: rec.state,
            busy,
            in_flight: rec.in_flight,
            pid: rec.pid,
            pids: o.pids,
            frozen: o.frozen,
            prestart: slot.cfg.prestart,
            command: slot.cfg.command.clone(),
            unit: slot.cfg.unit.clone(),
            cgroups: rec.cgroups,
            memory: api::MemoryStatus {
                resident_bytes: o.mem.rss,
                resident_anon_bytes: o.mem.rss_anon,
                swapped_bytes: o.mem.swap,
                memcg_bytes: memcg,
            },
            last_stop_unix: rec.last_stop_unix,
            last_start: rec.last_start,
            last_purge: rec.last_purge,
            last_error: rec.last_error,
            working_set_bytes: rec.working_set_bytes,
            counters: rec.counters,
            overload: ov,
            kind: slot.cfg.kind,
            vm: slot.cfg.is_vm().then(|| self.vm_status(slot)),
        })
    }

    pub fn all_status(&self) -> Vec<api::AppStatus> {
        self.apps
            .keys()
            .filter_map(|n| self.app_status(n).ok())
            .collect()
    }
}
