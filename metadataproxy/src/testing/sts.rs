//! STS and IAM in memory, behind the [`AssumeRole`] and [`GetRole`] seams.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::clock::{Clock, SystemClock};
use crate::roles::{
    AssumeRole, AssumeRoleRequest, AwsError, Credentials, GetRole, Rendered, Retry, RoleArn, Secret,
};

/// Starts every secret access key [`FakeSts`] hands out (followed by the call's number).
pub const SECRET_MARK: &str = "SECRETKEYVALUE";
/// Starts every session token [`FakeSts`] hands out (followed by the call's number).
pub const TOKEN_MARK: &str = "SESSIONTOKENVALUE";

/// `AssumeRole` in memory. It counts the calls, keeps their requests, and answers call `n`
/// with `ASIAFAKE{n}`, [`SECRET_MARK`]`{n}` and [`TOKEN_MARK`]`{n}`, obtained at its clock's
/// now and valid for the request's duration; or with an error, when a test says so
/// ([`FakeSts::script`], [`FakeSts::fail_with`]).
#[derive(Debug)]
pub struct FakeSts {
    /// Calls so far.
    pub calls: AtomicUsize,
    /// Every request, in order.
    pub requests: Mutex<Vec<AssumeRoleRequest>>,
    clock: Arc<dyn Clock>,
    latency: Duration,
    /// The next calls' outcomes, one each: an error code with its retry classification, or
    /// `None` for success.
    script: Mutex<VecDeque<Option<(String, Retry)>>>,
    /// Once the script is used up: every call fails with this code (not retried).
    failing: Mutex<Option<String>>,
}

impl Default for FakeSts {
    fn default() -> Self {
        FakeSts::with_clock(Arc::new(SystemClock))
    }
}

impl FakeSts {
    /// Credentials obtained at `clock`'s time.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        FakeSts {
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            clock,
            latency: Duration::ZERO,
            script: Mutex::new(VecDeque::new()),
            failing: Mutex::new(None),
        }
    }

    /// Each call takes `latency` (tokio's time: paused in tests), so that concurrent callers
    /// pile up behind one call.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The outcomes of the next calls, in order: `Some((code, retry))` fails with `code`
    /// (`Throttling`, `AccessDenied`, ...) classified as the SDK would (`retry`), `None`
    /// succeeds. After the script, calls behave as before.
    pub fn script(self, outcomes: &[Option<(&str, Retry)>]) -> Self {
        *self.script.lock().expect("lock") = outcomes
            .iter()
            .map(|o| o.map(|(code, retry)| (code.to_string(), retry)))
            .collect();
        self
    }

    /// From now on every call fails with `code`, not retryable (`None`: succeeds again).
    pub fn fail_with(&self, code: Option<&str>) {
        *self.failing.lock().expect("lock") = code.map(str::to_string);
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn outcome(&self) -> Option<AwsError> {
        let (code, retry) = match self.script.lock().expect("lock").pop_front() {
            Some(scripted) => scripted?,
            None => (self.failing.lock().expect("lock").clone()?, Retry::No),
        };
        Some(AwsError {
            code,
            message: "from the fake STS".into(),
            retry,
        })
    }
}

impl AssumeRole for FakeSts {
    fn assume_role<'a>(
        &'a self,
        req: &'a AssumeRoleRequest,
    ) -> BoxFuture<'a, Result<Credentials, AwsError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.requests.lock().expect("lock").push(req.clone());
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            if let Some(e) = self.outcome() {
                return Err(e);
            }
            let now = self.clock.now();
            Ok(Credentials {
                access_key_id: format!("ASIAFAKE{n}"),
                secret_access_key: Secret::new(format!("{SECRET_MARK}{n}")),
                session_token: Secret::new(format!("{TOKEN_MARK}{n}")),
                expiration: now + req.duration,
                obtained_at: now,
                assumed_role_arn: format!(
                    "arn:aws:sts::123456789012:assumed-role/{}/{}",
                    req.role_arn.name(),
                    req.session_name
                ),
                assumed_role_id: format!("AROAFAKE:{}", req.session_name),
                rendered: Rendered::default(),
            })
        })
    }
}

/// `iam:GetRole` in memory: every role is `arn:aws:iam::210987654321:role/fake/{name}`; the
/// field counts the calls.
#[derive(Debug, Default)]
pub struct FakeIam(pub AtomicUsize);

impl GetRole for FakeIam {
    fn role_arn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RoleArn, AwsError>> {
        Box::pin(async move {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(
                RoleArn::parse(&format!("arn:aws:iam::210987654321:role/fake/{name}"))
                    .expect("ARN"),
            )
        })
    }
}
