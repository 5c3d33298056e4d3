//! `config::Args` (clap) and `Config::try_from(Args)`, and `config::parse_go_duration`.
//!
//! Input: lines (split on `\n` or NUL). A line `name=value` whose `name` is one of the agent's
//! long flags becomes `--name=value`; any other line is passed to clap as one raw argument
//! (so `--port`, `80`, `--help`, `-x` on separate lines also reach it). The flag names and
//! their environment variables are read from clap itself, so new flags are fuzzed without
//! changing this target; `Args::parse_from_vars` parses without reading the process
//! environment, so the input alone decides.
//!
//! Flags that name files (names ending in `-file`) are left out: what the application does
//! with a path (the role policy file is read by `app::read_role_policy`, not here) is not a
//! parsing question.
//!
//! Asserts:
//! - neither parsing nor validation panics (errors are fine), and the error renders;
//! - the New Relic license never appears in a validation error or in a `Config`'s `Debug`
//!   output (checked differentially against the same argv with another license);
//! - a valid `Config` keeps its documented bounds (session duration 15m-12h in whole
//!   seconds, cache offset shorter than it, positive timeouts);
//! - `parse_go_duration` on every line and value is deterministic, never exceeds `u64::MAX`
//!   nanoseconds, and its result round-trips through `"<nanos>ns"`.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use clap::CommandFactory;
use libfuzzer_sys::fuzz_target;
use metadataproxy::config::{parse_go_duration, Args, Config};

const LICENSE_FLAG: &str = "newrelic-license";
const PROBE_LICENSE: &str = "PROBE-LICENSE-VALUE";

/// The agent's long flags, once, split into fuzzed and excluded ones.
struct Flags {
    fuzzed: Vec<String>,
    excluded: Vec<String>,
}

fn flags() -> &'static Flags {
    static FLAGS: OnceLock<Flags> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let cmd = Args::command();
        let mut flags = Flags {
            fuzzed: Vec::new(),
            excluded: Vec::new(),
        };
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                if is_excluded(long) {
                    flags.excluded.push(long.to_string());
                } else {
                    flags.fuzzed.push(long.to_string());
                }
            }
        }
        assert!(
            flags.fuzzed.iter().any(|f| f == LICENSE_FLAG),
            "flags: {:?}",
            flags.fuzzed
        );
        flags
    })
}

/// Flags that name files.
fn is_excluded(long: &str) -> bool {
    long.ends_with("-file")
}

fn argv(lines: &[&str]) -> Vec<String> {
    let flags = flags();
    let mut argv = vec!["metadataproxy".to_string()];
    for line in lines {
        match line.split_once('=') {
            Some((name, value)) if flags.fuzzed.iter().any(|f| f == name) => {
                argv.push(format!("--{name}={value}"));
            }
            _ => {
                // Raw arguments naming an excluded flag are dropped too.
                let bare = line.trim_start_matches('-');
                if flags.excluded.iter().any(|l| bare.starts_with(l.as_str())) {
                    continue;
                }
                argv.push(line.to_string());
            }
        }
    }
    argv
}

fn validate(argv: &[String]) -> Option<Result<Config, String>> {
    // The process environment is not read: the input alone decides.
    let args = Args::parse_from_vars(argv.iter().skip(1).map(String::as_str), []).ok()?;
    Some(Config::try_from(args).map_err(|e| e.to_string()))
}

fn check_duration(s: &str) {
    let first = parse_go_duration(s);
    assert_eq!(
        first,
        parse_go_duration(s),
        "parse_go_duration({s:?}) not deterministic"
    );
    if let Ok(d) = first {
        assert!(d.as_nanos() <= u128::from(u64::MAX), "{s:?} -> {d:?}");
        let canonical = format!("{}ns", d.as_nanos());
        assert_eq!(
            parse_go_duration(&canonical),
            Ok(d),
            "{s:?} -> {d:?} -> {canonical}"
        );
    }
}

fn check_config(c: &Config) {
    assert!(
        c.role_session_duration >= Duration::from_secs(900)
            && c.role_session_duration <= Duration::from_secs(12 * 3600)
            && c.role_session_duration.subsec_nanos() == 0,
        "{:?}",
        c.role_session_duration
    );
    assert!(c.role_cache_offset < c.role_session_duration);
    assert!(!c.upstream_connect_timeout.is_zero());
    assert!(!c.upstream_timeout.is_zero());
    assert!(!c.docker_reconcile_interval.is_zero());
    assert!(!c.telemetry.flush_interval.is_zero());
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = input.split(['\n', '\0']).collect();
    for line in &lines {
        check_duration(line);
        if let Some((_, value)) = line.split_once('=') {
            check_duration(value);
        }
    }

    let argv = argv(&lines);
    let Some(result) = validate(&argv) else {
        return;
    };
    if let Ok(c) = &result {
        check_config(c);
    }

    // The license: the last `--newrelic-license=` wins (args_override_self).
    let prefix = format!("--{LICENSE_FLAG}=");
    let Some(at) = argv.iter().rposition(|a| a.starts_with(&prefix)) else {
        return;
    };
    let license = argv[at][prefix.len()..].trim().to_string();
    if license.len() < 4
        || argv
            .iter()
            .enumerate()
            .any(|(i, a)| i != at && a.contains(&license))
    {
        return;
    }
    let rendered = |r: &Result<Config, String>| match r {
        Ok(c) => format!("{c:?}"),
        Err(e) => e.clone(),
    };
    let mut probe_argv = argv.clone();
    probe_argv[at] = format!("{prefix}{PROBE_LICENSE}");
    let probe = validate(&probe_argv).expect("same flags");
    let text = rendered(&result);
    let probe_text = rendered(&probe);
    // With another license, the outcome is the same; whatever the text says, it does not
    // contain the license unless it would say so for any license.
    assert_eq!(
        result.is_ok(),
        probe.is_ok(),
        "license changed the outcome: {argv:?}"
    );
    if !probe_text.contains(&license) && !PROBE_LICENSE.contains(&license) {
        assert!(
            !text.contains(&license),
            "SECRET: the license {license:?} appears in {text:?}"
        );
    }
});
