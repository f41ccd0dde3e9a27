//! Failing fast while the database is away. Without this, every request
//! waits for a pool connection (up to 3 s, `store::pool`) before it learns
//! the database is gone. The breaker opens when an answer says
//! `DATABASE_UNAVAILABLE`, or when a watchdog on a connection of its own
//! ([`watch`], four times a second) finds the database gone: for the next
//! second, requests are answered at once with the same 503 / UNAVAILABLE and
//! `Retry-After: 1`, before anything is read or written. The watchdog keeps
//! it open while the database is away and closes it at its first answer;
//! any answer of a request but `DATABASE_UNAVAILABLE` or `OVERLOADED` closes
//! it too. Health checks always go through: they report the database's
//! state themselves.

use crate::app::AppError;
use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const OPEN_FOR: Duration = Duration::from_secs(1);
const REASON: &str = "DATABASE_UNAVAILABLE";

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

    /// Learns from an answer's outcome reason: `DATABASE_UNAVAILABLE`
    /// opens it; any other answer but shedding closes it (the database
    /// answered).
    fn saw(&self, reason: &str) {
        if reason == REASON {
            self.open();
        } else if reason != "OVERLOADED" {
            self.close();
        }
    }

    async fn serve(&self, req: Request, next: Next, answer: fn(AppError) -> Response) -> Response {
        let path = req.uri().path();
        let health = path == "/v1/healthcheck" || path.ends_with("/HealthCheck") || path.starts_with("/grpc.health.");
        if !health && !self.admits() {
            let mut response = answer(AppError::unavailable(REASON, "the database is unavailable; try again later"));
            response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            return response;
        }
        let response = next.run(req).await;
        if !health {
            self.saw(&crate::http::middleware::outcome(&response).1);
        }
        response
    }
}

/// Checks the database four times a second on a connection of its own
/// (never the pool's, whose waits are what the breaker saves requests
/// from), and opens the breaker the moment it cannot connect or its
/// connection breaks. Ends when `stopped` turns true.
pub async fn watch(
    breaker: Breaker,
    options: sqlx::postgres::PgConnectOptions,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    use sqlx::Connection;
    const EVERY: Duration = Duration::from_millis(250);
    const WITHIN: Duration = Duration::from_secs(1);
    let mut conn: Option<sqlx::PgConnection> = None;
    while !*stopped.borrow() {
        let alive = match conn.as_mut() {
            Some(c) => matches!(tokio::time::timeout(WITHIN, c.ping()).await, Ok(Ok(()))),
            None => match tokio::time::timeout(WITHIN, sqlx::PgConnection::connect_with(&options)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    true
                }
                _ => false,
            },
        };
        if alive {
            breaker.close();
        } else {
            conn = None;
            breaker.open();
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.changed() => {}
        }
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
    fn it_opens_on_database_unavailable_and_closes_on_another_answer_or_when_the_watchdog_sees_the_database() {
        let b = Breaker::default();
        assert!(b.admits(), "closed at first");
        b.saw(REASON);
        assert!(!b.admits(), "requests are answered at once");
        b.saw("OVERLOADED");
        assert!(!b.admits(), "shedding tells nothing of the database");
        b.saw("");
        assert!(b.admits() && b.admits(), "any other answer closes it");
        b.open();
        assert!(!b.admits());
        b.close();
        assert!(b.admits(), "as does the watchdog");
    }
}
