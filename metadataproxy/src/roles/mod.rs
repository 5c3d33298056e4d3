//! Roles: from a container's `IAM_ROLE` to an ARN, and from an ARN to cached STS credentials.
//! [`Issuer`] is the one way credentials are issued (to a request, a prefetch or a renewal).

mod arn;
mod builtin;
mod issuer;
pub mod refresh;
mod session;
mod settings;
mod sts;

use std::sync::Arc;
use std::time::Duration;

pub use arn::{AccountId, Partition, RoleArn, RoleParseError, RoleSpec};
pub use builtin::{
    BuiltinSts, FAKE_ACCESS_KEY_PREFIX, FAKE_ROLE_ID_PREFIX, FAKE_SECRET_PREFIX, FAKE_TOKEN_PREFIX,
};
pub use issuer::{IssueError, Issued, Issuer, IssuerSettings};
pub use session::{session_tags, SessionTemplate, SessionTemplateError};
pub use settings::StsConfig;
pub use sts::{
    AssumeRole, AssumeRoleRequest, AwsError, Credentials, GetRole, Rendered, Retry, SdkIam, SdkSts,
    Secret,
};

use crate::clock::Clock;
use crate::metrics;

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

/// How the credential cache treats time and STS.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Refresh this long before expiry (`ROLE_CACHE_OFFSET`).
    pub offset: Duration,
    /// While STS fails, cached credentials are still served until this long before expiry.
    pub min_validity: Duration,
    /// After a failed AssumeRole, the same request is not retried for this long (negative
    /// cache): no tight loop against a failing or throttling STS.
    pub failure_backoff: Duration,
    /// At most this many AssumeRole calls per second; further calls queue (`STS_RATE_LIMIT`).
    /// Retries count: every HTTP attempt takes its turn.
    pub rate_limit: u32,
    /// Attempts per AssumeRole when STS throttles or fails on its side (5xx, network): when
    /// the SDK classifies the failure as retryable ([`Retry`]).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one, with full jitter.
    pub retry_base: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            offset: Duration::from_secs(900),
            min_validity: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(5),
            rate_limit: 100,
            max_attempts: 3,
            retry_base: Duration::from_millis(200),
        }
    }
}

/// Counters for tests and telemetry.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Answers from a fresh entry.
    pub hits: std::sync::atomic::AtomicU64,
    /// AssumeRole calls made.
    pub sts_calls: std::sync::atomic::AtomicU64,
    /// AssumeRole calls that failed.
    pub sts_errors: std::sync::atomic::AtomicU64,
    /// Stale entries served because STS failed.
    pub served_stale: std::sync::atomic::AtomicU64,
}

/// STS credentials per [`AssumeRoleRequest`], refreshed `offset` before they expire.
///
/// moka stores the entries; whether an entry is fresh is decided here against the [`Clock`],
/// so tests can move time. Concurrent requests for one key make one STS call: the fast path
/// reads without locking, and misses or stale entries go through moka's per-key compute,
/// which re-checks freshness under the key's lock.
///
/// When STS fails, an entry that is stale but still valid for `min_validity` keeps being
/// served, and the request is not retried for `failure_backoff`.
#[derive(Debug)]
pub struct CredentialCache {
    sts: Arc<dyn AssumeRole>,
    clock: Arc<dyn Clock>,
    settings: CacheSettings,
    entries: moka::future::Cache<AssumeRoleRequest, Arc<Credentials>>,
    failures: moka::future::Cache<AssumeRoleRequest, (AwsError, std::time::SystemTime)>,
    limiter: RateLimiter,
    /// Counters.
    pub stats: CacheStats,
}

