//! What the module may answer, and the per-ioctl tally of what it did answer.
//!
//! Two levels of checking:
//! - every answer must be success or one of the errnos kmod/README.md documents
//!   ("Security model and errors"): anything else is *undocumented* and fails the run;
//! - the generator knows what it broke in each request (a [`Defect`]: bad flags, a wrapping
//!   range, a pointer into the guard page...), so the answer must also be one the documented
//!   rules allow for that request ([`Expect`]); a mismatch is a *violation* and fails the run.
//!   When several things are wrong the module may report any of them (the order of its checks
//!   is not documented), so the expectation is the union.

use nix::errno::Errno;
use std::collections::BTreeMap;
use std::fmt;

/// The errnos kmod/README.md documents ("Security model and errors"). Widening this list is a
/// decision for the module's owner, not for the fuzzer.
pub const DOCUMENTED: [Errno; 9] = [
    Errno::EPERM,
    Errno::ENOTTY,
    Errno::EFAULT,
    Errno::EINVAL,
    Errno::E2BIG,
    Errno::ENOMEM,
    Errno::EINTR,
    Errno::ENOSPC,
    Errno::ESRCH,
];

/// What one ioctl returned: its non-negative value or an errno.
pub type Outcome = Result<i32, Errno>;

pub fn is_documented(e: Errno) -> bool {
    DOCUMENTED.contains(&e)
}

pub fn outcome_name(o: Outcome) -> String {
    match o {
        Ok(v) => format!("ok({v})"),
        Err(e) => format!("{e:?}"),
    }
}

/// A set of allowed outcomes: bit 0 is success, bit i+1 is `DOCUMENTED[i]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Expect(u16);

impl Expect {
    /// Nothing allowed (a starting point for unions).
    pub const NONE: Expect = Expect(0);
    pub const OK: Expect = Expect(1);
    /// Success or any documented errno (used where the request's content is not known, e.g.
    /// ranges another thread rewrites during the call).
    pub const ANY: Expect = Expect((1 << (DOCUMENTED.len() + 1)) - 1);

    pub fn err(e: Errno) -> Expect {
        let i = DOCUMENTED
            .iter()
            .position(|&d| d == e)
            .expect("only documented errnos can be expected");
        Expect(1 << (i + 1))
    }

    pub fn or(self, other: Expect) -> Expect {
        Expect(self.0 | other.0)
    }

    pub fn or_err(self, e: Errno) -> Expect {
        self.or(Expect::err(e))
    }

    pub fn allows(self, o: Outcome) -> bool {
        match o {
            Ok(_) => self.0 & 1 != 0,
            Err(e) => DOCUMENTED
                .iter()
                .position(|&d| d == e)
                .is_some_and(|i| self.0 & (1 << (i + 1)) != 0),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.0 & 1 != 0 {
            parts.push("ok".to_string());
        }
        for (i, e) in DOCUMENTED.iter().enumerate() {
            if self.0 & (1 << (i + 1)) != 0 {
                parts.push(format!("{e:?}"));
            }
        }
        write!(f, "{}", parts.join("|"))
    }
}

/// One thing the generator deliberately got wrong in a request, and the errno the documented
/// rules give for it. A `soft` defect may legitimately go unnoticed (a PREFETCH byte budget can
/// stop the walk before the bad range is read), so success stays allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defect {
    pub what: &'static str,
    pub errno: Errno,
    pub soft: bool,
}

impl Defect {
    pub const fn hard(what: &'static str, errno: Errno) -> Self {
        Self {
            what,
            errno,
            soft: false,
        }
    }
    pub const fn soft(what: &'static str, errno: Errno) -> Self {
        Self {
            what,
            errno,
            soft: true,
        }
    }
}

/// The expectation for a request with these defects, plus `extras`: outcomes the live state
/// can cause whatever the request (ESRCH when the target child may have died, ENOMEM where the
/// call allocates or faults).
pub fn expectation(defects: &[Defect], extras: Expect) -> Expect {
    let mut e = extras;
    if defects.iter().all(|d| d.soft) {
        e = e.or(Expect::OK);
    }
    for d in defects {
        e = e.or_err(d.errno);
    }
    e
}

/// Counts for one ioctl kind.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub calls: u64,
    pub ok: u64,
    /// errno (raw) -> count
    pub errs: BTreeMap<i32, u64>,
}

