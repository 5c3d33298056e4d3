//! The one place where failures become HTTP answers: every [`Failure`] has its status, its
//! fixed body and its `error_description`, by an exhaustive match (a new failure cannot be
//! added without deciding its answer).

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::identity::IdentityError;
use crate::imdsv2::TokenError;
use crate::roles::IssueError;
use crate::upstream::UpstreamError;

/// What went wrong with a request. The reason goes to logs (as `error_description`), never into
/// the body: every IAM failure is the same `404 page not found` to the container.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The caller could not be attested.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// No credentials could be issued to the caller.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The path asked for another role than the container's.
    #[error("requested role {requested:?} is not the container's role {actual:?}")]
    RoleNamesDoNotMatch {
        /// The role in the path.
        requested: String,
        /// The container's role name.
        actual: String,
    },
    /// An IAM path that is not one of the served routes.
    #[error("IAM path not served")]
    IamPathNotServed,
    /// `/favicon.ico`.
    #[error("no favicon")]
    Favicon,
    /// The request target is not an origin-form path.
    #[error("request target is not a path")]
    BadPath,
    /// The path (or query) is outside the canonical form: never forwarded.
    #[error("path is not in the canonical form")]
    PathNotCanonical,
    /// A header that decides something appears more than once.
    #[error("duplicate {0} header")]
    DuplicateHeader(&'static str),
    /// The request body is larger than the agent forwards.
    #[error("request body over the limit")]
    BodyTooLarge,
    /// The agent already holds as many request body bytes as it will (`BODY_BUDGET`).
    #[error("request body budget spent")]
    BodyBudgetSpent,
    /// The request body could not be read (too large or too slow).
    #[error("request body unreadable: {0}")]
    BadRequestBody(String),
    /// The upstream metadata service failed.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// A passthrough path the passthrough policy refuses.
    #[error("path refused by the passthrough policy")]
    PassthroughDenied,
    /// The caller is over `REQUEST_RATE_LIMIT`.
    #[error("request rate limit reached")]
    RateLimited,
    /// `CHECK_HOST_HEADER` and the `Host` is not the metadata service's.
    #[error("Host header is not the metadata service's")]
    HostNotAllowed,
    /// `IMDSV2=required` and the request carries no token.
    #[error("no IMDSv2 token (IMDSV2=required)")]
    TokenMissing,
    /// The request's token is not valid for this caller now.
    #[error("IMDSv2 token refused: {0}")]
    Token(TokenError),
    /// A token PUT without a TTL in 1..=21600.
    #[error("token TTL missing or outside 1..=21600 seconds")]
    TokenTtl,
    /// A token PUT that carries `X-Forwarded-For`, `X-Real-IP`, `Forwarded`, `Via` or
    /// `X-Forwarded-Host` (any spelling with `_`).
    #[error("token request carries a proxy's forwarding header")]
    TokenForwarded,
    /// The token path with another method than PUT.
    #[error("tokens are PUT")]
    TokenMethod,
    /// The container credentials endpoint: a target that is neither under
    /// `/v2/credentials/` nor the container's own `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
    #[error("not a credentials path of this container")]
    ContainerPathNotServed,
    /// The container credentials endpoint with another method than GET.
    #[error("container credentials are GET")]
    ContainerMethod,
    /// The container sets `AWS_CONTAINER_AUTHORIZATION_TOKEN`; the request has no
    /// `Authorization` header.
    #[error("no Authorization header (the container sets AWS_CONTAINER_AUTHORIZATION_TOKEN)")]
    AuthorizationMissing,
    /// The request's `Authorization` header is not the container's token.
    #[error("Authorization header is not the container's AWS_CONTAINER_AUTHORIZATION_TOKEN")]
    AuthorizationInvalid,
    /// `CONTAINER_AUTHORIZATION=required` and the container sets no
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    #[error("the container sets no AWS_CONTAINER_AUTHORIZATION_TOKEN (CONTAINER_AUTHORIZATION=required)")]
    AuthorizationNotSet,
    /// `CONTAINER_IMDS=off`: a container asked the instance metadata service.
    #[error("the metadata service is off for containers (CONTAINER_IMDS=off)")]
    ContainerImdsOff,
}

