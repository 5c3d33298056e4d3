//! The container index: every running container by IP and by id, kept current by Docker's
//! event stream, so that a lookup makes no Docker API call.
//!
//! - Start-up and every break of the event stream (dockerd restarted): a full sync (one network
//!   list, one container list, one inspect per container). The stream is opened `since` the
//!   sync began, so nothing that happens during the sync is missed.
//! - The stream is filtered by type only, and the index picks its actions itself ([`decode`]),
//!   so that Docker's and Podman's spellings both work.
//! - `start`, `rename`, network `connect`/`disconnect`: the container is inspected again.
//!   `die`, `stop`, `destroy` (Docker), `remove` (Podman): it is removed, and its addresses
//!   with it, so an address that moves to a new container maps to the new one only.
//! - Network `create` (the network is inspected) and `destroy`: the index keeps every Docker
//!   network's IPAM subnets and gateways. Podman sends no network events: a container
//!   inspected with an address outside every known network makes the index list them again.
//! - A periodic reconcile (full sync) is the safety net.
//! - A miss (a lookup that races a start) falls back to a direct Docker lookup, whose answer is
//!   added to the index: never a wrong answer, never a wait for the next event.
//! - While dockerd is down, containers that kept running are still answered from the index.
//!
//! What a miss costs, so that callers that are no container cannot load Docker:
//!
//! - An address outside every Docker network's subnets, or equal to a network's gateway (the
//!   host's side of a bridge), is no container: `by_ip` answers `None` at once, with no Docker
//!   call, and [`ContainerLookup::may_be_container`] is false for it (handlers then skip the
//!   retry window). Until the first network list succeeds, every address may be a container.
//! - Any other address that misses the index costs at most one direct Docker lookup per
//!   [`NEGATIVE_WINDOW`]: the answer (not found, or Docker's error) is remembered for that
//!   long, for at most [`NEGATIVE_CAPACITY`] addresses, and concurrent misses for one address
//!   share one lookup. The index is consulted first, so a container that starts within the
//!   window is found as soon as its `start` event is applied.
//!
//! eBPF mode (the index is given a [`CgroupTree`]): cgroup id → container, so that a
//! connection's cgroup names its container in O(1).
//!
//! - Each container's own cgroup id is recorded when it is indexed (full sync, events, direct
//!   lookups): from its main process's `/proc/<pid>/cgroup` (any layout; the path must name the
//!   container), else from the driver layouts under the container parents. It is removed with
//!   the container.
//! - A lookup tries the connection's cgroup, then its ancestors from the deepest up (the kernel
//!   records levels 1 to 6), so a process in a child cgroup of a container (`docker exec` in
//!   some setups, systemd inside it) is that container, as with the walk.
//! - A cgroup that no indexed container has (racing a start) is looked for by a walk of the
//!   container parents; what it finds is recorded if the container is indexed. A walk that
//!   finds nothing is remembered for [`NEGATIVE_WINDOW`] per cgroup, for at most
//!   [`NEGATIVE_CAPACITY`] cgroups, and concurrent misses for one cgroup share one walk. The
//!   map is consulted first, so a container indexed within the window is found at once.
//!
//! Newly seen containers are sent on a channel, for credential prefetch.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bollard::models::EventMessage;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::docker::{DockerApi, DockerNetwork};
use super::kernel::{record_cgroups, CgroupTree, ConnRecord};
use super::{Container, ContainerLookup, DockerLookup, LookupError};

/// How long the answer of a direct Docker lookup that found no container is reused for the same
/// address: at most one Docker call per address per window.
pub const NEGATIVE_WINDOW: Duration = Duration::from_secs(1);

/// How many addresses the negative cache remembers at most (a few hundred bytes each).
pub const NEGATIVE_CAPACITY: u64 = 16_384;

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<String, Container>,
    by_ip: HashMap<IpAddr, Vec<String>>,
    /// eBPF mode: cgroup id → container id, for indexed containers only.
    by_cgroup: HashMap<u64, String>,
    /// The keys of `by_cgroup` of each container (one, or two when a walk found another).
    cgroups_of: HashMap<String, Vec<u64>>,
}

impl Maps {
    /// Adds or replaces `c`, with its cgroup id if known.
    fn insert(&mut self, c: Container, cgroup: Option<u64>) {
        self.remove(&c.id);
        for ip in &c.ips {
            self.by_ip.entry(*ip).or_default().push(c.id.clone());
        }
        let id = c.id.clone();
        self.by_id.insert(c.id.clone(), c);
        if let Some(cgroup) = cgroup {
            self.learn(cgroup, &id);
        }
    }

    /// Records that `cgroup` is container `id`'s, if it is indexed.
    fn learn(&mut self, cgroup: u64, id: &str) -> bool {
        if !self.by_id.contains_key(id) {
            return false;
        }
        if let Some(previous) = self.by_cgroup.insert(cgroup, id.to_string()) {
            if previous != id {
                if let Some(ids) = self.cgroups_of.get_mut(&previous) {
                    ids.retain(|c| *c != cgroup);
                }
            }
        }
        let ids = self.cgroups_of.entry(id.to_string()).or_default();
        if !ids.contains(&cgroup) {
            ids.push(cgroup);
        }
        true
    }

    /// The container of the first of `cgroups` that one has.
    fn by_cgroups(&self, cgroups: &[u64]) -> Option<&str> {
        cgroups
            .iter()
            .find_map(|c| self.by_cgroup.get(c))
            .map(String::as_str)
    }

