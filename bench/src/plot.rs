//! PNG line charts of a run (throughput and latency percentiles over time), drawn with
//! `plotters` into an in-memory RGB buffer (its bitmap backend) and encoded with `png`.
//!
//! No font library and no system font: plotters draws text only through a TrueType backend
//! (font-kit and fontconfig, or ab_glyph with a font file), so every label here is drawn with
//! the 5×7 pixel font below (upper case, digits and the punctuation the labels use), pixel by
//! pixel. The charts' axes, grid and ticks are drawn by this module on plotters' drawing area;
//! plotters maps the data to pixels and draws the lines.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Width of a chart, in pixels.
const WIDTH: u32 = 1000;
/// Height of one panel (one phase), in pixels.
const PANEL_HEIGHT: u32 = 300;
/// Pixels per font pixel.
const TEXT_SCALE: i32 = 2;
/// Room left of the plotting area for the y tick labels.
const MARGIN_LEFT: u32 = 110;
const MARGIN_RIGHT: u32 = 20;
/// Room above the plotting area for the title and the legend.
const MARGIN_TOP: u32 = 50;
/// Room below the plotting area for the x tick labels.
const MARGIN_BOTTOM: u32 = 40;
/// Most panels drawn in one chart (phases beyond are left out, and said so).
pub const MAX_PANELS: usize = 12;

const GRID: RGBColor = RGBColor(225, 225, 225);
const AXIS: RGBColor = RGBColor(60, 60, 60);

/// Line colours, in series order.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(120, 120, 120),
    RGBColor(148, 103, 189),
];

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    /// (x, y) points; y must be positive on a logarithmic panel (others are left out).
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, a y axis and its lines over a common x axis.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Draws `panels` one above the other (at most [`MAX_PANELS`]) with `x_label` under each and
/// writes the PNG to `path`.
pub fn write_png(path: &Path, panels: &[Panel], x_label: &str) -> anyhow::Result<()> {
    let rgb = render(panels, x_label)?;
    let height = panel_count(panels) * PANEL_HEIGHT;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(&rgb)
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("writing {}", path.display()))
}

fn panel_count(panels: &[Panel]) -> u32 {
    panels.len().clamp(1, MAX_PANELS) as u32
}

/// The chart as RGB bytes, `WIDTH` × (`PANEL_HEIGHT` × panels).
pub fn render(panels: &[Panel], x_label: &str) -> anyhow::Result<Vec<u8>> {
    let count = panel_count(panels);
    let mut buffer = vec![255u8; (WIDTH * count * PANEL_HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, count * PANEL_HEIGHT))
            .into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        if panels.is_empty() {
            draw_text(&root, "NO DATA", 20, 20, AXIS)?;
        }
        let areas = root.split_evenly((count as usize, 1));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel, x_label)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

fn draw_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {error}")
}

/// Axis ticks: positions in data units and their labels.
fn ticks(min: f64, max: f64, log: bool) -> Vec<(f64, String)> {
    if log {
        // Data are log10 values: one tick per decade.
        let first = min.floor() as i32;
        let last = max.ceil() as i32;
        return (first..=last)
            .map(|exp| (f64::from(exp), format_number(10f64.powi(exp))))
            .collect();
    }
    let span = (max - min).max(f64::MIN_POSITIVE);
    let step = nice_step(span / 5.0);
    let mut value = (min / step).ceil() * step;
    let mut ticks = Vec::new();
    // Bounded: about five steps span the range.
    while value <= max + step * 1e-9 && ticks.len() < 20 {
        ticks.push((value, format_number(value)));
        value += step;
    }
    ticks
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude)
}

