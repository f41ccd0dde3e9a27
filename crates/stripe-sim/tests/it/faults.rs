//! Fault rules that fail the way Stripe fails: errors saved under the
//! idempotency key and replayed for ever (before or after the work was
//! done), `Stripe-Should-Retry` on error answers, rate limits and lock
//! timeouts, and faults on reads and on customer creation.

use crate::common::{Answer, Sim, ids, rule};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

fn intent_form(customer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("amount", "2000".into()),
        ("currency", "usd".into()),
        ("customer", customer.into()),
        ("payment_method", "pm_card_visa".into()),
        ("confirm", "true".into()),
        ("metadata[paymentID]", "42".into()),
    ]
}

async fn create_intent(sim: &Sim, customer: &str, key: Option<&str>) -> Answer {
    let form = intent_form(customer);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sim.post("/v1/payment_intents", &form, key).await
}

async fn intents_of(sim: &Sim, customer: &str) -> Vec<String> {
    ids(&sim.get(&format!("/v1/payment_intents?customer={customer}")).await.body)
}

#[tokio::test]
async fn a_saved_500_is_replayed_for_every_retry_with_the_same_key() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    sim.faults(json!([{"method": "POST", "path": "/v1/payment_intents", "saved": "before_work", "times": 1}])).await;

    let first = create_intent(&sim, &cus, Some("pay-42")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.body["error"]["type"], "api_error");
    assert_eq!(first.header("stripe-should-retry"), Some("false"), "retrying the key can only replay it");
    assert_eq!(first.header("idempotent-replayed"), None);

    for _ in 0..3 {
        let retry = create_intent(&sim, &cus, Some("pay-42")).await;
        assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.header("stripe-should-retry"), Some("false"));
        assert_eq!(retry.header("request-id"), first.header("request-id"), "the saved request's id");
    }
    assert!(intents_of(&sim, &cus).await.is_empty(), "before_work: nothing was done");

    let other_key = create_intent(&sim, &cus, Some("pay-42-b")).await;
    assert_eq!(other_key.status, StatusCode::OK, "a new key runs afresh");
}

#[tokio::test]
async fn a_saved_500_after_work_has_created_the_payment_intent() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    sim.faults(json!([{"method": "POST", "path": "/v1/payment_intents", "saved": "after_work", "times": 1}])).await;

    let first = create_intent(&sim, &cus, Some("pay-43")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = create_intent(&sim, &cus, Some("pay-43")).await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (StatusCode::INTERNAL_SERVER_ERROR, Some("true")));

    let made = intents_of(&sim, &cus).await;
    assert_eq!(made.len(), 1, "the work was done once");
    let pi = sim.get(&format!("/v1/payment_intents/{}", made[0])).await.body;
    assert_eq!((pi["status"].as_str(), pi["metadata"]["paymentID"].as_str()), (Some("succeeded"), Some("42")));
    let created = sim.events("payment_intent.succeeded").await;
    assert_eq!(created.len(), 1, "its events were emitted");
    assert_eq!(created[0]["request"]["idempotency_key"], "pay-43");
}

#[tokio::test]
async fn saved_errors_before_and_after_work_look_the_same_to_the_client() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    let mut answers = Vec::new();
    for (mode, key) in [("before_work", "k-before"), ("after_work", "k-after")] {
        sim.faults(json!([{"method": "POST", "path": "/v1/payment_intents", "saved": mode, "status": 502}])).await;
        let first = create_intent(&sim, &cus, Some(key)).await;
        let replay = create_intent(&sim, &cus, Some(key)).await;
        answers.push((first, replay));
    }
    let shape = |a: &Answer| {
        let mut names: Vec<&str> = a.headers.keys().map(|k| k.as_str()).filter(|k| *k != "date").collect();
        names.sort();
        (a.status, a.body.clone(), a.header("stripe-should-retry").map(str::to_string), names.join(","))
    };
    assert_eq!(shape(&answers[0].0), shape(&answers[1].0));
    assert_eq!(shape(&answers[0].1), shape(&answers[1].1));
    assert_eq!(answers[0].0.status, StatusCode::BAD_GATEWAY, "the rule's status is the one saved");
    assert_eq!(intents_of(&sim, &cus).await.len(), 1, "only after_work did the work");
}