    fn remove(&mut self, id: &str) -> Option<Container> {
        for cgroup in self.cgroups_of.remove(id).unwrap_or_default() {
            self.by_cgroup.remove(&cgroup);
        }
        let old = self.by_id.remove(id)?;
        for ip in &old.ips {
            if let Some(ids) = self.by_ip.get_mut(ip) {
                ids.retain(|i| i != id);
                if ids.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        Some(old)
    }
}

/// Docker's networks: which addresses a container may have.
#[derive(Debug, Default)]
struct Networks {
    /// False until the first network list: then every address may be a container.
    known: bool,
    by_id: HashMap<String, DockerNetwork>,
}

impl Networks {
    /// Whether a container may have `ip`: inside some network's subnet and no gateway.
    fn may_hold(&self, ip: IpAddr) -> bool {
        if !self.known {
            return true;
        }
        let mut inside = false;
        for n in self.by_id.values() {
            if n.gateways.contains(&ip) {
                return false;
            }
            inside |= n.subnets.iter().any(|s| s.contains(ip));
        }
        inside
    }
}

/// A miss remembered by the negative cache.
#[derive(Debug, Clone)]
struct Miss {
    /// When Docker answered (tokio's clock, so that tests can pause it).
    at: tokio::time::Instant,
    /// Docker's error, or `None` for "no such container".
    error: Option<LookupError>,
}

impl Miss {
    fn is_fresh(&self) -> bool {
        self.at.elapsed() < NEGATIVE_WINDOW
    }

    fn answer(&self) -> Result<Option<Container>, LookupError> {
        match &self.error {
            None => Ok(None),
            Some(e) => Err(e.clone()),
        }
    }

    fn result_label(&self) -> &'static str {
        if self.error.is_some() {
            "error"
        } else {
            "not_found"
        }
    }
}

/// Counters for tests and telemetry.
#[derive(Debug, Default)]
pub struct IndexStats {
    /// Full syncs done.
    pub syncs: AtomicU64,
    /// Events applied.
    pub events: AtomicU64,
    /// Lookups that missed the index and asked Docker directly.
    pub direct_lookups: AtomicU64,
    /// Lookups that missed the index and were answered by the negative cache (or shared
    /// another lookup's Docker call) instead of asking Docker.
    pub suppressed_lookups: AtomicU64,
    /// Lookups answered "no container" because the address is outside every Docker network's
    /// subnets or is a gateway.
    pub outside_networks: AtomicU64,
    /// eBPF mode: cgroup lookups answered from the cgroup map.
    pub cgroup_hits: AtomicU64,
    /// eBPF mode: cgroup lookups that missed the map and walked the cgroup filesystem.
    pub cgroup_walks: AtomicU64,
    /// eBPF mode: cgroup lookups that missed the map and were answered by the negative cache
    /// (or shared another lookup's walk) instead of walking.
    pub suppressed_walks: AtomicU64,
}

/// Running containers by IP and id.
pub struct ContainerIndex {
    docker: Arc<dyn DockerApi>,
    maps: RwLock<Maps>,
    networks: RwLock<Networks>,
    negative: moka::future::Cache<IpAddr, Miss>,
    /// eBPF mode: the cgroup filesystem, for containers' cgroup ids and walks on a miss.
    cgroups: Option<Arc<dyn CgroupTree>>,
    /// cgroup ids that a walk did not find, and when (tokio's clock).
    cgroup_misses: moka::future::Cache<u64, tokio::time::Instant>,
    synced: AtomicBool,
    started: mpsc::UnboundedSender<Container>,
    /// Counters.
    pub stats: IndexStats,
}

impl fmt::Debug for ContainerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerIndex")
            .field("docker", &self.docker)
            .field("containers", &self.len())
            .field("synced", &self.is_synced())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ContainerIndex {
    /// An empty index over `docker`, and the channel on which newly seen containers arrive.
    /// With `cgroups` (eBPF mode) it also maps cgroup ids to containers.
    pub fn new(
        docker: DockerLookup,
        cgroups: Option<Arc<dyn CgroupTree>>,
    ) -> (Arc<ContainerIndex>, mpsc::UnboundedReceiver<Container>) {
        Self::over(Arc::new(docker), cgroups)
    }

    fn over(
        docker: Arc<dyn DockerApi>,
        cgroups: Option<Arc<dyn CgroupTree>>,
    ) -> (Arc<ContainerIndex>, mpsc::UnboundedReceiver<Container>) {
        let (started, rx) = mpsc::unbounded_channel();
        let index = Arc::new(ContainerIndex {
            docker,
            maps: RwLock::new(Maps::default()),
            networks: RwLock::new(Networks::default()),
            // Expiry is checked on tokio's clock (`Miss::is_fresh`); moka's own time to live
            // only bounds how long a stale entry occupies memory.
            negative: moka::future::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(NEGATIVE_WINDOW * 2)
                .build(),
            cgroups,
            cgroup_misses: moka::future::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(NEGATIVE_WINDOW * 2)
                .build(),
            synced: AtomicBool::new(false),
            started,
            stats: IndexStats::default(),
        });
        (index, rx)
    }

    /// Whether the index has synced and its event stream is up.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// How many containers the index holds.
    pub fn len(&self) -> usize {
        self.maps.read().expect("index lock").by_id.len()
    }

    /// Every container the index holds.
    pub fn containers(&self) -> Vec<Container> {
        self.maps
            .read()
            .expect("index lock")
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Whether the index holds no container.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces `c`, with its cgroup id in eBPF mode.
    async fn upsert(&self, c: Container, announce: bool) {
        let cgroup = self
            .cgroups_of(std::slice::from_ref(&c))
            .await
            .pop()
            .flatten();
        self.insert(c, cgroup, announce);
    }

    fn insert(&self, c: Container, cgroup: Option<u64>, announce: bool) {
        let is_new = {
            let mut maps = self.maps.write().expect("index lock");
            let is_new = !maps.by_id.contains_key(&c.id);
            maps.insert(c.clone(), cgroup);
            is_new
        };
        if announce && is_new {
            let _ = self.started.send(c);
        }
    }

    /// Each container's own cgroup id (eBPF mode; all `None` otherwise), read off the async
    /// runtime.
    async fn cgroups_of(&self, containers: &[Container]) -> Vec<Option<u64>> {
        let Some(tree) = self.cgroups.clone() else {
            return vec![None; containers.len()];
        };
        let containers = containers.to_vec();
        let n = containers.len();
        tokio::task::spawn_blocking(move || {
            containers
                .iter()
                .map(|c| {
                    let cgroup = tree.container_cgroup(c);
                    if cgroup.is_none() {
                        tracing::debug!(container_id = %c.id, pid = ?c.pid, "container index: no cgroup found for a container; its connections are found by a walk");
                    }
                    cgroup
                })
                .collect()
        })
        .await
        .unwrap_or_else(|_| vec![None; n])
    }

    /// Whether the index maps cgroup ids to containers (eBPF mode).
    pub fn maps_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// eBPF mode: the container whose cgroup made the connection of `record` (its cgroup, or
    /// the deepest ancestor that is a container's). The map first; on a miss one walk of the
    /// cgroup filesystem per cgroup per [`NEGATIVE_WINDOW`], shared by concurrent callers.
    pub async fn container_by_cgroup(&self, record: &ConnRecord) -> Option<String> {
        let cgroups = record_cgroups(record);
        if let Some(id) = self.lookup_cgroups(&cgroups) {
            self.stats.cgroup_hits.fetch_add(1, Ordering::Relaxed);
            return Some(id);
        }
        let tree = self.cgroups.clone()?;
        let key = record.cgroup_id;
        if let Some(at) = self.cgroup_misses.get(&key).await {
            if at.elapsed() < NEGATIVE_WINDOW {
                self.stats.suppressed_walks.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.cgroup_misses.invalidate(&key).await;
        }
        let walked = AtomicBool::new(false);
        let outcome = self
            .cgroup_misses
            .try_get_with(key, async {
                walked.store(true, Ordering::Relaxed);
                self.stats.cgroup_walks.fetch_add(1, Ordering::Relaxed);
                let ids = cgroups.clone();
                let found = tokio::task::spawn_blocking(move || tree.walk(&ids))
                    .await
                    .unwrap_or(None);
                match found {
                    Some((cgroup, id)) => {
                        let learned = self
                            .maps
                            .write()
                            .expect("index lock")
                            .learn(cgroup, &id);
                        tracing::debug!(cgroup_id = cgroup, container_id = %id, learned, "container index: a walk found a cgroup's container");
                        // Found: not remembered as a miss.
                        Err(id)
                    }
                    None => Ok(tokio::time::Instant::now()),
                }
            })
            .await;
        match outcome {
            Err(id) => Some(String::clone(&id)),
            Ok(_) => {
                if !walked.load(Ordering::Relaxed) {
                    self.stats.suppressed_walks.fetch_add(1, Ordering::Relaxed);
                }
                // Indexed while the walk ran (its start event)?
                self.lookup_cgroups(&cgroups)
            }
        }
    }

    fn lookup_cgroups(&self, cgroups: &[u64]) -> Option<String> {
        self.maps
            .read()
            .expect("index lock")
            .by_cgroups(cgroups)
            .map(str::to_string)
    }

    fn remove(&self, id: &str) {
        self.maps.write().expect("index lock").remove(id);
    }

    /// Replaces the index with what Docker lists now.
    pub async fn full_sync(&self) -> Result<(), LookupError> {
        let networks = self.docker.networks().await?;
        {
            let mut known = self.networks.write().expect("networks lock");
            known.by_id = networks.into_iter().map(|n| (n.id.clone(), n)).collect();
            known.known = true;
        }
        let ids = self.docker.running_ids().await?;
        let inspections: Vec<BoxFuture<'_, Result<Option<Container>, LookupError>>> = ids
            .into_iter()
            .map(|id| -> BoxFuture<'_, _> {
                Box::pin(async move { self.docker.inspect(&id).await })
            })
            .collect();
        let inspected: Vec<Result<Option<Container>, LookupError>> =
            futures_util::stream::iter(inspections)
                .buffer_unordered(8)
                .collect()
                .await;
        let mut running = Vec::new();
        for c in inspected {
            if let Some(c) = c? {
                running.push(c);
            }
        }
        let cgroups = self.cgroups_of(&running).await;
        let mut fresh = Maps::default();
        for (c, cgroup) in running.into_iter().zip(cgroups) {
            fresh.insert(c, cgroup);
        }
        let new: Vec<Container> = {
            let mut maps = self.maps.write().expect("index lock");
            let new = fresh
                .by_id
                .values()
                .filter(|c| !maps.by_id.contains_key(&c.id))
                .cloned()
                .collect();
            *maps = fresh;
            new
        };
        for c in new {
            let _ = self.started.send(c);
        }
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        crate::metrics::index_sync();
        Ok(())
    }

    async fn refresh(&self, id: &str, announce: bool) {
        match self.docker.inspect(id).await {
            Ok(Some(c)) => self.upsert(c, announce).await,
            Ok(None) => self.remove(id),
            Err(e) => {
                tracing::warn!(container_id = id, error = %e, "could not inspect a container after an event")
            }
        }
    }

    async fn refresh_network(&self, id: &str) {
        match self.docker.network(id).await {
            Ok(Some(n)) => {
                let mut networks = self.networks.write().expect("networks lock");
                networks.by_id.insert(n.id.clone(), n);
            }
            Ok(None) => self.remove_network(id),
            Err(e) => {
                tracing::warn!(network_id = id, error = %e, "could not inspect a network after its creation")
            }
        }
    }

    fn remove_network(&self, id: &str) {
        self.networks
            .write()
            .expect("networks lock")
            .by_id
            .remove(id);
    }

    /// Re-lists the networks (a container has an address outside every known one: Podman
    /// announces no network creation).
    async fn refresh_networks(&self) {
        match self.docker.networks().await {
            Ok(networks) => {
                let mut known = self.networks.write().expect("networks lock");
                known.by_id = networks.into_iter().map(|n| (n.id.clone(), n)).collect();
                known.known = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list the networks after an event")
            }
        }
    }

    async fn apply(&self, event: EventMessage) {
        let Some((action, update)) = decode(&event) else {
            return;
        };
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        crate::metrics::docker_event(action);
        match update {
            Update::Network(id) => self.refresh_network(&id).await,
            Update::NetworkGone(id) => self.remove_network(&id),
            Update::Remove(id) => self.remove(&id),
            // Docker announces the network connect before the start; whichever event first
            // finds the container running adds it, and announces it.
            Update::Refresh(id) => {
                self.refresh(&id, true).await;
                let outside = {
                    let maps = self.maps.read().expect("index lock");
                    let networks = self.networks.read().expect("networks lock");
                    maps.by_id
                        .get(&id)
                        .is_some_and(|c| c.ips.iter().any(|ip| !networks.may_hold(*ip)))
                };
                if outside {
                    self.refresh_networks().await;
                }
            }
        }
    }

    /// Keeps the index current until the task is dropped: sync, follow events, resync when
    /// the stream breaks, reconcile every `reconcile`.
    pub async fn run(self: Arc<Self>, reconcile: Duration) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if let Err(e) = self.full_sync().await {
                self.synced.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "container index: sync failed; answering from the last known state");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            let mut events = match self.docker.events(since).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "container index: cannot follow Docker events");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            self.synced.store(true, Ordering::SeqCst);
            tracing::info!(containers = self.len(), "container index synced");
            let mut tick = tokio::time::interval(reconcile);
            tick.tick().await;
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(event)) => self.apply(event).await,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "container index: Docker event stream broke; resyncing");
                            break;
                        }
                        None => {
                            tracing::warn!("container index: Docker event stream ended; resyncing");
                            break;
                        }
                    },
                    _ = tick.tick() => {
                        if let Err(e) = self.full_sync().await {
                            tracing::warn!(error = %e, "container index: reconcile failed");
                        }
                    }
                }
            }
            self.synced.store(false, Ordering::SeqCst);
        }
    }

    /// A direct Docker lookup for an address that missed the index, at most one per address
    /// per [`NEGATIVE_WINDOW`], shared by concurrent callers.
    async fn find_direct(&self, ip: IpAddr) -> Result<Option<Container>, LookupError> {
        if let Some(miss) = self.negative.get(&ip).await {
            if miss.is_fresh() {
                return self.suppressed(&miss);
            }
            self.negative.invalidate(&ip).await;
        }
        let asked = AtomicBool::new(false);
        let outcome = self
            .negative
            .try_get_with(ip, async {
                asked.store(true, Ordering::Relaxed);
                self.stats.direct_lookups.fetch_add(1, Ordering::Relaxed);
                let found = self.docker.find(ip).await;
                count_direct(&found);
                let error = match found {
                    Ok(Some(c)) => {
                        self.upsert(c.clone(), false).await;
                        // Found: not remembered; the index holds it now.
                        return Err(c);
                    }
                    Ok(None) => None,
                    Err(e) => Some(e),
                };
                Ok(Miss {
                    at: tokio::time::Instant::now(),
                    error,
                })
            })
            .await;
        match outcome {
            Err(found) => Ok(Some(Container::clone(&found))),
            Ok(miss) if asked.load(Ordering::Relaxed) => miss.answer(),
            Ok(miss) => self.suppressed(&miss),
        }
    }

    fn suppressed(&self, miss: &Miss) -> Result<Option<Container>, LookupError> {
        self.stats
            .suppressed_lookups
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::docker_lookup("negative_cache", miss.result_label());
        miss.answer()
    }

    fn may_hold(&self, ip: IpAddr) -> bool {
        self.networks.read().expect("networks lock").may_hold(ip)
    }

    fn lookup_ip(&self, ip: IpAddr) -> Result<Option<Container>, LookupError> {
        let maps = self.maps.read().expect("index lock");
        match maps.by_ip.get(&ip).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([id]) => Ok(maps.by_id.get(id).cloned()),
            Some(ids) => Err(LookupError::Ambiguous {
                ip,
                count: ids.len(),
            }),
        }
    }
}

