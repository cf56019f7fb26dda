//! LEB128 varints and the run-length encoding of maps: a sequence of
//! `(value: u8, run: varint)` pairs preceded by the pair count. Decoding never
//! allocates more than the input can justify (every pair takes at least 2 bytes).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("input ends in the middle of a {0}")]
    Truncated(&'static str),
    #[error("varint longer than 10 bytes or overflowing u64")]
    VarintOverflow,
    #[error("run count {count} impossible in {bytes} remaining bytes")]
    TooManyRuns { count: u64, bytes: usize },
    #[error("zero-length run at pair {0}")]
    EmptyRun(u64),
    #[error("value {value} at pair {pair} is above the maximum {max}")]
    BadValue { value: u8, pair: u64, max: u8 },
    #[error("runs cover {got} pages, the layout has {want}")]
    LengthMismatch { got: u64, want: u64 },
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read a varint from `buf` at `*pos`, advancing it.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, RleError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*pos).ok_or(RleError::Truncated("varint"))?;
        *pos += 1;
        let part = (b & 0x7f) as u64;
        if i == 9 && part > 1 {
            return Err(RleError::VarintOverflow);
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(RleError::VarintOverflow)
}

/// A run-length encoded map (decoded form: runs, not expanded pages, so a tiny
/// payload cannot make the decoder allocate a huge map).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Runs {
    pub runs: Vec<(u8, u64)>,
}

impl fmt::Debug for Runs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Runs({} runs, {} pages)", self.runs.len(), self.total())
    }
}

impl Runs {
    /// Canonical runs of a byte slice.
    pub fn from_bytes(bytes: &[u8]) -> Runs {
        Self::from_values(bytes.iter().copied())
    }

    pub fn from_values(values: impl IntoIterator<Item = u8>) -> Runs {
        let mut runs: Vec<(u8, u64)> = Vec::new();
        for v in values {
            match runs.last_mut() {
                Some((lv, n)) if *lv == v => *n += 1,
                _ => runs.push((v, 1)),
            }
        }
        Runs { runs }
    }

    pub fn total(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }

    /// Pages per value (index = value).
    pub fn histogram(&self) -> [u64; 256] {
        let mut h = [0u64; 256];
        for &(v, n) in &self.runs {
            h[v as usize] += n;
        }
        h
    }

    /// Expand into one byte per page. Refuses (returns `None`) above `max_pages`.
    pub fn expand(&self, max_pages: u64) -> Option<Vec<u8>> {
        let total = self.total();
        if total > max_pages {
            return None;
        }
        let mut out = Vec::with_capacity(total as usize);
        for &(v, n) in &self.runs {
            out.resize(out.len() + n as usize, v);
        }
        Some(out)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.runs.len() as u64);
        for &(v, n) in &self.runs {
            out.push(v);
            put_varint(out, n);
        }
    }

    /// Decode, checking every value is `<= max_value` and the runs cover exactly
    /// `want_pages` pages.
    pub fn decode(
        buf: &[u8],
        pos: &mut usize,
        max_value: u8,
        want_pages: u64,
    ) -> Result<Runs, RleError> {
        let count = get_varint(buf, pos)?;
        let remaining = buf.len().saturating_sub(*pos);
        if count > (remaining / 2) as u64 {
            return Err(RleError::TooManyRuns {
                count,
                bytes: remaining,
            });
        }
        let mut runs = Vec::with_capacity(count as usize);
        let mut total: u64 = 0;
        for pair in 0..count {
            let value = *buf.get(*pos).ok_or(RleError::Truncated("run value"))?;
            *pos += 1;
            if value > max_value {
                return Err(RleError::BadValue {
                    value,
                    pair,
                    max: max_value,
                });
            }
            let n = get_varint(buf, pos)?;
            if n == 0 {
                return Err(RleError::EmptyRun(pair));
            }
            total = total.checked_add(n).ok_or(RleError::LengthMismatch {
                got: u64::MAX,
                want: want_pages,
            })?;
            if total > want_pages {
                return Err(RleError::LengthMismatch {
                    got: total,
                    want: want_pages,
                });
            }
            runs.push((value, n));
        }
        if total != want_pages {
            return Err(RleError::LengthMismatch {
                got: total,
                want: want_pages,
            });
        }
        Ok(Runs { runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_and_limits() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p).unwrap(), v);
            assert_eq!(p, b.len());
        }
        let mut p = 0;
        assert_eq!(
            get_varint(&[0x80, 0x80], &mut p),
            Err(RleError::Truncated("varint"))
        );
        let mut p = 0;
        assert_eq!(
            get_varint(&[0xff; 11], &mut p),
            Err(RleError::VarintOverflow)
        );
        let mut p = 0;
        // 10th byte carrying more than the top bit of u64.
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over, &mut p), Err(RleError::VarintOverflow));
    }

    #[test]
    fn runs_roundtrip() {
        let bytes = [0u8, 0, 0, 1, 1, 8, 8, 8, 8, 0];
        let r = Runs::from_bytes(&bytes);
        assert_eq!(r.runs, vec![(0, 3), (1, 2), (8, 4), (0, 1)]);
        let mut enc = Vec::new();
        r.encode(&mut enc);
        let mut p = 0;
        let d = Runs::decode(&enc, &mut p, 8, 10).unwrap();
        assert_eq!(d, r);
        assert_eq!(d.expand(10).unwrap(), bytes);
        assert_eq!(d.expand(9), None);
        assert_eq!(d.histogram()[8], 4);
    }

    #[test]
    fn decode_errors() {
        let mut enc = Vec::new();
        Runs { runs: vec![(3, 5)] }.encode(&mut enc);
        let mut p = 0;
        assert!(matches!(
            Runs::decode(&enc, &mut p, 2, 5),
            Err(RleError::BadValue { value: 3, .. })
        ));
        let mut p = 0;
        assert!(matches!(
            Runs::decode(&enc, &mut p, 8, 6),
            Err(RleError::LengthMismatch { got: 5, want: 6 })
        ));
        let mut p = 0;
        assert!(matches!(
            Runs::decode(&enc, &mut p, 8, 4),
            Err(RleError::LengthMismatch { .. })
        ));
        // A claimed huge run count is refused before allocating.
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX / 2);
        huge.extend_from_slice(&[1, 1]);
        let mut p = 0;
        assert!(matches!(
            Runs::decode(&huge, &mut p, 8, 1),
            Err(RleError::TooManyRuns { .. })
        ));
        // Zero-length run.
        let mut p = 0;
        assert_eq!(
            Runs::decode(&[1, 0, 0], &mut p, 8, 0),
            Err(RleError::EmptyRun(0))
        );
    }
}
