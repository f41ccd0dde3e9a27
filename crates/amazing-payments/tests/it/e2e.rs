//! End to end: the built binaries (`amazing-payments`, `stripe-sim`) as a
//! user runs them, over both transports.

use crate::common::with_key;
use amazing_payments::proto::{GetCustomerRequest, ListCustomersRequest, payment_service_client::PaymentServiceClient};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{process::Command, time::Duration};

use crate::common::procs::{
    PEPPER, STRIPE_KEY, Stack, free_port, get_json, post_json, service_bin, sim_bin, spawn, wait_until_up,
};

#[tokio::test]
async fn the_built_binaries_serve_customers_over_both_transports_and_log_no_secrets() {
    let mut stack = Stack::start(&[]).await;
    let key = stack.new_key();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/v1/customer", stack.rest))
        .bearer_auth(&key)
        .header("x-request-id", "e2e-create-1")
        .json(&json!({"name": "Ada Lovelace", "email": "ada.lovelace@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let created: Value = resp.json().await.unwrap();
    let id: i64 = created["customerID"].as_str().unwrap().parse().unwrap();

    let mut grpc = PaymentServiceClient::connect(stack.grpc.clone()).await.unwrap();
    let fetched = grpc
        .get_customer(with_key(GetCustomerRequest { customer_id: id, ..Default::default() }, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.email, "ada.lovelace@example.com");
    let listed = grpc.list_customers(with_key(ListCustomersRequest::default(), &key)).await.unwrap().into_inner();
    assert_eq!(listed.customers.len(), 1);
    let stripe = get_json(&format!("{}/v1/customers/{}", stack.sim_url, fetched.stripe_customer_key), STRIPE_KEY).await;
    assert_eq!(stripe["email"], "ada.lovelace@example.com");

    stack.service.signal("-TERM");
    assert!(stack.service.wait(Duration::from_secs(10)).await, "a clean exit on SIGTERM");
    let logs = stack.service.logs();
    for secret in ["ada.lovelace@example.com", key.as_str(), &key[12..], STRIPE_KEY, PEPPER] {
        assert!(!logs.contains(secret), "{secret} is in the logs");
    }
    let lines: Vec<Value> = logs.lines().map(|l| serde_json::from_str(l).expect("every log line is JSON")).collect();
    let create_line = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "request"
                && l["fields"]["route"] == "/v1/customer"
                && l["fields"]["method"] == "POST"
        })
        .expect("one access-log line per request");
    assert_eq!(create_line["span"]["request_id"], "e2e-create-1");
    assert_eq!(create_line["fields"]["status"], 200);
    assert!(create_line["fields"]["latency_ms"].as_f64().is_some());
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "customer created" && l["span"]["request_id"] == "e2e-create-1"),
        "the use case's own lines carry the request id"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "request"
            && l["fields"]["route"] == "/payment.PaymentService/GetCustomer"
            && l["span"]["transport"] == "grpc"),
        "a gRPC access-log line names its rpc"
    );
}