/// What one engine event asks of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Update {
    /// Inspect this container again: it started, was renamed, or joined or left a network.
    Refresh(String),
    /// This container stopped or is gone: drop it, and its addresses with it.
    Remove(String),
    /// Inspect this network (created).
    Network(String),
    /// This network is gone.
    NetworkGone(String),
}

/// The action (one of the allow-list, for the metric) and the update an event asks for; `None`
/// for every other event. Docker and Podman speak one API with different words:
///
/// | | Docker | Podman |
/// |---|---|---|
/// | stopped | `die` (then `stop`) | `die` (`stop` with `podman stop`) |
/// | removed | `destroy` | `remove` |
/// | network connect/disconnect | network id in `Actor.ID`, container in `Attributes.container` | container in `Actor.ID`, no `Attributes.container` |
/// | network create/remove | `create`, `destroy` | no event (networks are re-listed when a container has an address outside every known one) |
///
/// A container's `create` has no address yet (it gets one at start); exec, health, `sync`,
/// `init`, `cleanup`, `kill` (a signal, not a stop) and the rest change nothing the index holds.
fn decode(event: &EventMessage) -> Option<(&'static str, Update)> {
    use bollard::models::EventMessageTypeEnum as Type;
    const CONTAINER: [&str; 6] = ["start", "rename", "die", "stop", "destroy", "remove"];
    const NETWORK: [&str; 5] = ["connect", "disconnect", "create", "destroy", "remove"];
    let actor = event.actor.as_ref()?;
    let action = event.action.as_deref()?;
    let attribute = |k: &str| actor.attributes.as_ref().and_then(|a| a.get(k)).cloned();
    match event.typ? {
        Type::CONTAINER => {
            let action = *CONTAINER.iter().find(|a| **a == action)?;
            let id = actor.id.clone().filter(|i| !i.is_empty())?;
            Some(match action {
                "start" | "rename" => (action, Update::Refresh(id)),
                _ => (action, Update::Remove(id)),
            })
        }
        Type::NETWORK => {
            let action = *NETWORK.iter().find(|a| **a == action)?;
            Some(match action {
                "connect" | "disconnect" => {
                    // Docker: the network in `Actor.ID`, the container in an attribute;
                    // Podman: the container in `Actor.ID`.
                    let id = attribute("container")
                        .or_else(|| actor.id.clone())
                        .filter(|i| !i.is_empty())?;
                    (action, Update::Refresh(id))
                }
                "create" => (action, Update::Network(actor.id.clone()?)),
                _ => (action, Update::NetworkGone(actor.id.clone()?)),
            })
        }
        _ => None,
    }
}

