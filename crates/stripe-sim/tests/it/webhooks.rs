//! The simulator's webhooks against Stripe's documented behaviour: endpoints,
//! Events with Stripe's keys, signatures, retries, secret rolling, filters,
//! and the test options (duplicates).

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use reqwest::Client;
use serde_json::{Value, json};
use sha2::Sha256;
use std::{collections::BTreeSet, sync::Arc, time::Duration};
use stripe_sim::{Config, Simulator, fixtures};

const KEY: &str = "sk_test_simulator_webhooks";

/// What a receiver got, and how many errors it still answers with.
#[derive(Default)]
struct Inbox {
    got: Vec<(String, Value)>,
    fail_next: usize,
}

async fn receive(State(inbox): State<Arc<Mutex<Inbox>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut inbox = inbox.lock();
    let sig = headers.get("stripe-signature").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    inbox.got.push((format!("{sig}|{}", String::from_utf8_lossy(&body)), serde_json::from_slice(&body).unwrap()));
    if inbox.fail_next > 0 {
        inbox.fail_next -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn receiver(fail_next: usize) -> (String, Arc<Mutex<Inbox>>) {
    let inbox = Arc::new(Mutex::new(Inbox { got: Vec::new(), fail_next }));
    let app = Router::new().route("/hook", routing::post(receive)).with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, inbox)
}

async fn post(http: &Client, sim: &Simulator, path: &str, form: &[(&str, &str)]) -> Value {
    http.post(format!("{}{path}", sim.url())).bearer_auth(KEY).form(form).send().await.unwrap().json().await.unwrap()
}

/// Checks `header` as a receiver must: any `v1` matching any secret.
fn signed_by(header_and_body: &str, secret: &str) -> bool {
    let (header, body) = header_and_body.split_once('|').unwrap();
    let t = header.split(',').find_map(|p| p.strip_prefix("t=")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    header.split(',').filter_map(|p| p.strip_prefix("v1=")).any(|v| v == expected)
}

async fn wait_for(inbox: &Arc<Mutex<Inbox>>, n: usize) -> Vec<(String, Value)> {
    for _ in 0..100 {
        if inbox.lock().got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inbox.lock().got.clone()
}

async fn endpoint(http: &Client, sim: &Simulator, url: &str, events: &[&str]) -> Value {
    let mut form = vec![("url", url)];
    form.extend(events.iter().map(|e| ("enabled_events[]", *e)));
    post(http, sim, "/v1/webhook_endpoints", &form).await
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn every_payment_change_is_sent_as_a_signed_event_with_stripes_keys() {
    let sim = Simulator::start(Config::default()).await.unwrap();
    let http = Client::new();
    let (url, inbox) = receiver(0).await;
    let we = endpoint(&http, &sim, &url, &["*"]).await;
    let secret = we["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let mut without_secret = we.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(keys(&without_secret), keys(&fixtures::template("webhook_endpoint")));

    let cus = post(&http, &sim, "/v1/customers", &[("email", "a@example.com")]).await;
    let pi = http
        .post(format!("{}/v1/payment_intents", sim.url()))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "pay-1")
        .form(&[
            ("amount", "2000"),
            ("currency", "usd"),
            ("customer", cus["id"].as_str().unwrap()),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
            ("capture_method", "manual"),
        ])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let id = pi["id"].as_str().unwrap();
    post(&http, &sim, &format!("/v1/payment_intents/{id}/capture"), &[("amount_to_capture", "1500")]).await;
    post(&http, &sim, "/v1/refunds", &[("payment_intent", id), ("amount", "500")]).await;

    let got = wait_for(&inbox, 8).await;
    let types: Vec<&str> = got.iter().map(|(_, e)| e["type"].as_str().unwrap()).collect();
    for t in [
        "customer.created",
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
        "charge.captured",
        "payment_intent.succeeded",
        "refund.created",
        "charge.refunded",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    for (raw, event) in &got {
        assert!(signed_by(raw, &secret), "{} is not signed with the endpoint's secret", event["type"]);
        assert_eq!(keys(event), keys(&fixtures::template("event")));
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    }
    let created = got.iter().find(|(_, e)| e["type"] == "payment_intent.created").unwrap();
    assert_eq!(created.1["request"]["idempotency_key"], "pay-1");
    assert!(created.1["request"]["id"].as_str().unwrap().starts_with("req_"));
    let succeeded = got.iter().find(|(_, e)| e["type"] == "payment_intent.succeeded").unwrap();
    assert_eq!(succeeded.1["data"]["previous_attributes"]["status"], "requires_capture");
    assert_eq!(succeeded.1["data"]["object"]["amount_received"], 1500);
    let listed: Value = http
        .get(format!("{}/v1/events?type=charge.captured", sim.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_delivery_answered_with_an_error_is_retried_until_it_succeeds() {
    let sim = Simulator::start(Config::default()).await.unwrap();
    let http = Client::new();
    let (url, inbox) = receiver(2).await;
    endpoint(&http, &sim, &url, &["customer.created"]).await;
    post(&http, &sim, "/v1/customers", &[("email", "a@example.com")]).await;
    let got = wait_for(&inbox, 3).await;
    assert_eq!(got.len(), 3, "two errors, then a success");
    assert!(got.iter().all(|(_, e)| e["id"] == got[0].1["id"]), "the same event each time");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(inbox.lock().got.len(), 3, "no delivery after the success");
}

#[tokio::test]
async fn only_the_events_an_endpoint_enabled_are_sent_to_it() {
    let sim = Simulator::start(Config::default()).await.unwrap();
    let http = Client::new();
    let (url, inbox) = receiver(0).await;
    endpoint(&http, &sim, &url, &["charge.succeeded"]).await;
    let cus = post(&http, &sim, "/v1/customers", &[("email", "a@example.com")]).await;
    post(
        &http,
        &sim,
        "/v1/payment_intents",
        &[
            ("amount", "900"),
            ("currency", "eur"),
            ("customer", cus["id"].as_str().unwrap()),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
        ],
    )
    .await;
    let got = wait_for(&inbox, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types: Vec<String> = inbox.lock().got.iter().map(|(_, e)| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["charge.succeeded"], "{got:?}");
}

#[tokio::test]
async fn while_a_secret_is_rolled_both_secrets_sign_every_delivery() {
    let sim = Simulator::start(Config::default()).await.unwrap();
    let http = Client::new();
    let (url, inbox) = receiver(0).await;
    let we = endpoint(&http, &sim, &url, &["customer.created"]).await;
    let old = we["secret"].as_str().unwrap().to_string();
    let rolled: Value = http
        .post(format!("{}/_sim/webhook_endpoints/{}/roll", sim.url(), we["id"].as_str().unwrap()))
        .json(&json!({"keep_old_s": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = rolled["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    post(&http, &sim, "/v1/customers", &[("email", "a@example.com")]).await;
    let got = wait_for(&inbox, 1).await;
    let raw = &got[0].0;
    assert_eq!(raw.split('|').next().unwrap().matches("v1=").count(), 2);
    assert!(signed_by(raw, &old) && signed_by(raw, &new));
    assert!(!signed_by(raw, "whsec_forged"));
}

#[tokio::test]
async fn duplicates_can_be_asked_for_and_a_dispute_card_is_disputed() {
    let sim = Simulator::start(Config::default()).await.unwrap();
    let http = Client::new();
    let (url, inbox) = receiver(0).await;
    endpoint(&http, &sim, &url, &["charge.dispute.created"]).await;
    http.post(format!("{}/_sim/webhooks", sim.url())).json(&json!({"duplicate_rate": 1.0})).send().await.unwrap();
    let cus = post(&http, &sim, "/v1/customers", &[("email", "a@example.com")]).await;
    post(
        &http,
        &sim,
        "/v1/payment_intents",
        &[
            ("amount", "900"),
            ("currency", "usd"),
            ("customer", cus["id"].as_str().unwrap()),
            ("payment_method", "pm_card_createDispute"),
            ("confirm", "true"),
        ],
    )
    .await;
    let got = wait_for(&inbox, 2).await;
    assert_eq!(got.len(), 2, "each event twice");
    assert_eq!(got[0].1["id"], got[1].1["id"]);
    let dispute = &got[0].1["data"]["object"];
    assert_eq!((dispute["object"].as_str(), dispute["status"].as_str()), (Some("dispute"), Some("needs_response")));
    assert_eq!(keys(dispute), keys(&fixtures::template("dispute")));
}
