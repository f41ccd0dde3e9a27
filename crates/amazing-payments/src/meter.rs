//! Prometheus metrics: every family's name, labels and help in one place,
//! recorded through the `metrics` facade and exposed in Prometheus's text
//! format on a listener of their own (`METRICS_PORT`, path `/metrics`, no
//! API key: meant for the private network).
//!
//! Names follow Prometheus's conventions: the `amazing_payments_` prefix,
//! base units (`_seconds`; amounts in a currency's minor unit say so), and
//! `_total` for counters. Labels are bounded sets (rpc, transport, code,
//! reason, Stripe endpoint with its ids templated, status, currency), never
//! an id, a key or an address.
//!
//! Gauges that describe the database (outbox lag, queue depth, pool use) are
//! read when Prometheus scrapes, so that every instance, and `relay` or
//! `notifier` run alone, exposes the same truth.

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};
use tokio::net::TcpListener;

const REQUESTS: &str = "amazing_payments_requests_total";
const REQUEST_SECONDS: &str = "amazing_payments_request_duration_seconds";
const STRIPE_REQUESTS: &str = "amazing_payments_stripe_requests_total";
const STRIPE_SECONDS: &str = "amazing_payments_stripe_request_duration_seconds";
const STRIPE_RETRIES: &str = "amazing_payments_stripe_retries_total";
const STRIPE_PACED: &str = "amazing_payments_stripe_paced_calls_total";
const REPLAYS: &str = "amazing_payments_idempotency_replays_total";
const TRANSITIONS: &str = "amazing_payments_payment_transitions_total";
const REFUND_TRANSITIONS: &str = "amazing_payments_refund_transitions_total";
const AMOUNTS: &str = "amazing_payments_amount_minor_units_total";
const RECONCILER_PASSES: &str = "amazing_payments_reconciler_passes_total";
const RECONCILER_CORRECTIONS: &str = "amazing_payments_reconciler_corrections_total";
const WEBHOOKS: &str = "amazing_payments_webhooks_received_total";
const WEBHOOKS_PARKED: &str = "amazing_payments_webhooks_parked";
const OUTBOX_LAG_EVENTS: &str = "amazing_payments_outbox_lag_events";
const OUTBOX_LAG_SECONDS: &str = "amazing_payments_outbox_lag_seconds";
const QUEUE_MESSAGES: &str = "amazing_payments_queue_messages";
const MAILS: &str = "amazing_payments_mails_total";
const DB_CONNECTIONS: &str = "amazing_payments_db_pool_connections";
const DB_MAX: &str = "amazing_payments_db_pool_max_connections";
const BUILD_INFO: &str = "amazing_payments_build_info";
const SCRAPE_ERRORS: &str = "amazing_payments_metrics_scrape_errors_total";
const DB_GAUGES_UP: &str = "amazing_payments_db_gauges_up";
const DB_READS: &str = "amazing_payments_db_reads_total";
const REPLICA_UP: &str = "amazing_payments_db_replica_up";
const REPLICA_LAG: &str = "amazing_payments_db_replica_lag_seconds";
const HOOK_ATTEMPTS: &str = "amazing_payments_webhook_delivery_attempts_total";
const HOOK_SECONDS: &str = "amazing_payments_webhook_delivery_duration_seconds";
const HOOK_DISABLED: &str = "amazing_payments_webhook_endpoints_disabled_total";
const HOOK_PENDING: &str = "amazing_payments_webhook_deliveries_pending";
const HOOK_DUE_SECONDS: &str = "amazing_payments_webhook_delivery_lag_seconds";

