//! The command line and environment as given: every setting a flag and an environment
//! variable (the flag wins), each a string here so that validation can name the variable.

use std::collections::HashMap;

use clap::{CommandFactory, FromArgMatches, Parser};

use super::DEFAULT_REQUEST_RATE;

/// The raw settings as given on the command line or in the environment.
///
/// Everything is a string here so that validation can name the variable in its message.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "metadataproxy",
    version,
    args_override_self = true,
    about = "Per-container AWS IAM roles for Docker hosts: an EC2 instance metadata proxy",
    long_about = "Answers the EC2 metadata credential routes for each Docker container with STS \
credentials for the role in its IAM_ROLE variable, and forwards every other metadata request \
to the real service.\n\nEvery option is also read from the environment variable shown beside it; \
a flag wins over the variable."
)]
pub struct Args {
    /// Ask the running agent's admin listener (ADMIN_ADDR) whether it is ready, exit 0 if so,
    /// 1 if not: for container health checks in images without a shell or curl.
    #[arg(long)]
    pub healthcheck: bool,

    /// A maintenance command instead of the agent (`ebpf detach`, `iptables remove`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value = "8000")]
    pub port: String,

    /// Port of the container credentials endpoint (containers reach it at 169.254.170.2:80,
    /// redirected like the metadata address), on the same address as the proxy; `off`: not
    /// served, and 169.254.170.2 is never intercepted.
    #[arg(long, env = "CONTAINER_CREDENTIALS_PORT", default_value = "8002")]
    pub container_credentials_port: String,