#[tokio::test]
async fn a_saved_500_after_work_on_capture_and_refund_has_moved_the_money() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    let form = [
        ("amount", "2000"),
        ("currency", "usd"),
        ("customer", cus.as_str()),
        ("payment_method", "pm_card_visa"),
        ("confirm", "true"),
        ("capture_method", "manual"),
    ];
    let pi = sim.post("/v1/payment_intents", &form, None).await.body;
    let id = pi["id"].as_str().unwrap();
    sim.faults(json!([
        {"method": "POST", "path": "/v1/payment_intents/", "saved": "after_work"},
        {"method": "POST", "path": "/v1/refunds", "saved": "after_work"}
    ]))
    .await;
    let capture = sim.post(&format!("/v1/payment_intents/{id}/capture"), &[], Some("cap-1")).await;
    assert_eq!(capture.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sim.get(&format!("/v1/payment_intents/{id}")).await.body["status"], "succeeded");

    let refund = sim.post("/v1/refunds", &[("payment_intent", id), ("amount", "500")], Some("ref-1")).await;
    assert_eq!(refund.status, StatusCode::INTERNAL_SERVER_ERROR);
    let again = sim.post("/v1/refunds", &[("payment_intent", id), ("amount", "500")], Some("ref-1")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let refunds = sim.get(&format!("/v1/refunds?payment_intent={id}")).await.body;
    assert_eq!(ids(&refunds).len(), 1, "one refund, made by the first request");
    assert_eq!(refunds["data"][0]["amount"], 500);
}

#[tokio::test]
async fn a_saved_rule_without_an_idempotency_key_fails_like_a_plain_fault() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    sim.faults(json!([{"method": "POST", "path": "/v1/payment_intents", "saved": "before_work", "times": 1}])).await;
    let first = create_intent(&sim, &cus, None).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.header("stripe-should-retry"), Some("true"), "nothing was saved or done");
    assert_eq!(create_intent(&sim, &cus, None).await.status, StatusCode::OK);

    sim.faults(json!([{"method": "POST", "path": "/v1/payment_intents", "saved": "after_work", "times": 1}])).await;
    let done = create_intent(&sim, &cus, None).await;
    assert_eq!(done.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(done.header("stripe-should-retry"), None, "done and not saved: a retry would do it again");
    assert_eq!(intents_of(&sim, &cus).await.len(), 2);
}

#[tokio::test]
async fn a_transient_5xx_in_front_of_the_work_says_retry_and_is_not_saved() {
    let sim = Sim::start().await;
    sim.faults(json!([{"method": "POST", "path": "/v1/customers", "status": 503, "times": 1}])).await;
    let first = sim.post("/v1/customers", &[("email", "a@example.com")], Some("cus-1")).await;
    assert_eq!((first.status, first.header("stripe-should-retry")), (StatusCode::SERVICE_UNAVAILABLE, Some("true")));
    assert_eq!(first.body["error"]["type"], "api_error");
    let retry = sim.post("/v1/customers", &[("email", "a@example.com")], Some("cus-1")).await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (StatusCode::OK, None));
}

#[tokio::test]
async fn a_rate_limit_is_an_invalid_request_error_with_retry_after_and_no_retry_advice() {
    let sim = Sim::start().await;
    sim.faults(json!([{"path": "/v1/customers", "status": 429, "code": "rate_limit", "retry_after": 3, "times": 1}]))
        .await;
    let limited = sim.post("/v1/customers", &[], Some("rl-1")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let err = &limited.body["error"];
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("invalid_request_error"), Some("rate_limit")));
    assert_eq!(err["doc_url"], "https://stripe.com/docs/error-codes/rate-limit");
    assert!(err["message"].as_str().unwrap().starts_with("Too many requests hit the API too quickly"));
    assert_eq!(limited.header("retry-after"), Some("3"));
    assert_eq!(limited.header("stripe-should-retry"), None);
    assert_eq!(sim.post("/v1/customers", &[], Some("rl-1")).await.status, StatusCode::OK, "not saved");
}

