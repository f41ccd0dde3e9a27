//! Money under partial failure: a call that reached Stripe and then could not
//! be retried, a retry after 503, a failed attempt that later succeeds, an
//! idempotency key past its TTL, two deployments on one Stripe account, and
//! one refund's news applied several times at once. Each test names what a
//! caller or Stripe would see if the service got it wrong.

use crate::common::{
    Options, TestApp,
    call::{BOTH, Via, int},
    proxy::Proxy,
};
use amazing_payments::store::webhooks::EventRow;
use serde_json::{Value, json};
use std::{net::SocketAddr, time::Duration};
use tonic::Code;

fn fault(app: &TestApp, rule: Value) {
    app.sim.state().faults.add(serde_json::from_value(rule).unwrap());
}

/// The service reaching the simulator through a proxy the test can close.
async fn behind_proxy() -> (TestApp, Proxy) {
    behind_proxy_with(Options::default()).await
}

async fn behind_proxy_with(options: Options) -> (TestApp, Proxy) {
    let sim = stripe_sim::Simulator::start(stripe_sim::Config::default()).await.unwrap();
    let upstream: SocketAddr = sim.url().trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let app = TestApp::spawn_with(Options {
        stripe_base: Some(format!("http://{}", proxy.addr)),
        simulator: Some(sim),
        ..options
    })
    .await;
    (app, proxy)
}

/// Closes the proxy's port once the simulator has taken the request (its
/// one fault rule has fired): the work goes on at Stripe, and every retry
/// after it cannot connect.
async fn refuse_once_stripe_has_it(app: &TestApp, proxy: &Proxy) {
    while app.sim.state().faults.list().iter().any(|r| r.times != Some(0)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.refuse();
}

/// Applies the webhooks that arrive until the payment satisfies `done` (at
/// most five seconds); the payment then, with its history.
async fn settled(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut now = Value::Null;
    for _ in 0..100 {
        while amazing_payments::workers::webhooks::pass(&app.app, 100).await.unwrap() > 0 {}
        now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id, "include_history": true})).await.unwrap();
        if done(&now) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    now
}

/// Whether `done` holds within five seconds.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn manual_payment(customer: &str, amount: i64) -> Value {
    json!({"customerID": customer, "amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"})
}

/// A payment of `amount` made over REST, captured at once or authorized
/// only; its id.
async fn payment_id(app: &TestApp, customer: &str, amount: i64, captured: bool) -> String {
    let mut body = manual_payment(customer, amount);
    if captured {
        body["capture_method"] = json!("automatic");
    }
    let paid = app.call(Via::Rest, "CreatePayment", body).await.unwrap();
    paid["paymentID"].as_str().unwrap().to_string()
}

/// A Stripe event about `object`, as the webhook worker holds it.
fn event(id: &str, kind: &str, object: Value) -> EventRow {
    EventRow {
        id: id.into(),
        kind: kind.into(),
        payload: sqlx::types::Json(json!({"id": id, "type": kind, "data": {"object": object}})),
        state: "received".into(),
        attempts: 0,
        last_error: None,
        received_at: chrono::Utc::now(),
    }
}

fn intents(app: &TestApp) -> Vec<Value> {
    app.sim.state().data.lock().payment_intents.values().cloned().collect()
}

fn refunds(app: &TestApp) -> Vec<Value> {
    app.sim.state().data.lock().refunds.values().cloned().collect()
}

#[tokio::test]
async fn a_payment_whose_first_attempt_reached_stripe_is_not_recorded_failed_when_the_retry_cannot_connect() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    // The first attempt is done by Stripe, slowly, and its answer is lost;
    // meanwhile the network goes, so the retries cannot even connect.
    fault(
        &app,
        json!({"method": "POST", "path": "/v1/payment_intents", "latency_ms": 400, "drop": "after", "times": 1}),
    );
    let body = manual_payment(&customer, 4200);
    let (first, _) = tokio::join!(
        app.call_keyed(Via::Rest, "CreatePayment", body.clone(), Some("order-77")),
        refuse_once_stripe_has_it(&app, &proxy)
    );
    let failure = first.0.unwrap_err();
    assert_eq!((failure.code, failure.reason.as_str()), (Code::Unavailable, "STRIPE_UNAVAILABLE"));
    assert!(eventually(|| intents(&app).len() == 1).await, "Stripe made the PaymentIntent");
    let status: String = sqlx::query_scalar("SELECT status FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "pending", "the outcome is unknown, not failed");

    proxy.accept_again().await;
    let (retried, _) = app.call_keyed(Via::Rest, "CreatePayment", body, Some("order-77")).await;
    let payment = retried.expect("the retry finishes the same payment");
    assert_eq!(payment["status"], "authorized");
    assert_eq!(int(&payment, "amount_capturable"), 4200);
    assert_eq!(intents(&app).len(), 1, "still one PaymentIntent: nothing charged twice");
}

#[tokio::test]
async fn a_refund_whose_first_attempt_reached_stripe_is_finished_once_not_recorded_failed() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    let mut body = manual_payment(&customer, 5000);
    body["capture_method"] = json!("automatic");
    let payment = app.call(Via::Rest, "CreatePayment", body).await.unwrap();
    let id = payment["paymentID"].as_str().unwrap().to_string();
    fault(&app, json!({"method": "POST", "path": "/v1/refunds", "latency_ms": 400, "drop": "after", "times": 1}));
    let ask = json!({"paymentID": id, "amount": 2000});
    let (first, _) = tokio::join!(
        app.call_keyed(Via::Grpc, "RefundPayment", ask.clone(), Some("refund-1")),
        refuse_once_stripe_has_it(&app, &proxy)
    );
    assert_eq!(first.0.unwrap_err().code, Code::Unavailable);
    assert!(eventually(|| refunds(&app).len() == 1).await, "Stripe refunded");

    proxy.accept_again().await;
    let refund = app.call_keyed(Via::Grpc, "RefundPayment", ask, Some("refund-1")).await.0.unwrap();
    assert_eq!(refund["status"], "succeeded");
    assert_eq!(refunds(&app).len(), 1, "refunded once");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!(int(&now, "amount_refunded"), 2000);
}

