//! `reload-throughput.svg`: throughput per bucket, per scenario.

use std::path::Path;

use crate::report::baseline_of;
use crate::scenarios::{split_ka, Outcome};
use crate::{Args, BUCKET_MS};

pub(crate) const COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(0x44, 0x44, 0x44),
    plotters::style::RGBColor(0x17, 0xbe, 0xcf),
    plotters::style::RGBColor(0x8c, 0x56, 0x4b),
    plotters::style::RGBColor(0xd6, 0x27, 0x28),
    plotters::style::RGBColor(0xff, 0x7f, 0x0e),
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c),
    plotters::style::RGBColor(0x1f, 0x77, 0xb4),
    plotters::style::RGBColor(0x94, 0x67, 0xbd),
];

pub(crate) fn series(o: &Outcome) -> Vec<(f64, f64)> {
    o.load
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                (i as f64 + 0.5) * BUCKET_MS as f64 / 1000.0,
                *n as f64 * 1000.0 / BUCKET_MS as f64,
            )
        })
        .collect()
}

/// Throughput per 100 ms bucket: all scenarios in one chart on top, then
/// one panel per reload scenario with its reload instants marked (the
/// `live` and `structural` panels: their live-change instants, and any reload in black), and
/// the baseline in grey for reference.
pub(crate) fn plot(path: &Path, args: &Args, outs: &[Outcome]) -> Result<(), String> {
    use plotters::prelude::*;
    let panels: Vec<&Outcome> = outs
        .iter()
        .filter(|o| !o.name.starts_with("baseline"))
        .collect();
    let top_h = 420u32;
    let panel_h = 220u32;
    let height = top_h + panel_h * panels.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(top_h);
    let ymax = outs
        .iter()
        .flat_map(|o| series(o).into_iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let xmax = args.duration_secs;
    let color = |o: &Outcome| {
        let i = outs.iter().position(|x| x.name == o.name).unwrap_or(0);
        COLORS[i % COLORS.len()]
    };
    {
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!(
                    "Successful requests/s per {BUCKET_MS} ms bucket ({} clients, new connection per request; -ka: keep-alive; a reload (live rows: a catalog change) every {} ms)",
                    args.clients, args.reload_every_ms
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("req/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for o in outs {
            let c = color(o);
            chart
                .draw_series(LineSeries::new(series(o), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{} ({:.0} req/s)", o.name, o.rps()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    let areas = bottom.split_evenly((panels.len().max(1), 1));
    for (o, area) in panels.iter().zip(areas.iter()) {
        let c = color(o);
        let started = o
            .started_sampled()
            .map(|n| format!(", {n} HAProxy processes started"))
            .unwrap_or_default();
        let caption = if o.changes {
            format!(
                "{}: {} failed, {} catalog changes, {} applied live, {} reloads{started} (vertical lines: {})",
                o.name,
                o.load.failed(),
                o.changes_written(),
                o.live_applied,
                o.reloads_done,
                if matches!(split_ka(&o.name).0, "live" | "structural") && o.reloads_done > 0 {
                    format!("{}; black: reload done", o.marks_are)
                } else {
                    o.marks_are.to_string()
                }
            )
        } else {
            let conns = if o.keepalive {
                format!(", {} connections opened", o.load.connections)
            } else {
                String::new()
            };
            format!(
                "{}: {} failed, {} reloads{started}{conns} (vertical lines: {})",
                o.name,
                o.load.failed(),
                o.reloads_done,
                o.marks_are
            )
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(25)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .y_desc("req/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        let (marks, reloads_apart): (&[f64], &[f64]) =
            if matches!(split_ka(&o.name).0, "live" | "structural") {
                (&o.live_marks, &o.reload_marks)
            } else {
                (&o.reload_marks, &[])
            };
        chart
            .draw_series(
                marks
                    .iter()
                    .filter(|t| **t >= 0.0 && **t <= xmax)
                    .map(|t| PathElement::new(vec![(*t, 0.0), (*t, ymax)], c.mix(0.3))),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                reloads_apart
                    .iter()
                    .filter(|t| **t >= 0.0 && **t <= xmax)
                    .map(|t| PathElement::new(vec![(*t, 0.0), (*t, ymax)], BLACK.mix(0.6))),
            )
            .map_err(|e| e.to_string())?;
        if let Some(b) = baseline_of(outs, o) {
            chart
                .draw_series(LineSeries::new(series(b), RGBColor(0xaa, 0xaa, 0xaa)))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(LineSeries::new(series(o), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