#[tokio::test]
async fn a_lock_timeout_says_retry() {
    let sim = Sim::start().await;
    sim.faults(json!([{"path": "/v1/customers", "status": 429, "code": "lock_timeout", "times": 1}])).await;
    let locked = sim.post("/v1/customers", &[], None).await;
    assert_eq!((locked.status, locked.header("stripe-should-retry")), (StatusCode::TOO_MANY_REQUESTS, Some("true")));
    assert_eq!(locked.body["error"]["code"], "lock_timeout");
}

#[tokio::test]
async fn a_request_that_finds_its_key_in_use_is_told_to_retry() {
    let sim = Sim::start().await;
    sim.sim.state().faults.add(rule(json!({"method": "POST", "path": "/v1/customers", "latency_ms": 400})));
    let form = [("email", "ada@example.com")];
    let (first, second) = tokio::join!(sim.post("/v1/customers", &form, Some("busy-1")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sim.post("/v1/customers", &form, Some("busy-1")).await
    });
    assert_eq!((first.status, first.header("stripe-should-retry")), (StatusCode::OK, None));
    assert_eq!((second.status, second.header("stripe-should-retry")), (StatusCode::CONFLICT, Some("true")));
}

#[tokio::test]
async fn a_replayed_decline_says_not_to_retry() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    let form = [
        ("amount", "2000"),
        ("currency", "usd"),
        ("customer", cus.as_str()),
        ("payment_method", "pm_card_chargeDeclined"),
        ("confirm", "true"),
    ];
    let first = sim.post("/v1/payment_intents", &form, Some("dec-1")).await;
    let replay = sim.post("/v1/payment_intents", &form, Some("dec-1")).await;
    assert_eq!(first.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(first.header("stripe-should-retry"), Some("false"));
    assert_eq!(
        (replay.header("idempotent-replayed"), replay.header("stripe-should-retry")),
        (Some("true"), Some("false"))
    );
    let invalid = sim.post("/v1/payment_intents", &[("amount", "1")], Some("dec-2")).await;
    assert_eq!((invalid.status, invalid.header("stripe-should-retry")), (StatusCode::BAD_REQUEST, None));
}

#[tokio::test]
async fn fault_rules_match_reads_by_method_and_path() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "1000", "1").await;
    let path = format!("/v1/payment_intents/{}", pi["id"].as_str().unwrap());

    sim.faults(json!([{"method": "GET", "path": "/v1/payment_intents/", "status": 503, "times": 1}])).await;
    let failed = sim.get(&path).await;
    assert_eq!((failed.status, failed.header("stripe-should-retry")), (StatusCode::SERVICE_UNAVAILABLE, Some("true")));
    assert_eq!(sim.get(&path).await.status, StatusCode::OK, "the rule fired once");

    for drop in ["before", "after"] {
        sim.faults(json!([{"method": "GET", "path": "/v1/payment_intents/", "drop": drop, "times": 1}])).await;
        let lost = sim.send(sim.http.get(sim.url(&path)).bearer_auth(crate::common::KEY)).await;
        assert!(lost.is_none(), "drop {drop}: no complete answer");
    }

    sim.faults(json!([{"method": "GET", "path": "/v1/payment_intents/", "latency_ms": 300, "times": 1}])).await;
    let started = Instant::now();
    assert_eq!(sim.get(&path).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300), "slow, then answered");

    sim.faults(json!([{"method": "POST", "path": "/v1/payment_intents/", "status": 500}])).await;
    assert_eq!(sim.get(&path).await.status, StatusCode::OK, "a POST rule leaves reads alone");
}

#[tokio::test]
async fn fault_rules_slow_and_fail_customer_creation() {
    let sim = Sim::start().await;
    sim.faults(json!([
        {"method": "POST", "path": "/v1/customers", "latency_ms": 300, "times": 1},
        {"method": "POST", "path": "/v1/customers", "status": 502, "times": 1}
    ]))
    .await;
    let started = Instant::now();
    let slow = sim.post("/v1/customers", &[("email", "a@example.com")], None).await;
    assert_eq!(slow.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let failed = sim.post("/v1/customers", &[("email", "b@example.com")], None).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let listed = sim.get("/v1/customers").await.body;
    assert_eq!(ids(&listed).len(), 1, "the failed creation did nothing");
}
