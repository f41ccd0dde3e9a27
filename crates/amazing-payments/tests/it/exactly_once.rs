//! Exactly once: client idempotency keys over both transports, retries after
//! lost answers, and the reconciler finishing what a request could not.

use crate::common::{
    TestApp,
    call::{BOTH, Via, int},
};
use amazing_payments::{
    store::payments::{self, NewPayment},
    workers::reconciler::{self, Settings},
};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;

fn payment(customer: &str) -> Value {
    json!({"customerID": customer, "amount": 2500, "currency": "eur", "payment_method": "pm_card_visa", "capture_method": "manual"})
}

fn intents(app: &TestApp) -> usize {
    app.sim.state().data.lock().payment_intents.values().count()
}

fn fault(app: &TestApp, rule: Value) {
    app.sim.state().faults.add(serde_json::from_value(rule).unwrap());
}

fn now() -> Settings {
    Settings { interval: Duration::from_millis(10), batch: 100, min_age: Duration::ZERO, ..Default::default() }
}

#[tokio::test]
async fn a_retried_request_with_the_same_key_is_replayed_and_marked_so() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let key = format!("order-1-{via:?}");
        let (first, replayed) = app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)).await;
        assert!(!replayed);
        let (second, replayed) = app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)).await;
        assert!(replayed, "the second answer is marked replayed");
        assert_eq!(first.unwrap(), second.unwrap());
    }
    assert_eq!(intents(&app), 2, "one PaymentIntent per key");
    assert_eq!(app.count("payment.payment").await, 2);
}

#[tokio::test]
async fn the_same_key_for_another_request_is_refused() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let key = format!("k-{via:?}");
        app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)).await.0.unwrap();
        let mut other = payment(&customer);
        other["amount"] = json!(2600);
        let f = app.call_keyed(via, "CreatePayment", other, Some(&key)).await.0.unwrap_err();
        assert_eq!((f.code, f.reason.as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"));
        let f = app
            .call_keyed(via, "CreateCustomer", json!({"name": "A", "email": "a@example.com"}), Some(&key))
            .await
            .0
            .unwrap_err();
        assert_eq!(f.reason, "IDEMPOTENCY_KEY_REUSED", "a key belongs to one rpc");
        let f = app.call_keyed(via, "CreatePayment", payment(&customer), Some(&"x".repeat(256))).await.0.unwrap_err();
        assert_eq!(f.reason, "INVALID_IDEMPOTENCY_KEY");
    }
}

#[tokio::test]
async fn a_duplicate_arriving_while_the_first_runs_is_aborted_and_nothing_is_done_twice() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "latency_ms": 600}));
    for via in BOTH {
        let key = format!("dup-{via:?}");
        let (a, b) = tokio::join!(app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)), async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)).await
        });
        assert!(a.0.is_ok());
        let f = b.0.unwrap_err();
        assert_eq!((f.code, f.reason.as_str()), (Code::Aborted, "IDEMPOTENCY_KEY_IN_USE"));
        if via == Via::Rest {
            assert_eq!(f.http, Some(409));
        }
    }
    assert_eq!(intents(&app), 2);
}

#[tokio::test]
async fn keys_are_scoped_to_the_api_key_that_sent_them() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    app.call_keyed(Via::Rest, "CreatePayment", payment(&customer), Some("shared")).await.0.unwrap();
    let auth = amazing_payments::app::AuthSettings::new(
        true,
        amazing_payments::secret::Secret::new(crate::common::PEPPER),
        Duration::ZERO,
    );
    let other = amazing_payments::app::apikeys::create(
        &app.db,
        &auth,
        "other",
        &amazing_payments::domain::scopes::Scope::ALL,
        None,
    )
    .await
    .unwrap();
    let resp = app
        .http
        .post(format!("{}/v1/payment", app.rest))
        .bearer_auth(other.key.expose())
        .header("Idempotency-Key", "shared")
        .json(&payment(&customer))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    assert_eq!(intents(&app), 2);
}

#[tokio::test]
async fn a_decline_is_a_final_answer_and_is_replayed_as_such() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let mut body = payment(&customer);
        body["payment_method"] = json!("pm_card_chargeDeclined");
        let key = format!("declined-{via:?}");
        let (first, _) = app.call_keyed(via, "CreatePayment", body.clone(), Some(&key)).await;
        let (second, replayed) = app.call_keyed(via, "CreatePayment", body, Some(&key)).await;
        let (f1, f2) = (first.unwrap_err(), second.unwrap_err());
        assert!(replayed);
        assert_eq!((f2.code, f2.reason.as_str(), f2.http), (f1.code, "CARD_DECLINED", f1.http));
        assert_eq!(f2.details["paymentID"], f1.details["paymentID"]);
    }
    assert_eq!(intents(&app), 2);
}

