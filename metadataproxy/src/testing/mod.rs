//! Test doubles shared by this crate's unit tests, its in-process integration tests
//! (`metadataproxy/tests`) and the end-to-end crate (`tests/`): one of each, so that a change to
//! a seam is made once.
//!
//! Built for `cfg(test)` and with the `test-util` feature (which the test crates turn on); the
//! agent's own build leaves it out.

mod agent;
mod paths;
mod sts;

pub use agent::{clean_command, TEST_SDK};
pub use paths::{DISGUISES, IAM_PATHS};
pub use sts::{FakeIam, FakeSts, SECRET_MARK, TOKEN_MARK};

/// An in-memory writer shared between its clones: where a test sends log lines to read them.
#[derive(Debug, Clone, Default)]
pub struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuf {
    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("buffer lock")).into_owned()
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Credentials with fixed values (`ASIAEXAMPLE`, secret `secret`, token `token`, from
/// 2026-05-01T12:00:00Z to 13:00:00Z), for tests of the bodies they are served in.
pub fn example_credentials() -> crate::roles::Credentials {
    use std::time::{Duration, UNIX_EPOCH};
    crate::roles::Credentials {
        access_key_id: "ASIAEXAMPLE".into(),
        secret_access_key: crate::roles::Secret::new("secret"),
        session_token: crate::roles::Secret::new("token"),
        expiration: UNIX_EPOCH + Duration::from_secs(1_777_640_400),
        obtained_at: UNIX_EPOCH + Duration::from_secs(1_777_636_800),
        assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/r/s".into(),
        assumed_role_id: "AROAEXAMPLE:s".into(),
        rendered: crate::roles::Rendered::default(),
    }
}

/// The keys of the credentials JSON, in the contract's order.
pub const CREDENTIAL_KEYS: [&str; 7] = [
    "AccessKeyId",
    "Code",
    "Expiration",
    "LastUpdated",
    "SecretAccessKey",
    "Token",
    "Type",
];
