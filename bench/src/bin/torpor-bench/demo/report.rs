//! The demo's rows and its summary, from measured values only (pure: unit-tested).

use super::Mode;
use std::fmt::Write;
use torpor_api::{MemoryStatus, StartTiming};
use torpor_testsupport::stats::median;

/// Bytes in whole MiB (rounded).
pub fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / 1048576.0)
}

/// One Start/Stop cycle.
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    pub standby_res: u64,
    pub standby_swap: u64,
    /// torpord's own timing of the Start.
    pub start: StartTiming,
    /// `torpor start`'s wall time.
    pub cli_wall: f64,
    /// From `torpor start` to a client's first 200 (a GET issued when it returned).
    pub first: f64,
    /// The app's resident memory after the Start.
    pub running_res: u64,
    /// torpord's timing of the Stop.
    pub stop_s: f64,
}

impl Cycle {
    /// The head of the rows.
    pub fn head() -> String {
        format!(
            "  {:<3} {:<22} {:>8} {:>9} {:>7} {:>7} {:>7} {:>9} {:>9}  Stop",
            "#",
            "standby res/swap MiB",
            "prefetch",
            "fetched",
            "thaw",
            "probe",
            "total",
            "cli_wall",
            "1st_resp"
        )
    }

    pub fn row(&self, i: usize) -> String {
        let t = &self.start;
        format!(
            "  {:<3} {:<22} {:>8.3} {:>9} {:>7.3} {:>7.3} {:>7.3} {:>9.3} {:>9.3}  {:.3} s",
            i,
            format!("{} / {}", mib(self.standby_res), mib(self.standby_swap)),
            t.prefetch_s,
            format!("{} MiB", mib(t.prefetch_bytes)),
            t.thaw_s,
            t.probe_s,
            t.total_s,
            self.cli_wall,
            self.first,
            self.stop_s
        )
    }
}

/// One prefetch mode's medians over its cycles.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeResult {
    pub mode: Mode,
    pub total: f64,
    pub cli_wall: f64,
    pub first: f64,
    pub running_res: f64,
}

