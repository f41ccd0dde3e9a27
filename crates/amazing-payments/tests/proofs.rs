//! The exactly-once proofs, run against the built binaries:
//! - concurrency: three service processes on one database, 200 concurrent
//!   create-payment requests over 20 idempotency keys;
//! - faults: the simulator failing 30% of payment calls in mixed ways (lost
//!   answers included) during 200 payments with captures and refunds;
//! - crashes: the service killed with SIGKILL at random moments (at least
//!   20 times, restarted each time) during a stream of payments, captures and
//!   refunds.
//!
//! After each, once reconciled, our books must equal Stripe's (the
//! simulator's) object for object, with nothing done twice.

mod common;

use common::procs::{PEPPER, Proc, STRIPE_KEY, free_port, service_bin, sim_bin, spawn, wait_until_up};
use rand::Rng;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// A local payment: id, status, amount, capturable, captured, refunded, intent.
type LocalPayment = (i64, String, i64, i64, i64, i64, Option<String>);
/// A local refund: id, status, amount, Stripe id.
type LocalRefund = (i64, String, i64, Option<String>);

/// The simulator and the database shared by the service processes.
struct World {
    sim: Proc,
    sim_url: String,
    db_url: String,
    db: PgPool,
    http: reqwest::Client,
}

impl World {
    async fn start(faults: Value) -> Self {
        let (db_url, options) = common::fresh_database().await;
        let port = free_port();
        // Webhooks flow during every proof, 30% of them twice, in any order.
        let webhooks = r#"{"duplicate_rate": 0.3, "max_delay_ms": 200}"#;
        let sim = spawn(
            &sim_bin(),
            &["--port", &port.to_string(), "--faults", &faults.to_string(), "--webhooks", webhooks],
            &[],
        );
        let sim_url = format!("http://127.0.0.1:{port}");
        wait_until_up(&format!("{sim_url}/_sim/health")).await;
        let out = Command::new(service_bin()).arg("migrate").env("DATABASE_URL", &db_url).output().unwrap();
        assert!(out.status.success());
        let db = PgPool::connect_with(options).await.unwrap();
        Self { sim, sim_url, db_url, db, http: reqwest::Client::new() }
    }

    /// Registers a service's webhook endpoint with the simulator; its secret.
    async fn webhook_secret(&self, json_port: u16) -> String {
        common::register_webhook(&self.sim_url, STRIPE_KEY, &format!("http://127.0.0.1:{json_port}/v1/webhooks/stripe"))
            .await
    }

    /// Webhook events applied, and parked, across the instances.
    async fn webhook_counts(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*) FILTER (WHERE state = 'processed'), count(*) FILTER (WHERE state = 'parked') FROM webhook.event")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    async fn env(&self, json_port: u16, rpc_port: u16, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("STRIPE_WEBHOOK_SECRET", self.webhook_secret(json_port).await),
            ("DATABASE_URL", self.db_url.clone()),
            ("STRIPE_KEY", STRIPE_KEY.to_string()),
            ("STRIPE_API_BASE", self.sim_url.clone()),
            ("JSON_PORT", format!("127.0.0.1:{json_port}")),
            ("RPC_PORT", format!("127.0.0.1:{rpc_port}")),
            ("API_KEY_PEPPER", PEPPER.to_string()),
            ("SKIP_MIGRATIONS", "true".to_string()),
            ("STRIPE_TIMEOUT", "5".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        for (k, v) in extra {
            let k: &'static str = Box::leak(k.to_string().into_boxed_str());
            env.push((k, v.to_string()));
        }
        env
    }