    /// Container credentials endpoint: `optional` (a container that sets
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN must send it, others are served without) or
    /// `required` (containers without AWS_CONTAINER_AUTHORIZATION_TOKEN get 403).
    #[arg(long, env = "CONTAINER_AUTHORIZATION", default_value = "optional")]
    pub container_authorization: String,

    /// The instance metadata service for containers: `on`, or `off` (every request from a
    /// container to 169.254.169.254 gets 403, credentials and passthrough alike: containers get
    /// credentials from the container credentials endpoint only).
    #[arg(long, env = "CONTAINER_IMDS", default_value = "on")]
    pub container_imds: String,

    /// Upstream metadata service, or `builtin` for an emulated one (for hosts not on EC2).
    /// The agent's own AWS SDK metadata lookups use it too.
    #[arg(long, env = "METADATA_URL", default_value = "http://169.254.169.254")]
    pub metadata_url: String,

    /// Connect timeout for the upstream metadata service (Go duration, e.g. 1s, 500ms).
    #[arg(long, env = "METADATA_CONNECT_TIMEOUT", default_value = "1s")]
    pub metadata_connect_timeout: String,

    /// Total timeout of one upstream request, connect included (Go duration).
    #[arg(long, env = "METADATA_TIMEOUT", default_value = "5s")]
    pub metadata_timeout: String,

    /// How container metadata traffic reaches the agent: `none` (the operator installs the
    /// iptables rules, see docs/deployment.md), `iptables` (the agent installs and removes its own
    /// netfilter rules) or `ebpf` (a kernel program redirects containers' connects and tags
    /// them with their cgroup).
    #[arg(long, env = "INTERCEPT", default_value = "none")]
    pub intercept: String,

    /// iptables mode: comma list of the interfaces whose metadata traffic is redirected; a
    /// trailing `+` (or `*`) matches a prefix, as in iptables.
    #[arg(long, env = "IPTABLES_INTERFACES", default_value = "docker0,br-+")]
    pub iptables_interfaces: String,

    /// iptables mode: on a clean shutdown, `remove` the agent's rules (containers reach the
    /// real service again) or `keep` them (containers' metadata connections are refused until
    /// the agent is back: fail closed).
    #[arg(long, env = "IPTABLES_ON_SHUTDOWN", default_value = "remove")]
    pub iptables_on_shutdown: String,

    /// eBPF mode: the cgroup2 directory the programs attach to. Default: the cgroup2 mount
    /// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
    #[arg(long, env = "EBPF_CGROUP_PATH")]
    pub ebpf_cgroup_path: Option<String>,

    /// eBPF mode: bpffs directory where programs and maps are pinned, so containers stay
    /// redirected (fail closed) while the agent is down.
    #[arg(
        long,
        env = "EBPF_PIN_PATH",
        default_value = "/sys/fs/bpf/metadataproxy"
    )]
    pub ebpf_pin_path: String,

    /// eBPF mode: the IPv4 address containers' metadata connects are redirected to; the agent
    /// must listen on it. Default: the address of the docker0 bridge.
    #[arg(long, env = "EBPF_REDIRECT_ADDR")]
    pub ebpf_redirect_addr: Option<String>,

    /// eBPF mode: comma list of cgroup directories (relative to the cgroup2 root) whose
    /// sub-cgroups are redirected, or `auto`: from Docker's cgroup driver and the running
    /// containers' cgroups (`docker` for cgroupfs; `system.slice` and `docker.slice` for
    /// systemd, where host services in the same slice keep the instance's metadata).
    #[arg(long, env = "EBPF_CONTAINER_CGROUPS", default_value = "auto")]
    pub ebpf_container_cgroups: String,

    /// eBPF mode: on a clean shutdown, `keep` the programs attached (containers' metadata
    /// connects are refused until the agent is back) or `detach` them (containers reach the
    /// real service again).
    #[arg(long, env = "EBPF_ON_SHUTDOWN", default_value = "keep")]
    pub ebpf_on_shutdown: String,

    /// Role for containers without IAM_ROLE (any role format). Unset: such containers get none.
    #[arg(long, env = "DEFAULT_ROLE")]
    pub default_role: Option<String>,

    /// Account for bare role names. Unset: bare names are resolved with iam:GetRole.
    #[arg(long, env = "DEFAULT_ACCOUNT_ID")]
    pub default_account_id: Option<String>,

    /// Log level: debug, info, warning, error, fatal, panic.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: text, json or gelf (one GELF 1.1 JSON object per line on stdout).
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Which requests get a log line: `all`, `errors` (status 400 and above, and credential
    /// issuances) or `none`.
    #[arg(long, env = "REQUEST_LOG", default_value = "all")]
    pub request_log: String,

    /// Docker daemon: unix:///path or tcp://host:port. Default: DOCKER_HOST, else
    /// unix:///var/run/docker.sock.
    #[arg(long, env = "DOCKER_URL")]
    pub docker_url: Option<String>,

    /// Docker daemon, as the Docker CLI reads it; used when DOCKER_URL is unset.
    #[arg(long, env = "DOCKER_HOST", hide = true)]
    pub docker_host: Option<String>,

    /// How long to keep looking for the container behind an IP on credential routes (a
    /// container that has just started may not be listed yet). Go duration.
    #[arg(long, env = "CONTAINER_LOOKUP_TIMEOUT", default_value = "5s")]
    pub container_lookup_timeout: String,

    /// How often the container index is rebuilt from a full Docker listing, as a safety net
    /// beside Docker's event stream (Go duration).
    #[arg(long, env = "DOCKER_RECONCILE_INTERVAL", default_value = "60s")]
    pub docker_reconcile_interval: String,

    /// Fetch a container's credentials when it starts, before it asks (true or false).
    #[arg(long, env = "CREDENTIAL_PREFETCH", default_value = "true")]
    pub credential_prefetch: String,

    /// Refresh credentials this long before they expire (Go duration). Must be shorter than
    /// the session duration.
    #[arg(long, env = "ROLE_CACHE_OFFSET", default_value = "15m")]
    pub role_cache_offset: String,

    /// Session name sent with sts:AssumeRole: 2-64 characters of [A-Za-z0-9+=,.@_-], with
    /// optional {container_name}, {container_id} and {image} placeholders (other characters
    /// in their values become `-`).
    #[arg(long, env = "ROLE_SESSION_NAME", default_value = "go-metadataproxy")]
    pub role_session_name: String,

    /// Tag each session with the container's id, name and image (ContainerId, ContainerName,
    /// Image), for CloudTrail; the roles' trust policies must allow sts:TagSession.
    #[arg(long, env = "ROLE_SESSION_TAGS", default_value = "false")]
    pub role_session_tags: String,

    /// At most this many sts:AssumeRole calls per second; further calls wait their turn
    /// (0: no limit).
    #[arg(long, env = "STS_RATE_LIMIT", default_value = "100")]
    pub sts_rate_limit: String,

    /// Duration of the assumed-role sessions (Go duration, 15m to 12h).
    #[arg(long, env = "ROLE_SESSION_DURATION", default_value = "1h")]
    pub role_session_duration: String,

    /// AWS region of the agent's STS and IAM clients. Unset: the SDK's usual sources, then the
    /// metadata service (us-east-1 with METADATA_URL=builtin).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// Where role credentials come from: `aws` (sts:AssumeRole and iam:GetRole through the AWS
    /// SDK, its credentials, region and endpoints from the SDK's usual sources: AWS_PROFILE,
    /// AWS_ENDPOINT_URL_STS, ...) or `builtin` (fake credentials issued by the agent itself,
    /// for machines without an AWS account; no AWS service accepts them).
    #[arg(long, env = "STS", default_value = "aws")]
    pub sts: String,

    /// Confirms STS=builtin on a host whose METADATA_URL is not builtin (most likely an EC2
    /// instance, where fake credentials would be a mistake): true or false.
    #[arg(long, env = "ACKNOWLEDGE_FAKE_CREDENTIALS", default_value = "false")]
    pub acknowledge_fake_credentials: String,

    /// Comma list of container labels copied, lower-cased, into metric labels (statsd family,
    /// New Relic; Prometheus with PROMETHEUS_COPY_LABELS) and request log fields, as
    /// `container<LABEL_SEPARATOR><label>`.
    #[arg(long, env = "COPY_DOCKER_LABELS")]
    pub copy_docker_labels: Option<String>,

    /// Comma list of container environment keys copied like COPY_DOCKER_LABELS.
    #[arg(long, env = "COPY_DOCKER_ENV")]
    pub copy_docker_env: Option<String>,

    /// Separator between `container` and the copied key in the label name.
    #[arg(long, env = "LABEL_SEPARATOR", default_value = "_")]
    pub label_separator: String,

    /// statsd sink, host:port (UDP; label values folded into the metric name).
    #[arg(long, env = "STATSD_ADDR")]
    pub statsd_addr: Option<String>,

    /// statsite sink, host:port (UDP; label values folded into the metric name).
    #[arg(long, env = "STATSITE_ADDR")]
    pub statsite_addr: Option<String>,

    /// DogStatsD sink, host:port (UDP) or unix:///path (the agent's socket); labels as tags.
    #[arg(long, env = "DATADOG_ADDR")]
    pub datadog_addr: Option<String>,

    /// How often the statsd-family sinks are sent what was recorded (Go duration).
    #[arg(long, env = "METRICS_FLUSH_INTERVAL", default_value = "1s")]
    pub metrics_flush_interval: String,

    /// Prometheus exposition at the admin listener's /metrics.
    #[arg(long, env = "ENABLE_PROMETHEUS")]
    pub enable_prometheus: Option<String>,

    /// Also put the COPY_DOCKER_* labels on Prometheus series (one series per distinct value:
    /// only for low-cardinality labels).
    #[arg(long, env = "PROMETHEUS_COPY_LABELS", default_value = "false")]
    pub prometheus_copy_labels: String,

    /// Add `request_path` and `remote_addr` to request metrics on the statsd family and New
    /// Relic (never on Prometheus): one series per path and caller.
    #[arg(long, env = "METRICS_UNBOUNDED_LABELS", default_value = "false")]
    pub metrics_unbounded_labels: String,

    /// New Relic application name (needs NEWRELIC_LICENSE).
    #[arg(long, env = "NEWRELIC_APP_NAME")]
    pub newrelic_app_name: Option<String>,

    /// New Relic license (ingest) key (needs NEWRELIC_APP_NAME).
    #[arg(long, env = "NEWRELIC_LICENSE", hide_env_values = true)]
    pub newrelic_license: Option<String>,

    /// New Relic Metric API endpoint (EU: https://metric-api.eu.newrelic.com/metric/v1).
    #[arg(
        long,
        env = "NEWRELIC_ENDPOINT",
        default_value = "https://metric-api.newrelic.com/metric/v1"
    )]
    pub newrelic_endpoint: String,

    /// How often metrics are sent to New Relic (Go duration).
    #[arg(long, env = "NEWRELIC_FLUSH_INTERVAL", default_value = "10s")]
    pub newrelic_flush_interval: String,

    /// Admin listener (/metrics, /healthz, /readyz), ip:port; `off` disables it.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:8001")]
    pub admin_addr: String,

    /// Also serve /metrics on the proxy port, as go-metadataproxy did (containers can read it).
    #[arg(long, env = "METRICS_ON_PROXY_PORT", default_value = "false")]
    pub metrics_on_proxy_port: String,

    /// IMDSv2 tokens: `optional` (requests without a token are served, as IMDSv1) or
    /// `required` (every request but the token PUT needs a valid token, else 401).
    #[arg(long, env = "IMDSV2", default_value = "optional")]
    pub imdsv2: String,

    /// File keeping the IMDSv2 token key across restarts (created, mode 0600, on first
    /// start); `none`: a key in memory only, so every token a client holds gets 401 after a
    /// restart. Default: /var/lib/metadataproxy/token.key as root, else
    /// $XDG_STATE_HOME (or ~/.local/state)/metadataproxy/token.key.
    #[arg(long, env = "TOKEN_KEY_FILE")]
    pub token_key_file: Option<String>,

    /// Replace the IMDSv2 token key this often (Go duration, at least 6h: tokens sealed with
    /// the key before stay valid until they expire); 0: never.
    #[arg(long, env = "TOKEN_KEY_ROTATION", default_value = "24h")]
    pub token_key_rotation: String,

    /// Passthrough paths forwarded: comma list of patterns after the API version (`*`, `?`
    /// within a segment, `**` any segments; a pattern covers its subtree).
    #[arg(long, env = "PASSTHROUGH_ALLOW", default_value = crate::policy::DEFAULT_ALLOW)]
    pub passthrough_allow: String,

    /// Passthrough paths refused (404), same patterns; deny wins over allow. Empty: none.
    #[arg(long, env = "PASSTHROUGH_DENY", default_value = crate::policy::DEFAULT_DENY)]
    pub passthrough_deny: String,

    /// Roles every container may assume: comma list of role ARN patterns (`*`, `?`). Unset,
    /// with no ROLE_POLICY_FILE: any role.
    #[arg(long, env = "ALLOWED_ROLES")]
    pub allowed_roles: Option<String>,

    /// JSON role policy: {"rules": [{"roles": [ARN patterns], "images": [patterns],
    /// "labels": {"key": "value"}}]}; a role is allowed when a rule (or ALLOWED_ROLES) allows it.
    #[arg(long, env = "ROLE_POLICY_FILE")]
    pub role_policy_file: Option<String>,

    /// Append audit lines (one per credential issuance) to this file instead of stdout.
    #[arg(long, env = "AUDIT_LOG_FILE")]
    pub audit_log_file: Option<String>,

    /// Requests per second per caller (container) before 429; 0: no limit.
    #[arg(long, env = "REQUEST_RATE_LIMIT", default_value = DEFAULT_REQUEST_RATE)]
    pub request_rate_limit: String,

    /// Requests a caller may make at once above REQUEST_RATE_LIMIT; 0: as many as the rate;
    /// unset: twice the rate.
    #[arg(long, env = "REQUEST_RATE_BURST")]
    pub request_rate_burst: Option<String>,

    /// Largest request head (request line and headers) in bytes, 8192 to 1048576; past it, 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value = "16384")]
    pub max_header_bytes: String,

    /// Time a client has to send the request head (Go duration); past it, the connection closes.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: String,

    /// Time a client has to send the request body (Go duration); past it, 400.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s")]
    pub body_read_timeout: String,

    /// Open connections to the proxy port at most; more are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: String,

    /// Open connections from one peer address at most; 0: no per-address cap.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value = "256")]
    pub max_connections_per_ip: String,

    /// Refuse (400) requests whose Host is not the metadata service's (169.254.169.254,
    /// [fd00:ec2::254], instance-data): a defence against DNS rebinding.
    #[arg(long, env = "CHECK_HOST_HEADER", default_value = "false")]
    pub check_host_header: String,

    /// How long in-flight requests may run after SIGTERM/SIGINT (Go duration).
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,

    /// Emulated metadata (METADATA_URL=builtin): instance id.
    #[arg(
        long,
        env = "BUILTIN_INSTANCE_ID",
        default_value = "i-0123456789abcdef0"
    )]
    pub builtin_instance_id: String,

    /// Emulated metadata: AMI id.
    #[arg(long, env = "BUILTIN_AMI_ID", default_value = "ami-0123456789abcdef0")]
    pub builtin_ami_id: String,

    /// Emulated metadata: instance type.
    #[arg(long, env = "BUILTIN_INSTANCE_TYPE", default_value = "t3.micro")]
    pub builtin_instance_type: String,

    /// Emulated metadata: private IPv4 address.
    #[arg(long, env = "BUILTIN_LOCAL_IPV4", default_value = "10.0.0.10")]
    pub builtin_local_ipv4: String,

    /// Emulated metadata: MAC address.
    #[arg(long, env = "BUILTIN_MAC", default_value = "02:00:00:00:00:01")]
    pub builtin_mac: String,

    /// Emulated metadata: availability zone. Default: the region (AWS_REGION or us-east-1)
    /// followed by `a`.
    #[arg(long, env = "BUILTIN_AVAILABILITY_ZONE")]
    pub builtin_availability_zone: Option<String>,

    /// Emulated metadata: account id in the instance identity document; with STS=builtin,
    /// also the account of bare role names.
    #[arg(long, env = "BUILTIN_ACCOUNT_ID", default_value = "123456789012")]
    pub builtin_account_id: String,
}

