//! Test harness: a fresh PostgreSQL database per test (from `DATABASE_URL`,
//! a role that may create databases), the Stripe simulator in process, and
//! the service on `127.0.0.1:0` for both transports.
#![allow(dead_code)]

pub mod call;
pub mod cluster;
pub mod outside;
pub mod procs;
pub mod proxy;

use amazing_payments::{
    app::{App, AuthSettings, apikeys},
    config::DbConfig,
    domain::scopes::Scope,
    proto::payment_service_client::PaymentServiceClient,
    secret::Secret,
    server, store, stripe,
};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{ConnectOptions, Connection, PgPool, postgres::PgConnectOptions};
use std::{str::FromStr, time::Duration};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;

pub const STRIPE_KEY: &str = "sk_test_amazing_payments_tests";
pub const PEPPER: &str = "a-pepper-for-the-tests-only";

/// The admin URL tests create their databases with.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A new, empty database, named `ap_test_<random>` (`scripts/test.sh` drops
/// old ones): its URL and connect options.
pub async fn fresh_database() -> (String, PgConnectOptions) {
    let admin = PgConnectOptions::from_str(&admin_url()).expect("DATABASE_URL is a PostgreSQL URL");
    let name = format!("ap_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.expect("PostgreSQL is reachable at DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let mut url = reqwest::Url::parse(&admin_url()).unwrap();
    url.set_path(&name);
    (url.to_string(), admin.database(&name))
}

/// A new database with our migrations applied.
pub async fn migrated_database() -> (PgConnectOptions, PgPool) {
    let (_, options) = fresh_database().await;
    let pool = store::pool(&DbConfig { options: options.clone(), max_connections: 5, read: None });
    store::migrate(&pool).await.unwrap();
    (options, pool)
}

/// Stripe settings for the simulator at `base`, with quick retries.
pub fn stripe_settings(base: &str) -> stripe::Settings {
    let mut s = stripe::Settings::new(base, Secret::new(STRIPE_KEY));
    s.timeout = Duration::from_secs(5);
    s.base_backoff = Duration::from_millis(10);
    s.max_backoff = Duration::from_millis(50);
    s
}

/// How to start the service under test.
pub struct Options {
    pub auth_required: bool,
    /// Connect to the database through this (e.g. a proxy) instead.
    pub db: Option<PgConnectOptions>,
    /// Use this Stripe base instead of the simulator's.
    pub stripe_base: Option<String>,
    pub webhooks: amazing_payments::app::WebhookSettings,
    /// Register the service's webhook endpoint with the simulator (every
    /// event) and use its secret.
    pub register_webhook: bool,
    /// This simulator instead of a new one.
    pub simulator: Option<stripe_sim::Simulator>,
    /// How long a verified API key is trusted (none by default, so that a
    /// revocation shows at once).
    pub key_cache_ttl: Duration,
    /// Requests a second per API key (none by default); the limiter's clock
    /// stands still, so buckets never refill during a test.
    pub rate_limit: Option<u32>,
    /// Requests served at a time.
    pub max_in_flight: usize,
    /// The wait between Stripe attempts, when not the harness's 10 to 50 ms.
    pub stripe_backoff: Option<Duration>,
    /// The listeners' limits (the service's defaults unless a test shortens them).
    pub connections: server::ConnectionLimits,
    /// How webhooks to callers go (public addresses only, by default).
    pub hooks: amazing_payments::hooks::Settings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth_required: true,
            db: None,
            stripe_base: None,
            webhooks: Default::default(),
            register_webhook: false,
            simulator: None,
            key_cache_ttl: Duration::ZERO,
            rate_limit: None,
            max_in_flight: 1024,
            stripe_backoff: None,
            connections: server::ConnectionLimits::default(),
            hooks: Default::default(),
        }
    }
}

