//! [`ContainerLookup`] on the Docker Engine API (bollard).
//!
//! Connects lazily, so the agent can start before the daemon, and negotiates the API version
//! (engines speaking an older API refuse clients that ask for a newer one).
//!
//! Also reads Docker's networks (their IPAM subnets and gateways), so that the index can tell
//! an address no container can have from one that a container may have.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use bollard::models::EventMessage;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions,
    ListNetworksOptions,
};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::cgroup::{container_parents, LayoutError, LayoutFacts};
use super::{Container, CopiedLabels, LookupError};

/// How to reach the Docker daemon (`DOCKER_URL`, `DOCKER_HOST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerUrl {
    /// A unix socket path.
    Unix(String),
    /// `host:port` over plain HTTP.
    Tcp(String),
}

impl fmt::Display for DockerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerUrl::Unix(p) => write!(f, "unix://{p}"),
            DockerUrl::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// How long eBPF start-up waits for the engine to say whether it is Podman (when it answers at
/// all: at boot, with no engine yet, the connection fails at once).
const ENGINE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Seconds bollard waits for one Docker API answer.
const DOCKER_TIMEOUT_SECS: u64 = 10;

/// Finds containers by listing and inspecting them through the Docker daemon.
#[derive(Debug)]
pub struct DockerLookup {
    url: DockerUrl,
    client: OnceCell<Docker>,
    copied: CopiedLabels,
}

impl DockerLookup {
    /// A lookup against the daemon at `url`; nothing is connected until first use.
    pub fn new(url: DockerUrl) -> Self {
        DockerLookup {
            url,
            client: OnceCell::new(),
            copied: CopiedLabels::default(),
        }
    }

    /// Also copies these Docker labels and environment keys into each container's telemetry
    /// labels.
    pub fn with_copied_labels(mut self, copied: CopiedLabels) -> Self {
        self.copied = copied;
        self
    }

    async fn client(&self) -> Result<&Docker, LookupError> {
        self.client
            .get_or_try_init(|| async {
                let docker = match &self.url {
                    DockerUrl::Unix(path) => Docker::connect_with_unix(
                        path,
                        DOCKER_TIMEOUT_SECS,
                        bollard::API_DEFAULT_VERSION,
                    ),
                    DockerUrl::Tcp(addr) => Docker::connect_with_http(
                        addr,
                        DOCKER_TIMEOUT_SECS,
                        bollard::API_DEFAULT_VERSION,
                    ),
                }
                .map_err(docker_error)?;
                docker.negotiate_version().await.map_err(docker_error)
            })
            .await
    }

