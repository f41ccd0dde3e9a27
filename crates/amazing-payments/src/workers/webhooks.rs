//! The webhook worker: applies stored events, retrying with backoff, and
//! parks an event that keeps failing (with its reason) for
//! `amazing-payments webhooks list|replay`. Several instances may run it:
//! events are taken with `FOR UPDATE SKIP LOCKED`.

use crate::{app::App, store::webhooks};
use std::time::Duration;
use tokio::sync::watch;

/// Attempts before an event is parked.
pub const MAX_ATTEMPTS: i32 = 8;

/// One pass over due events; how many were taken.
pub async fn pass(app: &App, batch: i64) -> anyhow::Result<usize> {
    let events = webhooks::take_due(&app.db, batch).await?;
    for e in &events {
        match app.apply_event(e).await {
            Ok(()) => webhooks::processed(&app.db, &e.id).await?,
            Err(err) => {
                tracing::warn!(event = %e.id, kind = %e.kind, attempt = e.attempts, reason = err.reason, "webhook event not applied yet");
                webhooks::failed(&app.db, &e.id, &format!("{}: {}", err.reason, err.message), MAX_ATTEMPTS).await?;
            }
        }
    }
    Ok(events.len())
}

/// Passes until `stop`: at once again while there is work, else every
/// `interval`.
pub async fn run(app: App, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let busy = match pass(&app, 50).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "webhook pass failed");
                false
            }
        };
        let wait = if busy { Duration::from_millis(10) } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
