//! What every route shares: API keys, health, error formats, request ids, the
//! generated REST routes and OpenAPI document, gRPC health and reflection.

use crate::common::{Options, TestApp, proxy::Proxy, reason, with_key};
use amazing_payments::{
    http::gateway::{ROUTES, RPCS},
    proto::{CreateCustomerRequest, GetCustomerRequest, HealthCheckRequest, ListCustomersRequest},
    store,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn missing_wrong_and_revoked_api_keys_are_refused_over_both_transports() {
    let app = TestApp::spawn().await;
    let mut grpc = app.grpc().await;
    // The key with its last character changed (to one it is not).
    let last = if app.key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &app.key[..app.key.len() - 1]);
    for (key, expected) in [
        (None, "MISSING_API_KEY"),
        (Some("ap_nothing1_abc"), "INVALID_API_KEY"),
        (Some(wrong.as_str()), "INVALID_API_KEY"),
        (Some("garbage"), "INVALID_API_KEY"),
    ] {
        let (status, body) = app.rest_call(Method::GET, "/v1/customer", None, key).await;
        assert_eq!((status, body["reason"].as_str()), (StatusCode::UNAUTHORIZED, Some(expected)), "{key:?}");
        let req = match key {
            Some(k) => with_key(ListCustomersRequest::default(), k),
            None => tonic::Request::new(ListCustomersRequest::default()),
        };
        let err = grpc.list_customers(req).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, expected.to_string()));
    }
    let (status, _) =
        app.rest_call(Method::POST, "/v1/customer", Some(json!({"name": "A", "email": "a@example.com"})), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("customer.customer").await, 0, "an unauthenticated call writes nothing");

    assert_eq!(app.get("/v1/customer").await.0, StatusCode::OK);
    assert!(store::apikeys::revoke(&app.db, &app.key[..11]).await.unwrap());
    let (status, body) = app.get("/v1/customer").await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::UNAUTHORIZED, Some("API_KEY_REVOKED")));
    let err = grpc.list_customers(app.authed(ListCustomersRequest::default())).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "API_KEY_REVOKED".to_string()));
}

#[tokio::test]
async fn only_a_keyed_hash_and_the_prefix_of_a_key_are_stored() {
    let app = TestApp::spawn().await;
    let (prefix, hash): (String, Vec<u8>) =
        sqlx::query_as("SELECT prefix, hash FROM auth.api_key").fetch_one(&app.db).await.unwrap();
    assert!(app.key.starts_with(&prefix));
    assert!(prefix.len() < 16);
    assert_eq!(hash.len(), 32);
    let dump: String =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM auth.api_key k").fetch_one(&app.db).await.unwrap();
    assert!(!dump.contains(&app.key[12..]), "the secret part of the key is nowhere in the row");
}

#[tokio::test]
async fn health_needs_no_key_and_answers_is_healthy() {
    let app = TestApp::spawn().await;
    let (status, body) = app.rest_call(Method::GET, "/v1/healthcheck", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"isHealthy": true})));
    let reply = app.grpc().await.health_check(HealthCheckRequest {}).await.unwrap().into_inner();
    assert!(reply.is_healthy);
}

