//! Test helper for procswap's memory-kinds root tests (`procswap/tests/root_kinds.rs`); not
//! part of the library API.
//!
//! Holds one area of every kind, each page filled with a pattern derived from (area, page), so
//! any page can be checked. Line protocol on stdin/stdout (moved into cgroups before it
//! allocates: memcg charges pages at allocation):
//! - prints `HELLO <pid>`;
//! - `ANON <pages>` → private anonymous area; `OK <addr>`
//! - `MEMFD <pages>` → memfd, mapped shared; `OK <addr>`
//! - `SYSV <pages>` → SysV segment (IPC_PRIVATE, removed once attached); `OK <addr>`
//! - `MFILE <path> <pages> <from> <to>` → writes the file, syncs, drops its cache except pages
//!   [from, to), maps it shared read-only (MADV_RANDOM) and touches [from, to); `OK <addr>`
//! - `RFILE <path> <pages> <from> <to>` → writes the file, syncs, drops its cache except pages
//!   [from, to), keeps it open (never mapped) with POSIX_FADV_RANDOM; `OK <fd>`
//! - `TOUCH <area> <page>...` → reads those pages in that order; `OK <majflt> <minflt> <micros>`
//! - `TOUCHRANGE <area> <from> <to>` → reads pages [from, to) in address order; same answer
//! - `RETAG <area> <tag> <page>...` → (anon, memfd, SysV) writes the pattern of `tag` into
//!   those pages in that order, and `tag` becomes the area's (list every page, or `VERIFY`
//!   fails); `OK`
//! - `READ <page>...` → `pread`s those pages of the RFILE; `OK <majflt> <minflt> <micros>`
//! - `FORK <n>` → forks `n` children that read every page of the shared areas (memfd, SysV),
//!   then wait (killed with the parent: PR_SET_PDEATHSIG); `OK <pid>...` once all have read;
//! - `VERIFY` → checks every page of every area; `OK <majflt> <minflt>` or `BAD <what>`
//! - `EXIT`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use torpor_testsupport::child::{fresh_file, serve};
use torpor_testsupport::pattern::measured;

const PRW: i32 = libc::PROT_READ | libc::PROT_WRITE;

struct Area {
    name: &'static str,
    tag: u64,
    ptr: *mut u8,
    pages: usize,
}

fn ps() -> usize {
    procswap::sys::page_size() as usize
}

