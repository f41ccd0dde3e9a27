//! `payment.payment`, `payment.refund`, `payment.history` and
//! `payment.operation`. A change of a payment is saved together with its
//! history row, in the caller's transaction.

use super::{idempotency::NewClaim, outbox};
use crate::domain::{
    operation::{CorruptOperation, Operation, State},
    payment::{Ledger, Status},
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection, PgPool, Row, postgres::PgRow, types::Json};
use std::collections::HashMap;

#[derive(Debug, Clone, FromRow)]
pub struct PaymentRow {
    pub id: i64,
    pub customer_id: i64,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub capture_method: String,
    pub price_id: Option<i64>,
    pub quantity: Option<i64>,
    pub payment_method: String,
    pub description: Option<String>,
    pub metadata: Json<HashMap<String, String>>,
    pub receipt_email: Option<String>,
    pub return_url: Option<String>,
    /// Charged while the customer is away (`off_session` to Stripe).
    pub off_session: bool,
    pub stripe_payment_intent_id: Option<String>,
    pub stripe_charge_id: Option<String>,
    pub client_secret: Option<String>,
    pub next_action: Option<Json<Value>>,
    pub capture_before: Option<DateTime<Utc>>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub decline_code: Option<String>,
    pub cancellation_reason: Option<String>,
    pub integrity_error: Option<String>,
    /// The status of its latest dispute, if one was opened.
    pub dispute_status: Option<String>,
    /// What its disputes hold back now: withdrawn less reinstated.
    pub amount_disputed: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PaymentRow {
    pub fn status(&self) -> Status {
        Status::parse(&self.status).expect("the status column is checked")
    }

    pub fn ledger(&self) -> Ledger {
        Ledger {
            status: self.status(),
            amount: self.amount,
            capturable: self.amount_capturable,
            captured: self.amount_captured,
            refunded: self.amount_refunded,
        }
    }

    pub fn set_ledger(&mut self, l: Ledger) {
        self.status = l.status.as_str().to_string();
        self.amount_capturable = l.capturable;
        self.amount_captured = l.captured;
        self.amount_refunded = l.refunded;
    }
}

pub(crate) const PAYMENT: &str = "id, customer_id, status, amount, currency, amount_capturable, amount_captured, amount_refunded, \
    capture_method, price_id, quantity, payment_method, description, metadata, receipt_email, return_url, off_session, \
    stripe_payment_intent_id, stripe_charge_id, client_secret, next_action, capture_before, failure_code, \
    failure_message, decline_code, cancellation_reason, integrity_error, dispute_status, amount_disputed, created_at, \
    updated_at";

#[derive(Debug, Clone, FromRow)]
pub struct RefundRow {
    pub id: i64,
    pub payment_id: i64,
    pub status: String,
    pub amount: i64,
    pub reason: Option<String>,
    pub stripe_refund_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub(crate) const REFUND: &str = "id, payment_id, status, amount, reason, stripe_refund_id, failure_reason, created_at";

#[derive(Debug, Clone, FromRow)]
pub struct HistoryRow {
    pub payment_id: i64,
    pub refund_id: Option<i64>,
    pub from_status: Option<String>,
    pub to_status: String,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub source: String,
    pub stripe_request_id: Option<String>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The API key whose request made the change.
    pub api_key_id: Option<i64>,
}

/// The path by which a change was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Api,
    Webhook,
    Reconciler,
}

/// Who made a change, for its history line and event (the audit trail):
/// the path that wrote it and the API key whose request it carries out.
/// A request's change names its key; so does the reconciler's when it
/// finishes an operation a key asked for. Stripe's webhooks, and the
/// reconciler's corrections on its own, name none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub via: Via,
    pub api_key_id: Option<i64>,
}

impl Source {
    pub const WEBHOOK: Source = Source { via: Via::Webhook, api_key_id: None };
    pub const RECONCILER: Source = Source { via: Via::Reconciler, api_key_id: None };

    /// A request's change, made with the API key `api_key_id`.
    pub const fn api(api_key_id: Option<i64>) -> Source {
        Source { via: Via::Api, api_key_id }
    }

    /// This path, carrying out what the key `api_key_id` asked for.
    pub fn for_key(self, api_key_id: Option<i64>) -> Source {
        Source { api_key_id, ..self }
    }