/// Latency buckets, in seconds: 5 ms to 30 s (Stripe's own calls can take
/// seconds; the overload target is 0.15 s).
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The process's recorder, installed once (tests start many services in one
/// process; they share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe() {
    describe_counter!(REQUESTS, "Requests answered, by rpc, transport, gRPC code and reason.");
    describe_histogram!(REQUEST_SECONDS, metrics::Unit::Seconds, "Time to answer a request, by rpc and transport.");
    describe_counter!(STRIPE_REQUESTS, "Stripe API attempts, by endpoint (ids templated) and outcome.");
    describe_histogram!(STRIPE_SECONDS, metrics::Unit::Seconds, "Time of one Stripe API attempt, by endpoint.");
    describe_counter!(STRIPE_RETRIES, "Stripe API attempts that were retried, by endpoint.");
    describe_counter!(STRIPE_PACED, "Stripe calls held by STRIPE_MAX_RPS, by outcome (waited, not_sent).");
    describe_counter!(REPLAYS, "Answers replayed for a repeated idempotency key, by rpc.");
    describe_counter!(TRANSITIONS, "Payment status changes, by from, to and source (api, webhook, reconciler).");
    describe_counter!(REFUND_TRANSITIONS, "Refund status changes, by from and to.");
    describe_counter!(
        AMOUNTS,
        "Money moved, in the currency's minor unit, by kind (authorized, captured, refunded) and currency."
    );
    describe_counter!(RECONCILER_PASSES, "Reconciler passes, by outcome.");
    describe_counter!(RECONCILER_CORRECTIONS, "Records the reconciler brought in line with Stripe, by kind.");
    describe_counter!(WEBHOOKS, "Stripe webhook deliveries, by outcome (stored, duplicate, refused).");
    describe_gauge!(WEBHOOKS_PARKED, "Stripe events parked after failing too often.");
    describe_gauge!(OUTBOX_LAG_EVENTS, "Notification events written but not yet published to the queue.");
    describe_gauge!(OUTBOX_LAG_SECONDS, metrics::Unit::Seconds, "Age of the oldest event not yet published.");
    describe_gauge!(QUEUE_MESSAGES, "Messages in the built-in queue, by state (ready, dead).");
    describe_counter!(MAILS, "Notification mails, by outcome (sent, retried, dead).");
    describe_gauge!(DB_CONNECTIONS, "Database pool connections, by state (idle, in_use).");
    describe_gauge!(DB_MAX, "The database pool's size limit.");
    describe_gauge!(BUILD_INFO, "Always 1; the version in a label.");
    describe_counter!(SCRAPE_ERRORS, "Scrapes whose database gauges could not be read.");
    describe_gauge!(
        DB_GAUGES_UP,
        "1 when the last reading of the database gauges succeeded, else 0 (they then show old values)."
    );
    describe_counter!(
        DB_READS,
        "Reads (gets and lists) with a read replica set, by where they went (replica, primary)."
    );
    describe_counter!(
        HOOK_ATTEMPTS,
        "Webhook deliveries to callers' endpoints attempted, by outcome (succeeded, retrying, gave_up)."
    );
    describe_histogram!(HOOK_SECONDS, metrics::Unit::Seconds, "Time of one webhook delivery attempt.");
    describe_counter!(HOOK_DISABLED, "Callers' webhook endpoints disabled after failing for WEBHOOK_DISABLE_AFTER.");
    describe_gauge!(HOOK_PENDING, "Webhook deliveries not yet succeeded nor given up.");
    describe_gauge!(
        HOOK_DUE_SECONDS,
        metrics::Unit::Seconds,
        "How long the oldest due webhook delivery has waited for its attempt."
    );
    describe_gauge!(REPLICA_UP, "1 while the read replica takes reads, else 0 (down, lagging, or not a replica).");
    describe_gauge!(
        REPLICA_LAG,
        metrics::Unit::Seconds,
        "How long ago the primary first held a write the read replica has not replayed (0: caught up; NaN: unknown)."
    );
}

/// A read, sent to the `replica` or the `primary`.
pub fn db_read(target: &'static str) {
    counter!(DB_READS, "target" => target).increment(1);
}

/// What the read replica's watchdog last found.
pub fn replica(up: bool, lag: Option<Duration>) {
    gauge!(REPLICA_UP).set(if up { 1.0 } else { 0.0 });
    // Unknown (down, promoted, detached) is NaN, never a stale 0.
    gauge!(REPLICA_LAG).set(lag.map_or(f64::NAN, |l| l.as_secs_f64()));
}

/// One answered request.
pub fn request(rpc: &str, transport: &'static str, code: &'static str, reason: &str, took: Duration) {
    counter!(REQUESTS, "rpc" => rpc.to_string(), "transport" => transport, "code" => code, "reason" => reason.to_string())
        .increment(1);
    histogram!(REQUEST_SECONDS, "rpc" => rpc.to_string(), "transport" => transport).record(took.as_secs_f64());
}

/// One Stripe attempt; `path` is templated here.
pub fn stripe_attempt(method: &str, path: &str, outcome: &'static str, took: Duration) {
    let endpoint = stripe_endpoint(method, path);
    counter!(STRIPE_REQUESTS, "endpoint" => endpoint.clone(), "outcome" => outcome).increment(1);
    histogram!(STRIPE_SECONDS, "endpoint" => endpoint).record(took.as_secs_f64());
}

/// A call STRIPE_MAX_RPS held: it `waited` its turn, or was `not_sent`.
pub fn stripe_paced(outcome: &'static str) {
    counter!(STRIPE_PACED, "outcome" => outcome).increment(1);
}

pub fn stripe_retry(method: &str, path: &str) {
    counter!(STRIPE_RETRIES, "endpoint" => stripe_endpoint(method, path)).increment(1);
}

/// `POST /v1/payment_intents/pi_3Nx.../capture` → `POST /v1/payment_intents/{id}/capture`.
pub fn stripe_endpoint(method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| {
            let id = s.contains('_') && s.chars().any(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
            if id { "{id}" } else { s }
        })
        .collect();
    format!("{method} {}", segments.join("/"))
}

pub fn replay(rpc: &str) {
    counter!(REPLAYS, "rpc" => rpc.to_string()).increment(1);
}

/// A payment's status change (`from` is `new` for a payment just made), and
/// the money it moved.
pub fn payment_changed(from: &str, to: &str, source: &'static str, currency: &str, moved: &[(&'static str, i64)]) {
    counter!(TRANSITIONS, "from" => from.to_string(), "to" => to.to_string(), "source" => source).increment(1);
    for (kind, amount) in moved.iter().filter(|(_, a)| *a > 0) {
        counter!(AMOUNTS, "kind" => *kind, "currency" => currency.to_string()).increment(*amount as u64);
    }
}

