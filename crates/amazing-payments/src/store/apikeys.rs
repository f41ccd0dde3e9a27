//! `auth.api_key`: keyed hashes of API keys.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Requests a second this key may make on each instance; `None`: the default.
    pub rate_limit: Option<i32>,
    /// What it may do: `read`, `write`, `refund`, `admin`.
    pub scopes: Vec<String>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When a request last used it (to within API_KEY_CACHE_TTL).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The key it replaced (`apikey rotate`).
    pub rotated_from: Option<i64>,
    /// The first key of its rotation's line; `None`: itself.
    pub lineage: Option<i64>,
}

const COLUMNS: &str = "id, name, prefix, hash, created_at, revoked_at, rate_limit, scopes, expires_at, last_used_at, rotated_from, lineage";

/// A key to make.
pub struct NewKey<'a> {
    pub name: &'a str,
    pub prefix: &'a str,
    pub hash: &'a [u8],
    pub scopes: &'a [String],
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<i32>,
    pub rotated_from: Option<i64>,
    pub lineage: Option<i64>,
}

pub async fn insert(db: &PgPool, key: NewKey<'_>) -> Result<ApiKeyRow, sqlx::Error> {
    let mut conn = db.acquire().await?;
    insert_in(&mut conn, key).await
}

async fn insert_in(conn: &mut PgConnection, key: NewKey<'_>) -> Result<ApiKeyRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO auth.api_key (name, prefix, hash, scopes, expires_at, rate_limit, rotated_from, lineage)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(key.name)
    .bind(key.prefix)
    .bind(key.hash)
    .bind(key.scopes)
    .bind(key.expires_at)
    .bind(key.rate_limit)
    .bind(key.rotated_from)
    .bind(key.lineage)
    .fetch_one(conn)
    .await
}

/// Makes `new` to replace the key `old` (an id or a prefix), which keeps
/// working until `until` (or its own expiry, if sooner). The new key takes
/// the old one's name, scopes, rate limit and line, and expires at
/// `expires_at` (`None`: when the old key would have, if it would). `None`
/// if `old` is no key that still works.
pub async fn rotate(
    db: &PgPool,
    old: &str,
    prefix: &str,
    hash: &[u8],
    until: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Option<(ApiKeyRow, ApiKeyRow)>, sqlx::Error> {
    let id: Option<i64> = old.parse().ok();
    let mut tx = crate::store::begin(db).await?;
    // The old row as it was (its expiry before the grace), then shortened.
    let old: Option<ApiKeyRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM auth.api_key
         WHERE (prefix = $1 OR id = $2) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
         FOR UPDATE"
    ))
    .bind(old)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mut old) = old else {
        return Ok(None);
    };
    // The grace never lengthens the old key's life.
    let inherited = old.expires_at;
    let shortened = inherited.map_or(until, |at| at.min(until));
    sqlx::query("UPDATE auth.api_key SET expires_at = $2 WHERE id = $1")
        .bind(old.id)
        .bind(shortened)
        .execute(&mut *tx)
        .await?;
    old.expires_at = Some(shortened);
    let new = insert_in(
        &mut tx,
        NewKey {
            name: &old.name,
            prefix,
            hash,
            scopes: &old.scopes,
            expires_at: expires_at.or(inherited),
            rate_limit: old.rate_limit,
            rotated_from: Some(old.id),
            lineage: Some(old.lineage.unwrap_or(old.id)),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some((old, new)))
}

/// Notes that the key was used now, unless that was noted in the last
/// `within`: one write per key per `within`, not one per request.
pub async fn touch(db: &PgPool, id: i64, within: std::time::Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE auth.api_key SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))",
    )
    .bind(id)
    .bind(within.as_secs_f64())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn by_prefix(db: &PgPool, prefix: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM auth.api_key WHERE prefix = $1"))
        .bind(prefix)
        .fetch_optional(db)
        .await
}

pub async fn list(db: &PgPool) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM auth.api_key ORDER BY id")).fetch_all(db).await
}

/// Marks the key with this prefix or id revoked; returns whether one was.
pub async fn revoke(db: &PgPool, prefix_or_id: &str) -> Result<bool, sqlx::Error> {
    let id: Option<i64> = prefix_or_id.parse().ok();
    let done = sqlx::query(
        "UPDATE auth.api_key SET revoked_at = now()
         WHERE (prefix = $1 OR id = $2) AND revoked_at IS NULL",
    )
    .bind(prefix_or_id)
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Sets (or, with `None`, clears) a key's own rate limit; false if no
/// such key.
pub async fn set_rate_limit(db: &PgPool, id: i64, rate: Option<i32>) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE auth.api_key SET rate_limit = $2 WHERE id = $1").bind(id).bind(rate).execute(db).await?;
    Ok(done.rows_affected() == 1)
}
