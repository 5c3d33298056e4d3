//! The AWS calls the agent makes (`sts:AssumeRole`, `iam:GetRole`), behind narrow traits that
//! return this crate's types, and their implementations on the AWS SDK.
//!
//! A failed call is an [`AwsError`]: the AWS error code for logs and metrics, and a [`Retry`]
//! saying whether another attempt may succeed. On the SDK that verdict is the SDK's own: each
//! call runs the retry classifiers the SDK registers for its operation (modeled retryable
//! errors, the AWS throttling and transient error codes, 500/502/503/504, timeouts and I/O
//! failures), as the SDK's retry strategy would. The clients' own retries are off: the
//! credential cache retries, each attempt under the rate limit.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_smithy_runtime::client::retries::classifiers::run_classifiers_on_ctx;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::retries::classifiers::{RetryAction, RetryReason};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::ErrorKind;
use futures_util::future::BoxFuture;

use super::arn::RoleArn;

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for the one place that must write it (the credentials body).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Temporary credentials for an assumed role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AccessKeyId` (not secret on its own; appears in CloudTrail).
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: Secret,
    /// `Token`.
    pub session_token: Secret,
    /// When the credentials expire.
    pub expiration: SystemTime,
    /// When they were obtained from STS.
    pub obtained_at: SystemTime,
    /// `arn:aws:sts::<account>:assumed-role/<name>/<session>`.
    pub assumed_role_arn: String,
    /// `AROA...:<session>`.
    pub assumed_role_id: String,
    /// The credentials JSON, rendered once for every answer that serves these credentials.
    pub rendered: Rendered,
}

/// A value computed once from the credentials it sits in; ignored by comparisons.
#[derive(Clone, Default)]
pub struct Rendered(std::sync::OnceLock<bytes::Bytes>);

impl Rendered {
    /// The value, computed by `f` the first time.
    pub fn get_or_init(&self, f: impl FnOnce() -> bytes::Bytes) -> bytes::Bytes {
        self.0.get_or_init(f).clone()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Rendered) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Rendered(..)"
        } else {
            "Rendered(empty)"
        })
    }
}

/// Every input of one `sts:AssumeRole` call; also the credential cache key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AssumeRoleRequest {
    /// The role.
    pub role_arn: RoleArn,
    /// `ExternalId`, from the container's `IAM_EXTERNAL_ID`.
    pub external_id: Option<String>,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `DurationSeconds`.
    pub duration: Duration,
    /// An inline session policy.
    pub policy: Option<String>,
    /// Session tags, `(key, value)`.
    pub tags: Vec<(String, String)>,
}

impl fmt::Debug for AssumeRoleRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The external id is a shared secret with the role's trust policy: never print it.
        f.debug_struct("AssumeRoleRequest")
            .field("role_arn", &self.role_arn.as_str())
            .field("external_id", &self.external_id.as_ref().map(|_| "***"))
            .field("session_name", &self.session_name)
            .field("duration", &self.duration)
            .field("policy", &self.policy.is_some())
            .field("tags", &self.tags)
            .finish()
    }
}

/// Whether another attempt at a failed AWS call may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// AWS asked for fewer calls (throttling).
    Throttled,
    /// A failure that may pass: the network, a timeout, a failure on AWS's side.
    Transient,
    /// Another attempt would fail the same way: access denied, an invalid request, a failure
    /// nobody classified.
    No,
}

impl Retry {
    /// The name logs give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Retry::Throttled => "throttled",
            Retry::Transient => "transient",
            Retry::No => "no",
        }
    }

    /// The verdict of the SDK's retry classifiers.
    fn of(action: &RetryAction) -> Retry {
        match action {
            RetryAction::RetryIndicated(RetryReason::RetryableError {
                kind: ErrorKind::ThrottlingError,
                ..
            }) => Retry::Throttled,
            RetryAction::RetryIndicated(_) => Retry::Transient,
            _ => Retry::No,
        }
    }
}

/// A failed AWS call: the AWS error code (or a transport class), a message without secrets,
/// and whether to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    /// `AccessDenied`, `Throttling`, `NoSuchEntity`, ... or `DispatchFailure`, `Timeout`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether another attempt may succeed: on the SDK, as the SDK classified the failure.
    pub retry: Retry,
}

impl AwsError {
    /// The error for a failed SDK call; `retry` is the verdict [`Classify`] recorded for its
    /// last attempt (none: the call failed before any attempt, building the request).
    fn from_sdk<E>(
        err: aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
        retry: Option<Retry>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_sts::error::SdkError;
        let code = match &err {
            SdkError::ServiceError(e) => match err.code() {
                Some(code) => code.to_string(),
                None => format!("Http{}", e.raw().status().as_u16()),
            },
            SdkError::TimeoutError(_) => "Timeout".into(),
            SdkError::DispatchFailure(_) => "DispatchFailure".into(),
            SdkError::ResponseError(_) => "ResponseError".into(),
            SdkError::ConstructionFailure(_) => "ConstructionFailure".into(),
            _ => "Unknown".into(),
        };
        let message = match err.message() {
            Some(m) => m.to_string(),
            None => DisplayErrorContext(&err).to_string(),
        };
        AwsError {
            code,
            message,
            retry: retry.unwrap_or(Retry::No),
        }
    }

    /// A failure another attempt would repeat (found by the agent in a request or an answer,
    /// or by the built-in STS): [`Retry::No`].
    pub fn permanent(code: &str, message: impl Into<String>) -> AwsError {
        AwsError {
            code: code.into(),
            message: message.into(),
            retry: Retry::No,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retry != Retry::No
    }
}

/// Classifies each attempt of one SDK call with the retry classifiers the SDK registered for
/// the operation, in their order, as the SDK's standard retry strategy does; keeps the verdict
/// on the last attempt.
#[derive(Debug, Clone, Default)]
struct Classify(Arc<Mutex<Option<Retry>>>);

impl Classify {
    fn verdict(&self) -> Option<Retry> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Intercept for Classify {
    fn name(&self) -> &'static str {
        "Classify"
    }

    // Runs after every attempt, a timed-out or cancelled one included.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let action =
            run_classifiers_on_ctx(runtime_components.retry_classifiers(), context.inner());
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Retry::of(&action));
        Ok(())
    }
}

/// `sts:AssumeRole`.
pub trait AssumeRole: Send + Sync + fmt::Debug {
    /// Assumes the role.
    fn assume_role<'a>(
        &'a self,
        req: &'a AssumeRoleRequest,
    ) -> BoxFuture<'a, Result<Credentials, AwsError>>;
}

/// `iam:GetRole`, for bare role names when no default account is configured.
pub trait GetRole: Send + Sync + fmt::Debug {
    /// The ARN of the role with this name.
    fn role_arn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RoleArn, AwsError>>;
}

/// [`AssumeRole`] on the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkSts {
    client: aws_sdk_sts::Client,
}

impl SdkSts {
    /// Wraps an SDK client.
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        SdkSts { client }
    }
}

impl AssumeRole for SdkSts {
    fn assume_role<'a>(
        &'a self,
        req: &'a AssumeRoleRequest,
    ) -> BoxFuture<'a, Result<Credentials, AwsError>> {
        Box::pin(async move {
            let tags = req
                .tags
                .iter()
                .map(|(k, v)| {
                    aws_sdk_sts::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .build()
                        .map_err(|e| AwsError::permanent("ConstructionFailure", e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let classify = Classify::default();
            let out = self
                .client
                .assume_role()
                .set_tags((!tags.is_empty()).then_some(tags))
                .role_arn(req.role_arn.as_str())
                .role_session_name(&req.session_name)
                .duration_seconds(i32::try_from(req.duration.as_secs()).unwrap_or(i32::MAX))
                .set_external_id(req.external_id.clone())
                .set_policy(req.policy.clone())
                .customize()
                .interceptor(classify.clone())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(e, classify.verdict()))?;
            let obtained_at = SystemTime::now();
            let malformed = |what: &str| {
                AwsError::permanent(
                    "MalformedResponse",
                    format!("AssumeRole answer without {what}"),
                )
            };
            let c = out.credentials.ok_or_else(|| malformed("Credentials"))?;
            let user = out
                .assumed_role_user
                .ok_or_else(|| malformed("AssumedRoleUser"))?;
            let expiration =
                SystemTime::try_from(c.expiration).map_err(|_| malformed("a valid Expiration"))?;
            Ok(Credentials {
                access_key_id: c.access_key_id,
                secret_access_key: Secret::new(c.secret_access_key),
                session_token: Secret::new(c.session_token),
                expiration,
                obtained_at,
                assumed_role_arn: user.arn,
                assumed_role_id: user.assumed_role_id,
                rendered: Default::default(),
            })
        })
    }
}

/// [`GetRole`] on the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkIam {
    client: aws_sdk_iam::Client,
}

impl SdkIam {
    /// Wraps an SDK client.
    pub fn new(client: aws_sdk_iam::Client) -> Self {
        SdkIam { client }
    }
}

impl GetRole for SdkIam {
    fn role_arn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RoleArn, AwsError>> {
        Box::pin(async move {
            let classify = Classify::default();
            let out = self
                .client
                .get_role()
                .role_name(name)
                .customize()
                .interceptor(classify.clone())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(e, classify.verdict()))?;
            let arn = out.role.map(|r| r.arn).unwrap_or_default();
            RoleArn::parse(&arn).map_err(|e| {
                AwsError::permanent(
                    "MalformedResponse",
                    format!("GetRole returned {arn:?}: {e}"),
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};

    use super::{AssumeRole as _, AssumeRoleRequest, AwsError, Retry, SdkSts};
    use crate::roles::RoleArn;

    /// A server on loopback that answers every request with `status` and `body`, or never
    /// answers (`None`).
    async fn stub(answer: Option<(u16, String)>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Some((status, body)) = answer.clone() else {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(stream);
                    });
                    continue;
                };
                let svc = hyper::service::service_fn(move |_| {
                    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                        body.clone(),
                    )));
                    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/xml"),
                    );
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        url
    }

    /// STS's error document for `code`.
    fn sts_error(code: &str) -> String {
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>{code}</Code><Message>from the stub</Message></Error>\
             <RequestId>stub</RequestId></ErrorResponse>"
        )
    }

    /// One AssumeRole through the agent's SDK client (configured as the agent configures it:
    /// the SDK's retries off) against `url`.
    async fn assume_role_at(url: &str) -> AwsError {
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_sts::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_millis(300))
                    .build(),
            )
            .build();
        let sts = SdkSts::new(aws_sdk_sts::Client::from_conf(config));
        let req = AssumeRoleRequest {
            role_arn: RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("arn"),
            external_id: None,
            session_name: "test".into(),
            duration: Duration::from_secs(900),
            policy: None,
            tags: Vec::new(),
        };
        sts.assume_role(&req).await.expect_err("the stub fails it")
    }

    /// Whether a failure is retried is the SDK's verdict: its throttling and transient codes,
    /// errors it models as retryable, 500/502/503/504, timeouts and I/O failures.
    #[tokio::test]
    async fn sdk_failures_carry_the_sdks_retry_classification() {
        let xml = |status: u16, code: &str| Some((status, sts_error(code)));
        let cases = [
            (xml(400, "Throttling"), "Throttling", Retry::Throttled),
            (
                xml(400, "RequestLimitExceeded"),
                "RequestLimitExceeded",
                Retry::Throttled,
            ),
            (
                xml(503, "ServiceUnavailable"),
                "ServiceUnavailable",
                Retry::Transient,
            ),
            (
                xml(500, "InternalFailure"),
                "InternalFailure",
                Retry::Transient,
            ),
            // Transient for AssumeRole by the SDK's own addition to its list.
            (
                xml(400, "IDPCommunicationError"),
                "IDPCommunicationError",
                Retry::Transient,
            ),
            (
                Some((502, "bad gateway".into())),
                "Http502",
                Retry::Transient,
            ),
            (xml(403, "AccessDenied"), "AccessDenied", Retry::No),
            (xml(400, "ValidationError"), "ValidationError", Retry::No),
            (
                xml(400, "RegionDisabledException"),
                "RegionDisabledException",
                Retry::No,
            ),
            (None, "Timeout", Retry::Transient),
        ];
        for (answer, code, retry) in cases {
            let e = assume_role_at(&stub(answer).await).await;
            assert_eq!((e.code.as_str(), e.retry), (code, retry), "{e}");
        }
        // Nobody listens: the connection is refused.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("address"));
        drop(closed);
        let e = assume_role_at(&url).await;
        assert_eq!(
            (e.code.as_str(), e.retry),
            ("DispatchFailure", Retry::Transient),
            "{e}"
        );
    }

    /// The agent leaves `use_global_endpoint` unset: STS calls go to the region's endpoint.
    /// (Tests point the SDK at moto, which hides this; here the resolver itself is asked.)
    #[tokio::test]
    async fn sts_endpoint_is_regional() {
        for (region, url) in [
            ("eu-west-1", "https://sts.eu-west-1.amazonaws.com"),
            ("us-east-1", "https://sts.us-east-1.amazonaws.com"),
            ("cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn"),
        ] {
            let params = Params::builder()
                .region(region)
                .use_dual_stack(false)
                .use_fips(false)
                .build()
                .expect("params");
            let endpoint = DefaultResolver::new()
                .resolve_endpoint(&params)
                .await
                .expect("endpoint");
            assert_eq!(endpoint.url(), url, "{region}");
        }
    }
}
