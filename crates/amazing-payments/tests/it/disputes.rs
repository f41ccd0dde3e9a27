//! Disputes (issue 15, third part): opened by the simulator with Stripe's
//! dispute test cards, told by Stripe's webhooks and read back, listed and
//! shown with the money they withdrew; answered with evidence that wins or
//! loses (Stripe's test values decide), or accepted; refunds of a charge
//! charged back refused. Over REST and gRPC, each change in the payment's
//! history and an event.

use crate::common::{
    TestApp,
    call::{BOTH, Failure, Via, int},
    webhook_options,
};
use amazing_payments::stripe::types::Dispute;
use serde_json::{Value, json};
use tonic::Code;

/// A payment of 900 USD charged with the test card `pm`; its id.
async fn pay_with(app: &TestApp, via: Via, pm: &str) -> i64 {
    let customer = app.new_customer().await;
    let p = app
        .call(
            via,
            "CreatePayment",
            json!({"customerID": customer, "amount": 900, "currency": "usd", "payment_method": pm}),
        )
        .await
        .unwrap();
    assert_eq!(p["status"], "succeeded", "{p}");
    int(&p, "paymentID")
}

/// [`pay_with`], and the dispute Stripe's webhooks then tell of applied.
async fn disputed_payment(app: &TestApp, via: Via, pm: &str) -> i64 {
    let payment = pay_with(app, via, pm).await;
    app.apply_webhooks().await;
    payment
}

/// Sends `evidence` for the dispute `d` (as listed) over `via`, submitted.
async fn submit_evidence(app: &TestApp, via: Via, d: &Value, evidence: Value) -> Result<Value, Failure> {
    app.call(via, "SubmitDisputeEvidence", json!({"disputeID": d["disputeID"], "evidence": evidence})).await
}

/// The dispute `id` as the simulator (Stripe) holds it now.
fn stripe_dispute(app: &TestApp, id: &str) -> Dispute {
    serde_json::from_value(app.sim.state().data.lock().disputes.get(id).expect("a dispute of Stripe's").clone())
        .unwrap()
}

async fn only_dispute(app: &TestApp, via: Via, payment: i64) -> Value {
    let list = app.call(via, "ListDisputes", json!({"paymentID": payment})).await.unwrap();
    let disputes = list["disputes"].as_array().cloned().unwrap_or_default();
    assert_eq!(disputes.len(), 1, "{list}");
    disputes[0].clone()
}

