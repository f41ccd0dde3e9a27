//! `notify.outbox`: notification events, written in the transaction of the
//! state change they tell of (so a rolled-back change leaves none), and read
//! in order by the relay. `notify.relay_lease` lets one relay at a time
//! publish, which keeps the order when several instances run one.

use super::payments::{PAYMENT, PaymentRow, REFUND, RefundRow, Source};
use crate::domain::event::{
    CustomerSnapshot, DisputeSnapshot, Event, EventData, EventType, PaymentSnapshot, RefundSnapshot,
};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool, types::Json};
use std::time::Duration;
use uuid::Uuid;

/// Records `event` in the caller's transaction, with `data.customer` taken
/// from the customer's row in the same statement (one round trip, and the
/// snapshot is the row as this transaction sees it).
async fn record(conn: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO notify.outbox (id, type, schema_version, payment_id, customer_id, body, occurred_at)
         SELECT $1, $2, $3, $4, c.id,
                jsonb_set($6::jsonb, '{data,customer}',
                          jsonb_build_object('id', c.id, 'name', c.name, 'email', c.email)),
                $7
         FROM customer.customer c WHERE c.id = $5",
    )
    .bind(event.id)
    .bind(&event.kind)
    .bind(event.schema_version)
    .bind(event.data.payment.as_ref().map(|p| p.id))
    .bind(event.data.customer.id)
    .bind(Json(event))
    .bind(event.occurred_at)
    .execute(conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(())
}

/// The customer part of an event: filled in by [`record`].
fn customer(id: i64) -> CustomerSnapshot {
    CustomerSnapshot { id, name: None, email: String::new() }
}

fn payment_snapshot(row: &PaymentRow, previous: Option<&str>) -> PaymentSnapshot {
    PaymentSnapshot {
        id: row.id,
        status: row.status.clone(),
        previous_status: previous.map(String::from),
        amount: row.amount,
        currency: row.currency.clone(),
        amount_capturable: row.amount_capturable,
        amount_captured: row.amount_captured,
        amount_refunded: row.amount_refunded,
        capture_method: row.capture_method.clone(),
        description: row.description.clone(),
        metadata: row.metadata.0.clone(),
        receipt_email: row.receipt_email.clone(),
        stripe_payment_intent_id: row.stripe_payment_intent_id.clone(),
        failure_code: row.failure_code.clone(),
        failure_message: row.failure_message.clone(),
        cancellation_reason: row.cancellation_reason.clone(),
        created_at: row.created_at,
    }
}

fn refund_snapshot(r: &RefundRow, currency: &str) -> RefundSnapshot {
    RefundSnapshot {
        id: r.id,
        status: r.status.clone(),
        amount: r.amount,
        currency: currency.to_string(),
        reason: r.reason.clone(),
        failure_reason: r.failure_reason.clone(),
    }
}

/// Records the event of a payment's change (`before` is `None` for a new
/// payment), if the change is one: see [`EventType::of_payment_change`].
pub async fn payment_changed(
    conn: &mut PgConnection,
    before: Option<&PaymentRow>,
    row: &PaymentRow,
    refund_id: Option<i64>,
    source: Source,
) -> Result<(), sqlx::Error> {
    let Some(kind) = EventType::of_payment_change(before.map(PaymentRow::ledger).as_ref(), &row.ledger()) else {
        return Ok(());
    };
    let refund = match refund_id {
        Some(id) => Some(
            sqlx::query_as::<_, RefundRow>(&format!("SELECT {REFUND} FROM payment.refund WHERE id = $1"))
                .bind(id)
                .fetch_one(&mut *conn)
                .await?,
        ),
        None => None,
    };
    let data = EventData {
        customer: customer(row.customer_id),
        payment: Some(payment_snapshot(row, before.map(|b| b.status.as_str()))),
        refund: refund.as_ref().map(|r| refund_snapshot(r, &row.currency)),
        dispute: None,
    };
    record(conn, &Event::new(kind, source.as_str(), data).by(source.api_key_id)).await
}

/// Records the event of a refund's change from `before` (`None`: new).
pub async fn refund_changed(
    conn: &mut PgConnection,
    before: Option<&str>,
    refund: &RefundRow,
    source: Source,
) -> Result<(), sqlx::Error> {
    let Some(kind) = EventType::of_refund_change(before, &refund.status) else {
        return Ok(());
    };
    let payment: PaymentRow = sqlx::query_as(&format!("SELECT {PAYMENT} FROM payment.payment WHERE id = $1"))
        .bind(refund.payment_id)
        .fetch_one(&mut *conn)
        .await?;
    let data = EventData {
        customer: customer(payment.customer_id),
        refund: Some(refund_snapshot(refund, &payment.currency)),
        payment: Some(payment_snapshot(&payment, None)),
        dispute: None,
    };
    record(conn, &Event::new(kind, source.as_str(), data).by(source.api_key_id)).await
}

