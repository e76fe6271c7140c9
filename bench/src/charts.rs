//! SVG charts of a run (plotters, SVG backend only): memory vs sessions, memory over time
//! against the budget, and the frame residence time distribution.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::measure::mib;
use crate::report::{Latency, Report};

const SIZE: (u32, u32) = (900, 540);

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("chart: {e}")
}

/// Writes the charts next to each other as `<stem>-*.svg`; returns the files written.
pub fn write(report: &Report, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let p = dir.join(format!("{stem}-memory.svg"));
    memory_vs_sessions(report, &p)?;
    out.push(p);
    let p = dir.join(format!("{stem}-memory-time.svg"));
    memory_over_time(report, &p)?;
    out.push(p);
    if let Some(l) = &report.latency {
        let p = dir.join(format!("{stem}-latency.svg"));
        latency(l, &report.profile, &p)?;
        out.push(p);
    }
    Ok(out)
}

fn memory_vs_sessions(r: &Report, path: &Path) -> Result<()> {
    let m = &r.memory;
    let mut pss = vec![(0.0, mib(m.idle.pss))];
    let mut rss = vec![(0.0, mib(m.idle.rss))];
    for s in &m.steps {
        pss.push((s.sessions as f64, mib(s.mem.pss)));
        rss.push((s.sessions as f64, mib(s.mem.rss)));
    }
    let max_n = m.steps.last().map_or(1, |s| s.sessions).max(1) as f64;
    let plan = |n: f64| mib(r.gateway.base_bytes) + n * mib(r.gateway.per_session_bytes);
    let y_max = rss.iter().map(|p| p.1).fold(plan(max_n), f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("rdpwire memory vs sessions ({})", r.profile),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_n * 1.05, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("sessions")
        .y_desc("MiB")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(pss.clone(), BLUE.stroke_width(2)))
        .map_err(err)?
        .label("PSS")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(pss.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(rss, RED.stroke_width(2)))
        .map_err(err)?
        .label("RSS")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(
            [(0.0, plan(0.0)), (max_n, plan(max_n))],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?
        .label("plan: base + per-session ceiling × n")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn memory_over_time(r: &Report, path: &Path) -> Result<()> {
    let samples = &r.memory.samples;
    let t_max = samples
        .last()
        .map_or(1.0, |s| s.t_ms as f64 / 1000.0)
        .max(1.0);
    let budget = mib(r.gateway.budget_bytes);
    let peak = samples.iter().map(|s| mib(s.rss)).fold(0.0, f64::max);
    // The budget line: always where the harness set a budget to reach (hostile runs), else
    // only when it is on the scale of what was measured.
    let show_budget = r.gateway.budget_set_by_harness || budget < peak * 4.0;
    let y_max = if show_budget { budget.max(peak) } else { peak } * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "rdpwire memory over time, sampled every 100 ms ({})",
                r.profile
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the gateway started")
        .y_desc("MiB")
        .draw()
        .map_err(err)?;
    let series = |f: fn(&crate::measure::Sample) -> u64| {
        samples
            .iter()
            .map(move |s| (s.t_ms as f64 / 1000.0, mib(f(s))))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(series(|s| s.rss), RED))
        .map_err(err)?
        .label("RSS")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(series(|s| s.anon), BLUE))
        .map_err(err)?
        .label("anonymous (heap, arenas, stacks)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|s| s.tcp), GREEN))
        .map_err(err)?
        .label("kernel TCP memory (machine)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
    if show_budget {
        chart
            .draw_series(LineSeries::new(
                [(0.0, budget), (t_max, budget)],
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label("budget")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Latency by percentile on a "nines" axis: x = −log10(1 − q).
fn latency(l: &Latency, profile: &str, path: &Path) -> Result<()> {
    let pts: Vec<(f64, f64)> = l
        .spectrum
        .iter()
        .filter(|(q, _)| *q < 100.0)
        .map(|&(q, us)| (-(1.0 - q / 100.0).log10(), us / 1000.0))
        .collect();
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max).min(5.0);
    let y_max = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(0.01) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "frame residence, server send → browser receive ({profile}, {} frames)",
                l.count
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{q:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 5.0), (x_max, 5.0)], RED))
        .map_err(err)?
        .label("target p99 < 5 ms")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn latency_chart_is_svg() {
        let l = Latency {
            count: 1000,
            p50_us: 80.0,
            p90_us: 120.0,
            p99_us: 400.0,
            p999_us: 900.0,
            max_us: 2500.0,
            spectrum: vec![(0.0, 40.0), (50.0, 80.0), (99.0, 400.0), (99.9, 900.0)],
        };
        let path = std::env::temp_dir().join(format!("bench-latency-{}.svg", std::process::id()));
        latency(&l, "office", &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..40]);
        assert!(text.contains("99.9"), "nines on the percentile axis");
    }
}
