//! The SVG chart the README shows: latencies as multiples of PING, throughput, and waiting load,
//! one bar per implementation.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::subject::{KINDS, Kind};

const WIDTH: u32 = 1500;
const HEIGHT: u32 = 460;
/// The latency panel's share of the width.
const LATENCY_WIDTH: u32 = 940;
/// Indexed by [`Kind::index`]; the floor, a reference, in a light grey.
const COLORS: [RGBColor; KINDS] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xc7, 0xc7, 0xc7),
];
/// A bar's value label: small enough that five bars' labels side by side do not overlap.
const VALUE_FONT: (&str, u32) = ("sans-serif", 9);
/// Of each group's width, the part its bars take.
const BARS_WIDTH: f64 = 0.8;

pub struct ChartData {
    pub ping_us: f64,
    /// (group label, value per implementation) in multiples of PING.
    pub latency: Vec<(String, [f64; KINDS])>,
    pub throughput: [f64; KINDS],
    pub waiting_load: [f64; KINDS],
}

pub fn draw(data: &ChartData, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, body) = root.split_vertically(50);
    top.draw_text(
        &format!(
            "distlock vs rslock 0.10 vs async-redis-lock 0.4 vs distributed-lock 0.2, one run \
             (PING median {:.0} µs)",
            data.ping_us
        ),
        &("sans-serif", 18).into_font().color(&BLACK),
        (10, 8),
    )
    .map_err(plot_error)?;
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let x = 10 + i as i32 * 230;
        top.draw(&Rectangle::new([(x, 32), (x + 14, 44)], COLORS[i].filled()))
            .map_err(plot_error)?;
        top.draw_text(
            kind.name(),
            &("sans-serif", 14).into_font().color(&BLACK),
            (x + 20, 31),
        )
        .map_err(plot_error)?;
    }
    let (latency, rest) = body.split_horizontally(LATENCY_WIDTH);
    let (throughput, waiting) = rest.split_horizontally((WIDTH - LATENCY_WIDTH) / 2);
    bars(
        &latency,
        "latency, multiples of PING (log; lower is better)",
        &data.latency,
        true,
    )?;
    bars(
        &throughput,
        "critical sections/s (higher is better)",
        &[("throughput".to_owned(), data.throughput)],
        false,
    )?;
    bars(
        &waiting,
        "commands/s per waiter (log; lower better)",
        &[("waiting load".to_owned(), data.waiting_load)],
        true,
    )?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    groups: &[(String, [f64; KINDS])],
    log: bool,
) -> Result<()> {
    let values = groups.iter().flat_map(|(_, v)| v.iter().copied());
    let finite: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    let max = finite.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
    let min = finite.iter().copied().fold(f64::MAX, f64::min);
    let n = groups.len() as f64;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    let label_style = ("sans-serif", 13).into_font().color(&BLACK);
    let bar_width = BARS_WIDTH / KINDS as f64;
    let bar = |g: usize, i: usize| {
        let left = g as f64 + (1.0 - BARS_WIDTH) / 2.0 + i as f64 * bar_width;
        (left, left + bar_width)
    };
    if log {
        let floor = 10f64.powf((min / 2.0).log10().floor());
        let ceiling = 10f64.powf((max * 2.0).log10().ceil());
        let mut chart = builder
            .build_cartesian_2d(0f64..n, (floor..ceiling).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(plot_error)?;
        for (g, (_, values)) in groups.iter().enumerate() {
            for (i, &v) in values.iter().enumerate() {
                let (l, r) = bar(g, i);
                if v == 0.0 {
                    // Nothing to draw on a log axis: say it.
                    chart
                        .draw_series([Text::new("0", (l, floor * 1.15), VALUE_FONT)])
                        .map_err(plot_error)?;
                    continue;
                }
                if !(v.is_finite() && v > 0.0) {
                    continue;
                }
                chart
                    .draw_series([Rectangle::new([(l, floor), (r, v)], COLORS[i].filled())])
                    .map_err(plot_error)?;
                chart
                    .draw_series([Text::new(short(v), (l, v * 1.15), VALUE_FONT)])
                    .map_err(plot_error)?;
            }
        }
        if groups.len() > 1 {
            // backend_coord is in the whole canvas; draw_text is relative to this area.
            let (base_x, base_y) = area.get_base_pixel();
            for (g, (label, _)) in groups.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(g as f64 + 0.5, floor));
                let half_width = 3 * label.len() as i32;
                area.draw_text(
                    label,
                    &label_style,
                    (x - base_x - half_width, y - base_y + 8),
                )
                .map_err(plot_error)?;
            }
        }
    } else {
        let ceiling = max * 1.15;
        let mut chart = builder
            .build_cartesian_2d(0f64..n, 0f64..ceiling)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(plot_error)?;
        for (g, (_, values)) in groups.iter().enumerate() {
            for (i, &v) in values.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let (l, r) = bar(g, i);
                chart
                    .draw_series([Rectangle::new([(l, 0.0), (r, v)], COLORS[i].filled())])
                    .map_err(plot_error)?;
                chart
                    .draw_series([Text::new(short(v), (l, v + ceiling * 0.02), VALUE_FONT)])
                    .map_err(plot_error)?;
            }
        }
    }
    Ok(())
}

/// A bar's value label.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}
