//! Admission: past its capacity an instance sheds load at once instead of
//! queueing requests for seconds. One bound per instance, shared by both
//! listeners: at most so many requests are served at a time (their database
//! work queues behind the pool; their Stripe calls wait on Stripe). One more
//! is answered at once with 503 / UNAVAILABLE, reason `OVERLOADED` and
//! `Retry-After: 1`, before anything is read, written or sent to Stripe, so
//! a retry (with the same idempotency key) is always safe, and a load
//! balancer can send it elsewhere. Health checks are always admitted: an
//! instance that is busy is not down.
//!
//! The bound adapts to what the instance can do. Each request's own time
//! (its whole time minus its Stripe calls, [`crate::timing`]) tells whether
//! requests queue here: above `target`, the bound shrinks by a quarter (at
//! most once per `target`, so one queue is not counted many times); at or
//! below half of it, the bound grows by one, up to `max_in_flight` (in
//! between it holds, so that it settles instead of swinging). Slow Stripe
//! answers shrink nothing: waiting on Stripe costs the instance little, and
//! sheds nothing it could serve. With `target` zero the bound is fixed.

use crate::app::AppError;
use axum::{
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use parking_lot::Mutex;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// The bound never shrinks below this many requests at a time.
pub const FLOOR: usize = 64;

/// The instance's bound, shared by its listeners. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    max: usize,
    target: Duration,
    last_cut: Mutex<Instant>,
}

/// A request admitted; it leaves when dropped.
struct Admitted<'a>(&'a Inner);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_in_flight: usize, target: Duration) -> Self {
        let max = max_in_flight.max(1);
        Self {
            inner: Arc::new(Inner {
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(max),
                max,
                target,
                // So that the first queue seen cuts at once.
                last_cut: Mutex::new(Instant::now().checked_sub(target).unwrap_or_else(Instant::now)),
            }),
        }
    }

    /// Requests admitted at a time now.
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Acquire)
    }

    fn admit(&self) -> Option<Admitted<'_>> {
        let before = self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(&self.inner);
        (before < self.limit()).then_some(admitted)
    }

    /// Learns from one request that took `own` time of its own.
    pub fn observe(&self, own: Duration) {
        let inner = &self.inner;
        if inner.target.is_zero() {
            return;
        }
        if own > inner.target {
            let mut last = inner.last_cut.lock();
            if last.elapsed() >= inner.target {
                *last = Instant::now();
                let cut = (self.limit() * 3 / 4).max(FLOOR.min(inner.max));
                inner.limit.store(cut, Ordering::Release);
                tracing::warn!(
                    limit = cut,
                    own_ms = own.as_millis() as u64,
                    "requests queue: admitting fewer at a time"
                );
            }
        } else if own <= inner.target / 2 && self.limit() < inner.max {
            let _ = inner.limit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| Some((l + 1).min(inner.max)));
        }
    }

    /// Serves `req` if admitted, learning from its own time; `None` if shed.
    async fn serve(&self, req: Request, next: Next) -> Option<Response> {
        let _admitted = self.admit()?;
        let start = Instant::now();
        let response = next.run(req).await;
        self.observe(start.elapsed().saturating_sub(crate::timing::stripe_so_far()));
        Some(response)
    }
}

fn overloaded() -> AppError {
    AppError::unavailable("OVERLOADED", "the service is at capacity; retry shortly (with the same idempotency key)")
}

fn always_admitted(req: &Request) -> bool {
    let path = req.uri().path();
    path == "/v1/healthcheck" || path.starts_with("/grpc.health.v1.Health/")
}

/// The REST door's admission.
pub async fn admit_rest(admission: Admission, req: Request, next: Next) -> Response {
    if always_admitted(&req) {
        return next.run(req).await;
    }
    admission.serve(req, next).await.unwrap_or_else(|| {
        let mut response = crate::http::error::RestError::from(overloaded()).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    })
}

/// The gRPC door's admission: the same refusal as a gRPC status.
pub async fn admit_grpc(admission: Admission, req: Request, next: Next) -> Response {
    if always_admitted(&req) {
        return next.run(req).await;
    }
    admission.serve(req, next).await.unwrap_or_else(|| {
        let mut response = tonic::Status::from(overloaded()).into_http::<axum::body::Body>();
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_shrinks_while_requests_queue_and_grows_back_when_they_do_not() {
        let a = Admission::new(1000, Duration::from_millis(1));
        assert_eq!(a.limit(), 1000);
        a.observe(Duration::from_millis(5));
        assert_eq!(a.limit(), 750, "a quarter less");
        a.observe(Duration::from_millis(5));
        assert_eq!(a.limit(), 750, "not twice within one target");
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(2));
            a.observe(Duration::from_millis(5));
        }
        assert_eq!(a.limit(), FLOOR, "never below the floor");
        a.observe(Duration::from_micros(800));
        assert_eq!(a.limit(), FLOOR, "held just under the target");
        for _ in 0..10 {
            a.observe(Duration::ZERO);
        }
        assert_eq!(a.limit(), FLOOR + 10, "one more per request served well in time");
    }

    #[test]
    fn requests_past_the_bound_are_shed_and_a_fixed_bound_never_moves() {
        let a = Admission::new(2, Duration::ZERO);
        let (first, second) = (a.admit(), a.admit());
        assert!(first.is_some() && second.is_some());
        assert!(a.admit().is_none(), "a third is shed");
        drop(first);
        assert!(a.admit().is_some(), "room again once one leaves");
        a.observe(Duration::from_secs(10));
        assert_eq!(a.limit(), 2);
    }
}
