//! Refunds that stay `pending` and settle later, as `succeeded` or `failed`,
//! by themselves (a background task) or when a test says so; and what a
//! pending refund does to the charge's refundable amount.

use crate::common::{Sim, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use stripe_sim::{Config, refund_settlement::Options};

async fn refund(sim: &Sim, pi: &Value, amount: &str) -> (StatusCode, Value) {
    let a = sim.post("/v1/refunds", &[("payment_intent", pi["id"].as_str().unwrap()), ("amount", amount)], None).await;
    (a.status, a.body)
}

async fn status_of(sim: &Sim, refund: &Value) -> String {
    let got = sim.get(&format!("/v1/refunds/{}", refund["id"].as_str().unwrap())).await.body;
    got["status"].as_str().unwrap().to_string()
}

async fn charge_of(sim: &Sim, pi: &Value) -> Value {
    sim.get(&format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap())).await.body
}

#[tokio::test]
async fn a_pending_refund_settles_later_with_refund_updated() {
    let options = Options { pending_rate: 1.0, settle_after_ms: Some(200), fail_rate: 0.0 };
    let sim = Sim::start_with(Config { refunds: options, ..Config::default() }).await;
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "2000", "1").await;

    let (status, re) = refund(&sim, &pi, "500").await;
    assert_eq!((status, re["status"].as_str()), (StatusCode::OK, Some("pending")));
    assert_eq!(re["pending_reason"], "processing");
    assert_eq!(charge_of(&sim, &pi).await["amount_refunded"], 500, "a pending refund counts as refunded");
    assert!(sim.event_types().await.contains(&"refund.created".to_string()));

    assert!(eventually(|| async { status_of(&sim, &re).await == "succeeded" }).await);
    let settled = sim.get(&format!("/v1/refunds/{}", re["id"].as_str().unwrap())).await.body;
    assert!(settled.get("pending_reason").is_none());
    let updated = sim.events("refund.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["data"]["object"]["status"], "succeeded");
    assert_eq!(updated[0]["data"]["previous_attributes"]["status"], "pending");
    assert_eq!(charge_of(&sim, &pi).await["amount_refunded"], 500);
}

#[tokio::test]
async fn a_pending_refund_that_fails_gives_its_amount_back_to_the_charge() {
    let sim = Sim::start().await;
    let set = sim.admin("/_sim/refunds", json!({"pending_rate": 1.0, "settle_after_ms": 100, "fail_rate": 1.0})).await;
    assert_eq!(set.body["settle_after_ms"], 100);
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "2000", "1").await;

    let (_, re) = refund(&sim, &pi, "2000").await;
    assert_eq!(charge_of(&sim, &pi).await["refunded"], true);
    assert!(eventually(|| async { status_of(&sim, &re).await == "failed" }).await);
    let failed = sim.get(&format!("/v1/refunds/{}", re["id"].as_str().unwrap())).await.body;
    assert_eq!(failed["failure_reason"], "expired_or_canceled_card");
    let charge = charge_of(&sim, &pi).await;
    assert_eq!((charge["amount_refunded"].as_i64(), charge["refunded"].as_bool()), (Some(0), Some(false)));
    assert!(eventually(|| async { !sim.events("refund.failed").await.is_empty() }).await);
    assert_eq!(sim.events("refund.updated").await[0]["data"]["previous_attributes"]["status"], "pending");

    sim.admin("/_sim/refunds", json!({"pending_rate": 0.0})).await;
    let (status, again) = refund(&sim, &pi, "2000").await;
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "the money can be refunded again"
    );
}

#[tokio::test]
async fn money_in_a_pending_refund_cannot_be_refunded_twice() {
    let sim = Sim::start().await;
    sim.admin("/_sim/refunds", json!({"pending_rate": 1.0, "settle_after_ms": null})).await;
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "2000", "1").await;

    let (_, first) = refund(&sim, &pi, "1500").await;
    assert_eq!(first["status"], "pending");
    let (status, body) = refund(&sim, &pi, "600").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("amount_too_large")));
    let (status, rest) = refund(&sim, &pi, "500").await;
    assert_eq!((status, rest["status"].as_str()), (StatusCode::OK, Some("pending")));
    let (status, body) = refund(&sim, &pi, "1").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("charge_already_refunded")));
}

#[tokio::test]
async fn without_settle_after_ms_a_pending_refund_waits_for_a_test_to_settle_it() {
    let sim = Sim::start().await;
    sim.admin("/_sim/refunds", json!({"pending_rate": 1.0, "settle_after_ms": null})).await;
    assert_eq!(sim.get("/_sim/refunds").await.body["settle_after_ms"], Value::Null);
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "2000", "1").await;
    let (_, to_succeed) = refund(&sim, &pi, "500").await;
    let (_, to_fail) = refund(&sim, &pi, "700").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(status_of(&sim, &to_succeed).await, "pending", "nothing settles it by itself");

    let id = to_succeed["id"].as_str().unwrap();
    let done = sim.admin(&format!("/_sim/refunds/{id}/succeed"), json!({})).await;
    assert_eq!((done.status, done.body["status"].as_str()), (StatusCode::OK, Some("succeeded")));
    let fid = to_fail["id"].as_str().unwrap();
    let failed = sim.admin(&format!("/_sim/refunds/{fid}/fail"), json!({})).await;
    assert_eq!((failed.status, failed.body["status"].as_str()), (StatusCode::OK, Some("failed")));
    assert_eq!(charge_of(&sim, &pi).await["amount_refunded"], 500);

    let twice = sim.admin(&format!("/_sim/refunds/{fid}/succeed"), json!({})).await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "a failed refund stays failed");
}

#[tokio::test]
async fn refunds_succeed_at_once_by_default() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "2000", "1").await;
    let (_, re) = refund(&sim, &pi, "500").await;
    assert_eq!(re["status"], "succeeded");
    assert!(re.get("pending_reason").is_none());
}
