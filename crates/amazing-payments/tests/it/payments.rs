//! Payments over both transports: authorize and capture (now, later, in
//! part), cancel, refunds, declines, 3-D Secure, refusals before Stripe is
//! called, currencies, and Stripe's answer checked against the request.

use crate::common::{
    TestApp,
    call::{BOTH, Via, int},
};
use serde_json::{Value, json};
use tonic::Code;

async fn pay(app: &TestApp, via: Via, customer: &str, extra: Value) -> Result<Value, crate::common::call::Failure> {
    let mut body = json!({"customerID": customer, "amount": 5000, "currency": "usd", "payment_method": "pm_card_visa"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    app.call(via, "CreatePayment", body).await
}

async fn authorized(app: &TestApp, via: Via, customer: &str) -> Value {
    pay(app, via, customer, json!({"capture_method": "manual"})).await.unwrap()
}

fn id(v: &Value, field: &str) -> String {
    int(v, field).to_string()
}

#[tokio::test]
async fn a_manual_payment_is_authorized_then_partly_captured_and_the_rest_released() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let p = authorized(&app, via, &customer).await;
        assert_eq!(p["status"], "authorized", "{via:?}");
        assert_eq!((int(&p, "amount_capturable"), int(&p, "amount_captured")), (5000, 0));
        assert_eq!(p["capture_method"], "manual");
        assert!(!p["capture_before"].as_str().unwrap_or("").is_empty(), "the authorization deadline is told");
        let pi_id = p["stripe_payment_intent_id"].as_str().unwrap().to_string();
        let pi = app.stripe_object(&pi_id);
        assert_eq!((pi["status"].as_str(), pi["amount"].as_i64()), (Some("requires_capture"), Some(5000)));
        assert_eq!(pi["metadata"]["paymentID"], id(&p, "paymentID"));

        let captured =
            app.call(via, "CapturePayment", json!({"paymentID": id(&p, "paymentID"), "amount": 3000})).await.unwrap();
        assert_eq!(captured["status"], "succeeded");
        assert_eq!(
            (int(&captured, "amount_captured"), int(&captured, "amount_capturable")),
            (3000, 0),
            "the rest is released"
        );
        let pi = app.stripe_object(&pi_id);
        assert_eq!((pi["amount_received"].as_i64(), pi["amount_capturable"].as_i64()), (Some(3000), Some(0)));
        let charge = app.stripe_object(pi["latest_charge"].as_str().unwrap());
        assert_eq!(charge["amount_captured"], 3000);

        let full = app
            .call(via, "GetPayment", json!({"paymentID": id(&p, "paymentID"), "include_history": true}))
            .await
            .unwrap();
        let steps: Vec<(&str, &str)> = full["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["to_status"].as_str().unwrap(), h["source"].as_str().unwrap()))
            .collect();
        assert_eq!(steps, [("pending", "api"), ("authorized", "api"), ("succeeded", "api")]);
        assert!(full["history"][2]["stripe_request_id"].as_str().unwrap().starts_with("req_"));
    }
}

#[tokio::test]
async fn an_automatic_payment_is_captured_at_once() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let p = pay(
            &app,
            via,
            &customer,
            json!({"description": "Order 42", "metadata": {"order": "42"}, "receipt_email": "ada@example.com"}),
        )
        .await
        .unwrap();
        assert_eq!(p["status"], "succeeded");
        assert_eq!((int(&p, "amount_captured"), int(&p, "amount_capturable")), (5000, 0));
        assert_eq!(p["capture_method"], "automatic");
        assert_eq!(p["metadata"]["order"], "42");
        let pi = app.stripe_object(p["stripe_payment_intent_id"].as_str().unwrap());
        assert_eq!(
            (pi["status"].as_str(), pi["description"].as_str(), pi["receipt_email"].as_str()),
            (Some("succeeded"), Some("Order 42"), Some("ada@example.com"))
        );
        assert_eq!(pi["metadata"]["order"], "42");
        assert_eq!(pi["customer"], app.stripe_customers()[0]["id"]);
    }
}

