//! Runs `wrk` inside a container's network namespace (and cgroup) and reads its report.

use crate::Container;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Requests completed.
    pub requests: u64,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

/// One load: `connections` connections for `seconds` against `url`, from inside `from`
/// (`close`: a new connection per request).
pub fn run(from: &Container, url: &str, connections: u32, seconds: u32, close: bool) -> Load {
    let threads = connections.clamp(1, 2).to_string();
    let connections = connections.to_string();
    let duration = format!("{seconds}s");
    let mut args = vec![
        "-t",
        &threads,
        "-c",
        &connections,
        "-d",
        &duration,
        "--latency",
        "--timeout",
        "5s",
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = from.run_inside("wrk", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk {url}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text).unwrap_or_else(|| panic!("cannot read wrk's report: {text}"))
}

/// Reads `wrk --latency` output.
pub fn parse(text: &str) -> Option<Load> {
    let mut load = Load::default();
    let mut seen_rps = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                load.rps = v.parse().ok()?;
                seen_rps = true;
            }
            ["50%", v] => load.p50_us = micros(v)?,
            ["99%", v] => load.p99_us = micros(v)?,
            [n, "requests", "in", ..] => load.requests = n.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                load.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    seen_rps.then_some(load)
}

fn micros(v: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 5s test @ http://172.17.0.1:8000/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  300.00us   9.87ms   80.00%
    Req/Sec    31.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  980.00us
     75%    1.10ms
     90%    1.30ms
     99%    2.50ms
  310000 requests in 5.00s, 100.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  62000.50
Transfer/sec:     20.00MB
";
        let l = parse(text).unwrap();
        assert_eq!(l.rps, 62000.5);
        assert_eq!(l.p50_us, 980.0);
        assert_eq!(l.p99_us, 2500.0);
        assert_eq!(l.requests, 310000);
        assert_eq!(l.non_2xx, 7);
        assert_eq!(l.socket_errors, 3);
        assert!(parse("garbage").is_none());
    }
}
