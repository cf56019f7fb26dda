//! Residency snapshot: which pages of every kind were in RAM when the app was stopped (taken
//! *before* the purge), small (page runs, not page lists), serializable and versioned; and the
//! checks built on it (what the purge evicted, what a restore brought back).

use crate::error::Result;
use crate::inspect::{classify, Pagemap, VmaKind};
use crate::memkind::{
    self, normalize, pages, ByKind, Gone, MemKind, MemObject, ObjectView, PageRun, SkippedObject,
};
use crate::sys;
use crate::target::Target;
use std::time::SystemTime;

/// One shmem or file object and its pages resident at snapshot time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectResidency {
    #[serde(flatten)]
    pub object: MemObject,
    /// Resident file page indexes (page cache or swap cache), within the object's interest.
    pub resident: Vec<PageRun>,
}

/// Which pages of every kind were resident.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResidencySnapshot {
    pub format_version: u32,
    pub pid: i32,
    pub comm: String,
    /// Seconds since the epoch.
    pub taken_at: u64,
    pub page_size: u64,
    /// Present private anonymous pages, as runs of page numbers (address / page size).
    pub anon: Vec<PageRun>,
    /// Shmem and file objects with their resident pages.
    pub objects: Vec<ObjectResidency>,
    /// Handles not followed (devices, pseudo files, unreadable objects), with why.
    #[serde(default)]
    pub skipped: Vec<SkippedObject>,
}

/// Pages of a snapshot that are resident now, per kind.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResidencyCheck {
    /// Pages in the snapshot.
    pub snapshot_pages: ByKind<u64>,
    /// Of those, resident now (anon: mapped in the page tables — pagemap cannot see the swap
    /// cache of another process; shmem/file: page cache or swap cache).
    pub resident_pages: ByKind<u64>,
    /// Objects that could not be checked, with why.
    pub gone: Vec<(String, Gone)>,
}

impl ResidencyCheck {
    /// Snapshot pages not resident now.
    pub fn out_pages(&self) -> ByKind<u64> {
        ByKind {
            anon: self.snapshot_pages.anon - self.resident_pages.anon,
            shmem: self.snapshot_pages.shmem - self.resident_pages.shmem,
            file: self.snapshot_pages.file - self.resident_pages.file,
        }
    }
}

impl ResidencySnapshot {
    pub const FORMAT_VERSION: u32 = 1;

    /// Take a snapshot of a validated target (cost: one pagemap walk of its VMAs that are not
    /// kernel-special, one `mincore` per object).
    pub fn take(t: &Target) -> Result<Self> {
        let pid = t.pid();
        let ps = sys::page_size();
        let vmas = crate::inspect::vmas(t)?;
        let mut pm = Pagemap::open(pid)?;
        let mut anon: Vec<PageRun> = Vec::new();
        for v in vmas
            .iter()
            .filter(|v| v.kind != VmaKind::Special && !v.pfnmap)
        {
            pm.scan(v.start, v.end, |addr, info| {
                let (present, file, _) = classify(&info);
                if present && !file {
                    let p = addr / ps;
                    match anon.last_mut() {
                        Some(r) if r.end() == p => r.count += 1,
                        _ => anon.push(PageRun { first: p, count: 1 }),
                    }
                }
            })?;
        }
        let (objects, skipped) = object_residency(pid, |_| true)?;
        t.check_alive("residency snapshot")?;
        Ok(Self::of(t, anon, objects, skipped))
    }

    /// A snapshot of `t`'s objects of `kind` only (no anonymous pages, no pagemap walk: one
    /// `mincore` per object). A VM's Stop takes QEMU's file pages this way: its anonymous
    /// memory (guest RAM and QEMU's own) has a loading set of its own ([`crate::vm::loading`]),
    /// and a pagemap walk of a QEMU process covers gigabytes of address space.
    pub fn take_objects(t: &Target, kind: MemKind) -> Result<Self> {
        let (objects, skipped) = object_residency(t.pid(), |o| o.kind == kind)?;
        t.check_alive("residency snapshot")?;
        Ok(Self::of(t, Vec::new(), objects, skipped))
    }

