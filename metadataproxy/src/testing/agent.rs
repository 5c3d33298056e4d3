//! How tests start the agent binary: with a clean environment.

use std::ffi::OsStr;
use std::process::Command;

/// What keeps the agent's AWS SDK on the test's settings: static test keys, one region, no
/// metadata service, and none of the shared config and credentials files of whoever runs the
/// tests. A test that points the SDK at moto adds `AWS_ENDPOINT_URL`.
pub const TEST_SDK: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

/// `argv` (the agent binary, or a wrapper whose arguments name it: `setpriv ... AGENT`) with
/// nothing of the caller's environment but `vars`, set in order (a later value wins): every
/// test starts the agent through this.
pub fn clean_command<S: AsRef<OsStr>>(argv: &[S], vars: &[(&str, &str)]) -> Command {
    let (program, args) = argv.split_first().expect("a program");
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}