impl Failure {
    /// The `error_description` of logs and metrics.
    pub fn description(&self) -> &'static str {
        match self {
            Failure::Identity(e) => e.description(),
            Failure::Issue(e) => e.description(),
            Failure::RoleNamesDoNotMatch { .. } => "role_names_do_not_match",
            Failure::IamPathNotServed => "iam_path_not_served",
            Failure::Favicon => "favicon",
            Failure::BadPath => "bad_path",
            Failure::PathNotCanonical => "path_not_canonical",
            Failure::DuplicateHeader(_) => "duplicate_header",
            Failure::BodyTooLarge => "body_too_large",
            Failure::BodyBudgetSpent => "body_budget_spent",
            Failure::BadRequestBody(_) => "bad_request_body",
            Failure::Upstream(e) => e.description(),
            Failure::RateLimited => "rate_limited",
            Failure::HostNotAllowed => "host_not_allowed",
            Failure::PassthroughDenied => "passthrough_denied",
            Failure::TokenMissing => "token_required",
            Failure::Token(TokenError::Invalid) => "token_invalid",
            Failure::Token(TokenError::Expired) => "token_expired",
            Failure::Token(TokenError::WrongCaller) => "token_wrong_caller",
            Failure::TokenTtl => "token_ttl_invalid",
            Failure::TokenForwarded => "token_request_forwarded",
            Failure::TokenMethod => "token_method_not_allowed",
            Failure::ContainerPathNotServed => "container_path_not_served",
            Failure::ContainerMethod => "container_method_not_allowed",
            Failure::AuthorizationMissing => "authorization_missing",
            Failure::AuthorizationInvalid => "authorization_invalid",
            Failure::AuthorizationNotSet => "authorization_not_set",
            Failure::ContainerImdsOff => "container_imds_off",
        }
    }

    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        self.answer().0
    }

    /// Status and fixed body. Every failure to attest or issue is the same `404 page not
    /// found` as a path that does not exist, as go-metadataproxy answers: the reason goes to
    /// the log line only.
    fn answer(&self) -> (StatusCode, &'static str) {
        const NOT_FOUND: (StatusCode, &str) = (StatusCode::NOT_FOUND, "404 page not found\n");
        const BAD_REQUEST: (StatusCode, &str) = (StatusCode::BAD_REQUEST, "400 bad request\n");
        const UNAUTHORIZED: (StatusCode, &str) = (StatusCode::UNAUTHORIZED, "401 unauthorized\n");
        match self {
            Failure::Identity(_)
            | Failure::Issue(_)
            | Failure::RoleNamesDoNotMatch { .. }
            | Failure::IamPathNotServed
            | Failure::Favicon
            | Failure::PathNotCanonical
            | Failure::PassthroughDenied
            | Failure::ContainerPathNotServed => NOT_FOUND,
            Failure::BadPath
            | Failure::BadRequestBody(_)
            | Failure::HostNotAllowed
            | Failure::DuplicateHeader(_)
            | Failure::TokenTtl
            | Failure::TokenForwarded => BAD_REQUEST,
            Failure::TokenMissing
            | Failure::Token(_)
            | Failure::AuthorizationMissing
            | Failure::AuthorizationInvalid => UNAUTHORIZED,
            Failure::AuthorizationNotSet | Failure::ContainerImdsOff => {
                (StatusCode::FORBIDDEN, "403 forbidden\n")
            }
            Failure::TokenMethod | Failure::ContainerMethod => {
                (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n")
            }
            Failure::Upstream(_) => (StatusCode::BAD_GATEWAY, "502 bad gateway\n"),
            Failure::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "429 too many requests\n"),
            Failure::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "413 content too large\n"),
            Failure::BodyBudgetSpent => {
                (StatusCode::SERVICE_UNAVAILABLE, "503 service unavailable\n")
            }
        }
    }

    /// The answer the caller gets: a fixed body per status, never the reason.
    pub fn response(&self) -> Response<Bytes> {
        let (status, body) = self.answer();
        let mut resp = Response::new(Bytes::from_static(body.as_bytes()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut().insert(
            "x-content-type-options",
            http::HeaderValue::from_static("nosniff"),
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = if matches!(self, Failure::ContainerMethod) {
                "GET"
            } else {
                "PUT"
            };
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        resp
    }

    /// The answer on the container credentials endpoint: the same status, with the
    /// `{"code", "message"}` body that SDKs read there. Fixed per status, never the reason.
    pub fn container_response(&self) -> Response<Bytes> {
        let mut resp = self.response();
        let (code, message) = match resp.status() {
            StatusCode::BAD_REQUEST => ("InvalidRequest", "bad request"),
            StatusCode::UNAUTHORIZED => ("Unauthorized", "missing or invalid Authorization header"),
            StatusCode::FORBIDDEN => ("AccessDenied", "forbidden"),
            StatusCode::NOT_FOUND => ("NotFound", "credentials not found"),
            StatusCode::METHOD_NOT_ALLOWED => ("MethodNotAllowed", "method not allowed"),
            StatusCode::PAYLOAD_TOO_LARGE => ("RequestTooLarge", "content too large"),
            StatusCode::TOO_MANY_REQUESTS => ("TooManyRequests", "too many requests"),
            StatusCode::BAD_GATEWAY => ("BadGateway", "bad gateway"),
            StatusCode::SERVICE_UNAVAILABLE => ("ServiceUnavailable", "service unavailable"),
            _ => ("InternalError", "internal error"),
        };
        *resp.body_mut() =
            Bytes::from(format!("{{\"code\":\"{code}\",\"message\":\"{message}\"}}"));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}
