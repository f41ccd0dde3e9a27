//! The one error type of the use cases, and its mapping to gRPC.
//!
//! Every error has a kind (which becomes the gRPC code, and through it the
//! HTTP status), a stable machine-readable `reason` (UPPER_SNAKE_CASE, carried
//! as a `google.rpc.ErrorInfo`), a message for people and optional details.
//! Internal errors keep their cause for the log and tell the client nothing
//! more than "internal error".

use crate::domain::Invalid;
use std::collections::HashMap;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of our errors.
pub const ERROR_DOMAIN: &str = "amazing-payments";

/// The reasons of [`Kind::Conflict`]: the refusals that depend on a stored
/// resource's state, answered 409 over REST (`http::error`) from the reason
/// alone, so that a refusal saved under an idempotency key replays the same.
/// A conflict with a reason missing here fails the tests (`AppError::new`).
pub const CONFLICT_REASONS: &[&str] = &[
    // a payment's state (`domain::payment`)
    "ALREADY_CAPTURED",
    "PAYMENT_CANCELED",
    "NOT_CAPTURABLE",
    "CAPTURE_EXCEEDS_AUTHORIZED",
    "ALREADY_SUCCEEDED",
    "ALREADY_CANCELED",
    "NOT_CANCELABLE",
    "PAYMENT_NOT_CAPTURED",
    "NOT_REFUNDABLE",
    "ALREADY_REFUNDED",
    "REFUND_EXCEEDS_CAPTURED",
    "INVALID_TRANSITION",
    "INCONSISTENT_AMOUNTS",
    // an amount the stored payment's currency or price cannot make
    "INVALID_AMOUNT",
    "AMOUNT_TOO_SMALL",
    "AMOUNT_TOO_LARGE",
    // products, prices and customers
    "PRODUCT_NOT_IN_STRIPE",
    "PRODUCT_INACTIVE",
    "PRICE_INACTIVE",
    "CUSTOMER_NOT_IN_STRIPE",
    "STRIPE_CUSTOMER_KEY_IMMUTABLE",
    // webhook endpoints
    "TOO_MANY_WEBHOOK_ENDPOINTS",
    "WEBHOOK_ENDPOINT_DISABLED",
    // disputes
    "CHARGE_DISPUTED",
    "DISPUTE_CLOSED",
    "DISPUTE_UNDER_REVIEW",
];

/// What kind of failure; decides the gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// The resource's state does not allow this (a captured payment captured
    /// again, a deactivated product priced): FAILED_PRECONDITION over gRPC,
    /// 409 Conflict over REST, so that REST callers can tell "your request is
    /// malformed" (400) from "not now, not in this state".
    Conflict,
    Unauthenticated,
    PermissionDenied,
    Aborted,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl Kind {
    pub fn code(self) -> Code {
        match self {
            Kind::InvalidArgument => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::FailedPrecondition | Kind::Conflict => Code::FailedPrecondition,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::PermissionDenied => Code::PermissionDenied,
            Kind::Aborted => Code::Aborted,
            Kind::ResourceExhausted => Code::ResourceExhausted,
            Kind::DeadlineExceeded => Code::DeadlineExceeded,
            Kind::Unavailable => Code::Unavailable,
            Kind::Internal => Code::Internal,
        }
    }
}

/// An error of a use case.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct AppError {
    pub kind: Kind,
    pub reason: &'static str,
    pub message: String,
    /// Facts for programs, such as `field`.
    pub details: HashMap<String, String>,
    /// The cause of an internal error: logged, never sent.
    #[source]
    pub source: Option<anyhow::Error>,
    /// Headers or metadata the answer carries (`retry-after`, rate limits).
    pub metadata: Vec<(&'static str, String)>,
}

