//! `customer.customer`: the earlier service's table, adopted in place.

use crate::domain::customer::{ChargeDate, CustomerId, CustomerName, Email};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

/// A stored customer.
#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: i64,
    pub name: Option<String>,
    pub email: String,
    pub stripe_customer_key: Option<String>,
    pub stripe_charge_date: Option<String>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, email, stripe_customer_key, stripe_charge_date, created_at, modified_at";

/// Takes the next id from the table's sequence without writing a row, so the
/// Stripe customer can carry our id before our row exists.
pub async fn reserve_id(db: &PgPool) -> Result<CustomerId, sqlx::Error> {
    let id: i64 =
        sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('customer.customer', 'id'))").fetch_one(db).await?;
    Ok(CustomerId::parse(id).expect("sequences start at 1"))
}

pub struct NewCustomer<'a> {
    pub id: CustomerId,
    pub name: &'a CustomerName,
    pub email: &'a Email,
    pub stripe_customer_key: &'a str,
    pub charge_date: Option<&'a ChargeDate>,
    /// The API key whose request made it.
    pub api_key_id: Option<i64>,
}

/// Inserts a customer (once: a second insert of the same id changes
/// nothing) and its `customer.created` event, in the caller's transaction.
pub async fn insert(conn: &mut sqlx::PgConnection, c: NewCustomer<'_>) -> Result<(), sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO customer.customer (id, name, email, stripe_customer_key, stripe_charge_date)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(c.id.get())
    .bind(c.name.as_str())
    .bind(c.email.as_str())
    .bind(c.stripe_customer_key)
    .bind(c.charge_date.map(ChargeDate::as_str))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        super::outbox::customer_created(conn, c.id.get(), c.api_key_id).await?;
    }
    Ok(())
}

/// The customer of a Stripe customer id.
pub async fn by_stripe_key(db: &PgPool, stripe_customer_key: &str) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM customer.customer WHERE stripe_customer_key = $1"))
        .bind(stripe_customer_key)
        .fetch_optional(db)
        .await
}

pub async fn get(db: &PgPool, id: CustomerId) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM customer.customer WHERE id = $1"))
        .bind(id.get())
        .fetch_optional(db)
        .await
}

/// The changes of an update; `None` leaves a column as it is.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub name: Option<&'a CustomerName>,
    pub email: Option<&'a Email>,
    pub charge_date: Option<&'a ChargeDate>,
}

/// Applies `c` to the customer `id`; whether any of its values changed (an
/// update to the values it has, or of a customer that does not exist,
/// changes nothing).
pub async fn update(conn: &mut sqlx::PgConnection, id: CustomerId, c: Changes<'_>) -> Result<bool, sqlx::Error> {
    let changed: Option<bool> = sqlx::query_scalar(
        "WITH before AS (SELECT name, email, stripe_charge_date FROM customer.customer WHERE id = $1 FOR UPDATE)
         UPDATE customer.customer c SET
            name = coalesce($2, c.name),
            email = coalesce($3, c.email),
            stripe_charge_date = coalesce($4, c.stripe_charge_date)
         FROM before WHERE c.id = $1
         RETURNING (before.name, before.email, before.stripe_charge_date)
             IS DISTINCT FROM (c.name, c.email, c.stripe_charge_date)",
    )
    .bind(id.get())
    .bind(c.name.map(CustomerName::as_str))
    .bind(c.email.map(Email::as_str))
    .bind(c.charge_date.map(ChargeDate::as_str))
    .fetch_optional(conn)
    .await?;
    Ok(changed.unwrap_or(false))
}

/// Up to `limit` customers with an id above `after`, oldest first, optionally
/// only those with `email` (compared without regard to case).
pub async fn list(db: &PgPool, after: i64, limit: i64, email: Option<&Email>) -> Result<Vec<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM customer.customer
         WHERE id > $1 AND ($2::text IS NULL OR lower(email) = lower($2))
         ORDER BY id LIMIT $3"
    ))
    .bind(after)
    .bind(email.map(Email::as_str))
    .bind(limit)
    .fetch_all(db)
    .await
}
