//! Test helper for procswap's root test suite (not part of the library API).
//!
//! Line protocol on stdin/stdout, so a test can move the child into cgroups *before* it
//! allocates (memcg charges pages at allocation time):
//! - prints `HELLO <pid>` at start;
//! - `ALLOC <anon_mib> <file_path|-> <file_mib> [locked_mib] [shared_mib]` → fills anonymous memory
//!   with pseudo-random data, maps and reads a file, optionally an mlocked and a shared-anon
//!   area; records checksums; answers `READY <anon_addr> <anon_len> <file_addr> <file_len>`;
//! - `VERIFY` → re-checks every checksum; answers `OK <majflt> <minflt> <micros> <rest_majflt>`
//!   (fault deltas and time while checking the anonymous area; major faults while checking the
//!   file and extra mappings) or `BAD <what>`;
//! - `TOUCH <from_mib> <to_mib> <millis>` → reads every page of that part of the anon area,
//!   repeatedly for `millis` (at least once, however late it runs); answers `TOUCHED`;
//! - `EXIT` → exits 0.

use std::fs::File;
use std::io::{BufRead, Write};
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::time::Instant;

const MIB: usize = 1 << 20;

use torpor_testsupport::pattern::{checksum, self_faults as faults, Xorshift};

/// A read-only view of a mapped area.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn words(&self) -> &[u64] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes (page aligned, so aligned for
        // u64) that is never unmapped while `self` exists and never written through another alias.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const u64, self.len / 8) }
    }
}

struct State {
    anon: Vec<u64>,
    anon_sums: Vec<u64>,
    file: Option<(Mapping, Vec<u64>)>,
    extra: Vec<Mapping>,
}

fn alloc(args: &[&str]) -> Result<State, String> {
    let anon_mib: usize = args
        .first()
        .ok_or("anon_mib")?
        .parse()
        .map_err(|e| format!("{e}"))?;
    let file_path = *args.get(1).unwrap_or(&"-");
    let file_mib: usize = args
        .get(2)
        .unwrap_or(&"0")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let locked_mib: usize = args
        .get(3)
        .unwrap_or(&"0")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let shared_mib: usize = args
        .get(4)
        .unwrap_or(&"0")
        .parse()
        .map_err(|e| format!("{e}"))?;

    let words_per_mib = MIB / 8;
    let mut anon = vec![0u64; anon_mib * words_per_mib];
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    for w in anon.iter_mut() {
        *w = rng.next();
    }
    let anon_sums = anon.chunks(words_per_mib).map(checksum).collect();

    let mut file = None;
    if file_path != "-" && file_mib > 0 {
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(file_path)
            .map_err(|e| format!("{file_path}: {e}"))?;
        let mut buf = vec![0u8; MIB];
        for _ in 0..file_mib {
            for c in buf.chunks_exact_mut(8) {
                c.copy_from_slice(&rng.next().to_ne_bytes());
            }
            f.write_all(&buf).map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| e.to_string())?;
        let len = file_mib * MIB;
        // SAFETY: mapping a file we own read-only and shared; the result is only read through
        // `Mapping::words` and the file is not truncated while mapped.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(len).expect("nonzero"),
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                f.as_fd(),
                0,
            )
        }
        .map_err(|e| format!("mmap {file_path}: {e}"))?;
        let m = Mapping { ptr, len };
        let sums = m.words().chunks(words_per_mib).map(checksum).collect();
        file = Some((m, sums));
    }

    let mut extra = Vec::new();
    for (mib, flags) in [
        (
            locked_mib,
            nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_LOCKED,
        ),
        (shared_mib, nix::sys::mman::MapFlags::MAP_SHARED),
    ] {
        if mib == 0 {
            continue;
        }
        let len = mib * MIB;
        // SAFETY: a fresh anonymous mapping; we only write it here through the pointer we got
        // and then only read it through `Mapping::words`.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                NonZeroUsize::new(len).expect("nonzero"),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                flags,
            )
        }
        .map_err(|e| format!("mmap anon {mib} MiB: {e}"))?;
        // SAFETY: `ptr` is a fresh, exclusively owned, writable mapping of `len` bytes.
        unsafe { std::ptr::write_bytes(ptr.as_ptr() as *mut u8, 0x5a, len) };
        extra.push(Mapping { ptr, len });
    }
    Ok(State {
        anon,
        anon_sums,
        file,
        extra,
    })
}

