//! Deterministic contents of the web app's memory: word `i` is a bijective function of
//! `i ^ seed`, so every word differs from every other word of the same buffer: a page that
//! comes back at the wrong place, zeroed, or stale is caught by [`first_mismatch`].

/// The expected value of word `i` of a buffer filled with `seed`.
#[inline]
pub fn word(seed: u64, i: u64) -> u64 {
    // Multiplication by an odd constant and x ^ (x >> 29) are both bijections on u64.
    let x = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Fill `buf` (word `base + k` at `buf[k]`).
pub fn fill(seed: u64, base: u64, buf: &mut [u64]) {
    for (k, w) in buf.iter_mut().enumerate() {
        *w = word(seed, base + k as u64);
    }
}

/// Index (relative to `buf`) of the first word that differs from the pattern, and how many differ.
pub fn first_mismatch(seed: u64, base: u64, buf: &[u64]) -> Option<(usize, usize)> {
    let mut first = None;
    let mut bad = 0usize;
    for (k, w) in buf.iter().enumerate() {
        if *w != word(seed, base + k as u64) {
            bad += 1;
            first.get_or_insert(k);
        }
    }
    first.map(|f| (f, bad))
}

/// Words per 4 KiB page.
pub const WORDS_PER_PAGE: usize = 4096 / 8;

/// Check one word per page of `buf` (the working-set touch of `GET /`); returns the
/// number of pages touched, or the first bad word index.
pub fn touch_pages(seed: u64, base: u64, buf: &[u64]) -> Result<usize, usize> {
    let mut n = 0;
    for k in (0..buf.len()).step_by(WORDS_PER_PAGE) {
        if buf[k] != word(seed, base + k as u64) {
            return Err(k);
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_seeded() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u64 {
            assert!(seen.insert(word(7, i)), "duplicate word at {i}");
        }
        assert_ne!(word(1, 0), word(2, 0));
    }

    #[test]
    fn fill_then_verify_and_detect_corruption() {
        let mut buf = vec![0u64; 8 * WORDS_PER_PAGE];
        fill(42, 1000, &mut buf);
        assert_eq!(first_mismatch(42, 1000, &buf), None);
        assert_eq!(touch_pages(42, 1000, &buf), Ok(8));
        // Wrong seed, wrong base: everything differs.
        assert_eq!(first_mismatch(43, 1000, &buf).map(|x| x.1), Some(buf.len()));
        assert!(first_mismatch(42, 1001, &buf).is_some());
        // A zeroed page.
        for w in &mut buf[3 * WORDS_PER_PAGE..4 * WORDS_PER_PAGE] {
            *w = 0;
        }
        assert_eq!(
            first_mismatch(42, 1000, &buf),
            Some((3 * WORDS_PER_PAGE, WORDS_PER_PAGE))
        );
        assert_eq!(touch_pages(42, 1000, &buf), Err(3 * WORDS_PER_PAGE));
        // Two pages swapped with each other.
        fill(42, 1000, &mut buf);
        let (a, b) = buf.split_at_mut(WORDS_PER_PAGE);
        a.swap_with_slice(&mut b[..WORDS_PER_PAGE]);
        assert_eq!(
            first_mismatch(42, 1000, &buf),
            Some((0, 2 * WORDS_PER_PAGE))
        );
    }
}