#[tokio::test]
async fn health_is_unavailable_while_the_database_is_down_and_recovers_by_itself() {
    let (_, options) = crate::common::fresh_database().await;
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let upstream = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
    let proxy = Proxy::start(upstream).await;
    let through_proxy = options.clone().host("127.0.0.1").port(proxy.addr.port());
    let app = TestApp::spawn_with(Options { db: Some(through_proxy), ..Default::default() }).await;
    let mut grpc = app.grpc().await;
    assert_eq!(app.rest_call(Method::GET, "/v1/healthcheck", None, None).await.0, StatusCode::OK);

    proxy.stop();
    let (status, body) = app.rest_call(Method::GET, "/v1/healthcheck", None, None).await;
    assert_eq!(
        (status, body["code"].as_i64(), body["reason"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(14), Some("DATABASE_UNAVAILABLE"))
    );
    let err = grpc.health_check(HealthCheckRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    proxy.start_again();
    let mut healthy = false;
    for _ in 0..50 {
        if app.rest_call(Method::GET, "/v1/healthcheck", None, None).await.0 == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "health recovers without a restart");
    assert!(grpc.health_check(HealthCheckRequest {}).await.unwrap().into_inner().is_healthy);
}

#[tokio::test]
async fn every_annotated_rpc_is_reachable_over_rest() {
    let app = TestApp::spawn().await;
    for rpc in RPCS {
        assert!(ROUTES.iter().any(|r| r.rpc == *rpc), "{rpc} has no REST route");
    }
    for route in ROUTES {
        let path =
            route.path.split('/').map(|s| if s.starts_with('{') { "1" } else { s }).collect::<Vec<_>>().join("/");
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let body = (route.body == "*").then(|| json!({}));
        let (status, answer) = app.rest_call(method, &path, body, Some(&app.key.clone())).await;
        let reason = answer["reason"].as_str().unwrap_or("");
        assert!(
            !["ROUTE_NOT_FOUND", "METHOD_NOT_ALLOWED", "UNIMPLEMENTED"].contains(&reason)
                && status != StatusCode::NOT_IMPLEMENTED,
            "{} {} ({}) is not served: {status} {answer}",
            route.method,
            route.path,
            route.rpc
        );
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_as_the_json_really_is() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.rest_call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.to_lowercase()];
        assert!(op.is_object(), "{} {} is missing from /openapi.json", route.method, route.path);
    }
    let customer = &doc["components"]["schemas"]["Customer"]["properties"];
    assert_eq!(customer["customerID"]["type"], "string", "int64 is a string in JSON");
    assert_eq!(customer["customerID"]["format"], "int64");
    assert!(customer["stripe_customer_key"].is_object(), "proto field names are the keys");
    assert_eq!(doc["paths"]["/v1/healthcheck"]["get"]["security"], json!([]));
    assert_eq!(
        doc["paths"]["/v1/webhooks/stripe"]["post"]["security"],
        json!([{"stripeSignature": []}]),
        "the webhook route is documented, its signature as its credential"
    );
    let params = doc["paths"]["/v1/customer"]["get"]["parameters"].as_array().unwrap();
    let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["page_size", "page_token", "email"]);
    assert_eq!(params[0]["schema"]["anyOf"][0]["maximum"], 100, "page_size states its range");
    assert!(params[1]["schema"]["pattern"].is_string(), "a page token states its form");
}

