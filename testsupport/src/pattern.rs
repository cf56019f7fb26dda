//! Deterministic test data shared by the test and benchmark children (`torpor-testchild`,
//! `torpor-kindchild`, `torpor-bench-child`), the fuzzer and the randomized tests: the one
//! pseudo-random generator (xorshift64*), byte patterns made from it, the per-MiB checksum and
//! the process's own fault counters.

/// xorshift64* generator: fast, fixed sequence per seed (seed must be non-zero).
pub struct Xorshift(pub u64);

impl Xorshift {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `words` with the next values.
    pub fn fill(&mut self, words: &mut [u64]) {
        for w in words {
            *w = self.next();
        }
    }

    /// A value in `0..n` (`n > 0`; modulo bias is irrelevant for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` pseudo-random bytes, a fixed sequence per seed (a zero seed counts as 1).
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = Xorshift(seed.max(1));
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&x.next().to_ne_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-style checksum of a run of words (one per MiB in the children).
pub fn checksum(words: &[u64]) -> u64 {
    words.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| {
        (h ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(5)
    })
}

/// This process's (major, minor) page faults so far.
pub fn self_faults() -> (i64, i64) {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    (u.major_page_faults(), u.minor_page_faults())
}

/// What one measured action cost this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub major_faults: i64,
    pub minor_faults: i64,
    pub micros: u128,
}

/// Runs `f`, measuring this process's page faults and the time it took.
pub fn measured<R>(f: impl FnOnce() -> R) -> (R, Cost) {
    let (maj0, min0) = self_faults();
    let t0 = std::time::Instant::now();
    let r = f();
    let micros = t0.elapsed().as_micros();
    let (maj1, min1) = self_faults();
    let cost = Cost {
        major_faults: maj1 - maj0,
        minor_faults: min1 - min0,
        micros,
    };
    (r, cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sequence_and_checksum() {
        let mut r = Xorshift(0x9E37_79B9_7F4A_7C15);
        let a: Vec<u64> = (0..4).map(|_| r.next()).collect();
        let mut r2 = Xorshift(0x9E37_79B9_7F4A_7C15);
        let b: Vec<u64> = (0..4).map(|_| r2.next()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        assert_eq!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a), checksum(&a[..3]));
        let p = pattern_bytes(7, 21);
        assert_eq!(p.len(), 21);
        assert_eq!(p, pattern_bytes(7, 21));
        assert_ne!(p, pattern_bytes(8, 21));
        assert_eq!(pattern_bytes(0, 9), pattern_bytes(1, 9));
    }

    #[test]
    fn measured_counts_the_faults_of_first_touches() {
        // 64 MiB: above glibc's largest mmap threshold (32 MiB), so always a fresh anonymous
        // mapping whose pages fault when first written (once per page, or per huge page).
        let (sum, c) = measured(|| {
            let mut v = vec![0u8; 64 << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v)
                .iter()
                .map(|&b| u64::from(b))
                .sum::<u64>()
        });
        assert_eq!(sum, 16384);
        assert!(c.minor_faults >= 1, "{c:?}");
    }
}