fn word(tag: u64, page: usize) -> u64 {
    (tag << 48) ^ (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn fill(buf: &mut [u8], tag: u64, first_page: usize) {
    for (i, p) in buf.chunks_exact_mut(ps()).enumerate() {
        let w = word(tag, first_page + i).to_ne_bytes();
        for c in p.chunks_exact_mut(8) {
            c.copy_from_slice(&w);
        }
    }
}

impl Area {
    fn page(&self, i: usize) -> &[u8] {
        assert!(
            i < self.pages,
            "page {i} out of {} in {}",
            self.pages,
            self.name
        );
        // SAFETY: `ptr` is a live mapping of `pages` pages that stays mapped while the process
        // runs; page `i` is inside it; nothing writes it after the fill.
        unsafe { std::slice::from_raw_parts(self.ptr.add(i * ps()), ps()) }
    }

    fn check(&self, i: usize) -> bool {
        let want = word(self.tag, i).to_ne_bytes();
        let p = self.page(i);
        p[..8] == want && p[ps() - 8..] == want
    }
}

fn map(pages: usize, flags: i32, fd: i32, prot: i32) -> Result<*mut u8, String> {
    // SAFETY: a fresh mapping chosen by the kernel; checked against MAP_FAILED.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), pages * ps(), prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    Ok(p as *mut u8)
}

fn writable_area(name: &'static str, tag: u64, ptr: *mut u8, pages: usize) -> Area {
    // SAFETY: `ptr` is a fresh writable mapping of `pages` pages owned by this process.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, pages * ps()) };
    fill(buf, tag, 0);
    Area {
        name,
        tag,
        ptr,
        pages,
    }
}

/// Write a file of `pages` pattern pages, sync, and drop its cache except [from, to).
fn make_file(path: &str, tag: u64, pages: usize, from: usize, to: usize) -> Result<File, String> {
    let f = fresh_file(path)?;
    // Page by page: a large write would get large page-cache folios (ext4, Linux ≥ 6.16), which
    // the partial DONTNEED below cannot split.
    let mut buf = vec![0u8; ps()];
    for i in 0..pages {
        fill(&mut buf, tag, i);
        f.write_all_at(&buf, (i * ps()) as u64)
            .map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    let drop = |a: usize, b: usize| {
        if b > a {
            // SAFETY: integer arguments on an fd we own.
            unsafe {
                libc::posix_fadvise(
                    f.as_raw_fd(),
                    (a * ps()) as i64,
                    ((b - a) * ps()) as i64,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
    };
    drop(0, from);
    drop(to, pages);
    Ok(f)
}

fn touch(a: &Area, idx: &[usize]) -> Result<(), String> {
    for &i in idx {
        if !a.check(i) {
            return Err(format!("{} page {i}", a.name));
        }
    }
    Ok(())
}

/// `FORK <n>`: children that share the shared areas and have read every page of them.
fn fork_holders(areas: &[Area], n: usize) -> Result<String, String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let parent = std::process::id() as i32;
    let mut pids = Vec::new();
    for _ in 0..n {
        // SAFETY: this helper is single-threaded, so the child may run any code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: prctl/getppid/write/pause/_exit with integer arguments or a local byte.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                let shared = areas
                    .iter()
                    .filter(|a| a.name == "memfd" || a.name == "sysv");
                let ok = shared
                    .map(|a| touch(a, &(0..a.pages).collect::<Vec<_>>()))
                    .all(|r| r.is_ok());
                let b = [ok as u8];
                libc::write(fds[1], b.as_ptr() as *const libc::c_void, 1);
                loop {
                    libc::pause();
                }
            }
        }
        pids.push(pid);
    }
    let mut b = [0u8; 1];
    for _ in 0..n {
        // SAFETY: reading one byte into a local buffer from the pipe just made.
        if unsafe { libc::read(fds[0], b.as_mut_ptr() as *mut libc::c_void, 1) } != 1 || b[0] != 1 {
            return Err("a child could not read the shared areas".into());
        }
    }
    // SAFETY: closing the pipe we made (the children keep their copies).
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    Ok(format!(
        "OK {}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// `OK <majflt> <minflt> <micros>` for `f`, measured.
fn timed(f: impl FnOnce() -> Result<(), String>) -> Result<String, String> {
    let (r, c) = measured(f);
    r.map(|()| format!("OK {} {} {}", c.major_faults, c.minor_faults, c.micros))
}

fn memfd_area(pages: usize) -> Result<Area, String> {
    // SAFETY: a NUL-terminated name literal.
    let fd = unsafe { libc::memfd_create(c"torpor-kindchild".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: integer arguments on the fd just created.
    if unsafe { libc::ftruncate(fd, (pages * ps()) as i64) } != 0 {
        return Err("ftruncate".into());
    }
    let p = map(pages, libc::MAP_SHARED, fd, PRW)?;
    // SAFETY: the mapping holds its own reference to the memfd.
    unsafe { libc::close(fd) };
    Ok(writable_area("memfd", 2, p, pages))
}

fn sysv_area(pages: usize) -> Result<Area, String> {
    // SAFETY: integer arguments.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, pages * ps(), libc::IPC_CREAT | 0o600) };
    if id < 0 {
        return Err(format!("shmget: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: attach the segment just created at a kernel-chosen address.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    // SAFETY: marking it removed: it lives until the last detach.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    if p as isize == -1 {
        return Err(format!("shmat: {}", std::io::Error::last_os_error()));
    }
    Ok(writable_area("sysv", 3, p as *mut u8, pages))
}

/// The file written, its cache dropped except [from, to), mapped read-only and [from, to) touched.
fn mfile_area(path: &str, pages: usize, from: usize, to: usize) -> Result<Area, String> {
    let f = make_file(path, 4, pages, from, to)?;
    let p = map(pages, libc::MAP_SHARED, f.as_raw_fd(), libc::PROT_READ)?;
    // SAFETY: advice on our own fresh mapping.
    unsafe { libc::madvise(p as *mut libc::c_void, pages * ps(), libc::MADV_RANDOM) };
    let a = Area {
        name: "mfile",
        tag: 4,
        ptr: p,
        pages,
    };
    touch(&a, &(from..to).collect::<Vec<_>>())?;
    Ok(a)
}

/// The child's areas and its open (never mapped) file.
#[derive(Default)]
struct Kinds {
    areas: Vec<Area>,
    /// The RFILE: (file, tag, pages).
    rfile: Option<(File, u64, usize)>,
}

impl Kinds {
    fn add(&mut self, a: Area) -> String {
        let r = format!("OK {}", a.ptr as usize);
        self.areas.push(a);
        r
    }

    fn area(&self, name: Option<&&str>) -> Result<&Area, String> {
        let name = name.ok_or("area")?;
        self.areas
            .iter()
            .find(|a| a.name == *name)
            .ok_or(format!("no area {name}"))
    }

    /// `RETAG`: the pattern of `tag` written into `pages` of a writable area, in that order.
    fn retag(&mut self, name: Option<&&str>, tag: u64, pages: &[usize]) -> Result<String, String> {
        let name = name.ok_or("area")?;
        let a = self
            .areas
            .iter_mut()
            .find(|a| a.name == *name && matches!(a.name, "anon" | "memfd" | "sysv"))
            .ok_or(format!("no writable area {name}"))?;
        if let Some(&i) = pages.iter().find(|&&i| i >= a.pages) {
            return Err(format!("page {i} out of {} in {}", a.pages, a.name));
        }
        for &i in pages {
            // SAFETY: `ptr` is a live writable mapping of `pages` pages owned by this process
            // (anon, memfd and SysV areas are mapped read-write); page `i` is inside it.
            let buf = unsafe { std::slice::from_raw_parts_mut(a.ptr.add(i * ps()), ps()) };
            fill(buf, tag, i);
        }
        a.tag = tag;
        Ok("OK".into())
    }

    fn rfile(
        &mut self,
        path: &str,
        pages: usize,
        from: usize,
        to: usize,
    ) -> Result<String, String> {
        let f = make_file(path, 5, pages, from, to)?;
        // SAFETY: integer arguments on an fd we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let fd = f.as_raw_fd();
        self.rfile = Some((f, 5, pages));
        Ok(format!("OK {fd}"))
    }

    /// `pread`s pages of the RFILE, checking each.
    fn read(&self, idx: &[usize]) -> Result<(), String> {
        let (f, tag, pages) = self.rfile.as_ref().ok_or("no RFILE")?;
        let mut buf = vec![0u8; ps()];
        for &i in idx {
            if i >= *pages {
                return Err(format!("rfile page {i} out of {pages}"));
            }
            f.read_exact_at(&mut buf, (i * ps()) as u64)
                .map_err(|e| e.to_string())?;
            if buf[..8] != word(*tag, i).to_ne_bytes() {
                return Err(format!("rfile page {i}"));
            }
        }
        Ok(())
    }

    fn verify(&self) -> Result<String, String> {
        let (r, c) = measured(|| {
            self.areas
                .iter()
                .try_for_each(|a| touch(a, &(0..a.pages).collect::<Vec<_>>()))
        });
        r.map(|()| format!("OK {} {}", c.major_faults, c.minor_faults))
    }

    /// The answer to one command line; `None` for `EXIT`.
    fn answer(&mut self, line: &str) -> Option<Result<String, String>> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| {
            parts
                .get(i)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let nums = |skip: usize| -> Vec<usize> {
            parts
                .iter()
                .skip(skip)
                .filter_map(|v| v.parse().ok())
                .collect()
        };
        let pages = nums(2);
        Some(match parts.first().copied() {
            Some("ANON") => map(n(1), libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, PRW)
                .map(|p| self.add(writable_area("anon", 1, p, n(1)))),
            Some("MEMFD") => memfd_area(n(1)).map(|a| self.add(a)),
            Some("SYSV") => sysv_area(n(1)).map(|a| self.add(a)),
            Some("MFILE") => parts
                .get(1)
                .ok_or("path".to_string())
                .and_then(|path| mfile_area(path, n(2), n(3), n(4)))
                .map(|a| self.add(a)),
            Some("RFILE") => parts
                .get(1)
                .ok_or("path".to_string())
                .and_then(|path| self.rfile(path, n(2), n(3), n(4))),
            Some("TOUCH") => self
                .area(parts.get(1))
                .and_then(|a| timed(|| touch(a, &pages))),
            Some("TOUCHRANGE") => self
                .area(parts.get(1))
                .and_then(|a| timed(|| touch(a, &(n(2)..n(3).min(a.pages)).collect::<Vec<_>>()))),
            Some("RETAG") => self.retag(parts.get(1), n(2) as u64, &nums(3)),
            Some("READ") => {
                let idx = nums(1);
                timed(|| self.read(&idx))
            }
            Some("FORK") => fork_holders(&self.areas, n(1)),
            Some("VERIFY") => self.verify(),
            Some("EXIT") => return None,
            _ => Err(format!("unknown command {line:?}")),
        })
    }
}

fn main() {
    let mut kinds = Kinds::default();
    serve(|line| {
        kinds.answer(line).map(|r| match r {
            Ok(r) => r,
            Err(e) => format!("BAD {e}"),
        })
    });
}
