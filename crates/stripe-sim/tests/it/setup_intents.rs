//! Saving cards and charging them later, against Stripe's documented
//! behaviour: SetupIntents (statuses, 3-D Secure on setup, declines with
//! the intent in the error), a customer's saved PaymentMethods (list,
//! detach), and off-session charges with Stripe's test cards
//! (`pm_card_authenticationRequiredOnSetup` asks only when set up;
//! `pm_card_authenticationRequired` asks every time, so off-session it is
//! declined `authentication_required`).

use crate::common::{Sim, ids};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use stripe_sim::fixtures;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// A SetupIntent for `customer` with `card`, confirmed at once.
async fn set_up(sim: &Sim, customer: &str, card: &str) -> (StatusCode, Value) {
    let a = sim
        .post("/v1/setup_intents", &[("customer", customer), ("payment_method", card), ("confirm", "true")], None)
        .await;
    (a.status, a.body)
}

/// An off-session charge of `pm` to `customer`.
async fn charge_off_session(sim: &Sim, customer: &str, pm: &str) -> (StatusCode, Value) {
    let form = [
        ("amount", "1500"),
        ("currency", "eur"),
        ("customer", customer),
        ("payment_method", pm),
        ("confirm", "true"),
        ("off_session", "true"),
    ];
    let a = sim.post("/v1/payment_intents", &form, None).await;
    (a.status, a.body)
}

#[tokio::test]
async fn a_card_set_up_for_a_customer_is_saved_to_it_listed_and_can_be_detached() {
    let sim = Sim::start().await;
    let customer = sim.customer("ada@example.com").await;
    let created = sim.post("/v1/setup_intents", &[("customer", &customer)], None).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let si = created.body;
    assert_eq!(keys(&si), keys(&fixtures::template("setup_intent")), "the fields of Stripe's example object");
    assert_eq!((si["status"].as_str(), si["usage"].as_str()), (Some("requires_payment_method"), Some("off_session")));
    assert!(si["client_secret"].as_str().unwrap().starts_with(&format!("{}_secret_", si["id"].as_str().unwrap())));

    let id = si["id"].as_str().unwrap();
    let confirmed =
        sim.post(&format!("/v1/setup_intents/{id}/confirm"), &[("payment_method", "pm_card_visa")], None).await;
    assert_eq!((confirmed.status, confirmed.body["status"].as_str()), (StatusCode::OK, Some("succeeded")));
    let pm = confirmed.body["payment_method"].as_str().unwrap().to_string();
    assert_eq!(sim.get(&format!("/v1/payment_methods/{pm}")).await.body["customer"], customer.as_str());

    let saved = sim.get(&format!("/v1/customers/{customer}/payment_methods")).await;
    assert_eq!((saved.status, ids(&saved.body)), (StatusCode::OK, vec![pm.clone()]));
    assert_eq!(saved.body["url"], format!("/v1/customers/{customer}/payment_methods"));
    assert_eq!(
        ids(&sim.get(&format!("/v1/payment_methods?customer={customer}&type=card")).await.body),
        vec![pm.clone()]
    );
    let listed = sim.get(&format!("/v1/setup_intents?customer={customer}")).await;
    assert_eq!(ids(&listed.body), vec![id.to_string()]);

    // Confirmed again, it refuses: it has succeeded.
    let again = sim.post(&format!("/v1/setup_intents/{id}/confirm"), &[], None).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.body["error"]["code"], "setup_intent_unexpected_state");
    assert_eq!(again.body["error"]["setup_intent"]["id"], id);

    let detached = sim.post(&format!("/v1/payment_methods/{pm}/detach"), &[], None).await;
    assert_eq!((detached.status, &detached.body["customer"]), (StatusCode::OK, &Value::Null));
    assert!(ids(&sim.get(&format!("/v1/customers/{customer}/payment_methods")).await.body).is_empty());
    let twice = sim.post(&format!("/v1/payment_methods/{pm}/detach"), &[], None).await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{}", twice.body);
    // Detached, it may not be used again.
    let (status, reused) = charge_off_session(&sim, &customer, &pm).await;
    assert_eq!(
        (status, reused["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("payment_method")),
        "{reused}"
    );
    let types = sim.event_types().await;
    for t in ["setup_intent.created", "payment_method.attached", "setup_intent.succeeded", "payment_method.detached"] {
        assert!(types.contains(&t.to_string()), "{t} in {types:?}");
    }
}

#[tokio::test]
async fn a_card_that_asks_for_authentication_on_setup_is_charged_off_session_once_set_up() {
    let sim = Sim::start().await;
    let customer = sim.customer("bo@example.com").await;
    // Not set up: off-session, the bank wants the customer, who is not there.
    let (status, declined) = charge_off_session(&sim, &customer, "pm_card_authenticationRequiredOnSetup").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let error = &declined["error"];
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("card_error"), Some("authentication_required")));
    assert_eq!(error["decline_code"], "authentication_required");
    assert_eq!(error["payment_intent"]["status"], "requires_payment_method", "confirmable again, on-session");
    assert_eq!(error["payment_intent"]["last_payment_error"]["code"], "authentication_required");

    // Set up with 3-D Secure once.
    let (status, si) = set_up(&sim, &customer, "pm_card_authenticationRequiredOnSetup").await;
    assert_eq!((status, si["status"].as_str()), (StatusCode::OK, Some("requires_action")));
    assert_eq!(si["next_action"]["type"], "use_stripe_sdk");
    let id = si["id"].as_str().unwrap();
    let done = sim.admin(&format!("/_sim/setup_intents/{id}/authenticate"), json!({"outcome": "succeed"})).await;
    assert_eq!(done.body["status"], "succeeded", "{}", done.body);
    let pm = done.body["payment_method"].as_str().unwrap().to_string();

    // Then charged off-session without the customer.
    let (status, pi) = charge_off_session(&sim, &customer, &pm).await;
    assert_eq!((status, pi["status"].as_str()), (StatusCode::OK, Some("succeeded")), "{pi}");
    // Set up, it asks no more on-session either.
    let form =
        [("amount", "900"), ("currency", "eur"), ("customer", &customer), ("payment_method", &pm), ("confirm", "true")];
    let on_session = sim.post("/v1/payment_intents", &form, None).await;
    assert_eq!(on_session.body["status"], "succeeded", "{}", on_session.body);
    // Not set up, the same kind of card still asks on-session.
    let fresh = [
        ("amount", "900"),
        ("currency", "eur"),
        ("payment_method", "pm_card_authenticationRequiredOnSetup"),
        ("confirm", "true"),
    ];
    assert_eq!(sim.post("/v1/payment_intents", &fresh, None).await.body["status"], "requires_action");
}

