//! `hooks.*`: the callers' webhook endpoints, a delivery per event and
//! endpoint, and the log of attempts. Deliveries are made from the outbox
//! ([`fan_out`]) in one statement that also marks the events as made, so an
//! event gives each endpoint exactly one delivery however many deliverers
//! run; a deliverer holds a delivery by a lease while it sends it, and a
//! delivery whose deliverer died is sent again when the lease runs out.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{FromRow, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// The columns of [`EndpointRow`].
const ENDPOINT: &str = "id, url, description, event_types, secret, previous_secret, previous_secret_until, \
                        disabled, disabled_reason, failing_since, created_at, updated_at";

#[derive(Clone, FromRow)]
pub struct EndpointRow {
    pub id: i64,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Without its secrets: a row printed never shows them.
impl std::fmt::Debug for EndpointRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRow")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// An endpoint's new values; `None` leaves one unchanged.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub url: Option<&'a str>,
    pub description: Option<&'a str>,
    pub event_types: Option<&'a [String]>,
    pub disabled: Option<bool>,
}

pub async fn insert_endpoint(
    db: &PgPool,
    url: &str,
    description: &str,
    event_types: &[String],
    secret: &str,
    api_key_id: Option<i64>,
) -> Result<EndpointRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO hooks.endpoint (url, description, event_types, secret, api_key_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING {ENDPOINT}"
    ))
    .bind(url)
    .bind(description)
    .bind(event_types)
    .bind(secret)
    .bind(api_key_id)
    .fetch_one(db)
    .await
}

pub async fn endpoints(db: &PgPool) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ENDPOINT} FROM hooks.endpoint ORDER BY id")).fetch_all(db).await
}

pub async fn endpoint(db: &PgPool, id: i64) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ENDPOINT} FROM hooks.endpoint WHERE id = $1")).bind(id).fetch_optional(db).await
}

pub async fn count_endpoints(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM hooks.endpoint").fetch_one(db).await
}

/// Applies `changes`. Enabling an endpoint clears its failure record and
/// makes its waiting deliveries due now.
pub async fn update_endpoint(db: &PgPool, id: i64, changes: &Changes<'_>) -> Result<Option<EndpointRow>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let before: Option<bool> = sqlx::query_scalar("SELECT disabled FROM hooks.endpoint WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(was_disabled) = before else { return Ok(None) };
    let row: EndpointRow = sqlx::query_as(&format!(
        "UPDATE hooks.endpoint SET
             url = coalesce($2, url),
             description = coalesce($3, description),
             event_types = coalesce($4, event_types),
             disabled = coalesce($5, disabled),
             disabled_reason = CASE WHEN $5 IS NULL THEN disabled_reason
                                    WHEN $5 THEN coalesce(CASE WHEN disabled THEN disabled_reason END, 'requested')
                                    ELSE NULL END,
             failing_since = CASE WHEN ($5 = false AND disabled) OR ($2 IS NOT NULL AND $2 <> url) THEN NULL
                                  ELSE failing_since END,
             updated_at = now()
         WHERE id = $1 RETURNING {ENDPOINT}"
    ))
    .bind(id)
    .bind(changes.url)
    .bind(changes.description)
    .bind(changes.event_types)
    .bind(changes.disabled)
    .fetch_one(&mut *tx)
    .await?;
    if was_disabled && changes.disabled == Some(false) {
        sqlx::query("UPDATE hooks.delivery SET next_attempt_at = now() WHERE endpoint_id = $1 AND state = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Some(row))
}

pub async fn delete_endpoint(db: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM hooks.endpoint WHERE id = $1").bind(id).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

/// Makes `secret` the endpoint's secret; the one it replaces signs too
/// until `overlap` has passed (none: it stops at once).
pub async fn roll_secret(
    db: &PgPool,
    id: i64,
    secret: &str,
    overlap: Option<Duration>,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE hooks.endpoint SET
             previous_secret = CASE WHEN $3::float8 IS NULL THEN NULL ELSE secret END,
             previous_secret_until = now() + make_interval(secs => $3::float8),
             secret = $2, updated_at = now()
         WHERE id = $1 RETURNING {ENDPOINT}"
    ))
    .bind(id)
    .bind(secret)
    .bind(overlap.map(|d| d.as_secs_f64()))
    .fetch_optional(db)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub endpoint_id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY: &str =
    "id, endpoint_id, event_id, event_type, state, attempts, next_attempt_at, created_at, delivered_at";

#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub delivery_id: i64,
    pub attempted_at: DateTime<Utc>,
    pub response_status: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
}

/// An endpoint's deliveries, newest first, below the id `before` (none:
/// from the newest).
pub async fn deliveries(
    db: &PgPool,
    endpoint_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DELIVERY} FROM hooks.delivery WHERE endpoint_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
    ))
    .bind(endpoint_id)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The attempts at the deliveries `ids`, oldest first.
pub async fn attempts_of(db: &PgPool, ids: &[i64]) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT delivery_id, attempted_at, response_status, latency_ms, error
         FROM hooks.attempt WHERE delivery_id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Makes a delivery due now, with a new round of the schedule. An attempt
