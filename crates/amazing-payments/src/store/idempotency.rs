//! `auth.idempotency_key`: claiming a client's key, saving and replaying the
//! response. Safe across any number of instances: the primary key decides
//! who runs a request, and a lease lets a retry take over from a crashed one.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// What a request carrying a key must do.
#[derive(Debug)]
pub enum Claim {
    /// Run it (first time, after an unknown outcome, or after a crash),
    /// holding the key with this fencing token: only the holder's answer is
    /// saved, so a request that outlived its lease cannot overwrite the
    /// answer of the retry that took over.
    Run(Uuid),
    /// Answer with the saved response.
    Replay(Value),
    /// The key was used for another request.
    Mismatch,
    /// Another request with this key is running.
    InUse,
}

/// A claim a request makes in the transaction that records its operation,
/// rather than in one of its own: the common case (a key never seen) then
/// costs no statement and no commit. If the key exists, the recording
/// statement fails on [`CLAIMED`] and nothing is written; the request then
/// claims the key the long way ([`claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    pub rpc: &'static str,
    pub fingerprint: String,
    pub lease: Duration,
    pub ttl: Duration,
    pub holder: Uuid,
}

/// The constraint a claim of a key already in the table violates.
pub const CLAIMED: &str = "idempotency_key_pkey";

