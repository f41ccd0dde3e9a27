//! Webhooks as Stripe sends them: webhook endpoints (`POST
//! /v1/webhook_endpoints`, whose `whsec_` secret is shown once), an Event for
//! every object change, signed with `Stripe-Signature: t=<unix>,v1=<hex>`
//! (HMAC-SHA256 of `"<t>.<body>"`, one `v1` per live secret while a secret is
//! rolled), delivered at least once and retried on anything but a 2xx, on a
//! compressed schedule (seconds, where Stripe takes up to three days).
//!
//! For tests, deliveries can be duplicated and delayed at random (so they
//! arrive out of order): `POST /_sim/webhooks {"duplicate_rate": 0.5,
//! "max_delay_ms": 300}`; and a secret rolled with
//! `POST /_sim/webhook_endpoints/{id}/roll`.

use crate::{Sim, error::ApiError, fixtures, ids, resources::params, store::Page};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Waits before each delivery attempt: Stripe's schedule, compressed.
pub const RETRY_SCHEDULE_MS: &[u64] = &[0, 200, 500, 1_000, 2_000, 4_000, 8_000, 16_000];

/// Delivery options, for tests.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Options {
    /// Probability of sending an event twice.
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Up to this many milliseconds of random delay before each delivery.
    #[serde(default)]
    pub max_delay_ms: u64,
}

/// An endpoint's signing secrets: the current one, and old ones until they
/// expire.
#[derive(Clone, Debug, Default)]
struct Secrets {
    current: String,
    old: Vec<(String, Instant)>,
}

impl Secrets {
    fn live(&self) -> Vec<String> {
        let now = Instant::now();
        std::iter::once(self.current.clone())
            .chain(self.old.iter().filter(|(_, until)| *until > now).map(|(s, _)| s.clone()))
            .collect()
    }
}

/// The endpoints, their secrets, and the delivery queue.
pub struct Webhooks {
    secrets: Mutex<HashMap<String, Secrets>>,
    pub options: Mutex<Options>,
    queue: mpsc::UnboundedSender<Value>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
}

impl Default for Webhooks {
    fn default() -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        Self { secrets: Mutex::default(), options: Mutex::default(), queue, receiver: Mutex::new(Some(receiver)) }
    }
}

/// `Stripe-Signature` for `body` at time `t`, with one `v1` per secret.
pub fn signature(t: i64, body: &str, secrets: &[String]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(format!("{t}.{body}").as_bytes());
        header.push_str(&format!(",v1={}", hex::encode(mac.finalize().into_bytes())));
    }
    header
}

fn new_secret() -> String {
    let tail: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(32).map(char::from).collect();
    format!("whsec_{tail}")
}

/// Whether an endpoint listening for `enabled` wants `event_type`.
fn wants(enabled: &Value, event_type: &str) -> bool {
    enabled.as_array().is_some_and(|list| list.iter().any(|e| e == "*" || e == event_type))
}

impl crate::Data {
    /// Records an Event for a change of `object`, to be delivered when the
    /// request finishes. `previous` holds the changed fields' old values.
    pub fn emit(&mut self, event_type: &str, object: &Value, previous: Option<Value>) {
        let data = self;
        let mut event = fixtures::template("event");
        let (request_id, idempotency_key) = crate::server::current_request();
        let endpoints = data
            .webhook_endpoints
            .values()
            .filter(|e| e["status"] == "enabled" && wants(&e["enabled_events"], event_type))
            .count();
        for (k, v) in [
            ("id", json!(ids::new_id("evt"))),
            ("api_version", json!(crate::API_VERSION)),
            ("created", json!(ids::now())),
            ("type", json!(event_type)),
            ("livemode", json!(false)),
            ("pending_webhooks", json!(endpoints)),
            ("request", json!({"id": request_id, "idempotency_key": idempotency_key})),
        ] {
            event[k] = v;
        }
        event["data"] = match previous {
            Some(p) => json!({"object": object, "previous_attributes": p}),
            None => json!({"object": object}),
        };
        let seq = data.next_seq();
        data.events.insert(seq, event.clone());
        data.outbox.push(event);
    }
}

impl Sim {
    /// Queues the deliveries of the events recorded so far.
    pub fn flush_events(&self) {
        let events = std::mem::take(&mut self.data.lock().outbox);
        for e in events {
            let _ = self.webhooks.queue.send(e);
        }
    }
}

/// Delivers queued events until the simulator stops.
pub async fn deliver(sim: Arc<Sim>) {
    let Some(mut receiver) = sim.webhooks.receiver.lock().take() else { return };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
    while let Some(event) = receiver.recv().await {
        let endpoints: Vec<Value> = {
            let data = sim.data.lock();
            data.webhook_endpoints
                .values()
                .filter(|e| {
                    e["status"] == "enabled" && wants(&e["enabled_events"], event["type"].as_str().unwrap_or(""))
                })
                .cloned()
                .collect()
        };
        let options = sim.webhooks.options.lock().clone();
        for endpoint in endpoints {
            let copies = if rand::rng().random::<f64>() < options.duplicate_rate { 2 } else { 1 };
            for _ in 0..copies {
                tokio::spawn(deliver_one(
                    sim.clone(),
                    http.clone(),
                    endpoint.clone(),
                    event.clone(),
                    options.max_delay_ms,
                ));
            }
        }
    }
}

