//! Map sources behind one trait: the portable source here (procfs, approximate) and the
//! kernel module's exact source ([`crate::kmod_source::KmodSource`], ioctls on `/dev/torpor`).

use crate::layout::RamLayout;
use crate::maps::{FreeBitmap, MapSourceKind, PriorityMap};
use crate::portable::{self, ActivityTracker, FreeMode, PriorityOptions, PriorityStats};
use crate::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Something that can produce the guest's maps.
pub trait MapSource: Send {
    fn kind(&self) -> MapSourceKind;
    fn layout(&mut self) -> Result<RamLayout, Error>;
    fn free_bitmap(&mut self) -> Result<FreeBitmap, Error>;
    /// `window`: activity window; `None` = the source's default.
    fn priority_map(&mut self, window: Option<Duration>) -> Result<PriorityMap, Error>;
    /// Counters of the last build, for logs and `torpor-guest dump` (source-specific).
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Default activity window (docs/guest-maps.md).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(16);

/// The portable source (approximate maps from procfs).
pub struct PortableSource {
    pub tracker: Arc<Mutex<ActivityTracker>>,
    pub default_window: Duration,
    pub options: PriorityOptions,
    pub last_stats: Option<PriorityStats>,
    layout: Option<RamLayout>,
}

impl PortableSource {
    pub fn new(default_window: Duration, options: PriorityOptions) -> Self {
        PortableSource {
            tracker: Arc::new(Mutex::new(ActivityTracker::new(
                default_window.max(DEFAULT_WINDOW),
            ))),
            default_window,
            options,
            last_stats: None,
            layout: None,
        }
    }

    /// Start a background thread sampling process activity every `window / 4`
    /// (at least every 250 ms), so requests never wait for a window.
    pub fn spawn_sampler(&self) -> std::thread::JoinHandle<()> {
        let t = Arc::clone(&self.tracker);
        let every = (self.default_window / 4).max(Duration::from_millis(250));
        std::thread::Builder::new()
            .name("activity-sampler".into())
            .spawn(move || loop {
                if let Ok(mut g) = t.lock() {
                    g.sample();
                }
                std::thread::sleep(every);
            })
            .expect("spawn sampler thread")
    }

    pub fn free_mode(&self) -> FreeMode {
        self.options.free_mode
    }
}

impl MapSource for PortableSource {
    fn kind(&self) -> MapSourceKind {
        MapSourceKind::PortableApprox
    }

    fn layout(&mut self) -> Result<RamLayout, Error> {
        // Re-read each time: memory hotplug changes it, and it is cheap.
        let l = RamLayout::from_proc()?;
        self.layout = Some(l.clone());
        Ok(l)
    }

    fn free_bitmap(&mut self) -> Result<FreeBitmap, Error> {
        let l = self.layout()?;
        portable::build_free_bitmap(&l, self.options.free_mode)
    }

    fn priority_map(&mut self, window: Option<Duration>) -> Result<PriorityMap, Error> {
        let l = self.layout()?;
        let window = window.unwrap_or(self.default_window);
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let (map, stats) = portable::build_priority_map(&l, &mut tracker, window, &self.options)?;
        self.last_stats = Some(stats);
        Ok(map)
    }

    fn stats(&self) -> Option<serde_json::Value> {
        self.last_stats
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }
}
