//! `payment.dispute`: a payment's disputes as Stripe last reported them.
//! Each report is applied in one transaction that locks the payment (so a
//! payment's events stay in order), writes a history line for each change
//! and the event it gives: `dispute.created` for a dispute first seen,
//! `dispute.closed` when it ends, `dispute.updated` for any other change.
//! Reports come in no order: a closed dispute is never reopened by an older
//! report, and money moved is only ever added.

use super::{
    outbox,
    payments::{self, Cause, Source},
};
use crate::{domain::event::EventType, stripe::types::Dispute};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

const DISPUTE: &str = "id, payment_id, stripe_dispute_id, status, reason, amount, currency, evidence_due_by, \
                       is_charge_refundable, submission_count, amount_withdrawn, amount_reinstated, created_at, updated_at";

#[derive(Debug, Clone, FromRow)]
pub struct DisputeRow {
    pub id: i64,
    pub payment_id: i64,
    pub stripe_dispute_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub evidence_due_by: Option<DateTime<Utc>>,
    pub is_charge_refundable: bool,
    pub submission_count: i32,
    pub amount_withdrawn: i64,
    pub amount_reinstated: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub fn is_closed(status: &str) -> bool {
    matches!(status, "won" | "lost" | "warning_closed")
}

/// How far along Stripe moves a dispute: an inquiry (`warning_*`) may
/// close, or become a chargeback, which is decided won or lost. A report
/// ranked below what is stored is older news; a status not known here
/// (one Stripe added since) is never taken for older news.
fn rank(status: &str) -> Option<u8> {
    match status {
        "warning_needs_response" => Some(1),
        "warning_under_review" => Some(2),
        "warning_closed" => Some(3),
        "needs_response" => Some(4),
        "under_review" => Some(5),
        "won" | "lost" => Some(6),
        _ => None,
    }
}

/// What applying a report changed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub row: DisputeRow,
    pub events: Vec<EventType>,
}