    pub fn as_str(self) -> &'static str {
        match self.via {
            Via::Api => "api",
            Via::Webhook => "webhook",
            Via::Reconciler => "reconciler",
        }
    }
}

/// Why a row changed, for its history line.
#[derive(Debug, Clone, Default)]
pub struct Cause<'a> {
    pub refund_id: Option<i64>,
    pub stripe_request_id: Option<&'a str>,
    pub note: Option<&'a str>,
}

/// An operation recorded before Stripe is called, read strictly (see
/// [`Operation`]).
#[derive(Debug, Clone)]
pub struct OperationRow {
    pub id: i64,
    pub op: Operation,
    pub idempotency_key: String,
    pub state: State,
    /// Why it failed, or what its last attempt met.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The client idempotency key bound to it, while one is.
    pub request_key: Option<String>,
    /// The API key whose request asked for it.
    pub api_key_id: Option<i64>,
    /// Recorded by the request now driving it (not read back): its first
    /// attempt is this request's own.
    pub fresh: bool,
}

impl OperationRow {
    /// The operation's own reference, sent to Stripe in the metadata of the
    /// object it creates (`ap_operation`), by which it is found again when
    /// its idempotency key can no longer tell what happened. None for
    /// operations recorded before keys were random (their requests must be
    /// sent exactly as they were).
    pub fn reference(&self) -> Option<&str> {
        (!self.idempotency_key.starts_with("ap-op-")).then_some(self.idempotency_key.as_str())
    }
}

/// A journal row as stored.
#[derive(FromRow)]
struct StoredOperation {
    id: i64,
    kind: String,
    payment_id: Option<i64>,
    refund_id: Option<i64>,
    amount: Option<i64>,
    idempotency_key: String,
    params: Json<Value>,
    state: String,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    request_key: Option<String>,
    api_key_id: Option<i64>,
}

impl<'r> FromRow<'r, PgRow> for OperationRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let s = StoredOperation::from_row(row)?;
        let op = Operation::from_row(s.id, &s.kind, s.payment_id, s.refund_id, s.amount, &s.params.0)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let state = State::parse(&s.state).ok_or_else(|| {
            sqlx::Error::Decode(Box::new(CorruptOperation { id: s.id, reason: format!("unknown state {}", s.state) }))
        })?;
        Ok(Self {
            id: s.id,
            op,
            idempotency_key: s.idempotency_key,
            state,
            last_error: s.last_error,
            created_at: s.created_at,
            request_key: s.request_key,
            api_key_id: s.api_key_id,
            fresh: false,
        })
    }
}

pub struct NewPayment<'a> {
    /// The API key whose request it is.
    pub api_key_id: Option<i64>,
    /// The client's idempotency key (scope, key) that asked for it.
    pub request: Option<(i64, &'a str)>,
    /// The claim of that key, when it is made with the payment.
    pub claim: Option<&'a NewClaim>,
    pub customer_id: i64,
    pub amount: i64,
    pub currency: &'a str,
    pub capture_method: &'a str,
    pub price_id: Option<i64>,
    pub quantity: Option<i64>,
    pub payment_method: &'a str,
    pub description: Option<&'a str>,
    pub metadata: &'a HashMap<String, String>,
    pub receipt_email: Option<&'a str>,
    pub return_url: Option<&'a str>,
    pub off_session: bool,
}

/// Records a new payment (status pending), its first history line and the
/// operation that will create it in Stripe, in one transaction.
pub async fn insert(db: &PgPool, p: NewPayment<'_>) -> Result<(PaymentRow, OperationRow), sqlx::Error> {
    let mut tx = crate::store::begin(db).await?;
    let row: PaymentRow = sqlx::query_as(&format!(
        "INSERT INTO payment.payment (customer_id, status, amount, currency, capture_method, price_id, quantity,
             payment_method, description, metadata, receipt_email, return_url, off_session)
         VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {PAYMENT}"
    ))
    .bind(p.customer_id)
    .bind(p.amount)
    .bind(p.currency)
    .bind(p.capture_method)
    .bind(p.price_id)
    .bind(p.quantity)
    .bind(p.payment_method)
    .bind(p.description)
    .bind(Json(p.metadata))
    .bind(p.receipt_email)
    .bind(p.return_url)
    .bind(p.off_session)
    .fetch_one(&mut *tx)
    .await?;
    add_history(&mut tx, None, &row, Source::api(p.api_key_id), &Cause::default()).await?;
    let new_op = NewOperation {
        op: Operation::CreatePayment { payment_id: row.id },
        request: p.request,
        claim: p.claim,
        api_key_id: p.api_key_id,
    };
    let op = insert_operation(&mut tx, new_op).await?;
    tx.commit().await?;
    Ok((row, op))
}

