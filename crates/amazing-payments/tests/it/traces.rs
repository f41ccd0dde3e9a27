//! OpenTelemetry traces, end to end: the service binary exports OTLP
//! (http/protobuf) to a small receiver here when OTEL_EXPORTER_OTLP_ENDPOINT
//! is set. A request is one server span named after its rpc, continuing the
//! caller's W3C `traceparent` (REST header or gRPC metadata) and returning
//! its own; its children are the request's database transactions and
//! Stripe calls; its log lines carry the trace id. With the exporter turned
//! off nothing is sent.

use crate::common::procs::{Stack, post_json};
use amazing_payments::proto;
use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    trace::v1::Span,
};
use parking_lot::Mutex;
use serde_json::json;
use std::{sync::Arc, time::Duration};

/// What the receiver got: (service.name, span) pairs.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on a port of its own; its URL and what it got.
async fn receiver() -> (String, Received) {
    async fn traces(State(got): State<Received>, body: Bytes) -> Vec<u8> {
        let request: ExportTraceServiceRequest = prost::Message::decode(body).expect("an OTLP trace export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    got.lock().push((service.clone(), span));
                }
            }
        }
        prost::Message::encode_to_vec(&ExportTraceServiceResponse::default())
    }
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/v1/traces", post(traces)).with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of `trace` received so far, waiting up to 10 s for one named `name`.
async fn spans_of(got: &Received, trace: &str, name: &str) -> Vec<Span> {
    for _ in 0..100 {
        let spans: Vec<Span> =
            got.lock().iter().filter(|(_, s)| hex(&s.trace_id) == trace).map(|(_, s)| s.clone()).collect();
        if spans.iter().any(|s| s.name == name) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no span {name} of trace {trace} came: {:?}", got.lock().iter().map(|(_, s)| &s.name).collect::<Vec<_>>());
}

/// The trace and span id of a `traceparent` value.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn a_request_is_a_span_continuing_the_callers_trace_with_its_transactions_and_stripe_calls_as_children() {
    let (endpoint, got) = receiver().await;
    let stack = Stack::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_SERVICE_NAME", "payments-under-test".into()),
    ])
    .await;
    let key = stack.new_key();

    // REST: the caller's traceparent is continued, and ours comes back.
    let (trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/customer", stack.rest))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let returned = answer.headers()["traceparent"].to_str().unwrap().to_string();
    let (returned_trace, server_span) = ids(&returned);
    assert_eq!(returned_trace, trace, "the caller's trace goes on");
    assert_ne!(server_span, caller_span, "under a span of our own");
    let customer: serde_json::Value = answer.json().await.unwrap();

    let spans = spans_of(&got, trace, "CreateCustomer").await;
    let server = spans.iter().find(|s| s.name == "CreateCustomer").unwrap();
    assert_eq!(hex(&server.span_id), server_span, "the answer names the request's span");
    assert_eq!(hex(&server.parent_span_id), caller_span, "a child of the caller's span");
    assert_eq!(server.kind, 2, "a server span");
    let stripe = spans_of(&got, trace, "stripe POST /v1/customers").await;
    let stripe = stripe.iter().find(|s| s.name == "stripe POST /v1/customers").unwrap();
    assert_eq!(stripe.parent_span_id, server.span_id, "the Stripe call is the request's child");
    assert_eq!(stripe.kind, 3, "a client span");
    let tx = spans_of(&got, trace, "db.transaction").await;
    assert!(
        tx.iter().filter(|s| s.name == "db.transaction").all(|s| s.parent_span_id == server.span_id),
        "each transaction is the request's child"
    );
    assert!(got.lock().iter().all(|(service, _)| service.contains("payments-under-test")));

    // gRPC: the same through metadata.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut grpc = proto::payment_service_client::PaymentServiceClient::connect(stack.grpc.clone()).await.unwrap();
    let mut request = tonic::Request::new(proto::CreatePaymentRequest {
        customer_id: customer["customerID"].as_str().unwrap().parse().unwrap(),
        amount: 2500,
        currency: "eur".into(),
        payment_method: "pm_card_visa".into(),
        capture_method: "manual".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request.metadata_mut().insert("traceparent", format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap());
    let made = grpc.create_payment(request).await.unwrap();
    let (returned_trace, server_span) = ids(made.metadata().get("traceparent").unwrap().to_str().unwrap());
    assert_eq!(returned_trace, trace);
    // The request's span ends after its children, so once it is here they are.
    let spans = spans_of(&got, trace, "CreatePayment").await;
    let server = spans.iter().find(|s| s.name == "CreatePayment").expect("the request's span");
    assert_eq!(hex(&server.span_id), server_span);
    assert_eq!(hex(&server.parent_span_id), "b7ad6b7169203331");
    let children: Vec<&str> =
        spans.iter().filter(|s| s.parent_span_id == server.span_id).map(|s| s.name.as_str()).collect();
    assert!(children.contains(&"stripe POST /v1/payment_intents"), "{children:?}");
    assert!(children.contains(&"db.transaction"), "{children:?}");

    // Nothing of a customer, a key or a Stripe object is in any span.
    let key_part = &key[12..];
    for (_, span) in got.lock().iter() {
        let mut texts = vec![span.name.clone()];
        texts.extend(span.attributes.iter().map(|a| format!("{}={:?}", a.key, a.value)));
        for text in texts {
            for secret in ["ada@example.com", "Ada", key_part, "cus_", "pi_", "Bearer"] {
                assert!(!text.contains(secret), "{secret:?} in a span: {text}");
            }
        }
    }

    // A caller that does not sample its trace is followed: nothing of it
    // is exported, and its trace goes on, unsampled.
    let unsampled = "1bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/customer", stack.rest))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b7-00"))
        .send()
        .await
        .unwrap();
    let returned = answer.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(returned.starts_with(&format!("00-{unsampled}-")) && returned.ends_with("-00"), "{returned}");
    let marker = "2bf92f3577b34da6a3ce929d0e0e4736";
    reqwest::Client::new()
        .get(format!("{}/v1/customer", stack.rest))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{marker}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    spans_of(&got, marker, "ListCustomers").await;
    assert!(got.lock().iter().all(|(_, s)| hex(&s.trace_id) != unsampled), "the unsampled trace was not exported");

    // The request's log lines carry its trace id.
    let logs = stack.service.logs();
    assert!(
        logs.lines().any(|l| l.contains("\"request\"") && l.contains(&format!("\"trace_id\":\"{trace}\""))),
        "{logs}"
    );
}