#[tokio::test]
async fn every_kind_of_decline_answers_402_with_stripes_codes_and_keeps_a_failed_payment() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let cases = [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
        ("pm_card_chargeCustomerFail", "card_declined", "generic_decline"),
    ];
    for via in BOTH {
        for (pm, code, decline) in cases {
            let f = pay(&app, via, &customer, json!({"payment_method": pm})).await.unwrap_err();
            assert_eq!((f.code, f.reason.as_str()), (Code::FailedPrecondition, "CARD_DECLINED"), "{pm} {via:?}");
            if via == Via::Rest {
                assert_eq!(f.http, Some(402), "{pm}");
            }
            assert_eq!(
                (f.details["decline_code"].as_str(), f.details["stripe_code"].as_str()),
                (Some(decline), Some(code)),
                "{pm}"
            );
            assert!(!f.message.is_empty());
            let payment_id = f.details["paymentID"].as_str().unwrap().to_string();
            let p = app.call(via, "GetPayment", json!({"paymentID": payment_id})).await.unwrap();
            assert_eq!(
                (p["status"].as_str(), p["failure_code"].as_str(), p["decline_code"].as_str()),
                (Some("failed"), Some(code), Some(decline))
            );
            let pi = app.stripe_object(p["stripe_payment_intent_id"].as_str().unwrap());
            assert_eq!(pi["status"], "requires_payment_method");
        }
    }
}

async fn authenticate(app: &TestApp, pi: &str, outcome: &str) {
    let resp = app
        .http
        .post(format!("{}/_sim/payment_intents/{pi}/authenticate", app.sim.url()))
        .json(&json!({"outcome": outcome}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn three_d_secure_completed_in_the_browser_authorizes_the_payment() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let p = pay(
            &app,
            via,
            &customer,
            json!({"payment_method": "pm_card_authenticationRequired", "capture_method": "manual"}),
        )
        .await
        .unwrap();
        assert_eq!(p["status"], "requires_action");
        let pi = p["stripe_payment_intent_id"].as_str().unwrap().to_string();
        assert!(p["client_secret"].as_str().unwrap().starts_with(&format!("{pi}_secret_")));
        assert_eq!(p["next_action"]["type"], "use_stripe_sdk");

        authenticate(&app, &pi, "succeed").await;
        let after = app
            .call(via, "GetPayment", json!({"paymentID": id(&p, "paymentID"), "include_history": true}))
            .await
            .unwrap();
        assert_eq!(after["status"], "authorized");
        assert_eq!(int(&after, "amount_capturable"), 5000);
        assert!(after.get("client_secret").is_none(), "the secret is only shown while the customer must act");
        assert_eq!(after["history"].as_array().unwrap().last().unwrap()["note"], "re-read from Stripe");
        let done = app.call(via, "CapturePayment", json!({"paymentID": id(&p, "paymentID")})).await.unwrap();
        assert_eq!((done["status"].as_str(), int(&done, "amount_captured")), (Some("succeeded"), 5000));
    }
}

#[tokio::test]
async fn three_d_secure_that_fails_leaves_the_payment_failed() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let p = pay(
            &app,
            via,
            &customer,
            json!({"payment_method": "pm_card_authenticationRequired", "return_url": "https://shop.example/back"}),
        )
        .await
        .unwrap();
        assert_eq!(p["next_action"]["type"], "redirect_to_url");
        assert_eq!(p["next_action"]["return_url"], "https://shop.example/back");
        assert!(p["next_action"]["redirect_url"].as_str().unwrap().starts_with("https://"));
        authenticate(&app, p["stripe_payment_intent_id"].as_str().unwrap(), "fail").await;
        let after = app.call(via, "GetPayment", json!({"paymentID": id(&p, "paymentID")})).await.unwrap();
        assert_eq!(
            (after["status"].as_str(), after["failure_code"].as_str()),
            (Some("failed"), Some("payment_intent_authentication_failure"))
        );
    }
}

