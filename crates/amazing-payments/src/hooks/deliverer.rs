//! The deliverer: makes deliveries from the outbox, sends those due, and
//! records each attempt. Sending holds no database connection: a delivery
//! is claimed (leased) in one statement, POSTed, and its outcome recorded
//! in another. A deliverer killed mid-delivery leaves its lease to run out,
//! and the delivery is sent again: receivers deduplicate on `webhook-id`.

use super::{Settings, guard, sign};
use crate::store::hooks::{self, Claimed, Failed, Outcome};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Deliverer {
    db: PgPool,
    http: reqwest::Client,
    settings: Settings,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Outbox events turned into deliveries.
    pub events: u64,
    /// Deliveries attempted.
    pub attempted: usize,
}

impl Deliverer {
    pub fn new(db: PgPool, settings: Settings) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("amazing-payments-webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private {
            http = http.dns_resolver(std::sync::Arc::new(guard::PublicOnly));
        }
        Ok(Deliverer { db, http: http.build()?, settings })
    }

    /// Makes the deliveries of new events, then sends those due.
    pub async fn pass(&self) -> Result<Pass, sqlx::Error> {
        let events = hooks::fan_out(&self.db, 500).await?;
        // Held past the attempt's own timeout, so that no other deliverer
        // sends it meanwhile unless this one died.
        let lease = self.settings.timeout + Duration::from_secs(10);
        let due = hooks::claim(&self.db, self.settings.batch, lease).await?;
        let attempted = due.len();
        let sends = due.into_iter().map(|d| async move {
            let outcome = self.send(&d).await;
            if let Err(e) = self.record(&d, &outcome).await {
                // The lease runs out and the delivery is sent again.
                tracing::warn!(error = %e, delivery = d.id, "a webhook attempt could not be recorded");
            }
        });
        futures::future::join_all(sends).await;
        Ok(Pass { events, attempted })
    }

    /// POSTs one delivery; never fails, tells how it went.
    async fn send(&self, d: &Claimed) -> Outcome {
        let started = Instant::now();
        let refused = |error: String| Outcome { status: None, latency: started.elapsed(), error: Some(error) };
        let url = match url::Url::parse(&d.url) {
            Ok(u) => u,
            Err(e) => return refused(format!("the endpoint's URL does not parse: {e}")),
        };
        if !self.settings.allow_private
            && let Some(why) = guard::literal_refused(&url)
        {
            return refused(why);
        }
        let id = d.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let mut secrets = vec![d.secret.as_str()];
        secrets.extend(d.previous_secret.as_deref());
        let signature = sign::header(&secrets, &id, timestamp, &d.payload);
        let answer = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await;
        let latency = started.elapsed();
        match answer {
            Ok(r) if r.status().is_success() => Outcome { status: Some(r.status().as_u16()), latency, error: None },
            Ok(r) => Outcome {
                status: Some(r.status().as_u16()),
                latency,
                error: Some(format!("the endpoint answered {}", r.status())),
            },
            Err(e) => Outcome { status: None, latency, error: Some(describe(&e)) },
        }
    }

    async fn record(&self, d: &Claimed, o: &Outcome) -> Result<(), sqlx::Error> {
        if o.succeeded() {
            crate::meter::hook_attempt("succeeded", o.latency);
            return hooks::succeeded(&self.db, d, o).await;
        }
        let retry_in = self.settings.schedule.get(usize::try_from(d.step).unwrap_or(usize::MAX)).copied();
        match hooks::failed(&self.db, d, o, retry_in, self.settings.disable_after).await? {
            Failed::Retrying => crate::meter::hook_attempt("retrying", o.latency),
            Failed::GaveUp => {
                crate::meter::hook_attempt("gave_up", o.latency);
                tracing::warn!(endpoint = d.endpoint_id, delivery = d.id, event_type = %d.event_type,
                    "a webhook delivery failed every attempt of the schedule");
            }
            Failed::Disabled { .. } => {
                crate::meter::hook_attempt(if retry_in.is_some() { "retrying" } else { "gave_up" }, o.latency);
                crate::meter::hook_endpoint_disabled();
                tracing::warn!(
                    endpoint = d.endpoint_id,
                    "a webhook endpoint was disabled: its deliveries have failed for WEBHOOK_DISABLE_AFTER"
                );
            }
        }
        Ok(())
    }

    /// Passes until `stop`; at once again while there is work.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!("webhook deliverer started");
        let mut passes: u64 = 0;
        loop {
            let busy = match self.pass().await {
                Ok(p) => {
                    passes += 1;
                    if passes % 7200 == 1
                        && let Err(e) = hooks::purge(&self.db, self.settings.keep).await
                    {
                        tracing::warn!(error = %e, "purging old webhook deliveries failed");
                    }
                    p.events > 0 || p.attempted > 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliverer pass failed; retrying");
                    false
                }
            };
            let wait = if busy { Duration::ZERO } else { self.settings.interval };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        tracing::info!("webhook deliverer stopped");
    }
}

/// A transport failure in words for the delivery log: what happened, not
/// the URL (the log shows it beside).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut cause = e.source();
    let mut root = None;
    while let Some(c) = cause {
        root = Some(c.to_string());
        cause = c.source();
    }
    match root {
        Some(r) => format!("{what}: {r}"),
        None => what.to_string(),
    }
}
