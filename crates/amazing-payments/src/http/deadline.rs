//! Deadlines, for both transports: every request is answered within its
//! deadline, and no request's work is ever cut short by one.
//!
//! The deadline is `REQUEST_TIMEOUT`, or a gRPC client's `grpc-timeout` when
//! that is sooner. The request runs in a task of its own; the door waits for
//! it until the deadline, then answers 504 / DEADLINE_EXCEEDED (reason
//! `DEADLINE_EXCEEDED`) while the task goes on. A client that goes away
//! stops waiting the same way. So a Stripe call in flight is never dropped
//! half-way: it completes and its outcome is recorded, as if the client had
//! stayed, and a retry with the same idempotency key learns it (the reconciler
//! is only needed when the process itself dies). Work past its deadline is
//! waited for at shutdown, within the drain timeout, and logs how it ended.
//!
//! Such work still holds its place under `MAX_IN_FLIGHT` (admission runs
//! inside the task), so callers who leave cannot pile up work without bound.

use crate::app::{AppError, Kind};
use axum::{extract::Request, middleware::Next, response::Response};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The deadline of every request, and the requests still running.
#[derive(Debug, Clone)]
pub struct Deadlines {
    /// `REQUEST_TIMEOUT`: the longest any request is waited for.
    pub timeout: Duration,
    running: TaskTracker,
}

impl Deadlines {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, running: TaskTracker::new() }
    }

    /// Waits until the requests still running (past their deadline, or
    /// whose client left) have finished.
    pub async fn finished(&self) {
        self.running.close();
        self.running.wait().await;
    }

    /// How long to wait for `req`: ours, or the gRPC client's if sooner.
    fn of(&self, req: &Request) -> Duration {
        let asked = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(grpc_timeout);
        asked.map_or(self.timeout, |d| d.min(self.timeout))
    }

    /// Runs `req` to its end in its own task and answers within its
    /// deadline; `answer` says an error the door's way.
    async fn run(&self, req: Request, next: Next, answer: fn(AppError) -> Response) -> Response {
        let deadline = self.of(&req);
        let waiting = Waiting::default();
        let left = waiting.left.clone();
        // The task keeps the request's span (its log lines and trace) and
        // its time accounting, and says how it ended once nobody waits.
        let work = crate::timing::carry(async move {
            let response = next.run(req).await;
            if left.load(Ordering::Acquire) {
                let status = response.status().as_u16();
                tracing::info!(status, "request finished after its caller stopped waiting");
            }
            response
        })
        .instrument(tracing::Span::current());
        let mut task = self.running.spawn(work);
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(Ok(response)) => {
                waiting.answered();
                response
            }
            Ok(Err(e)) => {
                // A panic in a request's task: answered as our failure; the
                // task is gone, but nothing it recorded is undone.
                waiting.answered();
                tracing::error!(error = %e, "request task failed");
                answer(AppError::internal(anyhow::anyhow!("the request's task failed: {e}")))
            }
            Err(_) => answer(passed(deadline)),
        }
    }
}

/// Whether the door still waits for its request's task: when it stops
/// without the answer (its deadline passed, or its client went away and it
/// was dropped), the task logs how the request ended.
#[derive(Default)]
struct Waiting {
    left: Arc<AtomicBool>,
    answered: bool,
}

impl Waiting {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.answered {
            self.left.store(true, Ordering::Release);
        }
    }
}

fn passed(deadline: Duration) -> AppError {
    AppError::new(
        Kind::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        format!(
            "no answer within the request's deadline ({:.1} s); the request goes on and its outcome is recorded: learn it by retrying with the same idempotency key, or, without one, by reading the resource (a retry without a key is a new request)",
            deadline.as_secs_f64()
        ),
    )
}

/// The REST door's deadlines.
pub async fn deadline_rest(deadlines: Deadlines, req: Request, next: Next) -> Response {
    deadlines.run(req, next, crate::http::error::rest_answer).await
}

/// The gRPC door's deadlines (`grpc-timeout` honoured).
pub async fn deadline_grpc(deadlines: Deadlines, req: Request, next: Next) -> Response {
    deadlines.run(req, next, crate::http::error::grpc_answer).await
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`
/// milliseconds, `u`, `n`), per the gRPC over HTTP/2 protocol.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_malformed_ones_are_ignored() {
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "123456789S", "5s", "-5S", "5.0S", "5"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