pub fn refund_changed(from: &str, to: &str) {
    counter!(REFUND_TRANSITIONS, "from" => from.to_string(), "to" => to.to_string()).increment(1);
}

pub fn reconciler_pass(ok: bool) {
    counter!(RECONCILER_PASSES, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

pub fn reconciler_corrected(kind: &'static str, n: u64) {
    if n > 0 {
        counter!(RECONCILER_CORRECTIONS, "kind" => kind).increment(n);
    }
}

pub fn webhook(outcome: &'static str) {
    counter!(WEBHOOKS, "outcome" => outcome).increment(1);
}

/// An attempt at a webhook delivery: `outcome` and how long it took.
pub fn hook_attempt(outcome: &'static str, took: Duration) {
    counter!(HOOK_ATTEMPTS, "outcome" => outcome).increment(1);
    histogram!(HOOK_SECONDS).record(took.as_secs_f64());
}

pub fn hook_endpoint_disabled() {
    counter!(HOOK_DISABLED).increment(1);
}

pub fn mail(outcome: &'static str) {
    counter!(MAILS, "outcome" => outcome).increment(1);
}

/// Reads the database's gauges (bounded by a timeout: a scrape never hangs
/// on a sick database, it reports the error instead).
async fn read_gauges(db: &PgPool) {
    let max = db.options().get_max_connections();
    let (size, idle) = (db.size(), db.num_idle() as u32);
    gauge!(DB_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    gauge!(DB_CONNECTIONS, "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
    gauge!(DB_MAX).set(f64::from(max));
    let read = async {
        let (lag_events, lag_seconds): (i64, f64) = sqlx::query_as(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(occurred_at))::float8, 0)
               FROM notify.outbox WHERE published_at IS NULL",
        )
        .fetch_one(db)
        .await?;
        let queue: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM notify.message GROUP BY state").fetch_all(db).await?;
        let parked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook.event WHERE state = 'parked'").fetch_one(db).await?;
        let hooks: (i64, f64) = sqlx::query_as(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)
                                              FILTER (WHERE next_attempt_at <= now()))::float8, 0)
               FROM hooks.delivery d JOIN hooks.endpoint e ON e.id = d.endpoint_id AND NOT e.disabled
              WHERE d.state = 'pending'",
        )
        .fetch_one(db)
        .await?;
        Ok::<_, sqlx::Error>((lag_events, lag_seconds, queue, parked, hooks))
    };
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok((lag_events, lag_seconds, queue, parked, (hooks_pending, hooks_due)))) => {
            gauge!(HOOK_PENDING).set(hooks_pending as f64);
            gauge!(HOOK_DUE_SECONDS).set(hooks_due.max(0.0));
            gauge!(DB_GAUGES_UP).set(1.0);
            gauge!(OUTBOX_LAG_EVENTS).set(lag_events as f64);
            gauge!(OUTBOX_LAG_SECONDS).set(lag_seconds.max(0.0));
            for state in ["ready", "dead"] {
                let n = queue.iter().find(|(s, _)| s == state).map(|(_, n)| *n).unwrap_or(0);
                gauge!(QUEUE_MESSAGES, "state" => state).set(n as f64);
            }
            gauge!(WEBHOOKS_PARKED).set(parked as f64);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the database gauges could not be read");
            counter!(SCRAPE_ERRORS).increment(1);
            gauge!(DB_GAUGES_UP).set(0.0);
        }
        Err(_) => {
            tracing::warn!("metrics: the database gauges took over 2 s");
            counter!(SCRAPE_ERRORS).increment(1);
            gauge!(DB_GAUGES_UP).set(0.0);
        }
    }
}

/// The last reading of the database gauges: scrapes, however many and from
/// whoever, read the database at most once a second, one at a time.
static LAST_READ: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);

async fn metrics(State(db): State<PgPool>) -> impl IntoResponse {
    let started = Instant::now();
    if let Ok(mut last) = LAST_READ.try_lock()
        && last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
    {
        read_gauges(&db).await;
        *last = Some(Instant::now());
    }
    let body = handle().render();
    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "metrics scraped");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, db: PgPool, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Histograms are folded into the exposition by this upkeep (or a
    // scrape): without it, samples would pile up while nobody scrapes.
    tokio::spawn(async {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            handle().run_upkeep();
        }
    });
    let router = Router::new().route("/metrics", get(metrics)).with_state(db);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripe_endpoint_never_carries_an_id() {
        assert_eq!(
            stripe_endpoint("POST", "/v1/payment_intents/pi_3Nx9AbC2eZvKYlo2/capture"),
            "POST /v1/payment_intents/{id}/capture"
        );
        assert_eq!(stripe_endpoint("GET", "/v1/refunds/re_123?expand=x"), "GET /v1/refunds/{id}");
        assert_eq!(stripe_endpoint("POST", "/v1/payment_intents"), "POST /v1/payment_intents");
        assert_eq!(stripe_endpoint("GET", "/v1/payment_intents/search"), "GET /v1/payment_intents/search");
    }
}
