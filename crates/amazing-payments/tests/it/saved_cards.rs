//! Saved cards (issue 15, first part): a customer's card saved through a
//! SetupIntent (at once with a PaymentMethod, or by Stripe.js with the
//! client secret, 3-D Secure included), listed from Stripe, charged, and
//! detached; over REST and gRPC, with clear refusals that send nothing to
//! Stripe.

use crate::common::{TestApp, reason};
use amazing_payments::{
    app::apikeys,
    domain::scopes::Scope,
    proto::{DetachPaymentMethodRequest, ListPaymentMethodsRequest, SetupPaymentMethodRequest},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::Code;

async fn customer(app: &TestApp, email: &str) -> String {
    let (status, body) = app.post("/v1/customer", json!({"name": "Ada", "email": email})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["customerID"].as_str().unwrap().to_string()
}

/// Stripe.js's part: confirms the SetupIntent with the card the customer
/// gave (`pm`); Stripe's answer.
async fn confirm_in_browser(app: &TestApp, setup_intent: &str, pm: &str) -> Value {
    app.http
        .post(format!("{}/v1/setup_intents/{setup_intent}/confirm", app.sim.url()))
        .bearer_auth("sk_test_as_stripe_js")
        .form(&[("payment_method", pm)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The customer finishes 3-D Secure in the browser for a `kind`
/// (`setup_intents` or `payment_intents`) of Stripe's.
async fn authenticate_in_browser(app: &TestApp, kind: &str, id: &str) {
    let done = app
        .http
        .post(format!("{}/_sim/{kind}/{id}/authenticate", app.sim.url()))
        .json(&json!({"outcome": "succeed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
}

/// Saves `pm` for the customer `id`, as a shop's page does; the saved card.
async fn save(app: &TestApp, id: &str, pm: &str) -> String {
    let (status, si) = app.post(&format!("/v1/customer/{id}/setup"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{si}");
    let done = confirm_in_browser(app, si["setup_intent_id"].as_str().unwrap(), pm).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done["payment_method"].as_str().unwrap().to_string()
}

/// Charges the saved card `pm` of the customer `id` off-session (990 EUR
/// cents), over gRPC.
async fn charge_off_session_over_grpc(
    app: &TestApp,
    id: &str,
    pm: &str,
) -> Result<tonic::Response<amazing_payments::proto::Payment>, tonic::Status> {
    app.grpc()
        .await
        .create_payment(app.authed(amazing_payments::proto::CreatePaymentRequest {
            customer_id: id.parse().unwrap(),
            amount: 990,
            currency: "eur".into(),
            payment_method: pm.into(),
            off_session: true,
            ..Default::default()
        }))
        .await
}

/// The customer is back: Stripe.js confirms the PaymentIntent `pi` with
/// `card` on-session, they authenticate, and the reconciler reads the
/// payment back. Stripe's answer to the confirm, and the payment then.
async fn back_on_session(app: &TestApp, payment: &str, pi: &str, card: &str) -> (Value, Value) {
    let confirmed = app
        .http
        .post(format!("{}/v1/payment_intents/{pi}/confirm", app.sim.url()))
        .bearer_auth("sk_test_as_stripe_js")
        .form(&[("payment_method", card)])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    authenticate_in_browser(app, "payment_intents", pi).await;
    let settings = amazing_payments::workers::reconciler::Settings {
        min_age: std::time::Duration::ZERO,
        failed_every: std::time::Duration::ZERO,
        ..Default::default()
    };
    amazing_payments::workers::reconciler::pass(&app.app, &settings).await.unwrap();
    let (_, done) = app.get(&format!("/v1/payment/{payment}")).await;
    (confirmed, done)
}

/// The customer's saved cards, read over gRPC.
async fn saved_over_grpc(app: &TestApp, id: i64) -> Vec<amazing_payments::proto::PaymentMethod> {
    let request = app.authed(ListPaymentMethodsRequest { customer_id: id });
    app.grpc().await.list_payment_methods(request).await.unwrap().into_inner().payment_methods
}

fn setup_intents(app: &TestApp) -> usize {
    app.sim.state().data.lock().setup_intents.values().count()
}

#[tokio::test]
async fn a_card_saved_for_a_customer_is_listed_charged_and_detached_over_rest() {
    let app = TestApp::spawn().await;
    let id = customer(&app, "ada@example.com").await;
    let (status, si) = app.post(&format!("/v1/customer/{id}/setup"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{si}");
    assert_eq!(si["status"], "requires_payment_method");
    let seti = si["setup_intent_id"].as_str().unwrap();
    assert!(seti.starts_with("seti_"));
    assert_eq!(si["customerID"], id.as_str());
    assert!(si["client_secret"].as_str().unwrap().starts_with(&format!("{seti}_secret_")), "for Stripe.js: {si}");
    let stripe_side = app.sim.state().data.lock().setup_intents.get(seti).cloned().unwrap();
    assert_eq!(
        (stripe_side["usage"].as_str(), stripe_side["metadata"]["customerID"].as_str()),
        (Some("off_session"), Some(id.as_str()))
    );
    let done = confirm_in_browser(&app, seti, "pm_card_visa").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let pm = done["payment_method"].as_str().unwrap().to_string();

    let (status, saved) = app.get(&format!("/v1/customer/{id}/payment_methods")).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let cards = saved["payment_methods"].as_array().unwrap();
    assert_eq!(cards.len(), 1, "{saved}");
    assert_eq!((cards[0]["payment_method"].as_str(), cards[0]["brand"].as_str()), (Some(pm.as_str()), Some("visa")));
    assert_eq!((cards[0]["last4"].as_str(), cards[0]["exp_year"].as_i64()), (Some("4242"), Some(2034)));

    // The saved card pays.
    let (status, paid) = app
        .post("/v1/payment", json!({"customerID": id, "amount": 1800, "currency": "eur", "payment_method": pm}))
        .await;
    assert_eq!((status, paid["status"].as_str()), (StatusCode::OK, Some("succeeded")), "{paid}");

    let path = format!("/v1/customer/{id}/payment_methods/{pm}");
    let (status, detached) = app.rest_call(Method::DELETE, &path, None, Some(&app.key)).await;
    assert_eq!((status, detached["payment_method"].as_str()), (StatusCode::OK, Some(pm.as_str())), "{detached}");
    let (_, saved) = app.get(&format!("/v1/customer/{id}/payment_methods")).await;
    assert!(saved["payment_methods"].as_array().is_none_or(|c| c.is_empty()), "{saved}");
    let (status, again) = app.rest_call(Method::DELETE, &path, None, Some(&app.key)).await;
    assert_eq!((status, again["reason"].as_str()), (StatusCode::NOT_FOUND, Some("PAYMENT_METHOD_NOT_FOUND")));
}

#[tokio::test]
async fn over_grpc_a_setup_waits_for_stripe_js_and_for_3d_secure_then_the_card_is_saved() {
    let app = TestApp::spawn().await;
    let id: i64 = customer(&app, "bo@example.com").await.parse().unwrap();
    let mut grpc = app.grpc().await;
    let open = grpc
        .setup_payment_method(app.authed(SetupPaymentMethodRequest { customer_id: id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.status, "requires_payment_method");
    assert!(open.client_secret.starts_with(&format!("{}_secret_", open.setup_intent_id)), "{open:?}");

    // The customer gives a card whose bank asks on setup: Stripe.js asks
    // the customer, and until then nothing is saved.
    let asked = confirm_in_browser(&app, &open.setup_intent_id, "pm_card_authenticationRequiredOnSetup").await;
    assert_eq!(asked["status"], "requires_action", "{asked}");
    assert!(saved_over_grpc(&app, id).await.is_empty(), "not saved before the customer authenticates");
    authenticate_in_browser(&app, "setup_intents", &open.setup_intent_id).await;
    let pm = asked["payment_method"].as_str().unwrap().to_string();
    let cards = saved_over_grpc(&app, id).await;
    assert_eq!(cards.len(), 1);
    assert_eq!(cards[0].payment_method, pm);

    let gone = grpc
        .detach_payment_method(app.authed(DetachPaymentMethodRequest { customer_id: id, payment_method: pm.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.payment_method, pm);
    assert!(saved_over_grpc(&app, id).await.is_empty());
}

#[tokio::test]
async fn bad_input_and_another_customers_card_are_refused_and_send_nothing_to_stripe() {
    let app = TestApp::spawn().await;
    let ada = customer(&app, "ada@example.com").await;
    let cy = customer(&app, "cy@example.com").await;
    let cys_card = save(&app, &cy, "pm_card_visa").await;
    let before = (setup_intents(&app), app.sim.state().received().len());

    let (status, e) = app.post("/v1/customer/999999/setup", json!({})).await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::NOT_FOUND, Some("CUSTOMER_NOT_FOUND")), "{e}");
    let (status, e) = app.get("/v1/customer/999999/payment_methods").await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::NOT_FOUND, Some("CUSTOMER_NOT_FOUND")), "{e}");
    for (bad, reason) in [("not-a-card", "INVALID_PAYMENT_METHOD"), ("4242424242424242", "RAW_CARD_NUMBER")] {
        let path = format!("/v1/customer/{ada}/payment_methods/{bad}");
        let (status, e) = app.rest_call(Method::DELETE, &path, None, Some(&app.key)).await;
        assert_eq!((status, e["reason"].as_str()), (StatusCode::BAD_REQUEST, Some(reason)), "{e}");
    }
    assert_eq!((setup_intents(&app), app.sim.state().received().len()), before, "nothing sent to Stripe");

    // Cy's card is not Ada's to remove; it stays saved for Cy.
    let path = format!("/v1/customer/{ada}/payment_methods/{cys_card}");
    let (status, e) = app.rest_call(Method::DELETE, &path, None, Some(&app.key)).await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::NOT_FOUND, Some("PAYMENT_METHOD_NOT_FOUND")));
    let (_, saved) = app.get(&format!("/v1/customer/{cy}/payment_methods")).await;
    assert_eq!(saved["payment_methods"][0]["payment_method"], cys_card.as_str());
    let (_, adas) = app.get(&format!("/v1/customer/{ada}/payment_methods")).await;
    assert!(adas["payment_methods"].as_array().is_none_or(|c| c.is_empty()), "Ada sees none of Cy's: {adas}");
    // The same over gRPC.
    let refused =
        app.grpc()
            .await
            .detach_payment_method(app.authed(DetachPaymentMethodRequest {
                customer_id: ada.parse().unwrap(),
                payment_method: cys_card.clone(),
            }))
            .await
            .unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::NotFound, "PAYMENT_METHOD_NOT_FOUND"));
    assert_eq!(saved_over_grpc(&app, cy.parse().unwrap()).await[0].payment_method, cys_card, "still Cy's");
}

#[tokio::test]
async fn a_retried_setup_makes_one_setup_intent_and_a_read_key_may_list_but_not_save() {
    let app = TestApp::spawn().await;
    let id = customer(&app, "di@example.com").await;
    let path = format!("/v1/customer/{id}/setup");
    let send = || async {
        let resp = app
            .http
            .post(format!("{}{path}", app.rest))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "save-card-1")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (resp.headers().get("idempotent-replayed").is_some(), resp.json::<Value>().await.unwrap())
    };
    let (replayed, first) = send().await;
    let (replayed_again, second) = send().await;
    assert_eq!((replayed, replayed_again), (false, true));
    assert_eq!(first, second);
    assert_eq!(setup_intents(&app), 1, "one SetupIntent at Stripe");

    let reader = apikeys::create(&app.db, &app.app.auth, "reader", &[Scope::Read], None).await.unwrap();
    let reader = reader.key.expose().to_string();
    let (status, e) = app.rest_call(Method::POST, &path, Some(json!({})), Some(&reader)).await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::FORBIDDEN, Some("INSUFFICIENT_SCOPE")));
    let (status, _) =
        app.rest_call(Method::GET, &format!("/v1/customer/{id}/payment_methods"), None, Some(&reader)).await;
    assert_eq!(status, StatusCode::OK);
    let refused = app
        .grpc()
        .await
        .setup_payment_method(crate::common::with_key(
            SetupPaymentMethodRequest { customer_id: id.parse().unwrap() },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::PermissionDenied, "INSUFFICIENT_SCOPE"));
}

#[tokio::test]
async fn a_detach_whose_answer_was_lost_is_retried_with_its_key_and_answered_as_done() {
    let app = TestApp::spawn().await;
    let id = customer(&app, "ed@example.com").await;
    let pm = save(&app, &id, "pm_card_visa").await;
    // Stripe detaches the card, and every answer is lost on the way back.
    let rule =
        json!({"method": "POST", "path": format!("/v1/payment_methods/{pm}/detach"), "drop": "after", "times": 3});
    app.sim.state().faults.add(serde_json::from_value(rule).unwrap());
    let detach = || async {
        let resp = app
            .http
            .delete(format!("{}/v1/customer/{id}/payment_methods/{pm}", app.rest))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "forget-card-1")
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    let (status, first) = detach().await;
    assert_eq!(
        (status, first["reason"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("STRIPE_UNAVAILABLE")),
        "{first}"
    );
    assert!(app.sim.state().data.lock().payment_methods.get(&pm).unwrap()["customer"].is_null(), "detached at Stripe");
    // The retry with the same key finds the card detached, and is told it is done.
    let (status, retried) = detach().await;
    assert_eq!((status, retried["payment_method"].as_str()), (StatusCode::OK, Some(pm.as_str())), "{retried}");
    // Without the key, a card detached already is not the customer's.
    let path = format!("/v1/customer/{id}/payment_methods/{pm}");
    let (status, e) = app.rest_call(Method::DELETE, &path, None, Some(&app.key)).await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::NOT_FOUND, Some("PAYMENT_METHOD_NOT_FOUND")));
}

#[tokio::test]
async fn a_saved_card_is_charged_off_session_and_one_the_bank_wants_the_customer_for_waits_for_them() {
    let app = TestApp::spawn().await;
    let id = customer(&app, "fy@example.com").await;
    // A renewal on a saved card, the customer away (REST).
    let visa = save(&app, &id, "pm_card_visa").await;
    let (status, paid) = app
        .post(
            "/v1/payment",
            json!({"customerID": id, "amount": 990, "currency": "eur", "payment_method": visa, "off_session": true}),
        )
        .await;
    assert_eq!((status, paid["status"].as_str()), (StatusCode::OK, Some("succeeded")), "{paid}");
    let sent = app.sim.state().received().into_iter().rev().find(|r| r.path == "/v1/payment_intents").unwrap();
    assert!(sent.body.contains("off_session=true"), "sent to Stripe as off-session: {}", sent.body);

    // A card whose bank asks every time, saved with 3-D Secure, charged
    // off-session (gRPC): it fails, saying the customer is wanted, and keeps
    // the secret Stripe.js needs.
    let (_, si) = app.post(&format!("/v1/customer/{id}/setup"), json!({})).await;
    let seti = si["setup_intent_id"].as_str().unwrap();
    let asked = confirm_in_browser(&app, seti, "pm_card_authenticationRequired").await;
    let card = asked["payment_method"].as_str().unwrap().to_string();
    authenticate_in_browser(&app, "setup_intents", seti).await;
    let refused = charge_off_session_over_grpc(&app, &id, &card).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::FailedPrecondition, "AUTHENTICATION_REQUIRED"));
    let (_, details) = amazing_payments::app::error::reason_of(&refused).unwrap();
    let payment = details["paymentID"].clone();
    let (_, failed) = app.get(&format!("/v1/payment/{payment}")).await;
    assert_eq!(
        (failed["status"].as_str(), failed["failure_code"].as_str()),
        (Some("failed"), Some("authentication_required"))
    );
    let secret = failed["client_secret"].as_str().expect("the secret to bring the customer back").to_string();
    let pi = failed["stripe_payment_intent_id"].as_str().unwrap().to_string();
    assert!(secret.starts_with(&format!("{pi}_secret_")));
    let events: Vec<String> = sqlx::query_scalar("SELECT type FROM notify.outbox WHERE payment_id = $1 ORDER BY seq")
        .bind(payment.parse::<i64>().unwrap())
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(events.contains(&"payment.failed".to_string()), "{events:?}");
    // Its mail asks the customer back, to the shop's page (MAIL_ACTION_URL).
    let body: Value = sqlx::query_scalar(
        "SELECT body FROM notify.outbox WHERE payment_id = $1 AND type = 'payment.failed' ORDER BY seq DESC LIMIT 1",
    )
    .bind(payment.parse::<i64>().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    let mail = amazing_payments::notify::templates::Templates::new(None)
        .with_action_url(Some("https://shop.example/pay/{paymentID}".into()))
        .render(&serde_json::from_value(body).unwrap())
        .unwrap();
    assert_eq!(mail.subject, "Please confirm your payment of 9.90 EUR with your bank");
    assert!(mail.text.contains(&format!("Confirm it here: https://shop.example/pay/{payment}")), "{}", mail.text);

    // The customer comes back: Stripe.js confirms it on-session, they
    // authenticate, and the payment goes on to succeed.
    let (again, done) = back_on_session(&app, &payment, &pi, &card).await;
    assert_eq!(again["status"], "requires_action", "{again}");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done.get("client_secret").is_none(), "no secret once paid: {done}");
    assert!(done.get("failure_code").is_none(), "the old failure no longer describes it: {done}");

    // Over REST the same refusal is 402, as Stripe answers a decline.
    let (status, e) = app
        .post(
            "/v1/payment",
            json!({"customerID": id, "amount": 500, "currency": "eur", "payment_method": card, "off_session": true}),
        )
        .await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("AUTHENTICATION_REQUIRED")), "{e}");
    // ...and that payment too ends on-session once the customer is back.
    let rest_payment = e["details"]["paymentID"].as_str().expect("the payment named in the refusal").to_string();
    let (_, waiting) = app.get(&format!("/v1/payment/{rest_payment}")).await;
    let rest_pi = waiting["stripe_payment_intent_id"].as_str().unwrap().to_string();
    let (back, done) = back_on_session(&app, &rest_payment, &rest_pi, &card).await;
    assert_eq!(back["status"], "requires_action", "{back}");
    assert_eq!(done["status"], "succeeded", "{done}");

    // A renewal on the saved Visa over gRPC too: charged off-session at once.
    let renewed = charge_off_session_over_grpc(&app, &id, &visa).await.unwrap().into_inner();
    assert_eq!(renewed.status, "succeeded");
}

#[tokio::test]
async fn a_failure_stripe_saved_under_the_key_is_final_for_a_setup_and_read_back_for_a_detach() {
    let app = TestApp::spawn().await;
    let id = customer(&app, "gi@example.com").await;
    let pm = save(&app, &id, "pm_card_visa").await;
    // Stripe fails each after doing the work, saves the 500 under the key,
    // and replays it to every retry.
    for path in ["/v1/setup_intents".to_string(), format!("/v1/payment_methods/{pm}/detach")] {
        let rule = json!({"method": "POST", "path": path, "saved": "after_work", "status": 500, "times": 1});
        app.sim.state().faults.add(serde_json::from_value(rule).unwrap());
    }
    let (status, e) = app.post(&format!("/v1/customer/{id}/setup"), json!({})).await;
    assert_eq!((status, e["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("STRIPE_FAILED")), "final, not 503: {e}");
    // The detach was done: read back, it is answered as done.
    let path = format!("/v1/customer/{id}/payment_methods/{pm}");
    let (status, detached) = app.rest_call(Method::DELETE, &path, None, Some(&app.key)).await;
    assert_eq!((status, detached["payment_method"].as_str()), (StatusCode::OK, Some(pm.as_str())), "{detached}");
}
