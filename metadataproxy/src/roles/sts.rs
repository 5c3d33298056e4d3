//! The AWS calls the agent makes (`sts:AssumeRole`, `iam:GetRole`), behind narrow traits that
//! return this crate's types, and their implementations on the AWS SDK.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata};
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

/// A failed AWS call: the AWS error code (or a transport class) and a message without secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    /// `AccessDenied`, `Throttling`, `NoSuchEntity`, ... or `DispatchFailure`, `Timeout`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

impl AwsError {
    fn from_sdk<E>(
        err: aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
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
        AwsError { code, message }
    }
}

impl AwsError {
    /// Whether another attempt may succeed: throttling, a failure on AWS's side, the network.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code.as_str(),
            "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestThrottled"
                | "RequestThrottledException"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "SlowDown"
                | "PriorRequestNotComplete"
                | "InternalFailure"
                | "InternalError"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "IDPCommunicationError"
                | "Timeout"
                | "DispatchFailure"
                | "ResponseError"
        ) || self.code.starts_with("Http5")
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
                        .map_err(|e| AwsError {
                            code: "ConstructionFailure".into(),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .assume_role()
                .set_tags((!tags.is_empty()).then_some(tags))
                .role_arn(req.role_arn.as_str())
                .role_session_name(&req.session_name)
                .duration_seconds(i32::try_from(req.duration.as_secs()).unwrap_or(i32::MAX))
                .set_external_id(req.external_id.clone())
                .set_policy(req.policy.clone())
                .send()
                .await
                .map_err(AwsError::from_sdk)?;
            let obtained_at = SystemTime::now();
            let malformed = |what: &str| AwsError {
                code: "MalformedResponse".into(),
                message: format!("AssumeRole answer without {what}"),
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
            let out = self
                .client
                .get_role()
                .role_name(name)
                .send()
                .await
                .map_err(AwsError::from_sdk)?;
            let arn = out.role.map(|r| r.arn).unwrap_or_default();
            RoleArn::parse(&arn).map_err(|e| AwsError {
                code: "MalformedResponse".into(),
                message: format!("GetRole returned {arn:?}: {e}"),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};

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