#[tokio::test]
async fn a_capture_retried_after_stripe_could_not_be_reached_is_performed_not_answered_unchanged() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    let payment = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 3000)).await.unwrap();
    let id = payment["paymentID"].as_str().unwrap().to_string();
    proxy.refuse();
    for via in [Via::Rest, Via::Grpc] {
        let f = app
            .call_keyed(via, "CapturePayment", json!({"paymentID": id, "amount": 1000}), Some("cap-1"))
            .await
            .0
            .unwrap_err();
        assert_eq!((f.code, f.reason.as_str()), (Code::Unavailable, "STRIPE_UNAVAILABLE"));
    }
    proxy.accept_again().await;
    let (captured, replayed) =
        app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": id, "amount": 1000}), Some("cap-1")).await;
    let captured = captured.unwrap();
    assert!(!replayed, "a 503 is never saved as the answer");
    assert_eq!(captured["status"], "succeeded", "a 200 means the capture happened");
    assert_eq!(int(&captured, "amount_captured"), 1000);
    let pi = app.stripe_object(captured["stripe_payment_intent_id"].as_str().unwrap_or_default());
    assert_eq!((pi["status"].as_str(), pi["amount_received"].as_i64()), (Some("succeeded"), Some(1000)));
}

#[tokio::test]
async fn a_refund_retried_after_stripe_could_not_be_reached_refunds_instead_of_answering_a_failed_refund() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 3000, true).await;
    proxy.refuse();
    let ask = json!({"paymentID": id, "amount": 500});
    assert_eq!(
        app.call_keyed(Via::Rest, "RefundPayment", ask.clone(), Some("r-9")).await.0.unwrap_err().code,
        Code::Unavailable
    );
    proxy.accept_again().await;
    let refund = app.call_keyed(Via::Rest, "RefundPayment", ask, Some("r-9")).await.0.unwrap();
    assert_eq!(refund["status"], "succeeded");
    assert_eq!(refunds(&app).len(), 1);
}

#[tokio::test]
async fn an_operation_stripe_refused_after_a_503_answers_the_refusal_to_the_retry_never_a_200() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 3000, false).await;
    proxy.refuse();
    let ask = json!({"paymentID": id});
    assert_eq!(
        app.call_keyed(Via::Rest, "CapturePayment", ask.clone(), Some("c-2")).await.0.unwrap_err().code,
        Code::Unavailable
    );
    proxy.accept_again().await;
    // Meanwhile Stripe will refuse the capture; the reconciler meets that.
    fault(
        &app,
        json!({"method": "POST", "path": "/v1/payment_intents/", "status": 400, "code": "payment_intent_unexpected_state"}),
    );
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::until_idle(&app.app, &s).await.unwrap();
    let f = app.call_keyed(Via::Rest, "CapturePayment", ask, Some("c-2")).await.0.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::FailedPrecondition, "STRIPE_REFUSED"));
}

#[tokio::test]
async fn a_payment_that_failed_and_then_succeeded_at_stripe_ends_succeeded_here() {
    let app = TestApp::spawn_with(Options { register_webhook: true, ..Default::default() }).await;
    let customer = app.new_customer().await;
    let mut body = manual_payment(&customer, 2500);
    body["payment_method"] = json!("pm_card_chargeDeclined");
    let f = app.call(Via::Rest, "CreatePayment", body).await.unwrap_err();
    assert_eq!(f.reason, "CARD_DECLINED");
    let id = f.details["paymentID"].as_str().unwrap().to_string();
    let pi = intents(&app)[0]["id"].as_str().unwrap().to_string();
    // The customer tries another card in Stripe.js: the same PaymentIntent.
    let confirmed =
        app.stripe_post(&format!("/v1/payment_intents/{pi}/confirm"), &[("payment_method", "pm_card_visa")]).await;
    assert_eq!(confirmed["status"], "requires_capture", "{confirmed}");
    let now = settled(&app, &id, |p| p["status"] == "authorized").await;
    assert_eq!(now["status"], "authorized", "the webhook brings the payment to Stripe's state: {now}");
    assert_eq!(int(&now, "amount_capturable"), 2500);
    let events: Vec<String> =
        sqlx::query_scalar("SELECT type FROM notify.outbox ORDER BY id").fetch_all(&app.db).await.unwrap();
    assert!(
        events.contains(&"payment.failed".to_string()) && events.contains(&"payment.authorized".to_string()),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_failed_payment_whose_customer_completed_it_is_brought_up_to_date_by_the_reconciler() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let mut body = manual_payment(&customer, 2500);
    body["payment_method"] = json!("pm_card_chargeDeclined");
    let id = app.call(Via::Grpc, "CreatePayment", body).await.unwrap_err().details["paymentID"]
        .as_str()
        .unwrap()
        .to_string();
    let pi = intents(&app)[0]["id"].as_str().unwrap().to_string();
    app.stripe_post(&format!("/v1/payment_intents/{pi}/confirm"), &[("payment_method", "pm_card_visa")]).await;
    let s = amazing_payments::workers::reconciler::Settings {
        min_age: Duration::ZERO,
        failed_every: Duration::ZERO,
        ..Default::default()
    };
    let pass = amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    assert_eq!(pass.corrected, 1);
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id, "include_history": true})).await.unwrap();
    assert_eq!(now["status"], "authorized");
    let last = now["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["from_status"].as_str(), last["source"].as_str()), (Some("failed"), Some("reconciler")), "{last}");
}

