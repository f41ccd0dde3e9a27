//! The REST/JSON transport: the generated gateway onto the gRPC service,
//! the API docs, and our error format for unknown routes and for the
//! framework's own refusals.

pub mod admission;
pub mod breaker;
pub mod deadline;
pub mod docs;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod middleware;
pub mod webhook;

use crate::grpc::service::PaymentApi;
use axum::{
    Router,
    http::{Method, StatusCode, Uri},
};
use error::RestError;
use tonic::Code;

/// Every REST route, with request ids and access logs, behind the
/// request limits and the instance's admission bound.
pub fn router(
    api: PaymentApi,
    admission: admission::Admission,
    limits: limits::RequestLimits,
    deadlines: deadline::Deadlines,
    breaker: breaker::Breaker,
) -> Router {
    let app = api.app().clone();
    gateway::router(api)
        .merge(webhook::router(app))
        .merge(docs::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(move |req, next| admission::admit_rest(admission.clone(), req, next)))
        .layer(axum::middleware::from_fn(move |req, next| limits::limit_rest(limits, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| deadline::deadline_rest(deadlines.clone(), req, next)))
        .layer(axum::middleware::from_fn(move |req, next| breaker::breaker_rest(breaker.clone(), req, next)))
        .layer(axum::middleware::from_fn(middleware::observe_rest))
}

async fn not_found(method: Method, uri: Uri) -> RestError {
    RestError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        "ROUTE_NOT_FOUND",
        format!("no route {method} {}", uri.path()),
    )
}
