//! Error answers over REST. Every failure, from a use case, from a malformed
//! body or from an unknown route, answers in one JSON shape:
//! `{"code": 3, "status": "INVALID_ARGUMENT", "message": "...", "reason": "INVALID_EMAIL", "details": {...}}`
//! with the HTTP status the earlier gateway used for the gRPC code.

use crate::app::error::{AppError, CONFLICT_REASONS, reason_of};
use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use tonic::Code;

/// The HTTP status of a gRPC code (grpc-gateway's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code, e.g. `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What an error answer said, for the request metrics (a response
/// extension: read by `middleware::observe`, never sent).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Code,
    pub reason: String,
}

/// An error answer over REST.
#[derive(Debug)]
pub struct RestError {
    pub http: StatusCode,
    pub code: Code,
    pub message: String,
    pub reason: String,
    pub details: Map<String, Value>,
    /// Headers from the status's metadata, e.g. `idempotent-replayed`.
    pub headers: axum::http::HeaderMap,
}

impl RestError {
    /// An error the gateway itself finds (bad JSON, unknown route...).
    pub fn new(http: StatusCode, code: Code, reason: &str, message: impl Into<String>) -> Self {
        Self {
            http,
            code,
            message: message.into(),
            reason: reason.to_string(),
            details: Map::new(),
            headers: Default::default(),
        }
    }
}

/// Reasons whose HTTP status is not the one of their gRPC code: a declined
/// card (or one declined off-session for want of the customer) is
/// FAILED_PRECONDITION over gRPC and 402 Payment Required over REST, as
/// Stripe answers it.
const REASON_STATUS: &[(&str, StatusCode)] =
    &[("CARD_DECLINED", StatusCode::PAYMENT_REQUIRED), ("AUTHENTICATION_REQUIRED", StatusCode::PAYMENT_REQUIRED)];

impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> Self {
        let (reason, meta) =
            reason_of(&status).unwrap_or_else(|| (code_name(status.code()).to_string(), Default::default()));
        let http = REASON_STATUS
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, s)| *s)
            .or_else(|| {
                // A refusal because of a resource's state: 409 Conflict, so that
                // it reads apart from a malformed request (400).
                (status.code() == Code::FailedPrecondition && CONFLICT_REASONS.contains(&reason.as_str()))
                    .then_some(StatusCode::CONFLICT)
            })
            .unwrap_or_else(|| http_status(status.code()));
        let headers = status
            .metadata()
            .clone()
            .into_headers()
            .into_iter()
            .filter_map(|(name, value)| name.map(|n| (n, value)))
            .filter(|(name, _)| !name.as_str().starts_with("grpc-") && name != "content-type")
            .collect();
        Self {
            http,
            code: status.code(),
            message: status.message().to_string(),
            reason,
            details: meta.into_iter().map(|(k, v)| (k, Value::String(v))).collect(),
            headers,
        }
    }
}

impl From<AppError> for RestError {
    fn from(e: AppError) -> Self {
        tonic::Status::from(e).into()
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "code": self.code as i32,
            "status": code_name(self.code),
            "message": self.message,
            "reason": self.reason,
        });
        if !self.details.is_empty() {
            body["details"] = Value::Object(self.details);
        }
        let mut response = (self.http, Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response.extensions_mut().insert(Outcome { code: self.code, reason: self.reason });
        if self.http == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The framework's own refusals (a body over its limit, a method a route
/// does not take, an unreadable request), which it writes as plain text, in
/// our JSON shape with the same status; the headers they carry (`Allow`,
/// `Retry-After`) are kept. Answers already in JSON pass unchanged.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (code, reason, message) = match status {
        StatusCode::NOT_FOUND => (Code::NotFound, "ROUTE_NOT_FOUND", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            (Code::Unimplemented, "METHOD_NOT_ALLOWED", "this route does not take this method (see Allow)")
        }
        StatusCode::PAYLOAD_TOO_LARGE => (Code::ResourceExhausted, "BODY_TOO_LARGE", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (Code::InvalidArgument, "UNSUPPORTED_MEDIA_TYPE", "the request body must be JSON (application/json)")
        }
        StatusCode::REQUEST_TIMEOUT => {
            (Code::DeadlineExceeded, "REQUEST_TIMEOUT", "the request took too long to arrive")
        }
        s if s.is_client_error() => (Code::InvalidArgument, "BAD_REQUEST", "the request cannot be read"),
        _ => (Code::Internal, "INTERNAL", "internal error"),
    };
    let mut error = RestError::new(status, code, reason, message);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = response.headers().get(&name) {
            error.headers.insert(name, v.clone());
        }
    }
    error.into_response()
}

/// An error as the REST door answers it, for middleware that answers
/// before the request reaches a handler.
pub fn rest_answer(error: crate::app::AppError) -> axum::response::Response {
    axum::response::IntoResponse::into_response(RestError::from(error))
}

/// The same error as the gRPC door answers it (a trailers-only status).
pub fn grpc_answer(error: crate::app::AppError) -> axum::response::Response {
    tonic::Status::from(error).into_http()
}
