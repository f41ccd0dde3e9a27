//! The simulator's payment resources against Stripe's documented behaviour:
//! key parity with Stripe's example objects, PaymentIntent statuses, declines,
//! 3-D Secure, captures, cancels, refunds and their limits.

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use stripe_sim::{Config, Simulator, fixtures};

const KEY: &str = "sk_test_simulator_payments";

struct Sim {
    sim: Simulator,
    http: Client,
}

impl Sim {
    async fn start() -> Self {
        Self { sim: Simulator::start(Config::default()).await.unwrap(), http: Client::new() }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        self.post_keyed(path, form, None).await.0
    }

    async fn post_keyed(
        &self,
        path: &str,
        form: &[(&str, &str)],
        key: Option<&str>,
    ) -> ((StatusCode, Value), Option<String>) {
        let mut req = self.http.post(format!("{}{path}", self.sim.url())).bearer_auth(KEY).form(form);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.unwrap();
        let replayed = resp.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_string());
        ((resp.status(), resp.json().await.unwrap()), replayed)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(format!("{}{path}", self.sim.url())).bearer_auth(KEY).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn customer(&self) -> String {
        self.post("/v1/customers", &[("email", "ada@example.com")]).await.1["id"].as_str().unwrap().to_string()
    }

    async fn intent(&self, pm: &str, capture: &str) -> (StatusCode, Value) {
        let cus = self.customer().await;
        self.post(
            "/v1/payment_intents",
            &[
                ("amount", "2000"),
                ("currency", "usd"),
                ("customer", &cus),
                ("payment_method", pm),
                ("confirm", "true"),
                ("capture_method", capture),
            ],
        )
        .await
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn payment_objects_carry_exactly_the_keys_of_stripes_examples() {
    let sim = Sim::start().await;
    let (_, pm) = sim
        .post(
            "/v1/payment_methods",
            &[
                ("type", "card"),
                ("card[number]", "4242424242424242"),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2030"),
                ("card[cvc]", "123"),
            ],
        )
        .await;
    assert_eq!(keys(&pm), keys(&fixtures::template("payment_method")));
    assert_eq!((pm["card"]["last4"].as_str(), pm["card"]["brand"].as_str()), (Some("4242"), Some("visa")));
    assert_eq!(keys(&pm["card"]), keys(&fixtures::template("payment_method")["card"]));

    let (_, pi) = sim.intent(pm["id"].as_str().unwrap(), "automatic").await;
    assert_eq!(keys(&pi), keys(&fixtures::template("payment_intent")));
    let (_, charge) = sim.get(&format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap())).await;
    assert_eq!(keys(&charge), keys(&fixtures::template("charge")));
    let (_, refund) =
        sim.post("/v1/refunds", &[("payment_intent", pi["id"].as_str().unwrap()), ("amount", "500")]).await;
    assert_eq!(keys(&refund), keys(&fixtures::template("refund")));
    let (_, product) = sim.post("/v1/products", &[("name", "Tea")]).await;
    assert_eq!(keys(&product), keys(&fixtures::template("product")));
    let (_, price) = sim
        .post(
            "/v1/prices",
            &[("product", product["id"].as_str().unwrap()), ("unit_amount", "1200"), ("currency", "eur")],
        )
        .await;
    assert_eq!(keys(&price), keys(&fixtures::template("price")));
}

#[tokio::test]
async fn a_manual_intent_waits_for_capture_and_captures_once_in_part() {
    let sim = Sim::start().await;
    let (status, pi) = sim.intent("pm_card_visa", "manual").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((pi["status"].as_str(), pi["amount_capturable"].as_i64()), (Some("requires_capture"), Some(2000)));
    assert!(pi["client_secret"].as_str().unwrap().starts_with(&format!("{}_secret_", pi["id"].as_str().unwrap())));
    let id = pi["id"].as_str().unwrap();
    let (_, charge) = sim.get(&format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap())).await;
    assert!(
        charge["payment_method_details"]["card"]["capture_before"].as_i64().unwrap() > pi["created"].as_i64().unwrap()
    );
    assert_eq!(charge["captured"], false);

