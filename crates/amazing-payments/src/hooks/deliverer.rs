//! The deliverer: makes deliveries from the outbox, sends those due, and
//! records each attempt. Sending holds no database connection: a delivery
//! is claimed (leased) in one statement, POSTed, and its outcome recorded
//! in another. A deliverer killed mid-delivery leaves its lease to run out,
//! and the delivery is sent again: receivers deduplicate on `webhook-id`.

use super::{Settings, guard, sign};
use crate::store::hooks::{self, Claimed, Failed, Outcome};
use sqlx::PgPool;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{sync::watch, task::JoinSet};

pub struct Deliverer {
    db: PgPool,
    http: reqwest::Client,
    settings: Settings,
}

/// Outbox events turned into deliveries by one statement at most.
const FAN_OUT_BATCH: i64 = 500;

impl Deliverer {
    pub fn new(db: PgPool, settings: Settings) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("amazing-payments-webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private {
            http = http.dns_resolver(Arc::new(guard::PublicOnly));
        }
        Ok(Deliverer { db, http: http.build()?, settings })
    }

    /// How long a claim is held: past the attempt's own timeout, so that no
    /// other deliverer sends it meanwhile unless this one died.
    fn lease(&self) -> Duration {
        self.settings.timeout + Duration::from_secs(10)
    }

    /// Deliveries of one endpoint in flight at once, at most.
    fn per_endpoint(&self) -> i64 {
        (self.settings.batch / 4).max(1)
    }

    /// One pass, all at once: makes the deliveries of new events, sends
    /// those due (up to a batch), and waits for them. (`run` keeps sending
    /// as slots free up instead.)
    pub async fn pass(&self) -> Result<(), sqlx::Error> {
        hooks::fan_out(&self.db, FAN_OUT_BATCH).await?;
        let due = hooks::claim(&self.db, self.settings.batch, self.per_endpoint(), self.lease()).await?;
        futures::future::join_all(due.iter().map(|d| self.deliver(d))).await;
        Ok(())
    }

    /// Sends one claimed delivery and records how it went.
    async fn deliver(&self, d: &Claimed) {
        let outcome = self.send(d).await;
        if let Err(e) = self.record(d, &outcome).await {
            // The lease runs out and the delivery is sent again.
            tracing::warn!(error = %e, delivery = d.id, "a webhook attempt could not be recorded");
        }
    }

    /// POSTs one delivery; never fails, tells how it went.
    async fn send(&self, d: &Claimed) -> Outcome {
        let started = Instant::now();
        let refused = |error: String| Outcome { status: None, latency: started.elapsed(), error: Some(error) };
        let url = match url::Url::parse(&d.url) {
            Ok(u) => u,
            Err(e) => return refused(format!("the endpoint's URL does not parse: {e}")),
        };
        if !self.settings.allow_private {
            if url.scheme() != "https" {
                return refused("plain http is not delivered to (WEBHOOK_ALLOW_PRIVATE is off)".into());
            }
            if let Some(why) = guard::literal_refused(&url) {
                return refused(format!("{why}: delivery refused"));
            }
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
            if !hooks::succeeded(&self.db, d, o).await? {
                tracing::info!(delivery = d.id, "a webhook attempt finished after its claim was taken: logged only");
            }
            return Ok(());
        }
        let retry_in = self.settings.schedule.get(usize::try_from(d.step).unwrap_or(usize::MAX)).copied();
        // A run of failures is over once the endpoint went quiet for longer
        // than any retry waits: failures days apart are not one outage.
        let longest = self.settings.schedule.iter().max().copied().unwrap_or_default();
        let run_gap = longest + self.settings.timeout + Duration::from_secs(60);
        match hooks::failed(&self.db, d, o, retry_in, run_gap, self.settings.disable_after).await? {
            Failed::Retrying => crate::meter::hook_attempt("retrying", o.latency),
            Failed::GaveUp => {
                crate::meter::hook_attempt("gave_up", o.latency);
                tracing::warn!(endpoint = d.endpoint_id, delivery = d.id, event_type = %d.event_type,
                    "a webhook delivery failed every attempt of the schedule");
            }
            Failed::Disabled => {
                crate::meter::hook_attempt(if retry_in.is_some() { "retrying" } else { "gave_up" }, o.latency);
                crate::meter::hook_endpoint_disabled();
                tracing::warn!(
                    endpoint = d.endpoint_id,
                    "a webhook endpoint was disabled: its deliveries have failed for WEBHOOK_DISABLE_AFTER"
                );
            }
            Failed::Superseded => {
                tracing::info!(delivery = d.id, "a webhook attempt finished after its claim was taken: logged only");
            }
        }
        Ok(())
    }

    /// Makes deliveries and sends them until `stop`, keeping up to a batch
    /// in flight: a slot freed by one answer is filled at once, so a slow
    /// endpoint holds only its own slots (at most a quarter of the batch).
    /// At `stop`, the attempts in flight finish (each within its timeout).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!("webhook deliverer started");
        let me = Arc::new(self);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // The log's purge runs beside the sending, never in its way.
        let purger = tokio::spawn(me.clone().purge_every(stop.clone()));
        loop {
            while in_flight.try_join_next().is_some() {}
            let mut busy = false;
            match hooks::fan_out(&me.db, FAN_OUT_BATCH).await {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(error = %e, "making webhook deliveries failed; retrying"),
            }
            let free = me.settings.batch - in_flight.len() as i64;
            if free > 0 {
                match hooks::claim(&me.db, free, me.per_endpoint(), me.lease()).await {
                    Ok(due) => {
                        busy |= !due.is_empty();
                        for d in due {
                            let me = me.clone();
                            in_flight.spawn(async move { me.deliver(&d).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed; retrying"),
                }
            }
            let wait = if busy { Duration::ZERO } else { me.settings.interval };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        while in_flight.join_next().await.is_some() {}
        let _ = purger.await;
        tracing::info!("webhook deliverer stopped");
    }

    /// Deletes what the log keeps no longer, every hour until `stop`: a
    /// thousand rows at a time, with a pause between, so that the
    /// connections it shares stay free for the sending.
    async fn purge_every(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            loop {
                match hooks::purge(&self.db, self.settings.keep).await {
                    Ok(n) if n >= hooks::PURGE_BATCH => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "purging old webhook deliveries failed");
                        break;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PURGE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// How often the delivery log is purged of what it keeps no longer.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

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
