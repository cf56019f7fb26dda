//! VM apps (`kind = "vm"`): Stop and Start of a QEMU process through QMP and the guest agent.

use super::{ApiError, AppSlot, Controller};
use crate::config::VmPrefetch;
use std::time::Instant;

impl Controller {
    /// Resume a frozen VM app (prefetch by `mode`, thaw, QMP `cont`, probe).
    pub(super) fn resume_vm(&self, slot: &AppSlot, _t0: Instant, _pids: Vec<i32>, mode: VmPrefetch) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::new(
            501,
            "not_implemented",
            format!("app {:?}: VM resume ({}) is not implemented yet", slot.cfg.name, mode.as_str()),
        ))
    }
}
