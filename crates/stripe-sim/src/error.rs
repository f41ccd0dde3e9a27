//! Stripe's error answers: `{"error": {type, code, decline_code, message,
//! param, payment_intent, doc_url}}` with Stripe's HTTP status codes.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// An error as Stripe reports it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub decline_code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    /// The failed PaymentIntent, embedded in card errors.
    pub payment_intent: Option<Value>,
    /// The failed SetupIntent, embedded in its card errors.
    pub setup_intent: Option<Value>,
    /// Whether an idempotent result is saved for this error: Stripe saves the
    /// result of every request that started executing, and not that of a
    /// request that failed validation.
    pub started_executing: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: None,
            decline_code: None,
            message: message.into(),
            param: None,
            payment_intent: None,
            setup_intent: None,
            started_executing: false,
        }
    }

    /// 400 `invalid_request_error` about one parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.to_string());
        e
    }

    /// 400 `parameter_missing`.
    pub fn missing(param: &str) -> Self {
        Self::invalid(param, format!("Missing required param: {param}.")).code("parameter_missing")
    }

    /// 400 `parameter_unknown`.
    pub fn unknown_param(param: &str) -> Self {
        Self::invalid(param, format!("Received unknown parameter: {param}")).code("parameter_unknown")
    }

    /// 404 `resource_missing`, as for `No such customer: 'cus_x'`.
    pub fn missing_object(what: &str, id: &str, param: &str) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("No such {what}: '{id}'"));
        e.code = Some("resource_missing");
        e.param = Some(param.to_string());
        e
    }

    /// 401 for a missing or unknown key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    }

    /// 404 for a path that is no API route.
    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
            ),
        )
    }

    /// 500 `api_error`.
    pub fn server_error(status: StatusCode, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, "api_error", message);
        e.started_executing = true;
        e
    }

    /// 400 `idempotency_error`: same key, different parameters.
    pub fn idempotency_mismatch(key: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
        )
    }

    /// 409 `idempotency_key_in_use`: a concurrent request holds the key.
    pub fn idempotency_in_use() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "There is currently another in-progress request using this Stripe-Idempotency-Key. Please try again later.",
        )
        .code("idempotency_key_in_use")
    }

    /// 429 `rate_limit`.
    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
        )
        .code("rate_limit")
    }

    /// 400 in the request's current state, such as `payment_intent_unexpected_state`.
    pub fn state(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).code(code)
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The JSON body Stripe sends.
    pub fn body(&self) -> Value {
        let mut err = json!({ "type": self.kind, "message": self.message });
        if let Some(code) = self.code {
            err["code"] = json!(code);
            err["doc_url"] = json!(doc_url(code));
        }
        if let Some(d) = &self.decline_code {
            err["decline_code"] = json!(d);
        }
        if let Some(p) = &self.param {
            err["param"] = json!(p);
        }
        if let Some(pi) = &self.payment_intent {
            err["payment_intent"] = pi.clone();
        }
        if let Some(si) = &self.setup_intent {
            err["setup_intent"] = si.clone();
        }
        json!({ "error": err })
    }
}

/// The page of Stripe's documentation about an error code.
pub fn doc_url(code: &str) -> String {
    format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-"))
}

/// An answer that is not saved under an idempotency key (a saved one is
/// answered by the server with its own `Stripe-Should-Retry`).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let advice = crate::should_retry::advice(self.status, self.code, false);
        let mut r = (self.status, Json(self.body())).into_response();
        crate::should_retry::mark(&mut r, advice);
        r
    }
}

pub type ApiResult = Result<Value, ApiError>;
