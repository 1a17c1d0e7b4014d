//! `apiq2gguf eval`'s plot: perplexity (log scale) against total size (model + adapter) of every
//! row on one text, one point per row with its name, colours by family. Rows far worse than the
//! source (a broken 2-bit RTN) would squeeze every useful row into a sliver of the log axis, so
//! they sit on the top edge as triangles with their perplexity in the label. The font comes with
//! the program (epaint_default_fonts), so a machine without fonts draws the same picture.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration fails only on bytes that are not a font; the fonts are compiled in.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// How a row was made; each family has its colour and its entry in the legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Stock,
    StockImatrix,
    Rtn,
    LwcOnly,
    ApiqLora,
}

impl Family {
    fn legend(self) -> (&'static str, RGBColor) {
        match self {
            Family::StockImatrix => ("llama.cpp + imatrix", RGBColor(150, 60, 170)),
            Family::Stock => ("llama.cpp", RGBColor(210, 50, 40)),
            Family::Rtn => ("RTN", RGBColor(120, 120, 120)),
            Family::LwcOnly => ("LWC only", RGBColor(230, 140, 20)),
            Family::ApiqLora => ("ApiQ + LoRA", RGBColor(30, 90, 200)),
        }
    }
}

/// One row on one text.
pub struct Point {
    pub name: String,
    pub family: Family,
    /// Model + adapter.
    pub bytes: u64,
    pub ppl: f64,
}

const MIB: f64 = (1u64 << 20) as f64;

/// Rows above this multiple of the source's perplexity are drawn off scale.
const OFF_SCALE: f64 = 100.0;

/// Pixels of one label line and, roughly, of one character at the label font.
const LINE: i32 = 14;
const CHAR: i32 = 7;

/// A label's width in pixels (roughly).
fn width(text: &str) -> i32 {
    CHAR * text.chars().count() as i32
}

/// One row's point as drawn: where, whether off scale, its label and the label's offset.
struct Mark {
    at: (f64, f64),
    off_scale: bool,
    text: String,
    offset: (i32, i32),
}

/// Where each label goes: the nearest free spot right or left of its point, one line up or down
/// at a time; returns the offset (dx, dy) of the label's left end from the point.
struct Labels {
    placed: Vec<(i32, i32, i32)>, // left, right, y of each label drawn
    /// The plotting area's pixel columns: labels stay inside, off the axis' numbers.
    area: std::ops::Range<i32>,
}

impl Labels {
    fn place(&mut self, (px, py): (i32, i32), text: &str) -> (i32, i32) {
        let w = width(text);
        let free = |x0: i32, y: i32| {
            x0 >= self.area.start
                && x0 + w <= self.area.end
                && !self
                    .placed
                    .iter()
                    .any(|&(l, r, qy)| x0 < r + 4 && x0 + w + 4 > l && (y - qy).abs() < LINE)
        };
        let spot = (0..40)
            .map(|k: i32| {
                if k % 2 == 0 {
                    LINE * (k / 2)
                } else {
                    -LINE * (k / 2 + 1)
                }
            })
            .flat_map(|dy| [(10, dy), (-10 - w, dy)])
            .find(|&(dx, dy)| free(px + dx, py + dy))
            .unwrap_or((10, 0));
        self.placed
            .push((px + spot.0, px + spot.0 + w, py + spot.1));
        spot
    }
}

/// Draws text `t` (index into each row's scores) to `path` (PNG).
pub fn draw(path: &Path, title: &str, source: (f64, u64), rows: &[Point]) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("{}: cannot draw the plot: {e}", path.display());
    let points: Vec<(f64, f64, String, RGBColor, &str)> = rows
        .iter()
        .map(|r| {
            let (fam, colour) = r.family.legend();
            (r.bytes as f64 / MIB, r.ppl, r.name.clone(), colour, fam)
        })
        .collect();
    let (src_ppl, src_bytes) = source;
    let src_mib = src_bytes as f64 / MIB;
    let limit = if src_ppl.is_finite() {
        src_ppl * OFF_SCALE
    } else {
        f64::INFINITY
    };
    let on_scale = |y: f64| y.is_finite() && y <= limit;
    let xs = points.iter().map(|p| p.0).chain([src_mib]);
    let xmin = xs.clone().fold(f64::INFINITY, f64::min) * 0.85;
    let xmax = xs.fold(0.0, f64::max) * 1.2;
    let ys = points
        .iter()
        .map(|p| p.1)
        .filter(|&y| on_scale(y))
        .chain([src_ppl]);
    let ymin = ys.clone().fold(f64::INFINITY, f64::min) * 0.8;
    let ymax = ys.fold(0.0, f64::max) * 2.0;
    // Off-scale rows sit just under the top edge.
    let top = ymax / 1.25;
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(xmin..xmax, (ymin..ymax).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("size in MiB (model + adapter)")
        .y_desc(format!(
            "perplexity (log scale; triangles on top: above {OFF_SCALE}x the source's)"
        ))
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    let mut families: Vec<(&str, RGBColor)> = vec![("source", RGBColor(0, 0, 0))];
    for p in &points {
        if !families.iter().any(|f| f.0 == p.4) {
            families.push((p.4, p.3));
        }
    }
    let mut labels = Labels {
        placed: Vec::new(),
        area: chart.plotting_area().get_pixel_range().0,
    };
    for (name, colour) in families {
        let mut pts: Vec<(f64, f64, String)> = points
            .iter()
            .filter(|p| p.4 == name)
            .map(|p| (p.0, p.1, p.2.clone()))
            .collect();
        if name == "source" {
            pts.push((src_mib, src_ppl, "source".into()));
        }
        let marks: Vec<Mark> = pts
            .into_iter()
            .map(|(x, y, label)| {
                let (at, off_scale, text) = if on_scale(y) {
                    ((x, y), false, label)
                } else {
                    ((x, top), true, format!("{label}: PPL {y:.3e}"))
                };
                let offset = labels.place(chart.backend_coord(&at), &text);
                Mark {
                    at,
                    off_scale,
                    text,
                    offset,
                }
            })
            .collect();
        chart
            .draw_series(marks.into_iter().map(|m| {
                let Mark {
                    at,
                    off_scale,
                    text,
                    offset: (dx, dy),
                } = m;
                let marker: DynElement<_, _> = if off_scale {
                    TriangleMarker::new((0, 0), 8, colour.filled()).into_dyn()
                } else {
                    Circle::new((0, 0), 6, colour.filled()).into_dyn()
                };
                // A leader line where the label had to move off its point's line.
                let end = if dx > 0 {
                    dx - 2
                } else {
                    dx + width(&text) + 2
                };
                let leader = if dy == 0 {
                    vec![]
                } else {
                    vec![(0, 0), (end, dy)]
                };
                EmptyElement::at(at)
                    + PathElement::new(leader, colour.mix(0.5))
                    + marker
                    + Text::new(text, (dx, dy - 7), ("sans-serif", 13).into_font())
            }))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x, y), 6, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