const OPERATION: &str = "id, kind, payment_id, refund_id, amount, idempotency_key, params, state, last_error, created_at, request_key, api_key_id";

/// An operation to record.
pub struct NewOperation<'a> {
    pub op: Operation,
    /// The client's idempotency key (scope, key) that asked for it.
    pub request: Option<(i64, &'a str)>,
    /// The claim of that key, when it is made with the operation.
    pub claim: Option<&'a NewClaim>,
    /// The API key whose request it is.
    pub api_key_id: Option<i64>,
}

/// Records an operation. Its Stripe idempotency key is a random UUID, so no
/// two deployments (or databases, or restored backups) on one Stripe account
/// ever send the same key for different requests. With a claim, the same
/// statement claims the client's key; it fails on [`super::idempotency::CLAIMED`]
/// if the key exists.
pub async fn insert_operation(conn: &mut PgConnection, new: NewOperation<'_>) -> Result<OperationRow, sqlx::Error> {
    let columns = "INSERT INTO payment.operation (kind, payment_id, refund_id, amount, idempotency_key, params, request_scope, request_key, api_key_id)";
    let claimed = new.claim.zip(new.request);
    let sql = if claimed.is_some() {
        format!(
            "WITH claim AS (
                 INSERT INTO auth.idempotency_key (scope, key, rpc, fingerprint, state, locked_until, expires_at, holder)
                 VALUES ($6, $7, $8, $9, 'running', now() + make_interval(secs => $10), now() + make_interval(secs => $11), $12)
                 RETURNING scope)
             {columns} SELECT $1, $2, $3, $4, 'ap-' || gen_random_uuid(), $5, claim.scope, $7, $13 FROM claim
             RETURNING {OPERATION}"
        )
    } else {
        format!("{columns} VALUES ($1, $2, $3, $4, 'ap-' || gen_random_uuid(), $5, $6, $7, $8) RETURNING {OPERATION}")
    };
    let query = sqlx::query_as(&sql)
        .bind(new.op.kind())
        .bind(new.op.payment_id())
        .bind(new.op.refund_id())
        .bind(new.op.amount())
        .bind(Json(new.op.params()))
        .bind(new.request.map(|r| r.0))
        .bind(new.request.map(|r| r.1));
    let query = match claimed {
        Some((claim, _)) => query
            .bind(claim.rpc)
            .bind(&claim.fingerprint)
            .bind(claim.lease.as_secs_f64())
            .bind(claim.ttl.as_secs_f64())
            .bind(claim.holder)
            .bind(new.api_key_id),
        None => query.bind(new.api_key_id),
    };
    query.fetch_one(conn).await.map(|op: OperationRow| OperationRow { fresh: true, ..op })
}

/// Closes a create operation as succeeded after all: its PaymentIntent,
/// missed by a lookup, turned up and was bound to the payment. The answer
/// saved for its client key (a refusal) is dropped, so that a retry with the
/// key learns what really happened.
pub async fn succeeded_after_all(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH op AS (
             UPDATE payment.operation SET state = 'succeeded', last_error = NULL, finished_at = now()
             WHERE id = $1 AND state = 'failed'
             RETURNING request_scope, request_key)
         UPDATE auth.idempotency_key k SET state = 'retryable', response = NULL, locked_until = NULL
         FROM op WHERE k.scope = op.request_scope AND k.key = op.request_key",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an operation on its own (customers, products, prices).
pub async fn record_operation(db: &PgPool, op: NewOperation<'_>) -> Result<OperationRow, sqlx::Error> {
    let mut conn = db.acquire().await?;
    insert_operation(&mut conn, op).await
}

/// Closes an operation on its own.
pub async fn close_operation(db: &PgPool, id: i64, state: State, error: Option<&str>) -> Result<(), sqlx::Error> {
    let mut conn = db.acquire().await?;
    finish_operation(&mut conn, id, state, error).await
}

/// An operation by its id.
pub async fn get_operation(db: &PgPool, id: i64) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {OPERATION} FROM payment.operation WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The operation a client's idempotency key asked for.
pub async fn operation_by_request_key(db: &PgPool, scope: i64, key: &str) -> Result<Option<OperationRow>, sqlx::Error> {
    // The operation the key asked for, or the one its request resumed.
    sqlx::query_as(&format!(
        "SELECT {OPERATION} FROM payment.operation
         WHERE (request_scope = $1 AND request_key = $2)
            OR id = (SELECT operation_id FROM auth.idempotency_key WHERE scope = $1 AND key = $2)
         ORDER BY (request_scope = $1 AND request_key = $2) IS TRUE DESC LIMIT 1"
    ))
    .bind(scope)
    .bind(key)
    .fetch_optional(db)
    .await
}

/// The operation that created a payment in Stripe.
pub async fn create_operation_of(db: &PgPool, payment_id: i64) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {OPERATION} FROM payment.operation WHERE payment_id = $1 AND kind = 'create_payment'"
    ))
    .bind(payment_id)
    .fetch_optional(db)
    .await
}