/// The dispute events of a payment: (type, data.dispute.status).
async fn dispute_events(app: &TestApp, payment: i64) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT type, body->'data'->'dispute'->>'status' FROM notify.outbox
         WHERE payment_id = $1 AND type LIKE 'dispute.%' ORDER BY seq",
    )
    .bind(payment)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn notes(app: &TestApp, payment: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT note FROM payment.history WHERE payment_id = $1 AND note LIKE '%dispute%' ORDER BY id")
        .bind(payment)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chargeback_opened_by_the_simulator_shows_its_funds_withdrawn_and_a_refund_of_it_is_refused_over_both_transports()
 {
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;
    for via in BOTH {
        let d = only_dispute(&app, via, payment).await;
        assert_eq!(d["status"], "needs_response", "{d}");
        assert_eq!(d["reason"], "fraudulent");
        assert_eq!((int(&d, "amount"), int(&d, "amount_withdrawn"), int(&d, "amount_reinstated")), (900, 900, 0));
        assert!(!d["is_charge_refundable"].as_bool().unwrap_or(false), "proto3 JSON leaves false out: {d}");
        assert!(d["evidence_due_by"].as_str().is_some_and(|t| !t.is_empty()), "{d}");
        assert!(d["stripe_dispute_id"].as_str().unwrap().starts_with("dp_"));
        let shown = app.call(via, "GetDispute", json!({"disputeID": d["disputeID"]})).await.unwrap();
        assert_eq!(shown["stripe_dispute_id"], d["stripe_dispute_id"]);
    }
    let p = app.call(Via::Grpc, "GetPayment", json!({"paymentID": payment})).await.unwrap();
    assert_eq!((p["dispute_status"].as_str(), int(&p, "amount_disputed")), (Some("needs_response"), 900), "{p}");
    let history = notes(&app, payment).await;
    assert!(history.iter().any(|n| n.starts_with("dispute opened (fraudulent)")), "{history:?}");
    assert!(history.iter().any(|n| n.ends_with("900 usd withdrawn")), "{history:?}");
    assert_eq!(dispute_events(&app, payment).await, [("dispute.created".to_string(), "needs_response".to_string())]);

    // Refunds are refused as Stripe refuses them, and nothing is written.
    for via in BOTH {
        let refused = app.call(via, "RefundPayment", json!({"paymentID": payment, "amount": 100})).await.unwrap_err();
        assert_eq!(refused.reason, "CHARGE_DISPUTED", "{refused:?}");
        assert_eq!(refused.code, Code::FailedPrecondition);
        if via == Via::Rest {
            assert_eq!(refused.http, Some(409));
        }
    }
    assert_eq!(app.count("payment.refund").await, 0, "nothing written");
    let missing = app.call(Via::Rest, "GetDispute", json!({"disputeID": 999})).await.unwrap_err();
    assert_eq!((missing.http, missing.reason.as_str()), (Some(404), "DISPUTE_NOT_FOUND"));
}

#[tokio::test]
async fn evidence_that_wins_closes_the_dispute_won_reinstates_the_funds_and_makes_the_charge_refundable_again() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Grpc, "pm_card_createDisputeProductNotReceived").await;
    let d = only_dispute(&app, Via::Grpc, payment).await;
    assert_eq!(d["reason"], "product_not_received");
    let won = submit_evidence(
        &app,
        Via::Grpc,
        &d,
        json!({
            "uncategorized_text": "winning_evidence",
            "product_description": "A tea set, delivered",
            "shipping_tracking_number": "1Z999AA10123456784",
        }),
    )
    .await
    .unwrap();
    assert_eq!(won["status"], "won", "{won}");
    assert_eq!((int(&won, "amount_reinstated"), won["is_charge_refundable"].as_bool()), (900, Some(true)));
    assert_eq!(int(&won, "evidence_submission_count"), 1);
    app.apply_webhooks().await;
    let p = app.call(Via::Rest, "GetPayment", json!({"paymentID": payment})).await.unwrap();
    assert_eq!((p["dispute_status"].as_str(), int(&p, "amount_disputed")), (Some("won"), 0), "{p}");
    assert_eq!(
        dispute_events(&app, payment).await,
        [("dispute.created".into(), "needs_response".into()), ("dispute.closed".into(), "won".into())],
        "one event per change, whatever number of webhooks told it"
    );
    let history = notes(&app, payment).await;
    for note in ["won", "evidence submitted", "900 usd reinstated"] {
        assert!(history.iter().any(|n| n.contains(note)), "{note}: {history:?}");
    }
    // Closed: no more evidence; the charge may be refunded again.
    let late = submit_evidence(&app, Via::Rest, &d, json!({"customer_name": "Ada"})).await.unwrap_err();
    assert_eq!((late.http, late.reason.as_str()), (Some(409), "DISPUTE_CLOSED"));
    let refund = app.call(Via::Rest, "RefundPayment", json!({"paymentID": payment, "amount": 100})).await.unwrap();
    assert_eq!(refund["status"], "succeeded", "{refund}");
}

