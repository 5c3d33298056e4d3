//! Route handlers and the one place where failures become HTTP answers.

pub mod iam;
pub mod passthrough;
pub mod token;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::identity::LookupError;
use crate::roles::AwsError;
use crate::upstream::UpstreamError;

/// What went wrong with a request. The reason goes to logs (as `error_description`), never into
/// the body: every IAM failure is the same `404 page not found` to the container.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No running container has the caller's address.
    #[error("no running container has this address")]
    CouldNotFindContainer,
    /// The Docker daemon could not answer.
    #[error("{0}")]
    Docker(LookupError),
    /// Several running containers claim the caller's address.
    #[error("{0}")]
    AmbiguousContainer(LookupError),
    /// eBPF mode: the connection has no fresh kernel record (raw-socket handshake, forged
    /// source, or a path around the kernel program).
    #[error("no kernel record for this connection")]
    NoKernelIdentity,
    /// eBPF mode: the peer IP and the connecting cgroup name different callers.
    #[error("peer IP belongs to {by_ip}, but the connection came from {by_cgroup}")]
    IdentityMismatch {
        /// The container owning the peer IP, or `none`.
        by_ip: String,
        /// The container of the connecting cgroup, or `a host process`.
        by_cgroup: String,
    },
    /// The container has no `IAM_ROLE` and there is no `DEFAULT_ROLE`.
    #[error("container has no IAM_ROLE and no DEFAULT_ROLE is set")]
    NoRole,
    /// `IAM_ROLE` is not a role name or ARN.
    #[error("IAM_ROLE is not a valid role: {0}")]
    InvalidRole(crate::roles::RoleParseError),
    /// The path asked for another role than the container's.
    #[error("requested role {requested:?} is not the container's role {actual:?}")]
    RoleNamesDoNotMatch {
        /// The role in the path.
        requested: String,
        /// The container's role name.
        actual: String,
    },
    /// `iam:GetRole` failed for a bare role name.
    #[error("could not look up the role ARN: {0}")]
    CouldNotResolveRole(AwsError),
    /// `sts:AssumeRole` failed.
    #[error("could not assume role: {0}")]
    CouldNotAssumeRole(AwsError),
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
    /// The role policy does not let this container assume its role.
    #[error("role {0} is not allowed for this container by the role policy")]
    RoleNotAllowed(String),
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
    Token(crate::imdsv2::TokenError),
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
}

impl Failure {
    /// The `error_description` of logs and metrics.
    pub fn description(&self) -> &'static str {
        match self {
            Failure::CouldNotFindContainer => "could_not_find_container",
            Failure::Docker(_) => "docker_unavailable",
            Failure::AmbiguousContainer(_) => "ambiguous_container",
            Failure::NoKernelIdentity => "no_kernel_identity",
            Failure::IdentityMismatch { .. } => "identity_mismatch",
            Failure::NoRole => "no_role",
            Failure::InvalidRole(_) => "invalid_role",
            Failure::RoleNamesDoNotMatch { .. } => "role_names_do_not_match",
            Failure::CouldNotResolveRole(_) => "could_not_resolve_role",
            Failure::CouldNotAssumeRole(_) => "could_not_assume_role",
            Failure::IamPathNotServed => "iam_path_not_served",
            Failure::Favicon => "favicon",
            Failure::BadPath => "bad_path",
            Failure::PathNotCanonical => "path_not_canonical",
            Failure::DuplicateHeader(_) => "duplicate_header",
            Failure::BodyTooLarge => "body_too_large",
            Failure::BodyBudgetSpent => "body_budget_spent",
            Failure::BadRequestBody(_) => "bad_request_body",
            Failure::Upstream(e) => e.description(),
            Failure::RoleNotAllowed(_) => "role_not_allowed",
            Failure::RateLimited => "rate_limited",
            Failure::HostNotAllowed => "host_not_allowed",
            Failure::PassthroughDenied => "passthrough_denied",
            Failure::TokenMissing => "token_required",
            Failure::Token(crate::imdsv2::TokenError::Invalid) => "token_invalid",
            Failure::Token(crate::imdsv2::TokenError::Expired) => "token_expired",
            Failure::Token(crate::imdsv2::TokenError::WrongCaller) => "token_wrong_caller",
            Failure::TokenTtl => "token_ttl_invalid",
            Failure::TokenForwarded => "token_request_forwarded",
            Failure::TokenMethod => "token_method_not_allowed",
        }
    }

    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        if let Some(status) = token::status(self) {
            return status;
        }
        match self {
            Failure::Upstream(_) => StatusCode::BAD_GATEWAY,
            Failure::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Failure::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::BodyBudgetSpent => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BadPath
            | Failure::BadRequestBody(_)
            | Failure::HostNotAllowed
            | Failure::DuplicateHeader(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::NOT_FOUND,
        }
    }

    /// The answer the caller gets: a fixed body per status, never the reason.
    pub fn response(&self) -> Response<Bytes> {
        let status = self.status();
        let body: &'static str = match status {
            StatusCode::NOT_FOUND => "404 page not found\n",
            StatusCode::BAD_GATEWAY => "502 bad gateway\n",
            StatusCode::UNAUTHORIZED => "401 unauthorized\n",
            StatusCode::METHOD_NOT_ALLOWED => "405 method not allowed\n",
            StatusCode::TOO_MANY_REQUESTS => "429 too many requests\n",
            StatusCode::PAYLOAD_TOO_LARGE => "413 content too large\n",
            StatusCode::SERVICE_UNAVAILABLE => "503 service unavailable\n",
            _ => "400 bad request\n",
        };
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
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("PUT"));
        }
        resp
    }
}