/// A tick label: integers without decimals, small values with as many as they need, large
/// values with a K or M suffix.
pub fn format_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 && (value / 1e6).fract().abs() < 1e-9 {
        format!("{}M", (value / 1e6) as i64)
    } else if magnitude >= 1e4 && (value / 1e3).fract().abs() < 1e-9 {
        format!("{}K", (value / 1e3) as i64)
    } else if value.fract().abs() < 1e-9 {
        format!("{}", value as i64)
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
    x_label: &str,
) -> anyhow::Result<()> {
    let transform = |y: f64| if panel.log_y { y.log10() } else { y };
    // The series in the panel's y units (log10 on a logarithmic panel).
    let series: Vec<Series> = panel
        .series
        .iter()
        .map(|s| Series {
            label: s.label.clone(),
            color: s.color,
            points: s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0))
                .map(|(x, y)| (*x, transform(*y)))
                .collect(),
        })
        .collect();
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (0.0f64, 1.0f64, f64::MAX, f64::MIN);
    for (x, y) in all.clone() {
        x_max = x_max.max(*x);
        x_min = x_min.min(*x);
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    if y_min > y_max {
        (y_min, y_max) = (0.0, 1.0);
    }
    if panel.log_y {
        y_min = y_min.floor();
        y_max = y_max.ceil().max(y_min + 1.0);
    } else {
        y_min = y_min.min(0.0);
        let step = nice_step((y_max - y_min).max(1e-9) / 5.0);
        y_max = ((y_max / step).ceil() * step).max(y_min + step);
    }

    let (offset_x, offset_y) = area.get_base_pixel();
    let mut chart = ChartBuilder::on(area)
        .margin_left(MARGIN_LEFT)
        .margin_right(MARGIN_RIGHT)
        .margin_top(MARGIN_TOP)
        .margin_bottom(MARGIN_BOTTOM)
        .build_cartesian_2d(x_min..x_max, y_min..y_max)
        .map_err(draw_error)?;
    let plotting = chart.plotting_area().clone();
    let coord = chart.as_coord_spec().clone();
    let to_pixel = |x: f64, y: f64| {
        let (px, py) = coord.translate(&(x, y));
        (px - offset_x, py - offset_y)
    };

    for (value, label) in ticks(y_min, y_max, panel.log_y) {
        plotting
            .draw(&PathElement::new(
                vec![(x_min, value), (x_max, value)],
                GRID,
            ))
            .map_err(draw_error)?;
        let (_, py) = to_pixel(x_min, value);
        let width = text_width(&label);
        draw_text(area, &label, MARGIN_LEFT as i32 - 8 - width, py - 7, AXIS)?;
    }
    for (value, label) in ticks(x_min, x_max, false) {
        plotting
            .draw(&PathElement::new(
                vec![(value, y_min), (value, y_max)],
                GRID,
            ))
            .map_err(draw_error)?;
        let (px, py) = to_pixel(value, y_min);
        // Centred under its tick, but inside the picture.
        let x = (px - text_width(&label) / 2).min(WIDTH as i32 - 2 - text_width(&label));
        draw_text(area, &label, x, py + 8, AXIS)?;
    }
    // The frame of the plotting area.
    let (left, top) = to_pixel(x_min, y_max);
    let (right, bottom) = to_pixel(x_max, y_min);
    area.draw(&Rectangle::new([(left, top), (right, bottom)], AXIS))
        .map_err(draw_error)?;

    for Series { color, points, .. } in &series {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(draw_error)?;
        // A mark on every point, so that a phase of one interval still shows.
        for (x, y) in points {
            let (px, py) = to_pixel(*x, *y);
            area.draw(&Rectangle::new(
                [(px - 2, py - 2), (px + 2, py + 2)],
                color.filled(),
            ))
            .map_err(draw_error)?;
        }
    }

    // Title and axis names on the first line, the legend on the second.
    draw_text(area, &panel.title, 10, 6, BLACK)?;
    let axes = format!("{} OVER {}", panel.y_label, x_label);
    draw_text(
        area,
        &axes,
        WIDTH as i32 - MARGIN_RIGHT as i32 - text_width(&axes),
        6,
        AXIS,
    )?;
    let mut x = MARGIN_LEFT as i32;
    for Series { label, color, .. } in &series {
        area.draw(&Rectangle::new([(x, 28), (x + 14, 38)], color.filled()))
            .map_err(draw_error)?;
        draw_text(area, label, x + 20, 27, AXIS)?;
        x += 20 + text_width(label) + 24;
    }
    if series.iter().all(|s| s.points.is_empty()) {
        draw_text(area, "NO DATA", left + 20, top + 20, AXIS)?;
    }
    Ok(())
}

/// Width of `text` in pixels at [`TEXT_SCALE`].
pub fn text_width(text: &str) -> i32 {
    text.chars().count() as i32 * 6 * TEXT_SCALE
}

