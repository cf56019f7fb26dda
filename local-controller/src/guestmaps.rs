//! The guest's maps, fetched from the `torpor-guest` agent (guest-enlight/PROTOCOL.md) over the
//! host end of its virtio-serial port (a unix socket QEMU listens on), and turned into
//! procswap's per-page classifier for the prefetch planner.
//!
//! Everything here is best effort for the caller: an absent, slow or broken agent is an error
//! the controller logs before going on without maps. Safety rule: the maps only order and
//! skip prefetch; nothing is discarded because of them.

use guest_enlight::protocol::{Client, ProtoError, Response, WireMap};
use guest_enlight::{FreeBitmap, MapInfo, PriorityMap, RamLayout};
use procswap::vm::PageClass;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why the maps could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Agent(String),
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
}

/// Largest map the host accepts (pages): 64 GiB of 4 KiB pages.
pub const MAX_MAP_PAGES: u64 = 16 << 20;

/// What the guest said, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMaps {
    pub page_size: u64,
    pub layout: RamLayout,
    /// Free bitmap, when the agent gave one that matches the layout.
    pub free: Option<FreeBitmap>,
    /// Priority map, when the agent gave one that matches the layout.
    pub priority: Option<PriorityMap>,
    /// Metadata of the priority map (else of the free bitmap).
    pub info: Option<MapInfo>,
    /// What was left out and why.
    pub notes: Vec<String>,
}

/// What the guest agent's maps held (in the API).
pub use torpor_api::MapsSummary;

impl GuestMaps {
    /// HELLO, GET_LAYOUT, GET_FREE_BITMAP, GET_PRIORITY_MAP over `client`. A map that fails or
    /// does not match the layout is left out (noted); a failed HELLO or layout is an error.
    pub fn fetch<S: std::io::Read + std::io::Write>(
        client: &mut Client<S>,
        window_ms: u32,
        host_page_size: u64,
    ) -> Result<(GuestMaps, String), AgentError> {
        let agent = match client.hello("torpord")? {
            Response::Hello {
                agent, page_size, ..
            } => {
                if page_size as u64 != host_page_size {
                    return Err(AgentError::Agent(format!(
                        "guest page size {page_size} differs from the host's {host_page_size}"
                    )));
                }
                agent
            }
            r => {
                return Err(AgentError::Agent(format!(
                    "unexpected answer to HELLO (type {:#x})",
                    r.msg_type()
                )))
            }
        };
        let (page_size, layout) = client.layout()?;
        if layout.total_pages() > MAX_MAP_PAGES {
            return Err(AgentError::Agent(format!(
                "layout of {} pages exceeds the host's limit {MAX_MAP_PAGES}",
                layout.total_pages()
            )));
        }
        let mut m = GuestMaps {
            page_size: page_size as u64,
            layout,
            free: None,
            priority: None,
            info: None,
            notes: vec![],
        };
        m.free = m.take_map("free bitmap", client.free_bitmap(), |w| {
            w.to_free_bitmap(MAX_MAP_PAGES)
        });
        m.priority = m.take_map("priority map", client.priority_map(window_ms), |w| {
            w.to_priority_map(MAX_MAP_PAGES)
        });
        m.info = m
            .priority
            .as_ref()
            .map(|p| p.info)
            .or(m.free.as_ref().map(|b| b.info));
        Ok((m, agent))
    }

    /// A map the agent answered (`what`: its name in the notes): kept when it indexes this
    /// layout and fits the host's limit (`convert` says), else a note says why it is ignored.
    fn take_map<M>(
        &mut self,
        what: &str,
        answer: Result<WireMap, ProtoError>,
        convert: impl FnOnce(&WireMap) -> Option<M>,
    ) -> Option<M> {
        let note = match answer {
            Ok(w) if w.layout != self.layout => format!("{what} indexes another layout: ignored"),
            Ok(w) => match convert(&w) {
                Some(map) => return Some(map),
                None => format!("{what} too large: ignored"),
            },
            Err(e) => format!("{what} unavailable: {e}"),
        };
        self.notes.push(note);
        None
    }