/// in flight loses its claim: its outcome is logged, not recorded, and the
/// delivery is sent again.
pub async fn redeliver(db: &PgPool, endpoint_id: i64, id: i64) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE hooks.delivery SET state = 'pending', step = 0, next_attempt_at = now(),
                lease_until = NULL, claim_token = NULL
         WHERE id = $1 AND endpoint_id = $2 RETURNING {DELIVERY}"
    ))
    .bind(id)
    .bind(endpoint_id)
    .fetch_optional(db)
    .await
}

/// Makes the deliveries of up to `batch` outbox events not yet made, one
/// per endpoint subscribed to the event's type (a disabled one's wait until
/// it is enabled again), and marks the events made;
/// how many events. Events are taken in order, and rows another
/// deliverer is making are skipped, not waited for.
pub async fn fan_out(db: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "WITH batch AS (
             SELECT seq, id, type, body FROM notify.outbox WHERE hooked_at IS NULL
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED),
         made AS (
             INSERT INTO hooks.delivery (endpoint_id, event_id, event_type, payload)
             SELECT e.id, b.id, b.type, (b.body || jsonb_build_object('sequence', b.seq))::text
             FROM batch b JOIN hooks.endpoint e
               ON b.type = ANY (e.event_types) OR '*' = ANY (e.event_types)
             ON CONFLICT (endpoint_id, event_id) DO NOTHING)
         UPDATE notify.outbox o SET hooked_at = now() FROM batch WHERE o.seq = batch.seq",
    )
    .bind(batch)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A delivery a deliverer holds, with what it needs to send it.
#[derive(Clone, FromRow)]
pub struct Claimed {
    pub id: i64,
    /// Its claim: the outcome is recorded only while the delivery holds it.
    pub claim_token: Uuid,
    pub endpoint_id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: String,
    pub step: i32,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("endpoint_id", &self.endpoint_id)
            .field("event_type", &self.event_type)
            .finish_non_exhaustive()
    }
}

/// Takes up to `batch` due deliveries of enabled endpoints for `lease`, at
/// most `per_endpoint` in flight for any one endpoint (counting those
/// already held), so that a slow or broken endpoint, or one enabled again
/// with a backlog, never takes every slot.
pub async fn claim(db: &PgPool, batch: i64, per_endpoint: i64, lease: Duration) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH candidates AS (
             SELECT x.id FROM hooks.endpoint e
             CROSS JOIN LATERAL (
                 SELECT count(*) AS busy FROM hooks.delivery l
                 WHERE l.endpoint_id = e.id AND l.lease_until > now() AND l.state = 'pending') b
             CROSS JOIN LATERAL (
                 SELECT d.id, row_number() OVER (ORDER BY d.next_attempt_at, d.id) AS n FROM hooks.delivery d
                 WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.next_attempt_at <= now()
                   AND (d.lease_until IS NULL OR d.lease_until < now())
                 ORDER BY d.next_attempt_at, d.id LIMIT $3) x
             WHERE NOT e.disabled AND x.n + b.busy <= $3),
         due AS (
             SELECT d.id FROM hooks.delivery d
             WHERE d.id IN (SELECT id FROM candidates) AND d.state = 'pending'
               AND (d.lease_until IS NULL OR d.lease_until < now())
             ORDER BY d.next_attempt_at, d.id LIMIT $1 FOR UPDATE OF d SKIP LOCKED),
         held AS (
             UPDATE hooks.delivery d SET lease_until = now() + make_interval(secs => $2),
                                         claim_token = gen_random_uuid()
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.claim_token, d.endpoint_id, d.event_id, d.event_type, d.payload, d.step)
         SELECT h.*, e.url, e.secret,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret
         FROM held h JOIN hooks.endpoint e ON e.id = h.endpoint_id",
    )
    .bind(batch)
    .bind(lease.as_secs_f64())
    .bind(per_endpoint)
    .fetch_all(db)
    .await
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    pub latency: Duration,
    /// What went wrong; `None` for a 2xx.
    pub error: Option<String>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// What recording a failed attempt did to the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Failed {
    /// The delivery waits for its next attempt.
    Retrying,
    /// The schedule ran out: the delivery failed for good.
    GaveUp,
    /// The endpoint had failed for `disable_after`, and is now disabled.
    Disabled,
    /// The claim no longer held (redelivered, or taken over after the
    /// lease ran out): only the log has the attempt.
    Superseded,
}

