//! dockerd restarted under a running agent (the daemon runs with `--live-restore`, so its
//! containers keep running): requests keep being answered from the container index while the
//! daemon is down, and the index resyncs when it is back, without restarting the agent.
//!
//! Runs on its own, after every other test: the test command calls it explicitly.

use std::process::Command;
use std::time::Duration;

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{eventually, run, Classic, Container};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// The running dockerd: its pid and command line.
fn dockerd() -> (u32, Vec<String>) {
    let pid: u32 = std::fs::read_to_string("/var/run/docker.pid")
        .expect("/var/run/docker.pid")
        .trim()
        .parse()
        .expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("dockerd cmdline");
    let args = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (pid, args)
}

fn ping() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts dockerd with `args` again; restores the test command's record of its pid.
fn start_dockerd(args: &[String]) {
    let log = std::env::var("MP_RUN_DIR")
        .map(|d| format!("{d}/dockerd-restarted.log"))
        .unwrap_or_else(|_| "/tmp/mp-test-dockerd-restarted.log".into());
    let log = std::fs::File::create(&log).expect("dockerd log");
    Command::new("setsid")
        .args(args)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start dockerd");
    eventually(Duration::from_secs(30), || ping().then_some(())).expect("dockerd back within 30 s");
    let (pid, _) = dockerd();
    if let Ok(dir) = std::env::var("MP_RUN_DIR") {
        let record = format!("{dir}/state/dockerd.pid");
        if std::path::Path::new(&record).exists() {
            std::fs::write(record, format!("{pid}\n")).expect("record the new pid");
        }
    }
}

/// Brings dockerd back if the test fails while it is down.
struct Restore(Vec<String>);

impl Drop for Restore {
    fn drop(&mut self) {
        if !ping() {
            start_dockerd(&self.0);
        }
    }
}

#[test]
fn requests_are_answered_while_dockerd_is_down_and_the_index_resyncs_after() {
    let s = Classic::start("restart", 41, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let (env, net, agent) = (&s.env, &s.net, &s.agent);
    let kept = Container::start(
        &env,
        "restart-kept",
        Some(&net.name),
        &[("IAM_ROLE", "kept-role")],
    );
    assert_eq!(
        kept.wget(&format!("{MD}/iam/security-credentials/kept-role"))
            .status,
        200
    );
    let readyz = || {
        let (status, body) = http_get(&agent.admin_addr(), "/readyz");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("readyz JSON ({e}): {body}"));
        (status, v)
    };
    let (status, ready) = readyz();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["docker"]["ok"], true);

    // A workload that keeps asking, started while dockerd is up (`docker exec` needs it).
    let url = format!("{MD}/iam/security-credentials/kept-role");
    let out = kept.exec(&[
        "sh",
        "-c",
        &format!(
            "(while :; do timeout 5 wget -q -O /dev/null {url}; sleep 0.2; done) >/dev/null 2>&1 &"
        ),
    ]);
    assert!(out.status.success());

    let (pid, args) = dockerd();
    assert!(
        args.iter().any(|a| a == "--live-restore"),
        "dockerd must run with --live-restore: {args:?}"
    );
    let restore = Restore(args.clone());
    run("kill", &["-TERM", &pid.to_string()]);
    eventually(Duration::from_secs(30), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists() && !ping()).then_some(())
    })
    .expect("dockerd stopped");
    let broke = eventually(Duration::from_secs(30), || {
        agent.logs().iter().position(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("event stream"))
        })
    })
    .unwrap_or_else(|| panic!("the agent noticed the stream break: {}", agent.raw_logs()));

    // dockerd is down; the container kept running and is answered from the index.
    let answered_while_down = || {
        agent.logs()[broke..]
            .iter()
            .filter(|l| {
                l["message"] == "request"
                    && l["container_name"] == "mp-test-restart-kept"
                    && l["response_code"] == 200
            })
            .count()
    };
    eventually(Duration::from_secs(20), || {
        (answered_while_down() >= 5).then_some(())
    })
    .unwrap_or_else(|| panic!("answered while dockerd is down: {}", agent.raw_logs()));
    let (status, ready) = readyz();
    assert_eq!(status, 503, "unready while dockerd is down: {ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["docker"]["ok"], false);
    assert_eq!(
        ready["checks"]["aws_credentials"]["ok"], true,
        "only Docker is at fault"
    );
    assert!(!ping(), "dockerd stayed down meanwhile");

    start_dockerd(&args);
    drop(restore);
    let synced = || {
        agent
            .logs()
            .iter()
            .filter(|l| l["message"] == "container index synced")
            .count()
    };
    eventually(Duration::from_secs(30), || (synced() >= 2).then_some(()))
        .unwrap_or_else(|| panic!("the index resynced: {}", agent.raw_logs()));
    let (status, ready) = readyz();
    assert_eq!(status, 200, "ready again once dockerd is back: {ready}");

    // Containers started after the restart are found through the new event stream.
    let fresh = Container::start(
        &env,
        "restart-fresh",
        Some(&net.name),
        &[("IAM_ROLE", "fresh-role")],
    );
    assert_eq!(
        fresh.wget(&format!("{MD}/iam/security-credentials/")).body,
        "fresh-role"
    );
    assert_eq!(
        kept.wget(&format!("{MD}/iam/security-credentials/")).body,
        "kept-role"
    );
}
