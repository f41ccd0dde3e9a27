//! A thin typed client for the parts of the Stripe API we call.
//!
//! - Form encoding with bracket nesting ([`Form`]), `Stripe-Version` pinned on
//!   every request, an `Idempotency-Key` on every POST.
//! - Timeouts, and retries with exponential backoff and full jitter on network
//!   errors, 409, 429 and 5xx, always with the same key (honouring
//!   `Retry-After` and `Stripe-Should-Retry`).
//! - Errors parsed into [`StripeError`]; objects parsed tolerantly ([`types`]).

pub mod error;
pub mod form;
pub mod types;
pub mod webhook;

pub use error::{ApiError, StripeError};
pub use form::Form;

use crate::secret::Secret;
use rand::Rng;
use reqwest::Method;
use serde::de::DeserializeOwned;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tracing::Instrument;

/// Stripe's API, unless configured otherwise.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The API version we are written against.
pub const DEFAULT_API_VERSION: &str = "2026-06-24.dahlia";

/// How the client talks to Stripe.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_base: String,
    pub api_key: Secret,
    pub api_version: String,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub max_retries: u32,
    /// The first backoff; doubles each retry, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Whether calls travel over HTTP/2.
    pub http2: Http2,
    /// Connections calls are spread over: with HTTP/2, each carries many
    /// calls at once (as many as Stripe allows per connection); with
    /// HTTP/1.1, each is a pool of connections, one per call in flight.
    pub connections: usize,
    /// The largest answer read from Stripe; a larger one is an error
    /// rather than memory without bound.
    pub max_response_bytes: usize,
    /// Calls a second this process sends Stripe at most (`STRIPE_MAX_RPS`):
    /// a burst waits its turn instead of meeting Stripe's 429. `None`: no pacing.
    pub max_rps: Option<u32>,
}

/// Whether calls to Stripe travel over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2 {
    /// Where the other end offers it: by TLS negotiation (ALPN) on https,
    /// as Stripe does; HTTP/1.1 on plain http.
    Auto,
    /// Always, plain http included (HTTP/2 with prior knowledge: the
    /// simulator, or a local proxy that speaks it).
    Always,
    /// Never: HTTP/1.1 only.
    Never,
}

impl Http2 {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "auto" => Some(Self::Auto),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

impl Settings {
    pub fn new(api_base: impl Into<String>, api_key: Secret) -> Self {
        Self {
            api_base: api_base.into(),
            api_key,
            api_version: DEFAULT_API_VERSION.into(),
            timeout: Duration::from_secs(30),
            max_retries: 2,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            http2: Http2::Auto,
            connections: 4,
            max_response_bytes: 4 << 20,
            max_rps: None,
        }
    }
}

impl Settings {
    /// The longest one call may take, every retry and backoff included: the
    /// lease of anything that guards a Stripe call must be longer.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.max_retries + 1;
        let pacing = if self.max_rps.is_some() { MAX_PACE_WAIT } else { Duration::ZERO };
        (self.timeout + pacing).saturating_mul(attempts) + self.max_backoff.saturating_mul(self.max_retries)
    }
}

/// The longest a call waits for its turn under `max_rps`; past it the call
/// is not sent at all (an error that says so, retried like any call that
/// never left), so that waiting never outlasts the leases that guard it.
const MAX_PACE_WAIT: Duration = Duration::from_secs(1);

/// HTTP/1.1 connections kept idle for reuse, over all pools: about the calls
/// in flight at full load, so a burst does not reconnect for each call.
const IDLE_CONNECTIONS: usize = 1024;

/// A successful answer: the object and the `Request-Id` Stripe gave it.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub object: T,
    pub request_id: Option<String>,
}

/// The Stripe client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    /// One per connection (HTTP/2) or pool (HTTP/1.1), taken in turn.
    http: Arc<[reqwest::Client]>,
    next: Arc<AtomicUsize>,
    settings: Settings,
    /// The next instant a call may leave, under `max_rps`.
    slot: Arc<parking_lot::Mutex<std::time::Instant>>,
}