/// Maintenance commands: each removes what an earlier agent left in the kernel (an agent of
/// another mode reports it at start and in `/readyz`), says what it removed or that there was
/// nothing, and exits 0; non-zero with the reason when it could not.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// eBPF mode's pinned programs and maps.
    Ebpf {
        #[command(subcommand)]
        /// What to do with them.
        action: EbpfCommand,
    },
    /// The agent's nf_tables table (`INTERCEPT=iptables`).
    Iptables {
        #[command(subcommand)]
        /// What to do with it.
        action: IptablesCommand,
    },
}

/// `metadataproxy ebpf ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EbpfCommand {
    /// Detach the programs pinned under the pin directory and remove the pins (links and
    /// maps). Containers' metadata connects are no longer redirected to an agent.
    Detach {
        /// The pin directory (a bpffs directory). Default: EBPF_PIN_PATH, else
        /// /sys/fs/bpf/metadataproxy.
        #[arg(long)]
        pin_path: Option<String>,
    },
}

/// `metadataproxy iptables ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IptablesCommand {
    /// Delete the agent's nf_tables tables (`ip metadataproxy` and `ip6 metadataproxy`),
    /// whoever left them.
    Remove,
}

impl Args {
    /// Parses `argv` (without the program name) with `vars` standing in for the environment:
    /// each variable is read as its flag, a flag in `argv` wins over its variable, variables
    /// that are no setting are ignored, and the process environment is not read. `main` reads
    /// the real environment with [`Parser::parse`]; tests and the fuzz target use this.
    pub fn parse_from_vars<'a>(
        argv: impl IntoIterator<Item = &'a str>,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Args, clap::Error> {
        let command = Args::command();
        let flag_of: HashMap<String, String> = command
            .get_arguments()
            .filter_map(|a| {
                let var = a.get_env()?.to_str()?.to_string();
                Some((var, a.get_long()?.to_string()))
            })
            .collect();
        let mut full = vec!["metadataproxy".to_string()];
        // First, so that a flag given in `argv` overrides it (`args_override_self`).
        full.extend(
            vars.into_iter()
                .filter_map(|(var, value)| Some(format!("--{}={value}", flag_of.get(var)?))),
        );
        full.extend(argv.into_iter().map(str::to_string));
        let matches = command
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(full)?;
        Args::from_arg_matches(&matches)
    }
}