#[tokio::test]
async fn an_idempotency_key_past_its_ttl_no_longer_resolves_to_its_old_payment() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let a = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 1000)).await.unwrap();
    let b = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 2000)).await.unwrap();
    let (a, b) = (a["paymentID"].as_str().unwrap(), b["paymentID"].as_str().unwrap());
    app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": a}), Some("k")).await.0.unwrap();
    sqlx::query("UPDATE auth.idempotency_key SET expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    let captured = app.call_keyed(Via::Grpc, "CapturePayment", json!({"paymentID": b}), Some("k")).await.0.unwrap();
    assert_eq!(captured["paymentID"], b, "the key now means this request");
    assert_eq!(int(&captured, "amount_captured"), 2000);
}

#[tokio::test]
async fn a_key_once_used_for_another_rpc_is_a_new_key_after_its_ttl_and_never_a_500() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    app.call_keyed(Via::Rest, "CreateCustomer", json!({"name": "B", "email": "b@example.com"}), Some("k2"))
        .await
        .0
        .unwrap();
    // Purged by the reconciler this time, rather than found expired.
    sqlx::query("UPDATE auth.idempotency_key SET expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(amazing_payments::store::idempotency::purge(&app.db, 100).await.unwrap(), 1);
    for via in [Via::Rest, Via::Grpc] {
        let (paid, _) = app.call_keyed(via, "CreatePayment", manual_payment(&customer, 1000), Some("k2")).await;
        paid.expect("a new payment, not an error");
    }
    let customers: i64 = app.count("customer.customer").await;
    assert_eq!(customers, 2);
}

#[tokio::test]
async fn two_deployments_on_one_stripe_account_never_share_an_idempotency_key() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_with(Options { stripe_base: Some(first.sim.url()), ..Default::default() }).await;
    let a = first.call(Via::Rest, "CreateCustomer", json!({"name": "A", "email": "a@example.com"})).await.unwrap();
    let b = second.call(Via::Rest, "CreateCustomer", json!({"name": "B", "email": "b@example.com"})).await.unwrap();
    assert_eq!(a["customerID"], b["customerID"], "both databases number from 1");
    assert_ne!(a["stripe_customer_key"], b["stripe_customer_key"], "each has its own Stripe customer");
    let stripe_b = first.stripe_object(b["stripe_customer_key"].as_str().unwrap());
    assert_eq!(stripe_b["email"], "b@example.com");
    let pa =
        first.call(Via::Rest, "CreatePayment", manual_payment(a["customerID"].as_str().unwrap(), 1100)).await.unwrap();
    let pb =
        second.call(Via::Rest, "CreatePayment", manual_payment(b["customerID"].as_str().unwrap(), 2200)).await.unwrap();
    assert_ne!(pa["stripe_payment_intent_id"], pb["stripe_payment_intent_id"]);
    assert_eq!(int(&pb, "amount_capturable"), 2200);
}

#[tokio::test]
async fn one_refunds_news_applied_many_times_at_once_counts_once() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    let mut stripe_refunds = Vec::new();
    for _ in 0..3 {
        let r = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 300})).await.unwrap();
        stripe_refunds.push(r);
    }
    let first: String = sqlx::query_scalar("SELECT stripe_refund_id FROM payment.refund ORDER BY id LIMIT 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let failed = app.stripe_post(&format!("/_sim/refunds/{first}/fail"), &[]).await;
    assert_eq!(failed["status"], "failed");
    let object = app.stripe_object(&first);
    let event = event("evt_test_refund_failed", "refund.failed", object.clone());
    let results = futures::future::join_all((0..4).map(|_| app.app.apply_event(&event))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    let charge = app.stripe_object(object["charge"].as_str().unwrap());
    assert_eq!(charge["amount_refunded"], 600);
    assert_eq!(int(&now, "amount_refunded"), 600, "the failed refund's 300 came back once");
    assert_eq!(now["status"], "partially_refunded");
}

#[tokio::test]
async fn a_refund_whose_news_comes_before_its_api_call_finished_is_matched_by_our_id() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    // The refund is made but its answer is lost: our row has no Stripe id.
    fault(&app, json!({"method": "POST", "path": "/v1/refunds", "drop": "after"}));
    let f = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 400})).await.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    let object = refunds(&app)[0].clone();
    let event = event("evt_test_refund_created", "refund.created", object.clone());
    app.app.apply_event(&event).await.unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, stripe_refund_id FROM payment.refund").fetch_all(&app.db).await.unwrap();
    assert_eq!(
        rows,
        [("succeeded".to_string(), object["id"].as_str().map(str::to_string))],
        "ours, bound, not a second refund"
    );
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!(int(&now, "amount_refunded"), 400);
}

#[tokio::test]
async fn a_refund_made_at_stripe_outside_the_service_is_recorded() {
    let app = TestApp::spawn_with(Options { register_webhook: true, ..Default::default() }).await;
    let customer = app.new_customer().await;
    let mut body = manual_payment(&customer, 1000);
    body["capture_method"] = json!("automatic");
    let payment = app.call(Via::Rest, "CreatePayment", body).await.unwrap();
    let id = payment["paymentID"].as_str().unwrap().to_string();
    let pi = payment["stripe_payment_intent_id"].as_str().unwrap().to_string();
    app.stripe_post("/v1/refunds", &[("payment_intent", &pi), ("amount", "250")]).await;
    let now = settled(&app, &id, |p| int(p, "amount_refunded") == 250).await;
    assert_eq!(int(&now, "amount_refunded"), 250, "{now}");
    let refunds = app.call(Via::Rest, "ListRefunds", json!({"paymentID": id})).await.unwrap();
    assert_eq!(refunds["refunds"].as_array().map(Vec::len), Some(1), "{refunds}");
}

