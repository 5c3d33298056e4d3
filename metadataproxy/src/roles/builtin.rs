//! The built-in STS (`STS=builtin`): fake session credentials issued in the process, for
//! machines without an AWS account (a laptop, a demo, a CI job).
//!
//! It sits behind the same [`AssumeRole`] and [`GetRole`] seams as the SDK clients, so the
//! credential cache, refresh-ahead, the role policy, audit and metrics treat its answers exactly
//! as STS's. It holds no client and opens no socket: nothing it does leaves the process.
//!
//! What it issues is well-formed and plainly fake:
//!
//! - `AccessKeyId`: `ASIALOCAL` and 11 random characters of `A-Z0-9` (20 in all, like STS's);
//! - `SecretAccessKey`: `localfake` and 31 random letters and digits (40 in all);
//! - `Token`: `FAKE/metadataproxy-builtin-sts/` and 96 random letters and digits;
//! - `Expiration`: now (whole seconds) plus the requested `DurationSeconds`;
//! - `AssumedRoleUser`: `arn:<partition>:sts::<account>:assumed-role/<name>/<session>` and
//!   `AROALOCAL<12 characters derived from the role ARN>:<session>`, as STS names them.
//!
//! No AWS service accepts these credentials.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use rand::Rng;

use super::arn::{AccountId, Partition, RoleArn};
use super::sts::{AssumeRole, AssumeRoleRequest, AwsError, Credentials, GetRole, Secret};
use crate::clock::Clock;

/// The prefix of every access key id the built-in STS issues.
pub const FAKE_ACCESS_KEY_PREFIX: &str = "ASIALOCAL";
/// The prefix of every secret access key it issues.
pub const FAKE_SECRET_PREFIX: &str = "localfake";
/// The prefix of every session token it issues.
pub const FAKE_TOKEN_PREFIX: &str = "FAKE/metadataproxy-builtin-sts/";
/// The prefix of the role ids it reports (`AROA` is the prefix of IAM role ids).
pub const FAKE_ROLE_ID_PREFIX: &str = "AROALOCAL";

/// STS's `DurationSeconds` bounds.
const MIN_DURATION: Duration = Duration::from_secs(900);
const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);

/// An STS and IAM of its own: [`AssumeRole`] issues fake credentials, [`GetRole`] names bare
/// roles in a fixed account.
#[derive(Debug, Clone)]
pub struct BuiltinSts {
    partition: Partition,
    account: AccountId,
    clock: Arc<dyn Clock>,
}

impl BuiltinSts {
    /// A built-in STS whose `GetRole` puts bare role names in `account` (`BUILTIN_ACCOUNT_ID`)
    /// and `partition`; credentials expire by `clock`.
    pub fn new(partition: Partition, account: AccountId, clock: Arc<dyn Clock>) -> Self {
        BuiltinSts {
            partition,
            account,
            clock,
        }
    }
}

fn validation(message: String) -> AwsError {
    AwsError::permanent("ValidationError", message)
}

/// `len` random characters of `charset`.
fn random_chars(charset: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(charset[rng.random_range(0..charset.len())]))
        .collect()
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A role id that stays the same for a role ARN (IAM's ids are stable per role): FNV-1a of
/// the ARN, written in `A-Z0-9`.
fn role_id(arn: &RoleArn) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in arn.as_str().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut id = String::from(FAKE_ROLE_ID_PREFIX);
    for _ in 0..12 {
        id.push(char::from(UPPER_DIGITS[(hash % 36) as usize]));
        hash /= 36;
    }
    id
}