#[tokio::test]
async fn evidence_that_loses_and_an_accepted_dispute_both_end_lost_and_the_money_stays_withdrawn() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let losing = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;
    let accepted = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;

    let d = only_dispute(&app, Via::Rest, losing).await;
    let bad = submit_evidence(&app, Via::Rest, &d, json!({"card_number": "x"})).await.unwrap_err();
    assert_eq!((bad.http, bad.reason.as_str()), (Some(400), "INVALID_EVIDENCE"), "not a field of Stripe's");
    let lost = submit_evidence(&app, Via::Rest, &d, json!({"uncategorized_text": "losing_evidence"})).await.unwrap();
    assert_eq!(lost["status"], "lost", "{lost}");

    let d = only_dispute(&app, Via::Grpc, accepted).await;
    let closed = app.call(Via::Grpc, "AcceptDispute", json!({"disputeID": d["disputeID"]})).await.unwrap();
    assert_eq!(closed["status"], "lost", "{closed}");
    let again = app.call(Via::Rest, "AcceptDispute", json!({"disputeID": d["disputeID"]})).await.unwrap_err();
    assert_eq!((again.http, again.reason.as_str()), (Some(409), "DISPUTE_CLOSED"));
    app.apply_webhooks().await;

    for payment in [losing, accepted] {
        let p = app.call(Via::Rest, "GetPayment", json!({"paymentID": payment})).await.unwrap();
        assert_eq!((p["dispute_status"].as_str(), int(&p, "amount_disputed")), (Some("lost"), 900), "{p}");
        assert_eq!(
            dispute_events(&app, payment).await,
            [("dispute.created".into(), "needs_response".into()), ("dispute.closed".into(), "lost".into())]
        );
        let refused = app.call(Via::Grpc, "RefundPayment", json!({"paymentID": payment})).await.unwrap_err();
        assert_eq!(refused.reason, "CHARGE_DISPUTED");
    }
    // The event names the key that answered the dispute.
    let by: Option<i64> = sqlx::query_scalar(
        "SELECT (body->>'api_key_id')::bigint FROM notify.outbox WHERE payment_id = $1 AND type = 'dispute.closed'",
    )
    .bind(accepted)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(by.is_some(), "dispute.closed names the API key that accepted it");
}

#[tokio::test]
async fn an_inquiry_takes_evidence_kept_unsubmitted_and_its_charge_stays_refundable() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDisputeInquiry").await;
    let d = only_dispute(&app, Via::Rest, payment).await;
    assert_eq!(d["status"], "warning_needs_response", "{d}");
    assert_eq!((d["is_charge_refundable"].as_bool(), int(&d, "amount_withdrawn")), (Some(true), 0));
    let kept = app
        .call(
            Via::Rest,
            "SubmitDisputeEvidence",
            json!({"disputeID": d["disputeID"], "evidence": {"customer_name": "Ada Lovelace"}, "submit": false}),
        )
        .await
        .unwrap();
    assert_eq!((kept["status"].as_str(), int(&kept, "evidence_submission_count")), (Some("warning_needs_response"), 0));
    let submitted = app.call(Via::Grpc, "SubmitDisputeEvidence", json!({"disputeID": d["disputeID"]})).await.unwrap();
    assert_eq!(submitted["status"], "warning_under_review", "{submitted}");
    app.apply_webhooks().await;
    assert_eq!(
        dispute_events(&app, payment).await,
        [
            ("dispute.created".into(), "warning_needs_response".into()),
            ("dispute.updated".into(), "warning_under_review".into())
        ]
    );
    let under_review = submit_evidence(&app, Via::Rest, &d, json!({"customer_name": "A"})).await.unwrap_err();
    assert_eq!((under_review.http, under_review.reason.as_str()), (Some(409), "DISPUTE_UNDER_REVIEW"));
    let refund = app.call(Via::Grpc, "RefundPayment", json!({"paymentID": payment, "amount": 300})).await.unwrap();
    assert_eq!(refund["status"], "succeeded", "an inquiry moves no money: the charge can be refunded");
}

