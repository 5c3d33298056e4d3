//! What the real SDK clients' tests share (`tests/sdk-clients/`, see its README): where the
//! clients are, the variables the test command exports for them, and the Go clients' build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The only `PATH` a client gets.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Gives a client's command nothing of the test's environment (no keys, no region, no proxy,
/// no config files), only `PATH`, `HOME` and `MP_STS_ENDPOINT` (moto, as the client reaches it).
pub fn clean_client_env(cmd: &mut Command, home: &Path, sts_url: &str) {
    cmd.env_clear()
        .env("PATH", PATH)
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("MP_STS_ENDPOINT", sts_url);
}

/// `tests/sdk-clients`.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk-clients")
}

/// A variable that the test command exports after `mp_install_sdk_clients`.
pub fn provided(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: {what} comes from mp_install_sdk_clients and \
             mp_export_test_env (scripts/test-env.sh); run `bash scripts/test.sh` (as root)"
        )
    })
}

/// The Go client `name` (`tests/sdk-clients/{name}`), built once per run of this binary
/// against Debian's packages, in GOPATH mode (no module proxy is reachable here), under `tmp`
/// (the test's `CARGO_TARGET_TMPDIR`).
pub fn go_client(name: &'static str, tmp: &Path) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(&'static str, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| *n == name) {
        return path.clone();
    }
    let gopath = provided("MP_TEST_SDK_GOPATH", "the GOPATH with Debian's Go SDKs");
    let out = tmp.join("sdk-clients").join(name);
    let started = Instant::now();
    let result = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(format!("./{name}"))
        .current_dir(clients_dir())
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", tmp)
        .env("GOPATH", &gopath)
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", tmp.join("go-cache"))
        .env("CGO_ENABLED", "0")
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => panic!(
            "go: {e}: run mp_install_sdk_clients (scripts/test-env.sh), which installs \
             golang-go and Debian's Go SDKs"
        ),
    };
    assert!(
        output.status.success(),
        "go build {name} against {gopath} (GO111MODULE=off) failed; are \
         golang-github-aws-aws-sdk-go-dev and golang-github-aws-aws-sdk-go-v2-dev installed \
         (mp_install_sdk_clients)?\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("built {name} in {:.1?}", started.elapsed());
    built.push((name, out.clone()));
    out
}