    /// Add the files of an earlier plan (`earlier`: its objects) that the target no longer
    /// holds, so their pages resident now are measured, evicted by the purge's reclaim (it
    /// takes all of the app's page cache) and planned for the next Start like the files it
    /// holds. Only regular files found by path (same inode, not truncated: [`memkind::reopen`])
    /// and unheld for fewer than `max_unheld` Stops: a file the app reads through descriptors
    /// it closes again (PostgreSQL's tables: each backend's descriptors go with it) would
    /// otherwise lose its page cache at every Stop whenever no process held it, and never come
    /// back (sessions 16-17: planned file pages 143k, then 34k, then 1.4k; TPS half of warm
    /// without them). A file the app stopped using leaves after `max_unheld` Stops. Returns
    /// the number of objects added.
    pub fn remember(&mut self, earlier: &[MemObject], max_unheld: u32) -> usize {
        let mut added = 0;
        for o in earlier {
            let unheld = o.unheld_stops.saturating_add(1);
            if o.kind != MemKind::File
                || !o.by_path
                || unheld >= max_unheld
                || self.objects.iter().any(|x| x.object.key == o.key)
            {
                continue;
            }
            let Ok(f) = memkind::reopen(self.pid, o) else {
                continue;
            };
            let resident = ObjectView::new(f, None)
                .and_then(|v| v.resident(&o.interest))
                .map(normalize)
                .unwrap_or_default();
            if resident.is_empty() {
                continue;
            }
            self.objects.push(ObjectResidency {
                object: MemObject {
                    unheld_stops: unheld,
                    ..o.clone()
                },
                resident,
            });
            added += 1;
        }
        added
    }

    fn of(
        t: &Target,
        anon: Vec<PageRun>,
        objects: Vec<ObjectResidency>,
        skipped: Vec<SkippedObject>,
    ) -> Self {
        Self {
            format_version: Self::FORMAT_VERSION,
            pid: t.pid(),
            comm: t.comm().to_string(),
            taken_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            page_size: sys::page_size(),
            anon,
            objects,
            skipped,
        }
    }

    /// Take a snapshot of `pid` (root).
    pub fn of_pid(pid: i32) -> Result<Self> {
        let t = Target::open(pid, "residency snapshot")?;
        Self::take(&t)
    }

    /// Resident pages per kind in the snapshot.
    pub fn pages(&self) -> ByKind<u64> {
        let mut b = ByKind {
            anon: pages(&self.anon),
            ..Default::default()
        };
        for o in &self.objects {
            *b.get_mut(o.object.kind) += pages(&o.resident);
        }
        b
    }

    pub fn bytes(&self) -> ByKind<u64> {
        let p = self.pages();
        ByKind {
            anon: p.anon * self.page_size,
            shmem: p.shmem * self.page_size,
            file: p.file * self.page_size,
        }
    }

    pub fn objects_of(&self, kind: MemKind) -> impl Iterator<Item = &ObjectResidency> {
        self.objects.iter().filter(move |o| o.object.kind == kind)
    }

    /// Parse a snapshot; one from another format version is refused with a note.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct V {
            format_version: u32,
        }
        let v: V =
            serde_json::from_slice(bytes).map_err(|e| format!("not a residency snapshot: {e}"))?;
        if v.format_version != Self::FORMAT_VERSION {
            return Err(format!(
                "residency snapshot format {} (this torpor reads {}): ignored",
                v.format_version,
                Self::FORMAT_VERSION
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("residency snapshot: {e}"))
    }

    /// Which of the snapshot's pages are resident now (objects are reopened as for a restore:
    /// by path when they were reachable by path, else through the target).
    pub fn check(&self, pid: i32) -> Result<ResidencyCheck> {
        let ps = self.page_size;
        let mut c = ResidencyCheck {
            snapshot_pages: self.pages(),
            ..Default::default()
        };
        let mut pm = Pagemap::open(pid)?;
        let mut present = 0u64;
        for r in &self.anon {
            pm.scan(r.first * ps, r.end() * ps, |_, info| {
                present += classify(&info).0 as u64
            })?;
        }
        c.resident_pages.anon = present;
        for o in &self.objects {
            match memkind::reopen(pid, &o.object).and_then(|f| {
                let v = ObjectView::new(f, None).map_err(|e| Gone::Unreadable(e.to_string()))?;
                v.resident(&o.resident)
                    .map_err(|e| Gone::Unreadable(e.to_string()))
            }) {
                Ok(runs) => *c.resident_pages.get_mut(o.object.kind) += pages(&normalize(runs)),
                Err(g) => c.gone.push((o.object.path.clone(), g)),
            }
        }
        Ok(c)
    }
}

