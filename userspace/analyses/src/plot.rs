//! `compare --plot`: one figure, two panels, kernel against every design. Left: how long waits
//! on dm-bufio's locks lasted (share of waits per log2 bucket). Right: the CDF of each
//! operation's total wait on them, "none" included, which is what the distance compares.
//! SVG or PNG by the file's extension; text uses a TrueType font found on the system.

use std::{
    ops::Range,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use plotters::{coord::Shift, prelude::*};

use crate::{
    compare::{Comparison, SourceStats},
    report::{self, bucket_floor},
    units::duration_ns,
};

/// Why a plot could not be drawn.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "no TrueType font for the plot's text: looked for {} (on Debian: apt-get install \
         fonts-dejavu-core)",
        FONTS.join(", ")
    )]
    NoFont,
    #[error("{0} is not a font plotters can read")]
    BadFont(&'static str),
    #[error("{}: use a .svg or .png file", .0.display())]
    Extension(PathBuf),
    /// Plotters' drawing errors are generic over the backend; their text is kept.
    #[error("{0}")]
    Draw(String),
    #[error("writing the plot: {0}")]
    Write(String),
}

/// Fonts tried in order: Debian's fonts-dejavu-core, then other distributions' places.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), PlotError>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let Some((path, bytes)) = FONTS
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
            else {
                return Err(PlotError::NoFont);
            };
            // Plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| PlotError::BadFont(path))
        })
        .clone()
}

pub fn draw(c: &Comparison, path: &Path) -> Result<(), PlotError> {
    ensure_font()?;
    let size = (1400, 560);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => render(c, SVGBackend::new(path, size).into_drawing_area()),
        Some("png") => render(c, BitMapBackend::new(path, size).into_drawing_area()),
        _ => Err(PlotError::Extension(path.to_path_buf())),
    }
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

fn style(i: usize) -> ShapeStyle {
    match i {
        0 => BLACK.stroke_width(3),
        i => PALETTE[(i - 1) % PALETTE.len()].stroke_width(2),
    }
}

fn label(s: &SourceStats, c: &Comparison) -> String {
    match c.distances.iter().find(|d| d.design == s.source) {
        Some(d) => format!("{} (distance {:.2})", s.source, d.overall),
        None => s.source.clone(),
    }
}

/// Operations per wait bucket, all kinds together.
fn per_op(s: &SourceStats) -> Vec<u64> {
    let mut sum = vec![0u64; report::BUCKETS];
    for row in s.ops.values() {
        for (a, b) in sum.iter_mut().zip(&row.wait_per_op) {
            *a += b;
        }
    }
    sum
}

/// The buckets any source uses, as an x range (at least four wide).
fn used(hists: &[Vec<u64>], from_zero: bool) -> Range<usize> {
    let first = hists
        .iter()
        .filter_map(|h| h.iter().position(|&c| c > 0))
        .min()
        .unwrap_or(10);
    let last = hists
        .iter()
        .filter_map(|h| h.iter().rposition(|&c| c > 0))
        .max()
        .unwrap_or(20);
    let first = if from_zero { 0 } else { first };
    first..(last + 1).max(first + 4)
}

fn bucket_label(b: usize) -> String {
    if b == 0 {
        "none".to_string()
    } else {
        duration_ns(bucket_floor(b)).replace(".00", "")
    }
}

fn render<DB: DrawingBackend>(c: &Comparison, root: DrawingArea<DB, Shift>) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError::Draw(format!("{e:?}"));
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!("Lock waits: kernel vs reference designs ({})", c.file),
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let (left, right) = root.split_horizontally(700);
    let sources: Vec<&SourceStats> = std::iter::once(&c.kernel).chain(&c.designs).collect();

    // Left: share of waits per bucket.
    let hists: Vec<Vec<u64>> = sources.iter().map(|s| s.wait_hist.clone()).collect();
    let x = used(&hists, false);
    let shares: Vec<Vec<(usize, f64)>> = hists
        .iter()
        .map(|h| {
            let total = h.iter().sum::<u64>().max(1) as f64;
            x.clone()
                .map(|b| (b, 100.0 * h[b] as f64 / total))
                .collect()
        })
        .collect();
    let top = shares.iter().flatten().map(|&(_, v)| v).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "Waits on dm-bufio locks: how long (share of waits)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(x.clone(), 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("wait time (log2 buckets, lower bound)")
        .y_desc("% of waits")
        .x_labels(x.len().min(12))
        .x_label_formatter(&|b| bucket_label(*b))
        .draw()
        .map_err(err)?;
    for (i, (s, points)) in sources.iter().zip(&shares).enumerate() {
        let total: u64 = s.wait_hist.iter().sum();
        let name = format!("{} ({} waits)", s.source, total);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style(i)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style(i)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;

    // Right: CDF of each operation's wait.
    let hists: Vec<Vec<u64>> = sources.iter().map(|s| per_op(s)).collect();
    let x = used(&hists, true);
    // Most operations never wait: start the y axis just below the lowest "none" share.
    let floor = hists
        .iter()
        .map(|h| 100.0 * h[0] as f64 / h.iter().sum::<u64>().max(1) as f64)
        .fold(100.0, f64::min);
    let floor = ((floor - 1.0) / 5.0).floor().max(0.0) * 5.0;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "Each operation's wait on dm-bufio locks (CDF)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(x.clone(), floor..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("wait per operation (log2 buckets; none = did not wait)")
        .y_desc(if floor > 0.0 {
            "% of operations (axis starts above 0)"
        } else {
            "% of operations"
        })
        .x_labels(x.len().min(12))
        .x_label_formatter(&|b| bucket_label(*b))
        .draw()
        .map_err(err)?;
    for (i, (s, h)) in sources.iter().zip(&hists).enumerate() {
        let total = h.iter().sum::<u64>().max(1) as f64;
        let mut cumulative = 0u64;
        let points: Vec<(usize, f64)> = x
            .clone()
            .map(|b| {
                cumulative += h[b];
                (b, 100.0 * cumulative as f64 / total)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, style(i)))
            .map_err(err)?
            .label(label(s, c))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style(i)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present()
        .map_err(|e| PlotError::Write(format!("{e:?}")))?;
    Ok(())
}
