//! PostgreSQL: the pool, migrations and one module of queries per table.
//! Nothing here calls Stripe, and no function keeps a connection beyond its
//! own query or transaction.

pub mod apikeys;
pub mod customers;
pub mod disputes;
pub mod hooks;
pub mod idempotency;
pub mod mail;
pub mod outbox;
pub mod payments;
pub mod products;
pub mod queue;
pub mod replica;
pub mod webhooks;

use crate::config::DbConfig;
use anyhow::Context;
use sqlx::{ConnectOptions, PgPool, postgres::PgPoolOptions};
use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A database transaction, traced: a span (`db.transaction`) from its
/// `BEGIN` until it is committed or dropped (rolled back), a child of the
/// request's span. Used as the `sqlx::Transaction` it holds.
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    _span: tracing::Span,
}

/// Begins a traced transaction.
pub async fn begin(db: &PgPool) -> Result<Tx, sqlx::Error> {
    // Only within a request: background work would make a trace of each.
    let span = if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "db.transaction",
            otel.name = "db.transaction",
            otel.kind = "client",
            db.system.name = "postgresql"
        )
    };
    let tx = db.begin().await?;
    Ok(Tx { tx, _span: span })
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made lazily, so a service can start while
/// the database is down and recover when it returns; `acquire_timeout` bounds
/// how long a request waits for one. A connection idle for more than
/// [`CHECK_IF_IDLE`] (it may have been cut: a restart, a proxy's timeout) is
/// pinged before use, and replaced if dead; so is every connection for
/// [`CHECK_AFTER_ERROR`] after one was found broken (a restart breaks them
/// all at once); one in steady use otherwise is not, which saves a round
/// trip per statement under load.
pub fn pool(db: &DbConfig) -> PgPool {
    pool_waiting(db, Duration::from_secs(3))
}

/// A pool whose requests wait at most `wait` for a connection (a replica's
/// reads, which the primary can take instead, wait less).
pub fn pool_waiting(db: &DbConfig, wait: Duration) -> PgPool {
    let options = db
        .options
        .clone()
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(wait)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IF_IDLE || connection_error_within(CHECK_AFTER_ERROR) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options)
}

/// How long a pooled connection may sit idle and still be used unchecked.
pub const CHECK_IF_IDLE: Duration = Duration::from_secs(1);

/// How long after a broken connection every connection is checked.
pub const CHECK_AFTER_ERROR: Duration = Duration::from_secs(10);

/// When a connection was last found broken (milliseconds since the first
/// use of this clock; 0 for never).
static LAST_CONNECTION_ERROR: AtomicU64 = AtomicU64::new(0);
static CLOCK: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Notes that a database connection was found broken.
pub fn note_connection_error() {
    LAST_CONNECTION_ERROR.store(now_ms(), Ordering::Relaxed);
}

fn connection_error_within(window: Duration) -> bool {
    let at = LAST_CONNECTION_ERROR.load(Ordering::Relaxed);
    at != 0 && now_ms().saturating_sub(at) <= window.as_millis() as u64
}

/// Whether an SQLSTATE says the connection is gone rather than the
/// statement refused: the connection exceptions of class 08 (not 08P01, a
/// protocol violation, which is a bug and would happen again) and 57P01 to
/// 57P03 (the server shut down or is starting).
pub fn is_connection_lost(code: &str) -> bool {
    matches!(code, "08000" | "08001" | "08003" | "08004" | "08006" | "57P01" | "57P02" | "57P03")
}

/// Whether a database error says PostgreSQL cannot be reached: the
/// connection losses above, or PgBouncer's own errors when it cannot reach
/// it (PgBouncer 1.18 reports them all as 08P01, a code PostgreSQL uses for
/// protocol violations, so they are told apart by their text).
pub fn is_unreachable(e: &dyn sqlx::error::DatabaseError) -> bool {
    let code = e.code();
    let code = code.as_deref().unwrap_or_default();
    is_connection_lost(code) || (code == "08P01" && is_pooler_connection_error(e.message()))
}

/// Whether a statement failed for want of a working connection (none to be
/// had in time, one that broke, or a server that cannot be reached), not
/// because the database refused it.
pub fn is_lost_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => is_unreachable(d.as_ref()),
        _ => false,
    }
}

/// PgBouncer's messages for a PostgreSQL it cannot reach or lost.
pub fn is_pooler_connection_error(message: &str) -> bool {
    [
        "server conn crashed",
        "cannot connect to server",
        "query_wait_timeout",
        "server_login_retry",
        "server login has been failing",
        // PostgreSQL's own refusals of PgBouncer's login, passed on as
        // 08P01: starting (a restart, a promotion) or shutting down.
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "the database system is not yet accepting connections",
    ]
    .iter()
    .any(|m| message.contains(m))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncers_messages_for_a_postgresql_it_cannot_reach_are_told_apart_from_protocol_errors() {
        assert!(is_pooler_connection_error("server conn crashed?"));
        assert!(is_pooler_connection_error("pgbouncer cannot connect to server"));
        assert!(is_pooler_connection_error("query_wait_timeout"));
        assert!(is_pooler_connection_error("the database system is starting up"));
        assert!(!is_pooler_connection_error("invalid message format"));
    }

    #[test]
    fn a_lost_connection_is_told_from_a_statement_the_database_refused() {
        for lost in ["08006", "08003", "57P01", "57P03"] {
            assert!(is_connection_lost(lost), "{lost}");
        }
        for refused in ["08P01", "23505", "40001", "57014"] {
            assert!(!is_connection_lost(refused), "{refused}");
        }
    }
}
