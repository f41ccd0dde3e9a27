//! The HTTP front of the simulator. Every API request takes the same path:
//! request id -> API key -> fault rules -> parameters -> idempotency -> the
//! resource handler; every answer carries `Request-Id` and `Stripe-Version`,
//! and error answers the `Stripe-Should-Retry` of [`crate::should_retry`].
//! Simulator-only endpoints live under `/_sim/` and need no key.
//!
//! A fault rule with `saved` fires inside the idempotency layer, not in
//! front of it: its error is saved under the request's key like any result
//! of a request that began executing (see [`crate::faults`]).

use crate::{
    Sim,
    error::ApiError,
    faults::{self, Rule, SavedMode},
    form,
    idempotency::{Claim, Saved},
    ids, resources, should_retry,
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The router: admin endpoints, then everything else as the Stripe API.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/_sim/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/_sim/faults", post(set_faults).get(list_faults).delete(clear_faults))
        .route("/_sim/payment_intents/{id}/authenticate", post(complete_3ds))
        .route("/_sim/payment_intents/{id}/expire", post(expire_authorization))
        .route("/_sim/setup_intents/{id}/authenticate", post(complete_setup_3ds))
        .route("/_sim/refunds", post(set_refund_options).get(refund_options))
        .route("/_sim/refunds/{id}/succeed", post(succeed_refund))
        .route("/_sim/refunds/{id}/fail", post(fail_refund))
        .route("/_sim/search", post(set_search_options).get(search_options))
        .route("/_sim/webhooks", post(set_webhook_options))
        .route("/_sim/webhook_endpoints/{id}/roll", post(roll_secret))
        .fallback(api)
        .with_state(sim)
}

async fn set_faults(State(sim): State<Arc<Sim>>, Json(rules): Json<Vec<Rule>>) -> Json<Value> {
    sim.faults.set(rules);
    Json(json!({"rules": sim.faults.list()}))
}

async fn list_faults(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({"rules": sim.faults.list()}))
}

async fn clear_faults(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(serde::Deserialize)]
struct Authentication {
    /// `succeed` or `fail`.
    outcome: String,
}