fn verify_anon(s: &State) -> Result<(), String> {
    let words_per_mib = MIB / 8;
    for (i, (c, &want)) in s.anon.chunks(words_per_mib).zip(&s.anon_sums).enumerate() {
        if checksum(c) != want {
            return Err(format!("anon MiB {i}"));
        }
    }
    Ok(())
}

fn verify_rest(s: &State) -> Result<(), String> {
    let words_per_mib = MIB / 8;
    if let Some((m, sums)) = &s.file {
        for (i, (c, &want)) in m.words().chunks(words_per_mib).zip(sums).enumerate() {
            if checksum(c) != want {
                return Err(format!("file MiB {i}"));
            }
        }
    }
    for m in &s.extra {
        if m.words().iter().any(|&w| w != 0x5a5a_5a5a_5a5a_5a5a) {
            return Err("extra mapping".into());
        }
    }
    Ok(())
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    writeln!(out, "HELLO {}", std::process::id()).ok();
    out.flush().ok();
    let mut state: Option<State> = None;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let reply = match parts.first().copied() {
            Some("ALLOC") => match alloc(&parts[1..]) {
                Ok(s) => {
                    let (fa, fl) = s
                        .file
                        .as_ref()
                        .map(|(m, _)| (m.ptr.as_ptr() as usize, m.len))
                        .unwrap_or((0, 0));
                    let r = format!(
                        "READY {} {} {} {}",
                        s.anon.as_ptr() as usize,
                        s.anon.len() * 8,
                        fa,
                        fl
                    );
                    state = Some(s);
                    r
                }
                Err(e) => format!("ERR {e}"),
            },
            Some("VERIFY") => match &state {
                None => "ERR nothing allocated".into(),
                Some(s) => {
                    // Warm the code path on a tiny slice first so the measured window is about data.
                    std::hint::black_box(checksum(&s.anon[..1]));
                    let (maj0, min0) = faults();
                    let t0 = Instant::now();
                    let r = verify_anon(s);
                    let us = t0.elapsed().as_micros();
                    let (maj1, min1) = faults();
                    let r = r.and_then(|()| verify_rest(s));
                    let (maj2, _) = faults();
                    match r {
                        Ok(()) => {
                            format!("OK {} {} {} {}", maj1 - maj0, min1 - min0, us, maj2 - maj1)
                        }
                        Err(e) => format!("BAD {e}"),
                    }
                }
            },
            Some("TOUCH") => match &state {
                None => "ERR nothing allocated".into(),
                Some(s) => {
                    let p = |i: usize| {
                        parts
                            .get(i)
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0)
                    };
                    let (from, to, ms) = (p(1), p(2).min(s.anon.len() * 8 / MIB), p(3));
                    let t0 = Instant::now();
                    let mut acc = 0u64;
                    // At least one whole pass, however late this process gets the CPU: a test
                    // may count on every page of the range having been read once.
                    loop {
                        for w in s.anon[from * MIB / 8..to * MIB / 8].iter().step_by(512) {
                            acc = acc.wrapping_add(*w);
                        }
                        if t0.elapsed().as_millis() >= ms as u128 {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    std::hint::black_box(acc);
                    "TOUCHED".into()
                }
            },
            Some("EXIT") => break,
            _ => format!("ERR unknown command {line:?}"),
        };
        writeln!(out, "{reply}").ok();
        out.flush().ok();
    }
}
