//! Wiring: builds the components from a [`Config`] into the [`Services`] the server uses, and
//! starts the agent's background work. Every external dependency is an `Arc<dyn Trait>` seam,
//! so tests wire [`Services`] from fakes with [`services`].
//!
//! Whatever stops the agent from starting is a [`StartupError`], which names the setting at
//! fault and keeps the error behind it; `main` reports it in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::admin::Readiness;
use crate::builtin::Emulator;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, StsConfig, UpstreamConfig, EXIT_CONFIG};
use crate::ebpf::EbpfError;
use crate::identity::kernel::{CgroupResolver, CgroupTree, KernelIdentity};
use crate::identity::{Attestor, ContainerIndex, ContainerLookup, DockerLookup};
use crate::imdsv2::KeyFileError;
use crate::netfilter::NetfilterError;
use crate::roles::{
    AccountId, AssumeRole, BuiltinSts, CacheSettings, CredentialCache, GetRole, Issuer,
    IssuerSettings, Partition, RoleResolver, SdkIam, SdkSts,
};
use crate::server::handlers::passthrough::Forwarder;
use crate::server::Services;
use crate::telemetry::export::Exporters;
use crate::upstream::{HttpUpstream, Upstream};

/// Why the agent could not start. Each message names the variable at fault (or the address it
/// could not bind), as the agent has always printed it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// An invalid setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The metadata port (`HOST`, `PORT`) could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// `CONTAINER_CREDENTIALS_PORT` could not be bound.
    #[error("cannot listen on {addr} (CONTAINER_CREDENTIALS_PORT): {source}")]
    ContainerListen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// `ADMIN_ADDR` could not be bound.
    #[error("cannot listen on ADMIN_ADDR {addr}: {source}")]
    AdminListen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// `INTERCEPT=ebpf` could not attach its programs.
    #[error("cannot start eBPF mode: {0}")]
    Ebpf(#[source] EbpfError),
    /// `INTERCEPT=iptables` could not install its rules.
    #[error("cannot start iptables mode: {0}")]
    Iptables(#[source] NetfilterError),
    /// `AUDIT_LOG_FILE` cannot be appended to.
    #[error("AUDIT_LOG_FILE={}: cannot open it for appending: {source}", .path.display())]
    AuditLog {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `TOKEN_KEY_FILE` cannot be used (and is never replaced by a fresh key).
    #[error(
        "TOKEN_KEY_FILE={}: {source} (fix or delete the file: deleting it invalidates every \
         token clients hold; or set TOKEN_KEY_FILE to another path, or none)",
        .path.display()
    )]
    TokenKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: KeyFileError,
    },
}

impl StartupError {
    /// The process's exit status: 64 (`EX_USAGE`) for an invalid setting, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => EXIT_CONFIG as u8,
            StartupError::Runtime(_)
            | StartupError::Listen { .. }
            | StartupError::ContainerListen { .. }
            | StartupError::AdminListen { .. }
            | StartupError::Ebpf(_)
            | StartupError::Iptables(_)
            | StartupError::AuditLog { .. }
            | StartupError::TokenKeyFile { .. } => 1,
        }
    }
}

