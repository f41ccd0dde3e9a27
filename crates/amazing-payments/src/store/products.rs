//! `payment.product` and `payment.price`.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

#[derive(Debug, Clone, FromRow)]
pub struct ProductRow {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub stripe_product_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct PriceRow {
    pub id: i64,
    pub product_id: i64,
    pub unit_amount: i64,
    pub currency: String,
    pub active: bool,
    pub stripe_price_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

const PRODUCT: &str = "id, name, description, active, stripe_product_id, created_at";
const PRICE: &str = "id, product_id, unit_amount, currency, active, stripe_price_id, created_at";

/// The next id of `payment.product` or `payment.price`, without a row, so
/// that Stripe's object can carry it before ours exists.
pub async fn reserve_id(db: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT nextval(pg_get_serial_sequence('payment.{table}', 'id'))")).fetch_one(db).await
}

pub struct NewPrice<'a> {
    pub id: i64,
    pub unit_amount: i64,
    pub currency: &'a str,
    pub stripe_price_id: &'a str,
}

/// Inserts a product (once), in the caller's transaction.
pub async fn insert_product(
    conn: &mut sqlx::PgConnection,
    id: i64,
    name: &str,
    description: Option<&str>,
    stripe_product_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment.product (id, name, description, stripe_product_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(description)
    .bind(stripe_product_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a price (once), in the caller's transaction.
pub async fn insert_price(conn: &mut sqlx::PgConnection, product_id: i64, p: NewPrice<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment.price (id, product_id, unit_amount, currency, stripe_price_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(p.id)
    .bind(product_id)
    .bind(p.unit_amount)
    .bind(p.currency)
    .bind(p.stripe_price_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_product(db: &PgPool, id: i64) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PRODUCT} FROM payment.product WHERE id = $1")).bind(id).fetch_optional(db).await
}

pub async fn get_price(db: &PgPool, id: i64) -> Result<Option<PriceRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PRICE} FROM payment.price WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// The prices of these products, oldest first.
pub async fn prices_of(db: &PgPool, product_ids: &[i64]) -> Result<Vec<PriceRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PRICE} FROM payment.price WHERE product_id = ANY($1) ORDER BY id"))
        .bind(product_ids)
        .fetch_all(db)
        .await
}

pub async fn list_products(
    db: &PgPool,
    after: i64,
    limit: i64,
    active_only: bool,
) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PRODUCT} FROM payment.product WHERE id > $1 AND (active OR NOT $2) ORDER BY id LIMIT $3"
    ))
    .bind(after)
    .bind(active_only)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn deactivate_product(conn: &mut sqlx::PgConnection, id: i64) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payment.product SET active = false, updated_at = now() WHERE id = $1 RETURNING {PRODUCT}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn deactivate_price(conn: &mut sqlx::PgConnection, id: i64) -> Result<Option<PriceRow>, sqlx::Error> {
    sqlx::query_as(&format!("UPDATE payment.price SET active = false WHERE id = $1 RETURNING {PRICE}"))
        .bind(id)
        .fetch_optional(conn)
        .await
}