/// Draws `text` (upper-cased) with its top-left corner at (`x`, `y`) of `area`.
fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    x: i32,
    y: i32,
    color: RGBColor,
) -> anyhow::Result<()> {
    for (index, ch) in text.chars().enumerate() {
        let rows = glyph(ch.to_ascii_uppercase());
        let left = x + index as i32 * 6 * TEXT_SCALE;
        for (row, bits) in rows.iter().enumerate() {
            for (column, bit) in bits.bytes().enumerate() {
                if bit != b'#' {
                    continue;
                }
                let px = left + column as i32 * TEXT_SCALE;
                let py = y + row as i32 * TEXT_SCALE;
                area.draw(&Rectangle::new(
                    [(px, py), (px + TEXT_SCALE - 1, py + TEXT_SCALE - 1)],
                    color.filled(),
                ))
                .map_err(|e| anyhow::anyhow!("drawing a label: {e}"))?;
            }
        }
    }
    Ok(())
}

/// The 5×7 glyph of `ch` (rows top to bottom, `#` lit); `?` for characters without one.
fn glyph(ch: char) -> [&'static str; 7] {
    match ch {
        'A' => [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'B' => [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
        'C' => [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
        'D' => [
            "####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####.",
        ],
        'E' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
        'F' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
        'G' => [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
        'H' => [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'I' => [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        'J' => [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'K' => [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
        'L' => [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
        'M' => [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
        'N' => [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
        'O' => [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'P' => [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
        'Q' => [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
        'R' => [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
        'S' => [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
        'T' => [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
        'U' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'V' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
        'W' => [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
        'X' => [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
        'Y' => [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
        'Z' => [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
        '0' => [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
        '1' => [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        '2' => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
        '3' => [
            "#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.",
        ],
        '4' => [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
        '5' => [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
        '6' => [
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ],
        '7' => [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
        '8' => [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
        '9' => [
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ],
        ' ' => [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
        '.' => [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..",
        ],
        ',' => [
            ".....", ".....", ".....", ".....", ".##..", "..#..", ".#...",
        ],
        '-' => [
            ".....", ".....", ".....", "#####", ".....", ".....", ".....",
        ],
        '_' => [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ],
        '/' => [
            ".....", "....#", "...#.", "..#..", ".#...", "#....", ".....",
        ],
        ':' => [
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....",
        ],
        '=' => [
            ".....", ".....", "#####", ".....", "#####", ".....", ".....",
        ],
        '+' => [
            ".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....",
        ],
        '%' => [
            "##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##",
        ],
        '(' => [
            "...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.",
        ],
        ')' => [
            ".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...",
        ],
        _ => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#..",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_five_by_seven() {
        for ch in (' '..='~').chain(['?']) {
            let rows = glyph(ch.to_ascii_uppercase());
            assert!(
                rows.iter()
                    .all(|row| row.len() == 5 && row.bytes().all(|b| b == b'#' || b == b'.')),
                "{ch:?}"
            );
        }
    }

    #[test]
    fn linear_ticks_are_round_and_cover_the_range() {
        let linear = ticks(0.0, 1000.0, false);
        let values: Vec<f64> = linear.iter().map(|(v, _)| *v).collect();
        assert_eq!(values, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(linear[1].1, "200");
        let small = ticks(0.0, 0.5, false);
        assert_eq!(small[1].1, "0.1");
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
    }

    #[test]
    fn log_ticks_are_decades() {
        let labels: Vec<String> = ticks(-1.0, 2.0, true).into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels, vec!["0.1", "1", "10", "100"]);
        assert_eq!(format_number(20_000.0), "20K");
        assert_eq!(format_number(3_000_000.0), "3M");
        assert_eq!(format_number(1500.0), "1500");
    }

    #[test]
    fn a_chart_renders_with_and_without_data() {
        let panel = Panel {
            title: "messages".into(),
            y_label: "OPS/S".into(),
            log_y: false,
            series: vec![Series {
                label: "ops/s".into(),
                color: PALETTE[0],
                points: vec![(1.0, 100.0), (2.0, 250.0), (3.0, 180.0)],
            }],
        };
        let rgb = render(std::slice::from_ref(&panel), "ELAPSED S").expect("renders");
        assert_eq!(rgb.len(), (WIDTH * PANEL_HEIGHT * 3) as usize);
        assert!(
            rgb.chunks(3).any(|p| p == [31, 119, 180]),
            "the line is drawn"
        );
        assert!(rgb.chunks(3).any(|p| p == [0, 0, 0]), "the title is drawn");
        let empty = Panel {
            series: Vec::new(),
            log_y: true,
            ..panel
        };
        render(&[empty], "ELAPSED S").expect("an empty panel renders");
        render(&[], "ELAPSED S").expect("no panel renders");
    }
}