    /// The running container with `ip` on any network: one list, then one inspect.
    pub async fn find(&self, ip: IpAddr) -> Result<Option<Container>, LookupError> {
        let docker = self.client().await?;
        let listed = docker
            .list_containers(None::<ListContainersOptions>)
            .await
            .map_err(docker_error)?;
        let mut ids: Vec<String> = listed
            .into_iter()
            .filter(|c| {
                let networks = c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref());
                networks.is_some_and(|nets| endpoint_ips(nets.values()).any(|a| a == ip))
            })
            .filter_map(|c| c.id)
            .collect();
        match ids.len() {
            0 => return Ok(None),
            1 => {}
            count => return Err(LookupError::Ambiguous { ip, count }),
        }
        let id = ids.pop().expect("one id");
        self.inspect(&id).await
    }

    /// The ids of the running containers.
    pub async fn running_ids(&self) -> Result<Vec<String>, LookupError> {
        let docker = self.client().await?;
        let listed = docker
            .list_containers(None::<ListContainersOptions>)
            .await
            .map_err(docker_error)?;
        Ok(listed.into_iter().filter_map(|c| c.id).collect())
    }

    /// Where the running containers' cgroups are, and Docker's cgroup driver: the facts eBPF
    /// mode settles its container parents on. A container whose process cannot be read (it
    /// just stopped) is left out.
    pub async fn layout_facts(&self) -> Result<LayoutFacts, LookupError> {
        let docker = self.client().await?;
        let info = docker.info().await.map_err(docker_error)?;
        let driver = info.cgroup_driver.map(|d| d.to_string());
        let mut containers = Vec::new();
        for id in self.running_ids().await? {
            let Ok(c) = docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            else {
                continue;
            };
            let pid = c.state.and_then(|s| s.pid).unwrap_or(0);
            let name = c.name.unwrap_or(id).trim_start_matches('/').to_string();
            let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
                continue;
            };
            if let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
                containers.push((name, path.to_string()));
            }
        }
        Ok(LayoutFacts {
            driver,
            systemd_init: false,
            containers,
            engine: None,
        })
    }

    /// The engine's name for itself when it is Podman: its API service lists the component
    /// `Podman Engine` in `/version`.
    pub async fn podman_engine(&self) -> Result<Option<String>, LookupError> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(docker_error)?;
        Ok(version
            .components
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .find(|n| n.contains("Podman")))
    }

    /// eBPF start-up: the directories whose descendants are redirected
    /// ([`container_parents`]), from Docker's facts when it answers within `wait`, else from
    /// the host alone (at boot Docker is not up yet; the defaults then cover every layout
    /// Docker uses by default).
    pub async fn settle_container_parents(
        &self,
        configured: Option<&[String]>,
        wait: std::time::Duration,
    ) -> Result<Vec<String>, LayoutError> {
        // Podman answers `/version` slowly (it asks its runtime and conmon for theirs: 1.5 s
        // here), and the client's version negotiation asks it too: the engine is asked with a
        // budget of its own, beside the facts.
        let (facts, engine) = tokio::join!(
            tokio::time::timeout(wait, self.layout_facts()),
            tokio::time::timeout(wait.max(ENGINE_WAIT), self.podman_engine()),
        );
        let mut facts = match facts {
            Ok(Ok(facts)) => facts,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "Docker not reachable: container cgroups from the host's layout alone");
                LayoutFacts::default()
            }
            Err(_) => {
                tracing::info!(
                    "Docker did not answer: container cgroups from the host's layout alone"
                );
                LayoutFacts::default()
            }
        };
        if let Ok(Ok(Some(engine))) = engine {
            facts.engine = Some(engine);
        }
        facts.systemd_init = std::path::Path::new("/run/systemd/system").is_dir();
        let parents = container_parents(configured, &facts)?;
        tracing::info!(
            cgroup_driver = facts.driver.as_deref().unwrap_or("unknown"),
            systemd_init = facts.systemd_init,
            running_containers = facts.containers.len(),
            container_parents = %parents.join(","),
            "container cgroups settled"
        );
        Ok(parents)
    }

    /// The container with this id, if it is running.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, LookupError> {
        let docker = self.client().await?;
        let info = match docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            // Gone between list and inspect: as if it had never been listed.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(docker_error(e)),
        };
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let pid = info
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        if !running {
            return Ok(None);
        }
        let ips: Vec<IpAddr> = info
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|nets| endpoint_ips(nets.values()).collect())
            .unwrap_or_default();
        let config = info.config.unwrap_or_default();
        let env = config.env.unwrap_or_default();
        let mut container = Container::from_env(
            info.id.unwrap_or_else(|| id.to_string()),
            info.name.unwrap_or_default(),
            config.image.unwrap_or_default(),
            env.iter().map(String::as_str),
        );
        container.ips = ips;
        container.pid = pid;
        let labels = config.labels.unwrap_or_default();
        container.labels = self.copied.extract(&labels, env.iter().map(String::as_str));
        container.docker_labels = std::sync::Arc::new(labels.into_iter().collect());
        Ok(Some(container))
    }

    /// Container and network events, from `since` (seconds since the epoch) on.
    ///
    /// Filtered by type only: the engines spell their actions differently (Podman's API finds
    /// nothing for an `event=die` filter, and names a removal `remove` where Docker says
    /// `destroy`), so the index picks the actions it acts on itself (`index::decode`).
    pub async fn events(
        &self,
        since: i64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<EventMessage, bollard::errors::Error>> + '_,
        LookupError,
    > {
        let docker = self.client().await?;
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&event_filters())
            .build();
        Ok(docker.events(Some(options)))
    }

    /// Every Docker network, with its subnets and gateways.
    pub async fn networks(&self) -> Result<Vec<DockerNetwork>, LookupError> {
        let docker = self.client().await?;
        let listed = docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(docker_error)?;
        let host = host_addresses();
        Ok(listed
            .into_iter()
            .filter_map(|n| DockerNetwork::from_api(n, &host))
            .collect())
    }

    /// The network with this id, if it exists.
    pub async fn network(&self, id: &str) -> Result<Option<DockerNetwork>, LookupError> {
        let docker = self.client().await?;
        match docker
            .inspect_network(id, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => Ok(DockerNetwork::from_api(n, &host_addresses())),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(docker_error(e)),
        }
    }
}