#[tokio::test]
async fn requests_that_cannot_succeed_are_refused_before_stripe_is_called() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let auth = authorized(&app, via, &customer).await;
        let auth_id = id(&auth, "paymentID");
        let canceled = authorized(&app, via, &customer).await;
        let canceled_id = id(&canceled, "paymentID");
        app.call(via, "CancelPayment", json!({"paymentID": canceled_id, "reason": "abandoned"})).await.unwrap();
        let done = pay(&app, via, &customer, json!({"amount": 1000})).await.unwrap();
        let done_id = id(&done, "paymentID");

        let cases = [
            ("CapturePayment", json!({"paymentID": auth_id, "amount": 5001}), "CAPTURE_EXCEEDS_AUTHORIZED"),
            ("CapturePayment", json!({"paymentID": done_id}), "ALREADY_CAPTURED"),
            ("CapturePayment", json!({"paymentID": canceled_id}), "PAYMENT_CANCELED"),
            ("RefundPayment", json!({"paymentID": canceled_id}), "PAYMENT_CANCELED"),
            ("RefundPayment", json!({"paymentID": auth_id}), "PAYMENT_NOT_CAPTURED"),
            ("RefundPayment", json!({"paymentID": done_id, "amount": 1001}), "REFUND_EXCEEDS_CAPTURED"),
            ("CancelPayment", json!({"paymentID": done_id}), "ALREADY_SUCCEEDED"),
            ("CancelPayment", json!({"paymentID": canceled_id}), "ALREADY_CANCELED"),
        ];
        for (rpc, input, reason) in cases {
            let calls = app.stripe_calls();
            let f = app.call(via, rpc, input.clone()).await.unwrap_err();
            assert_eq!((f.code, f.reason.as_str()), (Code::FailedPrecondition, reason), "{rpc} {input} {via:?}");
            if via == Via::Rest {
                assert_eq!(f.http, Some(409), "a state that forbids it is a conflict, not a malformed request");
            }
            assert_eq!(app.stripe_calls(), calls, "{rpc} {reason}: Stripe was not called");
        }
        // Capturing twice: the second is refused locally.
        app.call(via, "CapturePayment", json!({"paymentID": auth_id})).await.unwrap();
        let f = app.call(via, "CapturePayment", json!({"paymentID": auth_id})).await.unwrap_err();
        assert_eq!(f.reason, "ALREADY_CAPTURED");
    }
}

#[tokio::test]
async fn a_conflict_replayed_under_its_idempotency_key_is_still_a_409() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let done = pay(&app, Via::Rest, &customer, json!({"amount": 1000})).await.unwrap();
    let path = format!("/v1/payment/{}/cancel", id(&done, "paymentID"));
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = app
            .http
            .post(format!("{}{path}", app.rest))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "cancel-a-captured-payment")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        answers.push((status.as_u16(), body["reason"].as_str().unwrap_or_default().to_string(), replayed));
    }
    assert_eq!(answers[0], (409, "ALREADY_SUCCEEDED".to_string(), false));
    assert_eq!(answers[1], (409, "ALREADY_SUCCEEDED".to_string(), true), "the saved answer keeps its status");
}

#[tokio::test]
async fn several_partial_refunds_are_allowed_up_to_the_captured_amount_and_not_one_more() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let p = pay(&app, via, &customer, json!({"amount": 1000})).await.unwrap();
        let pid = id(&p, "paymentID");
        let r1 = app
            .call(via, "RefundPayment", json!({"paymentID": pid, "amount": 300, "reason": "requested_by_customer"}))
            .await
            .unwrap();
        assert_eq!(
            (r1["status"].as_str(), int(&r1, "amount"), r1["currency"].as_str()),
            (Some("succeeded"), 300, Some("usd"))
        );
        assert!(r1["stripe_refund_id"].as_str().unwrap().starts_with("re_"));
        let after = app.call(via, "GetPayment", json!({"paymentID": pid})).await.unwrap();
        assert_eq!((after["status"].as_str(), int(&after, "amount_refunded")), (Some("partially_refunded"), 300));

        app.call(via, "RefundPayment", json!({"paymentID": pid, "amount": 500})).await.unwrap();
        let f = app.call(via, "RefundPayment", json!({"paymentID": pid, "amount": 201})).await.unwrap_err();
        assert_eq!(f.reason, "REFUND_EXCEEDS_CAPTURED");
        let last = app.call(via, "RefundPayment", json!({"paymentID": pid})).await.unwrap();
        assert_eq!(int(&last, "amount"), 200, "with no amount, all that remains");
        let after = app.call(via, "GetPayment", json!({"paymentID": pid})).await.unwrap();
        assert_eq!((after["status"].as_str(), int(&after, "amount_refunded")), (Some("refunded"), 1000));
        let f = app.call(via, "RefundPayment", json!({"paymentID": pid, "amount": 1})).await.unwrap_err();
        assert_eq!(f.reason, "ALREADY_REFUNDED");

        let list = app.call(via, "ListRefunds", json!({"paymentID": pid})).await.unwrap();
        let amounts: Vec<i64> = list["refunds"].as_array().unwrap().iter().map(|r| int(r, "amount")).collect();
        assert_eq!(amounts, [300, 500, 200]);
        let one = app.call(via, "GetRefund", json!({"refundID": id(&r1, "refundID")})).await.unwrap();
        assert_eq!(one["reason"], "requested_by_customer");
        let charge = app.stripe_object(
            app.stripe_object(after["stripe_payment_intent_id"].as_str().unwrap())["latest_charge"].as_str().unwrap(),
        );
        assert_eq!((charge["amount_refunded"].as_i64(), charge["refunded"].as_bool()), (Some(1000), Some(true)));
        let f = app.call(via, "GetRefund", json!({"refundID": "999999"})).await.unwrap_err();
        assert_eq!((f.code, f.reason.as_str()), (Code::NotFound, "REFUND_NOT_FOUND"));
    }
}

