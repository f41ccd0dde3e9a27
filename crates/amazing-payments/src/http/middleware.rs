//! Per-request operations, for both transports: a request id (`x-request-id`,
//! taken from the caller when it is sane, made otherwise) that is returned,
//! forwarded to the use cases and present in every log line of the request
//! (through its span), one access-log line with route, status and latency,
//! a `Server-Timing` header with the request's total, database and Stripe
//! time ([`crate::timing`]), and the request metrics ([`crate::meter`]).

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
    let matched = req.extensions().get::<MatchedPath>().is_some();
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
    let took = start.elapsed();
    let latency_ms = took.as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("");
    span.in_scope(|| {
        tracing::info!(method, route, status, grpc_status, latency_ms, "request");
    });
    let (code, reason) = outcome(&response);
    crate::meter::request(&rpc_label(transport, &route, matched, &response), transport, code, &reason, took);
    response
}

/// The rpc a REST route served (set by the gateway on its answers).
#[derive(Debug, Clone, Copy)]
pub struct Rpc(pub &'static str);

/// A bounded name for what was asked: the rpc, the REST route pattern, or
/// `unmatched`; never a path a client made up.
fn rpc_label(transport: &str, route: &str, matched: bool, response: &Response) -> String {
    if let Some(Rpc(rpc)) = response.extensions().get::<Rpc>() {
        return (*rpc).to_string();
    }
    if transport == "rest" {
        return if matched { route.to_string() } else { "unmatched".into() };
    }
    match route.trim_start_matches('/').split_once('/') {
        Some(("payment.PaymentService", rpc)) if crate::http::gateway::RPCS.contains(&rpc) => rpc.to_string(),
        Some((
            service @ ("grpc.health.v1.Health"
            | "grpc.reflection.v1.ServerReflection"
            | "grpc.reflection.v1alpha.ServerReflection"),
            _,
        )) => service.to_string(),
        _ => "unmatched".into(),
    }
}

/// The gRPC code and reason of an answer: from our REST error's extension,
/// or from a gRPC answer's status headers (trailers-only answers).
fn outcome(response: &Response) -> (&'static str, String) {
    use crate::http::error::{Outcome, code_name};
    if let Some(o) = response.extensions().get::<Outcome>() {
        return (code_name(o.code), o.reason.clone());
    }
    if response.headers().contains_key("grpc-status") {
        let status = tonic::Status::from_header_map(response.headers()).unwrap_or_else(|| tonic::Status::ok(""));
        let reason = crate::app::error::reason_of(&status).map(|(r, _)| r).unwrap_or_default();
        return (code_name(status.code()), reason);
    }
    if response.status().is_success() {
        ("OK", String::new())
    } else {
        (code_name(tonic::Code::Unknown), response.status().as_str().to_string())
    }
}

pub async fn observe_rest(req: Request, next: Next) -> Response {
    observe("rest", req, next).await
}

pub async fn observe_grpc(req: Request, next: Next) -> Response {
    observe("grpc", req, next).await
}