    let (status, body) = sim.post(&format!("/v1/payment_intents/{id}/capture"), &[("amount_to_capture", "2001")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("amount_too_large")));
    let (status, captured) = sim
        .post(
            &format!("/v1/payment_intents/{id}/capture"),
            &[("amount_to_capture", "1500"), ("expand[]", "latest_charge")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (captured["status"].as_str(), captured["amount_received"].as_i64(), captured["amount_capturable"].as_i64()),
        (Some("succeeded"), Some(1500), Some(0))
    );
    assert_eq!(captured["latest_charge"]["amount_captured"], 1500, "expand[] gives the charge object");
    let (status, body) = sim.post(&format!("/v1/payment_intents/{id}/capture"), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("payment_intent_unexpected_state"))
    );
    let (status, body) = sim.post(&format!("/v1/payment_intents/{id}/cancel"), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("payment_intent_unexpected_state"))
    );
}

#[tokio::test]
async fn a_declined_card_answers_402_embeds_the_intent_and_the_result_is_saved_for_its_key() {
    let sim = Sim::start().await;
    let cus = sim.customer().await;
    let form = [
        ("amount", "2000"),
        ("currency", "usd"),
        ("customer", cus.as_str()),
        ("payment_method", "pm_card_chargeDeclinedInsufficientFunds"),
        ("confirm", "true"),
    ];
    let ((status, body), _) = sim.post_keyed("/v1/payment_intents", &form, Some("decline-1")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let err = &body["error"];
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err["decline_code"].as_str()),
        (Some("card_error"), Some("card_declined"), Some("insufficient_funds"))
    );
    assert_eq!(err["payment_intent"]["status"], "requires_payment_method");
    assert_eq!(err["payment_intent"]["last_payment_error"]["decline_code"], "insufficient_funds");
    let ((again, replay), replayed) = sim.post_keyed("/v1/payment_intents", &form, Some("decline-1")).await;
    assert_eq!((again, replayed.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("true")));
    assert_eq!(replay, body);
    let (_, list) = sim.get(&format!("/v1/payment_intents?customer={cus}")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "one intent for one key");
}

#[tokio::test]
async fn three_d_secure_is_asked_for_then_completed_or_failed_by_the_browser() {
    let sim = Sim::start().await;
    for (outcome, status) in [("succeed", "succeeded"), ("fail", "requires_payment_method")] {
        let (_, pi) = sim.intent("pm_card_authenticationRequired", "automatic").await;
        assert_eq!(
            (pi["status"].as_str(), pi["next_action"]["type"].as_str()),
            (Some("requires_action"), Some("use_stripe_sdk"))
        );
        let id = pi["id"].as_str().unwrap();
        let resp = sim
            .http
            .post(format!("{}/_sim/payment_intents/{id}/authenticate", sim.sim.url()))
            .json(&json!({"outcome": outcome}))
            .send()
            .await
            .unwrap();
        let done: Value = resp.json().await.unwrap();
        assert_eq!(done["status"], status);
        if outcome == "fail" {
            assert_eq!(done["last_payment_error"]["code"], "payment_intent_authentication_failure");
        }
    }
}

#[tokio::test]
async fn refunds_follow_stripes_limits() {
    let sim = Sim::start().await;
    let (_, manual) = sim.intent("pm_card_visa", "manual").await;
    let (status, body) = sim.post("/v1/refunds", &[("payment_intent", manual["id"].as_str().unwrap())]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("charge_not_refundable")),
        "an uncaptured intent is canceled, not refunded"
    );

    let (_, pi) = sim.intent("pm_card_visa", "automatic").await;
    let id = pi["id"].as_str().unwrap();
    assert_eq!(sim.post("/v1/refunds", &[("payment_intent", id), ("amount", "1500")]).await.0, StatusCode::OK);
    let (status, body) = sim.post("/v1/refunds", &[("payment_intent", id), ("amount", "501")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("amount_too_large")));
    let (status, rest) = sim.post("/v1/refunds", &[("payment_intent", id)]).await;
    assert_eq!((status, rest["amount"].as_i64()), (StatusCode::OK, Some(500)));
    let (status, body) = sim.post("/v1/refunds", &[("payment_intent", id)]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("charge_already_refunded")));
    let (_, list) = sim.get(&format!("/v1/refunds?payment_intent={id}")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (_, charge) = sim.get(&format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap())).await;
    assert_eq!((charge["amount_refunded"].as_i64(), charge["refunded"].as_bool()), (Some(2000), Some(true)));
}

