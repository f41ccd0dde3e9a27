//! Admission: past its capacity an instance sheds load at once instead of
//! queueing requests for seconds. One bound per instance, shared by both
//! listeners: at most `max_in_flight` requests are served at a time (their
//! database work queues behind the pool; their Stripe calls wait on Stripe).
//! One more is answered at once with 503 / UNAVAILABLE, reason `OVERLOADED`
//! and `Retry-After: 1`, before anything is read, written or sent to Stripe,
//! so a retry (with the same idempotency key) is always safe, and a load
//! balancer can send it elsewhere. Health checks are always admitted: an
//! instance that is busy is not down.

use crate::app::AppError;
use axum::{
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The instance's bound, shared by its listeners. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max_in_flight: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight.max(1))) }
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
    let Ok(_permit) = admission.permits.try_acquire() else {
        let mut response = crate::http::error::RestError::from(overloaded()).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(req).await
}

/// The gRPC door's admission: the same refusal as a gRPC status.
pub async fn admit_grpc(admission: Admission, req: Request, next: Next) -> Response {
    if always_admitted(&req) {
        return next.run(req).await;
    }
    let Ok(_permit) = admission.permits.try_acquire() else {
        let mut response = tonic::Status::from(overloaded()).into_http::<axum::body::Body>();
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        return response;
    };
    next.run(req).await
}