impl CredentialCache {
    /// A cache over `sts`.
    pub fn new(sts: Arc<dyn AssumeRole>, clock: Arc<dyn Clock>, settings: CacheSettings) -> Self {
        CredentialCache {
            sts,
            clock,
            settings,
            entries: moka::future::Cache::builder()
                .max_capacity(100_000)
                // Entries are useless after the longest session STS grants; drop them then.
                .time_to_live(Duration::from_secs(12 * 3600))
                .build(),
            // Whether a failure is recent is decided against the clock; moka's TTL only cleans up.
            failures: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.failure_backoff + Duration::from_secs(60))
                .build(),
            limiter: RateLimiter::new(settings.rate_limit),
            stats: CacheStats::default(),
        }
    }

    fn is_fresh(&self, c: &Credentials) -> bool {
        self.fresh_for(c, self.settings.offset)
    }

    fn fresh_for(&self, c: &Credentials, margin: Duration) -> bool {
        self.clock.now() + margin < c.expiration
    }

    fn is_usable(&self, c: &Credentials) -> bool {
        self.clock.now() + self.settings.min_validity < c.expiration
    }

    /// Credentials for `req`, from the cache when fresh, else from STS.
    pub async fn get(&self, req: &AssumeRoleRequest) -> Result<Arc<Credentials>, AwsError> {
        if let Some(c) = self.entries.get(req).await {
            if self.is_fresh(&c) {
                self.stats
                    .hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::cache("hit");
                return Ok(c);
            }
        }
        self.fetch(req, self.settings.offset).await
    }

    /// Refresh-ahead: if the cached credentials for `req` expire within `offset + ahead`,
    /// fetches new ones now, so that requests never wait for STS. Returns whether it did.
    pub async fn refresh_ahead(&self, req: &AssumeRoleRequest, ahead: Duration) -> bool {
        let margin = self.settings.offset + ahead;
        match self.entries.get(req).await {
            Some(c) if !self.fresh_for(&c, margin) => {
                let before = c.obtained_at;
                self.fetch(req, margin)
                    .await
                    .is_ok_and(|now| now.obtained_at != before)
            }
            _ => false,
        }
    }

    /// Under the key's lock: keeps an entry fresh for `margin`, else calls STS.
    async fn fetch(
        &self,
        req: &AssumeRoleRequest,
        margin: Duration,
    ) -> Result<Arc<Credentials>, AwsError> {
        use moka::ops::compute::{CompResult, Op};
        use std::sync::atomic::Ordering::Relaxed;
        let result = self
            .entries
            .entry_by_ref(req)
            .and_try_compute_with(|existing| async move {
                let existing = existing.map(|e| e.into_value());
                if let Some(c) = &existing {
                    if self.fresh_for(c, margin) {
                        return Ok(Op::Nop);
                    }
                }
                let usable = existing.as_ref().is_some_and(|c| self.is_usable(c));
                let recent_failure = self
                    .failures
                    .get(req)
                    .await
                    .filter(|(_, at)| self.clock.now() < *at + self.settings.failure_backoff);
                if let Some((error, _)) = recent_failure {
                    // Failed a moment ago: no new call yet.
                    return if usable {
                        self.stats.served_stale.fetch_add(1, Relaxed);
                        metrics::cache("stale");
                        Ok(Op::Nop)
                    } else {
                        metrics::cache("backoff");
                        Err(error)
                    };
                }
                metrics::cache(if existing.is_some() {
                    "refresh"
                } else {
                    "miss"
                });
                let outcome = self.assume_role_with_retries(req).await;
                match outcome {
                    Ok(fresh) => Ok(Op::Put(Arc::new(fresh))),
                    Err(error) => {
                        self.stats.sts_errors.fetch_add(1, Relaxed);
                        tracing::warn!(
                            role_arn = %req.role_arn,
                            role_name = req.role_arn.name(),
                            aws_error_code = %error.code,
                            error = %error,
                            "AssumeRole failed"
                        );
                        self.failures
                            .insert(req.clone(), (error.clone(), self.clock.now()))
                            .await;
                        if usable {
                            self.stats.served_stale.fetch_add(1, Relaxed);
                            metrics::cache("stale");
                            tracing::warn!(
                                role_arn = %req.role_arn,
                                aws_error_code = %error.code,
                                error = %error,
                                "AssumeRole failed; serving the cached credentials while they last"
                            );
                            Ok(Op::Nop)
                        } else {
                            Err(error)
                        }
                    }
                }
            })
            .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(AwsError::permanent(
                "Internal",
                "credential cache entry vanished",
            )),
        }
    }

    /// AssumeRole, retried with exponential backoff and full jitter while the error is one
    /// that may pass ([`AwsError::retry`]: throttling, 5xx, network, as the SDK classified
    /// it); every attempt waits for the rate limiter.
    async fn assume_role_with_retries(
        &self,
        req: &AssumeRoleRequest,
    ) -> Result<Credentials, AwsError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut attempt = 0;
        loop {
            self.limiter.acquire().await;
            self.stats.sts_calls.fetch_add(1, Relaxed);
            let started = std::time::Instant::now();
            let outcome = self.sts.assume_role(req).await;
            metrics::assume_role(
                req.role_arn.name(),
                outcome.as_ref().err().map(|e| e.code.as_str()),
                started.elapsed(),
            );
            attempt += 1;
            match outcome {
                Err(e) if e.is_retryable() && attempt < self.settings.max_attempts => {
                    let cap = self.settings.retry_base * 2u32.saturating_pow(attempt - 1);
                    let delay = cap.mul_f64(rand::random::<f64>());
                    tracing::debug!(
                        role_name = req.role_arn.name(),
                        aws_error_code = %e.code,
                        retry = e.retry.as_str(),
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "AssumeRole failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// How many entries the cache holds (approximate, for tests and telemetry).
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }
}

/// A token bucket: `rate` calls per second, bursts of up to `rate`; callers over the rate wait
/// their turn (first come, first served).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    /// A limiter of `rate` per second (0: unlimited).
    pub fn new(rate: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            state: tokio::sync::Mutex::new((f64::from(rate), tokio::time::Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        if self.rate <= 0.0 {
            return;
        }
        // Holding the lock while waiting keeps the queue fair and the arithmetic simple.
        let mut state = self.state.lock().await;
        let now = tokio::time::Instant::now();
        let (tokens, last) = *state;
        let mut tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        let mut at = now;
        if tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - tokens) / self.rate);
            tokio::time::sleep(wait).await;
            at = tokio::time::Instant::now();
            tokens = 1.0;
        }
        *state = (tokens - 1.0, at);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::clock::ManualClock;
    use crate::testing::{FakeIam, FakeSts};

    /// STS on a stopped clock; each call takes 20 ms, so that concurrent callers pile up
    /// behind it.
    fn counting_sts() -> (Arc<FakeSts>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let sts = FakeSts::with_clock(clock.clone()).latency(Duration::from_millis(20));
        (Arc::new(sts), clock)
    }

    fn setup(fail: bool) -> (Arc<FakeSts>, Arc<ManualClock>, CredentialCache) {
        let (sts, clock) = counting_sts();
        if fail {
            sts.fail_with(Some("AccessDenied"));
        }
        let cache = CredentialCache::new(sts.clone(), clock.clone(), CacheSettings::default());
        (sts, clock, cache)
    }

    fn request(external_id: Option<&str>) -> AssumeRoleRequest {
        AssumeRoleRequest {
            role_arn: RoleArn::parse("arn:aws:iam::123456789012:role/r").unwrap(),
            external_id: external_id.map(str::to_string),
            session_name: "go-metadataproxy".into(),
            duration: Duration::from_secs(3600),
            policy: None,
            tags: Vec::new(),
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
            assert_eq!(t.await.unwrap(), "ASIAFAKE0");
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
        let seen = sts.requests.lock().unwrap();
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
    async fn a_failure_is_not_retried_until_the_backoff_has_passed() {
        let (sts, clock, cache) = setup(true);
        let req = request(None);
        assert_eq!(cache.get(&req).await.unwrap_err().code, "AccessDenied");
        assert_eq!(cache.get(&req).await.unwrap_err().code, "AccessDenied");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1, "negative cache");
        clock.advance(Duration::from_secs(5));
        assert_eq!(cache.get(&req).await.unwrap_err().code, "AccessDenied");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            cache.entry_count().await,
            0,
            "failures are not cached as credentials"
        );
    }

    #[tokio::test]
    async fn while_sts_fails_cached_credentials_last_until_expiry_minus_margin() {
        let (sts, clock, cache) = setup(false);
        let req = request(None);
        let first = cache.get(&req).await.unwrap();
        sts.fail_with(Some("AccessDenied"));
        // Past the refresh point: STS fails, the cached credentials are still served.
        clock.advance(Duration::from_secs(50 * 60));
        assert_eq!(
            cache.get(&req).await.unwrap().access_key_id,
            first.access_key_id
        );
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        // Within the backoff: no new call, still served.
        assert_eq!(
            cache.get(&req).await.unwrap().access_key_id,
            first.access_key_id
        );
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        // One second more than the margin (60 s) before expiry: still served.
        clock.advance(Duration::from_secs(10 * 60 - 61));
        assert_eq!(
            cache.get(&req).await.unwrap().access_key_id,
            first.access_key_id
        );
        // Inside the margin: refused.
        clock.advance(Duration::from_secs(2));
        assert_eq!(cache.get(&req).await.unwrap_err().code, "AccessDenied");
        assert_eq!(cache.stats.served_stale.load(Ordering::SeqCst), 3);
        // STS recovers: new credentials.
        sts.fail_with(None);
        clock.advance(Duration::from_secs(5));
        assert_ne!(
            cache.get(&req).await.unwrap().access_key_id,
            first.access_key_id
        );
    }

    #[tokio::test]
    async fn refresh_ahead_renews_before_the_offset_is_reached() {
        let (sts, clock, cache) = setup(false);
        let req = request(None);
        let first = cache.get(&req).await.unwrap();
        let ahead = Duration::from_secs(300);
        // 40 minutes left: more than offset (15) + ahead (5): nothing to do.
        clock.advance(Duration::from_secs(20 * 60));
        assert!(!cache.refresh_ahead(&req, ahead).await);
        // 19 minutes left: within offset + ahead, renewed in the background.
        clock.advance(Duration::from_secs(21 * 60));
        assert!(cache.refresh_ahead(&req, ahead).await);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        let served = cache.get(&req).await.unwrap();
        assert_ne!(served.access_key_id, first.access_key_id);
        assert_eq!(
            sts.calls.load(Ordering::SeqCst),
            2,
            "the request did not wait for STS"
        );
        // Nothing cached: refresh-ahead does not fetch (that is prefetch's job).
        assert!(!cache.refresh_ahead(&request(Some("other")), ahead).await);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn assume_role_calls_stay_under_the_rate_limit() {
        let (sts, clock) = counting_sts();
        let settings = CacheSettings {
            rate_limit: 10,
            ..CacheSettings::default()
        };
        let cache = Arc::new(CredentialCache::new(sts.clone(), clock, settings));
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let mut req = request(None);
                    req.role_arn =
                        RoleArn::parse(&format!("arn:aws:iam::123456789012:role/r{i}")).unwrap();
                    cache.get(&req).await.unwrap();
                    tokio::time::Instant::now()
                })
            })
            .collect();
        let mut finished = Vec::new();
        for t in tasks {
            finished.push(t.await.unwrap().duration_since(start));
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 50);
        // A burst of 10, then 10 a second: the last call cannot start before 4 s.
        finished.sort();
        assert!(finished[49] >= Duration::from_secs(4), "{:?}", finished[49]);
        // And in no one-second window did more than 20 calls (burst + rate) complete.
        for w in finished.windows(21) {
            assert!(w[20] - w[0] >= Duration::from_millis(900), "{w:?}");
        }
    }

    /// STS answering from `script` (an error code with its classification, or success for
    /// `None`), then succeeding.
    fn scripted(script: &[Option<(&str, Retry)>]) -> (Arc<FakeSts>, CredentialCache) {
        let sts = Arc::new(FakeSts::default().script(script));
        let cache = CredentialCache::new(
            sts.clone(),
            Arc::new(crate::clock::SystemClock),
            CacheSettings::default(),
        );
        (sts, cache)
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_and_5xx_are_retried_with_backoff() {
        let (sts, cache) = scripted(&[
            Some(("Throttling", Retry::Throttled)),
            Some(("Http503", Retry::Transient)),
        ]);
        let start = tokio::time::Instant::now();
        cache
            .get(&request(None))
            .await
            .expect("third attempt succeeds");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
        // Full jitter: somewhere between no wait and 200 ms + 400 ms.
        assert!(start.elapsed() <= Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_max_attempts_and_access_denied_is_not_retried() {
        let (sts, cache) = scripted(&[Some(("Throttling", Retry::Throttled)); 5]);
        let e = cache.get(&request(None)).await.unwrap_err();
        assert_eq!(e.code, "Throttling");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);

        let (sts, cache) = scripted(&[Some(("AccessDenied", Retry::No))]);
        let e = cache.get(&request(None)).await.unwrap_err();
        assert_eq!(e.code, "AccessDenied");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_classification_not_the_code() {
        // The code is for logs and metrics; whether to retry is the SDK's verdict.
        let (sts, cache) = scripted(&[Some(("Throttling", Retry::No))]);
        cache.get(&request(None)).await.unwrap_err();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);

        let (sts, cache) = scripted(&[Some(("SomethingNew", Retry::Transient))]);
        cache
            .get(&request(None))
            .await
            .expect("second attempt succeeds");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bare_names_use_default_account_else_one_get_role() {
        let iam = Arc::new(FakeIam::default());
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
                "arn:aws:iam::210987654321:role/fake/my-role"
            );
        }
        assert_eq!(iam.0.load(Ordering::SeqCst), 1);
    }
}
