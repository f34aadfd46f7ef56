//! The JSON report every scenario prints (and writes with --report), and the
//! SVG plot of latency distributions drawn from reports.

use crate::engine::{Counters, Run};
use crate::schedule::{Latencies, Percentiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub broker: String,
    pub clients: u32,
    pub connect_rate: f64,
    /// Target operations per second (publishes, payments), if any.
    pub rate: Option<f64>,
    pub duration_secs: f64,
    pub connected: u64,
    pub connect_failed: u64,
    pub published: u64,
    pub acked: u64,
    pub received: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub achieved_connects_per_sec: f64,
    pub achieved_publish_rate: f64,
    /// Latency percentiles in microseconds, by series: connect, ack
    /// (PUBACK), e2e (subscriber, Kafka or speaker), reconnect (storm).
    pub latency_us: BTreeMap<String, Percentiles>,
    /// (latency µs, percentile) points per series, for plots.
    pub distributions: BTreeMap<String, Vec<(u64, f64)>>,
    pub broker_rss_before_kib: Option<u64>,
    pub broker_rss_after_kib: Option<u64>,
    pub broker_rss_per_connection_bytes: Option<f64>,
}

impl Report {
    pub fn new(
        scenario: &str,
        run: &Run,
        rate: Option<f64>,
        connect_time: Duration,
        publish_time: Duration,
    ) -> Report {
        let c = &run.counters;
        let connected = Counters::get(&c.connected);
        let published = Counters::get(&c.published);
        let mut report = Report {
            scenario: scenario.into(),
            broker: run.broker.to_string(),
            clients: run.clients.count,
            connect_rate: run.clients.connect_rate(),
            rate,
            duration_secs: publish_time.as_secs_f64(),
            connected,
            connect_failed: Counters::get(&c.connect_failed),
            published,
            acked: Counters::get(&c.acked),
            received: Counters::get(&c.received),
            errors: Counters::get(&c.errors),
            first_error: run.first_error(),
            achieved_connects_per_sec: connected as f64 / connect_time.as_secs_f64().max(1e-9),
            achieved_publish_rate: published as f64 / publish_time.as_secs_f64().max(1e-9),
            latency_us: BTreeMap::new(),
            distributions: BTreeMap::new(),
            broker_rss_before_kib: None,
            broker_rss_after_kib: None,
            broker_rss_per_connection_bytes: None,
        };
        for (name, latencies) in [
            ("connect", &run.connect_latency),
            ("ack", &run.ack_latency),
            ("e2e", &run.e2e_latency),
        ] {
            let latencies = latencies.lock().unwrap_or_else(|e| e.into_inner());
            report.add_series(name, &latencies);
        }
        report
    }

    pub fn add_series(&mut self, name: &str, latencies: &Latencies) {
        let percentiles = latencies.percentiles();
        if percentiles.count > 0 {
            self.latency_us.insert(name.into(), percentiles);
            self.distributions
                .insert(name.into(), latencies.distribution());
        }
    }

    pub fn emit(&self, path: Option<&Path>) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        println!("{json}");
        if let Some(path) = path {
            std::fs::write(path, &json)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Draws every latency series of `reports` as percentile curves (x: the
/// percentile on a "number of nines" scale, y: latency in ms, log scale).
pub fn plot(reports: &[(String, Report)], output: &Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let nines = |p: f64| -(1.0 - (p / 100.0).min(0.99999)).log10();
    let mut series = Vec::new();
    for (label, report) in reports {
        for (name, points) in &report.distributions {
            let points: Vec<(f64, f64)> = points
                .iter()
                .map(|(us, p)| (nines(*p), (*us as f64 / 1000.0).max(0.001)))
                .collect();
            series.push((format!("{label} {name}"), points));
        }
    }
    anyhow::ensure!(!series.is_empty(), "no latency data in the reports");
    let max_ms = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0_f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(output, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..5.0_f64, (0.01..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.4}%", (1.0 - 10f64.powf(-x)) * 100.0))
        .draw()?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
