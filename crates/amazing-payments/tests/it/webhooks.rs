//! Stripe's webhooks: verified, stored once, applied in any order by reading
//! the object back, over deliveries from the simulator.

use crate::common::{
    Options, TestApp,
    call::{Via, int},
    webhook_options,
};
use amazing_payments::{app::WebhookSettings, secret::Secret, workers::webhooks};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::Duration;

fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(app: &TestApp, signature: Option<String>, body: &str) -> (StatusCode, Value) {
    let mut req = app.http.post(format!("{}/v1/webhooks/stripe", app.rest)).body(body.to_string());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.json().await.unwrap())
}

fn with_secrets(secrets: &[&str]) -> Options {
    Options {
        webhooks: WebhookSettings {
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            tolerance: Duration::from_secs(300),
        },
        ..Default::default()
    }
}

const EVENT: &str = r#"{"id":"evt_test_1","object":"event","type":"customer.created","data":{"object":{"id":"cus_x","object":"customer"}}}"#;

#[tokio::test]
async fn forged_stale_and_unsigned_deliveries_are_refused_and_nothing_is_stored() {
    let app = TestApp::spawn_with(with_secrets(&["whsec_right"])).await;
    let now = chrono::Utc::now().timestamp();
    let refused_before = amazing_payments::app::webhooks::REFUSED_DELIVERIES.load(std::sync::atomic::Ordering::Relaxed);
    for (signature, reason) in [
        (Some(sign("whsec_wrong", now, EVENT)), "WEBHOOK_SIGNATURE_INVALID"),
        (Some(sign("whsec_right", now - 301, EVENT)), "WEBHOOK_TIMESTAMP_STALE"),
        (None, "WEBHOOK_SIGNATURE_MISSING"),
        (Some("t=oops".into()), "WEBHOOK_SIGNATURE_MALFORMED"),
    ] {
        let (status, body) = deliver(&app, signature, EVENT).await;
        assert_eq!((status, body["reason"].as_str()), (StatusCode::UNAUTHORIZED, Some(reason)));
    }
    let tampered = EVENT.replace("customer.created", "customer.deleted");
    let (status, _) = deliver(&app, Some(sign("whsec_right", now, EVENT)), &tampered).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the raw body is what is signed");
    assert_eq!(app.count("webhook.event").await, 0);
    let refused =
        amazing_payments::app::webhooks::REFUSED_DELIVERIES.load(std::sync::atomic::Ordering::Relaxed) - refused_before;
    assert!(refused >= 5, "every refusal is counted: {refused}");
}

#[tokio::test]
async fn during_a_secret_roll_the_old_and_the_new_secret_are_both_accepted() {
    let app = TestApp::spawn_with(with_secrets(&["whsec_old", "whsec_new"])).await;
    let now = chrono::Utc::now().timestamp();
    let (status, _) = deliver(&app, Some(sign("whsec_old", now, EVENT)), EVENT).await;
    assert_eq!(status, StatusCode::OK);
    let second = EVENT.replace("evt_test_1", "evt_test_2");
    let (status, _) = deliver(&app, Some(sign("whsec_new", now, &second)), &second).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.count("webhook.event").await, 2);
}

#[tokio::test]
async fn a_duplicate_delivery_is_acknowledged_and_stored_once() {
    let app = TestApp::spawn_with(with_secrets(&["whsec_right"])).await;
    let now = chrono::Utc::now().timestamp();
    let (s1, b1) = deliver(&app, Some(sign("whsec_right", now, EVENT)), EVENT).await;
    let (s2, b2) = deliver(&app, Some(sign("whsec_right", now, EVENT)), EVENT).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!((b1["duplicate"].as_bool(), b2["duplicate"].as_bool()), (Some(false), Some(true)));
    assert_eq!(app.count("webhook.event").await, 1);
}