impl ModeResult {
    pub fn of(mode: Mode, cycles: &[Cycle]) -> ModeResult {
        let med = |f: &dyn Fn(&Cycle) -> f64| {
            median(&cycles.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        ModeResult {
            mode,
            total: med(&|c| c.start.total_s),
            cli_wall: med(&|c| c.cli_wall),
            first: med(&|c| c.first),
            running_res: med(&|c| c.running_res as f64),
        }
    }

    fn label(&self) -> String {
        match self.mode {
            Mode::DemandPaging => "torpor start, prefetch = none (demand paging)".into(),
            Mode::WorkingSetOnly => "torpor start, prefetch = working set only".into(),
            m => format!("torpor start, prefetch = {}", m.name()),
        }
    }
}

/// The app in standby (after the prestart's purge).
#[derive(Debug, Clone, Default)]
pub struct Standby {
    pub resident: u64,
    pub swapped: u64,
    /// "resident X MiB (anon Y MiB), swapped Z MiB".
    pub line: String,
    /// torpord's backend and why.
    pub backend: String,
}

impl Standby {
    pub fn of(m: &MemoryStatus, backend: String) -> Standby {
        Standby {
            resident: m.resident_bytes,
            swapped: m.swapped_bytes,
            line: format!(
                "resident {} MiB (anon {} MiB), swapped {} MiB",
                mib(m.resident_bytes),
                mib(m.resident_anon_bytes),
                mib(m.swapped_bytes)
            ),
            backend,
        }
    }
}

/// Everything the summary reports.
pub struct Summary {
    /// Cold starts: (seconds to the first 200, resident bytes then).
    pub cold: Vec<(f64, u64)>,
    pub standby: Standby,
    pub modes: Vec<ModeResult>,
    pub cold_runs: usize,
    pub cycles: usize,
}

const SEP: &str =
    "  ------------------------------------------------------------------------------------------";

fn table_row(o: &mut String, a: &str, b: &str, c: &str, d: &str) {
    let _ = writeln!(o, "  {a:<50} {b:>13} {c:>15} {d:>12}");
}

impl Summary {
    fn cold_median(&self) -> f64 {
        median(&self.cold.iter().map(|c| c.0).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    }

    /// The summary section; `machine` says what it ran on.
    pub fn render(&self, machine: &str) -> String {
        let mut o = format!("\n== 6. Summary (this machine: {machine})\n");
        self.table(&mut o);
        let _ = writeln!(o, "  torpor rows: medians of {} Start/Stop cycles. torpord total = Start request to ready (prefetch,", self.cycles);
        o += "  thaw, its own HTTP probe); first response = from `torpor start` to a client's first 200 (a GET issued\n";
        o += "  when it returned); cold start = from exec of catalina.sh to the first 200. resident = the app's\n";
        let _ = writeln!(
            o,
            "  resident memory (cold start: RSS when it first answered; standby: {}).\n",
            self.standby.line
        );
        self.verdicts(&mut o);
        let _ = writeln!(o, "  backend: {}", self.standby.backend);
        o += "  paper (Agile application placement in hosting platforms, for context; JBoss, 2009 hardware): cold start over 90 s on an idle machine; plain resume 5.3x, enhanced (prefetch + pre-purge) resume over 20x faster than a cold start.\n";
        o
    }

    fn table(&self, o: &mut String) {
        table_row(
            o,
            "Tomcat 10 (Debian), default ROOT webapp",
            "torpord total",
            "first response",
            "resident",
        );
        let _ = writeln!(o, "{SEP}");
        let rss = median(&self.cold.iter().map(|c| c.1 as f64).collect::<Vec<_>>()).unwrap_or(0.0);
        table_row(
            o,
            &format!("cold start: catalina.sh run (median of {})", self.cold_runs),
            "-",
            &format!("{:.3} s", self.cold_median()),
            &format!("{} MiB", mib(rss as u64)),
        );
        for m in &self.modes {
            table_row(
                o,
                &m.label(),
                &format!("{:.3} s", m.total),
                &format!("{:.3} s", m.first),
                &format!("{} MiB", mib(m.running_res as u64)),
            );
        }
        table_row(
            o,
            "standby (frozen + purged), between Starts",
            "",
            "",
            &format!("{} MiB", mib(self.standby.resident)),
        );
        let _ = writeln!(o, "{SEP}");
    }

    fn verdicts(&self, o: &mut String) {
        let cold = self.cold_median();
        for m in &self.modes {
            let _ = writeln!(
                o,
                "  ==> torpor Start (prefetch = {}) is {:.1}x faster than a cold start (time to first response, medians)",
                m.mode.name(),
                cold / m.first
            );
        }
        let find = |mode| self.modes.iter().find(|m| m.mode == mode);
        if let (Some(full), Some(none)) = (find(Mode::Full), find(Mode::DemandPaging)) {
            if none.first < full.first {
                o.push_str("  Here demand paging answers the first request sooner than whole-process prefetch: the first request\n");
                let _ = writeln!(
                    o,
                    "  needs ~{} MiB of the {} MiB on swap; prefetch = full brings all of it back first.",
                    mib(none.running_res as u64),
                    mib(self.standby.swapped)
                );
            } else {
                o.push_str("  Here whole-process prefetch answers the first request sooner than demand paging.\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(total: f64, first: f64, res_mib: u64) -> Cycle {
        Cycle {
            start: StartTiming {
                total_s: total,
                prefetch_bytes: 3 << 20,
                ..Default::default()
            },
            first,
            cli_wall: first - 0.01,
            running_res: res_mib << 20,
            standby_res: 5 << 20,
            standby_swap: 90 << 20,
            stop_s: 0.5,
        }
    }

    #[test]
    fn medians_rows_and_verdicts() {
        let full = [
            cycle(0.4, 0.5, 100),
            cycle(0.2, 0.3, 80),
            cycle(0.6, 0.7, 120),
        ];
        let none = [cycle(0.1, 0.2, 40), cycle(0.3, 0.4, 60)];
        let rf = ModeResult::of(Mode::Full, &full);
        assert_eq!(
            (rf.total, rf.first, rf.running_res),
            (0.4, 0.5, (100u64 << 20) as f64)
        );
        let rn = ModeResult::of(Mode::DemandPaging, &none);
        assert!((rn.first - 0.3).abs() < 1e-12);
        assert_eq!(
            full[0].row(1),
            "  1   5 / 90                    0.000     3 MiB   0.000   0.000   0.400     0.490     0.500  0.500 s"
        );
        assert_eq!(
            Cycle::head().len(),
            full[0].row(1).len() - "0.500 s".len() + "Stop".len()
        );
        let mem = MemoryStatus {
            resident_bytes: 5 << 20,
            resident_anon_bytes: 1 << 20,
            swapped_bytes: 90 << 20,
            memcg_bytes: None,
        };
        let s = Summary {
            cold: vec![(3.0, 200 << 20), (2.0, 190 << 20), (4.0, 210 << 20)],
            standby: Standby::of(&mem, "module (why)".into()),
            modes: vec![rf, rn],
            cold_runs: 3,
            cycles: 3,
        };
        let out = s.render("2 cores");
        assert!(
            out.contains("== 6. Summary (this machine: 2 cores)"),
            "{out}"
        );
        assert!(
            out.contains("standby: resident 5 MiB (anon 1 MiB), swapped 90 MiB"),
            "{out}"
        );
        assert!(out.contains("(prefetch = full) is 6.0x faster"), "{out}");
        assert!(out.contains("(prefetch = none) is 10.0x faster"), "{out}");
        assert!(out.contains("needs ~50 MiB of the 90 MiB on swap"), "{out}");
        assert!(
            out.contains("cold start: catalina.sh run (median of 3)"),
            "{out}"
        );
        assert!(out.contains("3.000 s"), "{out}");
        assert!(out.contains("200 MiB"), "{out}");
        assert!(out.contains("backend: module (why)"), "{out}");
    }
}
