//! PNG plots for the scenario harness: `plotters` with the bitmap backend only. Text is drawn
//! with `ab_glyph` (pure Rust, no fontconfig/freetype) from a TrueType font read at run time:
//! `TORPOR_BENCH_FONT`, else DejaVu Sans from Debian's `fonts-dejavu-core`.

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Register the font once (plotters' ab_glyph backend needs `'static` bytes).
fn font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("TORPOR_BENCH_FONT")
            .ok()
            .or_else(|| FONT_PATHS.iter().find(|p| Path::new(p).exists()).map(|p| p.to_string()))
            .ok_or_else(|| format!("no font: install fonts-dejavu-core or set TORPOR_BENCH_FONT (tried {FONT_PATHS:?})"))?;
        let bytes = std::fs::read(&path).map_err(|e| format!("read font {path}: {e}"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{path}: not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One point of a series: x, median, min, max.
pub type Point = (f64, f64, f64, f64);

/// A named series of points.
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
    /// Dashed look for reference lines (drawn thinner, no markers).
    pub reference: bool,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(90, 90, 90),
    ];
    C[i % C.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Log-log line plot of medians with min–max error bars.
pub fn log_lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
) -> Result<()> {
    lines(path, title, xlabel, ylabel, series, true)
}

/// Line plot of medians with min–max error bars: log y, log x when `log_x` (else linear x).
pub fn lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    log_x: bool,
) -> Result<()> {
    font()?;
    let (x0, x1, y0, y1) = extent(series);
    anyhow::ensure!(x0 <= x1, "plot {}: no points", path.display());
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut cb = ChartBuilder::on(&root);
    cb.caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80);
    if log_x {
        let mut chart = cb
            .build_cartesian_2d(
                (x0 / 1.3..x1 * 1.3).log_scale(),
                (y0 / 2.0..y1 * 2.0).log_scale(),
            )
            .map_err(err)?;
        draw_lines(&mut chart, xlabel, ylabel, series)?;
    } else {
        let pad = ((x1 - x0) * 0.06).max(1.0);
        let mut chart = cb
            .build_cartesian_2d(x0 - pad..x1 + pad, (y0 / 2.0..y1 * 2.0).log_scale())
            .map_err(err)?;
        draw_lines(&mut chart, xlabel, ylabel, series)?;
    }
    root.present()
        .map_err(err)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// The x range and the y range (min clamped to 1e-6, for log axes) of every point.
fn extent(series: &[Series]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, _, lo, hi) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(lo.max(1e-6));
        y1 = y1.max(hi);
    }
    (x0, x1, y0, y1)
}

/// The mesh, the series (lines, markers, error bars) and the legend of a line plot.
fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        let width = if s.reference { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.0, p.1)),
                c.stroke_width(width),
            ))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        if !s.reference {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|p| Circle::new((p.0, p.1), 4, c.filled())),
                )
                .map_err(err)?;
        }
        chart
            .draw_series(s.points.iter().map(|p| {
                ErrorBar::new_vertical(p.0, p.2.max(1e-6), p.1, p.3, c.stroke_width(1), 8)
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One bar: label, value, whisker low, whisker high, colour index.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub color: usize,
}

/// Vertical bars with min–max whiskers (log y axis when `log_y`).
pub fn bars(path: &Path, title: &str, ylabel: &str, bars: &[Bar], log_y: bool) -> Result<()> {
    font()?;
    anyhow::ensure!(!bars.is_empty(), "plot {}: no bars", path.display());
    let n = bars.len();
    let ymax =
        bars.iter().map(|b| b.hi.max(b.value)).fold(0.0, f64::max) * if log_y { 3.0 } else { 1.15 };
    let ymin = if log_y {
        bars.iter()
            .map(|b| b.lo.min(b.value))
            .fold(f64::MAX, f64::min)
            .max(1e-6)
            / 3.0
    } else {
        0.0
    };
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let fmt = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let xr = -0.5..n as f64 - 0.5;
    let mut cb = ChartBuilder::on(&root);
    cb.caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80);
    if log_y {
        let mut chart = cb
            .build_cartesian_2d(xr, (ymin..ymax).log_scale())
            .map_err(err)?;
        draw_bars(&mut chart, bars, &fmt, ylabel, ymin, log_y)?;
    } else {
        let mut chart = cb.build_cartesian_2d(xr, ymin..ymax).map_err(err)?;
        draw_bars(&mut chart, bars, &fmt, ylabel, ymin, log_y)?;
    }
    root.present()
        .map_err(err)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// A bar's value as printed above it: fewer decimals the larger it is.
fn bar_text(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The mesh and the bars (rectangle, whiskers, value) of a bar plot.
fn draw_bars<Y>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    bars: &[Bar],
    fmt: &dyn Fn(&f64) -> String,
    ylabel: &str,
    ymin: f64,
    log_y: bool,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let n = bars.len();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 4 + 1)
        .x_label_formatter(fmt)
        .y_desc(ylabel)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64;
        let c = color(b.color);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, ymin), (x + 0.35, b.value)],
                c.mix(0.75).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(ErrorBar::new_vertical(
                x,
                b.lo,
                b.value,
                b.hi,
                BLACK.stroke_width(2),
                14,
            )))
            .map_err(err)?;
        let txt = bar_text(b.value);
        chart
            .draw_series(std::iter::once(Text::new(
                txt,
                (x - 0.2, b.hi.max(b.value) * if log_y { 1.3 } else { 1.02 }),
                ("sans-serif", 15),
            )))
            .map_err(err)?;
    }
    Ok(())
}
