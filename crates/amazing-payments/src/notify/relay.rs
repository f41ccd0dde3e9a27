//! The relay: publishes outbox events to the queue in order and marks them
//! published. Every instance may run one; a lease (`notify.relay_lease`)
//! lets one publish at a time, which keeps the order, and passes to another
//! when its holder stops or dies. A relay that dies between sending to SQS
//! and marking leaves those events to be sent again: delivery is at least
//! once, and consumers deduplicate on the event id.

use super::queue::Queue;
use crate::store::outbox;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Events read per pass.
    pub batch: i64,
    /// Pause when there is nothing to publish (or the lease is another's).
    pub interval: Duration,
    /// How long the lease lasts without renewal.
    pub lease: Duration,
    /// How long published events stay in the outbox.
    pub keep: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch: 100,
            interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            keep: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pass {
    /// Whether this relay held the lease.
    pub leader: bool,
    pub published: u64,
    /// Events still unpublished after the pass.
    pub lag: i64,
    /// Age of the oldest of them, in seconds.
    pub lag_seconds: f64,
}

pub struct Relay {
    db: PgPool,
    queue: Queue,
    settings: Settings,
    id: Uuid,
}

impl Relay {
    pub fn new(db: PgPool, queue: Queue, settings: Settings) -> Self {
        Relay { db, queue, settings, id: Uuid::new_v4() }
    }

    /// Takes the lease if free, then publishes one batch.
    pub async fn pass(&self) -> anyhow::Result<Pass> {
        let mut p = Pass::default();
        if outbox::hold_lease(&self.db, self.id, self.settings.lease).await? {
            p.leader = true;
            let rows = outbox::unpublished(&self.db, self.settings.batch).await?;
            if !rows.is_empty() {
                p.published = self.queue.publish(&self.db, &rows).await?;
            }
        }
        let (lag, oldest) = outbox::lag(&self.db).await?;
        p.lag = lag;
        p.lag_seconds = oldest.map(|t| (chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0).unwrap_or(0.0);
        Ok(p)
    }

    /// Publishes until nothing is left; how many. For `relay --once`: waits
    /// (up to twice the lease) while another relay holds the lease.
    pub async fn drain(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        let start = std::time::Instant::now();
        loop {
            let p = self.pass().await?;
            total += p.published;
            if !p.leader {
                if start.elapsed() > self.settings.lease * 2 {
                    anyhow::bail!("another relay holds the lease; try again when it stops");
                }
                tokio::time::sleep(self.settings.interval.max(Duration::from_millis(100))).await;
                continue;
            }
            if p.published == 0 {
                outbox::release_lease(&self.db, self.id).await?;
                return Ok(total);
            }
        }
    }

    /// Passes until `stop`; at once again while there is work.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(queue = %self.queue.describe(), "relay started");
        let mut passes: u64 = 0;
        loop {
            let busy = match self.pass().await {
                Ok(p) => {
                    passes += 1;
                    if p.published > 0 || (p.lag > 0 && p.leader) {
                        tracing::info!(
                            published = p.published,
                            outbox_lag = p.lag,
                            outbox_lag_seconds = p.lag_seconds,
                            "relay pass"
                        );
                    } else if passes.is_multiple_of(120) {
                        tracing::debug!(leader = p.leader, outbox_lag = p.lag, "relay idle");
                    }
                    if p.leader
                        && p.published == 0
                        && passes % 600 == 1
                        && let Err(e) = outbox::purge_published(&self.db, self.settings.keep).await
                    {
                        tracing::warn!(error = %e, "purging published events failed");
                    }
                    p.published > 0
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "relay pass failed; retrying");
                    false
                }
            };
            let wait = if busy { Duration::ZERO } else { self.settings.interval };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let _ = outbox::release_lease(&self.db, self.id).await;
        tracing::info!("relay stopped");
    }
}
