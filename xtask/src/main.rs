//! Developer tasks: `cargo xtask <task>`.

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test    run the whole test suite (scripts/test.sh; needs root on Debian 12)";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("test") => {
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
            match Command::new("bash")
                .arg("scripts/test.sh")
                .current_dir(root)
                .status()
            {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("xtask: cannot run scripts/test.sh: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("xtask: unknown task {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
