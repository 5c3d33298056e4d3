//! Issuing credentials: a container's role ([`Issuer::role_of`]), the role policy and the
//! AssumeRole request ([`Issuer::request`]), and the cached credentials
//! ([`Issuer::credentials`]). The route handlers, the prefetcher and refresh-ahead all issue
//! through here, so every path applies the same policy.

use std::sync::Arc;
use std::time::Duration;

use super::{
    session_tags, AssumeRoleRequest, AwsError, CredentialCache, Credentials, RoleParseError,
    RoleResolver, RoleSpec, SessionTemplate,
};
use crate::identity::Container;
use crate::policy::RolePolicy;

/// Why no credentials were issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The container has no `IAM_ROLE` and there is no `DEFAULT_ROLE`.
    #[error("container has no IAM_ROLE and no DEFAULT_ROLE is set")]
    NoRole,
    /// `IAM_ROLE` is not a role name or ARN.
    #[error("IAM_ROLE is not a valid role: {0}")]
    InvalidRole(#[source] RoleParseError),
    /// `iam:GetRole` failed for a bare role name.
    #[error("could not look up the role ARN: {0}")]
    CouldNotResolveRole(#[source] AwsError),
    /// The role policy does not let this container assume its role.
    #[error("role {0} is not allowed for this container by the role policy")]
    RoleNotAllowed(String),
    /// `sts:AssumeRole` failed.
    #[error("could not assume role: {0}")]
    CouldNotAssumeRole(#[source] AwsError),
}

impl IssueError {
    /// The `error_description` of logs and metrics.
    pub fn description(&self) -> &'static str {
        match self {
            IssueError::NoRole => "no_role",
            IssueError::InvalidRole(_) => "invalid_role",
            IssueError::CouldNotResolveRole(_) => "could_not_resolve_role",
            IssueError::RoleNotAllowed(_) => "role_not_allowed",
            IssueError::CouldNotAssumeRole(_) => "could_not_assume_role",
        }
    }
}

/// How sessions are named, tagged and how long they last.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// Role for containers without `IAM_ROLE` (`DEFAULT_ROLE`).
    pub default_role: Option<RoleSpec>,
    /// STS session name template (`ROLE_SESSION_NAME`).
    pub session_name: SessionTemplate,
    /// Tag sessions with the container (`ROLE_SESSION_TAGS`).
    pub session_tags: bool,
    /// STS session duration (`ROLE_SESSION_DURATION`).
    pub session_duration: Duration,
    /// Which roles containers may assume (`ROLE_POLICY_FILE`).
    pub policy: RolePolicy,
}

/// Credentials issued to a container, and the request they answer.
#[derive(Debug)]
pub struct Issued {
    /// Every AssumeRole input (the cache key).
    pub request: AssumeRoleRequest,
    /// The credentials, cached or fresh.
    pub credentials: Arc<Credentials>,
}

/// Issues credentials to containers.
#[derive(Debug)]
pub struct Issuer {
    resolver: RoleResolver,
    cache: CredentialCache,
    settings: IssuerSettings,
}

impl Issuer {
    /// Resolves roles with `resolver` and keeps credentials in `cache`.
    pub fn new(resolver: RoleResolver, cache: CredentialCache, settings: IssuerSettings) -> Self {
        Issuer {
            resolver,
            cache,
            settings,
        }
    }

    /// The credential cache (for its gauges).
    pub fn cache(&self) -> &CredentialCache {
        &self.cache
    }

    /// The container's role: its `IAM_ROLE`, else `DEFAULT_ROLE`.
    pub fn role_of(&self, container: &Container) -> Result<RoleSpec, IssueError> {
        match &container.role {
            Some(raw) => RoleSpec::parse(raw).map_err(IssueError::InvalidRole),
            None => self.settings.default_role.clone().ok_or(IssueError::NoRole),
        }
    }

    /// Every AssumeRole input for `container` in role `spec`, once the role policy allows it.
    pub async fn request(
        &self,
        container: &Container,
        spec: &RoleSpec,
    ) -> Result<AssumeRoleRequest, IssueError> {
        let role_arn = self
            .resolver
            .resolve(spec)
            .await
            .map_err(|e| IssueError::CouldNotResolveRole((*e).clone()))?;
        if !self.settings.policy.allows(role_arn.as_str(), container) {
            crate::metrics::role_not_allowed(spec.name());
            tracing::warn!(
                container_id = %container.id,
                container_name = %container.name,
                image = %container.image,
                role_arn = %role_arn,
                "role not allowed by the role policy"
            );
            return Err(IssueError::RoleNotAllowed(role_arn.to_string()));
        }
        Ok(AssumeRoleRequest {
            role_arn,
            external_id: container.external_id.clone(),
            session_name: self.settings.session_name.render(container),
            duration: self.settings.session_duration,
            policy: None,
            tags: if self.settings.session_tags {
                session_tags(container)
            } else {
                Vec::new()
            },
        })
    }

    /// Credentials for `container` in role `spec`: cached, or from STS.
    pub async fn credentials(
        &self,
        container: &Container,
        spec: &RoleSpec,
    ) -> Result<Issued, IssueError> {
        let request = self.request(container, spec).await?;
        let credentials = self
            .cache
            .get(&request)
            .await
            .map_err(IssueError::CouldNotAssumeRole)?;
        Ok(Issued {
            request,
            credentials,
        })
    }

    /// Renews the credentials of `container` in role `spec` when they are within `ahead` of
    /// the cache's renewal point; whether they were renewed.
    pub async fn refresh_ahead(
        &self,
        container: &Container,
        spec: &RoleSpec,
        ahead: Duration,
    ) -> bool {
        let Ok(req) = self.request(container, spec).await else {
            return false;
        };
        self.cache.refresh_ahead(&req, ahead).await
    }
}