/// Completes or fails 3-D Secure, as the customer's browser would: for a
/// PaymentIntent, or (`setup`) a SetupIntent.
fn finish_3ds(sim: &Sim, id: &str, a: &Authentication, setup: bool) -> Response {
    let succeed = match a.outcome.as_str() {
        "succeed" => true,
        "fail" => false,
        _ => return ApiError::invalid("outcome", "outcome must be succeed or fail").into_response(),
    };
    let outcome = if setup {
        crate::resources::setup_intents::authenticate(sim, id, succeed)
    } else {
        crate::resources::payment_intents::authenticate(sim, id, succeed)
    };
    sim.flush_events();
    match outcome {
        Ok(intent) => Json(intent).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn complete_3ds(State(sim): State<Arc<Sim>>, Path(id): Path<String>, Json(a): Json<Authentication>) -> Response {
    finish_3ds(&sim, &id, &a, false)
}

async fn complete_setup_3ds(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(a): Json<Authentication>,
) -> Response {
    finish_3ds(&sim, &id, &a, true)
}

/// Lets an authorization expire uncaptured.
async fn expire_authorization(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let outcome = crate::resources::payment_intents::expire(&sim, &id);
    sim.flush_events();
    match outcome {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Makes a pending or succeeded refund fail.
async fn fail_refund(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let outcome = crate::resources::refunds::fail(&sim, &id);
    sim.flush_events();
    match outcome {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Makes a pending refund succeed.
async fn succeed_refund(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let outcome = crate::resources::refunds::succeed(&sim, &id);
    sim.flush_events();
    match outcome {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn set_refund_options(
    State(sim): State<Arc<Sim>>,
    Json(o): Json<crate::refund_settlement::Options>,
) -> Json<Value> {
    *sim.refunds.options.lock() = o.clone();
    Json(json!(o))
}

async fn refund_options(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!(*sim.refunds.options.lock()))
}

async fn set_search_options(
    State(sim): State<Arc<Sim>>,
    Json(o): Json<crate::resources::search::Options>,
) -> Json<Value> {
    *sim.search.lock() = o.clone();
    Json(json!(o))
}

async fn search_options(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!(*sim.search.lock()))
}

async fn set_webhook_options(State(sim): State<Arc<Sim>>, Json(o): Json<crate::webhooks::Options>) -> Json<Value> {
    *sim.webhooks.options.lock() = o.clone();
    Json(json!(o))
}

#[derive(serde::Deserialize)]
struct Roll {
    /// Seconds the old secret keeps signing; 24 hours by default.
    #[serde(default)]
    keep_old_s: Option<u64>,
}

/// Rolls an endpoint's secret: both sign until the old one expires.
async fn roll_secret(State(sim): State<Arc<Sim>>, Path(id): Path<String>, Json(r): Json<Roll>) -> Response {
    match crate::webhooks::roll(&sim, &id, r.keep_old_s.unwrap_or(86_400)) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

tokio::task_local! {
    /// The request being served: its id and idempotency key, for the
    /// `request` of the events it causes.
    static REQUEST: (String, Option<String>);
}

/// The request id and idempotency key of the request being served, if any.
pub fn current_request() -> (Option<String>, Option<String>) {
    REQUEST.try_with(|(id, key)| (Some(id.clone()), key.clone())).unwrap_or((None, None))
}

/// Replaces the ids named in `expand[]` by their objects.
fn expand(sim: &Sim, body: &mut Value, params: &Value) {
    let Some(fields) = params.get("expand").and_then(Value::as_array) else { return };
    let data = sim.data.lock();
    for field in fields.iter().filter_map(Value::as_str) {
        let Some(id) = body.get(field).and_then(Value::as_str).map(str::to_string) else { continue };
        let found = match id.split('_').next() {
            Some("ch") => data.charges.get(&id),
            Some("pi") => data.payment_intents.get(&id),
            Some("cus") => data.customers.get(&id),
            Some("pm") => data.payment_methods.get(&id),
            Some("re") => data.refunds.get(&id),
            Some("prod") => data.products.get(&id),
            _ => None,
        };
        if let Some(object) = found {
            body[field] = object.clone();
        }
    }
}

/// Checks the `Authorization: Bearer` key; returns it as the account scope.
fn authenticate(sim: &Sim, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        ));
    };
    // Bearer, or Basic with the key as the user name (`curl -u sk_test_...:`).
    let basic = value.strip_prefix("Basic ").and_then(|b| {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
        String::from_utf8(decoded).ok().map(|s| s.split(':').next().unwrap_or("").to_string())
    });
    let key = basic.as_deref().unwrap_or_else(|| value.strip_prefix("Bearer ").unwrap_or("")).trim();
    let accepted = match &sim.config.api_keys {
        Some(keys) => keys.iter().any(|k| k == key),
        None => (key.starts_with("sk_test_") || key.starts_with("rk_test_")) && key.len() > 12,
    };
    if accepted {
        Ok(key.to_string())
    } else {
        Err(ApiError::unauthorized(format!("Invalid API Key provided: {}", mask_key(key))))
    }
}

/// `sk_live_****************wxyz`: the key's type and last four characters,
/// and nothing at all of a key without that shape.
fn mask_key(key: &str) -> String {
    let typed = ["sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"]
        .iter()
        .find(|p| key.is_ascii() && key.starts_with(*p) && key.len() > p.len() + 8);
    match typed {
        Some(prefix) => format!("{prefix}{}{}", "*".repeat(key.len() - prefix.len() - 4), &key[key.len() - 4..]),
        None => "*".repeat(key.chars().count().min(32)),
    }
}

fn fingerprint(method: &Method, path: &str, params: &Value) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str());
    h.update(path);
    h.update(params.to_string());
    format!("{:x}", h.finalize())
}

async fn api(
    State(sim): State<Arc<Sim>>,
    http_version: axum::http::Version,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = ids::new_id("req");
    let version = headers.get("stripe-version").and_then(|v| v.to_str().ok()).unwrap_or(crate::API_VERSION).to_string();
    let idem_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    // The work runs in its own task, so it finishes (and its idempotent
    // result is saved) even when the client goes away, as on Stripe.
    let work = {
        let (sim, method, uri, headers, body, key, id) = (
            sim.clone(),
            method.clone(),
            uri.clone(),
            headers.clone(),
            body.clone(),
            idem_key.clone(),
            request_id.clone(),
        );
        tokio::spawn(async move { execute(&sim, &method, &uri, &headers, &body, key.as_deref(), &id).await })
    };
    let mut response = match work.await {
        Ok(r) => r,
        Err(_) => ApiError::server_error(StatusCode::INTERNAL_SERVER_ERROR, "The simulator failed.").into_response(),
    };
    let h = response.headers_mut();
    if !h.contains_key("request-id") {
        h.insert("request-id", HeaderValue::from_str(&request_id).expect("ids are ASCII"));
    }
    if let Ok(v) = HeaderValue::from_str(&version) {
        h.insert("stripe-version", v);
    }
    if let Some(k) = idem_key.as_deref().and_then(|k| HeaderValue::from_str(k).ok()) {
        h.insert("idempotency-key", k);
    }
    sim.record(crate::Received {
        http_version: format!("{http_version:?}"),
        method: method.to_string(),
        path: uri.to_string(),
        idempotency_key: idem_key,
        stripe_version: headers.get("stripe-version").and_then(|v| v.to_str().ok()).map(str::to_string),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: response.status().as_u16(),
    });
    response
}

async fn execute(
    sim: &Sim,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    idem_key: Option<&str>,
    request_id: &str,
) -> Response {
    let scope = match authenticate(sim, headers) {
        Ok(scope) => scope,
        Err(e) => return e.into_response(),
    };
    let path = uri.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(handler) = resources::route(method, &segments) else {
        return ApiError::unrecognized_url(method.as_str(), path).into_response();
    };
    if let Some(k) = idem_key
        && k.len() > 255
    {
        return ApiError::invalid("Idempotency-Key", "Idempotency keys can be at most 255 characters long.")
            .into_response();
    }
    let key = idem_key.filter(|_| *method == Method::POST);
    let fault = sim.faults.pick(method.as_str(), path);
    if let Some(rule) = fault.as_ref().filter(|r| answers_before_work(r, key.is_some())) {
        if let Some(wait) = rule.delay() {
            tokio::time::sleep(wait).await;
        }
        return if rule.drop == Some(faults::Drop::Before) {
            dropped()
        } else {
            fault_response(rule, Answered::InFront)
        };
    }
    let raw = if *method == Method::POST { body.as_ref() } else { uri.query().unwrap_or("").as_bytes() };
    let params = match form::decode(raw) {
        Ok(p) => p,
        Err(key) => {
            return ApiError::invalid(&key, format!("Invalid request parameter: {key}")).into_response();
        }
    };
    if let Some(key) = key {
        match sim.keys.claim(&scope, key, &fingerprint(method, path, &params)) {
            Claim::Execute => {}
            Claim::Replay(_) if fault.as_ref().is_some_and(|r| r.drop == Some(faults::Drop::After)) => {
                return dropped();
            }
            Claim::Replay(saved) => return replay(saved),
            Claim::Mismatch => return ApiError::idempotency_mismatch(key).into_response(),
            Claim::InUse => return ApiError::idempotency_in_use().into_response(),
        }
    }
    // Slow work: the key (if any) is held while it runs.
    if let Some(wait) = fault.as_ref().and_then(Rule::delay) {
        tokio::time::sleep(wait).await;
    }
    // before_work: nothing is done; the rule's error is saved as the result.
    let failed_before_work = fault.as_ref().filter(|r| r.saved == Some(SavedMode::BeforeWork));
    if let (Some(rule), Some(key)) = (failed_before_work, key) {
        let (status, body) = rule.error();
        sim.keys.finish(&scope, key, Saved { status, body, request_id: request_id.to_string() });
        return fault_response(rule, Answered::Saved);
    }
    let context = (request_id.to_string(), idem_key.map(str::to_string));
    let outcome = REQUEST.sync_scope(context, || handler(sim, &params, &segments));
    sim.flush_events();
    // after_work: the work stands; the answer (and what is saved) is the
    // rule's error.
    let failed_after_work = fault.as_ref().filter(|r| r.saved == Some(SavedMode::AfterWork));
    let (status, body, saveable) = match (failed_after_work, outcome) {
        (Some(rule), _) => {
            let (status, body) = rule.error();
            (status, body, true)
        }
        (None, Ok(mut v)) => {
            expand(sim, &mut v, &params);
            if let Some(fields) = fault.as_ref().and_then(|r| r.tamper.as_ref()) {
                for (k, f) in fields {
                    v[k] = f.clone();
                }
            }
            (StatusCode::OK, v, true)
        }
        (None, Err(e)) => (e.status, e.body(), e.started_executing),
    };
    if let Some(key) = key {
        if saveable {
            let record = Saved { status, body: body.clone(), request_id: request_id.to_string() };
            sim.keys.finish(&scope, key, record);
        } else {
            sim.keys.release(&scope, key);
        }
    }
    if fault.as_ref().is_some_and(|r| r.drop == Some(faults::Drop::After)) {
        return dropped();
    }
    if let Some(rule) = failed_after_work {
        let answered = match key {
            Some(_) => Answered::Saved,
            None if *method == Method::POST => Answered::DoneUnsaved,
            None => Answered::InFront,
        };
        return fault_response(rule, answered);
    }
    let mut r = (status, Json(&body)).into_response();
    should_retry::mark(&mut r, should_retry::advice(status, error_code(&body), key.is_some() && saveable));
    r
}

/// Whether a fault rule answers in front of the work and the idempotency
/// layer: a drop before the work, a plain error, or a `before_work` saved
/// error that has no key to be saved under (an `after_work` one without a
/// key does the work and answers the error, saving nothing).
fn answers_before_work(rule: &Rule, keyed: bool) -> bool {
    match rule.saved {
        _ if rule.drop == Some(faults::Drop::Before) => true,
        None => rule.status.is_some(),
        Some(SavedMode::BeforeWork) => !keyed,
        Some(SavedMode::AfterWork) => false,
    }
}

fn error_code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// A response whose body fails at once: the server closes the connection
/// without a complete answer, as a network cut would.
fn dropped() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::other("dropped by a fault rule"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-length", "1024")
        .body(axum::body::Body::from_stream(failing))
        .expect("a valid response")
}

fn replay(saved: Saved) -> Response {
    let advice = should_retry::advice(saved.status, error_code(&saved.body), true);
    let mut r = (saved.status, Json(saved.body)).into_response();
    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&saved.request_id) {
        r.headers_mut().insert("request-id", v);
    }
    should_retry::mark(&mut r, advice);
    r
}

/// Where a fault rule's error answer stands, for its `Stripe-Should-Retry`.
enum Answered {
    /// In front of the work and the idempotency layer: a retry runs afresh.
    InFront,
    /// Saved under the request's idempotency key: a retry replays it.
    Saved,
    /// After a POST's work, with no key: a retry would do the work again,
    /// so no advice either way.
    DoneUnsaved,
}

/// A fault rule's error answer.
fn fault_response(rule: &Rule, answered: Answered) -> Response {
    let (status, body) = rule.error();
    let advice = match answered {
        Answered::InFront => should_retry::advice(status, error_code(&body), false),
        Answered::Saved => should_retry::advice(status, error_code(&body), true),
        Answered::DoneUnsaved => None,
    };
    let mut r = (status, Json(body)).into_response();
    should_retry::mark(&mut r, rule.should_retry.or(advice));
    if let Some(secs) = rule.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    r
}