/// A running service with its own database and simulator.
pub struct TestApp {
    pub rest: String,
    pub grpc_addr: String,
    pub key: String,
    pub db: PgPool,
    pub db_options: PgConnectOptions,
    pub sim: stripe_sim::Simulator,
    pub http: reqwest::Client,
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(mut options: Options) -> Self {
        let sim = match options.simulator.take() {
            Some(sim) => sim,
            None => stripe_sim::Simulator::start(stripe_sim::Config::default()).await.unwrap(),
        };
        let (db_options, db) = migrated_database().await;
        let service_db = match &options.db {
            Some(o) => store::pool(&DbConfig { options: o.clone(), max_connections: 5, read: None }),
            None => db.clone(),
        };
        let stripe_base = options.stripe_base.clone().unwrap_or_else(|| sim.url());
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut webhooks = options.webhooks.clone();
        if options.register_webhook {
            let url = format!("http://{}/v1/webhooks/stripe", rest.local_addr().unwrap());
            webhooks.secrets = vec![Secret::new(register_webhook(&sim.url(), STRIPE_KEY, &url).await)];
        }
        let auth = AuthSettings::new(options.auth_required, Secret::new(PEPPER), options.key_cache_ttl)
            .with_limiter(amazing_payments::app::ratelimit::Limiter::frozen(options.rate_limit));
        let app = App {
            reads: None,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_lease: Duration::from_secs(30),
            webhooks,
            db: service_db,
            stripe: stripe::Client::new({
                let mut s = stripe_settings(&stripe_base);
                if let Some(wait) = options.stripe_backoff {
                    (s.base_backoff, s.max_backoff) = (wait, wait);
                }
                s
            })
            .unwrap(),
            auth: auth.clone(),
            max_in_flight: options.max_in_flight,
            overload_target: Duration::from_millis(150),
            hooks: options.hooks.clone(),
        };
        let key = apikeys::create(&db, &auth, "tests", &Scope::ALL, None).await.unwrap().key.expose().to_string();
        let rest_url = format!("http://{}", rest.local_addr().unwrap());
        let grpc_addr = format!("http://{}", grpc.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(server::run(app.clone(), rest, grpc, options.connections, async {
            let _ = rx.await;
        }));
        Self {
            rest: rest_url,
            grpc_addr,
            key,
            db,
            db_options,
            sim,
            http: reqwest::Client::new(),
            app,
            stop: Some(tx),
            served: Some(served),
        }
    }

    /// The URL of this app's database, for the binaries run beside it.
    pub fn db_url(&self) -> String {
        let mut url = reqwest::Url::parse(&admin_url()).unwrap();
        url.set_path(self.db_options.get_database().unwrap());
        url.to_string()
    }

    /// A gRPC client of the service.
    pub async fn grpc(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::connect(self.grpc_addr.clone()).await.unwrap()
    }

    /// `message` with this app's API key in the metadata.
    pub fn authed<T>(&self, message: T) -> tonic::Request<T> {
        with_key(message, &self.key)
    }

    pub async fn rest_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.rest));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.rest_call(reqwest::Method::POST, path, Some(body), Some(&self.key.clone())).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.rest_call(reqwest::Method::GET, path, None, Some(&self.key.clone())).await
    }

    /// Rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.db).await.unwrap()
    }

    /// Customers the simulator holds.
    pub fn stripe_customers(&self) -> Vec<Value> {
        self.sim.state().data.lock().customers.values().cloned().collect()
    }

    /// Makes the simulator answer `status` to `method path` (all of them).
    pub fn stripe_fails(&self, method: &str, path: &str, status: u16) {
        self.sim.state().faults.add(
            serde_json::from_value(serde_json::json!({"method": method, "path": path, "status": status})).unwrap(),
        );
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.served.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// Registers `url` with the simulator at `sim_url` for every event, as a
/// Stripe account's webhook endpoint; its signing secret.
pub async fn register_webhook(sim_url: &str, stripe_key: &str, url: &str) -> String {
    let endpoint: Value = reqwest::Client::new()
        .post(format!("{sim_url}/v1/webhook_endpoints"))
        .bearer_auth(stripe_key)
        .form(&[("url", url), ("enabled_events[]", "*")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    endpoint["secret"].as_str().expect("a new endpoint shows its secret").to_string()
}

/// The `ErrorInfo` reason of a gRPC status.
pub fn reason(status: &tonic::Status) -> String {
    amazing_payments::app::error::reason_of(status).map(|(r, _)| r).unwrap_or_default()
}

/// Waits until `done` holds, looking every 100 ms; fails the test after
/// `within`, naming `what`.
pub async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < within, "{what}: not after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A service whose webhook endpoint is registered with its simulator
/// (every event), so that Stripe's events reach it.
pub fn webhook_options() -> Options {
    Options { register_webhook: true, ..Default::default() }
}

impl TestApp {
    /// Lets the Stripe events delivered so far be applied (for 3 s: the
    /// simulator delivers in the background).
    pub async fn apply_webhooks(&self) {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            while amazing_payments::workers::webhooks::pass(&self.app, 100).await.unwrap() > 0 {}
        }
    }
}
