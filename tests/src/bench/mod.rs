//! `cargo xtask bench` (scripts/bench.sh → the `bench` binary): the agent against baselines
//! that bound what is possible, measured side by side in one run.

pub mod report;
pub mod servers;
pub mod wrk;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metadataproxy::testing::{clean_command, TEST_SDK};

/// A port free when asked (bound to 0.0.0.0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Whether `GET /readyz` on `addr` answers 200.
pub fn ready(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

/// The release agent, run with the default configuration plus `vars`, its log lines written to
/// a file (as a deployment writes them to `docker logs`), not kept in memory. Started in the
/// tests' clean environment, like [`crate::Agent`], but not through it: a load writes hundreds
/// of MB of request lines, which the tests' agent keeps, and start-up is timed to the first
/// `/readyz` 200 rather than to the ready line.
#[derive(Debug)]
pub struct BenchAgent {
    child: Child,
    /// Its log file: removed once it has stopped (a load writes hundreds of MB of request
    /// lines).
    log: PathBuf,
    /// The proxy port (all addresses).
    pub port: u16,
    /// The admin listener, `127.0.0.1:port`.
    pub admin: String,
    /// From spawn to the first `/readyz` 200.
    pub start_to_ready: Duration,
}

impl BenchAgent {
    /// Starts `binary` and waits until `/readyz` answers 200 (30 s at most).
    pub fn start(binary: &Path, log: &Path, aws_url: &str, vars: &[(&str, String)]) -> BenchAgent {
        let port = free_port();
        let admin = format!("127.0.0.1:{}", free_port());
        let log_file = std::fs::File::create(log).expect("agent log file");
        let port_text = port.to_string();
        let settings = [
            ("PORT", port_text.as_str()),
            ("ADMIN_ADDR", &admin),
            ("CONTAINER_CREDENTIALS_PORT", "0"),
            ("AWS_ENDPOINT_URL", aws_url),
            ("TOKEN_KEY_FILE", "none"),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut cmd = clean_command(&[binary], &[TEST_SDK, &settings, &vars].concat());
        cmd.stdout(Stdio::from(log_file)).stderr(Stdio::inherit());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn the agent");
        loop {
            if ready(&admin) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the agent exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if started.elapsed() >= Duration::from_secs(30) {
                // Not left running (and attached, in eBPF mode) behind the panic.
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent was not ready within 30 s: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let start_to_ready = started.elapsed();
        BenchAgent {
            child,
            log: log.to_path_buf(),
            port,
            admin,
            start_to_ready,
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, and wait for the exit (the log file goes with it).
    pub fn stop(self) {}
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.terminate();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl BenchAgent {
    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The release agent next to this binary (`target/release/metadataproxy`), or
/// `MP_BENCH_AGENT`.
pub fn agent_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MP_BENCH_AGENT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .map(|d| d.join("metadataproxy"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build --release -p metadataproxy` (scripts/bench.sh does)",
        bin.display()
    );
    bin
}