#[tokio::test]
async fn amounts_and_references_are_checked_as_stripe_does() {
    let sim = Sim::start().await;
    let (status, body) = sim.post("/v1/payment_intents", &[("amount", "49"), ("currency", "usd")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("amount_too_small")));
    let (status, body) = sim.post("/v1/payment_intents", &[("amount", "100000000"), ("currency", "usd")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("amount_too_large")));
    let (status, body) = sim.post("/v1/payment_intents", &[("amount", "1235"), ("currency", "kwd")]).await;
    assert_eq!((status, body["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("amount")));
    let (status, body) = sim
        .post(
            "/v1/payment_intents",
            &[("amount", "1000"), ("currency", "usd"), ("payment_method", "pm_nope"), ("confirm", "true")],
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str(), body["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("resource_missing"), Some("payment_method"))
    );
    let (status, pi) = sim.post("/v1/payment_intents", &[("amount", "50"), ("currency", "jpy")]).await;
    assert_eq!(
        (status, pi["status"].as_str()),
        (StatusCode::OK, Some("requires_payment_method")),
        "created without confirming"
    );
    let (status, confirmed) = sim
        .post(
            &format!("/v1/payment_intents/{}/confirm", pi["id"].as_str().unwrap()),
            &[("payment_method", "pm_card_mastercard")],
        )
        .await;
    assert_eq!((status, confirmed["status"].as_str()), (StatusCode::OK, Some("succeeded")));
    let (status, body) = sim
        .post(
            "/v1/payment_methods",
            &[
                ("type", "card"),
                ("card[number]", "4242424242424241"),
                ("card[exp_month]", "1"),
                ("card[exp_year]", "2030"),
            ],
        )
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("incorrect_number")));
}

#[tokio::test]
async fn a_card_that_fails_for_customers_attaches_and_then_every_charge_is_declined() {
    let sim = Sim::start().await;
    let cus = sim.customer().await;
    let (status, pm) = sim.post("/v1/payment_methods/pm_card_chargeCustomerFail/attach", &[("customer", &cus)]).await;
    assert_eq!((status, pm["customer"].as_str()), (StatusCode::OK, Some(cus.as_str())));
    let (status, body) = sim.post("/v1/payment_methods/pm_card_chargeDeclined/attach", &[("customer", &cus)]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("card_declined")));
    let (status, _) = sim
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "1000"),
                ("currency", "usd"),
                ("customer", &cus),
                ("payment_method", pm["id"].as_str().unwrap()),
                ("confirm", "true"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn canceling_an_authorization_releases_it() {
    let sim = Sim::start().await;
    let (_, pi) = sim.intent("pm_card_visa", "manual").await;
    let id = pi["id"].as_str().unwrap();
    let (status, body) =
        sim.post(&format!("/v1/payment_intents/{id}/cancel"), &[("cancellation_reason", "nope")]).await;
    assert_eq!((status, body["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("cancellation_reason")));
    let (_, canceled) =
        sim.post(&format!("/v1/payment_intents/{id}/cancel"), &[("cancellation_reason", "abandoned")]).await;
    assert_eq!((canceled["status"].as_str(), canceled["amount_capturable"].as_i64()), (Some("canceled"), Some(0)));
    assert!(canceled["canceled_at"].as_i64().is_some());
    let (_, charge) = sim.get(&format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap())).await;
    assert_eq!(charge["refunded"], true);
}
