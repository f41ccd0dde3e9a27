//! Limits on one request, for both doors: the size of its headers and the
//! time its body takes to arrive once its head is in. The connection's own
//! limits (heads in time, idle connections, their number) are in
//! [`crate::server`].
//!
//! - Headers whose names and values sum to more than `max_header_bytes` are
//!   refused before anything else: 431 over REST, RESOURCE_EXHAUSTED over
//!   gRPC (only that call: the connection serves on), reason
//!   `HEADERS_TOO_LARGE`.
//! - A body that has not arrived `body_read_timeout` after the head fails
//!   the read with DEADLINE_EXCEEDED, reason `BODY_READ_TIMEOUT` (a boxed
//!   [`tonic::Status`], which tonic answers as is). Over REST the answer,
//!   whatever the handler made of the failed read, is 408 in our JSON shape
//!   with `Connection: close` (the rest of the body would be read as the
//!   next request). A streaming call's requests are one body: server
//!   reflection, the only such call, gets this long per session.

use super::error::RestError;
use crate::app::{AppError, Kind};
use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderValue, StatusCode, Version, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::{Body as _, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Bytes of header names and values.
    pub max_header_bytes: usize,
    /// From the head's arrival to the body's end.
    pub body_read_timeout: Duration,
}

/// The size of a request's headers as counted here: names and values.
fn header_bytes(req: &Request) -> usize {
    req.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum()
}

fn headers_too_large(limits: RequestLimits) -> AppError {
    AppError::new(
        Kind::ResourceExhausted,
        "HEADERS_TOO_LARGE",
        format!("the request headers are larger than the service accepts ({} bytes)", limits.max_header_bytes),
    )
}

fn body_too_slow(timeout: Duration) -> AppError {
    AppError::new(
        Kind::DeadlineExceeded,
        "BODY_READ_TIMEOUT",
        format!("the request body did not arrive within {} s of its headers", timeout.as_secs_f64()),
    )
}

/// `req` with its body under the deadline, and the flag that tells whether
/// it expired; a request without a body is left as it is.
fn with_deadline(req: Request, timeout: Duration) -> (Request, Option<Arc<AtomicBool>>) {
    if req.body().is_end_stream() {
        return (req, None);
    }
    let expired = Arc::new(AtomicBool::new(false));
    let flag = expired.clone();
    let req = req.map(|body| {
        Body::new(Deadline { body, sleep: tokio::time::sleep(timeout), timeout, expired: flag, done: false })
    });
    (req, Some(expired))
}

/// The REST door's limits.
pub async fn limit_rest(limits: RequestLimits, req: Request, next: Next) -> Response {
    if header_bytes(&req) > limits.max_header_bytes {
        let mut error = RestError::from(headers_too_large(limits));
        error.http = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return error.into_response();
    }
    let http1 = req.version() < Version::HTTP_2;
    let (req, expired) = with_deadline(req, limits.body_read_timeout);
    let response = next.run(req).await;
    if !expired.is_some_and(|e| e.load(Ordering::Acquire)) {
        return response;
    }
    let mut error = RestError::from(body_too_slow(limits.body_read_timeout));
    error.http = StatusCode::REQUEST_TIMEOUT;
    let mut response = error.into_response();
    if http1 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The gRPC door's limits: the same refusals as gRPC statuses.
pub async fn limit_grpc(limits: RequestLimits, req: Request, next: Next) -> Response {
    if header_bytes(&req) > limits.max_header_bytes {
        return tonic::Status::from(headers_too_large(limits)).into_http();
    }
    let (req, _) = with_deadline(req, limits.body_read_timeout);
    next.run(req).await
}

pin_project! {
    /// A request body that fails once its deadline passes before its end.
    struct Deadline {
        #[pin]
        body: Body,
        #[pin]
        sleep: tokio::time::Sleep,
        timeout: Duration,
        expired: Arc<AtomicBool>,
        done: bool,
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.body.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => {
                if this.sleep.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *this.done = true;
                this.expired.store(true, Ordering::Release);
                let status = tonic::Status::from(body_too_slow(*this.timeout));
                Poll::Ready(Some(Err(Box::new(status))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_stops_coming_fails_with_deadline_exceeded_at_its_deadline() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
        tx.unbounded_send(Ok(Bytes::from_static(b"{\"na"))).unwrap();
        let (req, expired) = with_deadline(Request::new(Body::from_stream(rx)), Duration::from_millis(50));
        let error = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap_err();
        assert!(expired.expect("a body to watch").load(Ordering::Acquire));
        // As tonic finds it, through axum's error.
        let status = tonic::Status::from_error(Box::new(error));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(crate::app::error::reason_of(&status).unwrap().0, "BODY_READ_TIMEOUT");
        drop(tx);
    }

    #[test]
    fn header_bytes_count_names_and_values() {
        let req = Request::builder().header("ab", "cde").header("f", "").body(Body::empty()).unwrap();
        assert_eq!(header_bytes(&req), 6);
    }
}
