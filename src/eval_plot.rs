//! `apiq2gguf eval`'s plot: perplexity (log scale) against total size (model + adapter) of every
//! row on one text, one point per row with its name, colours by family. The font comes with the
//! program (epaint_default_fonts), so a machine without fonts draws the same picture.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::eval::RowResult;

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

fn family(r: &RowResult) -> (&'static str, RGBColor) {
    match (&r.spec.stock, r.spec.method.as_str(), r.spec.rank) {
        (Some(s), _, _) if s.imatrix => ("llama.cpp + imatrix", RGBColor(150, 60, 170)),
        (Some(_), _, _) => ("llama.cpp", RGBColor(210, 50, 40)),
        (None, "rtn", _) => ("RTN", RGBColor(120, 120, 120)),
        (None, _, None) => ("LWC only", RGBColor(230, 140, 20)),
        (None, _, Some(_)) => ("ApiQ + LoRA", RGBColor(30, 90, 200)),
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// Draws text `t` (index into each row's scores) to `path` (PNG).
pub fn draw(
    path: &Path,
    title: &str,
    source: (f64, u64),
    rows: &[RowResult],
    t: usize,
) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("{}: cannot draw the plot: {e}", path.display());
    let points: Vec<(f64, f64, String, RGBColor, &str)> = rows
        .iter()
        .filter_map(|r| {
            let s = r.scores.get(t)?;
            let (fam, colour) = family(r);
            let mib = (r.model_bytes + r.adapter_bytes) as f64 / MIB;
            Some((mib, s.ppl, r.spec.name.clone(), colour, fam))
        })
        .collect();
    let (src_ppl, src_bytes) = source;
    let src_mib = src_bytes as f64 / MIB;
    let xmax = points.iter().map(|p| p.0).fold(src_mib, f64::max) * 1.25;
    let ys = points.iter().map(|p| p.1).chain([src_ppl]);
    let ymin = ys.clone().fold(f64::INFINITY, f64::min) * 0.8;
    let ymax = ys.fold(0.0, f64::max) * 1.5;
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..xmax, (ymin..ymax).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("size in MiB (model + adapter)")
        .y_desc("perplexity (log scale)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    let mut families: Vec<(&str, RGBColor)> = vec![("source", RGBColor(0, 0, 0))];
    for p in &points {
        if !families.iter().any(|f| f.0 == p.4) {
            families.push((p.4, p.3));
        }
    }
    // Labels of points that land on (or next to) earlier ones are stacked below them.
    let mut placed: Vec<(i32, i32)> = Vec::new();
    for (name, colour) in families {
        let mut pts: Vec<(f64, f64, String)> = points
            .iter()
            .filter(|p| p.4 == name)
            .map(|p| (p.0, p.1, p.2.clone()))
            .collect();
        if name == "source" {
            pts.push((src_mib, src_ppl, "source".into()));
        }
        let offsets: Vec<i32> = pts
            .iter()
            .map(|(x, y, _)| {
                let (px, py) = chart.backend_coord(&(*x, *y));
                let free = |dy: i32| {
                    !placed
                        .iter()
                        .any(|(qx, qy)| (px - qx).abs() < 160 && (py + dy - qy).abs() < 14)
                };
                // Nearest free line: below, then above, alternating.
                let dy = (0..40)
                    .map(|k: i32| {
                        if k % 2 == 0 {
                            14 * (k / 2)
                        } else {
                            -14 * (k / 2 + 1)
                        }
                    })
                    .find(|&dy| free(dy))
                    .unwrap_or(0);
                placed.push((px, py + dy));
                dy
            })
            .collect();
        chart
            .draw_series(pts.iter().zip(offsets).map(|((x, y, label), dy)| {
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 6, colour.filled())
                    + Text::new(label.clone(), (10, dy - 7), ("sans-serif", 13).into_font())
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
