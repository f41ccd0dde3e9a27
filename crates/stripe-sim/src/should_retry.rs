//! `Stripe-Should-Retry` on error answers, so a client can be tested on
//! honouring it.
//!
//! Stripe's "Advanced error handling" page: the API sends the header "when it
//! has additional information that the request is retryable"; `true` means
//! retry (after a backoff), `false` means a retry "won't have an additional
//! effect", and no header means the API cannot tell, so the client decides
//! from the status. Stripe does not list when it sends which value; the
//! rules modelled here follow what it documents about each case and what
//! its own client libraries expect (stripe-ruby's `should_retry?`):
//!
//! | answer | header | why |
//! |---|---|---|
//! | any error saved under an `Idempotency-Key`, first answer and every replay (a `saved` fault's 500, a card decline, ...) | `false` | a retry with the key can only replay it; stripe-ruby expects `false` "in most cases when a 500 is returned, since our idempotency framework would typically replay it" |
//! | 409 `idempotency_key_in_use` | `true` | the other request finishes; a retry then gets its saved result |
//! | 429 `lock_timeout` | `true` | Stripe's message says to retry it; stripe-ruby names lock timeouts as what the header advises retrying |
//! | 429 `rate_limit` | none (`Retry-After` if the rule sets it) | Stripe's libraries deliberately do not retry rate limits on their own, which a `true` would overturn; the client backs off on the status |
//! | a 5xx not saved under a key (a fault answered before any work, a read, a keyless POST) | `true` | nothing was saved: a retry runs afresh |
//! | other errors (400 validation, 401, 404, ...) and successes | none | |
//!
//! A fault rule's `should_retry` replaces the value on its own first answer.

use axum::{
    http::{HeaderValue, StatusCode},
    response::Response,
};

/// The header's name.
pub const HEADER: &str = "stripe-should-retry";

/// The advice for an answer with `status` and error `code`; `saved` when the
/// answer is saved under (or replayed from) an idempotency key.
pub fn advice(status: StatusCode, code: Option<&str>, saved: bool) -> Option<bool> {
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    if saved {
        return Some(false);
    }
    match (status.as_u16(), code) {
        (409, _) => Some(true),
        (429, Some("lock_timeout")) => Some(true),
        (429, _) => None,
        (s, _) if s >= 500 => Some(true),
        _ => None,
    }
}

/// Sets the header on `response`, or leaves it unset for `None`.
pub fn mark(response: &mut Response, advice: Option<bool>) {
    if let Some(retry) = advice {
        response.headers_mut().insert(HEADER, HeaderValue::from_static(if retry { "true" } else { "false" }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_errors_are_never_worth_retrying_and_conflicts_always_are() {
        assert_eq!(advice(StatusCode::INTERNAL_SERVER_ERROR, None, true), Some(false));
        assert_eq!(advice(StatusCode::PAYMENT_REQUIRED, Some("card_declined"), true), Some(false));
        assert_eq!(advice(StatusCode::CONFLICT, Some("idempotency_key_in_use"), false), Some(true));
        assert_eq!(advice(StatusCode::SERVICE_UNAVAILABLE, None, false), Some(true));
    }

    #[test]
    fn lock_timeouts_say_retry_and_rate_limits_leave_it_to_the_client() {
        assert_eq!(advice(StatusCode::TOO_MANY_REQUESTS, Some("lock_timeout"), false), Some(true));
        assert_eq!(advice(StatusCode::TOO_MANY_REQUESTS, Some("rate_limit"), false), None);
    }

    #[test]
    fn successes_and_plain_client_errors_carry_no_advice() {
        assert_eq!(advice(StatusCode::OK, None, true), None);
        assert_eq!(advice(StatusCode::BAD_REQUEST, Some("parameter_missing"), false), None);
    }
}