#[tokio::test]
async fn after_lost_answers_a_retry_with_the_same_key_finishes_the_same_payment() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        // Stripe creates the intent each time, but every answer is lost
        // (the client's own retries included).
        fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
        let key = format!("lost-{via:?}");
        let f = app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)).await.0.unwrap_err();
        assert_eq!((f.code, f.reason.as_str()), (Code::Unavailable, "STRIPE_UNAVAILABLE"));
        let payment_id = f.details["paymentID"].as_str().unwrap().to_string();
        let pending = app.call(via, "GetPayment", json!({"paymentID": payment_id})).await.unwrap();
        assert_eq!(pending["status"], "pending", "not a success, not a failure: not known yet");

        let (done, replayed) = app.call_keyed(via, "CreatePayment", payment(&customer), Some(&key)).await;
        let done = done.unwrap();
        assert!(!replayed, "finished now, not replayed");
        assert_eq!((id_of(&done), done["status"].as_str()), (payment_id.clone(), Some("authorized")));
    }
    assert_eq!(intents(&app), 2, "Stripe did each payment once, whatever the lost answers");
    assert_eq!(app.count("payment.payment").await, 2);
}

fn id_of(v: &Value) -> String {
    int(v, "paymentID").to_string()
}

/// A service with one payment of 2500 EUR cents authorized; its id.
async fn authorized_payment() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let created = app.call(Via::Grpc, "CreatePayment", payment(&customer)).await.unwrap();
    let id = created["paymentID"].as_str().unwrap().to_string();
    (app, id)
}

/// A payment of 2500 EUR cents, captured at once; its answer.
async fn captured(app: &TestApp, customer: &str) -> Value {
    let mut body = payment(customer);
    body["capture_method"] = json!("automatic");
    app.call(Via::Rest, "CreatePayment", body).await.unwrap()
}

#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_finished_by_the_retry_once() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let p = captured(&app, &customer).await;
    fault(&app, json!({"method": "POST", "path": "/v1/refunds", "drop": "after", "times": 3}));
    let refund = json!({"paymentID": id_of(&p), "amount": 1000});
    let f = app.call_keyed(Via::Grpc, "RefundPayment", refund.clone(), Some("refund-1")).await.0.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    let r = app.call_keyed(Via::Grpc, "RefundPayment", refund, Some("refund-1")).await.0.unwrap();
    assert_eq!((r["status"].as_str(), int(&r, "amount")), (Some("succeeded"), 1000));
    assert_eq!(app.sim.state().data.lock().refunds.values().count(), 1, "refunded once");
    let after = app.call(Via::Rest, "GetPayment", json!({"paymentID": id_of(&p)})).await.unwrap();
    assert_eq!(int(&after, "amount_refunded"), 1000);
}

#[tokio::test]
async fn the_reconciler_finishes_a_payment_whose_answer_never_came() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
    let f = app.call(Via::Rest, "CreatePayment", payment(&customer)).await.unwrap_err();
    let payment_id = f.details["paymentID"].as_str().unwrap().to_string();
    let pass = reconciler::pass(&app.app, &now()).await.unwrap();
    assert_eq!((pass.operations, pass.finished), (1, 1));
    let p = app.call(Via::Grpc, "GetPayment", json!({"paymentID": payment_id, "include_history": true})).await.unwrap();
    assert_eq!(p["status"], "authorized");
    let last = p["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["to_status"].as_str(), last["source"].as_str()), (Some("authorized"), Some("reconciler")));
    assert_eq!(intents(&app), 1);
    let again = reconciler::pass(&app.app, &now()).await.unwrap();
    assert!(!again.busy(), "nothing left: {again:?}");
}

#[tokio::test]
async fn the_reconciler_finishes_an_operation_recorded_just_before_a_crash() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    // As if the process died right after recording, before calling Stripe.
    let metadata = Default::default();
    let (row, _) = payments::insert(
        &app.db,
        NewPayment {
            api_key_id: None,
            request: None,
            claim: None,
            customer_id: customer.parse().unwrap(),
            amount: 700,
            currency: "usd",
            capture_method: "automatic",
            price_id: None,
            quantity: None,
            payment_method: "pm_card_visa",
            description: None,
            metadata: &metadata,
            receipt_email: None,
            return_url: None,
            off_session: false,
        },
    )
    .await
    .unwrap();
    reconciler::pass(&app.app, &now()).await.unwrap();
    let p = app.call(Via::Rest, "GetPayment", json!({"paymentID": row.id.to_string()})).await.unwrap();
    assert_eq!((p["status"].as_str(), int(&p, "amount_captured")), (Some("succeeded"), 700));
    let pi = app.stripe_object(p["stripe_payment_intent_id"].as_str().unwrap());
    assert_eq!(pi["metadata"]["paymentID"], row.id.to_string());
}

