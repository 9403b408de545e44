//! Line plots as PNG files, drawn with plotters on a bitmap in an embedded DejaVu Sans (no system
//! font needed): panels side by side, each with its series, axis labels and legend.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::canvas::png_bytes;
use crate::fs::write_atomic;

/// The font family every figure uses (registered from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, y); non-finite points are left out.
    pub points: Vec<(f64, f64)>,
    pub colour: [u8; 3],
}

/// Where a panel's legend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    UpperRight,
    LowerRight,
}

/// One chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Fixed x range; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    /// Label the x axis with whole numbers (epochs).
    pub x_integers: bool,
    /// Fixed y range (accuracy: 0 to 1); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    pub legend: Legend,
    pub series: Vec<Series>,
}

/// Colours of the series that every run's curves share, in every panel.
pub mod colours {
    pub const TRAINING: [u8; 3] = [31, 119, 180];
    pub const VALIDATION: [u8; 3] = [255, 127, 14];
    pub const VALIDATION_EMA: [u8; 3] = [44, 160, 44];
    /// One colour per line of a multi-run figure (matplotlib's tab10), by position.
    pub const PALETTE: [[u8; 3]; 10] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
}

fn drawing_error(path: &Path, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: cannot draw the figure: {e}", path.display()))
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        candle_core::bail!("the embedded DejaVu Sans font could not be loaded")
    }
}

/// The range of `values`, padded by 5% (and widened when it is a single value).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-9);
    if span < 1e-6 * hi.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// A series' points with both coordinates finite (a NaN loss is left out of the line).
fn finite(s: &Series) -> Vec<(f64, f64)> {
    s.points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// The panel's x and y ranges: as given, else padded around every finite point.
fn axis_ranges(p: &Panel) -> ((f64, f64), (f64, f64)) {
    let all: Vec<(f64, f64)> = p.series.iter().flat_map(finite).collect();
    let x = p
        .x_range
        .unwrap_or_else(|| padded_range(all.iter().map(|q| q.0)));
    let y = p
        .y_range
        .unwrap_or_else(|| padded_range(all.iter().map(|q| q.1)));
    (x, y)
}

/// One panel: axes, a line with points per series, the legend.
fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, p: &Panel, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let ((x0, x1), (y0, y1)) = axis_ranges(p);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, 20))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(58)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let integers = |x: &f64| format!("{x:.0}");
    let decimals = |x: &f64| format!("{x}");
    let mut mesh = chart.configure_mesh();
    if p.x_integers {
        mesh.x_label_formatter(&integers)
            .x_labels((x1 - x0).round().clamp(2.0, 12.0) as usize);
    } else {
        mesh.x_label_formatter(&decimals);
    }
    mesh.x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;
    for s in &p.series {
        let colour = RGBColor(s.colour[0], s.colour[1], s.colour[2]);
        let points = finite(s);
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&q| Circle::new(q, 3, colour.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(match p.legend {
            Legend::UpperRight => SeriesLabelPosition::UpperRight,
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font((FONT, 13))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Draws `panels` side by side, each `panel_size` pixels, under an optional caption, and
/// writes the PNG atomically.
pub fn write_panels(
    path: &Path,
    panel_size: (u32, u32),
    caption: Option<&str>,
    panels: &[Panel],
) -> Result<()> {
    register_font()?;
    let caption_height = if caption.is_some() { 34 } else { 0 };
    let width = panel_size.0 * panels.len().max(1) as u32;
    let height = panel_size.1 + caption_height;
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| drawing_error(path, e))?;
        let root = match caption {
            Some(text) => root
                .titled(text, (FONT, 18))
                .map_err(|e| drawing_error(path, e))?,
            None => root,
        };
        for (area, panel) in root
            .split_evenly((1, panels.len().max(1)))
            .iter()
            .zip(panels)
        {
            draw_panel(area, panel, path)?;
        }
        root.present().map_err(|e| drawing_error(path, e))?;
    }
    write_atomic(path, &png_bytes(width as usize, height as usize, &rgb)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_has_its_lines_in_their_colours() {
        let dir = crate::testing::scratch_dir("plot");
        let path = dir.join("figure.png");
        let panel = |legend| Panel {
            title: "Accuracy".into(),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            x_range: None,
            x_integers: true,
            y_range: Some((0.0, 1.0)),
            legend,
            series: vec![
                Series {
                    label: "training".into(),
                    points: vec![(1.0, 0.2), (2.0, 0.5), (3.0, f64::NAN), (4.0, 0.9)],
                    colour: colours::TRAINING,
                },
                Series {
                    label: "validation".into(),
                    points: vec![(1.0, 0.1), (4.0, 0.3)],
                    colour: colours::VALIDATION,
                },
            ],
        };
        write_panels(
            &path,
            (400, 300),
            Some("a caption"),
            &[panel(Legend::LowerRight), panel(Legend::UpperRight)],
        )
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 334));
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        // Both series drawn in both panels (lines, markers and legend swatches).
        assert!(
            count(colours::TRAINING) > 400,
            "{}",
            count(colours::TRAINING)
        );
        assert!(
            count(colours::VALIDATION) > 300,
            "{}",
            count(colours::VALIDATION)
        );
        // Text was rendered: dark pixels beyond the axes' own.
        let dark = img.pixels().filter(|p| p.0.iter().all(|&v| v < 90)).count();
        assert!(dark > 500, "{dark}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_pad_and_survive_degenerate_data() {
        assert_eq!(padded_range([0.0, 10.0].into_iter()), (-0.5, 10.5));
        assert_eq!(padded_range([3.0].into_iter()), (2.5, 3.5));
        assert_eq!(padded_range([f64::NAN].into_iter()), (0.0, 1.0));
    }
}