impl Client {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let http = (0..settings.connections.max(1))
            .map(|_| {
                let builder = reqwest::Client::builder()
                    .timeout(settings.timeout)
                    .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
                    .user_agent(concat!("amazing-payments/", env!("CARGO_PKG_VERSION")))
                    // Idle connections are kept for reuse, a bounded number
                    // and not for ever (Stripe closes them after a while).
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(IDLE_CONNECTIONS / settings.connections.max(1))
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_timeout(Duration::from_secs(10));
                match settings.http2 {
                    Http2::Auto => builder,
                    Http2::Always => builder.http2_prior_knowledge(),
                    Http2::Never => builder.http1_only(),
                }
                .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            http: http.into(),
            next: Arc::new(AtomicUsize::new(0)),
            settings,
            slot: Arc::new(parking_lot::Mutex::new(std::time::Instant::now())),
        })
    }

    fn http(&self) -> &reqwest::Client {
        &self.http[self.next.fetch_add(1, Ordering::Relaxed) % self.http.len()]
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `GET /v1/balance`: also how we check the key at start-up.
    pub async fn retrieve_balance(&self) -> Result<Reply<types::Balance>, StripeError> {
        self.get("/v1/balance", &Form::new()).await
    }

    /// `POST /v1/customers`.
    pub async fn create_customer(
        &self,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<Reply<types::Customer>, StripeError> {
        self.post("/v1/customers", form, idempotency_key).await
    }

    /// `POST /v1/customers/{id}`.
    pub async fn update_customer(
        &self,
        id: &str,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<Reply<types::Customer>, StripeError> {
        self.post(&format!("/v1/customers/{id}"), form, idempotency_key).await
    }

    /// `GET /v1/customers/{id}`.
    pub async fn retrieve_customer(&self, id: &str) -> Result<Reply<types::Customer>, StripeError> {
        self.get(&format!("/v1/customers/{id}"), &Form::new()).await
    }

    /// `POST /v1/payment_intents` (create, and confirm when the form says so).
    pub async fn create_payment_intent(
        &self,
        form: &Form,
        key: &str,
    ) -> Result<Reply<types::PaymentIntent>, StripeError> {
        self.post("/v1/payment_intents", &form.clone().list("expand", ["latest_charge"]), key).await
    }

    /// `GET /v1/payment_intents/{id}` with the latest charge expanded.
    pub async fn retrieve_payment_intent(&self, id: &str) -> Result<Reply<types::PaymentIntent>, StripeError> {
        self.get(&format!("/v1/payment_intents/{id}"), &Form::new().list("expand", ["latest_charge"])).await
    }

    /// `POST /v1/payment_intents/{id}/capture`.
    pub async fn capture_payment_intent(
        &self,
        id: &str,
        amount: Option<i64>,
        key: &str,
    ) -> Result<Reply<types::PaymentIntent>, StripeError> {
        let form = Form::new().set_opt("amount_to_capture", amount).list("expand", ["latest_charge"]);
        self.post(&format!("/v1/payment_intents/{id}/capture"), &form, key).await
    }

    /// `POST /v1/payment_intents/{id}/cancel`.
    pub async fn cancel_payment_intent(
        &self,
        id: &str,
        reason: Option<&str>,
        key: &str,
    ) -> Result<Reply<types::PaymentIntent>, StripeError> {
        let form = Form::new().set_opt("cancellation_reason", reason).list("expand", ["latest_charge"]);
        self.post(&format!("/v1/payment_intents/{id}/cancel"), &form, key).await
    }

    /// `POST /v1/setup_intents`.
    pub async fn create_setup_intent(&self, form: &Form, key: &str) -> Result<Reply<types::SetupIntent>, StripeError> {
        self.post("/v1/setup_intents", form, key).await
    }

    /// `GET /v1/customers/{id}/payment_methods?type=card`: a customer's
    /// saved cards, newest first (the first 100).
    pub async fn list_customer_payment_methods(
        &self,
        customer: &str,
    ) -> Result<Reply<types::List<types::PaymentMethod>>, StripeError> {
        let query = Form::new().set("type", "card").set("limit", 100);
        self.get(&format!("/v1/customers/{customer}/payment_methods"), &query).await
    }

    /// `GET /v1/payment_methods/{id}`.
    pub async fn retrieve_payment_method(&self, id: &str) -> Result<Reply<types::PaymentMethod>, StripeError> {
        self.get(&format!("/v1/payment_methods/{id}"), &Form::new()).await
    }

    /// `POST /v1/payment_methods/{id}/detach`.
    pub async fn detach_payment_method(&self, id: &str, key: &str) -> Result<Reply<types::PaymentMethod>, StripeError> {
        self.post(&format!("/v1/payment_methods/{id}/detach"), &Form::new(), key).await
    }

    /// `GET /v1/disputes/{id}`.
    pub async fn retrieve_dispute(&self, id: &str) -> Result<Reply<types::Dispute>, StripeError> {
        self.get(&format!("/v1/disputes/{id}"), &Form::new()).await
    }

    /// `GET /v1/disputes?payment_intent=`: a PaymentIntent's disputes (the
    /// first 100).
    pub async fn list_disputes(&self, intent: &str) -> Result<Reply<types::List<types::Dispute>>, StripeError> {
        self.get("/v1/disputes", &Form::new().set("payment_intent", intent).set("limit", 100)).await
    }

    /// `POST /v1/disputes/{id}`: evidence, submitted unless `submit=false`.
    pub async fn update_dispute(&self, id: &str, form: &Form, key: &str) -> Result<Reply<types::Dispute>, StripeError> {
        self.post(&format!("/v1/disputes/{id}"), form, key).await
    }

    /// `POST /v1/disputes/{id}/close`: accepts the dispute.
    pub async fn close_dispute(&self, id: &str, key: &str) -> Result<Reply<types::Dispute>, StripeError> {
        self.post(&format!("/v1/disputes/{id}/close"), &Form::new(), key).await
    }

    /// `POST /v1/refunds`.
    pub async fn create_refund(&self, form: &Form, key: &str) -> Result<Reply<types::Refund>, StripeError> {
        self.post("/v1/refunds", form, key).await
    }

    /// `GET /v1/refunds/{id}`.
    pub async fn retrieve_refund(&self, id: &str) -> Result<Reply<types::Refund>, StripeError> {
        self.get(&format!("/v1/refunds/{id}"), &Form::new()).await
    }

    /// `GET /v1/payment_intents?customer=&created[gte]=`: a customer's
    /// PaymentIntents made since `since` (unix seconds), newest first, at
    /// most 100 (`has_more` says if there are more). Lists, unlike search,
    /// show an object as soon as it exists.
    pub async fn list_payment_intents(
        &self,
        customer: &str,
        (since, until): (i64, i64),
        after: Option<&str>,
    ) -> Result<Reply<types::List<types::PaymentIntent>>, StripeError> {
        let query = Form::new()
            .set("customer", customer)
            .set("created[gte]", since)
            .set("created[lte]", until)
            .set("limit", 100)
            .set_opt("starting_after", after);
        self.get("/v1/payment_intents", &query).await
    }

    /// `GET /v1/refunds?payment_intent=&created[gte]=`: a PaymentIntent's refunds.
    pub async fn list_refunds(
        &self,
        payment_intent: &str,
        (since, until): (i64, i64),
        after: Option<&str>,
    ) -> Result<Reply<types::List<types::Refund>>, StripeError> {
        let query = Form::new()
            .set("payment_intent", payment_intent)
            .set("created[gte]", since)
            .set("created[lte]", until)
            .set("limit", 100)
            .set_opt("starting_after", after);
        self.get("/v1/refunds", &query).await
    }

    /// `GET /v1/customers?email=&created[gte]=`: the customers with this
    /// e-mail address.
    pub async fn list_customers(
        &self,
        email: &str,
        (since, until): (i64, i64),
        after: Option<&str>,
    ) -> Result<Reply<types::List<types::Customer>>, StripeError> {
        let query = Form::new()
            .set("email", email)
            .set("created[gte]", since)
            .set("created[lte]", until)
            .set("limit", 100)
            .set_opt("starting_after", after);
        self.get("/v1/customers", &query).await
    }

    /// `GET /v1/products?created[gte]=`: products made since `since`.
    pub async fn list_products(
        &self,
        (since, until): (i64, i64),
        after: Option<&str>,
    ) -> Result<Reply<types::List<types::Product>>, StripeError> {
        let query = Form::new()
            .set("created[gte]", since)
            .set("created[lte]", until)
            .set("limit", 100)
            .set_opt("starting_after", after);
        self.get("/v1/products", &query).await
    }

    /// `GET /v1/prices?product=&created[gte]=`: a product's prices.
    pub async fn list_prices(
        &self,
        product: &str,
        (since, until): (i64, i64),
        after: Option<&str>,
    ) -> Result<Reply<types::List<types::Price>>, StripeError> {
        let query = Form::new()
            .set("product", product)
            .set("created[gte]", since)
            .set("created[lte]", until)
            .set("limit", 100)
            .set_opt("starting_after", after);
        self.get("/v1/prices", &query).await
    }

    /// `POST /v1/products`.
    pub async fn create_product(&self, form: &Form, key: &str) -> Result<Reply<types::Product>, StripeError> {
        self.post("/v1/products", form, key).await
    }

    /// `POST /v1/products/{id}`.
    pub async fn update_product(&self, id: &str, form: &Form, key: &str) -> Result<Reply<types::Product>, StripeError> {
        self.post(&format!("/v1/products/{id}"), form, key).await
    }

    /// `POST /v1/prices`.
    pub async fn create_price(&self, form: &Form, key: &str) -> Result<Reply<types::Price>, StripeError> {
        self.post("/v1/prices", form, key).await
    }

    /// `POST /v1/prices/{id}`.
    pub async fn update_price(&self, id: &str, form: &Form, key: &str) -> Result<Reply<types::Price>, StripeError> {
        self.post(&format!("/v1/prices/{id}"), form, key).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &Form) -> Result<Reply<T>, StripeError> {
        self.request(Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<Reply<T>, StripeError> {
        self.request(Method::POST, path, form, Some(idempotency_key)).await
    }

    /// One call, its retries and their waits included: all of it counts as
    /// the request's Stripe time (`Server-Timing`).
    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: &Form,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<T>, StripeError> {
        let _timed = crate::timing::StripeCall::start();
        let mut attempt = 0;
        // Whether any attempt so far may have reached Stripe. A later attempt
        // that could not connect proves nothing about the earlier ones.
        let mut reached = false;
        loop {
            // A call the pacer holds back never left: counted as such, not as
            // an attempt that found Stripe unreachable.
            let (result, hints) = match self.pace().await {
                Ok(()) => {
                    let started = std::time::Instant::now();
                    let span = attempt_span(&method, path, attempt);
                    let (result, hints) =
                        self.attempt(&method, path, form, idempotency_key).instrument(span.clone()).await;
                    let outcome = outcome(&result);
                    crate::meter::stripe_attempt(method.as_str(), path, outcome, started.elapsed());
                    span.record("stripe.outcome", outcome);
                    match &result {
                        Ok(reply) => {
                            span.record("stripe.request_id", reply.request_id.as_deref());
                        }
                        Err(e) => {
                            span.record("otel.status_code", "ERROR");
                            if let StripeError::Api(a) = e {
                                span.record("http.response.status_code", a.status);
                                span.record("stripe.request_id", a.request_id.as_deref());
                            }
                        }
                    }
                    (result, hints)
                }
                Err(e) => (Err(e), RetryHints::default()),
            };
            match result {
                Err(e)
                    if e.is_retryable()
                        && !e.is_replayed_failure()
                        && hints.should_retry != Some(false)
                        && attempt < self.settings.max_retries =>
                {
                    reached |= e.may_have_reached_stripe();
                    attempt += 1;
                    crate::meter::stripe_retry(method.as_str(), path);
                    let wait = self.backoff(attempt, hints.retry_after);
                    tracing::warn!(path, attempt, wait_ms = wait.as_millis() as u64, error = %e, "retrying stripe request");
                    tokio::time::sleep(wait).await;
                }
                Err(StripeError::Network { message, sent: false }) if reached => {
                    return Err(StripeError::Network {
                        message: format!("{message} (an earlier attempt may have reached Stripe)"),
                        sent: true,
                    });
                }
                other => return other,
            }
        }
    }

    /// Waits for this call's turn under `max_rps`: calls leave evenly spaced
    /// (after a quiet spell, about a tenth of a second's worth goes at once),
    /// so that a burst of requests waits a little instead of failing on
    /// Stripe's limit; never longer than [`MAX_PACE_WAIT`].
    async fn pace(&self) -> Result<(), StripeError> {
        let Some(rps) = self.settings.max_rps.filter(|r| *r > 0) else { return Ok(()) };
        let interval = Duration::from_secs(1) / rps.min(1_000_000);
        let burst = interval * (rps / 10).max(1);
        let wait = {
            let now = std::time::Instant::now();
            let mut slot = self.slot.lock();
            // A slot long past gives at most `burst` of credit.
            let at = (*slot).max(now.checked_sub(burst).unwrap_or(now));
            let wait = at.saturating_duration_since(now);
            if wait > MAX_PACE_WAIT {
                crate::meter::stripe_paced("not_sent");
                return Err(StripeError::Network {
                    message: format!(
                        "not sent: more calls wait than STRIPE_MAX_RPS ({rps}) lets through within a second"
                    ),
                    sent: false,
                });
            }
            *slot = at + interval;
            wait
        };
        if !wait.is_zero() {
            crate::meter::stripe_paced("waited");
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Jitter: a random wait between half and all of base * 2^(attempt-1),
    /// capped at `max_backoff`; at least what `Retry-After` asked for, within
    /// the same cap.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.settings.base_backoff.saturating_mul(1 << (attempt - 1).min(16)).min(self.settings.max_backoff);
        let jittered = cap.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(retry_after.unwrap_or_default().min(self.settings.max_backoff))
    }

    /// One attempt, and what Stripe said about retrying it.
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        form: &Form,
        idempotency_key: Option<&str>,
    ) -> (Result<Reply<T>, StripeError>, RetryHints) {
        let url = format!("{}{}", self.settings.api_base.trim_end_matches('/'), path);
        let mut req = self
            .http()
            .request(method.clone(), &url)
            .bearer_auth(self.settings.api_key.expose())
            .header("Stripe-Version", &self.settings.api_version);
        if *method == Method::GET || *method == Method::DELETE {
            if !form.is_empty() {
                req = req.query(&form_urlencoded::parse(form.encode().as_bytes()).collect::<Vec<_>>());
            }
        } else {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form.encode());
        }
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // A connect failure means the request never left; anything
                // later (timeout, reset) may have reached Stripe.
                let sent = !e.is_connect();
                return (Err(StripeError::Network { message: without_url(&e), sent }), RetryHints::default());
            }
        };
        let status = resp.status();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let request_id = header("request-id");
        let replayed = header("idempotent-replayed").is_some_and(|v| v == "true");
        let hints = RetryHints {
            should_retry: header("stripe-should-retry").map(|v| v == "true"),
            retry_after: header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs),
        };
        let bytes = match read_body(resp, self.settings.max_response_bytes).await {
            Ok(b) => b,
            Err(Unread::Wire(e)) => {
                return (Err(StripeError::Network { message: without_url(&e), sent: true }), hints);
            }
            Err(Unread::TooLarge) => {
                let message = format!("the answer is larger than {} bytes", self.settings.max_response_bytes);
                return (Err(StripeError::Decode { message, request_id }), hints);
            }
        };
        if status.is_success() {
            let parsed = serde_json::from_slice::<T>(&bytes)
                .map(|object| Reply { object, request_id: request_id.clone() })
                // serde's message may quote a value of the answer: keep only
                // what kind of error it was and where.
                .map_err(|e| StripeError::Decode {
                    message: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
                    request_id,
                });
            return (parsed, hints);
        }
        let mut error = match serde_json::from_slice::<error::ErrorBody>(&bytes) {
            Ok(body) => body.error,
            Err(_) => ApiError {
                kind: if status.is_server_error() { "api_error".into() } else { "invalid_request_error".into() },
                message: Some(format!("HTTP {}", status.as_u16())),
                ..ApiError::default()
            },
        };
        error.status = status.as_u16();
        error.request_id = request_id;
        error.replayed = replayed;
        error.should_retry = hints.should_retry;
        (Err(StripeError::Api(error)), hints)
    }
}