#[tokio::test]
async fn the_openapi_document_states_the_rules_the_service_enforces_and_its_real_answers() {
    let app = TestApp::spawn().await;
    let (_, doc) = app.rest_call(Method::GET, "/openapi.json", None, None).await;
    let schemas = &doc["components"]["schemas"];
    let create = &schemas["CreateCustomerRequest"];
    assert_eq!(create["required"], json!(["name", "email"]));
    assert!(
        create["properties"]["email"].get("format").is_none(),
        "a form is stated as a pattern, which every tool reads alike"
    );
    assert_eq!(create["properties"]["email"]["maxLength"], 254);
    assert!(create["properties"]["email"]["pattern"].as_str().unwrap().starts_with('^'));
    let pay = &schemas["CreatePaymentRequest"]["properties"];
    assert_eq!(pay["capture_method"]["enum"], json!(["", "automatic", "manual"]));
    assert_eq!(pay["metadata"]["maxProperties"], 45);
    assert!(pay["currency"]["enum"].as_array().unwrap().contains(&json!("usd")));
    assert_eq!(pay["amount"]["anyOf"][0]["maximum"], 99_999_999);
    assert!(schemas["CreatePaymentRequest"]["allOf"].is_array(), "a currency's smallest charge is stated");
    assert!(
        schemas["CapturePaymentRequest"]["properties"].get("paymentID").is_none(),
        "a field bound from the path is not in the body"
    );
    let refund_reasons = &schemas["RefundPaymentRequest"]["properties"]["reason"]["enum"];
    assert_eq!(refund_reasons, &json!(["", "duplicate", "fraudulent", "requested_by_customer"]));

    let capture = &doc["paths"]["/v1/payment/{paymentID}/capture"]["post"];
    let statuses: Vec<&str> = capture["responses"].as_object().unwrap().keys().map(String::as_str).collect();
    for s in ["200", "400", "401", "404", "409", "429", "500", "503"] {
        assert!(statuses.contains(&s), "{s} is documented: {statuses:?}");
    }
    assert!(!statuses.contains(&"default"), "every answer is stated, not lumped as default");
    assert_eq!(
        capture["responses"]["409"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    let links = &doc["paths"]["/v1/payment"]["post"]["responses"]["200"]["links"];
    assert_eq!(links["CapturePaymentBypaymentID"]["parameters"]["paymentID"], "$response.body#/paymentID");

    let resp = app.http.get(format!("{}/docs/", app.rest)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("swagger"), "Swagger UI is served from the binary");
    let init =
        app.http.get(format!("{}/docs/swagger-initializer.js", app.rest)).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("/openapi.json"));
}

#[tokio::test]
async fn malformed_json_unknown_routes_and_wrong_methods_answer_in_the_error_format() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .post(format!("{}/v1/customer", app.rest))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!((body["code"].as_i64(), body["reason"].as_str()), (Some(3), Some("MALFORMED_JSON")));

    let (status, body) = app.post("/v1/customer", json!(["not", "an", "object"])).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("MALFORMED_JSON")));
    let (status, body) = app.post("/v1/customer", json!({"name": 42, "email": "a@example.com"})).await;
    assert_eq!(
        (status, body["reason"].as_str(), body["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("MALFORMED_REQUEST"), Some("name"))
    );

    let (status, body) = app.get("/v1/nothing").await;
    assert_eq!(
        (status, body["code"].as_i64(), body["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some(5), Some("ROUTE_NOT_FOUND"))
    );
    let (status, body) = app.rest_call(Method::DELETE, "/v1/customer/1", None, Some(&app.key.clone())).await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("METHOD_NOT_ALLOWED")));
    assert_eq!(app.count("customer.customer").await, 0);
}

#[tokio::test]
async fn a_request_id_is_returned_kept_from_the_caller_or_made() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .get(format!("{}/v1/healthcheck", app.rest))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let resp = app.http.get(format!("{}/v1/healthcheck", app.rest)).send().await.unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(made.len(), 36, "a uuid is made: {made}");

    let mut req = tonic::Request::new(HealthCheckRequest {});
    req.metadata_mut().insert("x-request-id", "grpc-trace-7".parse().unwrap());
    let reply = app.grpc().await.health_check(req).await.unwrap();
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "grpc-trace-7");
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::{HealthCheckRequest as StdHealth, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Channel::from_shared(app.grpc_addr.clone()).unwrap().connect().await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    let mut serving = false;
    for _ in 0..50 {
        if let Ok(r) = health.check(StdHealth { service: "payment.PaymentService".into() }).await {
            serving = r.into_inner().status == 1;
            if serving {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "the standard health service reports SERVING");

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("no service list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"payment.PaymentService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test]
async fn with_checks_turned_off_old_clients_are_served_without_a_key() {
    let app = TestApp::spawn_with(Options { auth_required: false, ..Default::default() }).await;
    let (status, body) = app
        .rest_call(Method::POST, "/v1/customer", Some(json!({"name": "Old", "email": "old@example.com"})), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id: i64 = body["customerID"].as_str().unwrap().parse().unwrap();
    let c = app.grpc().await.get_customer(GetCustomerRequest { customer_id: id, ..Default::default() }).await.unwrap();
    assert_eq!(c.into_inner().name, "Old");
    let _ = CreateCustomerRequest::default();
}

#[tokio::test]
async fn an_unauthenticated_request_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .post(format!("{}/v1/payment", app.rest))
        .header("content-type", "application/json")
        .body("{\"amount\": \"not a number\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no hint about the body to a caller without a key");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "MISSING_API_KEY");
}

#[tokio::test]
async fn an_empty_query_value_means_not_given() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/v1/payment?customerID=&status=&page_size=").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_key_cache_ttl() {
    let app = crate::common::TestApp::spawn_with(crate::common::Options {
        key_cache_ttl: std::time::Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let customer = app.new_customer().await;
    let path = format!("/v1/customer/{customer}");
    assert_eq!(app.get(&path).await.0, 200, "verified, and now cached");
    let prefix = &app.key[..11];
    assert!(amazing_payments::store::apikeys::revoke(&app.db, prefix).await.unwrap());
    assert_eq!(app.get(&path).await.0, 200, "still trusted within the TTL");
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let (status, body) = app.get(&path).await;
    assert_eq!((status.as_u16(), body["reason"].as_str()), (401, Some("API_KEY_REVOKED")), "{body}");
}

#[tokio::test]
async fn past_its_capacity_an_instance_refuses_at_once_with_retry_after_and_writes_nothing() {
    use crate::common::call::{BOTH, Via};
    let app =
        crate::common::TestApp::spawn_with(crate::common::Options { max_in_flight: 2, ..Default::default() }).await;
    let customer = app.new_customer().await;
    app.sim.state().faults.add(
        serde_json::from_value(serde_json::json!({"method": "POST", "path": "/v1/payment_intents", "latency_ms": 600}))
            .unwrap(),
    );
    let body = serde_json::json!({"customerID": customer, "amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"});
    let calls = (0..8).map(|i| {
        let via = BOTH[i % 2];
        let (app, body) = (&app, body.clone());
        async move { (via, app.call_keyed(via, "CreatePayment", body, Some(&format!("load-{i}"))).await.0) }
    });
    let (answers, health) = tokio::join!(futures::future::join_all(calls), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        reqwest::get(format!("{}/v1/healthcheck", app.rest)).await.unwrap().status()
    });
    assert_eq!(health, 200, "health is always admitted");
    let taken = answers.iter().filter(|a| a.1.is_ok()).count();
    let refused: Vec<_> = answers.iter().filter_map(|a| a.1.as_ref().err().map(|f| (a.0, f))).collect();
    assert!(taken >= 2 && !refused.is_empty(), "{taken} taken, {} refused", refused.len());
    for (via, f) in &refused {
        assert_eq!((f.code, f.reason.as_str()), (tonic::Code::Unavailable, "OVERLOADED"), "{via:?}");
        if *via == Via::Rest {
            assert_eq!(f.http, Some(503));
        }
    }
    let payments = app.count("payment.payment").await;
    assert_eq!(payments as usize, taken, "a refused request wrote nothing");
    assert_eq!(app.sim.state().data.lock().payment_intents.values().count(), taken, "and sent nothing to Stripe");
    // Two slow requests fill the instance: a third is refused at once.
    let rest = app.http.post(format!("{}/v1/payment", app.rest)).bearer_auth(&app.key).json(&body);
    let (first, second, third) = tokio::join!(
        app.call(Via::Rest, "CreatePayment", body.clone()),
        app.call(Via::Grpc, "CreatePayment", body.clone()),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let started = std::time::Instant::now();
            (rest.send().await.unwrap(), started.elapsed())
        }
    );
    assert!(first.is_ok() && second.is_ok());
    let (refused, took) = third;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(took < std::time::Duration::from_millis(300), "refused at once, not queued: {took:?}");
}

#[tokio::test]
async fn the_frameworks_own_refusals_answer_in_the_json_error_shape() {
    let app = TestApp::spawn().await;
    let huge = "x".repeat(5 << 20);
    let too_large = app.http.post(format!("{}/v1/webhooks/stripe", app.rest)).body(huge).send().await.unwrap();
    assert_eq!(too_large.status(), 413);
    let body: serde_json::Value = too_large.json().await.expect("413 in JSON");
    assert_eq!(
        (body["reason"].as_str(), body["status"].as_str()),
        (Some("BODY_TOO_LARGE"), Some("RESOURCE_EXHAUSTED"))
    );
    let wrong_method = app.http.delete(format!("{}/v1/healthcheck", app.rest)).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.headers().contains_key("allow"), "405 says which methods the route takes");
    let body: serde_json::Value = wrong_method.json().await.expect("405 in JSON");
    assert_eq!(body["reason"], "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn after_the_database_ends_every_connection_a_request_is_told_to_retry_and_the_next_is_served() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    // As a restart does: the server ends every connection of the service's
    // pool, which were all in use a moment ago (none idle long enough to be
    // checked before use).
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&app.db_url()).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let (status, body) = app.get(&format!("/v1/customer/{customer}")).await;
    assert!(status == 200 || (status == 503 && body["reason"] == "DATABASE_UNAVAILABLE"), "{status} {body}");
    let (status, body) = app.get(&format!("/v1/customer/{customer}")).await;
    assert_eq!(status, 200, "every connection is checked once one was found broken: {body}");
}