/// Makes `claim` in the caller's transaction (see [`NewClaim`]), for a
/// request that resumes the operation `resumes` (recorded by another).
pub async fn claim_in(
    conn: &mut PgConnection,
    scope: i64,
    key: &str,
    claim: &NewClaim,
    resumes: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth.idempotency_key (scope, key, rpc, fingerprint, state, locked_until, expires_at, holder, operation_id)
         VALUES ($1, $2, $3, $4, 'running', now() + make_interval(secs => $5), now() + make_interval(secs => $6), $7, $8)",
    )
    .bind(scope)
    .bind(key)
    .bind(claim.rpc)
    .bind(&claim.fingerprint)
    .bind(claim.lease.as_secs_f64())
    .bind(claim.ttl.as_secs_f64())
    .bind(claim.holder)
    .bind(resumes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Points a held key at the operation its request resumes (recorded by
/// another request), so that the key's retry finds that operation.
pub async fn point_at(conn: &mut PgConnection, scope: i64, key: &str, operation: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth.idempotency_key SET operation_id = $3 WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .bind(operation)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims `key` for a request with `fingerprint`.
pub async fn claim(
    db: &PgPool,
    scope: i64,
    key: &str,
    rpc: &str,
    fingerprint: &str,
    lease: Duration,
    ttl: Duration,
) -> Result<Claim, sqlx::Error> {
    let lease_s = lease.as_secs_f64();
    // A key past its TTL is gone, whether or not the purge has run: the
    // request that claims it now is a new one.
    sqlx::query(&format!("{UNBIND_EXPIRED} SELECT 1")).bind(scope).bind(key).bind(1_i64).execute(db).await?;
    let token = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO auth.idempotency_key (scope, key, rpc, fingerprint, state, locked_until, expires_at, holder)
         VALUES ($1, $2, $3, $4, 'running', now() + make_interval(secs => $5), now() + make_interval(secs => $6), $7)
         ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(rpc)
    .bind(fingerprint)
    .bind(lease_s)
    .bind(ttl.as_secs_f64())
    .bind(token)
    .execute(db)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Run(token));
    }
    let row: Option<(String, String, Option<Value>)> =
        sqlx::query_as("SELECT fingerprint, state, response FROM auth.idempotency_key WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(db)
            .await?;
    let Some((stored, state, response)) = row else {
        // Purged between the two statements: try once more.
        return Box::pin(claim(db, scope, key, rpc, fingerprint, lease, ttl)).await;
    };
    if stored != fingerprint {
        return Ok(Claim::Mismatch);
    }
    if state == "done" {
        return Ok(Claim::Replay(response.unwrap_or(Value::Null)));
    }
    // Running with a lapsed lease (its instance died), or retryable: take it.
    let taken = sqlx::query(
        "UPDATE auth.idempotency_key SET state = 'running', locked_until = now() + make_interval(secs => $3), holder = $4
         WHERE scope = $1 AND key = $2 AND (state = 'retryable' OR (state = 'running' AND locked_until < now()))",
    )
    .bind(scope)
    .bind(key)
    .bind(lease_s)
    .bind(token)
    .execute(db)
    .await?;
    Ok(if taken.rows_affected() == 1 { Claim::Run(token) } else { Claim::InUse })
}

/// Saves the response of a completed request, if `holder` still holds the
/// key (else a retry took over, and its answer is the one kept). A request
/// whose claim was to come with its operation (a [`NewClaim`]) and that
/// ended before recording one (a refusal of its input) saves its answer
/// under a new key row here, if the key is still unknown. Whether it saved.
pub async fn complete(
    db: &PgPool,
    scope: i64,
    key: &str,
    claim: &NewClaim,
    response: &Value,
) -> Result<bool, sqlx::Error> {
    let saved = sqlx::query(
        "INSERT INTO auth.idempotency_key AS k (scope, key, rpc, fingerprint, state, response, expires_at, holder)
         VALUES ($1, $2, $3, $4, 'done', $5, now() + make_interval(secs => $6), $7)
         ON CONFLICT (scope, key) DO UPDATE SET state = 'done', response = EXCLUDED.response, locked_until = NULL
         WHERE k.holder = EXCLUDED.holder AND k.state = 'running'",
    )
    .bind(scope)
    .bind(key)
    .bind(claim.rpc)
    .bind(&claim.fingerprint)
    .bind(response)
    .bind(claim.ttl.as_secs_f64())
    .bind(claim.holder)
    .execute(db)
    .await?;
    Ok(saved.rows_affected() == 1)
}

/// Saves the response of a request in the transaction that settles its
/// operation, if `holder` still holds the key. Whether it did.
pub async fn complete_in(
    conn: &mut PgConnection,
    scope: i64,
    key: &str,
    holder: Uuid,
    response: &Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE auth.idempotency_key SET state = 'done', response = $3, locked_until = NULL
         WHERE scope = $1 AND key = $2 AND holder = $4 AND state = 'running'",
    )
    .bind(scope)
    .bind(key)
    .bind(response)
    .bind(holder)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Frees the key for the same request to try again (the outcome was
/// unknown), if `holder` still holds it.
pub async fn release(db: &PgPool, scope: i64, key: &str, holder: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE auth.idempotency_key SET state = 'retryable', locked_until = NULL
         WHERE scope = $1 AND key = $2 AND holder = $3 AND state = 'running'",
    )
    .bind(scope)
    .bind(key)
    .bind(holder)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes expired keys (those of scope $1 and key $2, or all when both are
/// NULL; at most $3) and, in the same statement, ends their binding to the
/// operations they asked for: once a key has expired, it resolves to nothing.
/// A key whose operation (bound to it, or resumed by its request) is still
/// pending lives on until it is settled, and then a whole TTL more: the caller was told to retry with it, and its retry
/// must find that operation, not start another.
const UNBIND_EXPIRED: &str = "
    WITH gone AS (
        DELETE FROM auth.idempotency_key k WHERE ctid IN (
            SELECT ctid FROM auth.idempotency_key i
            WHERE expires_at < now() AND ($1::bigint IS NULL OR (scope = $1 AND key = $2))
              AND NOT EXISTS (SELECT 1 FROM payment.operation o
                              WHERE ((o.request_scope = i.scope AND o.request_key = i.key) OR o.id = i.operation_id)
                                AND (o.state = 'pending' OR o.finished_at > now() - (i.expires_at - i.created_at)))
            LIMIT $3)
        RETURNING scope, key),
    unbound AS (
        UPDATE payment.operation o SET request_scope = NULL, request_key = NULL
        FROM gone WHERE o.request_scope = gone.scope AND o.request_key = gone.key
        RETURNING o.id)";

/// Deletes up to `batch` expired keys; how many.
pub async fn purge(db: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let purged: i64 = sqlx::query_scalar(&format!("{UNBIND_EXPIRED} SELECT count(*) FROM gone"))
        .bind(None::<i64>)
        .bind(None::<String>)
        .bind(batch)
        .fetch_one(db)
        .await?;
    Ok(purged as u64)
}
