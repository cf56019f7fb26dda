//! Progress reporting hooks for long operations (the CLI draws a bar; tests may act on them).

/// Receives progress of a long operation. All methods default to doing nothing.
pub trait Progress: Sync {
    /// A new phase starts, with `total` units (bytes unless said otherwise).
    fn phase(&self, _name: &str, _total: u64) {}
    /// `done` units of the current phase are finished (absolute, not a delta).
    fn update(&self, _done: u64) {}
}

/// Ignores progress.
pub struct NoProgress;

impl Progress for NoProgress {}
