//! What the request core needs, each a narrow service: the server hands every handler only
//! the ones it uses. Built by `app` from the configuration (or from fakes, in tests).

use std::sync::Arc;

use crate::audit::Audit;
use crate::identity::Attestor;
use crate::imdsv2::TokenKeys;
use crate::limits::{Limits, RequestRate};
use crate::roles::Issuer;

use super::handlers::container;
use super::handlers::passthrough::Forwarder;

/// The services behind the metadata port.
#[derive(Debug)]
pub struct Services {
    /// Who is calling.
    pub attest: Attestor,
    /// Credentials for the caller's role.
    pub issuer: Arc<Issuer>,
    /// Where credential issuances are recorded.
    pub audit: Audit,
    /// Passthrough to the upstream metadata service.
    pub forwarder: Forwarder,
    /// Seals and opens IMDSv2 tokens.
    pub tokens: TokenKeys,
    /// `IMDSV2=required`.
    pub imdsv2_required: bool,
    /// The container credentials endpoint's settings (`CONTAINER_AUTHORIZATION`).
    pub container: container::Settings,
    /// `CONTAINER_IMDS=on`: containers are served the metadata service.
    pub container_imds: bool,
    /// Connection, rate and request-size limits.
    pub limits: Limits,
    /// Per-caller request rate (`None`: off).
    pub request_rate: Option<RequestRate>,
    /// `METRICS_ON_PROXY_PORT`: the Prometheus exposition served on the proxy port too.
    pub proxy_metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Names of the copied Docker labels, for callers whose container is not known.
    pub copied_label_names: Vec<String>,
    /// Which requests get a log line (`REQUEST_LOG`).
    pub request_log: crate::telemetry::RequestLog,
}
