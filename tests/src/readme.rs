//! The README's walkthroughs, run as written. Each command is taken from the README (a test
//! fails if the README no longer has it) and run with these substitutions only: the agent
//! binary of this build for the part that names it (`cargo run ... --`,
//! `sudo target/release/metadataproxy`), docker0's address for `"$BRIDGE_IP"` where the agent
//! listens, a free port for `8000` (the README's port may be taken on a test machine), and
//! the test image for `busybox` (no registry here).

use std::process::{Command, Output};

use crate::{Agent, TestEnv};

const README: &str = include_str!("../../README.md");

/// `line`, which the README must contain as written.
pub fn shown(line: &str) -> &str {
    assert!(
        README.contains(line),
        "the README no longer shows this step: {line}"
    );
    line
}

/// Starts the agent from the README's command `line`, whose first part `prefix` names the
/// binary, with the shell environment `env` ([`Agent::launch`]).
pub fn start_agent(line: &str, prefix: &str, bridge_ip: &str, env: &[(&str, &str)]) -> Agent {
    let flags = shown(line)
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{line:?} starts with {prefix:?}"))
        .replace("\"$BRIDGE_IP\"", bridge_ip)
        .replace("--port 8000", "--port 0");
    let args: Vec<&str> = flags.split_whitespace().collect();
    Agent::launch(&args, env)
}

/// Runs the README's container command `line` in `sh`, as a user would, with `BRIDGE_IP` set.
pub fn run_step(env: &TestEnv, agent: &Agent, bridge_ip: &str, line: &str) -> Output {
    let line = shown(line)
        .replace(":8000/", &format!(":{}/", agent.port))
        .replace(" busybox ", &format!(" {} ", env.image));
    Command::new("timeout")
        .args(["60", "sh", "-c", &line])
        .env("BRIDGE_IP", bridge_ip)
        .output()
        .expect("sh")
}