async fn deliver_one(sim: Arc<Sim>, http: reqwest::Client, endpoint: Value, event: Value, max_delay_ms: u64) {
    if max_delay_ms > 0 {
        let delay = rand::rng().random_range(0..=max_delay_ms);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let url = endpoint["url"].as_str().unwrap_or_default().to_string();
    let id = endpoint["id"].as_str().unwrap_or_default().to_string();
    let body = event.to_string();
    for wait in RETRY_SCHEDULE_MS {
        tokio::time::sleep(Duration::from_millis(*wait)).await;
        let secrets = sim.webhooks.secrets.lock().get(&id).map(Secrets::live).unwrap_or_default();
        let sent = http
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", signature(ids::now(), &body, &secrets))
            .body(body.clone())
            .send()
            .await;
        if matches!(sent, Ok(ref r) if r.status().is_success()) {
            return;
        }
    }
    tracing::warn!(endpoint = %id, event = %event["id"], "webhook not delivered after every retry");
}

/// `POST /v1/webhook_endpoints`.
pub fn create_endpoint(sim: &Sim, p: &Value, _path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &["url", "enabled_events", "description", "metadata", "api_version", "connect"])?;
    let url = params::required(p, "url")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError::invalid("url", "Invalid URL: must be an http(s) URL"));
    }
    let events = p
        .get("enabled_events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| ApiError::missing("enabled_events"))?;
    let mut endpoint = fixtures::template("webhook_endpoint");
    let id = ids::new_id("we");
    for (k, v) in [
        ("id", json!(id)),
        ("url", json!(url)),
        ("enabled_events", json!(events)),
        ("description", json!(params::text(p, "description")?)),
        ("metadata", Value::Object(params::metadata(p)?.unwrap_or_default())),
        ("created", json!(ids::now())),
        ("status", json!("enabled")),
        ("api_version", json!(params::text(p, "api_version")?)),
        ("application", Value::Null),
        ("livemode", json!(false)),
    ] {
        endpoint[k] = v;
    }
    let secret = new_secret();
    sim.webhooks.secrets.lock().insert(id, Secrets { current: secret.clone(), old: Vec::new() });
    let mut data = sim.data.lock();
    let seq = data.next_seq();
    data.webhook_endpoints.insert(seq, endpoint.clone());
    endpoint["secret"] = json!(secret);
    Ok(endpoint)
}

pub fn retrieve_endpoint(sim: &Sim, p: &Value, path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &[])?;
    sim.data
        .lock()
        .webhook_endpoints
        .get(path[2])
        .cloned()
        .ok_or_else(|| ApiError::missing_object("webhook_endpoint", path[2], "id"))
}

pub fn list_endpoints(sim: &Sim, p: &Value, _path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &["limit", "starting_after", "ending_before"])?;
    let page = Page::from_params(p)?;
    sim.data.lock().webhook_endpoints.list("/v1/webhook_endpoints", &page, "webhook_endpoint", |_| true)
}

pub fn update_endpoint(sim: &Sim, p: &Value, path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &["url", "enabled_events", "description", "metadata", "disabled"])?;
    let disabled = params::flag(p, "disabled")?;
    let mut data = sim.data.lock();
    let e = data
        .webhook_endpoints
        .get_mut(path[2])
        .ok_or_else(|| ApiError::missing_object("webhook_endpoint", path[2], "id"))?;
    if let Some(url) = params::text(p, "url")? {
        e["url"] = json!(url);
    }
    if let Some(events) = p.get("enabled_events").and_then(Value::as_array) {
        e["enabled_events"] = json!(events);
    }
    if let Some(d) = disabled {
        e["status"] = json!(if d { "disabled" } else { "enabled" });
    }
    Ok(e.clone())
}

pub fn delete_endpoint(sim: &Sim, p: &Value, path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &[])?;
    sim.data
        .lock()
        .webhook_endpoints
        .remove(path[2])
        .ok_or_else(|| ApiError::missing_object("webhook_endpoint", path[2], "id"))?;
    sim.webhooks.secrets.lock().remove(path[2]);
    Ok(json!({"id": path[2], "object": "webhook_endpoint", "deleted": true}))
}

/// Simulator only: a new secret; the old one keeps signing for `keep_old_s`.
pub fn roll(sim: &Sim, id: &str, keep_old_s: u64) -> Result<Value, ApiError> {
    let mut secrets = sim.webhooks.secrets.lock();
    let s = secrets.get_mut(id).ok_or_else(|| ApiError::missing_object("webhook_endpoint", id, "id"))?;
    let old = std::mem::replace(&mut s.current, new_secret());
    s.old.push((old, Instant::now() + Duration::from_secs(keep_old_s)));
    Ok(json!({"id": id, "secret": s.current}))
}

pub fn retrieve_event(sim: &Sim, p: &Value, path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &[])?;
    sim.data.lock().events.get(path[2]).cloned().ok_or_else(|| ApiError::missing_object("event", path[2], "id"))
}

pub fn list_events(sim: &Sim, p: &Value, _path: &[&str]) -> Result<Value, ApiError> {
    params::only(p, &["limit", "starting_after", "ending_before", "type", "created"])?;
    let page = Page::from_params(p)?;
    let t = params::text(p, "type")?.map(str::to_string);
    sim.data.lock().events.list("/v1/events", &page, "event", |e| t.as_deref().is_none_or(|t| e["type"] == t))
}