#[tokio::test]
async fn a_payment_intent_that_does_not_match_found_by_the_reconciler_holds_the_payment_in_its_history() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let mut body = manual_payment(&customer, 1000);
    body["payment_method"] = json!("pm_card_authenticationRequired");
    let payment = app.call(Via::Rest, "CreatePayment", body).await.unwrap();
    assert_eq!(payment["status"], "requires_action");
    let id = payment["paymentID"].as_str().unwrap().to_string();
    // Stripe's copy now says another amount than ours.
    fault(&app, json!({"method": "GET", "path": "/v1/payment_intents/", "tamper": {"amount": 999999}}));
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    let row: (Option<String>, i64) = sqlx::query_as(
        "SELECT integrity_error, (SELECT count(*) FROM payment.history h WHERE h.payment_id = p.id AND h.note LIKE 'integrity check failed%')
         FROM payment.payment p WHERE id = $1",
    )
    .bind(id.parse::<i64>().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(row.0.unwrap().contains("amount 999999"));
    assert_eq!(row.1, 1, "the hold is in the history");
}

#[tokio::test]
async fn a_request_that_outlived_its_lease_cannot_overwrite_the_answer_of_the_retry_that_took_over() {
    use amazing_payments::store::idempotency::{self, Claim};
    let (_, db) = crate::common::migrated_database().await;
    let (lease, ttl) = (Duration::from_millis(100), Duration::from_secs(3600));
    let Claim::Run(first) = idempotency::claim(&db, 1, "k", "CapturePayment", "f", lease, ttl).await.unwrap() else {
        panic!("the first request runs")
    };
    assert!(matches!(idempotency::claim(&db, 1, "k", "CapturePayment", "f", lease, ttl).await.unwrap(), Claim::InUse));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let Claim::Run(retry) = idempotency::claim(&db, 1, "k", "CapturePayment", "f", lease, ttl).await.unwrap() else {
        panic!("the retry takes over a lapsed lease")
    };
    let as_claim =
        |holder| idempotency::NewClaim { rpc: "CapturePayment", fingerprint: "f".into(), lease, ttl, holder };
    idempotency::complete(&db, 1, "k", &as_claim(retry), &json!({"ok": "the retry's"})).await.unwrap();
    idempotency::complete(&db, 1, "k", &as_claim(first), &json!({"ok": "the first's"})).await.unwrap();
    idempotency::release(&db, 1, "k", first).await.unwrap();
    match idempotency::claim(&db, 1, "k", "CapturePayment", "f", lease, ttl).await.unwrap() {
        Claim::Replay(saved) => assert_eq!(saved, json!({"ok": "the retry's"})),
        other => panic!("{other:?}"),
    }
}

fn posts_to(app: &TestApp, prefix: &str) -> usize {
    app.sim.state().received().iter().filter(|r| r.method == "POST" && r.path.starts_with(prefix)).count()
}

#[tokio::test]
async fn a_saved_500_after_stripe_did_the_work_is_settled_by_finding_the_payment_intent() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "saved": "after_work", "times": 1}));
    let paid = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 1500), Some("o-1")).await.0;
    let paid = paid.expect("the PaymentIntent is found by our metadata");
    assert_eq!((paid["status"].as_str(), int(&paid, "amount_capturable")), (Some("authorized"), 1500));
    assert_eq!(intents(&app).len(), 1);
}

#[tokio::test]
async fn a_saved_500_before_any_work_fails_the_payment_and_its_request_is_never_sent_again() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "saved": "before_work", "times": 1}));
    for via in [Via::Rest, Via::Grpc] {
        let f = app.call_keyed(via, "CreatePayment", manual_payment(&customer, 1500), Some("o-2")).await.0.unwrap_err();
        assert_eq!((f.code, f.reason.as_str()), (Code::FailedPrecondition, "STRIPE_FAILED"));
    }
    assert_eq!(intents(&app).len(), 0, "nothing charged");
    let sent = posts_to(&app, "/v1/payment_intents");
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::until_idle(&app.app, &s).await.unwrap();
    assert_eq!(posts_to(&app, "/v1/payment_intents"), sent, "settled: never sent again");
    let status: String = sqlx::query_scalar("SELECT status FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "failed");
    let paid = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 1500), Some("o-3")).await.0;
    assert_eq!(paid.unwrap()["status"], "authorized", "a new key takes the payment");
}

#[tokio::test]
async fn a_refund_whose_500_was_saved_after_the_work_is_found_and_counted_once() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    fault(&app, json!({"method": "POST", "path": "/v1/refunds", "saved": "after_work", "times": 1}));
    let refund = app.call_keyed(Via::Grpc, "RefundPayment", json!({"paymentID": id, "amount": 700}), Some("r")).await.0;
    assert_eq!(refund.unwrap()["status"], "succeeded");
    assert_eq!(refunds(&app).len(), 1);
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!(int(&now, "amount_refunded"), 700);
}

#[tokio::test]
async fn a_capture_whose_500_was_saved_before_the_work_fails_and_the_payment_stays_authorized() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, false).await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents/", "saved": "before_work", "times": 1}));
    let f = app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": id}), Some("c")).await.0.unwrap_err();
    assert_eq!(f.reason, "STRIPE_FAILED");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!(now["status"], "authorized");
    let captured = app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": id}), Some("c-again")).await.0;
    assert_eq!(captured.unwrap()["status"], "succeeded");
}

