//! Seeded random streams: one per worker thread, child and supervisor, derived from the run's
//! seed so that `--seed S --threads 1` replays the same request sequence.

pub use torpor_testsupport::pattern::Xorshift as Rng;

/// Stream `(a, b)` of `seed`: a splitmix64 finalizer over the three inputs (Xorshift needs a
/// nonzero state, hence `| 1`).
pub fn stream(seed: u64, a: u64, b: u64) -> Rng {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Rng(z | 1)
}

/// An element of `xs` chosen by `r`.
pub fn pick<T: Copy>(r: u64, xs: &[T]) -> T {
    xs[(r % xs.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = stream(42, 1, 0);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = stream(42, 1, 0);
                move |_| r.next()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = stream(42, 1, 1);
                move |_| r.next()
            })
            .collect();
        let d: Vec<u64> = (0..8)
            .map({
                let mut r = stream(43, 1, 0);
                move |_| r.next()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
