//! The benchmark's results: a table on stdout, Markdown and an SVG chart under `docs/bench/`.

use std::fmt::Write as _;

/// One measured subject of a scenario (the agent, or a baseline).
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// E.g. `cached credentials, 64 connections`.
    pub scenario: String,
    /// E.g. `agent` or `baseline: minimal hyper server`.
    pub subject: String,
    /// Requests per second.
    pub rps: Option<f64>,
    /// Median latency, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds.
    pub p99_us: Option<f64>,
    /// Anything else measured (memory, calls), as text.
    pub other: String,
}

/// A ratio of the agent to its baseline, for the chart.
#[derive(Debug, Clone)]
pub struct Ratio {
    /// Short label.
    pub label: String,
    /// Agent / baseline.
    pub value: f64,
    /// The target ratio, if there is one, and whether higher is better.
    pub target: Option<(f64, bool)>,
}

/// A target of the issue, with what was measured.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The target as stated.
    pub target: String,
    /// The measured value.
    pub measured: String,
    /// Whether it holds.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Measurements.
    pub lines: Vec<Line>,
    /// Ratios for the chart.
    pub ratios: Vec<Ratio>,
    /// Targets.
    pub verdicts: Vec<Verdict>,
    /// Machine, commit, date.
    pub environment: Vec<(String, String)>,
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "".into())
}

/// `1234 us` → `1.23 ms` style.
pub fn latency(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

impl Report {
    /// The Markdown page.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("# Benchmark results\n\n");
        s.push_str(
            "Written by `cargo xtask bench` (scripts/bench.sh); every number below comes from \
             one run. The load generator (`wrk`) runs inside a container's network namespace \
             and shares the two cores with what it measures, so only the ratios to the \
             baselines measured in the same run mean anything.\n\n",
        );
        for (k, v) in &self.environment {
            let _ = writeln!(s, "- {k}: {v}");
        }
        s.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
        for v in &self.verdicts {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                v.target,
                v.measured,
                if v.met { "yes" } else { "**no**" }
            );
        }
        s.push_str("\n## Measurements\n\n![ratios to the baselines](results.svg)\n\n");
        s.push_str(
            "| scenario | subject | req/s | p50 | p99 | other |\n|---|---|---|---|---|---|\n",
        );
        for l in &self.lines {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                l.scenario,
                l.subject,
                opt(l.rps, |v| format!("{v:.0}")),
                opt(l.p50_us, latency),
                opt(l.p99_us, latency),
                l.other
            );
        }
        s
    }

    /// The table for the terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<44} {:<40} {:>9} {:>10} {:>10}  other",
            "scenario", "subject", "req/s", "p50", "p99"
        );
        for l in &self.lines {
            let _ = writeln!(
                s,
                "{:<44} {:<40} {:>9} {:>10} {:>10}  {}",
                l.scenario,
                l.subject,
                opt(l.rps, |v| format!("{v:.0}")),
                opt(l.p50_us, latency),
                opt(l.p99_us, latency),
                l.other
            );
        }
        s.push('\n');
        for v in &self.verdicts {
            let _ = writeln!(
                s,
                "[{}] {} — measured {}",
                if v.met { "met" } else { "NOT MET" },
                v.target,
                v.measured
            );
        }
        s
    }

    /// A horizontal bar chart of the ratios, with each target as a tick.
    pub fn svg(&self) -> String {
        let row = 26.0;
        let left = 330.0;
        let width = 820.0;
        let plot = width - left - 60.0;
        let max = self
            .ratios
            .iter()
            .map(|r| r.value.max(r.target.map(|t| t.0).unwrap_or(0.0)))
            .fold(1.2f64, f64::max)
            .ceil();
        let height = 60.0 + row * self.ratios.len() as f64;
        let x = |v: f64| left + plot * (v / max);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">metadataproxy / baseline in the same run (1.0 = the baseline; ticks: targets)</text>"#
        );
        for i in 0..=(max as usize) {
            let xv = x(i as f64);
            let _ = writeln!(
                s,
                r##"<line x1="{xv:.1}" y1="30" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{i}</text>"##,
                height - 20.0,
                height - 6.0
            );
        }
        for (i, r) in self.ratios.iter().enumerate() {
            let y = 34.0 + row * i as f64;
            let met = match r.target {
                Some((t, higher_better)) if higher_better => r.value >= t,
                Some((t, _)) => r.value <= t,
                None => true,
            };
            let color = if met { "#4a7fb5" } else { "#c0504d" };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{left}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}">{:.2}</text>"#,
                left - 8.0,
                y + 14.0,
                escape(&r.label),
                (x(r.value) - left).max(1.0),
                row - 8.0,
                x(r.value) + 4.0,
                y + 14.0,
                r.value
            );
            if let Some((t, _)) = r.target {
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
                    x(t),
                    y - 2.0,
                    x(t),
                    y + row - 6.0
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_line_ratio_and_verdict() {
        let r = Report {
            lines: vec![Line {
                scenario: "cached, 64".into(),
                subject: "agent".into(),
                rps: Some(1234.4),
                p50_us: Some(980.0),
                p99_us: Some(2500.0),
                other: String::new(),
            }],
            ratios: vec![Ratio {
                label: "cached <64>".into(),
                value: 0.8,
                target: Some((0.85, true)),
            }],
            verdicts: vec![Verdict {
                target: "x".into(),
                measured: "0.80".into(),
                met: false,
            }],
            environment: vec![("cores".into(), "2".into())],
        };
        let md = r.markdown();
        assert!(
            md.contains("| cached, 64 | agent | 1234 | 980 µs | 2.50 ms |  |"),
            "{md}"
        );
        assert!(md.contains("| x | 0.80 | **no** |"));
        let svg = r.svg();
        assert!(svg.contains("cached &lt;64&gt;") && svg.contains("#c0504d"));
        assert!(r.text().contains("NOT MET"));
    }
}