/// Up to `limit` pending operations due for another try and older than
/// `min_age`, each pushed back so that no other reconciler takes it
/// meanwhile: by at least `claim` (longer than driving it can take), more
/// after many attempts (exponentially, at most five minutes).
pub async fn take_due_operations(
    db: &PgPool,
    limit: i64,
    min_age: std::time::Duration,
    claim: std::time::Duration,
) -> Result<Vec<OperationRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "UPDATE payment.operation
         SET next_attempt_at = now() + make_interval(secs => greatest($3, least(power(2, attempts), 300))::float8)
         WHERE id IN (
             SELECT id FROM payment.operation
             WHERE state = 'pending' AND next_attempt_at <= now() AND created_at <= now() - make_interval(secs => $2)
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {OPERATION}"
    ))
    .bind(limit)
    .bind(min_age.as_secs_f64())
    .bind(claim.as_secs_f64())
    .fetch_all(db)
    .await?;
    let mut ops = Vec::with_capacity(rows.len());
    for row in rows {
        match OperationRow::from_row(&row) {
            Ok(op) => ops.push(op),
            // One row that cannot be read must not stop the others: it is
            // set aside for a day, with the reason, for a person to look at.
            Err(e) => {
                let id: i64 = row.try_get("id")?;
                tracing::error!(operation = id, error = %e, "operation cannot be read: set aside");
                sqlx::query(
                    "UPDATE payment.operation SET next_attempt_at = now() + interval '1 day', last_error = $2 WHERE id = $1",
                )
                .bind(id)
                .bind(format!("cannot be read: {e}"))
                .execute(db)
                .await?;
            }
        }
    }
    Ok(ops)
}

/// Payments that wait on something outside (the customer, the card network,
/// an authorization's deadline), not touched for `min_age`, oldest first.
///
/// A `failed` payment waits too: Stripe keeps its PaymentIntent open after a
/// failed attempt, and the customer may still complete it. Those are read
/// back at most every `failed_every`, for a week. Each payment taken is
/// marked as looked at now, so that several reconcilers share the work.
pub async fn take_waiting(
    db: &PgPool,
    limit: i64,
    min_age: std::time::Duration,
    failed_every: std::time::Duration,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payment.payment SET reconciled_at = now() WHERE id IN (
             SELECT id FROM payment.payment p
             WHERE stripe_payment_intent_id IS NOT NULL
               AND coalesce(reconciled_at, updated_at) <= now() - make_interval(secs => $2)
               AND (status IN ('requires_action', 'processing')
                    OR (status = 'authorized' AND capture_before < now())
                    OR (status = 'failed' AND created_at > now() - interval '7 days'
                        AND coalesce(reconciled_at, updated_at) <= now() - make_interval(secs => $3)))
               AND NOT EXISTS (SELECT 1 FROM payment.operation o WHERE o.payment_id = p.id AND o.state = 'pending')
             ORDER BY coalesce(reconciled_at, updated_at) LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {PAYMENT}"
    ))
    .bind(limit)
    .bind(min_age.as_secs_f64())
    .bind(failed_every.as_secs_f64())
    .fetch_all(db)
    .await
}

/// The capture or cancel of a payment still in flight, if any.
pub async fn pending_operation(conn: &mut PgConnection, payment_id: i64) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {OPERATION} FROM payment.operation
         WHERE payment_id = $1 AND state = 'pending' AND kind IN ('capture', 'cancel')"
    ))
    .bind(payment_id)
    .fetch_optional(conn)
    .await
}