#[tokio::test]
async fn a_card_that_always_asks_for_authentication_is_declined_off_session_even_once_set_up() {
    let sim = Sim::start().await;
    let customer = sim.customer("cy@example.com").await;
    let (_, si) = set_up(&sim, &customer, "pm_card_authenticationRequired").await;
    let id = si["id"].as_str().unwrap();
    let done = sim.admin(&format!("/_sim/setup_intents/{id}/authenticate"), json!({"outcome": "succeed"})).await;
    let pm = done.body["payment_method"].as_str().unwrap().to_string();
    let (status, declined) = charge_off_session(&sim, &customer, &pm).await;
    assert_eq!(
        (status, declined["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("authentication_required"))
    );
    // The customer comes back: confirmed on-session, it asks, and succeeds
    // once authenticated.
    let pi = declined["error"]["payment_intent"]["id"].as_str().unwrap();
    let confirmed = sim.post(&format!("/v1/payment_intents/{pi}/confirm"), &[("payment_method", &pm)], None).await;
    assert_eq!(confirmed.body["status"], "requires_action", "{}", confirmed.body);
    let paid = sim.admin(&format!("/_sim/payment_intents/{pi}/authenticate"), json!({"outcome": "succeed"})).await;
    assert_eq!(paid.body["status"], "succeeded");
}

#[tokio::test]
async fn a_declined_card_fails_its_setup_with_the_intent_in_the_error_and_a_failed_authentication_too() {
    let sim = Sim::start().await;
    let customer = sim.customer("di@example.com").await;
    let (status, declined) = set_up(&sim, &customer, "pm_card_chargeDeclinedInsufficientFunds").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let si = &declined["error"]["setup_intent"];
    assert_eq!(si["status"], "requires_payment_method");
    assert_eq!(si["last_setup_error"]["decline_code"], "insufficient_funds");
    assert!(ids(&sim.get(&format!("/v1/customers/{customer}/payment_methods")).await.body).is_empty(), "nothing saved");

    let (_, pending) = set_up(&sim, &customer, "pm_card_authenticationRequiredOnSetup").await;
    let id = pending["id"].as_str().unwrap();
    let failed = sim.admin(&format!("/_sim/setup_intents/{id}/authenticate"), json!({"outcome": "fail"})).await;
    assert_eq!(failed.body["status"], "requires_payment_method");
    assert_eq!(failed.body["last_setup_error"]["code"], "setup_intent_authentication_failure");
    let canceled =
        sim.post(&format!("/v1/setup_intents/{id}/cancel"), &[("cancellation_reason", "abandoned")], None).await;
    assert_eq!(
        (canceled.body["status"].as_str(), canceled.body["cancellation_reason"].as_str()),
        (Some("canceled"), Some("abandoned"))
    );
    let types = sim.event_types().await;
    assert!(
        types.contains(&"setup_intent.setup_failed".to_string())
            && types.contains(&"setup_intent.canceled".to_string())
    );
}

#[tokio::test]
async fn a_card_saved_for_one_customer_is_not_set_up_or_charged_for_another() {
    let sim = Sim::start().await;
    let (ada, bo) = (sim.customer("ada@example.com").await, sim.customer("bo@example.com").await);
    let (_, si) = set_up(&sim, &ada, "pm_card_visa").await;
    let adas = si["payment_method"].as_str().unwrap().to_string();
    let (status, e) = set_up(&sim, &bo, &adas).await;
    assert_eq!((status, e["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("payment_method")), "{e}");
    let (status, e) = charge_off_session(&sim, &bo, &adas).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let attach = sim.post(&format!("/v1/payment_methods/{adas}/attach"), &[("customer", &bo)], None).await;
    assert_eq!(attach.status, StatusCode::BAD_REQUEST, "{}", attach.body);
    assert_eq!(sim.get(&format!("/v1/payment_methods/{adas}")).await.body["customer"], ada.as_str(), "still Ada's");
    // A return_url is for a confirmation.
    let no_confirm =
        sim.post("/v1/setup_intents", &[("customer", &ada), ("return_url", "https://shop.example")], None).await;
    assert_eq!(
        (no_confirm.status, no_confirm.body["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("return_url"))
    );
}

#[tokio::test]
async fn a_payment_that_sets_up_future_usage_saves_the_card_for_off_session_charges() {
    let sim = Sim::start().await;
    let customer = sim.customer("ed@example.com").await;
    let form = [
        ("amount", "2000"),
        ("currency", "eur"),
        ("customer", customer.as_str()),
        ("payment_method", "pm_card_authenticationRequiredOnSetup"),
        ("setup_future_usage", "off_session"),
        ("confirm", "true"),
    ];
    let first = sim.post("/v1/payment_intents", &form, None).await;
    assert_eq!(first.body["status"], "requires_action");
    assert_eq!(first.body["setup_future_usage"], "off_session");
    let pi = first.body["id"].as_str().unwrap();
    let paid = sim.admin(&format!("/_sim/payment_intents/{pi}/authenticate"), json!({"outcome": "succeed"})).await;
    assert_eq!(paid.body["status"], "succeeded");
    let pm = paid.body["payment_method"].as_str().unwrap().to_string();
    assert_eq!(ids(&sim.get(&format!("/v1/customers/{customer}/payment_methods")).await.body), vec![pm.clone()]);
    let (status, renewal) = charge_off_session(&sim, &customer, &pm).await;
    assert_eq!((status, renewal["status"].as_str()), (StatusCode::OK, Some("succeeded")));
}
