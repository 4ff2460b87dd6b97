//! The per-op latency histograms of a run and their report: the summary
//! (JSON and table) and the percentile chart.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

pub(super) const OPS: [&str; 4] = ["validate", "create", "refresh", "revoke"];

/// An integer with thousands separators: 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Per-op latency histograms (ns) of one system.
pub(super) type Hists = [Histogram<u64>; 4];

pub(super) fn hists() -> Hists {
    std::array::from_fn(|_| {
        Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
    })
}

#[derive(serde::Serialize)]
pub(super) struct OpResult {
    pub(super) count: u64,
    pub(super) failed: u64,
    pub(super) ops_per_sec: f64,
    pub(super) p50_us: f64,
    pub(super) p90_us: f64,
    pub(super) p99_us: f64,
    pub(super) p999_us: f64,
    pub(super) max_us: f64,
}

pub(super) fn summarize(h: &Hists, failed: &[u64; 4], elapsed: Duration) -> BTreeMap<&'static str, OpResult> {
    let us = |v: u64| v as f64 / 1000.0;
    OPS.iter()
        .enumerate()
        .filter(|(i, _)| !h[*i].is_empty())
        .map(|(i, name)| {
            let x = &h[i];
            (
                *name,
                OpResult {
                    count: x.len(),
                    failed: failed[i],
                    ops_per_sec: x.len() as f64 / elapsed.as_secs_f64(),
                    p50_us: us(x.value_at_quantile(0.5)),
                    p90_us: us(x.value_at_quantile(0.9)),
                    p99_us: us(x.value_at_quantile(0.99)),
                    p999_us: us(x.value_at_quantile(0.999)),
                    max_us: us(x.max()),
                },
            )
        })
        .collect()
}

pub(super) fn print_table(title: &str, r: &BTreeMap<&'static str, OpResult>) {
    println!("\n{title}");
    println!(
        "{:<9} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}   (µs)",
        "op", "count", "ops/s", "p50", "p90", "p99", "p99.9", "max"
    );
    for (op, x) in r {
        println!(
            "{op:<9} {:>12} {:>12} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.1}{}",
            thousands(x.count),
            thousands(x.ops_per_sec.round() as u64),
            x.p50_us,
            x.p90_us,
            x.p99_us,
            x.p999_us,
            x.max_us,
            if x.failed > 0 { format!("   ({} failed)", x.failed) } else { String::new() }
        );
    }
}

/// Latency percentile curves (log scale) of each op for both systems.
pub(crate) fn plot(
    path: &std::path::Path,
    cloak: &Hists,
    redis: Option<&Hists>,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let qs: Vec<f64> = (0..=300).map(|i| 1.0 - 10f64.powf(-(f64::from(i) / 100.0))).collect(); // 0 .. 99.9 %
    let max_us = cloak
        .iter()
        .chain(redis.into_iter().flatten())
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(0.999) as f64 / 1000.0)
        .fold(1.0, f64::max);
    let systems = if redis.is_some() { "cloakroom vs Redis" } else { "cloakroom" };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("latency by percentile (µs, log scale): {systems}"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..3f64, (0.05f64..max_us * 2.0).log_scale())?;
    chart.configure_mesh().x_desc("percentile (0 = p0, 1 = p90, 2 = p99, 3 = p99.9)").y_desc("µs").draw()?;
    let cloak_colors = [RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(148, 103, 189), RGBColor(23, 190, 207)];
    let redis_colors = [RGBColor(214, 39, 40), RGBColor(255, 127, 14), RGBColor(140, 86, 75), RGBColor(227, 119, 194)];
    for (sys, hs, style) in [("cloakroom", Some(cloak), 0), ("redis", redis, 1)] {
        let Some(hs) = hs else { continue };
        for (i, h) in hs.iter().enumerate().filter(|(_, h)| !h.is_empty()) {
            let color = if style == 0 { cloak_colors[i] } else { redis_colors[i] };
            let pts: Vec<(f64, f64)> = qs
                .iter()
                .enumerate()
                .map(|(k, q)| (k as f64 / 100.0, (h.value_at_quantile(*q) as f64 / 1000.0).max(0.05)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(format!("{sys} {}", OPS[i]))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
