//! Deadlines, over both transports: a request is answered within
//! REQUEST_TIMEOUT (or the gRPC client's own deadline, if sooner) with
//! DEADLINE_EXCEEDED, and a client that stops waiting, or goes away,
//! cancels nothing: the Stripe call in flight completes and is recorded,
//! with no reconciler running, and a retry with the same idempotency key
//! learns the outcome.

use crate::common::{
    Options, TestApp,
    call::{Via, int},
    reason,
};
use amazing_payments::{proto, server::ConnectionLimits};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;

/// Stripe answers PaymentIntent creations after `ms`, having done the work.
fn slow_stripe(app: &TestApp, ms: u64) {
    app.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/payment_intents", "latency_ms": ms})).unwrap(),
    );
}

fn intents(app: &TestApp) -> usize {
    app.sim.state().data.lock().payment_intents.values().count()
}

/// The payment's status once it is no longer pending (polled for up to
/// 10 s: the work finishes on its own, after the answer).
async fn settled_status(app: &TestApp, id: i64) -> String {
    for _ in 0..200 {
        let status: String = sqlx::query_scalar("SELECT status FROM payment.payment WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if status != "pending" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    "pending".into()
}

async fn only_payment(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT id FROM payment.payment").fetch_one(&app.db).await.unwrap()
}

fn manual(customer: &str) -> Value {
    json!({"customerID": customer, "amount": 2500, "currency": "eur", "payment_method": "pm_card_visa", "capture_method": "manual"})
}

async fn with_timeout(timeout: Duration) -> TestApp {
    let connections = ConnectionLimits { request_timeout: timeout, body_read_timeout: timeout, ..Default::default() };
    TestApp::spawn_with(Options { connections, ..Default::default() }).await
}

#[tokio::test]
async fn a_rest_request_past_its_timeout_is_answered_deadline_exceeded_and_its_payment_is_still_made_and_recorded() {
    let app = with_timeout(Duration::from_millis(300)).await;
    let customer = app.new_customer().await;
    slow_stripe(&app, 1500);
    let (answer, _) = app.call_keyed(Via::Rest, "CreatePayment", manual(&customer), Some("late-rest")).await;
    let late = answer.unwrap_err();
    assert_eq!(
        (late.http, late.code, late.reason.as_str()),
        (Some(504), Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        "{late:?}"
    );
    // While the work still runs, a retry with the key is told so.
    let (busy, _) = app.call_keyed(Via::Rest, "CreatePayment", manual(&customer), Some("late-rest")).await;
    let busy = busy.unwrap_err();
    assert_eq!((busy.http, busy.reason.as_str()), (Some(409), "IDEMPOTENCY_KEY_IN_USE"), "{busy:?}");
    let id = only_payment(&app).await;
    assert_eq!(settled_status(&app, id).await, "authorized", "the work went on and was recorded");
    assert_eq!(intents(&app), 1);
    // The retry with the key learns what happened, without doing it again.
    let (again, replayed) = app.call_keyed(Via::Rest, "CreatePayment", manual(&customer), Some("late-rest")).await;
    let again = again.unwrap();
    assert!(replayed);
    assert_eq!((int(&again, "paymentID"), again["status"].as_str()), (id, Some("authorized")));
    assert_eq!(intents(&app), 1);
}

#[tokio::test]
async fn a_grpc_clients_deadline_is_honoured_and_the_work_still_completes() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    slow_stripe(&app, 1500);
    let request: proto::CreatePaymentRequest = serde_json::from_value(manual(&customer)).unwrap();
    // A raw gRPC call carrying the deadline as any client sends it (tonic's
    // client would also stop waiting itself, racing the server's answer).
    let message = prost::Message::encode_to_vec(&request);
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let started = std::time::Instant::now();
    let answer = h2
        .post(format!("{}/payment.PaymentService/CreatePayment", app.grpc_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .bearer_auth(&app.key)
        .body(framed)
        .send()
        .await
        .unwrap();
    let late = tonic::Status::from_header_map(answer.headers()).expect("a trailers-only gRPC answer");
    assert_eq!((late.code(), reason(&late).as_str()), (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"), "{late:?}");
    assert!(started.elapsed() < Duration::from_millis(1400), "answered at its deadline, not after the work");
    let id = only_payment(&app).await;
    assert_eq!(settled_status(&app, id).await, "authorized");
    assert_eq!(intents(&app), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_nothing_its_payment_is_made_and_recorded() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    slow_stripe(&app, 1000);
    // The client gives up after 200 ms and closes its connection.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let gone = impatient
        .post(format!("{}/v1/payment", app.rest))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "gone-1")
        .json(&manual(&customer))
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()));
    let id = only_payment(&app).await;
    assert_eq!(settled_status(&app, id).await, "authorized", "the Stripe call completed and was recorded");
    let op: (String, i32) = sqlx::query_as("SELECT state, attempts FROM payment.operation WHERE payment_id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(op, ("succeeded".to_string(), 1), "one attempt, finished by the request itself");
    let (again, replayed) = app.call_keyed(Via::Rest, "CreatePayment", manual(&customer), Some("gone-1")).await;
    assert!(replayed, "its answer was saved for the retry");
    assert_eq!(again.unwrap()["status"], "authorized");
    assert_eq!(intents(&app), 1);
}

#[tokio::test]
async fn a_grpc_client_that_resets_its_call_cancels_nothing_its_capture_is_made_and_recorded() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let made = app.call(Via::Grpc, "CreatePayment", manual(&customer)).await.unwrap();
    let id = int(&made, "paymentID");
    app.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/payment_intents/", "latency_ms": 1000})).unwrap(),
    );
    // The client stops waiting at 200 ms, sending no deadline of its own:
    // dropping the call resets its HTTP/2 stream while the capture is at
    // Stripe, and the server's deadline (60 s) is far off.
    let request = app.authed(proto::CapturePaymentRequest { payment_id: id, amount: 0 });
    let mut grpc = app.grpc().await;
    let gone = tokio::time::timeout(Duration::from_millis(200), grpc.capture_payment(request)).await;
    assert!(gone.is_err(), "the client gave up first: {gone:?}");
    drop(grpc);
    let mut captured = String::new();
    for _ in 0..200 {
        captured = sqlx::query_scalar("SELECT status FROM payment.payment WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if captured == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(captured, "succeeded", "the capture completed and was recorded, with no reconciler");
    let state: String =
        sqlx::query_scalar("SELECT state FROM payment.operation WHERE payment_id = $1 AND kind = 'capture'")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(state, "succeeded");
}