/// What the index asks of Docker; [`DockerLookup`] in the agent, a fake in tests.
pub(crate) trait DockerApi: Send + Sync + fmt::Debug {
    /// The running container with `ip` on any network (one list, one inspect).
    fn find(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>>;
    /// The container with this id, if it is running.
    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Container>, LookupError>>;
    /// The ids of the running containers.
    fn running_ids(&self) -> BoxFuture<'_, Result<Vec<String>, LookupError>>;
    /// Every network.
    fn networks(&self) -> BoxFuture<'_, Result<Vec<DockerNetwork>, LookupError>>;
    /// The network with this id, if it exists.
    fn network<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DockerNetwork>, LookupError>>;
    /// Container and network events from `since` (seconds since the epoch) on.
    #[allow(clippy::type_complexity)]
    fn events(
        &self,
        since: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'_, Result<EventMessage, LookupError>>, LookupError>>;
}

impl DockerApi for DockerLookup {
    fn find(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
        Box::pin(DockerLookup::find(self, ip))
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
        Box::pin(DockerLookup::inspect(self, id))
    }

    fn running_ids(&self) -> BoxFuture<'_, Result<Vec<String>, LookupError>> {
        Box::pin(DockerLookup::running_ids(self))
    }

    fn networks(&self) -> BoxFuture<'_, Result<Vec<DockerNetwork>, LookupError>> {
        Box::pin(DockerLookup::networks(self))
    }

    fn network<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DockerNetwork>, LookupError>> {
        Box::pin(DockerLookup::network(self, id))
    }

    fn events(
        &self,
        since: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'_, Result<EventMessage, LookupError>>, LookupError>> {
        Box::pin(async move {
            let events = DockerLookup::events(self, since).await?;
            Ok(events.map(|e| e.map_err(docker_error)).boxed())
        })
    }
}

/// What the index keeps of a Docker network: the address ranges its containers' addresses
/// come from, and its gateways (the host's side, never a container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerNetwork {
    /// Full network id.
    pub id: String,
    /// Its IPAM subnets, IPv4 and IPv6 (none for `host` and `none`).
    pub subnets: Vec<Subnet>,
    /// Its IPAM gateways.
    pub gateways: Vec<IpAddr>,
}