#[tokio::test]
async fn a_customer_whose_500_was_saved_after_the_work_is_found_by_our_metadata() {
    let app = TestApp::spawn().await;
    fault(&app, json!({"method": "POST", "path": "/v1/customers", "saved": "after_work", "times": 1}));
    let c = app
        .call_keyed(Via::Rest, "CreateCustomer", json!({"name": "Ada", "email": "ada@example.com"}), Some("c"))
        .await
        .0
        .expect("found, not failed");
    assert!(c["stripe_customer_key"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(app.stripe_customers().len(), 1);
}

#[tokio::test]
async fn an_operation_in_doubt_past_stripes_key_retention_is_settled_by_lookup_not_sent_again() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, false).await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents/", "drop": "after", "times": 3}));
    assert_eq!(
        app.call(Via::Rest, "CapturePayment", json!({"paymentID": id})).await.unwrap_err().code,
        Code::Unavailable
    );
    sqlx::query("UPDATE payment.operation SET created_at = now() - interval '25 hours' WHERE state = 'pending'")
        .execute(&app.db)
        .await
        .unwrap();
    let sent = posts_to(&app, "/v1/payment_intents/");
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    let pass = amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    assert_eq!((pass.operations, pass.finished), (1, 1));
    assert_eq!(posts_to(&app, "/v1/payment_intents/"), sent, "read back, not sent again");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!((now["status"].as_str(), int(&now, "amount_captured")), (Some("succeeded"), 1000));
}

#[tokio::test]
async fn a_payment_without_a_key_that_never_reached_stripe_fails_and_is_never_sent_later() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    proxy.refuse();
    let f = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 1200)).await.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    proxy.accept_again().await;
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::until_idle(&app.app, &s).await.unwrap();
    assert_eq!(
        intents(&app).len(),
        0,
        "the caller had no key to resume it with: it must not be charged behind its back"
    );
    let (status, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure_code FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!((status.as_str(), code.as_deref()), ("failed", Some("provider_unreachable")));
}

#[tokio::test]
async fn a_key_whose_operation_is_still_pending_outlives_its_ttl_so_the_retry_finds_that_operation() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, false).await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents/", "drop": "before", "times": 3}));
    let ask = json!({"paymentID": id, "amount": 400});
    assert_eq!(
        app.call_keyed(Via::Rest, "CapturePayment", ask.clone(), Some("late")).await.0.unwrap_err().code,
        Code::Unavailable
    );
    sqlx::query("UPDATE auth.idempotency_key SET expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(amazing_payments::store::idempotency::purge(&app.db, 100).await.unwrap(), 0, "kept while pending");
    let captured = app.call_keyed(Via::Rest, "CapturePayment", ask, Some("late")).await.0.unwrap();
    assert_eq!(int(&captured, "amount_captured"), 400);
    let ops: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.operation WHERE kind = 'capture'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(ops, 1, "the retry resumed the first capture, not a second one");
}

#[tokio::test]
async fn a_capture_settled_by_lookup_on_a_payment_canceled_meanwhile_is_refused_not_answered_200() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let payment = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 1000)).await.unwrap();
    let (id, pi) = (payment["paymentID"].as_str().unwrap(), payment["stripe_payment_intent_id"].as_str().unwrap());
    app.stripe_post(&format!("/_sim/payment_intents/{pi}/expire"), &[]).await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents/", "saved": "before_work", "times": 1}));
    let f = app.call_keyed(Via::Rest, "CapturePayment", json!({"paymentID": id}), Some("cap")).await.0.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::FailedPrecondition, "STRIPE_REFUSED"), "{f:?}");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!(now["status"], "canceled", "the payment follows Stripe");
}

#[tokio::test]
async fn a_declined_payment_found_by_lookup_is_answered_as_a_decline() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let mut body = manual_payment(&customer, 1000);
    body["payment_method"] = json!("pm_card_chargeDeclined");
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "saved": "after_work", "times": 1}));
    let f = app.call_keyed(Via::Grpc, "CreatePayment", body, Some("d")).await.0.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::FailedPrecondition, "CARD_DECLINED"), "{f:?}");
}

#[tokio::test]
async fn a_payment_intent_of_ours_found_after_its_operation_was_closed_is_bound_by_its_webhook() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "saved": "before_work", "times": 1}));
    let f = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 1300), Some("late-pi")).await;
    assert_eq!(f.0.unwrap_err().reason, "STRIPE_FAILED");
    // Say the lookup had missed it: the PaymentIntent exists after all.
    let (id, reference): (i64, String) =
        sqlx::query_as("SELECT payment_id, idempotency_key FROM payment.operation WHERE kind = 'create_payment'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let stripe_customer = app.stripe_customers()[0]["id"].as_str().unwrap().to_string();
    let (id_text, amount) = (id.to_string(), "1300".to_string());
    let pi = app
        .stripe_post(
            "/v1/payment_intents",
            &[
                ("amount", &amount),
                ("currency", "usd"),
                ("customer", &stripe_customer),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
                ("capture_method", "manual"),
                ("metadata[paymentID]", &id_text),
                ("metadata[ap_operation]", &reference),
            ],
        )
        .await;
    let event = event("evt_test_found_late", "payment_intent.amount_capturable_updated", pi.clone());
    app.app.apply_event(&event).await.unwrap();
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id_text})).await.unwrap();
    assert_eq!(
        (now["status"].as_str(), now["stripe_payment_intent_id"].as_str()),
        (Some("authorized"), pi["id"].as_str())
    );
    let (retried, replayed) =
        app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 1300), Some("late-pi")).await;
    assert!(!replayed, "the refusal saved for the key was dropped");
    assert_eq!(retried.expect("the retry learns what really happened")["status"], "authorized");
}

