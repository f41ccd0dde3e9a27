//! Helpers shared by the test binaries that need them: a simulator and a
//! client that speaks to it over real HTTP.
#![allow(dead_code)]

use reqwest::{Client, StatusCode, header::HeaderMap};
use serde_json::Value;
use std::time::Duration;
use stripe_sim::{Config, Simulator};

pub const KEY: &str = "sk_test_simulator_common";

/// One complete answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub struct Sim {
    pub sim: Simulator,
    pub http: Client,
}

impl Sim {
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self { sim: Simulator::start(config).await.unwrap(), http: Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    /// Sends `req`; `None` when no complete answer arrives (a dropped
    /// connection).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Option<Answer> {
        let resp = req.send().await.ok()?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.ok()?;
        Some(Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap() })
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)], key: Option<&str>) -> Answer {
        self.send(self.post_request(path, form, key)).await.expect("an answer")
    }

    pub fn post_request(&self, path: &str, form: &[(&str, &str)], key: Option<&str>) -> reqwest::RequestBuilder {
        let req = self.http.post(self.url(path)).bearer_auth(KEY).form(form);
        match key {
            Some(k) => req.header("Idempotency-Key", k),
            None => req,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path)).bearer_auth(KEY)).await.expect("an answer")
    }

    /// Calls a simulator-only endpoint with a JSON body.
    pub async fn admin(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.post(self.url(path)).json(&body)).await.expect("an answer")
    }

    pub async fn faults(&self, rules: Value) {
        assert_eq!(self.admin("/_sim/faults", rules).await.status, StatusCode::OK);
    }

    pub async fn customer(&self, email: &str) -> String {
        self.post("/v1/customers", &[("email", email)], None).await.body["id"].as_str().unwrap().to_string()
    }

    /// A payment of `amount` cents, captured at once.
    pub async fn paid_intent(&self, customer: &str, amount: &str, reference: &str) -> Value {
        let form = [
            ("amount", amount),
            ("currency", "usd"),
            ("customer", customer),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
            ("metadata[paymentID]", reference),
        ];
        let a = self.post("/v1/payment_intents", &form, None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.body
    }

    /// The types of the events recorded so far, oldest first.
    pub async fn event_types(&self) -> Vec<String> {
        let list = self.get("/v1/events?limit=100").await.body;
        let mut types: Vec<String> =
            list["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
        types.reverse();
        types
    }

    /// The events of `kind`, newest first.
    pub async fn events(&self, kind: &str) -> Vec<Value> {
        self.get(&format!("/v1/events?type={kind}&limit=100")).await.body["data"].as_array().unwrap().clone()
    }
}

/// Waits until `check` holds, for up to three seconds.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..60 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_string()).collect()
}

pub fn rule(v: Value) -> stripe_sim::faults::Rule {
    serde_json::from_value(v).unwrap()
}