/// Why an answer's body could not be read.
enum Unread {
    Wire(reqwest::Error),
    TooLarge,
}

/// An answer's body, read up to `limit` bytes.
async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, Unread> {
    let expected = resp.content_length().unwrap_or(0) as usize;
    if expected > limit {
        return Err(Unread::TooLarge);
    }
    let mut body = Vec::with_capacity(expected);
    while let Some(chunk) = resp.chunk().await.map_err(Unread::Wire)? {
        if body.len() + chunk.len() > limit {
            return Err(Unread::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What Stripe's headers said about retrying.
#[derive(Debug, Default, Clone, Copy)]
struct RetryHints {
    /// `Stripe-Should-Retry`.
    should_retry: Option<bool>,
    /// `Retry-After`, in seconds.
    retry_after: Option<Duration>,
}

/// What went wrong on the wire, without the URL, with the causes.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading the answer"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The trace span of one attempt at a Stripe call: named after its endpoint
/// (ids left out), never carrying a key, a form or an answer.
fn attempt_span(method: &Method, path: &str, attempt: u32) -> tracing::Span {
    // Only within a request: background work would make a trace of each.
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    let endpoint = crate::meter::stripe_endpoint(method.as_str(), path);
    tracing::info_span!(
        "stripe",
        otel.name = %format!("stripe {endpoint}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method.as_str(),
        url.template = %endpoint,
        stripe.attempt = attempt,
        stripe.outcome = tracing::field::Empty,
        stripe.request_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    )
}

/// One attempt's outcome, for the metrics: a bounded word.
fn outcome<T>(result: &Result<T, StripeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StripeError::Api(a)) if a.status == 429 => "rate_limited",
        Err(StripeError::Api(a)) if a.status == 401 || a.status == 403 => "unauthorized",
        Err(StripeError::Api(a)) if a.status == 402 => "declined",
        Err(StripeError::Api(a)) if a.status >= 500 => "server_error",
        Err(StripeError::Api(_)) => "refused",
        Err(StripeError::Network { sent: false, .. }) => "unreachable",
        Err(StripeError::Network { sent: true, .. }) => "no_answer",
        Err(StripeError::Decode { .. }) => "unreadable",
    }
}