/// The API key that asked for the operation still pending on the payment
/// (or, with `refund_id`, on that refund) whose outcome `change` would be:
/// news of it that comes first (a webhook, a read) is that key's change.
pub async fn asker_of_pending(
    conn: &mut PgConnection,
    payment_id: i64,
    refund_id: Option<i64>,
    kinds: &[&str],
) -> Result<Option<i64>, sqlx::Error> {
    let key: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT api_key_id FROM payment.operation
         WHERE payment_id = $1 AND state = 'pending' AND kind = ANY($3)
           AND ($2::bigint IS NULL OR refund_id = $2)
         ORDER BY id LIMIT 1",
    )
    .bind(payment_id)
    .bind(refund_id)
    .bind(kinds)
    .fetch_optional(conn)
    .await?;
    Ok(key.flatten())
}

/// Marks an operation finished (`succeeded` or `failed`).
pub async fn finish_operation(
    conn: &mut PgConnection,
    id: i64,
    state: State,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment.operation SET state = $2, last_error = $3, attempts = attempts + 1, finished_at = now()
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// An operation's state, read in the caller's transaction (after it has
/// locked the payment, so that two appliers of one answer see each other).
pub async fn operation_state(conn: &mut PgConnection, id: i64) -> Result<State, sqlx::Error> {
    let state: String =
        sqlx::query_scalar("SELECT state FROM payment.operation WHERE id = $1").bind(id).fetch_one(conn).await?;
    State::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(Box::new(CorruptOperation { id, reason: format!("unknown state {state}") })))
}