impl DockerNetwork {
    /// From Docker's description of the network and the host's interface addresses (`host`:
    /// interface name, address).
    fn from_api(n: bollard::models::Network, host: &[(String, IpAddr)]) -> Option<DockerNetwork> {
        let id = n.id?;
        let configs = n.ipam.and_then(|i| i.config).unwrap_or_default();
        let subnets: Vec<Subnet> = configs
            .iter()
            .filter_map(|c| c.subnet.as_deref())
            .filter_map(|s| match s.parse() {
                Ok(subnet) => Some(subnet),
                Err(e) => {
                    tracing::warn!(subnet = s, error = %e, "ignoring a Docker network subnet that does not parse");
                    None
                }
            })
            .collect();
        // A gateway is a bare address; tolerate the `addr/len` form as well.
        let mut gateways: Vec<IpAddr> = configs
            .iter()
            .filter_map(|c| c.gateway.as_deref())
            .filter_map(|g| g.split('/').next()?.parse().ok())
            .collect();
        // Some engines (20.10) leave the default bridge's gateway out of its IPAM
        // configuration; a bridge network's gateway is then its bridge's address on the host.
        if n.driver.as_deref() == Some("bridge") {
            let bridge = n
                .options
                .as_ref()
                .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
                .unwrap_or_else(|| format!("br-{}", &id[..id.len().min(12)]));
            let bare: Vec<Subnet> = subnets
                .iter()
                .copied()
                .filter(|s| !gateways.iter().any(|g| s.contains(*g)))
                .collect();
            gateways.extend(
                host.iter()
                    .filter(|(name, ip)| *name == bridge && bare.iter().any(|s| s.contains(*ip)))
                    .map(|(_, ip)| *ip),
            );
        }
        Some(DockerNetwork {
            id,
            subnets,
            gateways,
        })
    }
}

/// The host's interface addresses (interface name, address); none if they cannot be read.
fn host_addresses() -> Vec<(String, IpAddr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip = a
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))?;
            Some((ifa.interface_name, ip))
        })
        .collect()
}

/// An address range in CIDR form (`172.17.0.0/16`, `fd00:dead:beef::/48`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// Whether `ip` lies in this range (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Why a subnet did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// No `/` between address and prefix length.
    #[error("no prefix length")]
    NoPrefix,
    /// The address part is not an IP address.
    #[error("invalid address")]
    Address,
    /// The prefix length is not a number within the family's width.
    #[error("invalid prefix length")]
    Prefix,
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Subnet, SubnetError> {
        let (base, prefix) = s.split_once('/').ok_or(SubnetError::NoPrefix)?;
        let base: IpAddr = base.parse().map_err(|_| SubnetError::Address)?;
        let prefix: u8 = prefix.parse().map_err(|_| SubnetError::Prefix)?;
        let width = if base.is_ipv4() { 32 } else { 128 };
        if prefix > width {
            return Err(SubnetError::Prefix);
        }
        Ok(Subnet { base, prefix })
    }
}

fn endpoint_ips<'a>(
    endpoints: impl Iterator<Item = &'a bollard::models::EndpointSettings> + 'a,
) -> impl Iterator<Item = IpAddr> + 'a {
    endpoints.flat_map(|ep| {
        [&ep.ip_address, &ep.global_ipv6_address]
            .into_iter()
            .flatten()
            .filter_map(|a| a.parse::<IpAddr>().ok())
    })
}

/// The server-side filter of the event subscription: container and network events, any action.
fn event_filters() -> std::collections::HashMap<&'static str, Vec<&'static str>> {
    [("type", vec!["container", "network"])]
        .into_iter()
        .collect()
}

