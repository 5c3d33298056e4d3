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