/// Records the dispute event `kind` of `dispute`, on `payment` (as this
/// transaction sees it).
pub async fn dispute_changed(
    conn: &mut PgConnection,
    kind: EventType,
    payment: &PaymentRow,
    dispute: &super::disputes::DisputeRow,
    source: Source,
) -> Result<(), sqlx::Error> {
    let data = EventData {
        customer: customer(payment.customer_id),
        payment: Some(payment_snapshot(payment, None)),
        refund: None,
        dispute: Some(DisputeSnapshot {
            status: dispute.status.clone(),
            reason: dispute.reason.clone(),
            id: Some(dispute.id),
            stripe_dispute_id: Some(dispute.stripe_dispute_id.clone()),
            amount: Some(dispute.amount),
            currency: Some(dispute.currency.clone()),
            evidence_due_by: dispute.evidence_due_by,
            is_charge_refundable: Some(dispute.is_charge_refundable),
            amount_withdrawn: Some(dispute.amount_withdrawn),
            amount_reinstated: Some(dispute.amount_reinstated),
        }),
    };
    record(conn, &Event::new(kind, source.as_str(), data).by(source.api_key_id)).await
}

/// Records `customer.updated` for the customer `id` (changed in this
/// transaction at the request of the API key `api_key_id`).
pub async fn customer_updated(conn: &mut PgConnection, id: i64, api_key_id: Option<i64>) -> Result<(), sqlx::Error> {
    let data = EventData { customer: customer(id), payment: None, refund: None, dispute: None };
    record(conn, &Event::new(EventType::CustomerUpdated, "api", data).by(api_key_id)).await
}

/// Records `customer.created` for the customer `id` (inserted in this
/// transaction at the request of the API key `api_key_id`).
pub async fn customer_created(conn: &mut PgConnection, id: i64, api_key_id: Option<i64>) -> Result<(), sqlx::Error> {
    let data = EventData { customer: customer(id), payment: None, refund: None, dispute: None };
    record(conn, &Event::new(EventType::CustomerCreated, "api", data).by(api_key_id)).await
}

/// An outbox row waiting to be published.
#[derive(Debug, Clone, FromRow)]
pub struct Unpublished {
    pub seq: i64,
    pub body: Json<Event>,
}

/// Takes or renews the relay lease for `holder`; whether it holds it now.
pub async fn hold_lease(db: &PgPool, holder: Uuid, lease: Duration) -> Result<bool, sqlx::Error> {
    let held: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO notify.relay_lease (name, holder, expires_at)
         VALUES ('relay', $1, now() + make_interval(secs => $2))
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
         WHERE relay_lease.holder = EXCLUDED.holder OR relay_lease.expires_at < now()
         RETURNING holder",
    )
    .bind(holder)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await?;
    Ok(held == Some(holder))
}

/// Gives the lease up (at shutdown), so another relay need not wait it out.
pub async fn release_lease(db: &PgPool, holder: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notify.relay_lease WHERE name = 'relay' AND holder = $1").bind(holder).execute(db).await?;
    Ok(())
}

/// The oldest unpublished events, in order.
pub async fn unpublished(db: &PgPool, limit: i64) -> Result<Vec<Unpublished>, sqlx::Error> {
    sqlx::query_as("SELECT seq, body FROM notify.outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1")
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Marks events published.
pub async fn mark_published(conn: &mut PgConnection, seqs: &[i64]) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("UPDATE notify.outbox SET published_at = now() WHERE seq = ANY($1) AND published_at IS NULL")
            .bind(seqs)
            .execute(conn)
            .await?;
    Ok(done.rows_affected())
}

/// How far the relay is behind: unpublished events, and the age of the oldest.
pub async fn lag(db: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT count(*), min(occurred_at) FROM notify.outbox WHERE published_at IS NULL")
        .fetch_one(db)
        .await
}

/// Deletes events published longer than `keep` ago whose webhook
/// deliveries are made (or that no endpoint could take); how many.
pub async fn purge_published(db: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM notify.outbox WHERE seq IN (
             SELECT seq FROM notify.outbox WHERE published_at < now() - make_interval(secs => $1)
                                               AND (hooked_at IS NOT NULL
                                                    OR NOT EXISTS (SELECT 1 FROM hooks.endpoint))
                                             LIMIT 1000)",
    )
    .bind(keep.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