    /// What the maps say about guest page frame `pfn` (the planner's classifier). Without a
    /// priority map, every non-free page of the layout is class 0.
    pub fn classify(&self, pfn: u64) -> PageClass {
        match self.layout.index_of(pfn) {
            None => PageClass::Outside,
            Some(i) if self.free.as_ref().is_some_and(|f| f.get(i)) => PageClass::Free,
            Some(i) => {
                PageClass::Class(self.priority.as_ref().map(|p| p.get(i) as u8).unwrap_or(0))
            }
        }
    }

    /// Connect to the agent's socket and fetch, all within `budget`.
    pub fn fetch_from_socket(
        path: &Path,
        budget: Duration,
        window_ms: u32,
    ) -> Result<(GuestMaps, String), AgentError> {
        let t0 = Instant::now();
        let s = UnixStream::connect(path)
            .map_err(|e| AgentError::Agent(format!("cannot connect to {}: {e}", path.display())))?;
        // One deadline for the whole exchange: each read/write may take what is left of it.
        let left = budget
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left))
            .map_err(|e| AgentError::Agent(e.to_string()))?;
        s.set_write_timeout(Some(left))
            .map_err(|e| AgentError::Agent(e.to_string()))?;
        let mut c = Client::new(DeadlineStream {
            s,
            deadline: t0 + budget,
        });
        GuestMaps::fetch(&mut c, window_ms, procswap::sys::page_size()).map_err(|e| match e {
            AgentError::Proto(ProtoError::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) || t0.elapsed() >= budget =>
            {
                AgentError::Agent(format!("no complete answer within {budget:?} ({io})"))
            }
            e => e,
        })
    }

    pub fn summary(&self, agent: &str) -> MapsSummary {
        MapsSummary {
            agent: agent.to_string(),
            source: match self.info.map(|i| i.source) {
                Some(guest_enlight::MapSourceKind::ModuleExact) => "module".into(),
                Some(guest_enlight::MapSourceKind::PortableApprox) => "portable".into(),
                None => "none".into(),
            },
            approximate: self.info.map(|i| i.approximate).unwrap_or(true),
            layout_pages: self.layout.total_pages(),
            layout_ranges: self.layout.ranges.len(),
            free_pages: self.free.as_ref().map(|f| f.count_free()),
            priority_counts: self.priority.as_ref().map(|p| p.counts().to_vec()),
            window_ms: self.priority.as_ref().map(|p| p.info.window_ms),
            notes: self.notes.clone(),
        }
    }
}

/// A unix stream whose reads and writes never wait past one deadline.
struct DeadlineStream {
    s: UnixStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn arm(&self) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "agent deadline passed",
            ));
        }
        self.s.set_read_timeout(Some(left))?;
        self.s.set_write_timeout(Some(left))
    }
}

impl std::io::Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.s.read(buf)
    }
}

