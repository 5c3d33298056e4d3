//! [`ContainerLookup`] on the Docker Engine API (bollard).
//!
//! Connects lazily, so the agent can start before the daemon, and negotiates the API version
//! (engines speaking an older API refuse clients that ask for a newer one).

use std::net::IpAddr;

use bollard::models::EventMessage;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptions,
};
use bollard::Docker;
use tokio::sync::OnceCell;

use super::{Container, CopiedLabels, LookupError};
use crate::config::DockerUrl;

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
        let labels = config.labels.unwrap_or_default();
        container.labels = self.copied.extract(&labels, env.iter().map(String::as_str));
        container.docker_labels = std::sync::Arc::new(labels.into_iter().collect());
        Ok(Some(container))
    }

    /// Container and network events, from `since` (seconds since the epoch) on.
    pub async fn events(
        &self,
        since: i64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<EventMessage, bollard::errors::Error>> + '_,
        LookupError,
    > {
        let docker = self.client().await?;
        let mut filters = std::collections::HashMap::new();
        filters.insert("type", vec!["container", "network"]);
        filters.insert(
            "event",
            vec!["start", "die", "destroy", "rename", "connect", "disconnect"],
        );
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        Ok(docker.events(Some(options)))
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

fn docker_error(e: bollard::errors::Error) -> LookupError {
    LookupError::Docker(e.to_string())
}
