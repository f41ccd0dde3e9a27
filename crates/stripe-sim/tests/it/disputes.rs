//! Disputes against Stripe's documented behaviour for its dispute test
//! cards: a chargeback withdraws the funds and blocks refunds
//! (`charge_disputed`), an inquiry does neither; evidence is submitted and
//! Stripe's test values `winning_evidence` / `losing_evidence` win or lose
//! it; closing accepts it; a closed dispute takes no more evidence.

use crate::common::{Sim, ids};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use stripe_sim::fixtures;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// A payment with `card`, and the dispute it opened.
async fn disputed(sim: &Sim, card: &str) -> (Value, Value) {
    let form = [("amount", "4200"), ("currency", "usd"), ("payment_method", card), ("confirm", "true")];
    let pi = sim.post("/v1/payment_intents", &form, None).await;
    assert_eq!((pi.status, pi.body["status"].as_str()), (StatusCode::OK, Some("succeeded")), "{}", pi.body);
    let id = pi.body["id"].as_str().unwrap();
    let list = sim.get(&format!("/v1/disputes?payment_intent={id}")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let d = list.body["data"][0].clone();
    assert!(d.is_object(), "a dispute for {id}: {}", list.body);
    (pi.body, d)
}

async fn refund(sim: &Sim, pi: &Value) -> (StatusCode, Value) {
    let a = sim.post("/v1/refunds", &[("payment_intent", pi["id"].as_str().unwrap()), ("amount", "1000")], None).await;
    (a.status, a.body)
}

#[tokio::test]
async fn a_chargeback_withdraws_the_funds_and_the_charge_can_no_longer_be_refunded() {
    let sim = Sim::start().await;
    let (pi, d) = disputed(&sim, "pm_card_createDispute").await;
    assert_eq!(keys(&d), keys(&fixtures::template("dispute")), "the fields of Stripe's example object");
    assert_eq!((d["status"].as_str(), d["reason"].as_str()), (Some("needs_response"), Some("fraudulent")));
    assert_eq!((d["amount"].as_i64(), d["is_charge_refundable"].as_bool()), (Some(4200), Some(false)));
    assert_eq!(d["payment_method_details"]["card"]["case_type"], "chargeback");
    assert!(d["evidence_details"]["due_by"].as_i64().unwrap() > d["created"].as_i64().unwrap());
    let withdrawn = &d["balance_transactions"][0];
    assert_eq!((withdrawn["amount"].as_i64(), withdrawn["fee"].as_i64()), (Some(-4200), Some(1500)));
    let charge = sim.get(&format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap())).await.body;
    assert_eq!(charge["disputed"], true);
    assert_eq!(sim.get(&format!("/v1/disputes/{}", d["id"].as_str().unwrap())).await.body, d);

    let (status, refused) = refund(&sim, &pi).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("charge_disputed")));
    assert!(refused["error"]["message"].as_str().unwrap().contains("has been charged back; cannot issue a refund"));
    let types = sim.event_types().await;
    assert!(
        types.contains(&"charge.dispute.created".into()) && types.contains(&"charge.dispute.funds_withdrawn".into())
    );
}