impl std::io::Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.s.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_enlight::protocol::{
        encode_frame, read_frame, Request, WireMap, DEFAULT_MAX_PAYLOAD,
    };
    use guest_enlight::{Category, MapSourceKind, PfnRange};
    use std::os::unix::net::UnixListener;

    fn maps() -> (RamLayout, FreeBitmap, PriorityMap) {
        let layout = RamLayout::new(vec![
            PfnRange {
                start: 1,
                count: 100,
            },
            PfnRange {
                start: 1 << 20,
                count: 50,
            },
        ])
        .unwrap();
        let info = MapInfo::now(MapSourceKind::PortableApprox, Duration::ZERO, 0);
        let mut free = FreeBitmap::new(layout.clone(), info);
        free.set_range(10, 20);
        let mut pri = PriorityMap::new(layout.clone(), info);
        pri.raise(0, Category::Kernel);
        pri.raise(100, Category::UserCode);
        (layout, free, pri)
    }

    /// A fake agent on a unix socket: answers the requests, or, given `silent`, holds the
    /// connection open without a word until told to go.
    fn agent(
        path: &Path,
        silent: Option<std::sync::mpsc::Receiver<()>>,
        other_layout: bool,
    ) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            if let Some(go) = silent {
                let _ = go.recv();
                return;
            }
            let (layout, free, pri) = maps();
            for _ in 0..4 {
                let Ok(f) = read_frame(&mut s, DEFAULT_MAX_PAYLOAD) else {
                    return;
                };
                let resp = match Request::decode(&f).unwrap() {
                    Request::Hello { .. } => Response::Hello {
                        version: 1,
                        agent: "fake-agent".into(),
                        page_size: 4096,
                        source: MapSourceKind::PortableApprox,
                    },
                    Request::GetLayout => Response::Layout {
                        page_size: 4096,
                        layout: layout.clone(),
                    },
                    Request::GetFreeBitmap => {
                        Response::FreeBitmap(WireMap::from_free_bitmap(&free))
                    }
                    Request::GetPriorityMap { .. } => {
                        let mut w = WireMap::from_priority_map(&pri);
                        if other_layout {
                            w = WireMap::from_priority_map(&PriorityMap::new(
                                RamLayout::new(vec![PfnRange {
                                    start: 0,
                                    count: 150,
                                }])
                                .unwrap(),
                                pri.info,
                            ));
                        }
                        Response::PriorityMap(w)
                    }
                    r => panic!("{r:?}"),
                };
                std::io::Write::write_all(&mut s, &encode_frame(&resp.to_frame(f.request_id)))
                    .unwrap();
            }
        })
    }

    #[test]
    fn fetch_from_a_fake_agent_and_classify() {
        let dir = std::env::temp_dir().join(format!("lc-guestmaps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ok.sock");
        // Budgets of a fetch that must succeed only catch a hang (the agent is a thread of this
        // test process, which shares 2 cores with the rest of `cargo test`).
        let h = agent(&p, None, false);
        let (m, name) = GuestMaps::fetch_from_socket(&p, Duration::from_secs(120), 0).unwrap();
        h.join().unwrap();
        assert_eq!(name, "fake-agent");
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        assert_eq!(m.classify(0), PageClass::Outside);
        assert_eq!(m.classify(1), PageClass::Class(0));
        assert_eq!(m.classify(11), PageClass::Free);
        assert_eq!(m.classify(2), PageClass::Class(8));
        assert_eq!(m.classify(1 << 20), PageClass::Class(4));
        assert_eq!(m.classify(101), PageClass::Outside);
        let s = m.summary(&name);
        assert_eq!(
            (
                s.layout_pages,
                s.free_pages,
                s.source.as_str(),
                s.approximate
            ),
            (150, Some(20), "portable", true)
        );
        assert_eq!(s.priority_counts.unwrap()[Category::UserCode as usize], 1);

        // A priority map for another layout is left out (noted), the rest is kept.
        let p = dir.join("other.sock");
        let h = agent(&p, None, true);
        let (m, _) = GuestMaps::fetch_from_socket(&p, Duration::from_secs(120), 0).unwrap();
        h.join().unwrap();
        assert!(m.priority.is_none() && m.free.is_some());
        assert!(m.notes[0].contains("another layout"), "{:?}", m.notes);
        assert_eq!(
            m.classify(1),
            PageClass::Class(0),
            "no priority map: non-free layout pages are class 0"
        );

        // A silent agent (it keeps the connection open for as long as the fetch takes): an error
        // once the budget has run out, naming it; the upper bound only catches a fetch that
        // ignores its budget altogether.
        let p = dir.join("silent.sock");
        let (go, wait) = std::sync::mpsc::channel();
        let h = agent(&p, Some(wait), false);
        let t = std::time::Instant::now();
        let e = GuestMaps::fetch_from_socket(&p, Duration::from_millis(400), 0).unwrap_err();
        let took = t.elapsed();
        go.send(()).unwrap();
        h.join().unwrap();
        assert!(e.to_string().contains("within"), "{e}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(60),
            "{took:?}"
        );
        // No agent at all.
        let e = GuestMaps::fetch_from_socket(&dir.join("absent.sock"), Duration::from_secs(1), 0)
            .unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