impl AssumeRole for BuiltinSts {
    fn assume_role<'a>(
        &'a self,
        req: &'a AssumeRoleRequest,
    ) -> BoxFuture<'a, Result<Credentials, AwsError>> {
        Box::pin(async move {
            // What STS itself refuses, refused alike (the configuration already keeps the
            // agent's own requests within these bounds).
            if !(MIN_DURATION..=MAX_DURATION).contains(&req.duration)
                || req.duration.subsec_nanos() != 0
            {
                return Err(validation(format!(
                    "DurationSeconds must be whole seconds from 900 to 43200, got {:?}",
                    req.duration
                )));
            }
            if !(2..=64).contains(&req.session_name.len()) {
                return Err(validation(
                    "RoleSessionName must be 2 to 64 characters".into(),
                ));
            }
            // STS answers in whole seconds.
            let since_epoch = self
                .clock
                .now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let obtained_at = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
            let name = req.role_arn.name();
            let session = &req.session_name;
            Ok(Credentials {
                access_key_id: format!(
                    "{FAKE_ACCESS_KEY_PREFIX}{}",
                    random_chars(UPPER_DIGITS, 20 - FAKE_ACCESS_KEY_PREFIX.len())
                ),
                secret_access_key: Secret::new(format!(
                    "{FAKE_SECRET_PREFIX}{}",
                    random_chars(ALNUM, 40 - FAKE_SECRET_PREFIX.len())
                )),
                session_token: Secret::new(format!(
                    "{FAKE_TOKEN_PREFIX}{}",
                    random_chars(ALNUM, 96)
                )),
                expiration: obtained_at + req.duration,
                obtained_at,
                assumed_role_arn: format!(
                    "arn:{}:sts::{}:assumed-role/{name}/{session}",
                    req.role_arn.partition(),
                    req.role_arn.account()
                ),
                assumed_role_id: format!("{}:{session}", role_id(&req.role_arn)),
                rendered: Default::default(),
            })
        })
    }
}

