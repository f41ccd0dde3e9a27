//! `notify.mail`: one row per event the notifier mails. Claiming the row
//! before sending, and marking it sent after, is what keeps a redelivered
//! event (SQS copies, a relay that published twice) from being mailed again.

use sqlx::{FromRow, PgPool};
use std::{collections::HashMap, time::Duration};
use uuid::Uuid;

/// What a notifier may do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Send it: this is attempt number `n`.
    Send(i32),
    /// Mailed already: drop the copy.
    Done,
    /// Another notifier is sending it now: look again later.
    Busy,
}

/// Claims `event_id` for sending for `lease`. A claim whose sender died
/// (its lease ran out) may be taken over.
pub async fn claim(db: &PgPool, event_id: Uuid, kind: &str, lease: Duration) -> Result<Claim, sqlx::Error> {
    let attempt: Option<i32> = sqlx::query_scalar(
        "INSERT INTO notify.mail (event_id, type, state, attempts, lease_until)
         VALUES ($1, $2, 'sending', 1, now() + make_interval(secs => $3))
         ON CONFLICT (event_id) DO UPDATE
             SET state = 'sending', attempts = mail.attempts + 1, lease_until = EXCLUDED.lease_until, updated_at = now()
             WHERE mail.state = 'failed' OR (mail.state = 'sending' AND mail.lease_until < now())
         RETURNING attempts",
    )
    .bind(event_id)
    .bind(kind)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await?;
    if let Some(n) = attempt {
        return Ok(Claim::Send(n));
    }
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM notify.mail WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(db)
        .await?;
    Ok(match state.as_deref() {
        Some("sending") => Claim::Busy,
        _ => Claim::Done,
    })
}

/// The mail was accepted by the relay.
pub async fn sent(db: &PgPool, event_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notify.mail SET state = 'sent', sent_at = now(), lease_until = NULL, last_error = NULL,
             updated_at = now()
         WHERE event_id = $1",
    )
    .bind(event_id)
    .execute(db)
    .await?;
    Ok(())
}

/// The attempt failed; the next copy may try again.
pub async fn failed(db: &PgPool, event_id: Uuid, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notify.mail SET state = 'failed', lease_until = NULL, last_error = $2, updated_at = now()
         WHERE event_id = $1 AND state = 'sending'",
    )
    .bind(event_id)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct MailRow {
    pub event_id: Uuid,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// The mail rows of `ids`, by event id.
pub async fn of(db: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, MailRow>, sqlx::Error> {
    let rows: Vec<MailRow> =
        sqlx::query_as("SELECT event_id, state, attempts, last_error FROM notify.mail WHERE event_id = ANY($1)")
            .bind(ids)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|r| (r.event_id, r)).collect())
}

/// Deletes rows of mails sent longer ago than `keep` (well beyond any
/// queue's retention, so no copy of their event can still arrive).
pub async fn purge(db: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM notify.mail WHERE event_id IN (
             SELECT event_id FROM notify.mail WHERE state = 'sent' AND sent_at < now() - make_interval(secs => $1)
             LIMIT 1000)",
    )
    .bind(keep.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
