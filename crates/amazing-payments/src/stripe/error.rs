//! Stripe failures, typed: what Stripe said (`type`, `code`, `decline_code`,
//! `param`, `message`, request id), or that it could not be reached.

use serde::Deserialize;
use std::fmt;

/// An error answer from Stripe.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    /// `invalid_request_error`, `card_error`, `api_error`, `idempotency_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub doc_url: Option<String>,
    /// The failed PaymentIntent, embedded in card errors.
    #[serde(default)]
    pub payment_intent: Option<serde_json::Value>,
    #[serde(skip)]
    pub request_id: Option<String>,
    /// Stripe replayed an answer it saved for this idempotency key: the
    /// same key will only ever get this answer again.
    #[serde(skip)]
    pub replayed: bool,
    /// `Stripe-Should-Retry`, when Stripe sent it.
    #[serde(skip)]
    pub should_retry: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ApiError,
}

/// Why a Stripe call failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error.
    #[error("stripe answered {}: {}", .0.status, .0)]
    Api(ApiError),
    /// Stripe could not be reached, or did not answer in time. When `sent` is
    /// false the request certainly never reached Stripe.
    #[error("stripe unreachable: {message}")]
    Network { message: String, sent: bool },
    /// Stripe answered something we cannot read.
    #[error("unreadable stripe answer (request {request_id:?}): {message}")]
    Decode { message: String, request_id: Option<String> },
}

/// Type, codes and request id; never Stripe's free-text message, which can
/// echo values of the request (an e-mail address, say) and is shown only to
/// the client that sent them. This is what reaches logs.
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(c) = &self.code {
            write!(f, "/{c}")?;
        }
        if let Some(d) = &self.decline_code {
            write!(f, "/{d}")?;
        }
        if let Some(r) = &self.request_id {
            write!(f, " (request {r})")?;
        }
        Ok(())
    }
}

impl StripeError {
    /// Whether the same request, with the same idempotency key, may succeed
    /// when tried again: network failures, 409 (key in use), 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            StripeError::Network { .. } => true,
            StripeError::Api(e) => e.status == 409 || e.status == 429 || e.status >= 500,
            StripeError::Decode { .. } => false,
        }
    }

    /// Whether this attempt may have reached Stripe: anything but a
    /// connection that was never made.
    pub fn may_have_reached_stripe(&self) -> bool {
        !matches!(self, StripeError::Network { sent: false, .. })
    }

    /// Whether Stripe's work for this request is in doubt: it may or may not
    /// have been done, and only reading the object back, or the same request
    /// with the same key, can tell. A request proven never sent is not in
    /// doubt (nothing happened), and neither is a refusal.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            StripeError::Network { sent, .. } => *sent,
            StripeError::Api(a) => a.status == 409 || a.status == 429 || a.status >= 500,
            StripeError::Decode { .. } => true,
        }
    }

    /// This error of a later call of an operation whose earlier call reached
    /// Stripe: the operation is no longer "never sent".
    pub fn after_an_earlier_call_reached_stripe(self) -> Self {
        match self {
            StripeError::Network { message, sent: false } => StripeError::Network {
                message: format!("{message} (an earlier call of the operation reached Stripe)"),
                sent: true,
            },
            other => other,
        }
    }

    /// Certainly never sent: no attempt of this call reached Stripe.
    pub fn never_sent(&self) -> bool {
        matches!(self, StripeError::Network { sent: false, .. })
    }

    /// A server error that Stripe saved for this idempotency key (it says
    /// so with `Idempotent-Replayed: true`, or with `Stripe-Should-Retry:
    /// false` on the first answer): retrying with the key can never finish
    /// the request, and whether the work was done is unknown.
    pub fn is_replayed_failure(&self) -> bool {
        matches!(self, StripeError::Api(a) if a.status >= 500 && (a.replayed || a.should_retry == Some(false)))
    }

    /// The Stripe API error, if Stripe answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            StripeError::Api(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_reaches_a_log_never_holds_stripes_message() {
        let e = StripeError::Api(ApiError {
            status: 400,
            kind: "invalid_request_error".into(),
            code: Some("email_invalid".into()),
            message: Some("Invalid email address: ada@example.com".into()),
            request_id: Some("req_1".into()),
            ..Default::default()
        });
        let shown = e.to_string();
        assert_eq!(shown, "stripe answered 400: invalid_request_error/email_invalid (request req_1)");
        assert!(!shown.contains("ada@example.com"));
    }

    #[test]
    fn a_call_that_never_left_after_an_earlier_one_reached_stripe_leaves_the_outcome_unknown() {
        let refused = StripeError::Network { message: "connection refused".into(), sent: false };
        assert!(refused.never_sent() && !refused.outcome_unknown());
        let later = refused.after_an_earlier_call_reached_stripe();
        assert!(!later.never_sent() && later.outcome_unknown(), "{later}");
        let declined = StripeError::Api(ApiError { status: 402, ..Default::default() });
        assert!(!declined.after_an_earlier_call_reached_stripe().outcome_unknown(), "Stripe's refusals stay refusals");
    }
}
