//! Reads from a streaming replica (`DATABASE_READ_URL`), with a primary and
//! a standby of the test's own made by `pg_basebackup`: gets and lists go to
//! the replica while it has replayed what they must see, and to the primary
//! while it lags (its replay paused), is down, or was promoted; a caller
//! never reads less than it wrote.

use crate::common::{
    cluster::Cluster,
    procs::{Stack, free_port, get_json, post_json},
};
use serde_json::{Value, json};
use std::time::Duration;

use crate::common::procs::scraped as metric;

/// The service on `primary`'s `payments`, reading from `read_url`, with
/// `extra` settings; its metrics listener's base URL.
async fn with_replica(primary: &Cluster, read_url: String, extra: &[(&str, String)]) -> (Stack, String) {
    let metrics_port = free_port();
    let mut env = vec![("DATABASE_READ_URL", read_url), ("METRICS_PORT", format!("127.0.0.1:{metrics_port}"))];
    env.extend(extra.iter().cloned());
    (Stack::start_on(primary.url("payments"), &env).await, format!("http://127.0.0.1:{metrics_port}"))
}

const ON_REPLICA: &str = r#"amazing_payments_db_reads_total{target="replica"}"#;
const ON_PRIMARY: &str = r#"amazing_payments_db_reads_total{target="primary"}"#;