#[tokio::test]
async fn concurrent_refunds_never_return_more_than_was_captured() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let p = pay(&app, Via::Rest, &customer, json!({"amount": 1000})).await.unwrap();
    let pid = id(&p, "paymentID");
    let attempts = (0..6).map(|i| {
        let via = if i % 2 == 0 { Via::Rest } else { Via::Grpc };
        app.call(via, "RefundPayment", json!({"paymentID": pid, "amount": 300}))
    });
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "three refunds of 300 fit in 1000: {results:?}");
    let after = app.call(Via::Rest, "GetPayment", json!({"paymentID": pid})).await.unwrap();
    assert_eq!(int(&after, "amount_refunded"), 900);
}

#[tokio::test]
async fn a_payment_is_canceled_with_its_reason_and_its_authorization_released() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let p = authorized(&app, via, &customer).await;
        let c = app
            .call(via, "CancelPayment", json!({"paymentID": id(&p, "paymentID"), "reason": "requested_by_customer"}))
            .await
            .unwrap();
        assert_eq!((c["status"].as_str(), int(&c, "amount_capturable")), (Some("canceled"), 0));
        assert_eq!(c["cancellation_reason"], "requested_by_customer");
        let pi = app.stripe_object(p["stripe_payment_intent_id"].as_str().unwrap());
        assert_eq!(
            (pi["status"].as_str(), pi["cancellation_reason"].as_str()),
            (Some("canceled"), Some("requested_by_customer"))
        );
        let f = app
            .call(via, "CancelPayment", json!({"paymentID": id(&p, "paymentID"), "reason": "bored"}))
            .await
            .unwrap_err();
        assert_eq!(f.reason, "INVALID_REASON");
    }
}

#[tokio::test]
async fn zero_decimal_and_three_decimal_currencies_are_charged_in_their_own_units() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let yen = pay(&app, via, &customer, json!({"amount": 500, "currency": "JPY"})).await.unwrap();
        assert_eq!((int(&yen, "amount"), yen["currency"].as_str()), (500, Some("jpy")));
        let pi = app.stripe_object(yen["stripe_payment_intent_id"].as_str().unwrap());
        assert_eq!((pi["amount"].as_i64(), pi["currency"].as_str()), (Some(500), Some("jpy")));
        let f = pay(&app, via, &customer, json!({"amount": 49, "currency": "jpy"})).await.unwrap_err();
        assert_eq!(f.reason, "AMOUNT_TOO_SMALL");

        let dinar = pay(&app, via, &customer, json!({"amount": 1230, "currency": "kwd", "capture_method": "manual"}))
            .await
            .unwrap();
        assert_eq!(dinar["currency"], "kwd");
        let f = pay(&app, via, &customer, json!({"amount": 1235, "currency": "kwd"})).await.unwrap_err();
        assert_eq!(f.reason, "INVALID_AMOUNT");
        let f = app
            .call(via, "CapturePayment", json!({"paymentID": id(&dinar, "paymentID"), "amount": 615}))
            .await
            .unwrap_err();
        assert_eq!(f.reason, "INVALID_AMOUNT", "a three-decimal capture must end in 0 too");
        let part = app
            .call(via, "CapturePayment", json!({"paymentID": id(&dinar, "paymentID"), "amount": 610}))
            .await
            .unwrap();
        assert_eq!(int(&part, "amount_captured"), 610);
    }
}