#[tokio::test]
async fn a_lookup_reads_every_page_of_the_customers_payment_intents() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
    let f = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 4321), Some("first")).await.0;
    assert_eq!(f.unwrap_err().code, Code::Unavailable);
    for _ in 0..120 {
        payment_id(&app, &customer, 1000, false).await;
    }
    sqlx::query("UPDATE payment.operation SET created_at = now() - interval '25 hours' WHERE state = 'pending'")
        .execute(&app.db)
        .await
        .unwrap();
    let paid = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 4321), Some("first")).await.0;
    let paid = paid.expect("found on the second page of 100");
    assert_eq!((paid["status"].as_str(), int(&paid, "amount_capturable")), (Some("authorized"), 4321));
    assert_eq!(intents(&app).len(), 121, "nothing made twice");
}

/// An app whose simulator keeps every refund pending until the test
/// settles it.
async fn with_pending_refunds() -> TestApp {
    let config = stripe_sim::Config {
        refunds: serde_json::from_value(json!({"pending_rate": 1.0, "settle_after_ms": null})).unwrap(),
        ..Default::default()
    };
    let sim = stripe_sim::Simulator::start(config).await.unwrap();
    TestApp::spawn_with(Options { simulator: Some(sim), ..Default::default() }).await
}

#[tokio::test]
async fn a_pending_refund_is_answered_pending_and_counted_once_the_reconciler_sees_it_succeed() {
    let app = with_pending_refunds().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    let refund = app.call(Via::Grpc, "RefundPayment", json!({"paymentID": id, "amount": 400})).await.unwrap();
    assert_eq!(refund["status"], "pending", "told as it is");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!(int(&now, "amount_refunded"), 0, "not counted while pending");
    let f = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 700})).await.unwrap_err();
    assert_eq!(f.reason, "REFUND_EXCEEDS_CAPTURED", "but it is not refundable twice meanwhile");
    let stripe_id = refunds(&app)[0]["id"].as_str().unwrap().to_string();
    app.stripe_post(&format!("/_sim/refunds/{stripe_id}/succeed"), &[]).await;
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    let pass = amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    assert_eq!((pass.refunds, pass.corrected), (1, 1));
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!((now["status"].as_str(), int(&now, "amount_refunded")), (Some("partially_refunded"), 400));
}

#[tokio::test]
async fn a_pending_refund_that_fails_is_never_counted_and_frees_its_amount() {
    let app = with_pending_refunds().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 1000})).await.unwrap();
    let stripe_id = refunds(&app)[0]["id"].as_str().unwrap().to_string();
    app.stripe_post(&format!("/_sim/refunds/{stripe_id}/fail"), &[]).await;
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    let listed = app.call(Via::Rest, "ListRefunds", json!({"paymentID": id})).await.unwrap();
    assert_eq!(listed["refunds"][0]["status"], "failed");
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": id})).await.unwrap();
    assert_eq!((now["status"].as_str(), int(&now, "amount_refunded")), (Some("succeeded"), 0));
    let again = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 1000})).await;
    assert!(again.is_ok(), "the failed refund's amount may be refunded again: {again:?}");
}

#[tokio::test]
async fn the_reconciler_takes_an_operation_for_longer_than_driving_it_can_take() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
    app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 1000)).await.unwrap_err();
    let claim = Duration::from_secs(120);
    let taken =
        amazing_payments::store::payments::take_due_operations(&app.db, 10, Duration::ZERO, claim).await.unwrap();
    assert_eq!(taken.len(), 1);
    let until: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM payment.operation WHERE state = 'pending'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(until > 110.0, "taken for {until} s only");
    let again =
        amazing_payments::store::payments::take_due_operations(&app.db, 10, Duration::ZERO, claim).await.unwrap();
    assert!(again.is_empty(), "no other reconciler takes it meanwhile");
}

#[tokio::test]
async fn a_refund_answer_that_does_not_match_holds_the_payment_and_is_never_counted() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    fault(&app, json!({"method": "POST", "path": "/v1/refunds", "tamper": {"amount": 999}, "times": 1}));
    let f = app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 300})).await.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::Internal, "STRIPE_MISMATCH"));
    let held: (Option<String>, i64, i64) = sqlx::query_as(
        "SELECT integrity_error, amount_refunded,
                (SELECT count(*) FROM payment.history h WHERE h.payment_id = p.id AND h.note LIKE 'integrity check failed%')
         FROM payment.payment p",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(held.0.unwrap().contains("amount 999 instead of 300"));
    assert_eq!((held.1, held.2), (0, 1), "not counted; the hold is in the history");
}

#[tokio::test]
async fn a_keyless_payment_whose_first_attempt_may_have_reached_stripe_stays_pending_when_a_later_one_cannot_connect() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
    let f = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 2200)).await.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    proxy.refuse();
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "pending", "Stripe made it: a refused connection now proves nothing");
    proxy.accept_again().await;
    sqlx::query("UPDATE payment.operation SET next_attempt_at = now()").execute(&app.db).await.unwrap();
    amazing_payments::workers::reconciler::until_idle(&app.app, &s).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "authorized");
    assert_eq!(intents(&app).len(), 1);
}

#[tokio::test]
async fn an_operation_row_that_cannot_be_read_is_set_aside_and_the_others_are_reconciled() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, false).await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
    app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 700)).await.unwrap_err();
    // A capture row without its amount: written by hand, or by a bug.
    let corrupt: i64 = sqlx::query_scalar(
        "INSERT INTO payment.operation (kind, payment_id, idempotency_key, params) VALUES ('capture', $1, 'ap-corrupt', '{}') RETURNING id",
    )
    .bind(id.parse::<i64>().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    let pass = amazing_payments::workers::reconciler::pass(&app.app, &s).await.expect("the pass goes on");
    assert_eq!(pass.finished, 1, "the readable one was finished");
    let (error, later): (Option<String>, bool) = sqlx::query_as(
        "SELECT last_error, next_attempt_at > now() + interval '23 hours' FROM payment.operation WHERE id = $1",
    )
    .bind(corrupt)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(error.unwrap().contains("amount"), "set aside with its reason");
    assert!(later);
}

