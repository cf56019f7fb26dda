//! The seed replays: two dry runs (no module, no children) with the same seed and one thread
//! print the same request sequence; another seed prints another one.

use std::process::Command;

fn trace(seed: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_torpor-kmod-fuzz"))
        .args([
            "--dry-run",
            "--trace",
            "--threads",
            "1",
            "--count",
            "400",
            "--seed",
            seed,
        ])
        .output()
        .expect("run torpor-kmod-fuzz");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn same_seed_same_requests() {
    let a = trace("0x5eed");
    let b = trace("24301"); // the same seed in decimal
    assert!(a.contains("torpor-kmod-fuzz: seed 0x5eed (24301)"), "{a}");
    let reqs = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with('['))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (ra, rb) = (reqs(&a), reqs(&b));
    assert_eq!(ra.len(), 5 * 400, "400 requests in each of the 5 phases");
    assert_eq!(ra, rb);
    for kind in [
        "PREFETCH",
        "DISCARD",
        "FREE_BITMAP",
        "PRIORITY_MAP",
        "GET_VERSION",
        "GET_STATS",
        "unknown-cmd",
        "wrong-shape",
    ] {
        assert!(
            ra.iter().any(|l| l.contains(&format!("] {kind} "))),
            "no {kind} request in 2000"
        );
    }
    assert_ne!(ra, reqs(&trace("0x5eee")));
}