#[tokio::test]
async fn bad_payment_requests_are_refused_with_a_reason_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let calls = app.stripe_calls();
    let cases = [
        (json!({"payment_method": "4242 4242 4242 4242"}), Code::InvalidArgument, "RAW_CARD_NUMBER"),
        (json!({"payment_method": ""}), Code::InvalidArgument, "MISSING_PAYMENT_METHOD"),
        (json!({"payment_method": "card_123"}), Code::InvalidArgument, "INVALID_PAYMENT_METHOD"),
        (json!({"metadata": {"note": "card 4000002760003184"}}), Code::InvalidArgument, "RAW_CARD_NUMBER"),
        (json!({"currency": "xyz"}), Code::InvalidArgument, "INVALID_CURRENCY"),
        (json!({"amount": 0}), Code::InvalidArgument, "INVALID_AMOUNT"),
        (json!({"amount": 100000000}), Code::InvalidArgument, "AMOUNT_TOO_LARGE"),
        (json!({"amount": 49}), Code::InvalidArgument, "AMOUNT_TOO_SMALL"),
        (json!({"priceID": "1"}), Code::InvalidArgument, "AMOUNT_AND_PRICE"),
        (json!({"capture_method": "later"}), Code::InvalidArgument, "INVALID_CAPTURE_METHOD"),
        (json!({"receipt_email": "nope"}), Code::InvalidArgument, "INVALID_EMAIL"),
        (json!({"metadata": {"paymentID": "7"}}), Code::InvalidArgument, "INVALID_METADATA"),
        (json!({"return_url": "javascript:alert(1)"}), Code::InvalidArgument, "INVALID_URL"),
        (json!({"customerID": "424242"}), Code::NotFound, "CUSTOMER_NOT_FOUND"),
        (json!({"customerID": "0"}), Code::InvalidArgument, "INVALID_CUSTOMER_ID"),
    ];
    for via in BOTH {
        for (extra, code, reason) in &cases {
            let f = pay(&app, via, &customer, extra.clone()).await.unwrap_err();
            assert_eq!((f.code, f.reason.as_str()), (*code, *reason), "{extra} {via:?}");
        }
        let f = app
            .call(via, "CreatePayment", json!({"customerID": customer, "payment_method": "pm_card_visa"}))
            .await
            .unwrap_err();
        assert_eq!(f.reason, "MISSING_AMOUNT");
    }
    assert_eq!(app.count("payment.payment").await, 0);
    assert_eq!(app.stripe_calls(), calls, "nothing was sent to Stripe");
    let (status, body) = app.post("/v1/payment", json!({"customerID": customer, "amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "card_number": "4242424242424242"})).await;
    assert_eq!(status, 200, "unknown fields are ignored, and the card number is not stored: {body}");
    let dump: String = sqlx::query_scalar("SELECT string_agg(row_to_json(p)::text, '') FROM payment.payment p")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!dump.contains("4242424242424242"));
}

#[tokio::test]
async fn products_and_prices_are_made_in_stripe_listed_extended_deactivated_and_paid_by_price() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    for via in BOTH {
        let product = app
            .call(
                via,
                "CreateProduct",
                json!({"name": "Tea", "description": "Green", "unit_amount": 1200, "currency": "eur"}),
            )
            .await
            .unwrap();
        let product_id = id(&product, "productID");
        assert!(product["active"].as_bool().unwrap());
        let price = &product["prices"][0];
        assert_eq!((int(price, "unit_amount"), price["currency"].as_str()), (1200, Some("eur")));
        let stripe_product = app.stripe_object(product["stripe_product_id"].as_str().unwrap());
        assert_eq!(
            (stripe_product["name"].as_str(), stripe_product["metadata"]["productID"].as_str()),
            (Some("Tea"), Some(product_id.as_str()))
        );
        let stripe_price = app.stripe_object(price["stripe_price_id"].as_str().unwrap());
        assert_eq!(
            (stripe_price["unit_amount"].as_i64(), stripe_price["product"].as_str()),
            (Some(1200), stripe_product["id"].as_str())
        );

        let second = app
            .call(via, "AddPrice", json!({"productID": product_id, "unit_amount": 900, "currency": "usd"}))
            .await
            .unwrap();
        let got = app.call(via, "GetProduct", json!({"productID": product_id})).await.unwrap();
        assert_eq!(got["prices"].as_array().unwrap().len(), 2);

        let p = app.call(via, "CreatePayment", json!({"customerID": customer, "priceID": id(price, "priceID"), "quantity": 3, "payment_method": "pm_card_visa"})).await.unwrap();
        assert_eq!((int(&p, "amount"), p["currency"].as_str(), int(&p, "quantity")), (3600, Some("eur"), 3));

        let off = app.call(via, "DeactivatePrice", json!({"priceID": id(&second, "priceID")})).await.unwrap();
        assert!(off.get("active").is_none(), "false is a default, left out: {off}");
        assert_eq!(app.stripe_object(second["stripe_price_id"].as_str().unwrap())["active"], false);
        let f = app
            .call(
                via,
                "CreatePayment",
                json!({"customerID": customer, "priceID": id(&second, "priceID"), "payment_method": "pm_card_visa"}),
            )
            .await
            .unwrap_err();
        assert_eq!(f.reason, "PRICE_INACTIVE");

        let gone = app.call(via, "DeactivateProduct", json!({"productID": product_id})).await.unwrap();
        assert!(gone.get("active").is_none());
        let f = app
            .call(
                via,
                "CreatePayment",
                json!({"customerID": customer, "priceID": id(price, "priceID"), "payment_method": "pm_card_visa"}),
            )
            .await
            .unwrap_err();
        assert_eq!(f.reason, "PRICE_INACTIVE");
        let f = app
            .call(via, "AddPrice", json!({"productID": product_id, "unit_amount": 100, "currency": "usd"}))
            .await
            .unwrap_err();
        assert_eq!(f.reason, "PRODUCT_INACTIVE");
    }
    let all = app.call(Via::Rest, "ListProducts", json!({"page_size": 1})).await.unwrap();
    assert_eq!(all["products"].as_array().unwrap().len(), 1);
    let rest = app.call(Via::Grpc, "ListProducts", json!({"page_token": all["next_page_token"]})).await.unwrap();
    assert_eq!(rest["products"].as_array().unwrap().len(), 1);
    let active = app.call(Via::Rest, "ListProducts", json!({"active_only": true})).await.unwrap();
    assert!(active.get("products").is_none(), "both were deactivated");
    let f = app
        .call(Via::Grpc, "CreateProduct", json!({"name": "", "unit_amount": 100, "currency": "usd"}))
        .await
        .unwrap_err();
    assert_eq!(f.reason, "MISSING_NAME");
    let f = app.call(Via::Rest, "GetProduct", json!({"productID": "999"})).await.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::NotFound, "PRODUCT_NOT_FOUND"));
}

