//! Customers over both transports: create, get, update, list; refusals with
//! nothing written; Stripe refusing and unreachable.

use crate::common::{TestApp, reason};
use amazing_payments::proto::{CreateCustomerRequest, GetCustomerRequest, ListCustomersRequest, UpdateCustomerRequest};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

fn create(name: &str, email: &str) -> CreateCustomerRequest {
    CreateCustomerRequest { name: name.into(), email: email.into(), stripe_charge_date: String::new() }
}

#[tokio::test]
async fn a_customer_created_over_rest_is_stored_mirrored_in_stripe_and_readable_over_both() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post("/v1/customer", json!({"name": "Ada Lovelace", "email": "ada@example.com", "stripe_charge_date": "15"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["customerID"].as_str().expect("int64 is a JSON string");
    assert_eq!(body["name"], "Ada Lovelace");
    assert_eq!(body["stripe_charge_date"], "15");
    let stripe_id = body["stripe_customer_key"].as_str().unwrap();
    assert!(stripe_id.starts_with("cus_"));

    let stripe = app.stripe_customers();
    assert_eq!(stripe.len(), 1);
    assert_eq!(stripe[0]["id"], stripe_id);
    assert_eq!(stripe[0]["email"], "ada@example.com");
    assert_eq!(stripe[0]["metadata"]["customerID"], id);

    let (status, fetched) = app.get(&format!("/v1/customer/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, body);

    let over_grpc = app
        .grpc()
        .await
        .get_customer(app.authed(GetCustomerRequest { customer_id: id.parse().unwrap(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_grpc.email, "ada@example.com");
    assert_eq!(over_grpc.stripe_customer_key, stripe_id);
}

#[tokio::test]
async fn a_customer_created_over_grpc_is_readable_over_rest_with_defaults_left_out() {
    let app = TestApp::spawn().await;
    let c =
        app.grpc().await.create_customer(app.authed(create("Grace", "grace@example.com"))).await.unwrap().into_inner();
    assert!(c.customer_id > 0);
    let (status, body) = app.get(&format!("/v1/customer/{}", c.customer_id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["customerID"], Value::String(c.customer_id.to_string()));
    assert!(body.get("stripe_charge_date").is_none(), "empty fields are left out: {body}");
    assert_eq!(app.count("customer.customer").await, 1);
}

#[tokio::test]
async fn the_lower_camel_case_names_are_accepted_on_input() {
    let app = TestApp::spawn().await;
    let (status, body) =
        app.post("/v1/customer", json!({"name": "Ada", "email": "ada@example.com", "stripeChargeDate": "1st"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stripe_charge_date"], "1st");
}

#[tokio::test]
async fn an_update_changes_only_the_fields_given_here_and_in_stripe() {
    let app = TestApp::spawn().await;
    let (_, c) =
        app.post("/v1/customer", json!({"name": "Ada", "email": "ada@example.com", "stripe_charge_date": "1"})).await;
    let id = c["customerID"].as_str().unwrap();

    let (status, updated) = app.post(&format!("/v1/customer/{id}"), json!({"name": "Ada King"})).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "Ada King");
    assert_eq!(updated["email"], "ada@example.com");
    assert_eq!(updated["stripe_charge_date"], "1");
    assert_eq!(app.stripe_customers()[0]["name"], "Ada King");

    let mut grpc = app.grpc().await;
    let req = UpdateCustomerRequest {
        customer_id: id.parse().unwrap(),
        email: "ada.king@example.com".into(),
        ..Default::default()
    };
    let updated = grpc.update_customer(app.authed(req)).await.unwrap().into_inner();
    assert_eq!((updated.name.as_str(), updated.email.as_str()), ("Ada King", "ada.king@example.com"));
    assert_eq!(app.stripe_customers()[0]["email"], "ada.king@example.com");

    let req = UpdateCustomerRequest {
        customer_id: id.parse().unwrap(),
        stripe_customer_key: "cus_other".into(),
        ..Default::default()
    };
    let err = grpc.update_customer(app.authed(req)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "STRIPE_CUSTOMER_KEY_IMMUTABLE"));
}

#[tokio::test]
async fn customers_are_listed_in_pages_and_filtered_by_email_over_both() {
    let app = TestApp::spawn().await;
    for (name, email) in
        [("A", "a@example.com"), ("B", "b@example.com"), ("C", "A@Example.com"), ("D", "d@example.com")]
    {
        assert_eq!(app.post("/v1/customer", json!({"name": name, "email": email})).await.0, StatusCode::OK);
    }
    let (status, page1) = app.get("/v1/customer?page_size=3").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = page1["customers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["A", "B", "C"]);
    let token = page1["next_page_token"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/v1/customer?page_size=3&page_token={token}")).await;
    assert_eq!(page2["customers"].as_array().unwrap().len(), 1);
    assert!(page2.get("next_page_token").is_none());

    let mut grpc = app.grpc().await;
    let req = ListCustomersRequest { email: "a@example.com".into(), ..Default::default() };
    let found = grpc.list_customers(app.authed(req)).await.unwrap().into_inner();
    let names: Vec<&str> = found.customers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["A", "C"], "e-mail compared without regard to case");

    let (status, body) = app.get("/v1/customer?page_size=500").await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PAGE_SIZE")));
    let (status, body) = app.get("/v1/customer?page_token=forged").await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PAGE_TOKEN")));
}

#[tokio::test]
async fn invalid_customers_are_refused_over_both_transports_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(257);
    let long_email = format!("{}@example.com", "a".repeat(250));
    let cases = [
        (json!({"name": "", "email": "ada@example.com"}), "MISSING_NAME"),
        (json!({"name": "Ada", "email": ""}), "MISSING_EMAIL"),
        (json!({"name": "Ada", "email": "not an address"}), "INVALID_EMAIL"),
        (json!({"name": "Ada", "email": "ada@nowhere"}), "INVALID_EMAIL"),
        (json!({"name": long, "email": "ada@example.com"}), "NAME_TOO_LONG"),
        (json!({"name": "Ada", "email": long_email}), "EMAIL_TOO_LONG"),
        (
            json!({"name": "Ada", "email": "ada@example.com", "stripe_charge_date": "9".repeat(65)}),
            "CHARGE_DATE_TOO_LONG",
        ),
    ];
    let mut grpc = app.grpc().await;
    for (body, expected) in cases {
        let (status, answer) = app.post("/v1/customer", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["reason"], expected, "{answer}");
        assert_eq!(answer["code"], 3);
        assert!(!answer["message"].as_str().unwrap().is_empty());

        let req = CreateCustomerRequest {
            name: body["name"].as_str().unwrap().into(),
            email: body["email"].as_str().unwrap().into(),
            stripe_charge_date: body["stripe_charge_date"].as_str().unwrap_or("").into(),
        };
        let err = grpc.create_customer(app.authed(req)).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::InvalidArgument, expected.to_string()));
    }
    assert_eq!(app.count("customer.customer").await, 0);
    assert!(app.stripe_customers().is_empty(), "nothing was sent to Stripe");
}

#[tokio::test]
async fn bad_customer_ids_are_refused_and_unknown_ones_are_not_found() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/v1/customer/0").await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_CUSTOMER_ID")));
    let (status, body) = app.get("/v1/customer/abc").await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("MALFORMED_REQUEST")));
    assert_eq!(body["details"]["field"], "customerID");
    let (status, body) = app.get("/v1/customer/99999999999999999999").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app.get("/v1/customer/4242").await;
    assert_eq!(
        (status, body["reason"].as_str(), body["code"].as_i64()),
        (StatusCode::NOT_FOUND, Some("CUSTOMER_NOT_FOUND"), Some(5))
    );
    let (status, _) = app.post("/v1/customer/4242", json!({"name": "Nobody"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut grpc = app.grpc().await;
    let err =
        grpc.get_customer(app.authed(GetCustomerRequest { customer_id: 0, ..Default::default() })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = grpc
        .get_customer(app.authed(GetCustomerRequest { customer_id: 4242, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::NotFound, "CUSTOMER_NOT_FOUND".to_string()));
    assert_eq!(app.count("customer.customer").await, 0);
}

#[tokio::test]
async fn stripe_refusing_a_customer_is_a_clear_error_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    app.stripe_fails("POST", "/v1/customers", 400);
    let (status, body) = app.post("/v1/customer", json!({"name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("STRIPE_REFUSED")), "{body}");
    let err = app.grpc().await.create_customer(app.authed(create("Ada", "ada@example.com"))).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "STRIPE_REFUSED".to_string()));
    assert_eq!(app.count("customer.customer").await, 0);
}

#[tokio::test]
async fn stripe_failing_with_5xx_is_unavailable_after_retries_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    app.stripe_fails("POST", "/v1/customers", 503);
    let (status, body) = app.post("/v1/customer", json!({"name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("STRIPE_UNAVAILABLE")));
    assert_eq!(app.count("customer.customer").await, 0);
}

#[tokio::test]
async fn stripe_unreachable_is_503_unavailable_and_nothing_is_written() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = TestApp::spawn_with(crate::common::Options {
        stripe_base: Some(format!("http://{closed}")),
        ..Default::default()
    })
    .await;
    let (status, body) = app.post("/v1/customer", json!({"name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!(
        (status, body["reason"].as_str(), body["code"].as_i64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("STRIPE_UNAVAILABLE"), Some(14))
    );
    let err = app.grpc().await.create_customer(app.authed(create("Ada", "ada@example.com"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(app.count("customer.customer").await, 0);
    // An update must not change our row when Stripe cannot be told.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO customer.customer (name, email, stripe_customer_key) VALUES ('Old', 'old@example.com', 'cus_x') RETURNING id",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let (status, _) = app.post(&format!("/v1/customer/{id}"), json!({"name": "New"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let name: String = sqlx::query_scalar("SELECT name FROM customer.customer").fetch_one(&app.db).await.unwrap();
    assert_eq!(name, "Old");
}

#[tokio::test]
async fn white_space_around_values_is_trimmed_as_before_over_both_transports() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/customer",
            json!({"name": " Ada Lovelace\n", "email": " ada@example.com ", "stripe_charge_date": "1\t"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["name"].as_str(), body["email"].as_str()), (Some("Ada Lovelace"), Some("ada@example.com")));
    let mut grpc = app.grpc().await;
    let made = grpc.create_customer(app.authed(create("\tGrace Hopper ", "grace@example.com\n"))).await.unwrap();
    assert_eq!(made.get_ref().email, "grace@example.com");
    let (status, body) = app.get("/v1/customer?email=%20ada@example.com").await;
    assert_eq!((status, body["customers"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{body}");
}

#[tokio::test]
async fn a_caller_without_a_key_learns_nothing_of_its_message_over_grpc_as_over_rest() {
    let app = TestApp::spawn().await;
    let mut grpc = app.grpc().await;
    let err = grpc.create_customer(create("", "not an address")).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "MISSING_API_KEY"));
    let (status, body) = app.rest_call(reqwest::Method::POST, "/v1/customer", Some(json!({"email": "x"})), None).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::UNAUTHORIZED, Some("MISSING_API_KEY")));
    let err = grpc.create_customer(app.authed(create("", "not an address"))).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "MISSING_NAME"));
    assert_eq!(app.count("customer.customer").await, 0);
}