#[tokio::test]
async fn an_older_report_read_back_late_never_moves_a_dispute_backwards_nor_tells_it_twice() {
    use amazing_payments::store::disputes;
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;
    let d = only_dispute(&app, Via::Rest, payment).await;
    let stripe_id = d["stripe_dispute_id"].as_str().unwrap().to_string();
    // As Stripe held it at the start: a webhook's read that took long.
    let old: Dispute = stripe_dispute(&app, &stripe_id);
    let won = submit_evidence(&app, Via::Rest, &d, json!({"uncategorized_text": "winning_evidence"})).await.unwrap();
    assert_eq!(won["status"], "won");
    let applied = disputes::apply(&app.db, payment, &old, amazing_payments::store::payments::Source::WEBHOOK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((applied.row.status.as_str(), applied.row.is_charge_refundable), ("won", true));
    assert!(applied.events.is_empty(), "{:?}", applied.events);
    let p = app.call(Via::Rest, "GetPayment", json!({"paymentID": payment})).await.unwrap();
    assert_eq!((p["dispute_status"].as_str(), int(&p, "amount_disputed")), (Some("won"), 0), "{p}");
}

#[tokio::test]
async fn a_retry_with_its_key_of_evidence_whose_answer_was_lost_gets_the_answer_not_a_refusal() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;
    let d = only_dispute(&app, Via::Rest, payment).await;
    let body = json!({"disputeID": d["disputeID"], "evidence": {"product_description": "Tea set"}});
    let (first, _) = app.call_keyed(Via::Rest, "SubmitDisputeEvidence", body.clone(), Some("evidence-1")).await;
    assert_eq!(first.unwrap()["status"], "under_review");
    // The answer never reached the client, and the service kept nothing of
    // it (the key was released as for an answer whose outcome was unknown).
    sqlx::query("DELETE FROM auth.idempotency_key").execute(&app.db).await.unwrap();
    let (again, _) = app.call_keyed(Via::Grpc, "SubmitDisputeEvidence", body, Some("evidence-1")).await;
    let again = again.expect("the retry is answered what was done, not DISPUTE_UNDER_REVIEW");
    assert_eq!((again["status"].as_str(), int(&again, "evidence_submission_count")), (Some("under_review"), 1));
    // Without a key, the same request is a new one, refused: submitted
    // evidence is final.
    let refused = submit_evidence(&app, Via::Rest, &d, json!({"customer_name": "Ada"})).await.unwrap_err();
    assert_eq!(refused.reason, "DISPUTE_UNDER_REVIEW");
}

#[tokio::test]
async fn a_refund_stripe_refuses_for_a_chargeback_not_yet_told_reads_the_dispute_back_and_the_next_is_refused_at_once()
{
    // No webhook endpoint: the service hears nothing of the dispute.
    let app = TestApp::spawn().await;
    let payment = pay_with(&app, Via::Rest, "pm_card_createDispute").await;
    let refused = app.call(Via::Rest, "RefundPayment", json!({"paymentID": payment, "amount": 100})).await.unwrap_err();
    assert_eq!((refused.http, refused.reason.as_str()), (Some(409), "CHARGE_DISPUTED"), "{refused:?}");
    let d = only_dispute(&app, Via::Rest, payment).await;
    assert_eq!(d["status"], "needs_response", "read back from Stripe: {d}");
    let refunds = app.count("payment.refund").await;
    let sent = app.sim.state().received().len();
    let again = app.call(Via::Grpc, "RefundPayment", json!({"paymentID": payment, "amount": 100})).await.unwrap_err();
    assert_eq!(again.reason, "CHARGE_DISPUTED");
    assert_eq!(app.count("payment.refund").await, refunds, "refused before anything is written");
    assert_eq!(app.sim.state().received().len(), sent, "nor sent");
}

#[tokio::test]
async fn a_dispute_told_before_disputes_were_kept_is_not_announced_again() {
    use amazing_payments::store::disputes;
    let app = TestApp::spawn().await;
    let payment = pay_with(&app, Via::Rest, "pm_card_createDispute").await;
    // What the earlier version recorded: the status on the payment, its
    // dispute.created sent, no dispute row.
    sqlx::query("UPDATE payment.payment SET dispute_status = 'needs_response' WHERE id = $1")
        .bind(payment)
        .execute(&app.db)
        .await
        .unwrap();
    let stripe: Dispute = serde_json::from_value(
        app.sim.state().data.lock().disputes.values().next().expect("the simulator opened one").clone(),
    )
    .unwrap();
    let applied = disputes::apply(&app.db, payment, &stripe, amazing_payments::store::payments::Source::WEBHOOK)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !applied.events.contains(&amazing_payments::domain::event::EventType::DisputeCreated),
        "{:?}",
        applied.events
    );
    assert_eq!(only_dispute(&app, Via::Rest, payment).await["status"], "needs_response");
}