/// `pid`'s shmem and file objects that `keep` accepts, with their resident pages (objects
/// with none left out), and the handles not followed.
fn object_residency(
    pid: i32,
    keep: impl Fn(&MemObject) -> bool,
) -> Result<(Vec<ObjectResidency>, Vec<SkippedObject>)> {
    let (mut objs, mut skipped) = memkind::objects(pid)?;
    objs.retain(|o| keep(o));
    let (_, resident, sk) = memkind::object_usage(pid, &objs);
    skipped.extend(sk);
    let objects = objs
        .into_iter()
        .zip(resident)
        .map(|(object, resident)| ObjectResidency { object, resident })
        .filter(|o| !o.resident.is_empty())
        .collect();
    Ok((objects, skipped))
}

/// Take a snapshot of `pid` (convenience for [`ResidencySnapshot::of_pid`]).
pub fn snapshot(pid: i32) -> Result<ResidencySnapshot> {
    ResidencySnapshot::of_pid(pid)
}

#[cfg(test)]
mod tests_residency {
    use super::*;
    use crate::memkind::{Handle, ObjectKey};

    #[test]
    fn snapshot_round_trips_and_refuses_other_versions() {
        let s = ResidencySnapshot {
            format_version: ResidencySnapshot::FORMAT_VERSION,
            pid: 7,
            comm: "x".into(),
            taken_at: 1,
            page_size: 4096,
            anon: vec![PageRun {
                first: 16,
                count: 4,
            }],
            objects: vec![ObjectResidency {
                object: MemObject {
                    kind: MemKind::Shmem,
                    key: ObjectKey { dev: 1, ino: 2 },
                    path: "/memfd:a (deleted)".into(),
                    size: 8192,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                    unheld_stops: 0,
                    by_path: false,
                    handles: vec![Handle::Mapped {
                        start: 0x1000,
                        end: 0x3000,
                        pgoff: 0,
                        shared: true,
                    }],
                    interest: vec![PageRun { first: 0, count: 2 }],
                },
                resident: vec![PageRun { first: 1, count: 1 }],
            }],
            skipped: vec![],
        };
        let j = serde_json::to_vec(&s).unwrap();
        assert_eq!(ResidencySnapshot::from_json(&j).unwrap(), s);
        assert_eq!(
            s.pages(),
            ByKind {
                anon: 4,
                shmem: 1,
                file: 0
            }
        );
        let mut v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        v["format_version"] = 0.into();
        let e = ResidencySnapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.contains("ignored"), "{e}");
    }

    /// A file of an earlier plan, held no more: added with its resident pages and one more
    /// unheld Stop, until `max_unheld`; never twice, never when gone or not found by path.
    #[test]
    fn files_of_an_earlier_plan_are_remembered_for_a_few_stops() {
        use std::os::unix::fs::MetadataExt;
        let ps = sys::page_size();
        let dir = std::env::temp_dir().join(format!("torpor-remember-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("table");
        std::fs::write(&path, vec![7u8; (8 * ps) as usize]).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        let file = MemObject {
            kind: MemKind::File,
            key: ObjectKey {
                dev: md.dev(),
                ino: md.ino(),
            },
            path: path.display().to_string(),
            size: md.size(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            by_path: true,
            handles: vec![Handle::Fd { fd: 9 }],
            interest: vec![PageRun { first: 0, count: 8 }],
            unheld_stops: 0,
        };
        let empty = || ResidencySnapshot {
            format_version: ResidencySnapshot::FORMAT_VERSION,
            pid: std::process::id() as i32,
            comm: "t".into(),
            taken_at: 0,
            page_size: ps,
            anon: vec![],
            objects: vec![],
            skipped: vec![],
        };
        let mut s = empty();
        assert_eq!(s.remember(std::slice::from_ref(&file), 6), 1);
        assert_eq!(s.objects[0].object.unheld_stops, 1);
        // Just written: all eight pages are in the page cache.
        assert_eq!(s.objects[0].resident, vec![PageRun { first: 0, count: 8 }]);
        // Held again (already in the snapshot): not twice.
        assert_eq!(s.remember(std::slice::from_ref(&file), 6), 0);
        assert_eq!(s.objects.len(), 1);
        // Unheld for five Stops: the sixth drops it.
        let old = MemObject {
            unheld_stops: 5,
            ..file.clone()
        };
        assert_eq!(empty().remember(&[old], 6), 0);
        // Found through the target only (memfd, deleted file), or shared memory: not remembered.
        let unnamed = MemObject {
            by_path: false,
            ..file.clone()
        };
        let shmem = MemObject {
            kind: MemKind::Shmem,
            ..file.clone()
        };
        assert_eq!(empty().remember(&[unnamed, shmem], 6), 0);
        // Deleted since: not remembered.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(empty().remember(&[file], 6), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