/// Locks an operation and tells whether it may still be closed as never
/// sent: it is pending and no other driver ever took it. A reconciler that
/// takes an operation, or a request that resumes it ([`mark_taken`]),
/// moves its `next_attempt_at` past `created_at` (an insert sets both to the
/// same `now()`), and may be sending it to Stripe at this moment; the
/// request that recorded it must then leave it pending rather than tell its
/// caller that nothing was done.
pub async fn lock_untaken(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT state = 'pending' AND next_attempt_at = created_at FROM payment.operation WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Marks an operation as taken by a driver other than the request that
/// recorded it (see [`lock_untaken`]), without delaying the reconciler.
pub async fn mark_taken(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        // Past `created_at` whatever the clocks: this transaction's now() may
        // be older than the insert, when it began before the recording one.
        "UPDATE payment.operation
            SET next_attempt_at = greatest(next_attempt_at, created_at + interval '1 microsecond', now())
         WHERE id = $1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes as failed an operation whose call never left, if it may still be
/// (see [`lock_untaken`]). Whether it did.
pub async fn close_untaken(db: &PgPool, id: i64, error: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE payment.operation SET state = 'failed', last_error = $2, attempts = attempts + 1, finished_at = now()
         WHERE id = $1 AND state = 'pending' AND next_attempt_at = created_at",
    )
    .bind(id)
    .bind(error)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An operation's state, read and locked for the rest of the caller's
/// transaction (for operations with no payment row to lock).
pub async fn lock_operation_state(conn: &mut PgConnection, id: i64) -> Result<State, sqlx::Error> {
    let state: String = sqlx::query_scalar("SELECT state FROM payment.operation WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(conn)
        .await?;
    State::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(Box::new(CorruptOperation { id, reason: format!("unknown state {state}") })))
}

/// Notes a failed attempt of an operation that stays pending.
pub async fn note_attempt(db: &PgPool, id: i64, error: &str) -> Result<(), sqlx::Error> {
    // Only while pending: a driver that lost the race must not overwrite why
    // another one closed the operation (its retry is answered from that).
    sqlx::query(
        "UPDATE payment.operation SET attempts = attempts + 1, last_error = $2 WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(db: &PgPool, id: i64) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PAYMENT} FROM payment.payment WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// The payment, locked for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PAYMENT} FROM payment.payment WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Saves `row` (changed from `before`) and, when its state or money changed,
/// a history line.
pub async fn save(
    conn: &mut PgConnection,
    before: &PaymentRow,
    row: &PaymentRow,
    source: Source,
    cause: &Cause<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment.payment SET status = $2, amount_capturable = $3, amount_captured = $4, amount_refunded = $5,
            stripe_payment_intent_id = $6, stripe_charge_id = $7, client_secret = $8, next_action = $9,
            capture_before = $10, failure_code = $11, failure_message = $12, decline_code = $13,
            cancellation_reason = $14, integrity_error = $15, updated_at = now()
         WHERE id = $1",
    )
    .bind(row.id)
    .bind(&row.status)
    .bind(row.amount_capturable)
    .bind(row.amount_captured)
    .bind(row.amount_refunded)
    .bind(&row.stripe_payment_intent_id)
    .bind(&row.stripe_charge_id)
    .bind(&row.client_secret)
    .bind(&row.next_action)
    .bind(row.capture_before)
    .bind(&row.failure_code)
    .bind(&row.failure_message)
    .bind(&row.decline_code)
    .bind(&row.cancellation_reason)
    .bind(&row.integrity_error)
    .execute(&mut *conn)
    .await?;
    if before.ledger() != row.ledger() || cause.note.is_some() {
        add_history(conn, Some(before), row, source, cause).await?;
    }
    Ok(())
}

/// Appends a history line for `row` (changed from `before`; `None` for a new
/// payment) and the notification event of the change, if it is one.
pub(crate) async fn add_history(
    conn: &mut PgConnection,
    before: Option<&PaymentRow>,
    row: &PaymentRow,
    source: Source,
    cause: &Cause<'_>,
) -> Result<(), sqlx::Error> {
    let from = before.map(|b| b.status.as_str());
    sqlx::query(
        "INSERT INTO payment.history (payment_id, refund_id, from_status, to_status, amount_capturable,
             amount_captured, amount_refunded, source, stripe_request_id, note, api_key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(row.id)
    .bind(cause.refund_id)
    .bind(from)
    .bind(&row.status)
    .bind(row.amount_capturable)
    .bind(row.amount_captured)
    .bind(row.amount_refunded)
    .bind(source.as_str())
    .bind(cause.stripe_request_id)
    .bind(cause.note)
    .bind(source.api_key_id)
    .execute(&mut *conn)
    .await?;
    if before.is_none_or(|b| {
        b.status != row.status || b.amount_captured != row.amount_captured || b.amount_refunded != row.amount_refunded
    }) {
        let (captured, refunded) = before.map(|b| (b.amount_captured, b.amount_refunded)).unwrap_or((0, 0));
        let authorized =
            if row.status == "authorized" && from != Some("authorized") { row.amount_capturable } else { 0 };
        crate::meter::payment_changed(
            from.unwrap_or("new"),
            &row.status,
            source.as_str(),
            &row.currency,
            &[
                ("authorized", authorized),
                ("captured", row.amount_captured - captured),
                ("refunded", row.amount_refunded - refunded),
            ],
        );
    }
    outbox::payment_changed(conn, before, row, cause.refund_id, source).await
}

pub async fn history(db: &PgPool, payment_id: i64) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT payment_id, refund_id, from_status, to_status, amount_capturable, amount_captured, amount_refunded,
                source, stripe_request_id, note, created_at, api_key_id
         FROM payment.history WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment_id)
    .fetch_all(db)
    .await
}

/// Payments newest first, with an id below `before`.
pub async fn list(
    db: &PgPool,
    customer_id: Option<i64>,
    status: Option<&str>,
    before: i64,
    limit: i64,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PAYMENT} FROM payment.payment
         WHERE id < $1 AND ($2::bigint IS NULL OR customer_id = $2) AND ($3::text IS NULL OR status = $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(before)
    .bind(customer_id)
    .bind(status)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The sum of the payment's refunds that are not settled yet.
pub async fn refunds_in_flight(conn: &mut PgConnection, payment_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::bigint FROM payment.refund WHERE payment_id = $1 AND status IN ('pending', 'requires_action')",
    )
    .bind(payment_id)
    .fetch_one(conn)
    .await
}

/// Records a new refund (status pending) and its `refund.created` event.
pub async fn insert_refund(
    conn: &mut PgConnection,
    payment_id: i64,
    amount: i64,
    reason: Option<&str>,
    source: Source,
) -> Result<RefundRow, sqlx::Error> {
    let row: RefundRow = sqlx::query_as(&format!(
        "INSERT INTO payment.refund (payment_id, status, amount, reason) VALUES ($1, 'pending', $2, $3) RETURNING {REFUND}"
    ))
    .bind(payment_id)
    .bind(amount)
    .bind(reason)
    .fetch_one(&mut *conn)
    .await?;
    outbox::refund_changed(conn, None, &row, source).await?;
    Ok(row)
}

/// Sets a refund's status (and the event of the change, if it is one).
pub async fn update_refund(
    conn: &mut PgConnection,
    id: i64,
    status: &str,
    stripe_refund_id: Option<&str>,
    failure_reason: Option<&str>,
    source: Source,
) -> Result<RefundRow, sqlx::Error> {
    let before: String = sqlx::query_scalar("SELECT status FROM payment.refund WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let row: RefundRow = sqlx::query_as(&format!(
        "UPDATE payment.refund SET status = $2, stripe_refund_id = coalesce($3, stripe_refund_id),
             failure_reason = coalesce($4, failure_reason), updated_at = now()
         WHERE id = $1 RETURNING {REFUND}"
    ))
    .bind(id)
    .bind(status)
    .bind(stripe_refund_id)
    .bind(failure_reason)
    .fetch_one(&mut *conn)
    .await?;
    if before != row.status {
        crate::meter::refund_changed(&before, &row.status);
    }
    outbox::refund_changed(conn, Some(&before), &row, source).await?;
    Ok(row)
}

pub async fn get_refund(db: &PgPool, id: i64) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {REFUND} FROM payment.refund WHERE id = $1")).bind(id).fetch_optional(db).await
}

