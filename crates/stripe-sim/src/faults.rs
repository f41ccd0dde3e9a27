//! Faults on demand: rules, set at start-up (`--faults`, `STRIPE_SIM_FAULTS`)
//! or at run time (`POST /_sim/faults`), that make chosen endpoints slow,
//! answer with an error, drop the connection before doing the work, or do
//! the work and then drop the connection (a lost answer). A timeout is a
//! latency longer than the client waits. Each rule matches a method and a
//! path prefix, fires with a probability, and may be limited to a number of
//! firings.

use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// One fault rule, as JSON on the admin endpoint:
/// `{"method": "POST", "path": "/v1/customers", "status": 503, "rate": 1.0, "times": 2}`.
/// A rule without `status` only slows the request down (`latency_ms`): the
/// work is then done, late, as when Stripe is slow.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rule {
    /// HTTP method to match; any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix to match, e.g. `/v1/customers`.
    pub path: String,
    /// The HTTP status to answer with instead of doing the work.
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
    /// Stripe error `type`; `api_error` for 5xx, else `invalid_request_error`.
    #[serde(default)]
    pub error_type: Option<String>,
    /// Stripe error `code`, e.g. `rate_limit`.
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

impl Rule {
    /// The wait this firing adds.
    pub fn delay(&self) -> Option<std::time::Duration> {
        let base = self.latency_ms.unwrap_or(0);
        let extra = self.jitter_ms.map(|j| rand::rng().random_range(0..=j)).unwrap_or(0);
        (base + extra > 0).then(|| std::time::Duration::from_millis(base + extra))
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