#[tokio::test]
async fn an_inquiry_closed_then_escalated_to_a_chargeback_is_taken_as_the_chargeback_it_became() {
    use amazing_payments::store::disputes;
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDisputeInquiry").await;
    let d = only_dispute(&app, Via::Rest, payment).await;
    let stripe_id = d["stripe_dispute_id"].as_str().unwrap().to_string();
    let mut report: Dispute = stripe_dispute(&app, &stripe_id);
    let source = amazing_payments::store::payments::Source::WEBHOOK;
    report.status = "warning_closed".into();
    disputes::apply(&app.db, payment, &report, source).await.unwrap().unwrap();
    // The bank escalates: a chargeback, the charge no longer refundable.
    report.status = "needs_response".into();
    report.is_charge_refundable = false;
    let applied = disputes::apply(&app.db, payment, &report, source).await.unwrap().unwrap();
    assert_eq!((applied.row.status.as_str(), applied.row.is_charge_refundable), ("needs_response", false));
    let refused = app.call(Via::Rest, "RefundPayment", json!({"paymentID": payment, "amount": 100})).await.unwrap_err();
    assert_eq!(refused.reason, "CHARGE_DISPUTED");
    // A status Stripe added since is taken, never thought older news.
    report.status = "prevented".into();
    let applied = disputes::apply(&app.db, payment, &report, source).await.unwrap().unwrap();
    assert_eq!(applied.row.status, "prevented");
}

#[tokio::test]
async fn evidence_is_taken_when_stripe_takes_it_though_our_record_of_the_dispute_is_late() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;
    let d = only_dispute(&app, Via::Rest, payment).await;
    // Our row says the inquiry closed; Stripe has a chargeback waiting for
    // evidence (its news still on the way).
    sqlx::query("UPDATE payment.dispute SET status = 'warning_closed'").execute(&app.db).await.unwrap();
    let taken = submit_evidence(&app, Via::Rest, &d, json!({"product_description": "Tea set"})).await;
    let taken = taken.expect("Stripe took the evidence: not DISPUTE_CLOSED from a late record");
    assert_eq!(taken["status"], "under_review", "{taken}");
}

#[tokio::test]
async fn an_accept_stripe_did_though_it_answered_a_saved_500_is_answered_done() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let payment = disputed_payment(&app, Via::Rest, "pm_card_createDispute").await;
    let d = only_dispute(&app, Via::Rest, payment).await;
    let path = format!("/v1/disputes/{}/close", d["stripe_dispute_id"].as_str().unwrap());
    app.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": path, "saved": "after_work", "times": 1})).unwrap(),
    );
    let (closed, _) =
        app.call_keyed(Via::Rest, "AcceptDispute", json!({"disputeID": d["disputeID"]}), Some("accept-1")).await;
    let closed = closed.expect("the dispute is closed at Stripe: not STRIPE_FAILED");
    assert_eq!(closed["status"], "lost", "{closed}");
}

#[tokio::test]
async fn a_keyed_refund_the_reconciler_found_refused_for_a_chargeback_is_answered_charge_disputed_to_its_retry() {
    let app = TestApp::spawn().await;
    let payment = pay_with(&app, Via::Rest, "pm_card_createDispute").await;
    let body = json!({"paymentID": payment, "amount": 100});
    // Stripe does not answer: the refund stays pending, the key free.
    app.stripe_fails("POST", "/v1/refunds", 503);
    let (first, _) = app.call_keyed(Via::Rest, "RefundPayment", body.clone(), Some("refund-1")).await;
    assert_eq!(first.unwrap_err().code, Code::Unavailable);
    app.sim.state().faults.clear();
    // The reconciler sends it again, and Stripe refuses it for the chargeback.
    let settings =
        amazing_payments::workers::reconciler::Settings { min_age: std::time::Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::pass(&app.app, &settings).await.unwrap();
    let failed: String = sqlx::query_scalar("SELECT status FROM payment.refund").fetch_one(&app.db).await.unwrap();
    assert_eq!(failed, "failed");
    let (again, _) = app.call_keyed(Via::Grpc, "RefundPayment", body, Some("refund-1")).await;
    let again = again.unwrap_err();
    assert_eq!((again.code, again.reason.as_str()), (Code::FailedPrecondition, "CHARGE_DISPUTED"), "{again:?}");
}