/// Counts a direct Docker lookup by its outcome.
fn count_direct(found: &Result<Option<Container>, LookupError>) {
    let result = match found {
        Ok(Some(_)) => "found",
        Ok(None) => "not_found",
        Err(_) => "error",
    };
    crate::metrics::docker_lookup("docker", result);
}

impl ContainerLookup for ContainerIndex {
    fn by_ip(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
        Box::pin(async move {
            if let Some(c) = self.lookup_ip(ip)? {
                crate::metrics::docker_lookup("index", "found");
                return Ok(Some(c));
            }
            if !self.may_hold(ip) {
                self.stats.outside_networks.fetch_add(1, Ordering::Relaxed);
                crate::metrics::docker_lookup("networks", "not_found");
                return Ok(None);
            }
            self.find_direct(ip).await
        })
    }

    fn by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
        Box::pin(async move {
            if let Some(c) = self.maps.read().expect("index lock").by_id.get(id).cloned() {
                crate::metrics::docker_lookup("index", "found");
                return Ok(Some(c));
            }
            self.stats.direct_lookups.fetch_add(1, Ordering::Relaxed);
            let found = self.docker.inspect(id).await;
            count_direct(&found);
            if let Ok(Some(c)) = &found {
                self.upsert(c.clone(), false).await;
            }
            found
        })
    }

    fn peek(&self, ip: IpAddr) -> Option<Container> {
        self.lookup_ip(ip).ok().flatten()
    }

    fn may_be_container(&self, ip: IpAddr) -> bool {
        !matches!(self.lookup_ip(ip), Ok(None)) || self.may_hold(ip)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use bollard::models::{EventActor, EventMessageTypeEnum};

    use super::*;
    use futures_util::stream::BoxStream;

    /// A Docker daemon in memory that counts the calls made to it.
    #[derive(Debug, Default)]
    struct FakeDocker {
        containers: Mutex<Vec<Container>>,
        networks: Mutex<Vec<DockerNetwork>>,
        finds: AtomicUsize,
        inspects: AtomicUsize,
        /// How long `find` takes (paused time in tests).
        find_delay: Duration,
        down: AtomicBool,
    }

    impl FakeDocker {
        fn running(&self, c: Container) {
            self.containers.lock().unwrap().push(c);
        }

        fn net(&self, id: &str, subnets: &[&str], gateways: &[&str]) -> DockerNetwork {
            DockerNetwork {
                id: id.into(),
                subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
                gateways: gateways.iter().map(|g| g.parse().unwrap()).collect(),
            }
        }

        fn result<T>(&self, v: T) -> Result<T, LookupError> {
            if self.down.load(Ordering::SeqCst) {
                Err(LookupError::Docker("connection refused".into()))
            } else {
                Ok(v)
            }
        }
    }

    impl DockerApi for FakeDocker {
        fn find(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
            Box::pin(async move {
                self.finds.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.find_delay).await;
                let found = self
                    .containers
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|c| c.ips.contains(&ip))
                    .cloned();
                self.result(found)
            })
        }

        fn inspect<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
            Box::pin(async move {
                self.inspects.fetch_add(1, Ordering::SeqCst);
                let found = self
                    .containers
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|c| c.id == id)
                    .cloned();
                self.result(found)
            })
        }

        fn running_ids(&self) -> BoxFuture<'_, Result<Vec<String>, LookupError>> {
            Box::pin(async move {
                let ids = self
                    .containers
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|c| c.id.clone())
                    .collect();
                self.result(ids)
            })
        }

        fn networks(&self) -> BoxFuture<'_, Result<Vec<DockerNetwork>, LookupError>> {
            Box::pin(async move { self.result(self.networks.lock().unwrap().clone()) })
        }

        fn network<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<DockerNetwork>, LookupError>> {
            Box::pin(async move {
                let found = self
                    .networks
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|n| n.id == id)
                    .cloned();
                self.result(found)
            })
        }

        fn events(
            &self,
            _since: i64,
        ) -> BoxFuture<'_, Result<BoxStream<'_, Result<EventMessage, LookupError>>, LookupError>>
        {
            Box::pin(async { Ok(futures_util::stream::pending().boxed()) })
        }
    }

    /// An index over a fake daemon that knows the bridge `172.17.0.0/16` (gateway
    /// `172.17.0.1`) and a dual-stack network `172.30.9.0/24` + `fd00:9::/64`.
    fn fake(find_delay: Duration) -> (Arc<ContainerIndex>, Arc<FakeDocker>) {
        let docker = Arc::new(FakeDocker {
            find_delay,
            ..FakeDocker::default()
        });
        let networks = vec![
            docker.net("bridge", &["172.17.0.0/16"], &["172.17.0.1"]),
            docker.net(
                "dual",
                &["172.30.9.0/24", "fd00:9::/64"],
                &["172.30.9.1", "fd00:9::1"],
            ),
            docker.net("host", &[], &[]),
        ];
        *docker.networks.lock().unwrap() = networks;
        let (index, _rx) = ContainerIndex::over(docker.clone(), None);
        (index, docker)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn event(typ: EventMessageTypeEnum, action: &str, id: &str) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: None,
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_outside_every_network_or_a_gateway_costs_no_docker_call() {
        let (index, docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        for outside in [
            "10.1.2.3",
            "172.17.0.1",
            "172.30.9.1",
            "fd00:9::1",
            "fd00:8::5",
        ] {
            assert!(!index.may_be_container(ip(outside)), "{outside}");
            assert!(index.by_ip(ip(outside)).await.unwrap().is_none());
        }
        assert_eq!(docker.finds.load(Ordering::SeqCst), 0);
        assert_eq!(index.stats.outside_networks.load(Ordering::SeqCst), 5);
        for inside in ["172.17.0.2", "172.30.9.200", "fd00:9::42"] {
            assert!(index.may_be_container(ip(inside)), "{inside}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_first_network_list_every_address_may_be_a_container() {
        let (index, docker) = fake(Duration::ZERO);
        docker.down.store(true, Ordering::SeqCst);
        assert!(index.full_sync().await.is_err());
        assert!(index.may_be_container(ip("10.1.2.3")));
        assert!(index.may_be_container(ip("172.17.0.1")));
        assert!(index.by_ip(ip("10.1.2.3")).await.is_err());
        assert_eq!(docker.finds.load(Ordering::SeqCst), 1, "asked Docker");
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_costs_one_docker_call_per_window_per_address() {
        let (index, docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        let nobody = ip("172.30.9.77");
        for _ in 0..100 {
            assert!(index.by_ip(nobody).await.unwrap().is_none());
        }
        assert_eq!(docker.finds.load(Ordering::SeqCst), 1);
        assert_eq!(index.stats.suppressed_lookups.load(Ordering::SeqCst), 99);
        // Another address has its own entry.
        assert!(index.by_ip(ip("172.30.9.78")).await.unwrap().is_none());
        assert_eq!(docker.finds.load(Ordering::SeqCst), 2);
        // Just before the window ends, still remembered; at its end, asked again.
        tokio::time::advance(NEGATIVE_WINDOW - Duration::from_millis(1)).await;
        assert!(index.by_ip(nobody).await.unwrap().is_none());
        assert_eq!(docker.finds.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(index.by_ip(nobody).await.unwrap().is_none());
        assert_eq!(docker.finds.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn docker_errors_are_remembered_for_the_window_too() {
        let (index, docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        docker.down.store(true, Ordering::SeqCst);
        let nobody = ip("172.30.9.77");
        for _ in 0..10 {
            assert!(matches!(
                index.by_ip(nobody).await,
                Err(LookupError::Docker(_))
            ));
        }
        assert_eq!(docker.finds.load(Ordering::SeqCst), 1);
        docker.down.store(false, Ordering::SeqCst);
        tokio::time::advance(NEGATIVE_WINDOW).await;
        assert!(index.by_ip(nobody).await.unwrap().is_none());
        assert_eq!(docker.finds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_for_one_address_share_one_docker_call() {
        let (index, docker) = fake(Duration::from_millis(50));
        index.full_sync().await.unwrap();
        let nobody = ip("172.30.9.77");
        let lookups = (0..50).map(|_| index.by_ip(nobody));
        let answers = futures_util::future::join_all(lookups).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(None))));
        assert_eq!(docker.finds.load(Ordering::SeqCst), 1);
        assert_eq!(index.stats.direct_lookups.load(Ordering::SeqCst), 1);
        assert_eq!(index.stats.suppressed_lookups.load(Ordering::SeqCst), 49);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_starts_within_the_window_is_found_at_once() {
        let (index, docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        let addr = ip("172.30.9.77");
        assert!(index.by_ip(addr).await.unwrap().is_none());
        // It starts: its start event is applied while the miss is still remembered.
        docker.running(c("late", &["172.30.9.77"]));
        index
            .apply(event(EventMessageTypeEnum::CONTAINER, "start", "late"))
            .await;
        assert_eq!(index.by_ip(addr).await.unwrap().unwrap().id, "late");
        assert_eq!(docker.finds.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_found_directly_is_indexed_not_remembered_as_a_miss() {
        let (index, docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        // Running, but its start event has not been applied yet.
        docker.running(c("racing", &["fd00:9::7"]));
        let addr = ip("fd00:9::7");
        assert_eq!(index.by_ip(addr).await.unwrap().unwrap().id, "racing");
        assert_eq!(index.by_ip(addr).await.unwrap().unwrap().id, "racing");
        assert_eq!(
            docker.finds.load(Ordering::SeqCst),
            1,
            "the second is an index hit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn network_events_teach_the_index_new_subnets_and_forget_destroyed_ones() {
        let (index, docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        let addr = ip("172.30.50.9");
        assert!(!index.may_be_container(addr));
        let fresh = docker.net("fresh", &["172.30.50.0/24"], &["172.30.50.1"]);
        docker.networks.lock().unwrap().push(fresh);
        index
            .apply(event(EventMessageTypeEnum::NETWORK, "create", "fresh"))
            .await;
        assert!(index.may_be_container(addr));
        assert!(!index.may_be_container(ip("172.30.50.1")), "its gateway");
        docker.networks.lock().unwrap().retain(|n| n.id != "fresh");
        index
            .apply(event(EventMessageTypeEnum::NETWORK, "destroy", "fresh"))
            .await;
        assert!(!index.may_be_container(addr));
        // A created container has no address yet: its create event costs no inspect.
        index
            .apply(event(EventMessageTypeEnum::CONTAINER, "create", "new"))
            .await;
        assert_eq!(docker.inspects.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_container_may_be_a_container_wherever_its_address_is() {
        let (index, _docker) = fake(Duration::ZERO);
        index.full_sync().await.unwrap();
        // Indexed before its network was learned (e.g. the create event is still queued).
        index.insert(c("early", &["10.99.0.5"]), None, false);
        assert!(index.may_be_container(ip("10.99.0.5")));
        assert_eq!(
            index.by_ip(ip("10.99.0.5")).await.unwrap().unwrap().id,
            "early"
        );
    }

    /// The cgroup filesystem in memory: each container's cgroup, and what a walk finds.
    #[derive(Debug, Default)]
    struct FakeTree {
        /// container id → its cgroup id (as read when it is indexed).
        own: Mutex<HashMap<String, u64>>,
        /// cgroup id → container id (what a walk of the parents finds).
        on_disk: Mutex<HashMap<u64, String>>,
        walks: AtomicUsize,
        /// How long a walk takes (real time: it runs on a blocking thread).
        walk_delay: Duration,
    }

    impl CgroupTree for FakeTree {
        fn container_cgroup(&self, container: &Container) -> Option<u64> {
            self.own.lock().unwrap().get(&container.id).copied()
        }

        fn walk(&self, ids: &[u64]) -> Option<(u64, String)> {
            self.walks.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.walk_delay);
            let on_disk = self.on_disk.lock().unwrap();
            ids.iter()
                .find_map(|i| on_disk.get(i).map(|id| (*i, id.clone())))
        }
    }

    impl FakeTree {
        /// A container whose cgroup is `cgroup`, readable when indexed and found by a walk.
        fn container(&self, id: &str, cgroup: u64) {
            self.own.lock().unwrap().insert(id.into(), cgroup);
            self.on_disk.lock().unwrap().insert(cgroup, id.into());
        }
    }

    /// An index in eBPF mode over a fake daemon (as [`fake`]) and a fake cgroup tree.
    fn fake_ebpf(walk_delay: Duration) -> (Arc<ContainerIndex>, Arc<FakeDocker>, Arc<FakeTree>) {
        let (plain, docker) = fake(Duration::ZERO);
        drop(plain);
        let tree = Arc::new(FakeTree {
            walk_delay,
            ..FakeTree::default()
        });
        let (index, _rx) = ContainerIndex::over(docker.clone(), Some(tree.clone()));
        (index, docker, tree)
    }

    /// A kernel record: the connecting cgroup and its ancestors (levels 1..).
    fn record(cgroup: u64, ancestors: &[u64]) -> ConnRecord {
        let mut r = ConnRecord {
            cgroup_id: cgroup,
            ..ConnRecord::default()
        };
        r.ancestors[..ancestors.len()].copy_from_slice(ancestors);
        r
    }

    #[tokio::test(start_paused = true)]
    async fn the_cgroup_map_follows_syncs_events_and_removals() {
        let (index, docker, tree) = fake_ebpf(Duration::ZERO);
        docker.running(c("a", &["172.17.0.2"]));
        tree.container("a", 100);
        index.full_sync().await.unwrap();
        assert_eq!(
            index
                .container_by_cgroup(&record(100, &[1, 100]))
                .await
                .as_deref(),
            Some("a")
        );
        // Started later: its start event records its cgroup.
        docker.running(c("b", &["172.17.0.3"]));
        tree.container("b", 200);
        index
            .apply(event(EventMessageTypeEnum::CONTAINER, "start", "b"))
            .await;
        assert_eq!(
            index
                .container_by_cgroup(&record(200, &[]))
                .await
                .as_deref(),
            Some("b")
        );
        assert_eq!(tree.walks.load(Ordering::SeqCst), 0, "all from the map");
        // Removed with the container.
        docker.containers.lock().unwrap().retain(|c| c.id != "a");
        tree.on_disk.lock().unwrap().remove(&100);
        index
            .apply(event(EventMessageTypeEnum::CONTAINER, "die", "a"))
            .await;
        assert_eq!(index.container_by_cgroup(&record(100, &[])).await, None);
        assert_eq!(tree.walks.load(Ordering::SeqCst), 1, "a miss now");
        {
            let maps = index.maps.read().unwrap();
            assert!(!maps.by_cgroup.contains_key(&100));
            assert!(!maps.cgroups_of.contains_key("a"));
        }
        // A full sync rebuilds the map from what runs.
        docker.containers.lock().unwrap().clear();
        index.full_sync().await.unwrap();
        assert!(index.maps.read().unwrap().by_cgroup.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_cgroup_is_its_containers_and_the_deepest_container_wins() {
        let (index, docker, tree) = fake_ebpf(Duration::ZERO);
        docker.running(c("outer", &["172.17.0.2"]));
        docker.running(c("inner", &["172.17.0.3"]));
        tree.container("outer", 10);
        tree.container("inner", 30);
        index.full_sync().await.unwrap();
        // A process in a child cgroup (11) of "outer"'s cgroup (10).
        assert_eq!(
            index
                .container_by_cgroup(&record(11, &[5, 10, 11]))
                .await
                .as_deref(),
            Some("outer")
        );
        // "inner" sits below "outer" (docker in docker): the deeper one is the caller.
        assert_eq!(
            index
                .container_by_cgroup(&record(31, &[5, 10, 20, 30, 31]))
                .await
                .as_deref(),
            Some("inner")
        );
        // Neither the container parent (5) nor the root maps to anyone.
        assert_eq!(tree.walks.load(Ordering::SeqCst), 0);
        assert_eq!(index.stats.cgroup_hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cgroup_miss_walks_once_per_window_and_a_walk_is_recorded() {
        let (index, docker, tree) = fake_ebpf(Duration::ZERO);
        index.full_sync().await.unwrap();
        // A host process's cgroup: no container; walked once per window.
        for _ in 0..100 {
            assert_eq!(index.container_by_cgroup(&record(7, &[7])).await, None);
        }
        assert_eq!(tree.walks.load(Ordering::SeqCst), 1);
        assert_eq!(index.stats.suppressed_walks.load(Ordering::SeqCst), 99);
        tokio::time::advance(NEGATIVE_WINDOW - Duration::from_millis(1)).await;
        assert_eq!(index.container_by_cgroup(&record(7, &[])).await, None);
        assert_eq!(tree.walks.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(index.container_by_cgroup(&record(7, &[])).await, None);
        assert_eq!(tree.walks.load(Ordering::SeqCst), 2);

        // A container whose cgroup was not found when it was indexed (no pid, unknown layout):
        // the walk finds it, and the map keeps the answer.
        docker.running(c("nopid", &["172.17.0.9"]));
        index.full_sync().await.unwrap();
        tree.on_disk.lock().unwrap().insert(40, "nopid".into());
        for _ in 0..3 {
            assert_eq!(
                index
                    .container_by_cgroup(&record(41, &[1, 40, 41]))
                    .await
                    .as_deref(),
                Some("nopid")
            );
        }
        assert_eq!(
            tree.walks.load(Ordering::SeqCst),
            3,
            "one walk, then the map"
        );
        assert_eq!(
            index
                .maps
                .read()
                .unwrap()
                .by_cgroup
                .get(&40)
                .map(String::as_str),
            Some("nopid")
        );
        // ...and forgets it with the container.
        index.remove("nopid");
        assert!(index.maps.read().unwrap().by_cgroup.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_walk_racing_a_start_answers_but_records_only_indexed_containers() {
        let (index, docker, tree) = fake_ebpf(Duration::ZERO);
        index.full_sync().await.unwrap();
        // Its cgroup exists, its start event has not been applied yet.
        tree.container("racing", 50);
        for _ in 0..2 {
            assert_eq!(
                index.container_by_cgroup(&record(50, &[])).await.as_deref(),
                Some("racing")
            );
        }
        assert_eq!(
            tree.walks.load(Ordering::SeqCst),
            2,
            "not recorded: not indexed"
        );
        assert!(index.maps.read().unwrap().by_cgroup.is_empty());
        docker.running(c("racing", &["172.17.0.5"]));
        index
            .apply(event(EventMessageTypeEnum::CONTAINER, "start", "racing"))
            .await;
        assert_eq!(
            index.container_by_cgroup(&record(50, &[])).await.as_deref(),
            Some("racing")
        );
        assert_eq!(tree.walks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_indexed_within_the_negative_window_is_found_at_once() {
        let (index, docker, tree) = fake_ebpf(Duration::ZERO);
        index.full_sync().await.unwrap();
        // Its cgroup is outside the parents the walk reads (unknown to the walk), but its
        // process names it.
        assert_eq!(index.container_by_cgroup(&record(60, &[])).await, None);
        tree.own.lock().unwrap().insert("late".into(), 60);
        docker.running(c("late", &["172.17.0.6"]));
        index
            .apply(event(EventMessageTypeEnum::CONTAINER, "start", "late"))
            .await;
        assert_eq!(
            index.container_by_cgroup(&record(60, &[])).await.as_deref(),
            Some("late")
        );
        assert_eq!(tree.walks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_cgroup_misses_share_one_walk() {
        let (index, _docker, tree) = fake_ebpf(Duration::from_millis(100));
        index.full_sync().await.unwrap();
        let miss = record(9, &[]);
        let lookups = (0..20).map(|_| index.container_by_cgroup(&miss));
        let answers = futures_util::future::join_all(lookups).await;
        assert!(answers.iter().all(Option::is_none));
        assert_eq!(tree.walks.load(Ordering::SeqCst), 1);
        assert_eq!(index.stats.suppressed_walks.load(Ordering::SeqCst), 19);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_cgroup_tree_the_index_maps_no_cgroup() {
        let (index, docker) = fake(Duration::ZERO);
        docker.running(c("a", &["172.17.0.2"]));
        index.full_sync().await.unwrap();
        assert!(!index.maps_cgroups());
        assert_eq!(index.container_by_cgroup(&record(100, &[])).await, None);
    }

    /// An index container's state as the replay compares it: (label, name, addresses).
    type Snapshot = Vec<(String, String, Vec<IpAddr>)>;

    /// Replays a recorded event stream (one event per line, as the engine's `/events` sent
    /// it; `testdata/`) through the index. The fake daemon plays the engine: a container runs
    /// from its `start` to its `die` (each on its own address), and a running container that
    /// joins `mp-test-ev-net` has a second address until it leaves. Returns the actions the
    /// index acted on and each distinct state of the index, containers labelled by their
    /// first name's last letter.
    async fn replay(recording: &str) -> (Vec<String>, Vec<Snapshot>) {
        let (index, docker) = fake(Duration::ZERO);
        docker.networks.lock().unwrap().push(docker.net(
            "net",
            &["172.31.79.0/24"],
            &["172.31.79.1"],
        ));
        index.full_sync().await.unwrap();
        let mut labels: HashMap<String, String> = HashMap::new();
        let mut acted = Vec::new();
        let mut states: Vec<Snapshot> = vec![Vec::new()];
        for line in recording.lines().filter(|l| !l.trim().is_empty()) {
            let event: EventMessage = serde_json::from_str(line).expect("an engine event");
            let actor = event.actor.clone().unwrap();
            let id = actor.id.clone().unwrap_or_default();
            let attr = |k: &str| actor.attributes.as_ref().and_then(|a| a.get(k)).cloned();
            let action = event.action.clone().unwrap_or_default();
            // The engine's side.
            if event.typ == Some(EventMessageTypeEnum::CONTAINER) {
                let name = attr("name").unwrap();
                let label = labels
                    .entry(id.clone())
                    .or_insert_with(|| name.trim_start_matches("mp-test-ev-").to_string())
                    .clone();
                let mut running = docker.containers.lock().unwrap();
                match action.as_str() {
                    "start" => {
                        let own = if label == "a" {
                            "172.17.0.5"
                        } else {
                            "172.31.79.2"
                        };
                        let mut c = Container::from_env(id.clone(), name, "img".into(), []);
                        c.ips = vec![own.parse().unwrap()];
                        running.push(c);
                    }
                    "rename" => running.iter_mut().filter(|c| c.id == id).for_each(|c| {
                        c.name = name.clone();
                    }),
                    "die" => running.retain(|c| c.id != id),
                    _ => {}
                }
            } else if matches!(action.as_str(), "connect" | "disconnect") {
                let container = attr("container").unwrap_or(id);
                let joined: IpAddr = "172.31.79.3".parse().unwrap();
                let mut running = docker.containers.lock().unwrap();
                if let Some(c) = running.iter_mut().find(|c| c.id == container) {
                    let on_net = attr("name").is_none_or(|n| n != "bridge");
                    c.ips.retain(|ip| *ip != joined);
                    if action == "connect"
                        && on_net
                        && !c
                            .ips
                            .iter()
                            .any(|ip| ip.to_string().starts_with("172.31.79."))
                    {
                        c.ips.push(joined);
                    }
                }
            }
            // The index's side.
            if let Some((action, _)) = decode(&event) {
                let on = if event.typ == Some(EventMessageTypeEnum::NETWORK) {
                    "network"
                } else {
                    "container"
                };
                acted.push(format!("{on} {action}"));
            }
            index.apply(event).await;
            let mut state: Snapshot = index
                .containers()
                .into_iter()
                .map(|c| (labels[&c.id].clone(), c.name, c.ips))
                .collect();
            state.sort();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        acted.dedup();
        (acted, states)
    }

    #[tokio::test(start_paused = true)]
    async fn docker_and_podman_event_streams_make_the_same_index_updates() {
        let (docker_acted, docker_states) =
            replay(include_str!("testdata/events-docker-20.10.jsonl")).await;
        let (podman_acted, podman_states) =
            replay(include_str!("testdata/events-podman-4.3.jsonl")).await;
        // The same scenario on each engine (`podman run` needs `--ulimit` here): run a on the
        // default bridge, rename it, create a network, connect a to it and disconnect it, run
        // b on that network, exec in b, stop and remove a, remove b by force, remove the
        // network.
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let a = |name: &str, ips: &[&str]| {
            (
                "a".to_string(),
                name.to_string(),
                ips.iter().map(|i| ip(i)).collect::<Vec<_>>(),
            )
        };
        let b = (
            "b".to_string(),
            "mp-test-ev-b".to_string(),
            vec![ip("172.31.79.2")],
        );
        let expected: Vec<Snapshot> = vec![
            vec![],
            vec![a("mp-test-ev-a", &["172.17.0.5"])],
            vec![a("mp-test-ev-a2", &["172.17.0.5"])],
            vec![a("mp-test-ev-a2", &["172.17.0.5", "172.31.79.3"])],
            vec![a("mp-test-ev-a2", &["172.17.0.5"])],
            vec![a("mp-test-ev-a2", &["172.17.0.5"]), b.clone()],
            vec![b],
            vec![],
        ];
        assert_eq!(docker_states, expected, "Docker");
        assert_eq!(podman_states, expected, "Podman");
        // Each engine's own words.
        assert_eq!(
            docker_acted,
            [
                "network connect",
                "container start",
                "container rename",
                "network create",
                "network connect",
                "network disconnect",
                "network connect",
                "container start",
                "container die",
                "network disconnect",
                "container stop",
                "container destroy",
                "container die",
                "network disconnect",
                "container destroy",
                "network destroy",
            ]
        );
        assert_eq!(
            podman_acted,
            [
                "container start",
                "container rename",
                "network connect",
                "network disconnect",
                "container start",
                "container die",
                "container remove",
                "container die",
                "container remove",
            ]
        );
    }

    #[test]
    fn only_the_allowed_actions_are_decoded() {
        let with = |typ, action: &str, id: &str, attrs: &[(&str, &str)]| EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        };
        use EventMessageTypeEnum::{CONTAINER, IMAGE, NETWORK};
        for ignored in [
            "create",
            "init",
            "sync",
            "cleanup",
            "kill",
            "exec",
            "exec_died",
            "exec_die",
            "exec_start: sh ",
            "health_status: healthy",
            "attach",
            "pause",
            "died",
        ] {
            assert_eq!(
                decode(&with(CONTAINER, ignored, "c", &[])),
                None,
                "{ignored}"
            );
        }
        assert_eq!(decode(&with(IMAGE, "remove", "i", &[])), None);
        for (action, update) in [
            ("start", Update::Refresh("c".into())),
            ("rename", Update::Refresh("c".into())),
            ("die", Update::Remove("c".into())),
            ("stop", Update::Remove("c".into())),
            ("destroy", Update::Remove("c".into())),
            ("remove", Update::Remove("c".into())),
        ] {
            assert_eq!(
                decode(&with(CONTAINER, action, "c", &[])).map(|d| d.1),
                Some(update)
            );
        }
        // Docker's network events name the container in an attribute, Podman's in the actor.
        assert_eq!(
            decode(&with(NETWORK, "connect", "net", &[("container", "c")])).map(|d| d.1),
            Some(Update::Refresh("c".into()))
        );
        assert_eq!(
            decode(&with(NETWORK, "disconnect", "c", &[("name", "c-name")])).map(|d| d.1),
            Some(Update::Refresh("c".into()))
        );
        assert_eq!(
            decode(&with(NETWORK, "create", "net", &[])).map(|d| d.1),
            Some(Update::Network("net".into()))
        );
        for gone in ["destroy", "remove"] {
            assert_eq!(
                decode(&with(NETWORK, gone, "net", &[])).map(|d| d.1),
                Some(Update::NetworkGone("net".into()))
            );
        }
        assert_eq!(decode(&with(NETWORK, "prune", "net", &[])), None);
    }

    fn c(id: &str, ips: &[&str]) -> Container {
        let mut c = Container::from_env(id.into(), id.into(), "img".into(), []);
        c.ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        c
    }

    #[test]
    fn an_address_moves_with_its_container() {
        let mut m = Maps::default();
        m.insert(c("a", &["172.30.0.5", "fd00::5"]), None);
        assert_eq!(m.by_ip[&"172.30.0.5".parse().unwrap()], ["a"]);
        m.remove("a");
        assert!(m.by_ip.is_empty());
        m.insert(c("b", &["172.30.0.5"]), None);
        assert_eq!(m.by_ip[&"172.30.0.5".parse().unwrap()], ["b"]);
        // Re-inserting (network disconnect) drops addresses it no longer has.
        m.insert(c("b", &["172.31.0.9"]), None);
        assert!(!m.by_ip.contains_key(&"172.30.0.5".parse().unwrap()));
        assert_eq!(m.by_id.len(), 1);
    }

    #[test]
    fn a_cgroup_moves_with_its_container_and_only_indexed_ones_are_learned() {
        let mut m = Maps::default();
        m.insert(c("a", &[]), Some(1));
        assert!(!m.learn(2, "nobody"), "not indexed");
        assert!(m.learn(3, "a"), "a second cgroup found by a walk");
        assert_eq!(m.by_cgroups(&[9, 3]), Some("a"));
        // The same cgroup id now another container's (a stale entry): it moves.
        m.insert(c("b", &[]), Some(3));
        assert_eq!(m.by_cgroups(&[3]), Some("b"));
        assert_eq!(m.cgroups_of["a"], [1]);
        m.remove("a");
        assert_eq!(m.by_cgroups(&[1]), None);
        assert_eq!(m.by_cgroups(&[3]), Some("b"));
        m.remove("b");
        assert!(m.by_cgroup.is_empty() && m.cgroups_of.is_empty());
    }

    #[test]
    fn two_containers_claiming_one_address_are_ambiguous() {
        let (index, _rx) = ContainerIndex::new(
            DockerLookup::new(crate::identity::DockerUrl::Unix("/nonexistent".into())),
            None,
        );
        index.insert(c("a", &["10.0.0.1"]), None, false);
        index.insert(c("b", &["10.0.0.1"]), None, false);
        assert!(matches!(
            index.lookup_ip("10.0.0.1".parse().unwrap()),
            Err(LookupError::Ambiguous { count: 2, .. })
        ));
        index.remove("a");
        assert_eq!(
            index
                .lookup_ip("10.0.0.1".parse().unwrap())
                .unwrap()
                .unwrap()
                .id,
            "b"
        );
    }
}
