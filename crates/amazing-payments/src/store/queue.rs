//! `notify.message`: the built-in queue, for deployments without SQS. It
//! behaves as SQS does where it matters: a received message is hidden for a
//! visibility timeout and comes back if not deleted; a message that keeps
//! failing is set dead (the dead-letter queue), with its last error.

use super::outbox;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool, types::Json};
use std::time::Duration;
use uuid::Uuid;

/// Moves outbox rows into the queue and marks them published, in one
/// transaction: the built-in queue never holds a row twice.
pub async fn publish_from_outbox(db: &PgPool, seqs: &[i64]) -> Result<u64, sqlx::Error> {
    let mut tx = crate::store::begin(db).await?;
    sqlx::query(
        "INSERT INTO notify.message (event_id, seq, type, body)
         SELECT id, seq, type, body FROM notify.outbox WHERE seq = ANY($1) AND published_at IS NULL
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(seqs)
    .execute(&mut *tx)
    .await?;
    let n = outbox::mark_published(&mut tx, seqs).await?;
    tx.commit().await?;
    Ok(n)
}

#[derive(Debug, Clone, FromRow)]
pub struct Received {
    pub event_id: Uuid,
    pub body: Json<Value>,
    /// How many times it has been received, this time included.
    pub receives: i32,
}

/// Up to `limit` visible messages, oldest first, hidden for `visibility`.
pub async fn receive(db: &PgPool, limit: i64, visibility: Duration) -> Result<Vec<Received>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE notify.message SET receives = receives + 1, visible_at = now() + make_interval(secs => $2)
         WHERE event_id IN (
             SELECT event_id FROM notify.message WHERE state = 'ready' AND visible_at <= now()
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING event_id, body, receives",
    )
    .bind(limit)
    .bind(visibility.as_secs_f64())
    .fetch_all(db)
    .await
}

/// Deletes a handled message.
pub async fn delete(db: &PgPool, event_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notify.message WHERE event_id = $1").bind(event_id).execute(db).await?;
    Ok(())
}

/// Shows the message again after `delay`, keeping `error`.
pub async fn retry_later(db: &PgPool, event_id: Uuid, delay: Duration, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notify.message SET visible_at = now() + make_interval(secs => $2), last_error = $3
         WHERE event_id = $1 AND state = 'ready'",
    )
    .bind(event_id)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// Sets the message dead, with its last error.
pub async fn set_dead(db: &PgPool, event_id: Uuid, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE notify.message SET state = 'dead', dead_at = now(), last_error = $2 WHERE event_id = $1")
        .bind(event_id)
        .bind(error)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct DeadRow {
    pub event_id: Uuid,
    pub r#type: String,
    pub receives: i32,
    pub last_error: Option<String>,
    pub dead_at: Option<DateTime<Utc>>,
}

/// Dead messages, oldest first.
pub async fn dead(db: &PgPool, limit: i64) -> Result<Vec<DeadRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, type, receives, last_error, dead_at FROM notify.message
         WHERE state = 'dead' ORDER BY dead_at, seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Puts dead messages (one, or all) back in the queue, with their receive
/// count reset; how many.
pub async fn redrive(db: &PgPool, event_id: Option<Uuid>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notify.message SET state = 'ready', receives = 0, visible_at = now(), dead_at = NULL
         WHERE state = 'dead' AND ($1::uuid IS NULL OR event_id = $1)",
    )
    .bind(event_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Messages waiting (ready) and dead.
pub async fn depth(db: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'ready'), count(*) FILTER (WHERE state = 'dead') FROM notify.message",
    )
    .fetch_one(db)
    .await
}