#[tokio::test]
async fn a_product_in_doubt_past_stripes_key_retention_is_found_not_made_again() {
    let app = TestApp::spawn().await;
    fault(&app, json!({"method": "POST", "path": "/v1/prices", "drop": "after", "times": 3}));
    let body = json!({"name": "Tea", "unit_amount": 450, "currency": "eur"});
    assert_eq!(app.call(Via::Rest, "CreateProduct", body).await.unwrap_err().code, Code::Unavailable);
    sqlx::query("UPDATE payment.operation SET created_at = now() - interval '25 hours' WHERE state = 'pending'")
        .execute(&app.db)
        .await
        .unwrap();
    let sent = posts_to(&app, "/v1/p");
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    let pass = amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    assert_eq!((pass.operations, pass.finished), (1, 1));
    assert_eq!(posts_to(&app, "/v1/p"), sent, "nothing sent again");
    let products: i64 = app.count("payment.product").await;
    assert_eq!(products, 1, "recorded from what Stripe has");
}

#[tokio::test]
async fn a_key_that_expired_moments_after_its_operation_settled_still_finds_that_operation() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let first = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 900), Some("k9")).await.0.unwrap();
    // A ten-minute key, expired a second ago; its operation settled just now.
    sqlx::query("UPDATE auth.idempotency_key SET created_at = now() - interval '10 minutes', expires_at = now() - interval '1 second', state = 'retryable'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(amazing_payments::store::idempotency::purge(&app.db, 100).await.unwrap(), 0);
    let again = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 900), Some("k9")).await.0.unwrap();
    assert_eq!(again["paymentID"], first["paymentID"], "the same payment, not a second");
    assert_eq!(intents(&app).len(), 1);
}

#[tokio::test]
async fn a_stale_read_of_a_refund_never_moves_it_back_nor_tells_its_failure_twice() {
    let app = with_pending_refunds().await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, true).await;
    app.call(Via::Rest, "RefundPayment", json!({"paymentID": id, "amount": 300})).await.unwrap();
    let refund = refunds(&app)[0].clone();
    let stripe_id = refund["id"].as_str().unwrap().to_string();
    app.stripe_post(&format!("/_sim/refunds/{stripe_id}/fail"), &[]).await;
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    // An older answer, applied late.
    fault(&app, json!({"method": "GET", "path": "/v1/refunds/", "tamper": {"status": "pending"}, "times": 1}));
    let event = event("evt_test_stale", "refund.updated", refund.clone());
    app.app.apply_event(&event).await.unwrap();
    amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM payment.refund").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "failed");
    let told: i64 = sqlx::query_scalar("SELECT count(*) FROM notify.outbox WHERE type = 'refund.failed'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(told, 1);
}

#[tokio::test]
async fn a_late_failed_attempt_does_not_rewrite_why_another_driver_closed_the_operation() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "saved": "before_work", "times": 1}));
    let f = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 800), Some("late")).await.0;
    assert_eq!(f.unwrap_err().reason, "STRIPE_FAILED");
    let op: i64 = sqlx::query_scalar("SELECT id FROM payment.operation WHERE kind = 'create_payment'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    // A second driver's attempt that failed with a 500, noted late.
    amazing_payments::store::payments::note_attempt(&app.db, op, "stripe answered 500: api_error").await.unwrap();
    sqlx::query("UPDATE auth.idempotency_key SET state = 'retryable', response = NULL").execute(&app.db).await.unwrap();
    let f = app.call_keyed(Via::Rest, "CreatePayment", manual_payment(&customer, 800), Some("late")).await.0;
    assert_eq!(f.unwrap_err().reason, "STRIPE_FAILED", "the retry is told what really happened");
}

/// Waits until the request under way has recorded its operation (at most
/// five seconds), then takes it as a reconciler would: that reconciler's
/// send may now be in flight.
async fn take_as_a_reconciler_once_recorded(app: &TestApp) {
    for _ in 0..1000 {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.operation WHERE state = 'pending'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        if recorded > 0 {
            let claim = Duration::from_secs(120);
            let taken = amazing_payments::store::payments::take_due_operations(&app.db, 10, Duration::ZERO, claim)
                .await
                .unwrap();
            assert_eq!(taken.len(), 1);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the request never recorded its operation");
}

#[tokio::test]
async fn a_keyless_payment_the_reconciler_took_while_stripe_was_unreachable_is_left_pending_not_failed() {
    let (app, proxy) = behind_proxy().await;
    let customer = app.new_customer().await;
    proxy.refuse();
    let request = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 1300));
    let (answer, ()) = tokio::join!(request, take_as_a_reconciler_once_recorded(&app));
    let f = answer.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::Unavailable, "STRIPE_UNAVAILABLE"));
    assert!(
        f.message.contains("will be completed"),
        "the caller must learn the payment may still happen: {}",
        f.message
    );
    let status: String = sqlx::query_scalar("SELECT status FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "pending", "the reconciler's send may charge: the payment must not be told failed");
    proxy.accept_again().await;
    sqlx::query("UPDATE payment.operation SET next_attempt_at = now()").execute(&app.db).await.unwrap();
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::until_idle(&app.app, &s).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM payment.payment").fetch_one(&app.db).await.unwrap();
    assert_eq!((status.as_str(), intents(&app).len()), ("authorized", 1));
}