pub async fn refunds_of(db: &PgPool, payment_id: i64) -> Result<Vec<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {REFUND} FROM payment.refund WHERE payment_id = $1 ORDER BY id"))
        .bind(payment_id)
        .fetch_all(db)
        .await
}

/// The payment of a Stripe PaymentIntent.
pub async fn by_intent(db: &PgPool, pi: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PAYMENT} FROM payment.payment WHERE stripe_payment_intent_id = $1"))
        .bind(pi)
        .fetch_optional(db)
        .await
}

/// Records a payment made outside this service (seen through a webhook),
/// status pending until Stripe's PaymentIntent is applied to it.
pub async fn adopt(
    db: &PgPool,
    customer_id: i64,
    pi: &str,
    amount: i64,
    currency: &str,
    capture_method: &str,
) -> Result<PaymentRow, sqlx::Error> {
    let mut tx = crate::store::begin(db).await?;
    let row: PaymentRow = sqlx::query_as(&format!(
        "INSERT INTO payment.payment (customer_id, status, amount, currency, capture_method, payment_method, stripe_payment_intent_id)
         VALUES ($1, 'pending', $2, $3, $4, 'made outside this service', $5) RETURNING {PAYMENT}"
    ))
    .bind(customer_id)
    .bind(amount)
    .bind(currency)
    .bind(capture_method)
    .bind(pi)
    .fetch_one(&mut *tx)
    .await?;
    add_history(
        &mut tx,
        None,
        &row,
        Source::WEBHOOK,
        &Cause { note: Some("made outside this service"), ..Default::default() },
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The refund, locked for the rest of the transaction (after its payment:
/// always payment first, then refund).
pub async fn lock_refund(conn: &mut PgConnection, id: i64) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {REFUND} FROM payment.refund WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Refunds Stripe may still settle (pending, or waiting on the customer)
/// with no operation in flight and not looked at for `min_age`, oldest first;
/// each marked as looked at now.
pub async fn take_waiting_refunds(
    db: &PgPool,
    limit: i64,
    min_age: std::time::Duration,
) -> Result<Vec<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payment.refund SET reconciled_at = now() WHERE id IN (
             SELECT id FROM payment.refund r
             WHERE status IN ('pending', 'requires_action') AND stripe_refund_id IS NOT NULL
               AND coalesce(reconciled_at, updated_at) <= now() - make_interval(secs => $2)
               AND NOT EXISTS (SELECT 1 FROM payment.operation o WHERE o.refund_id = r.id AND o.state = 'pending')
             ORDER BY coalesce(reconciled_at, updated_at) LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {REFUND}"
    ))
    .bind(limit)
    .bind(min_age.as_secs_f64())
    .fetch_all(db)
    .await
}

/// A refund by its Stripe id.
pub async fn refund_by_stripe_id<'c>(
    db: impl sqlx::PgExecutor<'c>,
    id: &str,
) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {REFUND} FROM payment.refund WHERE stripe_refund_id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}