/// Bytes sent and received as they are, to put a malformed message on the wire.
#[derive(Debug, Clone, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytes
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

#[tokio::test]
async fn a_grpc_message_that_cannot_be_decoded_or_is_too_large_is_refused_as_the_callers_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Channel::from_shared(app.grpc_addr.clone()).unwrap().connect().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/payment.PaymentService/CreateCustomer");
    // Field 1 (name), a string of two bytes that are not UTF-8; then a
    // field whose length runs past the end.
    for message in [vec![0x0a, 0x02, 0xff, 0xfe], vec![0x12, 0x40, b'a']] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let request = with_key(message, &app.key);
        let status = grpc.unary(request, path.clone(), RawBytes).await.unwrap_err();
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::InvalidArgument, "MALFORMED_MESSAGE"),
            "{status:?}"
        );
    }
    assert_eq!(app.count("customer.customer").await, 0);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // Field 1 (name), five MiB long: over the 4 MiB a message may have.
    let mut huge = vec![0x0a, 0x80, 0x80, 0x80, 0x05];
    huge.resize(huge.len() + (5 << 20), b'a');
    let status = grpc.unary(with_key(huge, &app.key), path, RawBytes).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "BODY_TOO_LARGE"), "{status:?}");
    assert_eq!(app.count("customer.customer").await, 0);
}