#[tokio::test]
async fn the_reconciler_brings_a_payment_finished_in_the_browser_up_to_date() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let mut body = payment(&customer);
    body["payment_method"] = json!("pm_card_authenticationRequired");
    let p = app.call(Via::Rest, "CreatePayment", body).await.unwrap();
    let pi = p["stripe_payment_intent_id"].as_str().unwrap();
    app.http
        .post(format!("{}/_sim/payment_intents/{pi}/authenticate", app.sim.url()))
        .json(&json!({"outcome": "succeed"}))
        .send()
        .await
        .unwrap();
    let pass = reconciler::pass(&app.app, &now()).await.unwrap();
    assert_eq!((pass.payments, pass.corrected), (1, 1));
    let history: Vec<(String, String)> =
        sqlx::query_as("SELECT to_status, source FROM payment.history WHERE payment_id = $1 ORDER BY id")
            .bind(int(&p, "paymentID"))
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(history.last().unwrap(), &("authorized".to_string(), "reconciler".to_string()));
}

#[tokio::test]
async fn expired_idempotency_keys_are_purged() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    app.call_keyed(Via::Rest, "CreatePayment", payment(&customer), Some("old")).await.0.unwrap();
    app.call_keyed(Via::Rest, "CreatePayment", payment(&customer), Some("fresh")).await.0.unwrap();
    sqlx::query("UPDATE auth.idempotency_key SET expires_at = now() - interval '1 second' WHERE key = 'old'")
        .execute(&app.db)
        .await
        .unwrap();
    let pass = reconciler::pass(&app.app, &now()).await.unwrap();
    assert_eq!(pass.purged, 1);
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT key FROM auth.idempotency_key").fetch_all(&app.db).await.unwrap();
    assert_eq!(keys, ["fresh"]);
}

#[tokio::test]
async fn a_customer_whose_answer_was_lost_is_created_once_by_the_retry() {
    let app = TestApp::spawn().await;
    for via in BOTH {
        fault(&app, json!({"method": "POST", "path": "/v1/customers", "drop": "after", "times": 3}));
        let body = json!({"name": format!("Lost {via:?}"), "email": "lost@example.com"});
        let key = format!("customer-{via:?}");
        let f = app.call_keyed(via, "CreateCustomer", body.clone(), Some(&key)).await.0.unwrap_err();
        assert_eq!(f.code, Code::Unavailable);
        let c = app.call_keyed(via, "CreateCustomer", body, Some(&key)).await.0.unwrap();
        assert!(c["stripe_customer_key"].as_str().unwrap().starts_with("cus_"));
    }
    assert_eq!(app.stripe_customers().len(), 2, "one Stripe customer per request");
    assert_eq!(app.count("customer.customer").await, 2);
}

#[tokio::test]
async fn the_reconciler_creates_a_customer_recorded_just_before_a_crash() {
    let app = TestApp::spawn().await;
    fault(&app, json!({"method": "POST", "path": "/v1/customers", "drop": "after", "times": 3}));
    let f =
        app.call(Via::Rest, "CreateCustomer", json!({"name": "Ada", "email": "ada@example.com"})).await.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    assert_eq!(app.count("customer.customer").await, 0, "no customer while Stripe's answer is unknown");
    let pass = reconciler::pass(&app.app, &now()).await.unwrap();
    assert_eq!((pass.operations, pass.finished), (1, 1));
    let (email, key): (String, String) =
        sqlx::query_as("SELECT email, stripe_customer_key FROM customer.customer").fetch_one(&app.db).await.unwrap();
    assert_eq!(email, "ada@example.com");
    assert_eq!(app.stripe_customers().len(), 1);
    assert_eq!(app.stripe_customers()[0]["id"], key);
}

