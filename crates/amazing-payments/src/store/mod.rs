//! PostgreSQL: the pool, migrations and one module of queries per table.
//! Nothing here calls Stripe, and no function keeps a connection beyond its
//! own query or transaction.

pub mod apikeys;
pub mod customers;
pub mod idempotency;
pub mod mail;
pub mod outbox;
pub mod payments;
pub mod products;
pub mod queue;
pub mod webhooks;

use crate::config::DbConfig;
use anyhow::Context;
use sqlx::{ConnectOptions, PgPool, postgres::PgPoolOptions};
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made lazily, so a service can start while
/// the database is down and recover when it returns; `acquire_timeout` bounds
/// how long a request waits for one. A connection idle for more than
/// [`CHECK_IF_IDLE`] (it may have been cut: a restart, a proxy's timeout) is
/// pinged before use, and replaced if dead; one in steady use is not, which
/// saves a round trip per statement under load.
pub fn pool(db: &DbConfig) -> PgPool {
    let options = db
        .options
        .clone()
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IF_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options)
}

/// How long a pooled connection may sit idle and still be used unchecked.
pub const CHECK_IF_IDLE: Duration = Duration::from_secs(1);

/// Creates the database if it does not exist (the role must be allowed to),
/// connecting to the `postgres` database to do so.
pub async fn create_database_if_missing(db: &DbConfig) -> anyhow::Result<()> {
    let name = db.options.get_database().unwrap_or("postgres").to_string();
    let admin = db.options.clone().database("postgres");
    let mut conn = admin.connect().await.context("connecting to PostgreSQL")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .context("checking whether the database exists")?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        tracing::info!(database = %name, "created the database");
    }
    Ok(())
}

/// Applies the embedded migrations not yet applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(())
}

/// `SELECT 1`: is the database there?
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