/// Reads `url` until the replica answers it (a caught-up replica may be a
/// moment behind a write made in the background); the answer.
async fn read_from_replica(metrics: &str, url: &str, key: &str) -> Value {
    for _ in 0..50 {
        let before = metric(metrics, ON_REPLICA).await;
        let read = get_json(url, key).await;
        if metric(metrics, ON_REPLICA).await > before {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the caught-up replica never answered a read of {url}");
}

/// Waits up to 15 s for the health check to report the replica `state`; the report.
async fn replica_becomes(rest: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        last = reqwest::get(format!("{rest}/v1/healthcheck")).await.unwrap().json().await.unwrap();
        if last["replica"]["state"] == state {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica never became {state}: {last}");
}

async fn status_on(db: &sqlx::PgPool, payment: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payment.payment WHERE id = $1")
        .bind(payment.parse::<i64>().unwrap())
        .fetch_optional(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_go_to_a_caught_up_replica_and_to_the_primary_while_it_lags_so_no_caller_reads_less_than_it_wrote() {
    let primary = Cluster::primary();
    let standby = Cluster::standby_of(&primary);
    let (stack, metrics) =
        with_replica(&primary, standby.url("payments"), &[("DATABASE_READ_MAX_LAG", "1".into())]).await;
    let key = stack.new_key();
    let health = replica_becomes(&stack.rest, "up").await;
    assert_eq!(health["isHealthy"], true);
    let rest = &stack.rest;

    // Caught up: a payment made is read back from the replica, at once.
    let customer = post_json(&format!("{rest}/v1/customer"), &key, &json!({"name": "Ada", "email": "ada@example.com"}))
        .await["customerID"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"customerID": customer, "amount": 5000, "currency": "eur", "payment_method": "pm_card_visa", "capture_method": "manual"});
    let payment =
        post_json(&format!("{rest}/v1/payment"), &key, &body).await["paymentID"].as_str().unwrap().to_string();
    assert_eq!(
        read_from_replica(&metrics, &format!("{rest}/v1/payment/{payment}"), &key).await["status"],
        "authorized"
    );

    // The replica stops replaying: what is written now is not on it.
    let replica_db = sqlx::PgPool::connect(&standby.url("payments")).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()").execute(&replica_db).await.unwrap();
    let captured = post_json(&format!("{rest}/v1/payment/{payment}/capture"), &key, &json!({"amount": 3000})).await;
    assert_eq!(captured["status"], "succeeded", "{captured}");
    let newer = post_json(&format!("{rest}/v1/payment"), &key, &body).await["paymentID"].as_str().unwrap().to_string();
    let (on_replica, on_primary) = (metric(&metrics, ON_REPLICA).await, metric(&metrics, ON_PRIMARY).await);

    // Each read right after those writes shows them: the capture, the new
    // payment the replica has never seen, in a get and in the list.
    let read = get_json(&format!("{rest}/v1/payment/{payment}"), &key).await;
    assert_eq!(
        (read["status"].as_str(), read["amount_captured"].as_str()),
        (Some("succeeded"), Some("3000")),
        "{read}"
    );
    let read = get_json(&format!("{rest}/v1/payment/{newer}"), &key).await;
    assert_eq!(read["status"], "authorized", "{read}");
    let list = get_json(&format!("{rest}/v1/payment?customerID={customer}"), &key).await;
    let listed: Vec<&str> =
        list["payments"].as_array().unwrap().iter().map(|p| p["paymentID"].as_str().unwrap()).collect();
    assert_eq!(listed, [newer.as_str(), payment.as_str()], "{list}");
    assert_eq!(metric(&metrics, ON_REPLICA).await, on_replica, "none of them from the lagging replica");
    assert_eq!(metric(&metrics, ON_PRIMARY).await, on_primary + 3.0, "all three from the primary");
    // The replica really is behind: it still has the payment authorized,
    // and not the newer one at all.
    assert_eq!(status_on(&replica_db, &payment).await.as_deref(), Some("authorized"));
    assert_eq!(status_on(&replica_db, &newer).await, None);

    // Health says it lags, and by how much; the service stays healthy.
    let health = replica_becomes(rest, "lagging").await;
    assert_eq!(health["isHealthy"], true);
    assert!(health["replica"]["lagSeconds"].as_f64().unwrap() > 1.0, "{health}");

    // Replay resumes: it catches up and takes reads again.
    sqlx::query("SELECT pg_wal_replay_resume()").execute(&replica_db).await.unwrap();
    let health = replica_becomes(rest, "up").await;
    assert!(health["replica"]["lagSeconds"].as_f64().unwrap() <= 1.0, "{health}");
    assert_eq!(read_from_replica(&metrics, &format!("{rest}/v1/payment/{payment}"), &key).await["status"], "succeeded");

    // The replica goes away: reads are answered by the primary, none fails,
    // and health says it is down.
    replica_db.close().await;
    let on_primary = metric(&metrics, ON_PRIMARY).await;
    assert!(standby.stop());
    for _ in 0..20 {
        let asked = std::time::Instant::now();
        let read =
            reqwest::Client::new().get(format!("{rest}/v1/payment/{payment}")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(read.status(), 200, "a read while the replica is away");
        assert!(asked.elapsed() < Duration::from_millis(1500), "answered without waiting out the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&metrics, ON_PRIMARY).await, on_primary + 20.0, "all by the primary");
    let health = replica_becomes(rest, "down").await;
    assert_eq!(health["isHealthy"], true, "{health}");
    let up: f64 = metric(&metrics, "amazing_payments_db_replica_up").await;
    assert_eq!(up, 0.0);

    // Back, it takes reads again.
    assert!(standby.start());
    replica_becomes(rest, "up").await;
    drop(stack);
}

#[tokio::test]
async fn a_promoted_replica_takes_no_reads_and_health_says_it_is_no_longer_a_replica() {
    let primary = Cluster::primary();
    let standby = Cluster::standby_of(&primary);
    let (stack, metrics) = with_replica(&primary, standby.url("payments"), &[]).await;
    let key = stack.new_key();
    replica_becomes(&stack.rest, "up").await;
    // Promoted, it leaves the primary's history: what the primary takes
    // next is not on it, so it must not answer reads.
    assert!(standby.promote());
    let health = replica_becomes(&stack.rest, "not_a_replica").await;
    assert_eq!(health["isHealthy"], true);
    let customer =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Bo", "email": "bo@example.com"}))
            .await["customerID"]
            .as_str()
            .unwrap()
            .to_string();
    let (on_replica, on_primary) = (metric(&metrics, ON_REPLICA).await, metric(&metrics, ON_PRIMARY).await);
    let read = get_json(&format!("{}/v1/customer/{customer}", stack.rest), &key).await;
    assert_eq!(read["customerID"], customer.as_str(), "{read}");
    assert_eq!(metric(&metrics, ON_REPLICA).await, on_replica);
    assert_eq!(metric(&metrics, ON_PRIMARY).await, on_primary + 1.0, "read from the primary");
    let text = reqwest::get(format!("{metrics}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "amazing_payments_db_replica_lag_seconds NaN"), "an unknown lag is NaN");
}

#[tokio::test]
async fn without_a_read_url_health_reports_no_replica() {
    let stack = Stack::start(&[]).await;
    let health: Value = reqwest::get(format!("{}/v1/healthcheck", stack.rest)).await.unwrap().json().await.unwrap();
    assert_eq!(health, json!({"isHealthy": true}));
}

#[tokio::test]
async fn a_replica_of_another_cluster_takes_no_reads_and_health_says_it_is_detached() {
    let primary = Cluster::primary();
    let other = Cluster::primary();
    let foreign = Cluster::standby_of(&other);
    let (stack, metrics) = with_replica(&primary, foreign.url("postgres"), &[]).await;
    // Its positions are another history's: however far it has replayed,
    // that says nothing of ours.
    let health = replica_becomes(&stack.rest, "detached").await;
    assert_eq!(health["isHealthy"], true);
    let key = stack.new_key();
    let made =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Cy", "email": "cy@example.com"}))
            .await;
    let list =
        reqwest::Client::new().get(format!("{}/v1/customer", stack.rest)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["customers"][0]["customerID"], made["customerID"], "read from our primary: {list}");
    assert_eq!(metric(&metrics, ON_REPLICA).await, 0.0, "the foreign replica took no read");
}

#[tokio::test]
async fn a_write_that_reaches_a_server_taking_no_writes_is_unavailable_not_an_internal_error() {
    use amazing_payments::{
        app::{App, Call, Kind, customers::CreateCustomer},
        domain::customer::{CustomerName, Email},
    };
    let app = crate::common::TestApp::spawn().await;
    // As a write that reaches a standby: the server refuses it (25006).
    let read_only = sqlx::postgres::PgPoolOptions::new()
        .connect_with(app.db_options.clone().options([("default_transaction_read_only", "on")]))
        .await
        .unwrap();
    let on_standby = App { db: read_only, ..app.app.clone() };
    let made = on_standby
        .create_customer(
            CreateCustomer {
                name: CustomerName::parse("Ada").unwrap(),
                email: Email::parse("ada@example.com").unwrap(),
                charge_date: None,
            },
            &Call::default(),
        )
        .await
        .unwrap_err();
    assert_eq!((made.kind, made.reason), (Kind::Unavailable, "DATABASE_UNAVAILABLE"), "{}", made.message);
    let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.customer").fetch_one(&app.db).await.unwrap();
    assert_eq!(customers, 0, "nothing written");
    assert!(app.sim.state().received().is_empty(), "nothing sent to Stripe");
}

#[tokio::test]
async fn a_service_pointed_at_a_standby_refuses_with_503_until_it_is_promoted_then_serves() {
    use crate::common::procs::{PEPPER, service_bin};
    let primary = Cluster::primary();
    // The database and a key, made on the primary before the standby is.
    let run = |args: &[&str]| {
        std::process::Command::new(service_bin())
            .args(args)
            .env("DATABASE_URL", primary.url("payments"))
            .env("API_KEY_PEPPER", PEPPER)
            .output()
            .unwrap()
    };
    assert!(run(&["migrate"]).status.success());
    let made = run(&["apikey", "create", "--name", "failover"]);
    let key = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let standby = Cluster::standby_of(&primary);
    let stack = Stack::start_on(standby.url("payments"), &[("SKIP_MIGRATIONS", "true".into())]).await;
    let create = || async {
        reqwest::Client::new()
            .post(format!("{}/v1/customer", stack.rest))
            .bearer_auth(&key)
            .json(&json!({"name": "Ada", "email": "ada@example.com"}))
            .send()
            .await
            .unwrap()
    };
    // It answers, but takes no writes: every write is refused, at once and
    // as unavailable, never a 500.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..5 {
        let answer = create().await;
        assert_eq!(answer.status(), 503);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["reason"], "DATABASE_UNAVAILABLE", "{body}");
    }
    // The failover finishes: the same instance serves, with no restart.
    assert!(standby.promote());
    let mut status = 0;
    for _ in 0..50 {
        status = create().await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "served once the standby is the primary");
}