#[tokio::test]
async fn a_database_made_by_the_old_service_is_adopted_with_its_customers_kept() {
    let (db_url, options) = crate::common::fresh_database().await;
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    for statement in [
        "CREATE TABLE _yoyo_migration (migration_hash varchar(64) PRIMARY KEY, migration_id varchar(255), applied_at_utc timestamp)",
        "INSERT INTO _yoyo_migration VALUES ('3f1a', '0001.customer', now())",
        "CREATE SCHEMA customer",
        "CREATE FUNCTION customer.update_modified() RETURNS trigger AS $$ BEGIN NEW.modified_at = now(); RETURN NEW; END; $$ LANGUAGE plpgsql",
        "CREATE TABLE customer.customer (id serial PRIMARY KEY, name text, email text NOT NULL, stripe_customer_key text, stripe_charge_date text, created_at timestamp DEFAULT now(), modified_at timestamp DEFAULT now())",
        "CREATE TRIGGER customer_update BEFORE UPDATE ON customer.customer FOR EACH ROW EXECUTE PROCEDURE customer.update_modified()",
        "INSERT INTO customer.customer (name, email, stripe_customer_key, stripe_charge_date) VALUES ('Old Ada', 'ada@old.example', 'cus_old1', '15'), (NULL, 'anon@old.example', 'cus_old2', NULL)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let out = Command::new(service_bin()).arg("migrate").env("DATABASE_URL", &db_url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let stack = Stack::start_on(db_url, &[]).await;
    let key = stack.new_key();
    let old = get_json(&format!("{}/v1/customer/1", stack.rest), &key).await;
    assert_eq!(old["name"], "Old Ada");
    assert_eq!(old["email"], "ada@old.example");
    assert_eq!(old["stripe_customer_key"], "cus_old1");
    assert_eq!(old["stripe_charge_date"], "15");
    let anon = get_json(&format!("{}/v1/customer/2", stack.rest), &key).await;
    assert!(anon.get("name").is_none());
    let new =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "New", "email": "new@example.com"}))
            .await;
    assert_eq!(new["customerID"], "3", "ids continue after the old rows");
    let yoyo: i64 = sqlx::query_scalar("SELECT count(*) FROM _yoyo_migration").fetch_one(&pool).await.unwrap();
    assert_eq!(yoyo, 1, "the old bookkeeping is left alone");
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT modified_at FROM customer.customer WHERE id = 2").fetch_one(&pool).await.unwrap();
    sqlx::query("UPDATE customer.customer SET stripe_charge_date = '1' WHERE id = 2").execute(&pool).await.unwrap();
    let after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT modified_at FROM customer.customer WHERE id = 2").fetch_one(&pool).await.unwrap();
    assert!(after > before, "the old trigger still stamps modified_at");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_before_the_service_exits() {
    let mut stack = Stack::start(&[]).await;
    let key = stack.new_key();
    let http = reqwest::Client::new();
    let slow = json!([{"method": "POST", "path": "/v1/customers", "latency_ms": 1500}]);
    http.post(format!("{}/_sim/faults", stack.sim_url)).json(&slow).send().await.unwrap();
    let request = tokio::spawn({
        let (http, url, key) = (http.clone(), format!("{}/v1/customer", stack.rest), key.clone());
        async move {
            http.post(url).bearer_auth(key).json(&json!({"name": "Slow", "email": "slow@example.com"})).send().await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    stack.service.signal("-TERM");
    let resp = request.await.unwrap().expect("the request in flight is answered");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(stack.service.wait(Duration::from_secs(10)).await, "exit code 0 after draining");
    assert!(http.get(format!("{}/v1/healthcheck", stack.rest)).send().await.is_err(), "no longer listening");
}

/// Runs `serve` with `env` and expects it to fail; its stderr.
fn serve_fails(env: &[(&str, &str)]) -> String {
    let out = Command::new(service_bin())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve must fail with {env:?}");
    String::from_utf8(out.stderr).unwrap()
}

fn error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    errors[0]
}

#[tokio::test]
async fn bad_configuration_stops_serve_with_one_line_naming_the_variable() {
    let stderr = serve_fails(&[]);
    assert!(error_line(&stderr).starts_with("error: STRIPE_KEY: is not set"), "{stderr}");
    let stderr = serve_fails(&[("STRIPE_KEY", STRIPE_KEY), ("DB_PORT", "54x")]);
    assert!(error_line(&stderr).starts_with("error: DB_PORT:"), "{stderr}");
    let stderr = serve_fails(&[("STRIPE_KEY", STRIPE_KEY), ("JSON_PORT", "http")]);
    assert!(error_line(&stderr).starts_with("error: JSON_PORT:"), "{stderr}");
    let stderr = serve_fails(&[("STRIPE_KEY", "pk_test_publishable")]);
    assert!(error_line(&stderr).starts_with("error: STRIPE_KEY: is not a Stripe secret key"), "{stderr}");

    let (db_url, _) = crate::common::fresh_database().await;
    let port = free_port();
    let _sim = spawn(&sim_bin(), &["--port", &port.to_string(), "--api-key", "sk_test_the_only_good_key"], &[]);
    wait_until_up(&format!("http://127.0.0.1:{port}/_sim/health")).await;
    let base = format!("http://127.0.0.1:{port}");
    let stderr = serve_fails(&[("STRIPE_KEY", STRIPE_KEY), ("STRIPE_API_BASE", &base), ("DATABASE_URL", &db_url)]);
    let line = error_line(&stderr);
    assert!(line.starts_with("error: STRIPE_KEY: was rejected by Stripe (401"), "{stderr}");
    assert!(!stderr.contains(STRIPE_KEY), "the key is not printed");
}

#[tokio::test]
async fn api_keys_are_made_listed_and_revoked_with_the_cli() {
    let stack = Stack::start(&[("API_KEY_CACHE_TTL", "1".into())]).await;
    let key = stack.new_key();
    let prefix = &key[..11];
    let http = reqwest::Client::new();
    let url = format!("{}/v1/customer", stack.rest);
    assert_eq!(http.get(&url).bearer_auth(&key).send().await.unwrap().status(), StatusCode::OK);

    let (ok, listed, _) = stack.cli(&["apikey", "list"]);
    assert!(ok);
    let row = listed.lines().find(|l| l.contains(prefix)).expect("the key is listed by prefix");
    assert!(row.contains("active") && row.contains("e2e"));
    assert!(!listed.contains(&key[12..]), "list never shows the key itself");

    let (ok, _, _) = stack.cli(&["apikey", "revoke", prefix]);
    assert!(ok);
    let (_, listed, _) = stack.cli(&["apikey", "list"]);
    assert!(listed.lines().find(|l| l.contains(prefix)).unwrap().contains("revoked"));
    // Refused once the key cache's TTL (1 s here) has passed.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(http.get(&url).bearer_auth(&key).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (ok, _, stderr) = stack.cli(&["apikey", "revoke", prefix]);
    assert!(!ok && stderr.contains("no active API key"));
}

#[tokio::test]
async fn the_cli_makes_scoped_expiring_keys_and_rotates_them() {
    let stack = Stack::start(&[("API_KEY_CACHE_TTL", "0".into())]).await;
    let (ok, reader, stderr) =
        stack.cli(&["apikey", "create", "--name", "reports", "--scope", "read", "--expires", "30d"]);
    assert!(ok, "{stderr}");
    let reader = reader.trim().to_string();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/customer", stack.rest);
    assert_eq!(http.get(&url).bearer_auth(&reader).send().await.unwrap().status(), StatusCode::OK);
    let refused = http
        .post(&url)
        .bearer_auth(&reader)
        .json(&serde_json::json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "INSUFFICIENT_SCOPE");

    let (ok, listed, _) = stack.cli(&["apikey", "list"]);
    assert!(ok);
    let row = listed.lines().find(|l| l.contains(&reader[..11])).expect("listed");
    let expires = (chrono::Utc::now() + chrono::Duration::days(30)).format("%Y-%m-%d").to_string();
    assert!(row.contains(" read ") && row.contains(&expires) && row.contains("reports"), "{row}");

    let (ok, rotated, stderr) = stack.cli(&["apikey", "rotate", &reader[..11], "--grace", "1h"]);
    assert!(ok, "{stderr}");
    let rotated = rotated.trim().to_string();
    assert_ne!(rotated, reader);
    for key in [&reader, &rotated] {
        assert_eq!(http.get(&url).bearer_auth(key).send().await.unwrap().status(), StatusCode::OK, "both work");
    }
    let (_, listed, _) = stack.cli(&["apikey", "list"]);
    let row = listed.lines().find(|l| l.contains(&rotated[..11])).expect("the new key is listed");
    assert!(row.contains(" read ") && row.contains("reports"), "same name and scopes: {row}");

    let (ok, _, stderr) = stack.cli(&["apikey", "create", "--name", "x", "--scope", "superuser"]);
    assert!(!ok && stderr.contains("is no scope"), "{stderr}");
    let (ok, _, stderr) = stack.cli(&["apikey", "create", "--name", "x", "--expires", "soon"]);
    assert!(!ok && stderr.contains("is no time"), "{stderr}");
}

#[tokio::test]
async fn with_auth_disabled_a_warning_is_logged_at_start_and_calls_need_no_key() {
    let stack = Stack::start(&[("AUTH_DISABLED", "true".into())]).await;
    let resp = reqwest::get(format!("{}/v1/customer", stack.rest)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let logs = stack.service.logs();
    assert!(logs.lines().any(|l| l.contains("\"WARN\"") && l.contains("AUTH_DISABLED")), "{logs}");
}

/// The shell block between `<!-- walkthrough -->` and `<!-- /walkthrough -->`.
fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("<!-- walkthrough -->").expect("README has a walkthrough");
    let end = readme.find("<!-- /walkthrough -->").unwrap();
    let block = &readme[start..end];
    let code = block.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    code.to_string()
}

#[tokio::test]
async fn the_readme_payment_walkthrough_runs_as_written() {
    let stack = Stack::start(&[]).await;
    let key = stack.new_key();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &readme_walkthrough()])
        .env("BASE", &stack.rest)
        .env("KEY", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("each step prints one JSON answer")).collect();
    assert_eq!(answers.len(), 4, "{stdout}");
    assert_eq!(
        (answers[0]["status"].as_str(), answers[0]["amount_capturable"].as_str()),
        (Some("authorized"), Some("5000"))
    );
    assert_eq!(
        (answers[1]["status"].as_str(), answers[1]["amount_captured"].as_str()),
        (Some("succeeded"), Some("3000"))
    );
    assert_eq!((answers[2]["status"].as_str(), answers[2]["amount"].as_str()), (Some("succeeded"), Some("1000")));
    let last = &answers[3];
    assert_eq!(last["status"], "partially_refunded");
    assert_eq!((last["amount_captured"].as_str(), last["amount_refunded"].as_str()), (Some("3000"), Some("1000")));
    assert_eq!(last["history"].as_array().unwrap().len(), 4, "pending, authorized, succeeded, partially_refunded");
}

