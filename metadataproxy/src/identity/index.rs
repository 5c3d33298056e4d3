//! The container index: every running container by IP and by id, kept current by Docker's
//! event stream, so that a lookup makes no Docker API call.
//!
//! - Start-up and every break of the event stream (dockerd restarted): a full sync (one list,
//!   one inspect per container). The stream is opened `since` the sync began, so nothing that
//!   happens during the sync is missed.
//! - `start`, `rename`, network `connect`/`disconnect`: the container is inspected again.
//!   `die`, `destroy`: it is removed, and its addresses with it, so an address that moves to a
//!   new container maps to the new one only.
//! - A periodic reconcile (full sync) is the safety net.
//! - A miss (a lookup that races a start) falls back to a direct Docker lookup, whose answer is
//!   added to the index: never a wrong answer, never a wait for the next event.
//! - While dockerd is down, containers that kept running are still answered from the index.
//!
//! Newly seen containers are sent on a channel, for credential prefetch.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Container, ContainerLookup, DockerLookup, LookupError};

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<String, Container>,
    by_ip: HashMap<IpAddr, Vec<String>>,
}

impl Maps {
    fn insert(&mut self, c: Container) {
        self.remove(&c.id);
        for ip in &c.ips {
            self.by_ip.entry(*ip).or_default().push(c.id.clone());
        }
        self.by_id.insert(c.id.clone(), c);
    }

    fn remove(&mut self, id: &str) -> Option<Container> {
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

/// Counters for tests and telemetry.
#[derive(Debug, Default)]
pub struct IndexStats {
    /// Full syncs done.
    pub syncs: AtomicU64,
    /// Events applied.
    pub events: AtomicU64,
    /// Lookups that missed the index and asked Docker directly.
    pub direct_lookups: AtomicU64,
}

/// Running containers by IP and id.
#[derive(Debug)]
pub struct ContainerIndex {
    docker: DockerLookup,
    maps: RwLock<Maps>,
    synced: AtomicBool,
    started: mpsc::UnboundedSender<Container>,
    /// Counters.
    pub stats: IndexStats,
}

impl ContainerIndex {
    /// An empty index over `docker`, and the channel on which newly seen containers arrive.
    pub fn new(docker: DockerLookup) -> (Arc<ContainerIndex>, mpsc::UnboundedReceiver<Container>) {
        let (started, rx) = mpsc::unbounded_channel();
        let index = Arc::new(ContainerIndex {
            docker,
            maps: RwLock::new(Maps::default()),
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

    fn upsert(&self, c: Container, announce: bool) {
        let is_new = {
            let mut maps = self.maps.write().expect("index lock");
            let is_new = !maps.by_id.contains_key(&c.id);
            maps.insert(c.clone());
            is_new
        };
        if announce && is_new {
            let _ = self.started.send(c);
        }
    }

    fn remove(&self, id: &str) {
        self.maps.write().expect("index lock").remove(id);
    }

    /// Replaces the index with what Docker lists now.
    pub async fn full_sync(&self) -> Result<(), LookupError> {
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
        let mut fresh = Maps::default();
        for c in inspected {
            if let Some(c) = c? {
                fresh.insert(c);
            }
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
        crate::telemetry::metrics::index_sync();
        Ok(())
    }

    async fn refresh(&self, id: &str, announce: bool) {
        match self.docker.inspect(id).await {
            Ok(Some(c)) => self.upsert(c, announce),
            Ok(None) => self.remove(id),
            Err(e) => {
                tracing::warn!(container_id = id, error = %e, "could not inspect a container after an event")
            }
        }
    }

    async fn apply(&self, event: bollard::models::EventMessage) {
        use bollard::models::EventMessageTypeEnum as Type;
        let Some(actor) = event.actor else { return };
        let action = event.action.unwrap_or_default();
        let id = match event.typ {
            Some(Type::CONTAINER) => actor.id,
            Some(Type::NETWORK) => actor.attributes.and_then(|mut a| a.remove("container")),
            _ => None,
        };
        let Some(id) = id else { return };
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::docker_event(&action);
        match action.as_str() {
            "die" | "destroy" => self.remove(&id),
            // Docker announces the network connect before the start; whichever event first
            // finds the container running adds it, and announces it.
            _ => self.refresh(&id, true).await,
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
            let events = match self.docker.events(since).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "container index: cannot follow Docker events");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            tokio::pin!(events);
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

/// Counts a direct Docker lookup by its outcome.
fn count_direct(found: &Result<Option<Container>, LookupError>) {
    let result = match found {
        Ok(Some(_)) => "found",
        Ok(None) => "not_found",
        Err(_) => "error",
    };
    crate::telemetry::metrics::docker_lookup("docker", result);
}

impl ContainerLookup for ContainerIndex {
    fn by_ip(&self, ip: IpAddr) -> BoxFuture<'_, Result<Option<Container>, LookupError>> {
        Box::pin(async move {
            if let Some(c) = self.lookup_ip(ip)? {
                crate::telemetry::metrics::docker_lookup("index", "found");
                return Ok(Some(c));
            }
            self.stats.direct_lookups.fetch_add(1, Ordering::Relaxed);
            let found = self.docker.find(ip).await;
            count_direct(&found);
            if let Ok(Some(c)) = &found {
                self.upsert(c.clone(), false);
            }
            found
        })
    }

    fn by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Container>, LookupError>> {
        Box::pin(async move {
            if let Some(c) = self.maps.read().expect("index lock").by_id.get(id).cloned() {
                crate::telemetry::metrics::docker_lookup("index", "found");
                return Ok(Some(c));
            }
            self.stats.direct_lookups.fetch_add(1, Ordering::Relaxed);
            let found = self.docker.inspect(id).await;
            count_direct(&found);
            if let Ok(Some(c)) = &found {
                self.upsert(c.clone(), false);
            }
            found
        })
    }

    fn peek(&self, ip: IpAddr) -> Option<Container> {
        self.lookup_ip(ip).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, ips: &[&str]) -> Container {
        let mut c = Container::from_env(id.into(), id.into(), "img".into(), []);
        c.ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        c
    }

    #[test]
    fn an_address_moves_with_its_container() {
        let mut m = Maps::default();
        m.insert(c("a", &["172.30.0.5", "fd00::5"]));
        assert_eq!(m.by_ip[&"172.30.0.5".parse().unwrap()], ["a"]);
        m.remove("a");
        assert!(m.by_ip.is_empty());
        m.insert(c("b", &["172.30.0.5"]));
        assert_eq!(m.by_ip[&"172.30.0.5".parse().unwrap()], ["b"]);
        // Re-inserting (network disconnect) drops addresses it no longer has.
        m.insert(c("b", &["172.31.0.9"]));
        assert!(!m.by_ip.contains_key(&"172.30.0.5".parse().unwrap()));
        assert_eq!(m.by_id.len(), 1);
    }

    #[test]
    fn two_containers_claiming_one_address_are_ambiguous() {
        let (index, _rx) = ContainerIndex::new(DockerLookup::new(crate::config::DockerUrl::Unix(
            "/nonexistent".into(),
        )));
        index.upsert(c("a", &["10.0.0.1"]), false);
        index.upsert(c("b", &["10.0.0.1"]), false);
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
