//! Failing fast while the database is away. Without this, every request
//! waits for a pool connection (up to 3 s, `store::pool`) before it learns
//! the database is gone. A watchdog ([`watch`]) checks the database four
//! times a second on a connection of its own; while it cannot reach it, the
//! breaker is open and requests that need the database are answered at once
//! with 503 / UNAVAILABLE `DATABASE_UNAVAILABLE` and `Retry-After: 1`,
//! before anything is read or written. The watchdog closes it at the
//! database's first answer. Only the watchdog decides: one request's error
//! (a pool busy under load, a connection ended by an administrator) says
//! nothing of the database as a whole. Health checks, the API document and
//! server reflection always go through.

use crate::app::AppError;
use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long one finding of the watchdog keeps it open: renewed at every
/// check while the database is away, longer than a check that waits out
/// its timeouts (1 s on the held connection, 2 s for a new one, 250 ms
/// between checks), so that it never closes between two failing checks; a
/// stalled watchdog cannot keep it open for good.
const OPEN_FOR: Duration = Duration::from_secs(5);
const REASON: &str = "DATABASE_UNAVAILABLE";

/// Whether a request needs the database: our API's calls and Stripe's
/// webhooks, not the health checks (which report it), the API document or
/// server reflection.
fn needs_database(path: &str) -> bool {
    (path.starts_with("/v1/") && path != "/v1/healthcheck")
        || (path.starts_with("/payment.PaymentService/") && path != "/payment.PaymentService/HealthCheck")
}

/// One instance's breaker, shared by both doors.
#[derive(Debug, Clone)]
pub struct Breaker {
    epoch: Instant,
    /// Milliseconds since `epoch` until which it is open (0: closed).
    open_until: Arc<AtomicU64>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { epoch: Instant::now(), open_until: Default::default() }
    }
}

impl Breaker {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a request may go through now.
    fn admits(&self) -> bool {
        self.now() >= self.open_until.load(Ordering::Acquire)
    }

    fn close(&self) {
        if self.open_until.load(Ordering::Acquire) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    fn open(&self) {
        self.open_until.store(self.now() + OPEN_FOR.as_millis() as u64, Ordering::Release);
    }

    async fn serve(&self, req: Request, next: Next, answer: fn(AppError) -> Response) -> Response {
        if needs_database(req.uri().path()) && !self.admits() {
            let mut response = answer(AppError::unavailable(REASON, "the database is unavailable; try again later"));
            response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            return response;
        }
        next.run(req).await
    }
}

/// Checks the database four times a second on a connection of its own
/// (never the pool's, whose waits are what the breaker saves requests
/// from): open while the database cannot be reached, closed at its first
/// answer. A connection that broke is replaced at once, and only a new one
/// that cannot be made (or answer) within 2 s counts: an administrator
/// ending connections, or a server that answers "too many clients", is a
/// database that is there. Ends when `stopped` turns true or its sender
/// is dropped.
pub async fn watch(
    breaker: Breaker,
    options: sqlx::postgres::PgConnectOptions,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    const EVERY: Duration = Duration::from_millis(250);
    let mut conn: Option<sqlx::PgConnection> = None;
    while !*stopped.borrow() {
        if reachable(&mut conn, &options).await {
            breaker.close();
        } else {
            breaker.open();
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            changed = stopped.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether a server takes writes: not a standby (a failover's target not
/// yet promoted, or an old primary come back as one) and not read-only.
const WRITABLE: &str = "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'";

/// Whether the database answers and takes writes: on the watchdog's
/// connection, else on a new one.
async fn reachable(conn: &mut Option<sqlx::PgConnection>, options: &sqlx::postgres::PgConnectOptions) -> bool {
    use sqlx::Connection;
    const WITHIN: Duration = Duration::from_secs(2);
    const HELD_WITHIN: Duration = Duration::from_secs(1);
    if let Some(c) = conn.as_mut() {
        // A statement, not a bare ping: through a pooler it must reach
        // PostgreSQL.
        let writable = tokio::time::timeout(HELD_WITHIN, sqlx::query_scalar::<_, bool>(WRITABLE).fetch_one(&mut *c));
        if matches!(writable.await, Ok(Ok(true))) {
            return true;
        }
        // Read-only, broken or slow: a new connection may reach the
        // primary (a pooler repointed, a name moved).
        *conn = None;
    }
    let fresh = async {
        let mut c = sqlx::PgConnection::connect_with(options).await?;
        let writable: bool = sqlx::query_scalar(WRITABLE).fetch_one(&mut c).await?;
        Ok::<_, sqlx::Error>((c, writable))
    };
    match tokio::time::timeout(WITHIN, fresh).await {
        Ok(Ok((c, true))) => {
            *conn = Some(c);
            true
        }
        Ok(Ok((_, false))) => {
            tracing::warn!("the database answers but takes no writes (a standby, or read-only)");
            false
        }
        // The server (or PgBouncer) answered with an error of its own:
        // there, unless the error says it cannot reach PostgreSQL.
        Ok(Err(sqlx::Error::Database(d))) => !crate::store::is_unreachable(&*d),
        Ok(Err(_)) | Err(_) => false,
    }
}

pub async fn breaker_rest(breaker: Breaker, req: Request, next: Next) -> Response {
    breaker.serve(req, next, crate::http::error::rest_answer).await
}

pub async fn breaker_grpc(breaker: Breaker, req: Request, next: Next) -> Response {
    breaker.serve(req, next, crate::http::error::grpc_answer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_opens_and_closes_it() {
        let b = Breaker::default();
        assert!(b.admits(), "closed at first");
        b.open();
        assert!(!b.admits(), "requests are answered at once");
        b.close();
        assert!(b.admits());
    }

    #[test]
    fn only_calls_that_need_the_database_are_refused() {
        for path in ["/v1/payment", "/v1/customer/7", "/v1/webhooks/stripe", "/payment.PaymentService/CreatePayment"] {
            assert!(needs_database(path), "{path}");
        }
        for path in [
            "/v1/healthcheck",
            "/payment.PaymentService/HealthCheck",
            "/grpc.health.v1.Health/Check",
            "/openapi.json",
            "/docs",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(!needs_database(path), "{path}");
        }
    }
}