#[tokio::test]
async fn without_an_exporter_nothing_is_sent_yet_trace_ids_are_continued_and_logged() {
    let (endpoint, got) = receiver().await;
    let mut stack = Stack::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_EXPORTER", "none".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ])
    .await;
    let key = stack.new_key();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/customer", stack.rest))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(ids(answer.headers()["traceparent"].to_str().unwrap()).0, trace);
    let _ = post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Ada", "email": "a@b.co"})).await;
    // A graceful stop flushes whatever would be exported.
    stack.service.signal("-TERM");
    assert!(stack.service.wait(Duration::from_secs(30)).await);
    assert!(got.lock().is_empty(), "nothing is exported");
    assert!(stack.service.logs().contains(&format!("\"trace_id\":\"{trace}\"")));
}

#[tokio::test]
async fn with_the_sdk_disabled_there_is_no_trace_at_all() {
    let (endpoint, got) = receiver().await;
    let stack = Stack::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_SDK_DISABLED", "true".into())]).await;
    let key = stack.new_key();
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/customer", stack.rest))
        .bearer_auth(&key)
        .header("traceparent", "00-6bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("traceparent").is_none(), "no trace to name");
    assert!(!stack.service.logs().contains("trace_id\":\"6bf9"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(got.lock().is_empty());
}
