//! The simulator against Stripe's documented behaviour: auth, error shapes,
//! Request-Id, pagination, idempotency, key parity with Stripe's fixtures.

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use stripe_sim::{Config, Simulator, fixtures};

const KEY: &str = "sk_test_simulator_tests";

struct Sim {
    sim: Simulator,
    http: Client,
}

impl Sim {
    async fn start() -> Self {
        Self { sim: Simulator::start(Config::default()).await.unwrap(), http: Client::new() }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap())
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        key: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.post(format!("{}{path}", self.sim.url())).bearer_auth(KEY).form(form);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        self.send(req).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.send(self.http.get(format!("{}{path}", self.sim.url())).bearer_auth(KEY)).await;
        (s, v)
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn a_created_customer_carries_exactly_the_keys_of_stripes_example_customer() {
    let sim = Sim::start().await;
    let (status, headers, customer) = sim
        .post("/v1/customers", &[("email", "ada@example.com"), ("name", "Ada"), ("metadata[customerID]", "7")], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["request-id"].to_str().unwrap().starts_with("req_"));
    assert_eq!(keys(&customer), keys(&fixtures::template("customer")));
    assert!(customer["id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(customer["email"], "ada@example.com");
    assert_eq!(customer["metadata"], json!({"customerID": "7"}));

    let (_, balance) = sim.get("/v1/balance").await;
    assert_eq!(keys(&balance), keys(&fixtures::template("balance")));

    let id = customer["id"].as_str().unwrap();
    let (status, _, deleted) =
        sim.send(sim.http.delete(format!("{}/v1/customers/{id}", sim.sim.url())).bearer_auth(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&deleted), keys(&fixtures::template("deleted_customer")));
    assert_eq!(sim.get(&format!("/v1/customers/{id}")).await.1["deleted"], true);
}

#[tokio::test]
async fn requests_without_a_valid_test_key_are_refused_with_401() {
    let sim = Sim::start().await;
    let url = format!("{}/v1/balance", sim.sim.url());
    let (status, _, body) = sim.send(sim.http.get(&url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    for bad in ["sk_live_abcdefghijkl", "pk_test_abcdefghijkl", "nonsense"] {
        let (status, _, body) = sim.send(sim.http.get(&url).bearer_auth(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with("Invalid API Key provided"));
        assert!(!body["error"]["message"].as_str().unwrap().contains(bad), "the key is masked");
    }
}

#[tokio::test]
async fn a_missing_customer_is_a_404_resource_missing() {
    let sim = Sim::start().await;
    let (status, body) = sim.get("/v1/customers/cus_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["param"], "id");
    assert_eq!(body["error"]["message"], "No such customer: 'cus_nope'");
}

#[tokio::test]
async fn unknown_parameters_and_urls_are_refused_as_stripe_does() {
    let sim = Sim::start().await;
    let (status, _, body) = sim.post("/v1/customers", &[("colour", "blue")], None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "colour");
    let (status, _, body) = sim.post("/v1/customers", &[("email", "not-an-address")], None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "email_invalid");
    let (status, body) = sim.get("/v1/nothing_here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Unrecognized request URL"));
}

#[tokio::test]
async fn customers_are_listed_newest_first_in_pages_and_filtered_by_email() {
    let sim = Sim::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let email = if i % 2 == 0 { "even@example.com" } else { "odd@example.com" };
        ids.push(sim.post("/v1/customers", &[("email", email)], None).await.2["id"].as_str().unwrap().to_string());
    }
    let (_, page) = sim.get("/v1/customers?limit=2").await;
    assert_eq!(page["object"], "list");
    assert_eq!(page["url"], "/v1/customers");
    assert_eq!(page["has_more"], true);
    let got: Vec<&str> = page["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str()]);

    let (_, next) = sim.get(&format!("/v1/customers?limit=2&starting_after={}", ids[3])).await;
    let got: Vec<&str> = next["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);

    let (_, before) = sim.get(&format!("/v1/customers?limit=10&ending_before={}", ids[2])).await;
    assert_eq!(before["data"].as_array().unwrap().len(), 2);
    assert_eq!(before["has_more"], false);

    let (_, even) = sim.get("/v1/customers?email=even@example.com").await;
    assert_eq!(even["data"].as_array().unwrap().len(), 3);

    let (status, body) = sim.get("/v1/customers?limit=101").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "limit");
}

#[tokio::test]
async fn a_retried_request_is_replayed_with_the_same_answer() {
    let sim = Sim::start().await;
    let form = [("email", "ada@example.com")];
    let (s1, h1, first) = sim.post("/v1/customers", &form, Some("key-1")).await;
    let (s2, h2, second) = sim.post("/v1/customers", &form, Some("key-1")).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first, second);
    assert!(h1.get("idempotent-replayed").is_none());
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(h1["request-id"], h2["request-id"]);
    assert_eq!(sim.get("/v1/customers").await.1["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_an_idempotency_error() {
    let sim = Sim::start().await;
    sim.post("/v1/customers", &[("email", "ada@example.com")], Some("key-2")).await;
    let (status, _, body) = sim.post("/v1/customers", &[("email", "bob@example.com")], Some("key-2")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "idempotency_error");
}

#[tokio::test]
async fn a_request_that_failed_validation_is_not_saved_and_may_be_retried() {
    let sim = Sim::start().await;
    let (status, _, _) = sim.post("/v1/customers", &[("email", "broken")], Some("key-3")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, headers, body) = sim.post("/v1/customers", &[("email", "fixed@example.com")], Some("key-3")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(body["email"], "fixed@example.com");
}

#[tokio::test]
async fn a_concurrent_request_with_a_key_in_use_gets_409_and_is_not_executed() {
    let sim = Sim::start().await;
    sim.sim
        .state()
        .faults
        .add(serde_json::from_value(json!({"method": "POST", "path": "/v1/customers", "latency_ms": 400})).unwrap());
    let form = [("email", "ada@example.com")];
    let (a, b) = tokio::join!(sim.post("/v1/customers", &form, Some("key-4")), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        sim.post("/v1/customers", &form, Some("key-4")).await
    });
    assert_eq!(a.0, StatusCode::OK);
    assert_eq!(b.0, StatusCode::CONFLICT);
    assert_eq!(b.2["error"]["code"], "idempotency_key_in_use");
    sim.sim.state().faults.clear();
    let (status, headers, replay) = sim.post("/v1/customers", &form, Some("key-4")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay["id"], a.2["id"]);
    assert_eq!(sim.get("/v1/customers").await.1["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn fault_rules_answer_with_the_chosen_error_a_chosen_number_of_times() {
    let sim = Sim::start().await;
    let rules = json!([{"method": "POST", "path": "/v1/customers", "status": 429, "code": "rate_limit", "times": 1, "retry_after": 2}]);
    let resp = sim.http.post(format!("{}/_sim/faults", sim.sim.url())).json(&rules).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, headers, body) = sim.post("/v1/customers", &[], None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limit");
    assert_eq!(headers["retry-after"], "2");
    let (status, _, _) = sim.post("/v1/customers", &[], None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn updating_a_customer_merges_metadata_and_empty_values_remove_keys() {
    let sim = Sim::start().await;
    let (_, _, c) = sim.post("/v1/customers", &[("metadata[a]", "1"), ("metadata[b]", "2")], None).await;
    let id = c["id"].as_str().unwrap();
    let (status, _, updated) = sim
        .post(&format!("/v1/customers/{id}"), &[("metadata[a]", ""), ("metadata[c]", "3"), ("name", "New")], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["metadata"], json!({"b": "2", "c": "3"}));
    assert_eq!(updated["name"], "New");
    assert_eq!(sim.get(&format!("/v1/customers/{id}")).await.1["name"], "New");
}

#[tokio::test]
async fn a_connection_dropped_before_the_work_leaves_nothing_done() {
    let sim = Sim::start().await;
    sim.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/customers", "drop": "before", "times": 1}))
            .unwrap(),
    );
    let err = sim
        .http
        .post(format!("{}/v1/customers", sim.sim.url()))
        .bearer_auth(KEY)
        .form(&[("email", "a@example.com")])
        .send()
        .await;
    let failed = match err {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "no complete answer arrives");
    assert_eq!(sim.get("/v1/customers").await.1["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_lost_answer_means_the_work_was_done_and_a_retry_with_the_key_gets_it() {
    let sim = Sim::start().await;
    sim.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/customers", "drop": "after", "times": 1}))
            .unwrap(),
    );
    let first = sim
        .http
        .post(format!("{}/v1/customers", sim.sim.url()))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "lost-1")
        .form(&[("email", "a@example.com")])
        .send()
        .await;
    let lost = match first {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(lost);
    assert_eq!(sim.get("/v1/customers").await.1["data"].as_array().unwrap().len(), 1, "the work was done");
    let (status, headers, body) = sim.post("/v1/customers", &[("email", "a@example.com")], Some("lost-1")).await;
    assert_eq!((status, headers["idempotent-replayed"].to_str().unwrap()), (StatusCode::OK, "true"));
    assert_eq!(body["email"], "a@example.com");
    assert_eq!(sim.get("/v1/customers").await.1["data"].as_array().unwrap().len(), 1);
}
