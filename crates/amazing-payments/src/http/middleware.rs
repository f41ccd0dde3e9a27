//! Per-request operations, for both transports: a request id (`x-request-id`,
//! taken from the caller when it is sane, made otherwise) that is returned,
//! forwarded to the use cases and present in every log line of the request
//! (through its span), one access-log line with route, status and latency,
//! a `Server-Timing` header with the request's total, database and Stripe
//! time ([`crate::timing`]), the request metrics ([`crate::meter`]), and the
//! request's trace span: a caller's W3C `traceparent` is continued, and the
//! answer carries the request's own (`traceparent`; gRPC: metadata).

use axum::{
    extract::{MatchedPath, Request},
    http::HeaderValue,
    middleware::Next,
    response::Response,
};
use opentelemetry::trace::TraceContextExt as _;
use std::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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
    let span = tracing::info_span!(
        "request",
        otel.name = %span_name(transport, &method, &route, matched),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        request_id = id.to_str().unwrap_or("-"),
        trace_id = tracing::field::Empty,
        transport,
        http.response.status_code = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    // A caller's W3C trace context is continued; its trace id is in every
    // log line of the request.
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(req.headers()))
    });
    let _ = span.set_parent(parent);
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
    let start = Instant::now();
    let (mut response, timing) = crate::timing::measure(next.run(req).instrument(span.clone())).await;
    response.headers_mut().insert(HEADER, id);
    // The answer names the request's own span: `traceparent` (gRPC: metadata).
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut opentelemetry_http::HeaderInjector(response.headers_mut()))
    });
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
    let rpc = rpc_label(transport, &route, matched, &response);
    span.record("http.response.status_code", status);
    if transport == "grpc" {
        span.record("rpc.grpc.status_code", code);
    }
    if response.status().is_server_error()
        || matches!(code, "INTERNAL" | "UNKNOWN" | "UNAVAILABLE" | "DEADLINE_EXCEEDED")
    {
        span.record("otel.status_code", "ERROR");
    }
    crate::meter::request(&rpc, transport, code, &reason, took);
    response
}

/// The name of a request's span, known before it runs: the rpc a REST
/// route serves, a gRPC method, else the method and route.
fn span_name(transport: &str, method: &str, route: &str, matched: bool) -> String {
    if transport == "rest" {
        let rpc = crate::http::gateway::ROUTES.iter().find(|r| matched && r.method == method && r.path == route);
        return match (rpc, matched) {
            (Some(r), _) => r.rpc.to_string(),
            // Other routes of ours (webhooks, docs) by their pattern; never
            // a path a client made up.
            (None, true) => format!("{method} {route}"),
            (None, false) => "unmatched".into(),
        };
    }
    grpc_label(route)
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
    grpc_label(route)
}

/// A gRPC path's rpc, or the service of ours it names, else `unmatched`.
fn grpc_label(path: &str) -> String {
    match path.trim_start_matches('/').split_once('/') {
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
pub(crate) fn outcome(response: &Response) -> (&'static str, String) {
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