/// Adds the rules of `ROLE_POLICY_FILE` to the role policy of `config`: the file is read by
/// the application at start-up, not by the configuration parser. An unreadable or invalid file
/// is a configuration error naming the variable (exit 64).
pub fn read_role_policy(config: &mut Config) -> Result<(), ConfigError> {
    let Some(path) = &config.role_policy_file else {
        return Ok(());
    };
    let refused = |reason: String| ConfigError {
        variable: "ROLE_POLICY_FILE",
        value: path.display().to_string(),
        reason,
    };
    let json =
        std::fs::read_to_string(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
    config.roles = config
        .roles
        .clone()
        .with_file(&json)
        .map_err(|e| refused(e.to_string()))?;
    Ok(())
}

/// The external services behind the seams.
#[derive(Debug)]
pub struct Deps {
    /// Container lookup.
    pub lookup: Arc<dyn ContainerLookup>,
    /// `sts:AssumeRole`.
    pub sts: Arc<dyn AssumeRole>,
    /// `iam:GetRole`.
    pub iam: Arc<dyn GetRole>,
    /// Passthrough target.
    pub upstream: Arc<dyn Upstream>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Partition of ARNs built from names.
    pub partition: Partition,
    /// eBPF mode: the kernel's connection records.
    pub kernel: Option<Arc<dyn KernelIdentity>>,
}

/// Wires `deps` with the settings of `config`: the services of the metadata port, with an
/// in-memory token key and no audit log.
pub fn services(config: &Config, deps: Deps) -> Services {
    let issuer = Issuer::new(
        RoleResolver::new(deps.partition, config.default_account_id.clone(), deps.iam),
        CredentialCache::new(
            deps.sts,
            deps.clock,
            CacheSettings {
                offset: config.role_cache_offset,
                rate_limit: config.sts_rate_limit,
                ..CacheSettings::default()
            },
        ),
        IssuerSettings {
            default_role: config.default_role.clone(),
            session_name: config.role_session_name.clone(),
            session_tags: config.role_session_tags,
            session_duration: config.role_session_duration,
            policy: config.roles.clone(),
        },
    );
    Services {
        attest: Attestor::new(deps.lookup, deps.kernel, config.container_lookup_timeout),
        issuer: Arc::new(issuer),
        audit: crate::audit::Audit::default(),
        forwarder: Forwarder {
            upstream: deps.upstream,
            policy: config.passthrough.clone(),
            body_timeout: config.limits.body_timeout,
            budget: crate::limits::BodyBudget::default(),
        },
        tokens: crate::imdsv2::TokenKeys::ephemeral(config.token_key.rotation),
        imdsv2_required: config.imdsv2_required,
        container: crate::server::handlers::container::Settings {
            authorization_required: config.container_endpoint.authorization_required,
        },
        container_imds: config.container_endpoint.imds,
        limits: config.limits.clone(),
        request_rate: (config.limits.rate > 0)
            .then(|| crate::limits::RequestRate::new(config.limits.rate, config.limits.burst)),
        proxy_metrics: None,
        copied_label_names: config.telemetry.copied_labels().names(),
        request_log: config.request_log,
    }
}

/// The running agent: the services of the metadata port, what readiness checks, and the
/// background work started with them.
#[derive(Debug)]
pub struct App {
    /// What the metadata port serves.
    pub services: Arc<Services>,
    /// What `/readyz` checks.
    pub readiness: Readiness,
}

impl App {
    /// Builds the real components: the container index (following Docker's events), the AWS
    /// SDK clients, the upstream; `kernel` is the eBPF redirect's connection records in eBPF
    /// mode; `exporters` the metrics sinks. Starts the index, the credential prefetcher and
    /// refresh-ahead, token key rotation and the state gauges.
    ///
    /// Fails (naming the variable) when `AUDIT_LOG_FILE` or `TOKEN_KEY_FILE` cannot be used.
    pub async fn build(
        config: &Config,
        kernel: Option<Arc<dyn KernelIdentity>>,
        exporters: &Exporters,
    ) -> Result<App, StartupError> {
        let audit =
            crate::audit::Audit::open(config.audit_log_file.as_deref()).map_err(|source| {
                StartupError::AuditLog {
                    path: config.audit_log_file.clone().unwrap_or_default(),
                    source,
                }
            })?;
        let tokens = open_token_keys(config)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let aws = match &config.sts {
            StsConfig::Aws => AwsClients::sdk(config).await,
            StsConfig::Builtin { account_id } => {
                AwsClients::builtin(config, account_id, clock.clone())
            }
        };
        let upstream: Arc<dyn Upstream> = match &config.upstream {
            UpstreamConfig::Url(base) => Arc::new(HttpUpstream::new(
                base.clone(),
                config.upstream_connect_timeout,
                config.upstream_timeout,
            )),
            UpstreamConfig::Builtin(values) => Arc::new(Emulator::new(values.clone())),
        };
        // eBPF mode: the index also maps cgroup ids to containers (the kernel's records name
        // cgroups).
        let cgroups = match (&config.intercept, &kernel) {
            (crate::config::Intercept::Ebpf(_), Some(kernel)) => {
                let parents = kernel.container_parents();
                crate::identity::cgroup::detect_cgroup2_root()
                    .map(|root| Arc::new(CgroupResolver::new(root, parents)) as Arc<dyn CgroupTree>)
            }
            _ => None,
        };
        let (index, started) = ContainerIndex::new(
            DockerLookup::new(config.docker.clone())
                .with_copied_labels(config.telemetry.copied_labels()),
            cgroups,
        );
        tokio::spawn(index.clone().run(config.docker_reconcile_interval));
        let deps = Deps {
            lookup: index.clone(),
            sts: aws.sts,
            iam: aws.iam,
            upstream,
            clock,
            partition: aws.partition,
            kernel,
        };
        let mut services = services(config, deps);
        services.attest = services.attest.with_index(index.clone());
        services.audit = audit;
        services.tokens = tokens;
        if config.telemetry.metrics_on_proxy_port {
            services.proxy_metrics = exporters.prometheus.clone();
        }
        let services = Arc::new(services);
        if config.token_key.rotation.is_some() {
            tokio::spawn(rotate_token_key(services.clone()));
        }
        if config.credential_prefetch {
            tokio::spawn(crate::roles::refresh::prefetch(
                services.issuer.clone(),
                started,
            ));
            tokio::spawn(crate::roles::refresh::refresh_ahead(
                services.issuer.clone(),
                index.clone(),
            ));
        }
        spawn_state_gauges(index.clone(), services.issuer.clone());
        Ok(App {
            services,
            readiness: Readiness {
                index: Some(index),
                aws_credentials: aws.credentials,
                builtin_sts: matches!(config.sts, StsConfig::Builtin { .. }),
            },
        })
    }
}

/// Keeps the state gauges current for the push sinks.
fn spawn_state_gauges(index: Arc<ContainerIndex>, issuer: Arc<Issuer>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            crate::metrics::state(
                Some(index.len()),
                Some(index.is_synced()),
                issuer.cache().entry_count().await,
            );
        }
    });
}