    /// Starts a service on fixed ports and waits for it.
    async fn service(&self, json_port: u16, env: &[(&'static str, String)]) -> Proc {
        let p = spawn(&service_bin(), &["serve"], env);
        wait_until_up(&format!("http://127.0.0.1:{json_port}/v1/healthcheck")).await;
        p
    }

    fn api_key(&self) -> String {
        let out = Command::new(service_bin())
            .args(["apikey", "create", "--name", "proof"])
            .env("DATABASE_URL", &self.db_url)
            .env("API_KEY_PEPPER", PEPPER)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    async fn clear_faults(&self) {
        self.http.delete(format!("{}/_sim/faults", self.sim_url)).send().await.unwrap();
    }

    /// Runs `amazing-payments reconcile --once` until nothing is left.
    fn reconcile(&self) {
        let out = Command::new(service_bin())
            .args(["reconcile", "--once"])
            .env("DATABASE_URL", &self.db_url)
            .env("STRIPE_KEY", STRIPE_KEY)
            .env("STRIPE_API_BASE", &self.sim_url)
            .env("RECONCILE_MIN_AGE", "0")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every object of a Stripe list, through the simulator's API.
    async fn stripe_all(&self, path: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}{path}?limit=100", self.sim_url);
            if let Some(a) = &after {
                url.push_str(&format!("&starting_after={a}"));
            }
            let page: Value = self.http.get(&url).bearer_auth(STRIPE_KEY).send().await.unwrap().json().await.unwrap();
            let data = page["data"].as_array().unwrap().clone();
            after = data.last().map(|o| o["id"].as_str().unwrap().to_string());
            all.extend(data);
            if page["has_more"] != true {
                return all;
            }
        }
    }

    /// Our books equal Stripe's, object for object, with nothing twice.
    async fn assert_books_match(&self) {
        let intents = self.stripe_all("/v1/payment_intents").await;
        let charges: HashMap<String, Value> = self
            .stripe_all("/v1/charges")
            .await
            .into_iter()
            .map(|c| (c["id"].as_str().unwrap().to_string(), c))
            .collect();
        let stripe_refunds = self.stripe_all("/v1/refunds").await;
        let payments: Vec<LocalPayment> = sqlx::query_as(
            "SELECT id, status, amount, amount_capturable, amount_captured, amount_refunded, stripe_payment_intent_id FROM payment.payment",
        )
        .fetch_all(&self.db)
        .await
        .unwrap();
        let by_intent: HashMap<&str, &LocalPayment> =
            payments.iter().filter_map(|p| p.6.as_deref().map(|pi| (pi, p))).collect();
        assert_eq!(by_intent.len(), payments.iter().filter(|p| p.6.is_some()).count(), "two payments share an intent");
        assert_eq!(
            intents.len(),
            by_intent.len(),
            "every PaymentIntent has one payment here and every payment one PaymentIntent"
        );
        for pi in &intents {
            let id = pi["id"].as_str().unwrap();
            let local = by_intent.get(id).unwrap_or_else(|| panic!("PaymentIntent {id} has no payment here"));
            assert_eq!(pi["metadata"]["paymentID"], local.0.to_string());
            assert_eq!(pi["amount"].as_i64(), Some(local.2));
            let charge = pi["latest_charge"].as_str().and_then(|c| charges.get(c));
            let expected = match pi["status"].as_str().unwrap() {
                "requires_capture" => ("authorized", pi["amount_capturable"].as_i64().unwrap(), 0, 0),
                "succeeded" => {
                    let refunded = charge.map(|c| c["amount_refunded"].as_i64().unwrap()).unwrap_or(0);
                    let received = pi["amount_received"].as_i64().unwrap();
                    let status = if refunded == 0 {
                        "succeeded"
                    } else if refunded == received {
                        "refunded"
                    } else {
                        "partially_refunded"
                    };
                    (status, 0, received, refunded)
                }
                "canceled" => ("canceled", 0, 0, 0),
                "requires_payment_method" => ("failed", 0, 0, 0),
                other => panic!("PaymentIntent {id} left {other}"),
            };
            assert_eq!((local.1.as_str(), local.3, local.4, local.5), expected, "payment {} against {id}", local.0);
        }
        assert!(payments.iter().all(|p| p.1 != "pending"), "a payment was left pending");

        let refunds: Vec<LocalRefund> =
            sqlx::query_as("SELECT id, status, amount, stripe_refund_id FROM payment.refund")
                .fetch_all(&self.db)
                .await
                .unwrap();
        let local_refunds: BTreeMap<&str, &LocalRefund> =
            refunds.iter().filter_map(|r| r.3.as_deref().map(|s| (s, r))).collect();
        assert_eq!(
            stripe_refunds.len(),
            local_refunds.len(),
            "each Stripe refund once here, each of ours once in Stripe"
        );
        for re in &stripe_refunds {
            let local = local_refunds.get(re["id"].as_str().unwrap()).expect("a Stripe refund we do not know");
            assert_eq!((local.1.as_str(), Some(local.2)), ("succeeded", re["amount"].as_i64()));
            assert_eq!(re["metadata"]["refundID"], local.0.to_string());
        }
        assert!(refunds.iter().all(|r| r.1 != "pending"), "a refund was left pending");
        self.assert_one_event_per_change(&payments).await;
    }

    /// The outbox tells each change once: whatever the retries, replays,
    /// duplicated webhooks and crashes, a payment has one created event, one
    /// capture event if money was captured, one refund event per refund.
    async fn assert_one_event_per_change(&self, payments: &[LocalPayment]) {
        let counts: Vec<(Option<i64>, String, i64)> =
            sqlx::query_as("SELECT payment_id, type, count(*) FROM notify.outbox GROUP BY 1, 2")
                .fetch_all(&self.db)
                .await
                .unwrap();
        let refunds: Vec<(i64, String)> =
            sqlx::query_as("SELECT payment_id, status FROM payment.refund").fetch_all(&self.db).await.unwrap();
        for p in payments {
            let n =
                |kind: &str| -> i64 { counts.iter().filter(|c| c.0 == Some(p.0) && c.1 == kind).map(|c| c.2).sum() };
            let refunds_in = |status: Option<&str>| -> i64 {
                refunds.iter().filter(|r| r.0 == p.0 && status.is_none_or(|s| r.1 == s)).count() as i64
            };
            let what = format!("payment {} ({}, captured {})", p.0, p.1, p.4);
            assert_eq!(n("payment.created"), 1, "{what}");
            assert_eq!(n("payment.succeeded") + n("payment.captured"), i64::from(p.4 > 0), "{what}");
            assert_eq!(n("payment.refunded"), refunds_in(Some("succeeded")), "{what}");
            assert_eq!(n("refund.created"), refunds_in(None), "{what}");
            assert_eq!(n("refund.failed"), refunds_in(Some("failed")), "{what}");
            for once in ["payment.authorized", "payment.failed", "payment.canceled"] {
                assert!(n(once) <= 1, "{what}: {once} {} times", n(once));
            }
        }
    }
}

/// One client call, retried with the same idempotency key as Stripe's own
/// libraries do (409, 503, no answer), until a final answer or `deadline`.
/// Every answer seen is recorded in `seen`.
async fn call(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    idem: &str,
    body: &Value,
    seen: &std::sync::Mutex<Vec<u16>>,
) -> (u16, Value) {
    let start = Instant::now();
    let mut wait = Duration::from_millis(30);
    let mut last = String::from("no answer");
    loop {
        let sent = http
            .post(url)
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(body)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if let Ok(v) = resp.json::<Value>().await {
                    seen.lock().unwrap().push(status);
                    if status != 409 && status != 503 {
                        return (status, v);
                    }
                    last = format!("{status} {v}");
                }
            }
            Err(e) => last = e.to_string(),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{url} {idem}: no final answer in a minute; last: {last}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}

fn new_customer_body() -> Value {
    json!({"name": "Proof", "email": "proof@example.com"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_three_instances_200_requests_over_20_keys_make_20_payments() {
    let world =
        World::start(json!([{"method": "POST", "path": "/v1/payment_intents", "latency_ms": 150, "jitter_ms": 150}]))
            .await;
    let key = world.api_key();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let (j, r) = (free_port(), free_port());
        let env = world.env(j, r, &[]).await;
        instances.push((world.service(j, &env).await, format!("http://127.0.0.1:{j}")));
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_, customer) =
        call(&world.http, &format!("{}/v1/customer", instances[0].1), &key, "customer", &new_customer_body(), &seen)
            .await;
    let customer = customer["customerID"].as_str().unwrap().to_string();
    let requests = (0..200).map(|i| {
        let url = format!("{}/v1/payment", instances[i % 3].1);
        let body = json!({"customerID": customer, "amount": 1000 + (i % 20) * 10, "currency": "usd", "payment_method": "pm_card_visa"});
        let (http, key, seen) = (world.http.clone(), key.clone(), seen.clone());
        tokio::spawn(async move { (i % 20, call(&http, &url, &key, &format!("order-{}", i % 20), &body, &seen).await) })
    });
    let answers = futures::future::join_all(requests).await;
    let mut per_key: HashMap<usize, Vec<Value>> = HashMap::new();
    for a in answers {
        let (k, (status, body)) = a.unwrap();
        assert_eq!(status, 200, "{body}");
        per_key.entry(k).or_default().push(body);
    }
    assert_eq!(per_key.len(), 20);
    for (k, bodies) in &per_key {
        assert!(bodies.iter().all(|b| b == &bodies[0]), "key {k}: answers differ");
    }
    assert_eq!(world.stripe_all("/v1/payment_intents").await.len(), 20, "exactly 20 PaymentIntents in Stripe");
    let local: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.payment").fetch_one(&world.db).await.unwrap();
    assert_eq!(local, 20, "exactly 20 payments here");
    world.assert_books_match().await;
    let (applied, parked) = world.webhook_counts().await;
    assert!(applied > 0 && parked == 0, "webhooks flowed: {applied} applied, {parked} parked");
    drop(instances);
    drop(world.sim);
}

/// Makes, captures and refunds `n` payments through `urls`, as clients that
/// retry; returns how many flows finished.
#[allow(clippy::too_many_arguments)]
async fn payment_flows(
    http: &reqwest::Client,
    urls: &[String],
    key: &str,
    customer: &str,
    workers: usize,
    per_worker: usize,
    tag: &str,
    seen: Arc<std::sync::Mutex<Vec<u16>>>,
    stop: Option<Arc<AtomicBool>>,
) -> usize {
    let done = Arc::new(AtomicUsize::new(0));
    let tasks = (0..workers).map(|w| {
        let (http, urls, key, customer, seen, stop, done, tag) = (http.clone(), urls.to_vec(), key.to_string(), customer.to_string(), seen.clone(), stop.clone(), done.clone(), tag.to_string());
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let more = match &stop { Some(s) => !s.load(Ordering::SeqCst), None => i < per_worker };
                if !more {
                    return;
                }
                let id = format!("{tag}-{w}-{i}");
                let url = &urls[(w + i) % urls.len()];
                let amount = rand::rng().random_range(100..=900) * 10;
                let body = json!({"customerID": customer, "amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"});
                let (status, p) = call(&http, &format!("{url}/v1/payment"), &key, &format!("{id}-pay"), &body, &seen).await;
                assert_eq!(status, 200, "{p}");
                let pid = p["paymentID"].as_str().unwrap().to_string();
                let captured = amount - 100;
                let (status, c) = call(&http, &format!("{url}/v1/payment/{pid}/capture"), &key, &format!("{id}-cap"), &json!({"amount": captured}), &seen).await;
                assert_eq!(status, 200, "{c}");
                for (n, part) in [(1, 300), (2, 200)] {
                    let (status, r) = call(&http, &format!("{url}/v1/payment/{pid}/refund"), &key, &format!("{id}-ref{n}"), &json!({"amount": part}), &seen).await;
                    assert_eq!(status, 200, "{r}");
                }
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    done.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_30_percent_of_stripe_calls_failing_in_mixed_ways_never_duplicate_or_misstate() {
    let mut rules = Vec::new();
    for path in ["/v1/payment_intents", "/v1/refunds"] {
        for r in [
            // Together the five fail 1 - 0.92*0.94*0.95*0.94*0.90 = 30.5% of calls.
            json!({"method": "POST", "path": path, "status": 500, "rate": 0.08}),
            json!({"method": "POST", "path": path, "status": 503, "rate": 0.06}),
            json!({"method": "POST", "path": path, "status": 429, "code": "rate_limit", "rate": 0.05}),
            json!({"method": "POST", "path": path, "drop": "before", "rate": 0.06}),
            json!({"method": "POST", "path": path, "drop": "after", "rate": 0.10}),
        ] {
            rules.push(r);
        }
    }
    let world = World::start(Value::Array(rules)).await;
    let key = world.api_key();
    let mut instances = Vec::new();
    let extra = [("RECONCILE_MIN_AGE", "1"), ("RECONCILE_INTERVAL", "0.5")];
    for _ in 0..2 {
        let (j, r) = (free_port(), free_port());
        let env = world.env(j, r, &extra).await;
        instances.push((world.service(j, &env).await, format!("http://127.0.0.1:{j}")));
    }
    let urls: Vec<String> = instances.iter().map(|i| i.1.clone()).collect();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_, customer) =
        call(&world.http, &format!("{}/v1/customer", urls[0]), &key, "customer", &new_customer_body(), &seen).await;
    let customer = customer["customerID"].as_str().unwrap().to_string();

    let flows = payment_flows(&world.http, &urls, &key, &customer, 20, 10, "fault", seen.clone(), None).await;
    assert_eq!(flows, 200);
    let statuses = seen.lock().unwrap().clone();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "answers other than success or 503: {:?}",
        statuses.iter().filter(|s| **s != 200 && **s != 503).collect::<Vec<_>>()
    );
    assert!(statuses.contains(&503), "the faults reached the clients at least once");

    world.clear_faults().await;
    world.reconcile();
    world.assert_books_match().await;
    assert_eq!(world.stripe_all("/v1/payment_intents").await.len(), 200);
    assert_eq!(world.stripe_all("/v1/refunds").await.len(), 400);
    let (applied, parked) = world.webhook_counts().await;
    assert!(applied > 0 && parked == 0, "webhooks flowed: {applied} applied, {parked} parked");
    drop(instances);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_20_sigkills_during_a_stream_of_payments_lose_nothing_and_do_nothing_twice() {
    let world = World::start(json!([{"path": "/v1/", "latency_ms": 5, "jitter_ms": 40}])).await;
    let key = world.api_key();
    let (j, r) = (free_port(), free_port());
    let env =
        world.env(j, r, &[("IDEMPOTENCY_LEASE", "1"), ("RECONCILE_MIN_AGE", "1"), ("RECONCILE_INTERVAL", "0.5")]).await;
    let url = format!("http://127.0.0.1:{j}");
    let mut service = world.service(j, &env).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_, customer) =
        call(&world.http, &format!("{url}/v1/customer"), &key, "customer", &new_customer_body(), &seen).await;
    let customer = customer["customerID"].as_str().unwrap().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (http, url, key, customer, seen, stop) =
            (world.http.clone(), url.clone(), key.clone(), customer.clone(), seen.clone(), stop.clone());
        tokio::spawn(
            async move { payment_flows(&http, &[url], &key, &customer, 8, 0, "crash", seen, Some(stop)).await },
        )
    };
    let mut kills = 0;
    while kills < 22 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(100..400))).await;
        service.signal("-KILL");
        service.wait(Duration::from_secs(5)).await;
        kills += 1;
        service = world.service(j, &env).await;
    }
    stop.store(true, Ordering::SeqCst);
    let flows = stream.await.unwrap();
    assert!(kills >= 20 && flows > 0, "{kills} kills, {flows} flows");

    world.reconcile();
    world.assert_books_match().await;
    let local: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.payment").fetch_one(&world.db).await.unwrap();
    assert!(local as usize >= flows, "every finished flow has its payment");
    let (applied, parked) = world.webhook_counts().await;
    assert!(applied > 0 && parked == 0, "webhooks flowed: {applied} applied, {parked} parked");
    drop(service);
}