/// Records a successful attempt: the delivery succeeded, and the endpoint
/// is failing no more. Whether the claim still held (else the attempt is
/// only logged: the delivery was redelivered or taken over meanwhile).
pub async fn succeeded(db: &PgPool, d: &Claimed, o: &Outcome) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    log_attempt(&mut tx, d.id, o).await?;
    let done = sqlx::query(
        "UPDATE hooks.delivery SET state = 'succeeded', attempts = attempts + 1, delivered_at = now(),
                lease_until = NULL, claim_token = NULL
         WHERE id = $1 AND claim_token = $2 AND state = 'pending'",
    )
    .bind(d.id)
    .bind(d.claim_token)
    .execute(&mut *tx)
    .await?;
    let held = done.rows_affected() == 1;
    if held {
        sqlx::query("UPDATE hooks.endpoint SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
            .bind(d.endpoint_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(held)
}

/// Records a failed attempt: the delivery waits `retry_in` for its next
/// one, or (none left) fails; the endpoint is failing since the first
/// failure of the current run (a run ends with a success, or after a quiet
/// `run_gap` without failures), and is disabled once that is
/// `disable_after` ago, a `webhook_endpoint.disabled` event going to the
/// endpoints that take it. Nothing but the log changes unless the claim
/// still held.
pub async fn failed(
    db: &PgPool,
    d: &Claimed,
    o: &Outcome,
    retry_in: Option<Duration>,
    run_gap: Duration,
    disable_after: Duration,
) -> Result<Failed, sqlx::Error> {
    let mut tx = db.begin().await?;
    log_attempt(&mut tx, d.id, o).await?;
    let done = sqlx::query(
        "UPDATE hooks.delivery SET attempts = attempts + 1, step = step + 1, lease_until = NULL, claim_token = NULL,
                state = CASE WHEN $2::float8 IS NULL THEN 'failed' ELSE 'pending' END,
                next_attempt_at = CASE WHEN $2::float8 IS NULL THEN next_attempt_at
                                       ELSE now() + make_interval(secs => $2::float8) END
         WHERE id = $1 AND claim_token = $3 AND state = 'pending'",
    )
    .bind(d.id)
    .bind(retry_in.map(|r| r.as_secs_f64()))
    .bind(d.claim_token)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.commit().await?;
        return Ok(Failed::Superseded);
    }
    sqlx::query(
        "UPDATE hooks.endpoint SET
             failing_since = CASE WHEN failing_since IS NULL OR last_failed_at IS NULL
                                       OR last_failed_at < now() - make_interval(secs => $2)
                                  THEN now() ELSE failing_since END,
             last_failed_at = now()
         WHERE id = $1",
    )
    .bind(d.endpoint_id)
    .bind(run_gap.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let disabled: Option<(String, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE hooks.endpoint SET disabled = true, disabled_reason = 'failing', updated_at = now()
         WHERE id = $1 AND NOT disabled AND failing_since < now() - make_interval(secs => $2)
         RETURNING url, failing_since",
    )
    .bind(d.endpoint_id)
    .bind(disable_after.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let result = match disabled {
        Some((url, since)) => {
            announce_disabled(&mut tx, d.endpoint_id, &url, since).await?;
            Failed::Disabled
        }
        None if retry_in.is_none() => Failed::GaveUp,
        None => Failed::Retrying,
    };
    tx.commit().await?;
    Ok(result)
}

async fn log_attempt(tx: &mut sqlx::PgConnection, delivery: i64, o: &Outcome) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO hooks.attempt (delivery_id, response_status, latency_ms, error) VALUES ($1, $2, $3, $4)")
        .bind(delivery)
        .bind(o.status.map(i32::from))
        .bind(i32::try_from(o.latency.as_millis()).unwrap_or(i32::MAX))
        .bind(o.error.as_deref())
        .execute(tx)
        .await?;
    Ok(())
}

/// The `webhook_endpoint.disabled` event, delivered to the other
/// endpoints that take it (not to the queue: it is no payment's event).
async fn announce_disabled(
    tx: &mut sqlx::PgConnection,
    endpoint_id: i64,
    url: &str,
    failing_since: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let id = Uuid::new_v4();
    let body = json!({
        "id": id,
        "type": crate::hooks::ENDPOINT_DISABLED,
        "schema_version": crate::domain::event::SCHEMA_VERSION,
        "occurred_at": Utc::now(),
        "source": "deliverer",
        "data": {"webhook_endpoint": {
            "id": endpoint_id, "url": url, "disabled_reason": "failing", "failing_since": failing_since,
        }},
    });
    sqlx::query(
        "INSERT INTO hooks.delivery (endpoint_id, event_id, event_type, payload)
         SELECT e.id, $1, $4, $2 FROM hooks.endpoint e
         WHERE e.id <> $3 AND ($4 = ANY (e.event_types) OR '*' = ANY (e.event_types))",
    )
    .bind(id)
    .bind(body.to_string())
    .bind(endpoint_id)
    .bind(crate::hooks::ENDPOINT_DISABLED)
    .execute(tx)
    .await?;
    Ok(())
}

/// Deliveries deleted by one [`purge`] at most.
pub const PURGE_BATCH: u64 = 1000;

/// Deletes up to [`PURGE_BATCH`] deliveries (and their log) older than
/// `keep` that are finished or wait for an endpoint still disabled; how many.
pub async fn purge(db: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM hooks.delivery WHERE id IN (
             SELECT d.id FROM hooks.delivery d JOIN hooks.endpoint e ON e.id = d.endpoint_id
             WHERE (d.state <> 'pending' OR e.disabled)
               AND d.created_at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind(keep.as_secs_f64())
    .bind(PURGE_BATCH as i64)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