/// What a set of calls answered, by ioctl kind, with the failures found.
#[derive(Default, Debug)]
pub struct Tally {
    pub per: BTreeMap<&'static str, Counts>,
    pub undocumented: u64,
    pub violations: u64,
    /// The first failures, described (request and answer) for the report.
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 12;

impl Tally {
    pub fn record(&mut self, kind: &'static str, o: Outcome) {
        let c = self.per.entry(kind).or_default();
        c.calls += 1;
        match o {
            Ok(_) => c.ok += 1,
            Err(e) => *c.errs.entry(e as i32).or_default() += 1,
        }
    }

    pub fn undocumented(&mut self, msg: String) {
        self.undocumented += 1;
        self.example(format!("UNDOCUMENTED ERRNO: {msg}"));
    }

    pub fn violation(&mut self, msg: String) {
        self.violations += 1;
        self.example(format!("VIOLATION: {msg}"));
    }

    fn example(&mut self, msg: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(msg);
        }
    }

    pub fn calls(&self) -> u64 {
        self.per.values().map(|c| c.calls).sum()
    }

    pub fn errors(&self) -> u64 {
        self.per
            .values()
            .map(|c| c.errs.values().sum::<u64>())
            .sum()
    }

    pub fn merge(&mut self, o: Tally) {
        for (k, c) in o.per {
            let m = self.per.entry(k).or_default();
            m.calls += c.calls;
            m.ok += c.ok;
            for (e, n) in c.errs {
                *m.errs.entry(e).or_default() += n;
            }
        }
        self.undocumented += o.undocumented;
        self.violations += o.violations;
        for e in o.examples {
            self.example(e);
        }
    }

    /// One line per ioctl kind: `KIND calls N: ok N, EINVAL N, ...`.
    pub fn lines(&self) -> Vec<String> {
        self.per
            .iter()
            .map(|(k, c)| {
                let mut s = format!("{k:<12} {:>8} calls: ok {}", c.calls, c.ok);
                for (e, n) in &c.errs {
                    s.push_str(&format!(", {:?} {n}", Errno::from_raw(*e)));
                }
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_sets() {
        let e = Expect::err(Errno::EINVAL).or_err(Errno::ESRCH);
        assert!(e.allows(Err(Errno::EINVAL)) && e.allows(Err(Errno::ESRCH)));
        assert!(!e.allows(Ok(0)) && !e.allows(Err(Errno::EFAULT)));
        assert_eq!(e.to_string(), "EINVAL|ESRCH");
        assert!(Expect::ANY.allows(Ok(0)));
        for d in DOCUMENTED {
            assert!(Expect::ANY.allows(Err(d)));
        }
        assert!(
            !Expect::ANY.allows(Err(Errno::EIO)),
            "an undocumented errno is never expected"
        );
    }

    #[test]
    fn defects_union() {
        let none = expectation(&[], Expect::err(Errno::ESRCH));
        assert!(
            none.allows(Ok(0))
                && none.allows(Err(Errno::ESRCH))
                && !none.allows(Err(Errno::EINVAL))
        );
        let hard = expectation(
            &[
                Defect::hard("flags", Errno::EINVAL),
                Defect::hard("ptr", Errno::EFAULT),
            ],
            Expect::err(Errno::ENOMEM),
        );
        assert!(!hard.allows(Ok(0)));
        assert!(
            hard.allows(Err(Errno::EINVAL))
                && hard.allows(Err(Errno::EFAULT))
                && hard.allows(Err(Errno::ENOMEM))
        );
        let soft = expectation(
            &[Defect::soft("wrap", Errno::EINVAL)],
            Expect::err(Errno::ENOMEM),
        );
        assert!(soft.allows(Ok(0)) && soft.allows(Err(Errno::EINVAL)));
    }

    #[test]
    fn tally_merges() {
        let mut a = Tally::default();
        a.record("PREFETCH", Ok(0));
        a.record("PREFETCH", Err(Errno::EINVAL));
        let mut b = Tally::default();
        b.record("PREFETCH", Err(Errno::EINVAL));
        b.record("DISCARD", Err(Errno::ESRCH));
        b.undocumented("x".into());
        a.merge(b);
        assert_eq!(a.calls(), 4);
        assert_eq!(a.errors(), 3);
        assert_eq!(a.per["PREFETCH"].errs[&(Errno::EINVAL as i32)], 2);
        assert_eq!((a.undocumented, a.violations), (1, 0));
        assert_eq!(
            a.lines()[1],
            format!("{:<12} {:>8} calls: ok 1, EINVAL 2", "PREFETCH", 3)
        );
    }
}
