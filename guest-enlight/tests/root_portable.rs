//! Portable builders on this host (root). Run with tests/run-root-tests.sh.

use guest_enlight::portable::{self, ActivityTracker, FreeMode, PriorityOptions};
use guest_enlight::{Category, RamLayout};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

fn pfn_of(pid: &str, vaddr: u64) -> Option<u64> {
    let f = File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, vaddr / guest_enlight::layout::page_size() * 8)
        .unwrap();
    let e = u64::from_le_bytes(b);
    (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
}

fn buddyinfo_pages() -> u64 {
    std::fs::read_to_string("/proc/buddyinfo")
        .unwrap()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(4)
                .enumerate()
                .map(|(o, c)| c.parse::<u64>().unwrap() << o)
                .sum::<u64>()
        })
        .sum()
}

#[test]
#[ignore = "root: needs /proc/iomem addresses and /proc/kpageflags"]
fn free_bitmap_vs_memfree_and_build_time() {
    let layout = RamLayout::from_proc().expect("layout (root?)");
    let gib =
        (layout.total_pages() * guest_enlight::layout::page_size()) as f64 / (1u64 << 30) as f64;
    // Free memory moves with everything else running while the bitmaps are built: each bitmap is
    // compared with the system's figures read before and after it (the larger of the two), and
    // infer-order with flagged bitmaps built on both sides of it (the smaller).
    let (buddy0, memfree0) = (buddyinfo_pages(), portable::memfree_pages().unwrap());
    let t = Instant::now();
    let flagged = portable::build_free_bitmap(&layout, FreeMode::Flagged).unwrap();
    let flagged_ms = t.elapsed().as_secs_f64() * 1e3;
    let (buddy1, memfree1) = (buddyinfo_pages(), portable::memfree_pages().unwrap());
    let (buddy, memfree) = (buddy0.max(buddy1), memfree0.max(memfree1));
    let inferred = portable::build_free_bitmap(&layout, FreeMode::InferOrder).unwrap();
    let flagged_after = portable::build_free_bitmap(&layout, FreeMode::Flagged)
        .unwrap()
        .count_free();
    let (f, i) = (flagged.count_free(), inferred.count_free());
    eprintln!(
        "RAM {gib:.2} GiB; free bitmap build {flagged_ms:.0} ms ({:.1} ms/GiB); flagged {f} pages = {:.3} x buddyinfo {buddy}, {:.3} x MemFree {memfree}; infer-order {i} = {:.3} x MemFree",
        flagged_ms / gib,
        f as f64 / buddy as f64,
        f as f64 / memfree as f64,
        i as f64 / memfree as f64
    );
    assert!(flagged.info.approximate);
    // Free pages are a subset of what the buddy lists hold (+ churn between the reads).
    assert!(f > 0);
    assert!(
        (f as f64) < buddy as f64 * 1.25 + 4096.0,
        "flagged {f} vs buddyinfo {buddy}"
    );
    assert!(
        (f as f64) < memfree as f64 * 1.25 + 4096.0,
        "flagged {f} vs MemFree {memfree}"
    );
    let f_min = f.min(flagged_after);
    assert!(
        i as f64 >= f_min as f64 * 0.9,
        "infer-order {i} should not be below flagged {f} / {flagged_after} (before / after it)"
    );
}

#[inline(never)]
fn text_marker(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7)
}

/// An idle process: sleeps through the whole window. It must be asleep before the window
/// begins (exec and startup are CPU time): wait until it sits in its sleep syscall
/// (nanosleep 35 or clock_nanosleep 230 in /proc/PID/syscall), not a fixed 300 ms.
fn spawn_asleep() -> std::process::Child {
    let idle = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let sc =
            std::fs::read_to_string(format!("/proc/{}/syscall", idle.id())).unwrap_or_default();
        if matches!(sc.split_whitespace().next(), Some("35" | "230")) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "`sleep 30` not asleep after 120 s: /proc/PID/syscall {sc:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    idle
}

/// The idle process's private stack pages are not User_*.
fn check_idle_stack(map: &guest_enlight::maps::PriorityMap, idle: &std::process::Child) {
    let pid = idle.id().to_string();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let stack = maps
        .lines()
        .find(|l| l.ends_with("[stack]"))
        .expect("stack vma");
    let (a, b) = stack
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let (a, b) = (
        u64::from_str_radix(a, 16).unwrap(),
        u64::from_str_radix(b, 16).unwrap(),
    );
    let mut checked = 0;
    for v in (a..b).step_by(4096) {
        if let Some(pfn) = pfn_of(&pid, v) {
            let c = map.category_of_pfn(pfn).unwrap();
            assert!(
                !matches!(c, Category::UserCode | Category::UserData),
                "idle stack page {v:#x} is {c:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no present stack page in the idle process");
    eprintln!("idle process: {checked} stack pages checked, none User_*");
}

#[test]
#[ignore = "root: needs PFNs from /proc/PID/pagemap and /proc/kpageflags"]
fn active_process_pages_are_user_idle_are_not() {
    let layout = RamLayout::from_proc().expect("layout (root?)");
    let mut idle = spawn_asleep();
    let mut tracker = ActivityTracker::new(Duration::from_secs(1));
    tracker.sample();
    // This process is active: it runs during the window, touching its heap.
    let mut heap = vec![0u8; 4 << 20];
    let t = Instant::now();
    let mut acc = 0u64;
    // At least one pass, however late this thread runs.
    loop {
        for i in (0..heap.len()).step_by(4096) {
            heap[i] = heap[i].wrapping_add(1);
        }
        acc = acc.wrapping_add(text_marker(acc));
        if t.elapsed() >= Duration::from_millis(1200) {
            break;
        }
    }
    std::hint::black_box(acc);
    let t = Instant::now();
    let (map, stats) = portable::build_priority_map(
        &layout,
        &mut tracker,
        Duration::from_secs(1),
        &PriorityOptions::default(),
    )
    .unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let gib =
        (layout.total_pages() * guest_enlight::layout::page_size()) as f64 / (1u64 << 30) as f64;
    eprintln!(
        "priority map build {ms:.0} ms ({:.1} ms/GiB) stats {stats:?}",
        ms / gib
    );
    let counts = map.counts();
    for c in Category::ALL {
        eprintln!("  {:<17} {:>9}", c.name(), counts[c as usize]);
    }
    assert!(stats.effective_window_ms >= 1000);
    assert!(map.info.approximate);

    let me = std::process::id().to_string();
    let code_pfn =
        pfn_of(&me, text_marker as fn(u64) -> u64 as usize as u64).expect("own text present");
    assert_eq!(
        map.category_of_pfn(code_pfn),
        Some(Category::UserCode),
        "own text page"
    );
    let mut data_hits = 0;
    for off in (0..heap.len()).step_by(64 * 4096) {
        let pfn = pfn_of(&me, heap.as_ptr() as u64 + off as u64).expect("heap page present");
        // Only pages still mapped as they were when the map was built.
        if map.category_of_pfn(pfn) == Some(Category::UserData) {
            data_hits += 1;
        }
    }
    assert!(data_hits >= 15, "heap pages User_Data: {data_hits}/16");

    check_idle_stack(&map, &idle);
    idle.kill().unwrap();
    idle.wait().unwrap();
}