/// Waits for the simulator's deliveries, then applies every stored event.
async fn payment_row(app: &TestApp, id: i64) -> (String, i64, i64, Option<String>) {
    sqlx::query_as("SELECT status, amount_captured, amount_refunded, dispute_status FROM payment.payment WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// The notification events of a payment, in order: (type, source).
async fn events_of(app: &TestApp, payment_id: i64) -> Vec<(String, String)> {
    sqlx::query_as("SELECT type, body->>'source' FROM notify.outbox WHERE payment_id = $1 ORDER BY seq")
        .bind(payment_id)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

fn has(events: &[(String, String)], kind: &str, source: &str) -> usize {
    events.iter().filter(|(k, s)| k == kind && s == source).count()
}

#[tokio::test]
async fn three_d_secure_completed_in_the_browser_reaches_the_payment_through_the_webhook_only() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let customer = app.new_customer().await;
    let p = app
        .call(Via::Rest, "CreatePayment", json!({"customerID": customer, "amount": 1200, "currency": "usd", "payment_method": "pm_card_authenticationRequired", "capture_method": "manual"}))
        .await
        .unwrap();
    let pi = p["stripe_payment_intent_id"].as_str().unwrap();
    app.http
        .post(format!("{}/_sim/payment_intents/{pi}/authenticate", app.sim.url()))
        .json(&json!({"outcome": "succeed"}))
        .send()
        .await
        .unwrap();
    app.apply_webhooks().await;
    let id = int(&p, "paymentID");
    assert_eq!(payment_row(&app, id).await.0, "authorized", "no GetPayment was needed");
    let sources: Vec<String> =
        sqlx::query_scalar("SELECT source FROM payment.history WHERE payment_id = $1 AND to_status = 'authorized'")
            .bind(id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(sources, ["webhook"]);
    assert_eq!(has(&events_of(&app, id).await, "payment.authorized", "webhook"), 1, "the customer is told");
}

#[tokio::test]
async fn a_dispute_is_recorded_on_its_payment() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let customer = app.new_customer().await;
    let p = app.call(Via::Grpc, "CreatePayment", json!({"customerID": customer, "amount": 900, "currency": "usd", "payment_method": "pm_card_createDispute"})).await.unwrap();
    app.apply_webhooks().await;
    let (status, captured, _, dispute) = payment_row(&app, int(&p, "paymentID")).await;
    assert_eq!((status.as_str(), captured, dispute.as_deref()), ("succeeded", 900, Some("needs_response")));
    let notes: Vec<Option<String>> = sqlx::query_scalar("SELECT note FROM payment.history WHERE payment_id = $1")
        .bind(int(&p, "paymentID"))
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(notes.iter().flatten().any(|n| n.starts_with("dispute opened")), "{notes:?}");
    let events = events_of(&app, int(&p, "paymentID")).await;
    assert_eq!(has(&events, "dispute.created", "webhook"), 1, "{events:?}");
}

#[tokio::test]
async fn a_payment_made_outside_the_service_for_a_known_customer_is_recorded() {
    let app = TestApp::spawn_with(webhook_options()).await;
    app.new_customer().await;
    let stripe_customer = app.stripe_customers()[0]["id"].as_str().unwrap().to_string();
    let pi: Value = app
        .stripe_post(
            "/v1/payment_intents",
            &[
                ("amount", "4200"),
                ("currency", "eur"),
                ("customer", stripe_customer.as_str()),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
            ],
        )
        .await;
    app.apply_webhooks().await;
    let (status, amount, currency): (String, i64, String) =
        sqlx::query_as("SELECT status, amount, currency FROM payment.payment WHERE stripe_payment_intent_id = $1")
            .bind(pi["id"].as_str().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), amount, currency.as_str()), ("succeeded", 4200, "eur"));
    assert_eq!(app.count("payment.payment").await, 1, "recorded once, whatever the number of events");
}

#[tokio::test]
async fn duplicated_and_reordered_deliveries_never_move_a_payment_backwards() {
    let app = TestApp::spawn_with(webhook_options()).await;
    app.http
        .post(format!("{}/_sim/webhooks", app.sim.url()))
        .json(&json!({"duplicate_rate": 1.0, "max_delay_ms": 400}))
        .send()
        .await
        .unwrap();
    let customer = app.new_customer().await;
    let p = app.call(Via::Rest, "CreatePayment", json!({"customerID": customer, "amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"})).await.unwrap();
    let id = int(&p, "paymentID");
    app.call(Via::Rest, "CapturePayment", json!({"paymentID": id.to_string(), "amount": 4000})).await.unwrap();
    app.call(Via::Rest, "RefundPayment", json!({"paymentID": id.to_string(), "amount": 1500})).await.unwrap();
    app.apply_webhooks().await;
    assert_eq!(payment_row(&app, id).await, ("partially_refunded".to_string(), 4000, 1500, None));
    let steps: Vec<String> =
        sqlx::query_scalar("SELECT to_status FROM payment.history WHERE payment_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(steps, ["pending", "authorized", "succeeded", "partially_refunded"], "no step back, none twice");
    let kinds: Vec<String> = events_of(&app, id).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["payment.created", "payment.authorized", "payment.captured", "refund.created", "payment.refunded"],
        "one event per change, whatever the deliveries"
    );
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook.event WHERE state = 'processed'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(processed >= 6, "every event was applied: {processed}");
}

