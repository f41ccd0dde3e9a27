//! Faults on demand: rules, set at start-up (`--faults`, `STRIPE_SIM_FAULTS`)
//! or at run time (`POST /_sim/faults`), that make chosen endpoints slow,
//! answer with an error, drop the connection before doing the work, or do
//! the work and then drop the connection (a lost answer). A timeout is a
//! latency longer than the client waits. Each rule matches a method and a
//! path prefix (reads included), fires with a probability, and may be
//! limited to a number of firings.
//!
//! A plain `status` answer comes before any work and is never saved under
//! the request's idempotency key, so a retry runs afresh: Stripe's
//! transient failures in front of its idempotency layer. A rule with
//! `saved` models the harder case Stripe documents: a POST that began
//! executing and ended in a 500 has that 500 saved under its
//! `Idempotency-Key`, and every retry with the key gets it replayed
//! (`Idempotent-Replayed: true`) until the key expires. With
//! `"saved": "before_work"` nothing was done; with `"saved": "after_work"`
//! the work was done (objects created, events emitted) and only the answer
//! is the error. The two look the same to the client; only reading the
//! objects back tells them apart.

use crate::error::doc_url;
use axum::http::StatusCode;
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One fault rule, as JSON on the admin endpoint:
/// `{"method": "POST", "path": "/v1/customers", "status": 503, "rate": 1.0, "times": 2}`.
/// A rule without `status`, `drop` or `saved` only slows the request down
/// (`latency_ms`): the work is then done, late, as when Stripe is slow.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rule {
    /// HTTP method to match; any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix to match, e.g. `/v1/customers`.
    pub path: String,
    /// The HTTP status to answer with instead of doing the work; with
    /// `saved`, the status saved (500 when absent).
    #[serde(default)]
    pub status: Option<u16>,
    /// Milliseconds to wait before answering.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Up to this many milliseconds more, at random.
    #[serde(default)]
    pub jitter_ms: Option<u64>,
    /// Drop the connection without answering: `before` the work is done, or
    /// `after` it (the work is done and the answer is lost).
    #[serde(default)]
    pub drop: Option<Drop>,
    /// Answer the error and save it under the request's idempotency key, as
    /// Stripe saves a 500 from a request that began executing.
    #[serde(default)]
    pub saved: Option<SavedMode>,
    /// Stripe error `type`; `api_error` for 5xx, else `invalid_request_error`.
    #[serde(default)]
    pub error_type: Option<String>,
    /// Stripe error `code`, e.g. `rate_limit` or `lock_timeout`.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Probability of firing on a matching request, 0 to 1.
    #[serde(default = "one")]
    pub rate: f64,
    /// How many times it may fire; unlimited when absent.
    #[serde(default)]
    pub times: Option<u32>,
    /// `Retry-After` seconds sent with the answer.
    #[serde(default)]
    pub retry_after: Option<u32>,
    /// `Stripe-Should-Retry` to send with the rule's own answer, instead of
    /// what [`crate::should_retry`] would send.
    #[serde(default)]
    pub should_retry: Option<bool>,
    /// Fields to overwrite in a successful answer (the work is done as asked;
    /// only the answer lies), to test a client's checks of what comes back.
    #[serde(default)]
    pub tamper: Option<serde_json::Map<String, serde_json::Value>>,
}

/// When a dropped connection is dropped.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Drop {
    Before,
    After,
}

/// Whether the work behind a saved error was done.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SavedMode {
    /// The request failed before changing anything.
    BeforeWork,
    /// The request did everything it was asked, then failed.
    AfterWork,
}

impl Rule {
    /// The wait this firing adds.
    pub fn delay(&self) -> Option<std::time::Duration> {
        let base = self.latency_ms.unwrap_or(0);
        let extra = self.jitter_ms.map(|j| rand::rng().random_range(0..=j)).unwrap_or(0);
        (base + extra > 0).then(|| std::time::Duration::from_millis(base + extra))
    }

    /// The status and Stripe error body this rule answers with.
    pub fn error(&self) -> (StatusCode, Value) {
        let status =
            self.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = self.error_type.clone().unwrap_or_else(|| {
            if status.is_server_error() { "api_error".into() } else { "invalid_request_error".into() }
        });
        let message = self.message.clone().unwrap_or_else(|| default_message(self.code.as_deref()).into());
        let mut err = json!({ "type": kind, "message": message });
        if let Some(code) = &self.code {
            err["code"] = json!(code);
            err["doc_url"] = json!(doc_url(code));
        }
        (status, json!({ "error": err }))
    }
}

/// Stripe's own wording for the errors a rule is most often used for.
fn default_message(code: Option<&str>) -> &'static str {
    match code {
        Some("rate_limit") => {
            "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests."
        }
        Some("lock_timeout") => {
            "This object cannot be accessed right now because another API request or Stripe process is currently accessing it. If you see this error intermittently, retry the request. If you see this error frequently and are making multiple concurrent requests to a single object, make your requests serially or at a lower rate."
        }
        _ => "Simulated failure (stripe-sim fault rule).",
    }
}

fn one() -> f64 {
    1.0
}

/// The active rules.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
}

impl Faults {
    pub fn set(&self, rules: Vec<Rule>) {
        *self.rules.lock() = rules;
    }

    pub fn add(&self, rule: Rule) {
        self.rules.lock().push(rule);
    }

    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    pub fn list(&self) -> Vec<Rule> {
        self.rules.lock().clone()
    }

    /// The rule that fires for this request, if any; counts the firing.
    pub fn pick(&self, method: &str, path: &str) -> Option<Rule> {
        let mut rules = self.rules.lock();
        let mut rng = rand::rng();
        for rule in rules.iter_mut() {
            let method_ok = rule.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method));
            if !method_ok || !path.starts_with(&rule.path) || rule.times == Some(0) {
                continue;
            }
            if rng.random::<f64>() < rule.rate {
                if let Some(t) = rule.times.as_mut() {
                    *t -= 1;
                }
                return Some(rule.clone());
            }
        }
        None
    }
}