#[tokio::test]
async fn parked_webhook_events_are_listed_and_replayed_with_the_cli() {
    let (db_url, options) = crate::common::fresh_database().await;
    let out = Command::new(service_bin()).arg("migrate").env("DATABASE_URL", &db_url).output().unwrap();
    assert!(out.status.success());
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    sqlx::query("INSERT INTO webhook.event (id, type, payload, state, attempts, last_error) VALUES ('evt_parked', 'payment_intent.succeeded', '{}', 'parked', 8, 'STRIPE_REFUSED: No such payment_intent')")
        .execute(&pool)
        .await
        .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(service_bin()).args(args).env("DATABASE_URL", &db_url).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["webhooks", "list", "--parked"]);
    let row = listed.lines().find(|l| l.starts_with("evt_parked")).expect("the parked event is listed");
    assert!(row.contains("parked") && row.contains("STRIPE_REFUSED"), "{row}");
    assert!(cli(&["webhooks", "replay", "--all"]).starts_with("1 event(s)"));
    let state: String = sqlx::query_scalar("SELECT state FROM webhook.event").fetch_one(&pool).await.unwrap();
    assert_eq!(state, "pending");
    assert!(cli(&["webhooks", "list", "--parked"]).lines().all(|l| !l.starts_with("evt_parked")));
}