#[tokio::test]
async fn payments_are_listed_newest_first_by_customer_and_status_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let ada = app.new_customer().await;
    let bob = app.new_customer().await;
    let mut ids = Vec::new();
    for (who, manual) in [(&ada, false), (&ada, true), (&bob, false), (&ada, false)] {
        let extra = if manual { json!({"capture_method": "manual"}) } else { json!({}) };
        ids.push(id(&pay(&app, Via::Rest, who, extra).await.unwrap(), "paymentID"));
    }
    for via in BOTH {
        let page = app.call(via, "ListPayments", json!({"customerID": ada, "page_size": 2})).await.unwrap();
        let got: Vec<String> = page["payments"].as_array().unwrap().iter().map(|p| id(p, "paymentID")).collect();
        assert_eq!(got, [ids[3].clone(), ids[1].clone()]);
        let next = app
            .call(
                via,
                "ListPayments",
                json!({"customerID": ada, "page_size": 2, "page_token": page["next_page_token"]}),
            )
            .await
            .unwrap();
        let got: Vec<String> = next["payments"].as_array().unwrap().iter().map(|p| id(p, "paymentID")).collect();
        assert_eq!(got, [ids[0].clone()]);
        let waiting = app.call(via, "ListPayments", json!({"status": "authorized"})).await.unwrap();
        assert_eq!(waiting["payments"].as_array().unwrap().len(), 1);
        let f = app.call(via, "ListPayments", json!({"status": "lost"})).await.unwrap_err();
        assert_eq!(f.reason, "INVALID_STATUS");
    }
}