fn docker_error(e: bollard::errors::Error) -> LookupError {
    LookupError::Docker(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn events_are_filtered_by_type_only_never_by_action() {
        let filters = event_filters();
        assert_eq!(filters.len(), 1, "{filters:?}");
        assert_eq!(filters["type"], ["container", "network"]);
    }

    #[test]
    fn a_subnet_holds_its_addresses_only() {
        let v4: Subnet = "172.30.0.0/16".parse().unwrap();
        assert!(v4.contains(ip("172.30.0.0")));
        assert!(v4.contains(ip("172.30.255.255")));
        assert!(!v4.contains(ip("172.31.0.1")));
        assert!(
            !v4.contains(ip("::ffff:172.30.0.1")),
            "no match across families"
        );
        let v6: Subnet = "fd00:dead:beef::/48".parse().unwrap();
        assert!(v6.contains(ip("fd00:dead:beef:1::2")));
        assert!(!v6.contains(ip("fd00:dead:bef0::2")));
        assert!(!v6.contains(ip("172.30.0.1")));
        let odd: Subnet = "10.1.2.3/23".parse().unwrap();
        assert!(odd.contains(ip("10.1.3.200")));
        assert!(!odd.contains(ip("10.1.4.0")));
        let all: Subnet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let one: Subnet = "fd00::1/128".parse().unwrap();
        assert!(one.contains(ip("fd00::1")) && !one.contains(ip("fd00::2")));
    }

    #[test]
    fn malformed_subnets_are_refused() {
        assert_eq!("172.30.0.0".parse::<Subnet>(), Err(SubnetError::NoPrefix));
        assert_eq!("nope/16".parse::<Subnet>(), Err(SubnetError::Address));
        assert_eq!("172.30.0.0/33".parse::<Subnet>(), Err(SubnetError::Prefix));
        assert_eq!("fd00::/129".parse::<Subnet>(), Err(SubnetError::Prefix));
        assert_eq!("fd00::/x".parse::<Subnet>(), Err(SubnetError::Prefix));
    }

    #[test]
    fn a_network_gives_its_ipam_subnets_and_gateways() {
        use bollard::models::{Ipam, IpamConfig, Network};
        let n = Network {
            id: Some("net1".into()),
            ipam: Some(Ipam {
                config: Some(vec![
                    IpamConfig {
                        subnet: Some("172.30.5.0/24".into()),
                        gateway: Some("172.30.5.1".into()),
                        ..Default::default()
                    },
                    IpamConfig {
                        subnet: Some("fd00:5::/64".into()),
                        gateway: Some("fd00:5::1/64".into()),
                        ..Default::default()
                    },
                    IpamConfig {
                        subnet: Some("garbage".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let n = DockerNetwork::from_api(n, &[]).unwrap();
        assert_eq!(n.id, "net1");
        assert_eq!(
            n.subnets,
            [
                "172.30.5.0/24".parse().unwrap(),
                "fd00:5::/64".parse().unwrap()
            ]
        );
        assert_eq!(n.gateways, [ip("172.30.5.1"), ip("fd00:5::1")]);
        // `host` and `none` have no IPAM configuration.
        let host = DockerNetwork::from_api(
            Network {
                id: Some("host".into()),
                driver: Some("host".into()),
                ..Default::default()
            },
            &[("lo".into(), ip("127.0.0.1"))],
        )
        .unwrap();
        assert!(host.subnets.is_empty() && host.gateways.is_empty());
    }

    #[test]
    fn a_bridge_without_an_ipam_gateway_has_its_interface_address_as_gateway() {
        use bollard::models::{Ipam, IpamConfig, Network};
        let bridge = |id: &str, name: Option<&str>, gateway: Option<&str>| Network {
            id: Some(id.into()),
            driver: Some("bridge".into()),
            options: name.map(|n| {
                [("com.docker.network.bridge.name".to_string(), n.to_string())]
                    .into_iter()
                    .collect()
            }),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some("172.17.0.0/16".into()),
                    gateway: gateway.map(str::to_string),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let host = [
            ("docker0".to_string(), ip("172.17.0.1")),
            ("docker0".to_string(), ip("fe80::1")),
            ("br-0123456789ab".to_string(), ip("172.17.9.9")),
            ("eth0".to_string(), ip("172.17.5.5")),
        ];
        // Docker 20.10's default bridge.
        let default = DockerNetwork::from_api(bridge("x", Some("docker0"), None), &host).unwrap();
        assert_eq!(default.gateways, [ip("172.17.0.1")]);
        // A user-defined bridge is named after its id.
        let user = DockerNetwork::from_api(bridge("0123456789abcdef", None, None), &host).unwrap();
        assert_eq!(user.gateways, [ip("172.17.9.9")]);
        // With an IPAM gateway, the interface is not consulted.
        let given =
            DockerNetwork::from_api(bridge("x", Some("docker0"), Some("172.17.0.254")), &host)
                .unwrap();
        assert_eq!(given.gateways, [ip("172.17.0.254")]);
    }
}
