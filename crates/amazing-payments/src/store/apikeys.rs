//! `auth.api_key`: keyed hashes of API keys.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

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
}

pub async fn insert(db: &PgPool, name: &str, prefix: &str, hash: &[u8]) -> Result<ApiKeyRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO auth.api_key (name, prefix, hash) VALUES ($1, $2, $3)
         RETURNING id, name, prefix, hash, created_at, revoked_at, rate_limit",
    )
    .bind(name)
    .bind(prefix)
    .bind(hash)
    .fetch_one(db)
    .await
}

pub async fn by_prefix(db: &PgPool, prefix: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, prefix, hash, created_at, revoked_at, rate_limit FROM auth.api_key WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(db)
    .await
}

pub async fn list(db: &PgPool) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, prefix, hash, created_at, revoked_at, rate_limit FROM auth.api_key ORDER BY id")
        .fetch_all(db)
        .await
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