impl GetRole for BuiltinSts {
    fn role_arn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RoleArn, AwsError>> {
        Box::pin(async move { Ok(RoleArn::build(&self.partition, &self.account, name)) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::clock::ManualClock;
    use crate::roles::{CacheSettings, CredentialCache, RoleResolver, RoleSpec};

    const START: u64 = 1_800_000_000;

    fn sts() -> (Arc<ManualClock>, BuiltinSts) {
        // Half a second past a whole second: the answer is in whole seconds all the same.
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_millis(START * 1000 + 500),
        ));
        let sts = BuiltinSts::new(
            Partition::for_region("us-east-1"),
            AccountId::parse("123456789012").unwrap(),
            clock.clone(),
        );
        (clock, sts)
    }

    fn request(arn: &str, session: &str, duration: u64) -> AssumeRoleRequest {
        AssumeRoleRequest {
            role_arn: RoleArn::parse(arn).unwrap(),
            external_id: None,
            session_name: session.into(),
            duration: Duration::from_secs(duration),
            policy: None,
            tags: Vec::new(),
        }
    }

    fn is_upper_alnum(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    }

    #[tokio::test]
    async fn credentials_are_well_formed_fake_and_last_the_requested_duration() {
        let (_, sts) = sts();
        let req = request(
            "arn:aws:iam::210987654321:role/team/app",
            "go-metadataproxy",
            7200,
        );
        let c = sts.assume_role(&req).await.unwrap();
        assert_eq!(c.access_key_id.len(), 20, "{}", c.access_key_id);
        assert!(c.access_key_id.starts_with("ASIALOCAL"));
        assert!(is_upper_alnum(&c.access_key_id), "{}", c.access_key_id);
        let secret = c.secret_access_key.expose();
        assert_eq!(secret.len(), 40);
        assert!(secret.starts_with("localfake"));
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        let token = c.session_token.expose();
        assert!(token.starts_with("FAKE/metadataproxy-builtin-sts/"));
        assert_eq!(token.len(), FAKE_TOKEN_PREFIX.len() + 96);
        assert_eq!(c.obtained_at, UNIX_EPOCH + Duration::from_secs(START));
        assert_eq!(c.expiration, UNIX_EPOCH + Duration::from_secs(START + 7200));
        // As STS names the session: the role's own account, its name without the path.
        assert_eq!(
            c.assumed_role_arn,
            "arn:aws:sts::210987654321:assumed-role/app/go-metadataproxy"
        );
        let (id, session) = c.assumed_role_id.split_once(':').unwrap();
        assert_eq!(session, "go-metadataproxy");
        assert!(id.starts_with("AROALOCAL") && id.len() == 21, "{id}");
        assert!(is_upper_alnum(id), "{id}");
    }

    #[tokio::test]
    async fn every_issue_is_new_and_role_ids_are_stable_per_role() {
        let (_, sts) = sts();
        let a = request("arn:aws:iam::123456789012:role/a", "s1", 3600);
        let b = request("arn:aws:iam::123456789012:role/b", "s1", 3600);
        let mut keys = HashSet::new();
        let mut secrets = HashSet::new();
        let mut ids = HashSet::new();
        for _ in 0..50 {
            let c = sts.assume_role(&a).await.unwrap();
            keys.insert(c.access_key_id.clone());
            secrets.insert(c.secret_access_key.expose().to_string());
            ids.insert(c.assumed_role_id.clone());
        }
        assert_eq!(keys.len(), 50, "access keys repeat");
        assert_eq!(secrets.len(), 50, "secrets repeat");
        assert_eq!(ids.len(), 1, "one role, one role id");
        let other = sts.assume_role(&b).await.unwrap();
        assert!(!ids.contains(&other.assumed_role_id));
    }

    #[tokio::test]
    async fn partitions_come_from_the_role_arn() {
        let (_, sts) = sts();
        let c = sts
            .assume_role(&request("arn:aws-cn:iam::123456789012:role/r", "sess", 900))
            .await
            .unwrap();
        assert_eq!(
            c.assumed_role_arn,
            "arn:aws-cn:sts::123456789012:assumed-role/r/sess"
        );
    }

    #[tokio::test]
    async fn what_sts_refuses_is_refused() {
        let (_, sts) = sts();
        for (session, duration) in [("s1", 899), ("s1", 43201), ("x", 3600)] {
            let e = sts
                .assume_role(&request(
                    "arn:aws:iam::123456789012:role/r",
                    session,
                    duration,
                ))
                .await
                .unwrap_err();
            assert_eq!(e.code, "ValidationError", "{session} {duration}");
            assert!(!e.is_retryable());
        }
    }

    #[tokio::test]
    async fn bare_names_resolve_in_the_builtin_account_through_get_role() {
        let (_, sts) = sts();
        let sts = Arc::new(sts);
        let resolver = RoleResolver::new(Partition::for_region("us-east-1"), None, sts.clone());
        let cases = [
            ("demo", "arn:aws:iam::123456789012:role/demo"),
            ("app@210987654321", "arn:aws:iam::210987654321:role/app"),
            (
                "team/app@210987654321",
                "arn:aws:iam::210987654321:role/team/app",
            ),
            (
                "arn:aws:iam::111122223333:role/p/q",
                "arn:aws:iam::111122223333:role/p/q",
            ),
        ];
        for (spec, arn) in cases {
            let got = resolver.resolve(&RoleSpec::parse(spec).unwrap()).await;
            assert_eq!(got.unwrap().as_str(), arn, "{spec}");
        }
    }

    #[tokio::test]
    async fn the_cache_refreshes_builtin_credentials_as_it_does_sts_ones() {
        let (clock, sts) = sts();
        let cache = CredentialCache::new(
            Arc::new(sts),
            clock.clone(),
            CacheSettings {
                offset: Duration::from_secs(900),
                ..CacheSettings::default()
            },
        );
        let req = request("arn:aws:iam::123456789012:role/r", "go-metadataproxy", 3600);
        let first = cache.get(&req).await.unwrap();
        // Cached until ROLE_CACHE_OFFSET before expiry...
        clock.advance(Duration::from_secs(3600 - 900 - 2));
        assert_eq!(
            cache.get(&req).await.unwrap().access_key_id,
            first.access_key_id
        );
        // ... then renewed, with a new expiry.
        clock.advance(Duration::from_secs(2));
        let second = cache.get(&req).await.unwrap();
        assert_ne!(second.access_key_id, first.access_key_id);
        assert!(second.expiration > first.expiration);
        // Refresh-ahead renews before a request would have to wait.
        clock.advance(Duration::from_secs(3600 - 900 - 200));
        assert!(cache.refresh_ahead(&req, Duration::from_secs(300)).await);
        assert_eq!(
            cache
                .stats
                .sts_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            3
        );
    }

    #[tokio::test]
    async fn secrets_never_show_in_debug_output() {
        let (_, sts) = sts();
        let c = sts
            .assume_role(&request("arn:aws:iam::123456789012:role/r", "s1", 3600))
            .await
            .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains(c.secret_access_key.expose()), "{printed}");
        assert!(!printed.contains(c.session_token.expose()), "{printed}");
        assert!(printed.contains(&c.access_key_id));
    }
}
