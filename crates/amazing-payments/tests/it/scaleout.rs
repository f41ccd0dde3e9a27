//! Scale-out with the parts operators run: the service through PgBouncer
//! (Debian's 1.18, session pooling, with `ops/pgbouncer/pgbouncer.ini`), and
//! three instances behind HAProxy (`ops/haproxy/haproxy.cfg`). What callers
//! saw is asserted, and our records are compared with the simulator's.

use crate::common::{
    cluster::{pgbouncer, wait_for_port},
    procs::{Stack, post_json},
};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn the_service_migrates_and_takes_payments_through_pgbouncer_in_session_pooling() {
    let admin = reqwest::Url::parse(&crate::common::admin_url()).unwrap();
    let (bouncer, port) = pgbouncer(admin.host_str().unwrap(), admin.port().unwrap_or(5432));
    wait_for_port(port).await;
    let (direct, options) = crate::common::fresh_database().await;
    let db = options.get_database().unwrap().to_string();
    let through = format!("postgres://{}@127.0.0.1:{port}/{db}", admin.username());
    let stack = Stack::start_on(through, &[]).await;
    let key = stack.new_key();

    let customer =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Ada", "email": "ada@example.com"}))
            .await;
    let customer = customer["customerID"].as_str().expect("a customer through PgBouncer").to_string();
    // Many requests at once: more than one pooled connection at work, some
    // with the same idempotency key.
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for i in 0..40 {
        let http = http.clone();
        let (url, key, customer) = (format!("{}/v1/payment", stack.rest), key.clone(), customer.clone());
        calls.push(tokio::spawn(async move {
            // Its twin with the same key may be running: told so (409
            // IDEMPOTENCY_KEY_IN_USE), it retries shortly, as a client does.
            loop {
                let status = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("order-{}", i % 20))
                    .json(&json!({"customerID": customer, "amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != 409 {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let payments: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/v1/payment?page_size=100", stack.rest))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["payments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(payments.len(), 20, "one payment per idempotency key");
    let intents: Value = http
        .get(format!("{}/v1/payment_intents?limit=100", stack.sim_url))
        .bearer_auth(crate::common::procs::STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intents["data"].as_array().unwrap().len(), 20, "and one PaymentIntent each at Stripe");

    // What the service wrote is in PostgreSQL, seen directly.
    let direct = sqlx::PgPool::connect(&direct).await.unwrap();
    let (rows, authorized): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'authorized') FROM payment.payment")
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!((rows, authorized), (20, 20));
    drop(bouncer);
}
