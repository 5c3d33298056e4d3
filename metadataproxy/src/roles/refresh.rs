//! Credentials fetched before they are asked for: for each container as it starts
//! ([`prefetch`]), and renewed ahead of expiry while it runs ([`refresh_ahead`]), so that
//! requests find them cached rather than waiting on STS.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::Issuer;
use crate::identity::{Container, ContainerIndex};
use crate::metrics;

/// How often running containers' credentials are checked for refresh-ahead.
const REFRESH_PERIOD: Duration = Duration::from_secs(30);
/// Credentials are renewed when they get within `ROLE_CACHE_OFFSET` + this (plus up to a
/// minute of jitter, so that many roles do not renew at once) of their expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// Prefetches in flight at once.
const PREFETCH_CONCURRENCY: usize = 8;

/// Keeps running containers' credentials renewed before requests would have to wait for STS;
/// stopped containers drop out of the index, and nothing more is fetched for them.
pub async fn refresh_ahead(issuer: Arc<Issuer>, index: Arc<ContainerIndex>) {
    let mut tick = tokio::time::interval(REFRESH_PERIOD);
    loop {
        tick.tick().await;
        for container in index.containers() {
            let Ok(spec) = issuer.role_of(&container) else {
                continue;
            };
            let jitter = Duration::from_millis(rand::random::<u64>() % 60_000);
            if issuer
                .refresh_ahead(&container, &spec, REFRESH_AHEAD + jitter)
                .await
            {
                metrics::refresh_ahead();
                tracing::info!(
                    container_name = %container.name,
                    role_name = spec.name(),
                    "credentials renewed ahead of expiry"
                );
            }
        }
    }
}

/// Fetches credentials for containers as they start (and for those found at start-up), so
/// that their first request finds them cached. A few at a time.
pub async fn prefetch(issuer: Arc<Issuer>, mut started: UnboundedReceiver<Container>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(PREFETCH_CONCURRENCY));
    while let Some(container) = started.recv().await {
        let Ok(spec) = issuer.role_of(&container) else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match issuer.credentials(&container, &spec).await {
                Ok(_) => {
                    metrics::prefetch(true);
                    tracing::info!(
                        container_id = %container.id,
                        container_name = %container.name,
                        role_name = spec.name(),
                        "credentials prefetched"
                    );
                }
                Err(e) => {
                    metrics::prefetch(false);
                    tracing::warn!(
                        container_id = %container.id,
                        container_name = %container.name,
                        role_name = spec.name(),
                        error_description = e.description(),
                        error = %e,
                        "credential prefetch failed"
                    )
                }
            }
        });
    }
}