#[tokio::test]
async fn a_keyless_customer_the_reconciler_took_while_stripe_was_unreachable_is_left_pending_not_failed() {
    let (app, proxy) = behind_proxy().await;
    proxy.refuse();
    let request = app.call(Via::Rest, "CreateCustomer", json!({"name": "Grace", "email": "grace@example.com"}));
    let (answer, ()) = tokio::join!(request, take_as_a_reconciler_once_recorded(&app));
    let f = answer.unwrap_err();
    assert_eq!(f.code, Code::Unavailable);
    assert!(f.message.contains("will be completed"), "{}", f.message);
    let state: String = sqlx::query_scalar("SELECT state FROM payment.operation").fetch_one(&app.db).await.unwrap();
    assert_eq!(state, "pending");
    proxy.accept_again().await;
    sqlx::query("UPDATE payment.operation SET next_attempt_at = now()").execute(&app.db).await.unwrap();
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::until_idle(&app.app, &s).await.unwrap();
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.customer WHERE stripe_customer_key IS NOT NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(made, 1, "the customer the reconciler made at Stripe is recorded");
}

#[tokio::test]
async fn a_keyless_capture_another_request_resumed_while_stripe_was_unreachable_is_left_pending_not_failed() {
    let slow = Options { stripe_backoff: Some(Duration::from_millis(400)), ..Default::default() };
    let (app, proxy) = behind_proxy_with(slow).await;
    let customer = app.new_customer().await;
    let id = payment_id(&app, &customer, 1000, false).await;
    proxy.refuse();
    let first = app.call(Via::Rest, "CapturePayment", json!({"paymentID": id}));
    let second = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        app.call(Via::Rest, "CapturePayment", json!({"paymentID": id})).await
    };
    let (first, second) = tokio::join!(first, second);
    for f in [first.unwrap_err(), second.unwrap_err()] {
        assert_eq!(f.code, Code::Unavailable);
        assert!(f.message.contains("will be completed"), "the other request may have captured: {}", f.message);
    }
    let state: String = sqlx::query_scalar("SELECT state FROM payment.operation WHERE kind = 'capture'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(state, "pending", "the second request's send may have captured: never failed behind it");
}

#[tokio::test]
async fn a_key_bound_to_an_operation_but_without_its_row_resumes_that_operation() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "drop": "after", "times": 3}));
    let body = manual_payment(&customer, 1400);
    let (first, _) = app.call_keyed(Via::Rest, "CreatePayment", body.clone(), Some("legacy")).await;
    assert_eq!(first.unwrap_err().code, Code::Unavailable);
    // As bindings older than the key table's rows are.
    sqlx::query("DELETE FROM auth.idempotency_key").execute(&app.db).await.unwrap();
    let (retry, _) = app.call_keyed(Via::Rest, "CreatePayment", body, Some("legacy")).await;
    let retry = retry.expect("the retry resumes the payment its key asked for");
    assert_eq!(retry["status"], "authorized");
    assert_eq!((app.count("payment.payment").await, intents(&app).len()), (1, 1));
}

#[tokio::test]
async fn an_unknown_payment_method_is_404_at_once_and_still_404_after_the_reconciler_closed_it() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let body = json!({"customerID": customer, "amount": 1000, "currency": "usd", "payment_method": "pm_nobody_knows"});
    let first = app.call(Via::Rest, "CreatePayment", body.clone()).await.unwrap_err();
    assert_eq!((first.http, first.reason.as_str()), (Some(404), "PAYMENT_METHOD_NOT_FOUND"));

    // Stripe down while the request runs: the outcome is unknown (503) and the
    // operation stays open; the reconciler then finds Stripe refusing it.
    fault(&app, json!({"method": "POST", "path": "/v1/payment_intents", "status": 503, "times": 3}));
    let (unknown, _) = app.call_keyed(Via::Rest, "CreatePayment", body.clone(), Some("pm-unknown")).await;
    assert_eq!(unknown.unwrap_err().http, Some(503));
    let s = amazing_payments::workers::reconciler::Settings { min_age: Duration::ZERO, ..Default::default() };
    amazing_payments::workers::reconciler::pass(&app.app, &s).await.unwrap();
    for via in BOTH {
        let (again, _) = app.call_keyed(via, "CreatePayment", body.clone(), Some("pm-unknown")).await;
        let again = again.unwrap_err();
        assert_eq!((again.code, again.reason.as_str()), (Code::NotFound, "PAYMENT_METHOD_NOT_FOUND"), "{via:?}");
    }
}

#[tokio::test]
async fn an_operation_recorded_after_its_resumers_transaction_began_is_still_taken_by_it() {
    use amazing_payments::store::payments;
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let paid = app.call(Via::Rest, "CreatePayment", manual_payment(&customer, 1000)).await.unwrap();
    let payment: i64 = paid["paymentID"].as_str().unwrap().parse().unwrap();
    // The resuming request's transaction begins (its now() is fixed then)...
    let mut resumer = app.db.begin().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ...before the request that records the capture inserts it.
    let op: i64 = sqlx::query_scalar(
        "INSERT INTO payment.operation (kind, payment_id, amount, idempotency_key) VALUES ('capture', $1, 1000, 'race') RETURNING id",
    )
    .bind(payment)
    .fetch_one(&app.db)
    .await
    .unwrap();
    payments::mark_taken(&mut resumer, op).await.unwrap();
    resumer.commit().await.unwrap();
    let mut conn = app.db.acquire().await.unwrap();
    assert!(
        !payments::lock_untaken(&mut conn, op).await.unwrap(),
        "the recording request must no longer fail it as never sent: the resumer may be sending it"
    );
}
