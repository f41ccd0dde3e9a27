//! Rate limits per API key, over both transports: a key past its rate is
//! refused at once (429 / RESOURCE_EXHAUSTED, reason RATE_LIMITED, with
//! Retry-After) and nothing is written; every answer tells what is left
//! (`RateLimit-Policy`, `RateLimit`); health checks and Stripe's webhooks are
//! never limited; a key's own limit, set with `apikey rate-limit`, wins.

use crate::common::{Options, TestApp, reason, with_key};
use amazing_payments::proto::{CreateCustomerRequest, HealthCheckRequest};
use serde_json::json;
use tonic::Code;

fn customer(name: &str) -> CreateCustomerRequest {
    CreateCustomerRequest { name: name.into(), email: "ada@example.com".into(), stripe_charge_date: String::new() }
}

#[tokio::test]
async fn past_its_rate_a_key_is_refused_with_retry_after_over_rest_and_nothing_is_written() {
    let app = TestApp::spawn_with(Options { rate_limit: Some(3), ..Default::default() }).await;
    let mut answers = Vec::new();
    for i in 0..4 {
        let resp = app
            .http
            .post(format!("{}/v1/customer", app.rest))
            .bearer_auth(&app.key)
            .json(&json!({"name": format!("Ada {i}"), "email": "ada@example.com"}))
            .send()
            .await
            .unwrap();
        let headers = resp.headers().clone();
        let body: serde_json::Value = resp.json().await.unwrap();
        answers.push((headers, body));
    }
    for (headers, _) in &answers[..3] {
        assert_eq!(headers["ratelimit-policy"], "\"per-key\";q=3;w=1");
    }
    let remaining: Vec<&str> = answers[..3].iter().map(|(h, _)| h["ratelimit"].to_str().unwrap()).collect();
    assert!(
        remaining[0].starts_with("\"per-key\";r=2;") && remaining[2].starts_with("\"per-key\";r=0;"),
        "{remaining:?}"
    );
    let (headers, body) = &answers[3];
    assert_eq!((body["code"].as_i64(), body["reason"].as_str()), (Some(8), Some("RATE_LIMITED")), "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers["ratelimit"].to_str().unwrap().contains("r=0"));
    assert_eq!(app.count("customer.customer").await, 3, "the refused request wrote nothing");
    assert_eq!(app.stripe_customers().len(), 3, "nor reached Stripe");

    let (status, _) = app.get("/v1/healthcheck").await;
    assert_eq!(status, 200, "health checks are never limited");
    let (status, body) = app.get("/v1/customer").await;
    assert_eq!((status.as_u16(), body["reason"].as_str()), (429, Some("RATE_LIMITED")));
    // (The limiter's clock stands still in these tests; refilling is the
    // unit tests' business, `app::ratelimit`.)
}

#[tokio::test]
async fn past_its_rate_a_key_is_resource_exhausted_over_grpc_and_each_answer_says_what_is_left() {
    let app = TestApp::spawn_with(Options { rate_limit: Some(2), ..Default::default() }).await;
    let mut grpc = app.grpc().await;
    let first = grpc.create_customer(with_key(customer("Ada"), &app.key)).await.unwrap();
    assert_eq!(first.metadata().get("ratelimit-policy").unwrap(), "\"per-key\";q=2;w=1");
    assert!(first.metadata().get("ratelimit").unwrap().to_str().unwrap().starts_with("\"per-key\";r=1;"));
    grpc.create_customer(with_key(customer("Grace"), &app.key)).await.unwrap();
    let refused = grpc.create_customer(with_key(customer("Edsger"), &app.key)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"));
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "1");
    assert!(grpc.health_check(HealthCheckRequest {}).await.is_ok(), "health is never limited");
    assert_eq!(app.count("customer.customer").await, 2);
}

#[tokio::test]
async fn a_keys_own_limit_wins_over_the_default() {
    let app = TestApp::spawn_with(Options { rate_limit: Some(1000), ..Default::default() }).await;
    let id: i64 =
        sqlx::query_scalar("SELECT id FROM auth.api_key ORDER BY id LIMIT 1").fetch_one(&app.db).await.unwrap();
    assert!(amazing_payments::store::apikeys::set_rate_limit(&app.db, id, Some(1)).await.unwrap());
    let (status, _) = app.get("/v1/customer").await;
    assert_eq!(status, 200);
    let (status, body) = app.get("/v1/customer").await;
    assert_eq!((status.as_u16(), body["reason"].as_str()), (429, Some("RATE_LIMITED")), "its own 1 a second");
    assert!(!amazing_payments::store::apikeys::set_rate_limit(&app.db, id + 999, Some(1)).await.unwrap());
}
