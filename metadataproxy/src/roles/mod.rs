//! Roles: from a container's `IAM_ROLE` to an ARN, and from an ARN to cached STS credentials.

mod arn;
mod sts;

use std::sync::Arc;
use std::time::Duration;

pub use arn::{AccountId, Partition, RoleArn, RoleParseError, RoleSpec};
pub use sts::{
    AssumeRole, AssumeRoleRequest, AwsError, Credentials, GetRole, SdkIam, SdkSts, Secret,
};

use crate::clock::Clock;

/// Turns a [`RoleSpec`] into a [`RoleArn`]; bare names without a default account are looked
/// up once with `iam:GetRole` and remembered.
#[derive(Debug)]
pub struct RoleResolver {
    partition: Partition,
    default_account: Option<AccountId>,
    iam: Arc<dyn GetRole>,
    looked_up: moka::future::Cache<String, RoleArn>,
}

impl RoleResolver {
    /// A resolver for roles in `partition`.
    pub fn new(
        partition: Partition,
        default_account: Option<AccountId>,
        iam: Arc<dyn GetRole>,
    ) -> Self {
        RoleResolver {
            partition,
            default_account,
            iam,
            // Role ARNs change only when a role is deleted and recreated under another path;
            // an hour bounds how long such a change goes unnoticed.
            looked_up: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The ARN of `spec`.
    pub async fn resolve(&self, spec: &RoleSpec) -> Result<RoleArn, Arc<AwsError>> {
        match spec {
            RoleSpec::Arn(arn) => Ok(arn.clone()),
            RoleSpec::InAccount {
                path_and_name,
                account,
            } => Ok(RoleArn::build(&self.partition, account, path_and_name)),
            RoleSpec::Bare(path_and_name) => match &self.default_account {
                Some(account) => Ok(RoleArn::build(&self.partition, account, path_and_name)),
                None => {
                    let name = spec.name().to_string();
                    self.looked_up
                        .try_get_with_by_ref(&name, self.iam.role_arn(&name))
                        .await
                }
            },
        }
    }
}

/// STS credentials per [`AssumeRoleRequest`], refreshed `offset` before they expire.
///
/// moka stores the entries; whether an entry is fresh is decided here against the [`Clock`],
/// so tests can move time. Concurrent requests for one key make one STS call: the fast path
/// reads without locking, and misses or stale entries go through moka's per-key compute,
/// which re-checks freshness under the key's lock.
#[derive(Debug)]
pub struct CredentialCache {
    sts: Arc<dyn AssumeRole>,
    clock: Arc<dyn Clock>,
    offset: Duration,
    entries: moka::future::Cache<AssumeRoleRequest, Arc<Credentials>>,
}

impl CredentialCache {
    /// A cache over `sts` that refreshes `offset` before expiry.
    pub fn new(sts: Arc<dyn AssumeRole>, clock: Arc<dyn Clock>, offset: Duration) -> Self {
        CredentialCache {
            sts,
            clock,
            offset,
            entries: moka::future::Cache::builder()
                .max_capacity(100_000)
                // Entries are useless after the longest session STS grants; drop them then.
                .time_to_live(Duration::from_secs(12 * 3600))
                .build(),
        }
    }

    fn is_fresh(&self, c: &Credentials) -> bool {
        self.clock.now() + self.offset < c.expiration
    }

    /// Credentials for `req`, from the cache when fresh, else from STS.
    pub async fn get(&self, req: &AssumeRoleRequest) -> Result<Arc<Credentials>, AwsError> {
        if let Some(c) = self.entries.get(req).await {
            if self.is_fresh(&c) {
                return Ok(c);
            }
        }
        use moka::ops::compute::{CompResult, Op};
        let result = self
            .entries
            .entry_by_ref(req)
            .and_try_compute_with(|existing| async move {
                if let Some(entry) = existing {
                    if self.is_fresh(entry.value()) {
                        return Ok(Op::Nop);
                    }
                }
                let fresh = self.sts.assume_role(req).await?;
                Ok::<_, AwsError>(Op::Put(Arc::new(fresh)))
            })
            .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(AwsError {
                code: "Internal".into(),
                message: "credential cache entry vanished".into(),
            }),
        }
    }

    /// How many entries the cache holds (approximate, for tests and telemetry).
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::UNIX_EPOCH;

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::clock::ManualClock;

    /// Counts calls; hands out credentials valid for one hour from the shared clock.
    #[derive(Debug)]
    struct CountingSts {
        calls: AtomicUsize,
        clock: Arc<ManualClock>,
        seen: Mutex<Vec<AssumeRoleRequest>>,
        fail: bool,
    }

    impl AssumeRole for CountingSts {
        fn assume_role<'a>(
            &'a self,
            req: &'a AssumeRoleRequest,
        ) -> BoxFuture<'a, Result<Credentials, AwsError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                self.seen.lock().unwrap().push(req.clone());
                // Let concurrent callers pile up behind this call.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.fail {
                    return Err(AwsError {
                        code: "AccessDenied".into(),
                        message: "no".into(),
                    });
                }
                let now = Clock::now(&*self.clock);
                Ok(Credentials {
                    access_key_id: format!("ASIA{n}"),
                    secret_access_key: Secret::new("s"),
                    session_token: Secret::new("t"),
                    expiration: now + Duration::from_secs(3600),
                    obtained_at: now,
                    assumed_role_arn: "arn".into(),
                    assumed_role_id: "id".into(),
                })
            })
        }
    }

    fn setup(fail: bool) -> (Arc<CountingSts>, Arc<ManualClock>, CredentialCache) {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let sts = Arc::new(CountingSts {
            calls: AtomicUsize::new(0),
            clock: clock.clone(),
            seen: Mutex::new(Vec::new()),
            fail,
        });
        let cache = CredentialCache::new(sts.clone(), clock.clone(), Duration::from_secs(900));
        (sts, clock, cache)
    }

    fn request(external_id: Option<&str>) -> AssumeRoleRequest {
        AssumeRoleRequest {
            role_arn: RoleArn::parse("arn:aws:iam::123456789012:role/r").unwrap(),
            external_id: external_id.map(str::to_string),
            session_name: "go-metadataproxy".into(),
            duration: Duration::from_secs(3600),
            policy: None,
        }
    }

    #[tokio::test]
    async fn hundred_concurrent_misses_make_one_call() {
        let (sts, _clock, cache) = setup(false);
        let cache = Arc::new(cache);
        let req = request(None);
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                let req = req.clone();
                tokio::spawn(async move { cache.get(&req).await.unwrap().access_key_id.clone() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "ASIA0");
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn external_ids_are_separate_entries() {
        let (sts, _clock, cache) = setup(false);
        let a = cache.get(&request(Some("a"))).await.unwrap();
        let b = cache.get(&request(Some("b"))).await.unwrap();
        let none = cache.get(&request(None)).await.unwrap();
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.access_key_id, none.access_key_id);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.entry_count().await, 3);
        let seen = sts.seen.lock().unwrap();
        assert_eq!(seen[0].external_id.as_deref(), Some("a"));
        assert_eq!(seen[1].external_id.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn refresh_happens_at_expiry_minus_offset() {
        let (sts, clock, cache) = setup(false);
        let req = request(None);
        let first = cache.get(&req).await.unwrap();
        // 45 minutes later the credentials have exactly 15 minutes left: one second before
        // that they are still served from the cache.
        clock.advance(Duration::from_secs(45 * 60 - 1));
        assert_eq!(
            cache.get(&req).await.unwrap().access_key_id,
            first.access_key_id
        );
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(1));
        let second = cache.get(&req).await.unwrap();
        assert_ne!(second.access_key_id, first.access_key_id);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(second.obtained_at, clock.now());
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let (sts, _clock, cache) = setup(true);
        let req = request(None);
        assert_eq!(cache.get(&req).await.unwrap_err().code, "AccessDenied");
        assert_eq!(cache.get(&req).await.unwrap_err().code, "AccessDenied");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    #[derive(Debug, Default)]
    struct CountingIam(AtomicUsize);

    impl GetRole for CountingIam {
        fn role_arn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RoleArn, AwsError>> {
            Box::pin(async move {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(RoleArn::parse(&format!("arn:aws:iam::210987654321:role/p/{name}")).unwrap())
            })
        }
    }

    #[tokio::test]
    async fn bare_names_use_default_account_else_one_get_role() {
        let iam = Arc::new(CountingIam::default());
        let with_account = RoleResolver::new(
            Partition::for_region("us-east-1"),
            AccountId::parse("123456789012"),
            iam.clone(),
        );
        let spec = RoleSpec::parse("my-role").unwrap();
        assert_eq!(
            with_account.resolve(&spec).await.unwrap().as_str(),
            "arn:aws:iam::123456789012:role/my-role"
        );
        assert_eq!(iam.0.load(Ordering::SeqCst), 0);

        let without = RoleResolver::new(Partition::for_region("us-east-1"), None, iam.clone());
        for _ in 0..3 {
            assert_eq!(
                without.resolve(&spec).await.unwrap().as_str(),
                "arn:aws:iam::210987654321:role/p/my-role"
            );
        }
        assert_eq!(iam.0.load(Ordering::SeqCst), 1);
    }
}