/// Applies Stripe's `d` to the dispute of payment `payment_id`.
pub async fn apply(db: &PgPool, payment_id: i64, d: &Dispute, source: Source) -> Result<Option<Applied>, sqlx::Error> {
    let mut tx = crate::store::begin(db).await?;
    let Some(payment) = payments::lock(&mut tx, payment_id).await? else { return Ok(None) };
    let before: Option<DisputeRow> =
        sqlx::query_as(&format!("SELECT {DISPUTE} FROM payment.dispute WHERE stripe_dispute_id = $1 FOR UPDATE"))
            .bind(&d.id)
            .fetch_optional(&mut *tx)
            .await?;
    // The money in the charge's currency: a withdrawal takes the disputed
    // amount, a reinstatement gives it back (the balance transactions are
    // in the account's currency, and carry the fee).
    let (withdrawn, reinstated) = d.movements();
    let (withdrawn, reinstated) = (if withdrawn > 0 { d.amount } else { 0 }, if reinstated > 0 { d.amount } else { 0 });
    // An older report (read from Stripe before one applied since) never
    // undoes a newer one: its status, reason, due date and refundability
    // are not taken; counts and money only grow.
    let stale = before.as_ref().is_some_and(|b| match (rank(&d.status), rank(&b.status)) {
        (Some(new), Some(old)) => new < old,
        _ => false,
    });
    let (status, reason, due, refundable) = match (&before, stale) {
        (Some(b), true) => (b.status.clone(), b.reason.clone(), b.evidence_due_by, b.is_charge_refundable),
        _ => (
            d.status.clone(),
            d.reason.clone(),
            d.evidence_details.due_by.and_then(|t| DateTime::from_timestamp(t, 0)),
            d.is_charge_refundable,
        ),
    };
    let row: DisputeRow = sqlx::query_as(&format!(
        "INSERT INTO payment.dispute (payment_id, stripe_dispute_id, status, reason, amount, currency, evidence_due_by,
                                      is_charge_refundable, submission_count, amount_withdrawn, amount_reinstated)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (stripe_dispute_id) DO UPDATE SET
             status = EXCLUDED.status, reason = EXCLUDED.reason, evidence_due_by = EXCLUDED.evidence_due_by,
             is_charge_refundable = EXCLUDED.is_charge_refundable,
             submission_count = greatest(dispute.submission_count, EXCLUDED.submission_count),
             amount_withdrawn = greatest(dispute.amount_withdrawn, EXCLUDED.amount_withdrawn),
             amount_reinstated = greatest(dispute.amount_reinstated, EXCLUDED.amount_reinstated),
             updated_at = now()
         RETURNING {DISPUTE}"
    ))
    .bind(payment_id)
    .bind(&d.id)
    .bind(&status)
    .bind(&reason)
    .bind(d.amount)
    .bind(d.currency.to_ascii_lowercase())
    .bind(due)
    .bind(refundable)
    .bind(d.evidence_details.submission_count)
    .bind(withdrawn)
    .bind(reinstated)
    .fetch_one(&mut *tx)
    .await?;

    let mut notes: Vec<String> = Vec::new();
    let mut events = Vec::new();
    let reason = row.reason.as_deref().unwrap_or("no reason given");
    match &before {
        None => {
            notes.push(format!("dispute opened ({reason}): {} (dispute {})", row.status, row.id));
            // A dispute the service told of before it kept disputes (the
            // payment's status set, no row) had its dispute.created then.
            let told: bool = sqlx::query_scalar(
                "SELECT p.dispute_status IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM payment.dispute d WHERE d.payment_id = p.id AND d.id <> $2)
                 FROM payment.payment p WHERE p.id = $1",
            )
            .bind(payment_id)
            .bind(row.id)
            .fetch_one(&mut *tx)
            .await?;
            if !told {
                events.push(EventType::DisputeCreated);
            }
        }
        Some(b) => {
            if b.status != row.status {
                notes.push(format!("dispute {} {}", row.id, row.status));
            }
            if b.reason != row.reason {
                notes.push(format!("dispute {}: reason now {reason}", row.id));
            }
            if b.is_charge_refundable != row.is_charge_refundable {
                let can = if row.is_charge_refundable { "can be refunded again" } else { "can no longer be refunded" };
                notes.push(format!("dispute {}: the charge {can}", row.id));
            }
        }
    }
    let (w0, r0, s0) =
        before.as_ref().map_or((0, 0, 0), |b| (b.amount_withdrawn, b.amount_reinstated, b.submission_count));
    if row.submission_count > s0 && before.is_some() {
        notes.push(format!("dispute {}: evidence submitted", row.id));
    }
    if row.amount_withdrawn > w0 {
        notes.push(format!("dispute {}: {} {} withdrawn", row.id, row.amount_withdrawn - w0, row.currency));
    }
    if row.amount_reinstated > r0 {
        notes.push(format!("dispute {}: {} {} reinstated", row.id, row.amount_reinstated - r0, row.currency));
    }
    let changed = before.is_none() || !notes.is_empty();
    if before.as_ref().is_none_or(|b| b.status != row.status) && is_closed(&row.status) {
        events.push(EventType::DisputeClosed);
    } else if before.is_some() && changed {
        events.push(EventType::DisputeUpdated);
    }
    if !changed {
        tx.commit().await?;
        return Ok(Some(Applied { row, events }));
    }
    let after: payments::PaymentRow = sqlx::query_as(&format!(
        "UPDATE payment.payment SET dispute_status = $2, amount_disputed = (
             SELECT coalesce(sum(amount_withdrawn - amount_reinstated), 0)::bigint
             FROM payment.dispute WHERE payment_id = $1), updated_at = now()
         WHERE id = $1 RETURNING {}",
        payments::PAYMENT
    ))
    .bind(payment_id)
    .bind(&row.status)
    .fetch_one(&mut *tx)
    .await?;
    for note in &notes {
        payments::add_history(
            &mut tx,
            Some(&payment),
            &after,
            source,
            &Cause { note: Some(note), ..Default::default() },
        )
        .await?;
    }
    for kind in &events {
        outbox::dispute_changed(&mut tx, *kind, &after, &row, source).await?;
    }
    tx.commit().await?;
    Ok(Some(Applied { row, events }))
}

pub async fn get(db: &PgPool, id: i64) -> Result<Option<DisputeRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {DISPUTE} FROM payment.dispute WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// Disputes, newest first, below the id `before`; of one payment if given.
pub async fn list(
    db: &PgPool,
    payment_id: Option<i64>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DisputeRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DISPUTE} FROM payment.dispute WHERE ($1::bigint IS NULL OR payment_id = $1) AND id < $2
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(payment_id)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Whether the payment has a dispute that keeps its charge from being
/// refunded (a chargeback open or lost), as last reported.
pub async fn blocks_refunds(conn: &mut sqlx::PgConnection, payment_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payment.dispute WHERE payment_id = $1 AND NOT is_charge_refundable)",
    )
    .bind(payment_id)
    .fetch_one(conn)
    .await
}