#[tokio::test]
async fn serve_starts_while_stripe_is_failing_and_says_so() {
    let (db_url, _) = crate::common::fresh_database().await;
    let port = free_port();
    let faults = r#"[{"path": "/v1/balance", "status": 503}]"#;
    let _sim = spawn(&sim_bin(), &["--port", &port.to_string(), "--faults", faults], &[]);
    wait_until_up(&format!("http://127.0.0.1:{port}/_sim/health")).await;
    let (json_port, rpc_port) = (free_port(), free_port());
    let service = spawn(
        &service_bin(),
        &["serve"],
        &[
            ("DATABASE_URL", db_url),
            ("STRIPE_KEY", STRIPE_KEY.to_string()),
            ("STRIPE_API_BASE", format!("http://127.0.0.1:{port}")),
            ("STRIPE_MAX_RETRIES", "0".to_string()),
            ("JSON_PORT", format!("127.0.0.1:{json_port}")),
            ("RPC_PORT", format!("127.0.0.1:{rpc_port}")),
            ("API_KEY_PEPPER", PEPPER.to_string()),
        ],
    );
    wait_until_up(&format!("http://127.0.0.1:{json_port}/v1/healthcheck")).await;
    assert!(service.logs().contains("STRIPE_KEY could not be checked now: serving anyway"));
}