#[tokio::test]
async fn a_product_whose_answers_were_lost_is_made_once_in_stripe() {
    let app = TestApp::spawn().await;
    fault(&app, json!({"method": "POST", "path": "/v1/prices", "drop": "after", "times": 3}));
    let body = json!({"name": "Tea", "unit_amount": 500, "currency": "gbp"});
    let f = app.call_keyed(Via::Grpc, "CreateProduct", body.clone(), Some("tea")).await.0.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    let p = app.call_keyed(Via::Grpc, "CreateProduct", body, Some("tea")).await.0.unwrap();
    assert_eq!(p["prices"].as_array().unwrap().len(), 1);
    let data = app.sim.state().data.lock();
    assert_eq!((data.products.values().count(), data.prices.values().count()), (1, 1));
}

#[tokio::test]
async fn a_keyed_payment_claims_its_key_with_its_record_and_saves_its_answer_with_its_outcome() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let (paid, _) = app.call_keyed(Via::Rest, "CreatePayment", payment(&customer), Some("two-commits")).await;
    let id: i64 = paid.unwrap()["paymentID"].as_str().unwrap().parse().unwrap();
    // now() is its transaction's start, and xmin the last transaction that
    // wrote a row: the key was claimed by the transaction that recorded the
    // payment, and answered by the one that applied Stripe's answer.
    let (same_start, same_writer, state): (bool, bool, String) = sqlx::query_as(
        "SELECT k.created_at = p.created_at, k.xmin::text = p.xmin::text, k.state
         FROM auth.idempotency_key k, payment.payment p WHERE k.key = 'two-commits' AND p.id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(same_start, "the claim is made with the payment's record");
    assert!(same_writer, "the answer is saved with the payment's outcome");
    assert_eq!(state, "done");
    let (again, replayed) = app.call_keyed(Via::Rest, "CreatePayment", payment(&customer), Some("two-commits")).await;
    assert!(replayed);
    assert_eq!(again.unwrap()["paymentID"].as_str(), Some(id.to_string().as_str()));
}

#[tokio::test]
async fn a_capture_retried_after_the_reconciler_finished_it_answers_the_capture_not_already_captured() {
    let (app, id) = authorized_payment().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents/", "drop": "after", "times": 3}));
    let (first, _) = app.call_keyed(Via::Grpc, "CapturePayment", json!({"paymentID": id}), Some("cap-1")).await;
    assert_eq!(first.unwrap_err().code, Code::Unavailable);
    reconciler::until_idle(&app.app, &now()).await.unwrap();
    let (retry, _) = app.call_keyed(Via::Grpc, "CapturePayment", json!({"paymentID": id}), Some("cap-1")).await;
    let retry = retry.expect("the retry learns its capture happened");
    assert_eq!((retry["status"].as_str(), int(&retry, "amount_captured")), (Some("succeeded"), 2500));
}

#[tokio::test]
async fn a_keyed_refund_claims_its_key_with_its_record_and_saves_its_answer_with_its_outcome() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let paid = captured(&app, &customer).await;
    let refund = json!({"paymentID": paid["paymentID"], "amount": 700});
    let (first, _) = app.call_keyed(Via::Rest, "RefundPayment", refund.clone(), Some("refund-two-commits")).await;
    let first = first.unwrap();
    assert_eq!((first["status"].as_str(), int(&first, "amount")), (Some("succeeded"), 700));
    let (same_start, same_writer): (bool, bool) = sqlx::query_as(
        "SELECT k.created_at = r.created_at, k.xmin::text = r.xmin::text
         FROM auth.idempotency_key k, payment.refund r WHERE k.key = 'refund-two-commits' AND r.id = $1",
    )
    .bind(first["refundID"].as_str().unwrap().parse::<i64>().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(same_start, "the claim is made with the refund's record");
    assert!(same_writer, "the answer is saved with the refund's outcome");
    let (again, replayed) = app.call_keyed(Via::Rest, "RefundPayment", refund, Some("refund-two-commits")).await;
    assert!(replayed);
    assert_eq!(again.unwrap(), first, "the replay is the first answer");
}

#[tokio::test]
async fn a_capture_resumed_under_another_key_is_found_by_the_retry_with_that_key() {
    let (app, id) = authorized_payment().await;
    // Every attempt of both requests reaches Stripe and loses its answer.
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents/", "drop": "after", "times": 6}));
    for key in ["cap-a", "cap-b"] {
        let (answer, _) = app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": id}), Some(key)).await;
        assert_eq!(answer.unwrap_err().code, Code::Unavailable, "{key}");
    }
    reconciler::until_idle(&app.app, &now()).await.unwrap();
    let (retry, _) = app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": id}), Some("cap-b")).await;
    let retry = retry.expect("the capture cap-b resumed happened: its retry says so, never ALREADY_CAPTURED");
    assert_eq!((retry["status"].as_str(), int(&retry, "amount_captured")), (Some("succeeded"), 2500));
}
