//! The report of a run: a short human summary on stdout, the full JSON
//! (with the latency distributions) in `--report FILE` or on stdout with
//! `--json`; the verdict on loss that sets the exit code; and the SVG plot
//! of latency distributions drawn from JSON reports.

use crate::accounting::{DownlinkAccounting, DownlinkClassAccounting, UplinkAccounting};
use crate::cli::Target;
use crate::engine::{Counters, Run};
use crate::fanin_ledger::FaninAccounting;
use crate::schedule::{Latencies, Percentiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// The broker address, or the addresses of `-h` joined by commas.
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
    /// The prefix of every message id of this run (scan, command, payment ids).
    #[serde(default)]
    pub run_tag: String,
    /// Connections lost while the terminal meant to stay.
    #[serde(default)]
    pub disconnects: u64,
    /// Connections re-established after a loss; their latency (loss to
    /// CONNACK) is the `reconnect` series.
    #[serde(default)]
    pub reconnects: u64,
    /// Reconnect attempts that failed (refused, timed out, CONNACK refused).
    #[serde(default)]
    pub reconnect_failures: u64,
    /// Reconnects whose CONNACK said session present.
    #[serde(default)]
    pub sessions_resumed: u64,
    /// Uplink loss accounting (uplink scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkAccounting>,
    /// Downlink loss accounting (downlink and announce scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink: Option<DownlinkAccounting>,
    /// MQTT fan-in loss accounting (fanin scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanin: Option<FaninAccounting>,
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
            broker: run.brokers.to_string(),
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
            run_tag: run.run_tag.as_str().to_string(),
            disconnects: Counters::get(&c.disconnects),
            reconnects: Counters::get(&c.reconnects),
            reconnect_failures: Counters::get(&c.reconnect_failures),
            sessions_resumed: Counters::get(&c.sessions_resumed),
            uplink: None,
            downlink: None,
            fanin: None,
        };
        for (name, latencies) in [
            ("connect", &run.connect_latency),
            ("ack", &run.ack_latency),
            ("e2e", &run.e2e_latency),
            ("reconnect", &run.reconnect_latency),
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

    /// Writes the JSON to `--report`, and prints the summary on stdout (on
    /// stderr with `--json`, which prints the JSON on stdout).
    pub fn emit(&self, target: &Target) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        if let Some(path) = &target.report {
            std::fs::write(path, &json)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        if target.json {
            eprint!("{}", self.summary());
            println!("{json}");
        } else {
            print!("{}", self.summary());
        }
        Ok(())
    }

    /// A few lines for a person: counts, then one line per latency series.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} clients, {} connected, {} failed; {} published ({:.0}/s), {} acked, {} received; {} errors",
            self.scenario,
            self.clients,
            self.connected,
            self.connect_failed,
            self.published,
            self.achieved_publish_rate,
            self.acked,
            self.received,
            self.errors,
        );
        if self.disconnects + self.reconnects + self.reconnect_failures > 0 {
            let _ = writeln!(
                out,
                "connections: {} lost, {} reconnects ({} sessions resumed), {} failed reconnect attempts",
                self.disconnects, self.reconnects, self.sessions_resumed, self.reconnect_failures
            );
        }
        if let Some(u) = &self.uplink {
            let _ = writeln!(
                out,
                "uplink: sent {}, acked {}, in_kafka {}, acked_but_lost {}, duplicates {}, never_acked {} ({} of them in Kafka); retransmitted {}, not_sent {}{}",
                u.sent,
                u.acked,
                u.in_kafka,
                u.acked_but_lost,
                u.duplicates,
                u.never_acked,
                u.never_acked_in_kafka,
                u.retransmitted,
                u.not_sent,
                if u.kafka_caught_up { "" } else { " (Kafka read-back incomplete)" },
            );
        }
        if let Some(d) = &self.downlink {
            let by_outcome: Vec<String> = d
                .receipted_by_outcome
                .iter()
                .map(|(outcome, n)| format!("{outcome} {n}"))
                .collect();
            let _ =
                writeln!(
                out,
                "downlink: produced {}, delivered {}, receipted {} ({}), lost {}, duplicated {}{}",
                d.produced,
                d.delivered,
                d.receipted,
                by_outcome.join(", "),
                d.lost,
                d.duplicated,
                if d.receipts_caught_up { "" } else { " (receipts read-back incomplete)" },
            );
        }
        if let Some(d) = &self.downlink {
            for (name, class) in [
                ("healthy", &d.healthy),
                ("stalled", &d.stalled),
                ("slow", &d.slow),
            ] {
                if let Some(class) = class
                    .as_ref()
                    .filter(|_| d.stalled.is_some() || d.slow.is_some())
                {
                    let _ = writeln!(out, "  {}", class_summary(name, class));
                }
            }
            if d.stalled.is_some() {
                let _ = writeln!(
                    out,
                    "  stalled terminals disconnected by the broker: {} (after {} ms); {} commands left unread in their sockets",
                    d.stalled_disconnected,
                    list(&d.stalled_disconnected_after_ms),
                    d.stalled_unread
                );
            }
        }
        if let Some(f) = &self.fanin {
            let _ = writeln!(
                out,
                "fanin: sent {}, acked {}, received {}, acked_but_lost {}, duplicates {}, not_received {}, never_acked {} ({} of them received); {}",
                f.sent,
                f.acked,
                f.received,
                f.acked_but_lost,
                f.duplicates,
                f.not_received,
                f.never_acked,
                f.never_acked_received,
                if f.complete { "all received" } else { "settle time ran out" },
            );
            let _ = writeln!(
                out,
                "fanin: per second while publishing: {:.0} sent, {:.0} acked, {:.0} received; {} publishers and {} subscriber connections closed by the broker",
                f.publish_rate, f.ack_rate, f.receive_rate, f.publisher_disconnects, f.subscriber_disconnects,
            );
            if f.stalled + f.slow > 0 {
                let _ = writeln!(
                    out,
                    "fanin: {} stalled subscribers, {} disconnected by the broker (after {} ms), {} PUBLISHes left unread; {} slow ({} ms) received {} ({} duplicates, {} disconnects)",
                    f.stalled,
                    f.stalled_disconnected,
                    list(&f.stalled_disconnected_after_ms),
                    f.stalled_unread,
                    f.slow,
                    f.slow_ack_ms,
                    f.slow_received,
                    f.slow_duplicates,
                    f.slow_disconnects,
                );
            }
        }
        for (name, p) in &self.latency_us {
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name:<10} count {:<8} p50 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2} ms",
                p.count,
                ms(p.p50),
                ms(p.p99),
                ms(p.p999),
                ms(p.max)
            );
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "first error: {error}");
        }
        out
    }

    /// Why this run counts as having lost messages (empty if it did not):
    /// PUBACKed uplinks missing from Kafka, downlink commands lost.
    pub fn losses(&self) -> Vec<String> {
        let mut losses = Vec::new();
        if let Some(u) = self.uplink.as_ref().filter(|u| u.acked_but_lost > 0) {
            losses.push(format!(
                "{} PUBACKed uplinks were not read back from Kafka topic {} (acked_but_lost){}",
                u.acked_but_lost,
                u.kafka_topic,
                if u.kafka_caught_up {
                    ""
                } else {
                    "; the read-back did not reach the topic's end offsets"
                }
            ));
        }
        if let Some(d) = self.downlink.as_ref().filter(|d| d.lost > 0) {
            losses.push(format!(
                "{} commands Kafka confirmed on {} were neither delivered nor receipted as expired or refused (lost)",
                d.lost, d.downlink_topic
            ));
        }
        if let Some(f) = self.fanin.as_ref().filter(|f| f.acked_but_lost > 0) {
            losses.push(format!(
                "{} acknowledged messages never reached the subscriber (acked_but_lost)",
                f.acked_but_lost
            ));
        }
        losses
    }
}

fn class_summary(name: &str, c: &DownlinkClassAccounting) -> String {
    let by_outcome: Vec<String> = c
        .receipted_by_outcome
        .iter()
        .map(|(outcome, n)| format!("{outcome} {n}"))
        .collect();
    format!(
        "{name} ({} terminals): produced {}, delivered {}, receipted {} ({}), lost {}, duplicated {}",
        c.terminals,
        c.produced,
        c.delivered,
        c.receipted,
        by_outcome.join(", "),
        c.lost,
        c.duplicated
    )
}

fn list(values: &[u64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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