#[tokio::test]
async fn an_authorization_that_expires_uncaptured_is_canceled_through_the_webhook() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let customer = app.new_customer().await;
    let p = app.call(Via::Rest, "CreatePayment", json!({"customerID": customer, "amount": 800, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"})).await.unwrap();
    let pi = p["stripe_payment_intent_id"].as_str().unwrap();
    let resp = app.http.post(format!("{}/_sim/payment_intents/{pi}/expire", app.sim.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.apply_webhooks().await;
    let id = int(&p, "paymentID");
    assert_eq!(payment_row(&app, id).await.0, "canceled");
    let reason: Option<String> = sqlx::query_scalar("SELECT cancellation_reason FROM payment.payment WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("automatic"));
    assert_eq!(has(&events_of(&app, id).await, "payment.canceled", "webhook"), 1);
}

#[tokio::test]
async fn a_refund_that_fails_after_succeeding_gives_its_amount_back_to_the_payment() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let customer = app.new_customer().await;
    let p = app
        .call(
            Via::Rest,
            "CreatePayment",
            json!({"customerID": customer, "amount": 3000, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await
        .unwrap();
    let id = int(&p, "paymentID");
    let r = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id.to_string(), "amount": 1000})).await.unwrap();
    app.apply_webhooks().await;
    assert_eq!(payment_row(&app, id).await.2, 1000);
    let re = r["stripe_refund_id"].as_str().unwrap();
    app.http.post(format!("{}/_sim/refunds/{re}/fail", app.sim.url())).send().await.unwrap();
    app.apply_webhooks().await;
    assert_eq!(payment_row(&app, id).await, ("succeeded".to_string(), 3000, 0, None));
    let events = events_of(&app, id).await;
    assert_eq!(has(&events, "refund.failed", "webhook"), 1, "{events:?}");
    assert_eq!(events.iter().filter(|(k, _)| k == "payment.refunded").count(), 1, "{events:?}");
    let refund = app.call(Via::Grpc, "GetRefund", json!({"refundID": r["refundID"]})).await.unwrap();
    assert_eq!(
        (refund["status"].as_str(), refund["failure_reason"].as_str()),
        (Some("failed"), Some("expired_or_canceled_card"))
    );
    let again =
        app.call(Via::Rest, "RefundPayment", json!({"paymentID": id.to_string(), "amount": 3000})).await.unwrap();
    assert_eq!(again["status"], "succeeded", "the amount can be refunded again");
}

#[tokio::test]
async fn events_applied_in_reverse_order_leave_the_payment_where_stripe_has_it() {
    // The service applies what it is sent by hand, newest first.
    let app = TestApp::spawn_with(with_secrets(&["whsec_manual"])).await;
    app.new_customer().await;
    let stripe_customer = app.stripe_customers()[0]["id"].as_str().unwrap().to_string();
    let pi: Value = app
        .stripe_post(
            "/v1/payment_intents",
            &[
                ("amount", "2500"),
                ("currency", "usd"),
                ("customer", stripe_customer.as_str()),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
                ("capture_method", "manual"),
            ],
        )
        .await;
    let id = pi["id"].as_str().unwrap();
    app.stripe_post(&format!("/v1/payment_intents/{id}/capture"), &[]).await;
    let events = app.stripe_get("/v1/events?limit=100").await;
    let types: Vec<&str> = events["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    let succeeded = types.iter().position(|t| *t == "payment_intent.succeeded").unwrap();
    let capturable = types.iter().position(|t| *t == "payment_intent.amount_capturable_updated").unwrap();
    assert!(succeeded < capturable, "listed newest first: succeeded comes before amount_capturable_updated");
    let now = chrono::Utc::now().timestamp();
    for e in events["data"].as_array().unwrap() {
        let body = e.to_string();
        let (status, _) = deliver(&app, Some(sign("whsec_manual", now, &body)), &body).await;
        assert_eq!(status, StatusCode::OK);
        while webhooks::pass(&app.app, 100).await.unwrap() > 0 {}
    }
    let (status, captured): (String, i64) =
        sqlx::query_as("SELECT status, amount_captured FROM payment.payment WHERE stripe_payment_intent_id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), captured), ("succeeded", 2500));
    let steps: Vec<String> =
        sqlx::query_scalar("SELECT to_status FROM payment.history ORDER BY id").fetch_all(&app.db).await.unwrap();
    assert!(
        !steps.iter().skip_while(|s| *s != "succeeded").any(|s| s == "authorized"),
        "never back to authorized: {steps:?}"
    );
}

#[tokio::test]
async fn an_event_that_arrives_before_its_payment_is_bound_is_kept_and_applied_later() {
    let app = TestApp::spawn_with(webhook_options()).await;
    let customer = app.new_customer().await;
    // Stripe creates the intent (and sends its events), but every answer to us is lost.
    app.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}))
            .unwrap(),
    );
    let f = app
        .call(
            Via::Rest,
            "CreatePayment",
            json!({"customerID": customer, "amount": 700, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await
        .unwrap_err();
    let id: i64 = f.details["paymentID"].as_str().unwrap().parse().unwrap();
    app.apply_webhooks().await;
    let waiting: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, last_error FROM webhook.event WHERE type LIKE 'payment_intent.%'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(
        !waiting.is_empty()
            && waiting
                .iter()
                .all(|(s, e)| s == "pending" && e.as_deref().unwrap_or("").starts_with("PAYMENT_NOT_READY")),
        "{waiting:?}"
    );
    assert_eq!(payment_row(&app, id).await.0, "pending");

    amazing_payments::workers::reconciler::pass(
        &app.app,
        &amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE webhook.event SET next_attempt_at = now()").execute(&app.db).await.unwrap();
    app.apply_webhooks().await;
    assert_eq!(payment_row(&app, id).await.0, "succeeded");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook.event WHERE state <> 'processed'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, 0, "the early events were applied once the payment was bound");
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_parked_listed_and_replayed() {
    let app = TestApp::spawn_with(with_secrets(&["whsec_manual"])).await;
    // An event about a PaymentIntent Stripe does not have: reading it back fails.
    let body = r#"{"id":"evt_ghost","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_ghost","object":"payment_intent"}}}"#;
    let (status, _) = deliver(&app, Some(sign("whsec_manual", chrono::Utc::now().timestamp(), body)), body).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..webhooks::MAX_ATTEMPTS {
        sqlx::query("UPDATE webhook.event SET next_attempt_at = now()").execute(&app.db).await.unwrap();
        webhooks::pass(&app.app, 10).await.unwrap();
    }
    let parked = amazing_payments::store::webhooks::list(&app.db, Some("parked"), 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    let error = parked[0].last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("STRIPE_REFUSED") && error.contains("No such payment_intent"),
        "the reason is kept: {error}"
    );
    assert_eq!(amazing_payments::store::webhooks::replay(&app.db, Some("evt_ghost")).await.unwrap(), 1);
    let state: String = sqlx::query_scalar("SELECT state FROM webhook.event").fetch_one(&app.db).await.unwrap();
    assert_eq!(state, "pending");
}

#[tokio::test]
async fn a_refund_update_delivered_before_the_refund_creation_still_ends_where_stripe_is() {
    let app = TestApp::spawn_with(with_secrets(&["whsec_manual"])).await;
    let customer = app.new_customer().await;
    let p = app
        .call(
            Via::Rest,
            "CreatePayment",
            json!({"customerID": customer, "amount": 2000, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await
        .unwrap();
    let id = int(&p, "paymentID");
    let r = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id.to_string(), "amount": 500})).await.unwrap();
    let re = r["stripe_refund_id"].as_str().unwrap();
    app.http.post(format!("{}/_sim/refunds/{re}/fail", app.sim.url())).send().await.unwrap();
    let updated = app.stripe_get("/v1/events?type=refund.updated").await["data"][0].clone();
    let created = app.stripe_get("/v1/events?type=refund.created").await["data"][0].clone();
    let now = chrono::Utc::now().timestamp();
    for e in [updated, created] {
        let body = e.to_string();
        assert_eq!(deliver(&app, Some(sign("whsec_manual", now, &body)), &body).await.0, StatusCode::OK);
        while webhooks::pass(&app.app, 10).await.unwrap() > 0 {}
    }
    assert_eq!(
        payment_row(&app, id).await,
        ("succeeded".to_string(), 2000, 0, None),
        "the failed refund's amount is back, once"
    );
    let refund = app.call(Via::Rest, "GetRefund", json!({"refundID": r["refundID"]})).await.unwrap();
    assert_eq!(refund["status"], "failed", "the late refund.created did not bring it back");
}