/// The IMDSv2 token keys of `TOKEN_KEY_FILE`: read, or created on first start. Fails (naming
/// the variable and the file) when the file cannot be used; never falls back to a fresh key,
/// which would cost every client holding a token a 401.
fn open_token_keys(config: &Config) -> Result<crate::imdsv2::TokenKeys, StartupError> {
    use crate::imdsv2::{KeyFileState, TokenKeys};
    let rotation = config.token_key.rotation;
    let Some(path) = &config.token_key.file else {
        tracing::warn!(
            "TOKEN_KEY_FILE=none: the IMDSv2 token key lives in memory only; every token a \
             client holds gets 401 after the agent restarts"
        );
        return Ok(TokenKeys::ephemeral(rotation));
    };
    let (keys, state) = TokenKeys::open_file(path, rotation, std::time::SystemTime::now())
        .map_err(|source| StartupError::TokenKeyFile {
            path: path.clone(),
            source,
        })?;
    match state {
        KeyFileState::Created => tracing::info!(
            token_key_file = %path.display(),
            "IMDSv2 token key created"
        ),
        KeyFileState::Loaded { created, previous } => tracing::info!(
            token_key_file = %path.display(),
            key_created = %crate::clock::format_time(created),
            previous_key_valid = previous,
            "IMDSv2 token key loaded: tokens from before the restart stay valid"
        ),
    }
    Ok(keys)
}

/// Replaces the IMDSv2 token key every `TOKEN_KEY_ROTATION`.
async fn rotate_token_key(state: Arc<Services>) {
    let mut tick = tokio::time::interval(crate::imdsv2::ROTATION_CHECK);
    loop {
        tick.tick().await;
        match state.tokens.rotate_if_due(std::time::SystemTime::now()) {
            Ok(false) => {}
            Ok(true) => tracing::info!(
                token_key_file = %state
                    .tokens
                    .file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none".into()),
                "IMDSv2 token key rotated: tokens sealed with the previous key stay valid until \
                 they expire"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                token_key_file = %state
                    .tokens
                    .file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "cannot rotate the IMDSv2 token key: the current key stays in use; retrying in a minute"
            ),
        }
    }
}

/// What stands behind the STS and IAM seams.
struct AwsClients {
    sts: Arc<dyn AssumeRole>,
    iam: Arc<dyn GetRole>,
    partition: Partition,
    /// The agent's own credentials (`None` for the built-in STS, which needs none).
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
}

