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

use nix::sys::mman;
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::time::Instant;

const MIB: usize = 1 << 20;

use torpor_testsupport::child::{fresh_file, serve};
use torpor_testsupport::pattern::{checksum, measured, Xorshift};

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

/// Argument `i` as a number (`default` when absent).
fn arg(args: &[&str], i: usize, default: &str) -> Result<usize, String> {
    args.get(i)
        .copied()
        .unwrap_or(default)
        .parse()
        .map_err(|e| format!("{e}"))
}

/// `file_mib` MiB of pseudo-random data written to `path`, synced, mapped shared read-only;
/// with its per-MiB checksums.
fn file_mapping(
    path: &str,
    file_mib: usize,
    rng: &mut Xorshift,
) -> Result<(Mapping, Vec<u64>), String> {
    let mut f = fresh_file(path)?;
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
        mman::mmap(
            None,
            NonZeroUsize::new(len).ok_or("empty file")?,
            mman::ProtFlags::PROT_READ,
            mman::MapFlags::MAP_SHARED,
            f.as_fd(),
            0,
        )
    }
    .map_err(|e| format!("mmap {path}: {e}"))?;
    let m = Mapping { ptr, len };
    let sums = m.words().chunks(MIB / 8).map(checksum).collect();
    Ok((m, sums))
}

/// `mib` MiB of anonymous memory mapped with `flags` (locked or shared), filled with 0x5a.
fn extra_mapping(mib: usize, flags: mman::MapFlags) -> Result<Mapping, String> {
    let len = mib * MIB;
    // SAFETY: a fresh anonymous mapping; we only write it here through the pointer we got
    // and then only read it through `Mapping::words`.
    let ptr = unsafe {
        mman::mmap_anonymous(
            None,
            NonZeroUsize::new(len).ok_or("empty mapping")?,
            mman::ProtFlags::PROT_READ | mman::ProtFlags::PROT_WRITE,
            flags,
        )
    }
    .map_err(|e| format!("mmap anon {mib} MiB: {e}"))?;
    // SAFETY: `ptr` is a fresh, exclusively owned, writable mapping of `len` bytes.
    unsafe { std::ptr::write_bytes(ptr.as_ptr() as *mut u8, 0x5a, len) };
    Ok(Mapping { ptr, len })
}

fn alloc(args: &[&str]) -> Result<State, String> {
    let anon_mib: usize = args
        .first()
        .ok_or("anon_mib")?
        .parse()
        .map_err(|e| format!("{e}"))?;
    let file_path = *args.get(1).unwrap_or(&"-");
    let file_mib = arg(args, 2, "0")?;
    let locked_mib = arg(args, 3, "0")?;
    let shared_mib = arg(args, 4, "0")?;

    let mut anon = vec![0u64; anon_mib * MIB / 8];
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    for w in anon.iter_mut() {
        *w = rng.next();
    }
    let anon_sums = anon.chunks(MIB / 8).map(checksum).collect();
    let file = (file_path != "-" && file_mib > 0)
        .then(|| file_mapping(file_path, file_mib, &mut rng))
        .transpose()?;
    let locked = mman::MapFlags::MAP_PRIVATE | mman::MapFlags::MAP_LOCKED;
    let extra = [
        (locked_mib, locked),
        (shared_mib, mman::MapFlags::MAP_SHARED),
    ]
    .into_iter()
    .filter(|(mib, _)| *mib > 0)
    .map(|(mib, flags)| extra_mapping(mib, flags))
    .collect::<Result<_, _>>()?;
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

impl State {
    /// `READY <anon_addr> <anon_len> <file_addr> <file_len>`.
    fn ready(&self) -> String {
        let (fa, fl) = self
            .file
            .as_ref()
            .map(|(m, _)| (m.ptr.as_ptr() as usize, m.len))
            .unwrap_or((0, 0));
        format!(
            "READY {} {} {} {}",
            self.anon.as_ptr() as usize,
            self.anon.len() * 8,
            fa,
            fl
        )
    }

    /// `OK <majflt> <minflt> <micros> <rest_majflt>` or `BAD <what>`.
    fn verify(&self) -> String {
        // Warm the code path on a tiny slice first so the measured window is about data.
        std::hint::black_box(checksum(&self.anon[..1]));
        let (r, anon) = measured(|| verify_anon(self));
        let (r, rest) = measured(|| r.and_then(|()| verify_rest(self)));
        match r {
            Ok(()) => format!(
                "OK {} {} {} {}",
                anon.major_faults, anon.minor_faults, anon.micros, rest.major_faults
            ),
            Err(e) => format!("BAD {e}"),
        }
    }

    /// Reads every page of MiB [from, to) of the anon area, repeatedly for `ms` milliseconds.
    fn touch(&self, from: usize, to: usize, ms: u128) -> String {
        let to = to.min(self.anon.len() * 8 / MIB);
        let t0 = Instant::now();
        let mut acc = 0u64;
        // At least one whole pass, however late this process gets the CPU: a test
        // may count on every page of the range having been read once.
        loop {
            for w in self.anon[from * MIB / 8..to * MIB / 8].iter().step_by(512) {
                acc = acc.wrapping_add(*w);
            }
            if t0.elapsed().as_millis() >= ms {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::hint::black_box(acc);
        "TOUCHED".into()
    }
}

fn main() {
    let mut state: Option<State> = None;
    serve(|line| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let p = |i: usize| {
            parts
                .get(i)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        Some(match (parts.first().copied(), &state) {
            (Some("ALLOC"), _) => match alloc(&parts[1..]) {
                Ok(s) => state.insert(s).ready(),
                Err(e) => format!("ERR {e}"),
            },
            (Some("VERIFY" | "TOUCH"), None) => "ERR nothing allocated".into(),
            (Some("VERIFY"), Some(s)) => s.verify(),
            (Some("TOUCH"), Some(s)) => s.touch(p(1), p(2), p(3) as u128),
            (Some("EXIT"), _) => return None,
            _ => format!("ERR unknown command {line:?}"),
        })
    });
}