#[tokio::test]
async fn an_answer_from_stripe_that_differs_from_the_request_is_never_stored_as_success() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    app.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/payment_intents", "tamper": {"amount": 1}}))
            .unwrap(),
    );
    let f = pay(&app, Via::Rest, &customer, json!({})).await.unwrap_err();
    assert_eq!((f.code, f.reason.as_str(), f.http), (Code::Internal, "STRIPE_MISMATCH", Some(500)));
    let p = app
        .call(Via::Grpc, "GetPayment", json!({"paymentID": f.details["paymentID"], "include_history": true}))
        .await
        .unwrap();
    assert_ne!(p["status"], "succeeded");
    assert_eq!(p["failure_code"], "integrity_mismatch");
    assert!(p["failure_message"].as_str().unwrap().contains("amount 1 instead of 5000"));
    assert!(p["history"].as_array().unwrap().iter().any(|h| h["note"].as_str().unwrap_or("").contains("integrity")));
}

#[tokio::test]
async fn an_unknown_outcome_is_never_a_success_and_a_retry_resumes_the_same_operation() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let p = authorized(&app, Via::Rest, &customer).await;
    let pid = id(&p, "paymentID");
    app.stripe_fails("POST", "/v1/payment_intents", 503);
    let f = app.call(Via::Rest, "CapturePayment", json!({"paymentID": pid, "amount": 4000})).await.unwrap_err();
    assert_eq!((f.code, f.reason.as_str(), f.http), (Code::Unavailable, "STRIPE_UNAVAILABLE", Some(503)));
    let now = app.call(Via::Rest, "GetPayment", json!({"paymentID": pid})).await.unwrap();
    assert_eq!(now["status"], "authorized", "not a success");

    let f = app.call(Via::Grpc, "CancelPayment", json!({"paymentID": pid})).await.unwrap_err();
    assert_eq!((f.code, f.reason.as_str()), (Code::Aborted, "OPERATION_IN_PROGRESS"), "another operation waits");

    app.sim.state().faults.clear();
    let done = app.call(Via::Grpc, "CapturePayment", json!({"paymentID": pid, "amount": 4000})).await.unwrap();
    assert_eq!((done["status"].as_str(), int(&done, "amount_captured")), (Some("succeeded"), 4000));
    let keys: Vec<String> = app
        .sim
        .state()
        .received()
        .into_iter()
        .filter(|r| r.path.ends_with("/capture"))
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert!(keys.len() >= 2 && keys.iter().all(|k| *k == keys[0]), "every attempt carried the same key: {keys:?}");
    let ops: Vec<(String, String)> = sqlx::query_as("SELECT kind, state FROM payment.operation WHERE kind = 'capture'")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(ops, [("capture".to_string(), "succeeded".to_string())]);
}

#[tokio::test]
async fn a_missing_payment_is_not_found_over_both() {
    let app = TestApp::spawn().await;
    for via in BOTH {
        for rpc in ["GetPayment", "CapturePayment", "CancelPayment", "RefundPayment", "ListRefunds"] {
            let f = app.call(via, rpc, json!({"paymentID": "987654"})).await.unwrap_err();
            assert_eq!((f.code, f.reason.as_str()), (Code::NotFound, "PAYMENT_NOT_FOUND"), "{rpc}");
        }
        let f = app.call(via, "GetPayment", json!({"paymentID": "0"})).await.unwrap_err();
        assert_eq!(f.reason, "INVALID_ID");
    }
}
