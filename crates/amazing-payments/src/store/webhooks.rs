//! `webhook.event`: verified Stripe events, stored once, then worked on.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool, types::Json};

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub payload: Json<Value>,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
}

const EVENT: &str = "id, type, payload, state, attempts, last_error, received_at";

/// Stores an event; false when it was already stored (a duplicate delivery).
pub async fn store(db: &PgPool, id: &str, kind: &str, payload: &Value) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("INSERT INTO webhook.event (id, type, payload) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(kind)
            .bind(Json(payload))
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Up to `limit` events due for work, oldest first, each pushed back
/// (exponentially with its attempts) so that no other worker takes it.
pub async fn take_due(db: &PgPool, limit: i64) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE webhook.event SET next_attempt_at = now() + make_interval(secs => least(power(2, attempts), 300)::float8),
             attempts = attempts + 1
         WHERE id IN (SELECT id FROM webhook.event WHERE state = 'pending' AND next_attempt_at <= now()
                      ORDER BY received_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {EVENT}"
    ))
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn processed(db: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook.event SET state = 'processed', processed_at = now(), last_error = NULL WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Notes a failure; parks the event after `max_attempts`.
pub async fn failed(db: &PgPool, id: &str, error: &str, max_attempts: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook.event SET last_error = $2, state = CASE WHEN attempts >= $3 THEN 'parked' ELSE state END WHERE id = $1")
        .bind(id)
        .bind(error)
        .bind(max_attempts)
        .execute(db)
        .await?;
    Ok(())
}

/// Events in `state` (or all), newest first.
pub async fn list(db: &PgPool, state: Option<&str>, limit: i64) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {EVENT} FROM webhook.event WHERE ($1::text IS NULL OR state = $1) ORDER BY received_at DESC LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Puts parked events (one, or all) back to work; how many.
pub async fn replay(db: &PgPool, id: Option<&str>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook.event SET state = 'pending', attempts = 0, next_attempt_at = now()
         WHERE state = 'parked' AND ($1::text IS NULL OR id = $1)",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