impl AwsClients {
    /// The AWS SDK's STS and IAM clients.
    async fn sdk(config: &Config) -> AwsClients {
        let sdk = aws_sdk_config(config).await;
        let region = sdk
            .region()
            .map(|r| r.as_ref().to_string())
            .unwrap_or_else(|| "us-east-1".into());
        tracing::info!(region = %region, "AWS clients configured");
        AwsClients {
            // Retries happen in the credential cache, each attempt under STS_RATE_LIMIT.
            sts: Arc::new(SdkSts::new(aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&sdk)
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .build(),
            ))),
            iam: Arc::new(SdkIam::new(aws_sdk_iam::Client::new(&sdk))),
            partition: Partition::for_region(&region),
            credentials: sdk.credentials_provider(),
        }
    }

    /// The built-in STS (`STS=builtin`). No SDK configuration is loaded: its credential and
    /// region providers would look for credentials and a region the agent does not need (the
    /// metadata service among them), and nothing here may reach out.
    fn builtin(config: &Config, account: &AccountId, clock: Arc<dyn Clock>) -> AwsClients {
        let region = match (&config.aws_region, &config.upstream) {
            (Some(region), _) => region.clone(),
            (None, UpstreamConfig::Builtin(values)) => values.region.clone(),
            (None, UpstreamConfig::Url(_)) => "us-east-1".into(),
        };
        tracing::warn!(
            account_id = account.as_str(),
            region = %region,
            "STS=builtin: containers get FAKE credentials, issued by the agent itself; \
             no AWS service accepts them"
        );
        if let UpstreamConfig::Url(url) = &config.upstream {
            tracing::warn!(
                metadata_url = %url,
                "STS=builtin beside a metadata service that is not the built-in one \
                 (ACKNOWLEDGE_FAKE_CREDENTIALS=true): containers here get fake credentials, \
                 not their roles'"
            );
        }
        let partition = Partition::for_region(&region);
        let sts = Arc::new(BuiltinSts::new(partition.clone(), account.clone(), clock));
        AwsClients {
            sts: sts.clone(),
            iam: sts,
            partition,
            credentials: None,
        }
    }
}

/// The SDK configuration for the agent's own STS and IAM calls.
///
/// The agent's own metadata lookups (its region and, on EC2, its credentials) go to
/// `METADATA_URL`, never to a hard-coded address; with `METADATA_URL=builtin` they are not
/// made at all, and the region defaults to `us-east-1`.
pub async fn aws_sdk_config(config: &Config) -> SdkConfig {
    let imds = match &config.upstream {
        UpstreamConfig::Url(base) => Some(
            aws_config::imds::Client::builder()
                .endpoint(base.to_string())
                .expect("METADATA_URL was validated as an http URL")
                .build(),
        ),
        UpstreamConfig::Builtin(_) => None,
    };

    let region = match &config.aws_region {
        Some(r) => Some(Region::new(r.clone())),
        None => {
            let mut chain = RegionProviderChain::first_try(
                aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
            )
            .or_else(aws_config::profile::ProfileFileRegionProvider::new());
            if let Some(imds) = &imds {
                chain = chain.or_else(
                    aws_config::imds::region::ImdsRegionProvider::builder()
                        .imds_client(imds.clone())
                        .build(),
                );
            }
            chain.region().await
        }
    };
    let region = region.unwrap_or_else(|| {
        if imds.is_some() {
            tracing::warn!("no AWS region found (AWS_REGION, profile, metadata); using us-east-1");
        }
        Region::new("us-east-1")
    });

    let loader = aws_config::defaults(BehaviorVersion::latest()).region(region.clone());
    let loader = match imds {
        Some(imds) => loader.credentials_provider(
            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .region(region)
                .imds_client(imds)
                .build()
                .await,
        ),
        None => {
            let provider_config = ProviderConfig::default().with_region(Some(region));
            loader.credentials_provider(
                CredentialsProviderChain::first_try(
                    "Environment",
                    aws_config::environment::credentials::EnvironmentVariableCredentialsProvider::new(),
                )
                .or_else(
                    "Profile",
                    aws_config::profile::ProfileFileCredentialsProvider::builder()
                        .configure(&provider_config)
                        .build(),
                )
                .or_else(
                    "WebIdentityToken",
                    aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                        .configure(&provider_config)
                        .build(),
                )
                .or_else(
                    "EcsContainer",
                    aws_config::ecs::EcsCredentialsProvider::builder()
                        .configure(&provider_config)
                        .build(),
                ),
            )
        }
    };
    loader.load().await
}