/// The `Server-Timing` entries of a header value, in milliseconds.
fn server_timing(value: &str) -> std::collections::HashMap<String, f64> {
    value
        .split(',')
        .filter_map(|entry| {
            let (name, dur) = entry.trim().split_once(";dur=")?;
            Some((name.to_string(), dur.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn every_answer_tells_the_caller_how_much_of_its_time_was_stripes_and_the_databases() {
    let stack = Stack::start(&[]).await;
    let key = stack.new_key();
    let http = reqwest::Client::new();
    let slow_stripe = json!([{"method": "POST", "path": "/v1/payment_intents", "latency_ms": 250}]);
    http.post(format!("{}/_sim/faults", stack.sim_url)).json(&slow_stripe).send().await.unwrap();
    let ada = json!({"name": "Ada Lovelace", "email": "ada.lovelace@example.com"});
    let created = post_json(&format!("{}/v1/customer", stack.rest), &key, &ada).await;
    let resp = http
        .post(format!("{}/v1/payment", stack.rest))
        .bearer_auth(&key)
        .json(&json!({"customerID": created["customerID"], "amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let t = server_timing(resp.headers()["server-timing"].to_str().unwrap());
    assert!(t["stripe"] >= 250.0, "Stripe answered after 250 ms: {t:?}");
    assert!(t["db"] > 0.0 && t["db"] < t["total"], "{t:?}");
    assert!(t["total"] >= t["stripe"] + t["db"], "the parts fit in the whole: {t:?}");

    let id: i64 = created["customerID"].as_str().unwrap().parse().unwrap();
    let mut grpc = PaymentServiceClient::connect(stack.grpc.clone()).await.unwrap();
    let read =
        grpc.get_customer(with_key(GetCustomerRequest { customer_id: id, ..Default::default() }, &key)).await.unwrap();
    let t = server_timing(read.metadata().get("server-timing").unwrap().to_str().unwrap());
    assert_eq!(t["stripe"], 0.0, "a read does not call Stripe: {t:?}");
    assert!(t["db"] > 0.0 && t["total"] >= t["db"], "{t:?}");
}

#[tokio::test]
async fn after_sigterm_with_a_shutdown_delay_health_checks_fail_while_requests_are_still_served() {
    let mut stack = Stack::start(&[("SHUTDOWN_DELAY", "2".into())]).await;
    let key = stack.new_key();
    stack.service.signal("-TERM");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let health = reqwest::get(format!("{}/v1/healthcheck", stack.rest)).await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["reason"], "SHUTTING_DOWN");
    let mut grpc = amazing_payments::proto::payment_service_client::PaymentServiceClient::connect(stack.grpc.clone())
        .await
        .unwrap();
    let refused = grpc.health_check(amazing_payments::proto::HealthCheckRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let served =
        reqwest::Client::new().get(format!("{}/v1/customer", stack.rest)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK, "other requests are still served");
    assert!(stack.service.wait(std::time::Duration::from_secs(30)).await, "then it stops cleanly");
}
