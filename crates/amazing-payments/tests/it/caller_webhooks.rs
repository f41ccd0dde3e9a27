//! Webhooks to callers (issue 15, first part): endpoints registered over
//! REST and gRPC, every event delivered signed as Standard Webhooks sign,
//! checked by a receiver that verifies with the `standardwebhooks` package
//! from PyPI (not our code); deliveries that survive the receiver's
//! downtime and the service's SIGKILL mid-delivery; retries, the delivery
//! log, redelivery, disabling, rolled secrets; and no delivery to a
//! private address.

use crate::common::{
    Options, TestApp,
    outside::Receiver,
    procs::{Stack, get_json, post_json},
    reason, wait_until,
};
use amazing_payments::{
    app::apikeys,
    domain::scopes::Scope,
    hooks::{Settings, deliverer::Deliverer},
    proto::{CreateWebhookEndpointRequest, GetWebhookEndpointRequest, UpdateWebhookEndpointRequest},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tonic::Code;

/// The ids of the events the service recorded, oldest first.
async fn event_ids(db: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id::text FROM notify.outbox ORDER BY seq").fetch_all(db).await.unwrap()
}

/// A payment flow over REST: a customer, a payment authorized, captured
/// in part and refunded in part.
async fn payment_flow(rest: &str, key: &str, email: &str) -> i64 {
    let c = post_json(&format!("{rest}/v1/customer"), key, &json!({"name": "Ada", "email": email})).await;
    let customer = c["customerID"].as_str().expect("a customer").to_string();
    let p = post_json(
        &format!("{rest}/v1/payment"),
        key,
        &json!({"customerID": customer, "amount": 5000, "currency": "usd",
                "payment_method": "pm_card_visa", "capture_method": "manual"}),
    )
    .await;
    assert_eq!(p["status"], "authorized", "{p}");
    let id = p["paymentID"].as_str().unwrap().to_string();
    let captured = post_json(&format!("{rest}/v1/payment/{id}/capture"), key, &json!({"amount": 4000})).await;
    assert_eq!(captured["status"], "succeeded", "{captured}");
    let refund = post_json(&format!("{rest}/v1/payment/{id}/refund"), key, &json!({"amount": 1500})).await;
    assert_eq!(refund["status"], "succeeded", "{refund}");
    id.parse().unwrap()
}

/// Every delivery verified, its `webhook-id` its body's `id`, each with a
/// `sequence`.
fn assert_all_verified(got: &[crate::common::outside::Delivered]) {
    for d in got {
        assert!(d.verified, "a delivery failed the standardwebhooks check: {} {}", d.error, d.body);
        assert_eq!(d.body["id"], d.id, "webhook-id is the event's id");
        assert!(d.body["sequence"].as_i64().is_some(), "{}", d.body);
    }
}

#[tokio::test]
async fn a_receiver_verifies_every_event_of_a_payment_flow_and_loses_none_through_its_downtime_or_a_sigkill_mid_delivery()
 {
    let mut receiver = Receiver::start().await;
    let env = [
        ("WEBHOOK_ALLOW_PRIVATE", "true".to_string()),
        ("WEBHOOK_RETRY_SCHEDULE", "1s,1s,1s,2s,2s,2s,3s,3s,3s,3s,3s,3s".to_string()),
        // Longer than the receiver's slow answer below: the resend after the
        // SIGKILL can only come from the lost claim's lease running out.
        ("WEBHOOK_TIMEOUT", "6".to_string()),
    ];
    let stack = Stack::start(&env).await;
    let key = stack.new_key();
    let db = PgPool::connect(&stack.db_url).await.unwrap();
    let rest = stack.rest.clone();

    let endpoint = post_json(
        &format!("{rest}/v1/webhook_endpoint"),
        &key,
        &json!({"url": receiver.url(), "event_types": ["*"], "description": "orders service"}),
    )
    .await;
    let secret = endpoint["secret"].as_str().expect("the secret, shown once").to_string();
    assert!(secret.starts_with("whsec_"), "{endpoint}");
    let id = endpoint["endpointID"].as_str().unwrap().to_string();
    let shown = get_json(&format!("{rest}/v1/webhook_endpoint/{id}"), &key).await;
    assert_eq!(shown["secret"], Value::Null, "the secret is never shown again: {shown}");
    receiver.trust(&[&secret]);

    // 1. A payment flow: every event arrives, verified.
    payment_flow(&rest, &key, "ada@example.com").await;
    let ids = event_ids(&db).await;
    assert!(ids.len() >= 6, "customer, payment created, authorized, captured, refund created, refunded: {ids:?}");
    let got = receiver.wait_for_ids(&ids, Duration::from_secs(20)).await;
    assert_all_verified(&got);
    let types: Vec<&str> = got.iter().map(|d| d.body["type"].as_str().unwrap()).collect();
    for t in ["customer.created", "payment.created", "payment.authorized", "payment.captured", "payment.refunded"] {
        assert!(types.contains(&t), "{t} not delivered: {types:?}");
    }

    // 2. The receiver is down: deliveries fail, are logged, and go out
    // once it is back.
    receiver.down();
    payment_flow(&rest, &key, "bob@example.com").await;
    let log_url = format!("{rest}/v1/webhook_endpoint/{id}/deliveries");
    wait_until("failed attempts logged", Duration::from_secs(15), async || {
        let log = get_json(&log_url, &key).await;
        log["deliveries"].as_array().unwrap().iter().any(|d| {
            d["state"] == "pending"
                && d["attempt_log"].as_array().is_some_and(|a| a.iter().any(|x| x["error"].as_str().is_some()))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.up().await;
    let ids = event_ids(&db).await;
    let got = receiver.wait_for_ids(&ids, Duration::from_secs(30)).await;
    assert_all_verified(&got);

    // 3. The service is killed while a delivery is in flight: it is sent
    // again by the service started in its place.
    receiver.slow(Some(3.0));
    let before = receiver.started().len();
    let c = post_json(&format!("{rest}/v1/customer"), &key, &json!({"name": "Cy", "email": "cy@example.com"})).await;
    assert!(c["customerID"].is_string(), "{c}");
    wait_until("a delivery in flight", Duration::from_secs(10), async || receiver.started().len() > before).await;
    let interrupted = receiver.started()[before].clone();
    stack.service.signal("-KILL");
    let mut dead = stack;
    assert!(!dead.service.wait(Duration::from_secs(10)).await, "killed, not exited");
    receiver.slow(None);
    let stack = Stack::start_on(dead.db_url.clone(), &env).await;
    drop(dead);
    let ids = event_ids(&db).await;
    let got = receiver.wait_for_ids(&ids, Duration::from_secs(40)).await;
    assert_all_verified(&got);
    // Its first copy reached the receiver before the kill, but the service
    // never heard the answer: it sends it again once its lease runs out.
    wait_until("the delivery cut by the SIGKILL sent again", Duration::from_secs(40), async || {
        receiver.started().iter().filter(|i| **i == interrupted).count() >= 2
    })
    .await;
    assert_all_verified(&receiver.received());
    // No attempt at it failed: the second send is the lease's doing, not a
    // timed-out attempt's retry.
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hooks.attempt a JOIN hooks.delivery d ON d.id = a.delivery_id
         WHERE d.event_id = $1::uuid AND a.error IS NOT NULL",
    )
    .bind(&interrupted)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(failures, 0);
    // Every event of the service reached the receiver, and the log says so.
    let log = get_json(&format!("{}/v1/webhook_endpoint/{id}/deliveries?page_size=100", stack.rest), &key).await;
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), ids.len(), "one delivery per event: {log}");
    wait_until("every delivery succeeded", Duration::from_secs(15), async || {
        let log = get_json(&format!("{}/v1/webhook_endpoint/{id}/deliveries?page_size=100", stack.rest), &key).await;
        log["deliveries"].as_array().unwrap().iter().all(|d| d["state"] == "succeeded")
    })
    .await;
}

/// A service in process whose deliveries a test drives pass by pass.
async fn app_with(allow_private: bool) -> TestApp {
    TestApp::spawn_with(Options { hooks: Settings { allow_private, ..Settings::default() }, ..Options::default() })
        .await
}

fn deliverer(app: &TestApp, schedule: &[u64], disable_after: Duration) -> Deliverer {
    let settings = Settings {
        allow_private: app.app.hooks.allow_private,
        schedule: schedule.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        disable_after,
        timeout: Duration::from_secs(3),
        ..Settings::default()
    };
    Deliverer::new(app.db.clone(), settings).unwrap()
}

/// Passes until `done`, at most `within`.
async fn deliver_until(d: &Deliverer, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    loop {
        d.pass().await.unwrap();
        if done().await {
            return;
        }
        assert!(start.elapsed() < within, "not done after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(app: &TestApp, url: &str, types: Value) -> Value {
    let (status, body) = app.post("/v1/webhook_endpoint", json!({"url": url, "event_types": types})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn customer(app: &TestApp, email: &str) {
    let (status, body) = app.post("/v1/customer", json!({"name": "Ada", "email": email})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_endpoint_on_a_private_address_is_refused_over_both_transports_and_the_deliverer_never_connects_to_one() {
    let app = app_with(false).await;
    let receiver = Receiver::start().await;
    for url in [
        "https://127.0.0.1/hooks",
        "https://10.0.0.7/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://192.168.1.20:8443/hooks",
    ] {
        let (status, body) = app.post("/v1/webhook_endpoint", json!({"url": url, "event_types": ["*"]})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["reason"], "WEBHOOK_URL_NOT_ALLOWED", "{url}: {body}");
        let refused = app
            .grpc()
            .await
            .create_webhook_endpoint(app.authed(CreateWebhookEndpointRequest {
                url: url.into(),
                event_types: vec!["*".into()],
                description: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!((refused.code(), reason(&refused).as_str()), (Code::InvalidArgument, "WEBHOOK_URL_NOT_ALLOWED"));
    }
    let (status, body) = app.post("/v1/webhook_endpoint", json!({"url": receiver.url(), "event_types": ["*"]})).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_URL")), "plain http: {body}");
    assert_eq!(app.count("hooks.endpoint").await, 0, "nothing registered");

    // An endpoint that came to point at a private address (a name moved,
    // a row written by other means) is not delivered to: the attempt is
    // refused before any connection, and logged.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO hooks.endpoint (url, event_types, secret) VALUES ($1, '{*}', 'whsec_AAAA') RETURNING id",
    )
    .bind(format!("https://127.0.0.1:{}/hooks", receiver.port))
    .fetch_one(&app.db)
    .await
    .unwrap();
    customer(&app, "ada@example.com").await;
    let d = deliverer(&app, &[10_000], Duration::from_secs(3600));
    deliver_until(&d, Duration::from_secs(10), async || app.count("hooks.attempt").await >= 1).await;
    let (endpoint, error): (i64, String) = sqlx::query_as(
        "SELECT d.endpoint_id, a.error FROM hooks.attempt a JOIN hooks.delivery d ON d.id = a.delivery_id",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(endpoint, id);
    assert!(error.contains("not a public address"), "{error}");
    assert!(receiver.started().is_empty(), "the receiver was never reached");
}

#[tokio::test]
async fn a_rolled_secret_signs_beside_the_new_one_until_it_expires_at_once_when_asked() {
    let app = app_with(true).await;
    let receiver = Receiver::start().await;
    let endpoint = register(&app, &receiver.url(), json!(["customer.created"])).await;
    let id = endpoint["endpointID"].as_str().unwrap().to_string();
    let old = endpoint["secret"].as_str().unwrap().to_string();
    let d = deliverer(&app, &[100], Duration::from_secs(3600));

    let (status, rolled) = app.post(&format!("/v1/webhook_endpoint/{id}/roll_secret"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    let new = rolled["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(!rolled["previous_secret_expires_at"].as_str().unwrap_or("").is_empty(), "{rolled}");
    // During the overlap a receiver holding either secret verifies.
    for trusted in [&old, &new] {
        receiver.trust(&[trusted]);
        let n = receiver.received().len();
        customer(&app, &format!("{}@example.com", uuid::Uuid::new_v4().simple())).await;
        deliver_until(&d, Duration::from_secs(10), async || receiver.received().len() > n).await;
        let last = receiver.received().pop().unwrap();
        assert!(last.verified, "{}", last.error);
        assert_eq!(last.signatures, 2, "the new secret's signature and the previous one's");
    }
    // A secret that leaked is cut at once: only the new one signs.
    let (status, cut) =
        app.post(&format!("/v1/webhook_endpoint/{id}/roll_secret"), json!({"expire_previous_now": true})).await;
    assert_eq!(status, StatusCode::OK, "{cut}");
    let newest = cut["secret"].as_str().unwrap().to_string();
    receiver.trust(&[&new]);
    let n = receiver.received().len();
    customer(&app, "cut@example.com").await;
    deliver_until(&d, Duration::from_secs(10), async || receiver.received().len() > n).await;
    let last = receiver.received().pop().unwrap();
    assert!(!last.verified, "the previous secret no longer signs");
    assert_eq!(last.signatures, 1);
    // The receiver refused it (standardwebhooks raised): it answered 200
    // anyway here, so trust the newest and check a fresh delivery.
    receiver.trust(&[&newest]);
    let n = receiver.received().len();
    customer(&app, "newest@example.com").await;
    deliver_until(&d, Duration::from_secs(10), async || receiver.received().len() > n).await;
    assert!(receiver.received().pop().unwrap().verified);
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_on_schedule_then_disabled_with_an_event_and_its_deliveries_redelivered_by_hand()
{
    let app = app_with(true).await;
    let failing = Receiver::start().await;
    let watcher = Receiver::start().await;
    failing.answer(Some(503));
    let endpoint = register(&app, &failing.url(), json!(["customer.created"])).await;
    let id = endpoint["endpointID"].as_str().unwrap().to_string();
    failing.trust(&[endpoint["secret"].as_str().unwrap()]);
    let w = register(&app, &watcher.url(), json!(["webhook_endpoint.disabled"])).await;
    watcher.trust(&[w["secret"].as_str().unwrap()]);

    // Three attempts (the first and two retries), then the delivery fails.
    customer(&app, "ada@example.com").await;
    let d = deliverer(&app, &[200, 200], Duration::from_secs(3600));
    let log_url = format!("/v1/webhook_endpoint/{id}/deliveries");
    deliver_until(&d, Duration::from_secs(15), async || {
        let (_, log) = app.get(&log_url).await;
        log["deliveries"][0]["state"] == "failed"
    })
    .await;
    let (_, log) = app.get(&log_url).await;
    let delivery = &log["deliveries"][0];
    assert_eq!(delivery["attempts"], 3, "{log}");
    let attempts = delivery["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for a in attempts {
        assert_eq!(a["response_status"], 503, "{a}");
        assert!(a["error"].as_str().unwrap().contains("503"), "{a}");
    }
    assert_eq!(failing.received().len(), 3, "three attempts reached the receiver");
    let (_, shown) = app.get(&format!("/v1/webhook_endpoint/{id}")).await;
    assert!(!shown["failing_since"].as_str().unwrap_or("").is_empty(), "{shown}");
    assert_eq!(shown["status"], "enabled", "not failing long enough to be disabled");

    // Redelivered by hand once the receiver is fixed: it arrives.
    failing.answer(None);
    let delivery_id = delivery["deliveryID"].as_str().unwrap();
    let (status, again) = app.post(&format!("{log_url}/{delivery_id}/redeliver"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], "pending");
    deliver_until(&d, Duration::from_secs(10), async || {
        let (_, log) = app.get(&log_url).await;
        log["deliveries"][0]["state"] == "succeeded"
    })
    .await;
    assert!(failing.received().last().unwrap().verified);
    let (_, shown) = app.get(&format!("/v1/webhook_endpoint/{id}")).await;
    assert_eq!(shown["failing_since"], Value::Null, "a success ends the failing run: {shown}");

    // Failing for longer than WEBHOOK_DISABLE_AFTER: disabled, and the
    // endpoints that take webhook_endpoint.disabled are told.
    failing.answer(Some(500));
    let short = deliverer(&app, &[300, 300, 300, 300, 300, 300, 300, 300], Duration::from_secs(1));
    customer(&app, "bob@example.com").await;
    deliver_until(&short, Duration::from_secs(20), async || {
        let (_, shown) = app.get(&format!("/v1/webhook_endpoint/{id}")).await;
        shown["status"] == "disabled"
    })
    .await;
    let (_, shown) = app.get(&format!("/v1/webhook_endpoint/{id}")).await;
    assert_eq!(shown["disabled_reason"], "failing", "{shown}");
    deliver_until(&short, Duration::from_secs(10), async || !watcher.received().is_empty()).await;
    let told = watcher.received().pop().unwrap();
    assert!(told.verified, "{}", told.error);
    assert_eq!(told.body["type"], "webhook_endpoint.disabled");
    assert_eq!(told.body["data"]["webhook_endpoint"]["id"].as_i64().unwrap().to_string(), id);
    // Disabled, nothing is sent; events wait, and go out when enabled.
    let sent = failing.started().len();
    customer(&app, "cy@example.com").await;
    for _ in 0..5 {
        short.pass().await.unwrap();
    }
    assert_eq!(failing.started().len(), sent, "nothing sent to a disabled endpoint");
    let (status, refused) = app.post(&format!("{log_url}/{delivery_id}/redeliver"), json!({})).await;
    assert_eq!((status, refused["reason"].as_str()), (StatusCode::CONFLICT, Some("WEBHOOK_ENDPOINT_DISABLED")));
    failing.answer(None);
    let enabled = app
        .grpc()
        .await
        .update_webhook_endpoint(app.authed(UpdateWebhookEndpointRequest {
            endpoint_id: id.parse().unwrap(),
            disabled: Some(false),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((enabled.status.as_str(), enabled.disabled_reason.as_str()), ("enabled", ""));
    deliver_until(&short, Duration::from_secs(10), async || {
        failing.received().iter().any(|d| d.body["data"]["customer"]["email"] == "cy@example.com")
    })
    .await;
}

#[tokio::test]
async fn endpoints_are_listed_changed_and_deleted_over_both_transports_and_only_an_admin_key_changes_them() {
    let app = app_with(true).await;
    let e =
        register(&app, "http://127.0.0.1:9/in", json!(["payment.captured", "payment.captured", "refund.failed"])).await;
    let id = e["endpointID"].as_str().unwrap().to_string();
    assert_eq!(e["event_types"], json!(["payment.captured", "refund.failed"]), "each type once");
    assert_eq!(e["status"], "enabled");

    let (status, bad) = app
        .post("/v1/webhook_endpoint", json!({"url": "http://127.0.0.1:9/in", "event_types": ["payment.paid"]}))
        .await;
    assert_eq!((status, bad["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_EVENT_TYPE")), "{bad}");
    let (status, bad) =
        app.post("/v1/webhook_endpoint", json!({"url": "http://127.0.0.1:9/in", "event_types": []})).await;
    assert_eq!((status, bad["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("MISSING_EVENT_TYPES")), "{bad}");
    assert_eq!(app.count("hooks.endpoint").await, 1);

    let (status, changed) = app
        .post(
            &format!("/v1/webhook_endpoint/{id}"),
            json!({"event_types": ["*"], "description": "all of it", "disabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!((changed["event_types"].clone(), changed["status"].clone()), (json!(["*"]), json!("disabled")));
    assert_eq!(changed["disabled_reason"], "requested");
    assert_eq!(changed["url"], "http://127.0.0.1:9/in", "unchanged");

    let got = app
        .grpc()
        .await
        .get_webhook_endpoint(app.authed(GetWebhookEndpointRequest { endpoint_id: id.parse().unwrap() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.description.as_str(), got.secret.as_str()), ("all of it", ""));
    let (_, list) = app.get("/v1/webhook_endpoint").await;
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);

    // A key that may read sees them; it may not change them.
    let reader = apikeys::create(&app.db, &app.app.auth, "reader", &[Scope::Read], None).await.unwrap();
    let reader = reader.key.expose().to_string();
    let (status, _) = app.rest_call(Method::GET, "/v1/webhook_endpoint", None, Some(&reader)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) =
        app.rest_call(Method::DELETE, &format!("/v1/webhook_endpoint/{id}"), None, Some(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let writer = apikeys::create(&app.db, &app.app.auth, "writer", &[Scope::Write], None).await.unwrap();
    let (status, _) = app
        .rest_call(
            Method::POST,
            "/v1/webhook_endpoint",
            Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["*"]})),
            Some(writer.key.expose()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.count("hooks.endpoint").await, 1, "nothing written by a refused request");

    let (status, gone) =
        app.rest_call(Method::DELETE, &format!("/v1/webhook_endpoint/{id}"), None, Some(&app.key.clone())).await;
    assert_eq!((status, gone["deleted"].clone()), (StatusCode::OK, json!(true)), "{gone}");
    let (status, missing) = app.get(&format!("/v1/webhook_endpoint/{id}")).await;
    assert_eq!((status, missing["reason"].as_str()), (StatusCode::NOT_FOUND, Some("WEBHOOK_ENDPOINT_NOT_FOUND")));
}

#[tokio::test]
async fn a_name_that_resolves_to_a_private_address_is_never_connected_to() {
    let app = app_with(false).await;
    let receiver = Receiver::start().await;
    // Registered by other means (or a name pointed elsewhere since).
    sqlx::query("INSERT INTO hooks.endpoint (url, event_types, secret) VALUES ($1, '{*}', 'whsec_AAAA')")
        .bind(format!("https://localhost:{}/hooks", receiver.port))
        .execute(&app.db)
        .await
        .unwrap();
    customer(&app, "ada@example.com").await;
    let d = deliverer(&app, &[10_000], Duration::from_secs(3600));
    deliver_until(&d, Duration::from_secs(10), async || app.count("hooks.attempt").await >= 1).await;
    let error: String = sqlx::query_scalar("SELECT error FROM hooks.attempt").fetch_one(&app.db).await.unwrap();
    assert!(error.contains("no public address"), "{error}");
    assert!(receiver.started().is_empty(), "the receiver was never reached");
}

#[tokio::test]
async fn two_deliverers_at_once_send_each_event_once_to_each_endpoint() {
    let app = app_with(true).await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    for r in [&a, &b] {
        let e = register(&app, &r.url(), json!(["customer.created"])).await;
        r.trust(&[e["secret"].as_str().unwrap()]);
    }
    for i in 0..12 {
        customer(&app, &format!("c{i}@example.com")).await;
    }
    let (d1, d2) =
        (deliverer(&app, &[10_000], Duration::from_secs(3600)), deliverer(&app, &[10_000], Duration::from_secs(3600)));
    let start = Instant::now();
    while a.received().len() < 12 || b.received().len() < 12 {
        assert!(start.elapsed() < Duration::from_secs(20), "{} and {} of 12", a.received().len(), b.received().len());
        let (r1, r2) = tokio::join!(d1.pass(), d2.pass());
        r1.unwrap();
        r2.unwrap();
    }
    for _ in 0..3 {
        let (r1, r2) = tokio::join!(d1.pass(), d2.pass());
        r1.unwrap();
        r2.unwrap();
    }
    for r in [&a, &b] {
        let got = r.received();
        let ids: std::collections::HashSet<&str> = got.iter().map(|d| d.id.as_str()).collect();
        assert_eq!((got.len(), ids.len()), (12, 12), "each event once");
        assert_all_verified(&got);
    }
    assert_eq!(app.count("hooks.delivery").await, 24, "one delivery per event and endpoint");
}

#[tokio::test]
async fn an_attempt_whose_claim_was_taken_only_logs_its_outcome_and_a_quiet_gap_ends_a_run_of_failures() {
    use amazing_payments::store::hooks::{self, Failed, Outcome};
    let app = app_with(true).await;
    let receiver = Receiver::start().await;
    let e = register(&app, &receiver.url(), json!(["*"])).await;
    let endpoint: i64 = e["endpointID"].as_str().unwrap().parse().unwrap();
    customer(&app, "ada@example.com").await;
    hooks::fan_out(&app.db, 10).await.unwrap();
    let claimed = hooks::claim(&app.db, 10, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let failure = Outcome { status: Some(500), latency: Duration::from_millis(5), error: Some("500".into()) };
    let (gap, disable_after) = (Duration::from_secs(3600), Duration::from_secs(5 * 86400));

    // Redelivered while the attempt was in flight: its late failure (the
    // last of the schedule) fails nothing, and the redelivery stands.
    let (status, again) =
        app.post(&format!("/v1/webhook_endpoint/{endpoint}/deliveries/{}/redeliver", claimed[0].id), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let late = hooks::failed(&app.db, &claimed[0], &failure, None, gap, disable_after).await.unwrap();
    assert_eq!(late, Failed::Superseded);
    let state: String = sqlx::query_scalar("SELECT state FROM hooks.delivery").fetch_one(&app.db).await.unwrap();
    assert_eq!(state, "pending");
    assert_eq!(app.count("hooks.attempt").await, 1, "the attempt is in the log");
    let failing: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT failing_since FROM hooks.endpoint").fetch_one(&app.db).await.unwrap();
    assert_eq!(failing, None, "a superseded attempt says nothing of the endpoint");

    // Failures ten days apart are not one outage: not disabled.
    sqlx::query("UPDATE hooks.endpoint SET failing_since = now() - interval '10 days', last_failed_at = now() - interval '10 days'")
        .execute(&app.db)
        .await
        .unwrap();
    let held = hooks::claim(&app.db, 10, 10, Duration::from_secs(60)).await.unwrap();
    let r = hooks::failed(&app.db, &held[0], &failure, Some(Duration::ZERO), gap, disable_after).await.unwrap();
    assert_eq!(r, Failed::Retrying);
    let (_, shown) = app.get(&format!("/v1/webhook_endpoint/{endpoint}")).await;
    assert_eq!(shown["status"], "enabled", "{shown}");
    // Failing without a break for longer than WEBHOOK_DISABLE_AFTER: disabled.
    sqlx::query("UPDATE hooks.endpoint SET failing_since = now() - interval '6 days', last_failed_at = now() - interval '1 minute'")
        .execute(&app.db)
        .await
        .unwrap();
    let held = hooks::claim(&app.db, 10, 10, Duration::from_secs(60)).await.unwrap();
    let r = hooks::failed(&app.db, &held[0], &failure, Some(Duration::ZERO), gap, disable_after).await.unwrap();
    assert_eq!(r, Failed::Disabled);
}

#[tokio::test]
async fn the_deliverer_runs_alone_when_serve_does_not_deliver() {
    use crate::common::procs::{service_bin, spawn};
    let receiver = Receiver::start().await;
    let stack = Stack::start(&[("DELIVERER", "false".into()), ("WEBHOOK_ALLOW_PRIVATE", "true".into())]).await;
    let key = stack.new_key();
    let db = PgPool::connect(&stack.db_url).await.unwrap();
    let e = post_json(
        &format!("{}/v1/webhook_endpoint", stack.rest),
        &key,
        &json!({"url": receiver.url(), "event_types": ["customer.created"]}),
    )
    .await;
    receiver.trust(&[e["secret"].as_str().unwrap()]);
    let c =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Ada", "email": "ada@example.com"}))
            .await;
    assert!(c["customerID"].is_string(), "{c}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(receiver.started().is_empty(), "serve with DELIVERER=false sends nothing");
    let _deliverer = spawn(
        &service_bin(),
        &["deliver"],
        &[("DATABASE_URL", stack.db_url.clone()), ("WEBHOOK_ALLOW_PRIVATE", "true".into())],
    );
    let ids = event_ids(&db).await;
    let got = receiver.wait_for_ids(&ids, Duration::from_secs(30)).await;
    assert_all_verified(&got);
}

#[tokio::test]
async fn every_endpoint_rpc_answers_alike_over_rest_and_grpc() {
    use crate::common::call::BOTH;
    let app = app_with(true).await;
    let receiver = Receiver::start().await;
    for via in BOTH {
        let e = app
            .call(via, "CreateWebhookEndpoint", json!({"url": receiver.url(), "event_types": ["customer.created"]}))
            .await
            .unwrap();
        let id = e["endpointID"].clone();
        let first = e["secret"].as_str().unwrap().to_string();
        let rolled =
            app.call(via, "RollWebhookEndpointSecret", json!({"endpointID": id, "overlap_seconds": 60})).await.unwrap();
        assert_ne!(rolled["secret"].as_str().unwrap(), first, "{via:?}");
        receiver.trust(&[rolled["secret"].as_str().unwrap()]);
        let listed = app.call(via, "ListWebhookEndpoints", json!({})).await.unwrap();
        assert!(listed["endpoints"].as_array().unwrap().iter().all(|e| e.get("secret").is_none()), "{listed}");
        customer(&app, &format!("{}@example.com", uuid::Uuid::new_v4().simple())).await;
        let d = deliverer(&app, &[100], Duration::from_secs(3600));
        deliver_until(&d, Duration::from_secs(10), async || {
            let log = app.call(via, "ListWebhookDeliveries", json!({"endpointID": id})).await.unwrap();
            log["deliveries"].as_array().is_some_and(|l| l.iter().any(|x| x["state"] == "succeeded"))
        })
        .await;
        let log = app.call(via, "ListWebhookDeliveries", json!({"endpointID": id, "page_size": 1})).await.unwrap();
        let delivery = log["deliveries"][0]["deliveryID"].clone();
        let again = app.call(via, "RedeliverWebhook", json!({"endpointID": id, "deliveryID": delivery})).await.unwrap();
        assert_eq!(again["state"], "pending", "{via:?}: {again}");
        let gone = app.call(via, "DeleteWebhookEndpoint", json!({"endpointID": id})).await.unwrap();
        assert_eq!(gone["deleted"], true);
        let missing = app.call(via, "GetWebhookEndpoint", json!({"endpointID": id})).await.unwrap_err();
        assert_eq!((missing.code, missing.reason.as_str()), (Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND"), "{via:?}");
    }
}