impl AppError {
    pub fn new(kind: Kind, reason: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            kind != Kind::Conflict || CONFLICT_REASONS.contains(&reason),
            "{reason} is not in CONFLICT_REASONS"
        );
        Self { kind, reason, message: message.into(), details: HashMap::new(), source: None, metadata: Vec::new() }
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, reason, message)
    }

    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, reason, message)
    }

    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, reason, message)
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unauthenticated, reason, message)
    }

    /// An unexpected failure; `cause` goes to the log only.
    pub fn internal(cause: anyhow::Error) -> Self {
        let mut e = Self::new(Kind::Internal, "INTERNAL", "internal error");
        e.source = Some(cause);
        e
    }
}

impl From<Invalid> for AppError {
    fn from(e: Invalid) -> Self {
        AppError::invalid(e.reason, e.message).detail("field", e.field)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // The pool could not reach the database in time, or the
            // connection broke (a restart, a failover): try again later.
            // Whatever the statement was, its outcome is not a refusal.
            // A busy pool is not a broken connection: only the latter makes
            // the pool check its connections before use for a while.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                AppError::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; try again later")
            }
            sqlx::Error::Io(_) => {
                crate::store::note_connection_error();
                AppError::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; try again later")
            }
            // A write that reached a standby (a failover not finished, a
            // pooler or name not yet moved): the primary is elsewhere or
            // coming; try again shortly.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("25006") => {
                crate::store::note_connection_error();
                AppError::unavailable("DATABASE_UNAVAILABLE", "the database takes no writes right now; try again later")
            }
            sqlx::Error::Database(d) if crate::store::is_unreachable(d.as_ref()) => {
                // PgBouncer's wait for a server connection running out is a
                // busy pool, not a broken connection.
                if !d.message().contains("query_wait_timeout") {
                    crate::store::note_connection_error();
                }
                AppError::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; try again later")
            }
            // Two requests with one client key, each past the other's
            // lease, recording their operation at the same moment: one wins.
            sqlx::Error::Database(d) if d.constraint() == Some(crate::store::idempotency::CLAIMED) => AppError::new(
                Kind::Aborted,
                super::KEY_SEEN,
                "this idempotency key was claimed by another request meanwhile",
            ),
            sqlx::Error::Database(d) if d.constraint() == Some("operation_request_key") => AppError::new(
                Kind::Aborted,
                "IDEMPOTENCY_KEY_IN_USE",
                "a request with this idempotency key is still running; retry shortly",
            ),
            other => AppError::internal(anyhow::Error::new(other).context("database")),
        }
    }
}

impl From<AppError> for tonic::Status {
    fn from(e: AppError) -> Self {
        if e.kind == Kind::Internal {
            let cause = e.source.as_ref().map(|c| format!("{c:#}")).unwrap_or_default();
            tracing::error!(reason = e.reason, cause = %cause, "internal error");
        }
        let details = ErrorDetails::with_error_info(e.reason, ERROR_DOMAIN, e.details);
        let mut status = tonic::Status::with_error_details(e.kind.code(), e.message, details);
        for (name, value) in e.metadata {
            if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(name.as_bytes()), value.parse()) {
                status.metadata_mut().insert(k, v);
            }
        }
        status
    }
}

/// The `ErrorInfo` reason and metadata carried by a status, if any.
pub fn reason_of(status: &tonic::Status) -> Option<(String, HashMap<String, String>)> {
    status.get_details_error_info().map(|i| (i.reason, i.metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_becomes_a_status_with_its_reason_and_field() {
        let e: AppError = Invalid::new("email", "INVALID_EMAIL", "email is not valid").into();
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "email is not valid");
        let (reason, meta) = reason_of(&status).unwrap();
        assert_eq!(reason, "INVALID_EMAIL");
        assert_eq!(meta["field"], "email");
    }

    #[test]
    fn an_internal_error_tells_the_client_nothing_of_its_cause() {
        let status: tonic::Status = AppError::internal(anyhow::anyhow!("password=hunter2 at db:5432")).into();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
