//! Documented walkthroughs, run as written. Each command is taken from its document (a test
//! fails if the document no longer has it) and run with these substitutions only: the agent
//! binary of this build for the part that names it (`cargo run ... --`,
//! `sudo target/release/metadataproxy`), docker0's address for `"$BRIDGE_IP"` where the agent
//! listens, a free port for `8000` (the documented port may be taken on a test machine), and
//! the test image for `busybox` (no registry here).

use std::process::{Command, Output};

use crate::{Agent, TestEnv};

/// A document whose commands the tests run.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    path: &'static str,
    text: &'static str,
}

/// The README: the offline walkthrough.
pub const README: Doc = Doc {
    path: "README.md",
    text: include_str!("../../README.md"),
};

/// docs/deployment.md: the walkthrough with an AWS profile.
pub const DEPLOYMENT: Doc = Doc {
    path: "docs/deployment.md",
    text: include_str!("../../docs/deployment.md"),
};

impl Doc {
    /// `line`, which the document must contain as written.
    pub fn shown<'a>(&self, line: &'a str) -> &'a str {
        assert!(
            self.text.contains(line),
            "{} no longer shows this step: {line}",
            self.path
        );
        line
    }

    /// Starts the agent from the document's command `line`, whose first part `prefix` names
    /// the binary, with the shell environment `env` ([`Agent::launch`]).
    pub fn start_agent(
        &self,
        line: &str,
        prefix: &str,
        bridge_ip: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let flags = self
            .shown(line)
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} starts with {prefix:?}"))
            .replace("\"$BRIDGE_IP\"", bridge_ip)
            .replace("--port 8000", "--port 0");
        let args: Vec<&str> = flags.split_whitespace().collect();
        Agent::launch(&args, env)
    }

    /// Runs the document's container command `line` in `sh`, as a user would, with
    /// `BRIDGE_IP` set.
    pub fn run_step(&self, env: &TestEnv, agent: &Agent, bridge_ip: &str, line: &str) -> Output {
        let line = self
            .shown(line)
            .replace(":8000/", &format!(":{}/", agent.port))
            .replace(" busybox ", &format!(" {} ", env.image));
        Command::new("timeout")
            .args(["60", "sh", "-c", &line])
            .env("BRIDGE_IP", bridge_ip)
            .output()
            .expect("sh")
    }
}
