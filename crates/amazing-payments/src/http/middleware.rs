//! Per-request operations, for both transports: a request id (`x-request-id`,
//! taken from the caller when it is sane, made otherwise) that is returned,
//! forwarded to the use cases and present in every log line of the request
//! (through its span), one access-log line with route, status and latency,
//! and a `Server-Timing` header with the request's total, database and
//! Stripe time ([`crate::timing`]).

use axum::{
    extract::{MatchedPath, Request},
    http::HeaderValue,
    middleware::Next,
    response::Response,
};
use std::time::Instant;
use tracing::Instrument;

const HEADER: &str = "x-request-id";

/// A caller's id is kept when it is 1 to 128 visible ASCII characters.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a header value"))
}

/// The middleware; `transport` is `rest` or `grpc`.
pub async fn observe(transport: &'static str, mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    req.headers_mut().insert(HEADER, id.clone());
    let method = req.method().to_string();
    // A gRPC path names its rpc (`/payment.PaymentService/GetCustomer`): the
    // route is the rpc, never the router's `{*rest}` pattern.
    let route = match (transport, req.extensions().get::<MatchedPath>()) {
        ("rest", Some(p)) => p.as_str().to_string(),
        _ => req.uri().path().to_string(),
    };
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or("-"), transport);
    let start = Instant::now();
    let (mut response, timing) = crate::timing::measure(next.run(req).instrument(span.clone())).await;
    response.headers_mut().insert(HEADER, id);
    if let Ok(v) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", v);
    }
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("");
    span.in_scope(|| {
        tracing::info!(method, route, status, grpc_status, latency_ms, "request");
    });
    response
}

pub async fn observe_rest(req: Request, next: Next) -> Response {
    observe("rest", req, next).await
}

pub async fn observe_grpc(req: Request, next: Next) -> Response {
    observe("grpc", req, next).await
}