#[tokio::test]
async fn winning_evidence_wins_the_dispute_and_reinstates_the_funds() {
    let sim = Sim::start().await;
    let (pi, d) = disputed(&sim, "pm_card_createDisputeProductNotReceived").await;
    assert_eq!(d["reason"], "product_not_received");
    let id = d["id"].as_str().unwrap();
    // Saved first without submitting: nothing moves but the evidence.
    let saved = sim
        .post(
            &format!("/v1/disputes/{id}"),
            &[("evidence[product_description]", "Tea set, shipped 2 May"), ("submit", "false")],
            None,
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.body);
    assert_eq!(saved.body["status"], "needs_response");
    assert_eq!(saved.body["evidence"]["product_description"], "Tea set, shipped 2 May");
    assert_eq!(saved.body["evidence_details"]["has_evidence"], true);
    assert_eq!(saved.body["evidence_details"]["submission_count"], 0);

    let won =
        sim.post(&format!("/v1/disputes/{id}"), &[("evidence[uncategorized_text]", "winning_evidence")], None).await;
    assert_eq!(won.body["status"], "won", "{}", won.body);
    assert_eq!(won.body["evidence_details"]["submission_count"], 1);
    let moves: Vec<i64> =
        won.body["balance_transactions"].as_array().unwrap().iter().map(|t| t["amount"].as_i64().unwrap()).collect();
    assert_eq!(moves, [-4200, 4200], "withdrawn, then reinstated");
    let fees: Vec<i64> =
        won.body["balance_transactions"].as_array().unwrap().iter().map(|t| t["fee"].as_i64().unwrap()).collect();
    assert_eq!(fees, [1500, -1500], "the dispute fee taken, then credited back");
    assert_eq!(won.body["is_charge_refundable"], true);
    let types = sim.event_types().await;
    for t in ["charge.dispute.updated", "charge.dispute.closed", "charge.dispute.funds_reinstated"] {
        assert!(types.contains(&t.to_string()), "{t} in {types:?}");
    }
    let closed = sim.events("charge.dispute.closed").await;
    assert_eq!(closed[0]["data"]["object"]["status"], "won");
    // Won, the charge may be refunded again.
    assert_eq!(refund(&sim, &pi).await.0, StatusCode::OK);
}

#[tokio::test]
async fn losing_evidence_loses_it_closing_accepts_it_and_a_closed_dispute_takes_no_more_evidence() {
    let sim = Sim::start().await;
    let (_, d) = disputed(&sim, "pm_card_createDispute").await;
    let id = d["id"].as_str().unwrap();
    let lost =
        sim.post(&format!("/v1/disputes/{id}"), &[("evidence[uncategorized_text]", "losing_evidence")], None).await;
    assert_eq!(lost.body["status"], "lost");
    let late = sim.post(&format!("/v1/disputes/{id}"), &[("evidence[receipt]", "file_123")], None).await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST, "{}", late.body);
    assert_eq!(sim.post(&format!("/v1/disputes/{id}/close"), &[], None).await.status, StatusCode::BAD_REQUEST);

    let (pi, other) = disputed(&sim, "pm_card_createDispute").await;
    let other_id = other["id"].as_str().unwrap();
    let unknown = sim.post(&format!("/v1/disputes/{other_id}"), &[("evidence[excuse]", "none")], None).await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_unknown"))
    );
    let accepted = sim.post(&format!("/v1/disputes/{other_id}/close"), &[], None).await;
    assert_eq!(accepted.body["status"], "lost");
    assert_eq!(refund(&sim, &pi).await.1["error"]["code"], "charge_disputed", "lost, still charged back");
    assert_eq!(ids(&sim.get("/v1/disputes").await.body).len(), 2);
}

#[tokio::test]
async fn an_inquiry_withdraws_nothing_leaves_the_charge_refundable_and_closes_as_a_warning() {
    let sim = Sim::start().await;
    let (pi, d) = disputed(&sim, "pm_card_createDisputeInquiry").await;
    assert_eq!(
        (d["status"].as_str(), d["is_charge_refundable"].as_bool()),
        (Some("warning_needs_response"), Some(true))
    );
    assert_eq!(d["payment_method_details"]["card"]["case_type"], "inquiry");
    assert_eq!(d["balance_transactions"], serde_json::json!([]));
    assert_eq!(refund(&sim, &pi).await.0, StatusCode::OK, "an inquiry's charge may be refunded");
    let id = d["id"].as_str().unwrap();
    let review =
        sim.post(&format!("/v1/disputes/{id}"), &[("evidence[uncategorized_text]", "winning_evidence")], None).await;
    assert_eq!(review.body["status"], "warning_under_review", "an inquiry is not decided by test evidence");
    let locked = sim.post(&format!("/v1/disputes/{id}"), &[("evidence[customer_name]", "Ada")], None).await;
    assert_eq!(locked.status, StatusCode::BAD_REQUEST, "submitted evidence is under review: {}", locked.body);
    let closed = sim.post(&format!("/v1/disputes/{id}/close"), &[], None).await;
    assert_eq!(closed.body["status"], "warning_closed");
}
