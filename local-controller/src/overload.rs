//! Overload detectors over paging-rate samples.
//!
//! - [`Sustained`] (*Overdriver: Handling Memory Overload in an Oversubscribed Cloud*): every
//!   sample interval (10 s there) the paging rate is compared with a threshold (200
//!   operations/s); an interval above it is *overloaded*; the overload is *sustained* when at
//!   least 8 of the last 12 intervals were overloaded.
//! - [`Hotspot`] (Sandpiper, in Wood's *Improving Data Center Resource Management, Deployment, and
//!   Availability with Virtualization*): a hotspot is flagged when at least 3 of the last 5
//!   samples exceed the threshold **and** the next value predicted by an AR(1) model fitted to
//!   the recent history exceeds it too.

use std::collections::VecDeque;

/// Sliding k-of-n window of overloaded intervals.
#[derive(Debug, Clone)]
pub struct Sustained {
    pub threshold: f64,
    pub k: usize,
    pub n: usize,
    window: VecDeque<bool>,
}

impl Sustained {
    pub fn new(threshold: f64) -> Self {
        Self::with_window(threshold, 8, 12)
    }
    pub fn with_window(threshold: f64, k: usize, n: usize) -> Self {
        Self {
            threshold,
            k,
            n,
            window: VecDeque::with_capacity(n),
        }
    }
    /// Add one interval's rate; returns (this interval overloaded, sustained overload now).
    pub fn push(&mut self, rate: f64) -> (bool, bool) {
        let over = rate > self.threshold;
        if self.window.len() == self.n {
            self.window.pop_front();
        }
        self.window.push_back(over);
        (over, self.sustained())
    }
    pub fn sustained(&self) -> bool {
        self.window.iter().filter(|o| **o).count() >= self.k
    }
    pub fn overloaded_in_window(&self) -> usize {
        self.window.iter().filter(|o| **o).count()
    }
}

/// Sandpiper-style hotspot detector.
#[derive(Debug, Clone)]
pub struct Hotspot {
    pub threshold: f64,
    /// k of the last n samples above the threshold.
    pub k: usize,
    pub n: usize,
    /// History used to fit the AR(1) model.
    pub history: usize,
    samples: VecDeque<f64>,
}

impl Hotspot {
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            k: 3,
            n: 5,
            history: 20,
            samples: VecDeque::new(),
        }
    }
    /// Add a sample; returns (prediction of the next sample, hotspot now).
    pub fn push(&mut self, x: f64) -> (Option<f64>, bool) {
        if self.samples.len() == self.history {
            self.samples.pop_front();
        }
        self.samples.push_back(x);
        let pred = ar1_predict(self.samples.make_contiguous());
        let above = self
            .samples
            .iter()
            .rev()
            .take(self.n)
            .filter(|v| **v > self.threshold)
            .count();
        let hot = above >= self.k && pred.is_some_and(|p| p > self.threshold);
        (pred, hot)
    }
}

/// Fit x_t - mu = phi (x_{t-1} - mu) + e by least squares over `xs` and predict the next value.
/// `None` with fewer than 3 samples. phi is clamped to [-1, 1] (a stationary model).
pub fn ar1_predict(xs: &[f64]) -> Option<f64> {
    if xs.len() < 3 {
        return None;
    }
    let mu = xs.iter().sum::<f64>() / xs.len() as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for w in xs.windows(2) {
        num += (w[1] - mu) * (w[0] - mu);
        den += (w[0] - mu) * (w[0] - mu);
    }
    let phi = if den > 0.0 {
        (num / den).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let last = *xs.last()?;
    Some(mu + phi * (last - mu))
}

/// Rate per second of a monotonic counter between two samples (counter resets give 0).
pub fn rate(prev: u64, now: u64, secs: f64) -> f64 {
    if secs <= 0.0 || now < prev {
        0.0
    } else {
        (now - prev) as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_needs_8_of_12() {
        let mut d = Sustained::new(200.0);
        // 7 overloaded intervals: not sustained.
        for _ in 0..7 {
            assert!(!d.push(500.0).1);
        }
        // An exactly-at-threshold interval is not overloaded.
        assert_eq!(d.push(200.0), (false, false));
        // The 8th overloaded interval within 12 makes it sustained.
        assert_eq!(d.push(201.0), (true, true));
        // Quiet intervals push the old overloads out of the window.
        let mut last = true;
        for _ in 0..12 {
            last = d.push(0.0).1;
        }
        assert!(!last);
        assert_eq!(d.overloaded_in_window(), 0);
    }

    #[test]
    fn sustained_transient_bursts_do_not_trigger() {
        let mut d = Sustained::new(200.0);
        // Alternating bursts: 6 of every 12 overloaded, never sustained.
        for i in 0..60 {
            let (_, s) = d.push(if i % 2 == 0 { 1000.0 } else { 10.0 });
            assert!(!s, "sample {i}");
        }
    }

    #[test]
    fn ar1_fits_a_known_process() {
        // x_t = 100 + 0.5 (x_{t-1} - 100), starting far above: decays towards 100.
        let mut xs = vec![500.0];
        for _ in 0..30 {
            let l = *xs.last().unwrap();
            xs.push(100.0 + 0.5 * (l - 100.0) + if xs.len() % 2 == 0 { 1.0 } else { -1.0 });
        }
        let p = ar1_predict(&xs).unwrap();
        assert!(p > 50.0 && p < 150.0, "{p}");
        assert_eq!(ar1_predict(&[1.0, 2.0]), None);
        // A constant series predicts itself.
        assert_eq!(ar1_predict(&[7.0, 7.0, 7.0, 7.0]), Some(7.0));
    }

    #[test]
    fn hotspot_needs_3_of_5_and_a_prediction_above() {
        let mut h = Hotspot::new(200.0);
        for _ in 0..10 {
            assert!(!h.push(50.0).1);
        }
        // Two high samples: not enough.
        assert!(!h.push(900.0).1);
        assert!(!h.push(900.0).1);
        // Third high sample of the last five, and a rising trend: hotspot.
        let (p, hot) = h.push(950.0);
        assert!(hot, "prediction {p:?}");
        // A single spike after a long quiet period: 1 of 5, no hotspot.
        let mut h = Hotspot::new(200.0);
        for _ in 0..19 {
            h.push(10.0);
        }
        assert!(!h.push(5000.0).1);
        // 3 of 5 above, but falling fast to near zero: the AR(1) prediction stays below.
        let mut h = Hotspot::new(200.0);
        for v in [
            10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0,
            10.0, 210.0, 205.0, 201.0,
        ] {
            h.push(v);
        }
        // Last five: 10, 210, 205, 201, 0 (3 above), but the model predicts a low next value.
        let (p, hot) = h.push(0.0);
        assert!(!hot, "prediction {p:?}");
        assert!(p.unwrap() < 200.0);
    }

    #[test]
    fn rates() {
        assert_eq!(rate(100, 300, 2.0), 100.0);
        assert_eq!(rate(300, 100, 2.0), 0.0);
        assert_eq!(rate(1, 2, 0.0), 0.0);
    }
}
