//! Connection limits on both listeners, with raw sockets: a client that
//! sends nothing, half a head, only the HTTP/2 preface, headers without
//! their body, or nothing more after a request, is closed in time while
//! others are served; past the connection cap a REST client is told 503 and
//! a gRPC connection is closed; headers over the limit fail only their call.
//! The service runs with short limits; margins are generous.

use crate::common::{Options, TestApp, reason, with_key};
use amazing_payments::{proto::HealthCheckRequest, server::ConnectionLimits};
use bytes::Bytes;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const HEADER: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
const BODY: Duration = Duration::from_secs(1);
/// Timers on a busy test machine, plus the second a connection shut down
/// gracefully gets before it is closed.
const MARGIN: Duration = Duration::from_millis(2500);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn short_limits() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: HEADER,
        idle_timeout: IDLE,
        body_read_timeout: BODY,
        max_connections: 64,
        // PINGs during the tests: they must not keep an idle connection open.
        http2_keepalive_interval: Some(Duration::from_millis(300)),
        ..Default::default()
    }
}

async fn spawn(connections: ConnectionLimits) -> TestApp {
    TestApp::spawn_with(Options { connections, ..Default::default() }).await
}

fn rest_addr(app: &TestApp) -> String {
    app.rest.trim_start_matches("http://").to_string()
}

fn grpc_addr(app: &TestApp) -> String {
    app.grpc_addr.trim_start_matches("http://").to_string()
}

/// A connection left as a test made it (its reading side), and since when.
struct Stalled {
    what: String,
    stream: Box<dyn AsyncRead + Unpin + Send>,
    since: Instant,
}

async fn stall(what: impl Into<String>, addr: &str, sends: &[u8]) -> Stalled {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(sends).await.unwrap();
    Stalled { what: what.into(), stream: Box::new(stream), since: Instant::now() }
}

/// Reads what the server sends until it closes the connection.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin + ?Sized)) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Each connection is closed by the server `after` its start, give or take
/// the margin (and no sooner than three quarters of it).
async fn assert_closed_after(stalled: Vec<Stalled>, after: Duration) {
    let closings = stalled.into_iter().map(|mut s| async move {
        let closed = tokio::time::timeout_at((s.since + after + MARGIN).into(), until_closed(&mut s.stream)).await;
        (s.what, closed.is_ok(), s.since.elapsed())
    });
    for (what, closed, elapsed) in futures::future::join_all(closings).await {
        assert!(closed, "{what}: still open after {elapsed:?} (limit {after:?})");
        assert!(elapsed >= after.mul_f32(0.75), "{what}: closed after {elapsed:?}, before its limit {after:?}");
    }
}

/// A REST and a gRPC health check, each on a connection of its own.
async fn served_meanwhile(app: &TestApp) {
    let (status, _) = app.rest_call(reqwest::Method::GET, "/v1/healthcheck", None, None).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(app.grpc().await.health_check(HealthCheckRequest {}).await.unwrap().into_inner().is_healthy);
}

/// One HTTP/1.1 answer read from `stream`: status, lower-cased head, body.
async fn read_answer(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, head, buf[head_end..head_end + length].to_vec())
}

fn health_request(host: &str) -> String {
    format!("GET /v1/healthcheck HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// An HTTP/2 client connection (the `h2` crate) and the task driving it,
/// which ends when the server closes the connection.
async fn h2_connect(addr: &str) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, driver)
}

fn grpc_health(addr: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/payment.PaymentService/HealthCheck"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A HealthCheck over raw HTTP/2: its `grpc-status`.
async fn h2_health(send: &h2::client::SendRequest<Bytes>, addr: &str) -> String {
    let mut send = send.clone().ready().await.unwrap();
    let (response, mut body) = send.send_request(grpc_health(addr), false).unwrap();
    // An empty message: not compressed, length 0.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let response = response.await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let _ = body.flow_control().release_capacity(data.unwrap().len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout_on_both_listeners() {
    let app = spawn(short_limits()).await;
    let stalled = vec![stall("REST", &rest_addr(&app), b"").await, stall("gRPC", &grpc_addr(&app), b"").await];
    served_meanwhile(&app).await;
    assert_closed_after(stalled, HEADER).await;
}

#[tokio::test]
async fn half_a_request_head_or_one_sent_a_byte_at_a_time_is_closed_after_the_header_timeout_on_both_listeners() {
    let app = spawn(short_limits()).await;
    let half = b"GET /v1/healthcheck HTTP/1.1\r\nHost: localhost\r\nX-Half: ";
    let mut stalled = Vec::new();
    for (door, addr) in [("REST", rest_addr(&app)), ("gRPC", grpc_addr(&app))] {
        stalled.push(stall(format!("{door}, half a head"), &addr, half).await);
        // A byte every 200 ms: the head never ends, and no byte extends
        // the time it has.
        let stream = TcpStream::connect(&addr).await.unwrap();
        let since = Instant::now();
        let (read, mut write) = stream.into_split();
        tokio::spawn(async move {
            for byte in half.iter().chain(b"x".iter().cycle()) {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        stalled.push(Stalled { what: format!("{door}, a byte at a time"), stream: Box::new(read), since });
    }
    served_meanwhile(&app).await;
    assert_closed_after(stalled, HEADER).await;
}

#[tokio::test]
async fn only_the_http2_preface_or_an_unfinished_header_block_is_closed_after_the_idle_timeout_on_both_listeners() {
    let app = spawn(short_limits()).await;
    // The preface, an empty SETTINGS frame, then a HEADERS frame of stream 1
    // without END_HEADERS (one byte of its block: `:method: POST`), and no
    // CONTINUATION: h2 can read nothing else on the connection meanwhile.
    let mut unfinished = H2_PREFACE.to_vec();
    unfinished.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    unfinished.extend_from_slice(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x83]);
    let mut stalled = Vec::new();
    for (door, addr) in [("REST", rest_addr(&app)), ("gRPC", grpc_addr(&app))] {
        stalled.push(stall(format!("{door}, the preface only"), &addr, H2_PREFACE).await);
        stalled.push(stall(format!("{door}, an unfinished header block"), &addr, &unfinished).await);
    }
    served_meanwhile(&app).await;
    assert_closed_after(stalled, IDLE).await;
}

#[tokio::test]
async fn a_rest_body_that_does_not_arrive_is_answered_408_and_its_connection_closed() {
    let app = spawn(short_limits()).await;
    let addr = rest_addr(&app);
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/customer HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": ",
        app.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let since = Instant::now();
    served_meanwhile(&app).await;

    let (status, head, body) =
        tokio::time::timeout(BODY + MARGIN, read_answer(&mut stream)).await.expect("an answer in time");
    assert_eq!(status, 408, "{head}");
    assert!(since.elapsed() >= BODY.mul_f32(0.75), "answered after {:?}", since.elapsed());
    assert!(head.contains("connection: close"), "{head}");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["reason"], "BODY_READ_TIMEOUT");
    assert_eq!((error["code"].as_i64(), error["status"].as_str()), (Some(4), Some("DEADLINE_EXCEEDED")));
    assert!(tokio::time::timeout(MARGIN, until_closed(&mut stream)).await.is_ok(), "closed after the answer");
    assert_eq!(app.count("customer.customer").await, 0, "nothing was created");
}

#[tokio::test]
async fn a_grpc_call_whose_body_does_not_arrive_fails_with_deadline_exceeded_and_its_idle_connection_is_closed() {
    let app = spawn(short_limits()).await;
    let addr = grpc_addr(&app);
    let (send, driver) = h2_connect(&addr).await;
    let mut ready = send.clone().ready().await.unwrap();
    // Headers, and never the message.
    let (response, _body) = ready.send_request(grpc_health(&addr), false).unwrap();
    let since = Instant::now();
    served_meanwhile(&app).await;

    let response = tokio::time::timeout(BODY + MARGIN, response).await.expect("an answer in time").unwrap();
    assert!(since.elapsed() >= BODY.mul_f32(0.75), "answered after {:?}", since.elapsed());
    let status = tonic::Status::from_header_map(response.headers()).expect("a trailers-only error");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), "BODY_READ_TIMEOUT");
    let answered = Instant::now();
    assert!(tokio::time::timeout(IDLE + MARGIN, driver).await.is_ok(), "the connection is closed once idle");
    assert!(answered.elapsed() >= IDLE.mul_f32(0.75), "closed after {:?}", answered.elapsed());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not_on_both_listeners() {
    let app = spawn(short_limits()).await;
    let (rest, grpc) = (rest_addr(&app), grpc_addr(&app));

    // REST: one request each; then one connection rests, the other asks
    // again every 400 ms.
    let mut idle = TcpStream::connect(&rest).await.unwrap();
    let mut busy = TcpStream::connect(&rest).await.unwrap();
    for stream in [&mut idle, &mut busy] {
        stream.write_all(health_request(&rest).as_bytes()).await.unwrap();
        assert_eq!(read_answer(stream).await.0, 200);
    }
    let rested = Instant::now();
    // gRPC: the same over HTTP/2.
    let (idle_h2, idle_driver) = h2_connect(&grpc).await;
    let (busy_h2, busy_driver) = h2_connect(&grpc).await;
    assert_eq!(h2_health(&idle_h2, &grpc).await, "0");
    assert_eq!(h2_health(&busy_h2, &grpc).await, "0");
    let rested_h2 = Instant::now();

    let keep_busy = async {
        while rested.elapsed() < IDLE * 2 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            busy.write_all(health_request(&rest).as_bytes()).await.unwrap();
            assert_eq!(read_answer(&mut busy).await.0, 200, "the busy REST connection is served");
            assert_eq!(h2_health(&busy_h2, &grpc).await, "0", "the busy gRPC connection is served");
        }
    };
    let idle_closes = async {
        let closed = tokio::time::timeout(IDLE + MARGIN, until_closed(&mut idle)).await;
        assert!(closed.is_ok(), "the idle REST connection is closed");
        assert!(rested.elapsed() >= IDLE.mul_f32(0.75), "by the idle timeout, not the header one");
    };
    let idle_h2_closes = async {
        let closed = tokio::time::timeout(IDLE + MARGIN, idle_driver).await;
        assert!(closed.is_ok(), "the idle gRPC connection is closed");
        assert!(rested_h2.elapsed() >= IDLE.mul_f32(0.75), "by the idle timeout");
    };
    tokio::join!(keep_busy, idle_closes, idle_h2_closes);
    assert!(!busy_driver.is_finished(), "the busy gRPC connection is still open");
    drop(idle_h2);
}

#[tokio::test]
async fn past_max_connections_rest_answers_503_and_grpc_closes_until_connections_are_freed() {
    let cap = 8;
    let app = spawn(ConnectionLimits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: cap,
        ..Default::default()
    })
    .await;
    let (rest, grpc) = (rest_addr(&app), grpc_addr(&app));
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(TcpStream::connect(&rest).await.unwrap());
        held.push(TcpStream::connect(&grpc).await.unwrap());
    }

    let mut over = TcpStream::connect(&rest).await.unwrap();
    over.write_all(health_request(&rest).as_bytes()).await.unwrap();
    let (status, head, body) = tokio::time::timeout(MARGIN, read_answer(&mut over)).await.expect("an answer at once");
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 1") && head.contains("connection: close"), "{head}");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["reason"], "TOO_MANY_CONNECTIONS");
    assert_eq!((error["code"].as_i64(), error["status"].as_str()), (Some(14), Some("UNAVAILABLE")));
    assert!(tokio::time::timeout(MARGIN, until_closed(&mut over)).await.is_ok(), "then closed");

    let mut over = TcpStream::connect(&grpc).await.unwrap();
    let _ = over.write_all(H2_PREFACE).await;
    assert!(tokio::time::timeout(MARGIN, until_closed(&mut over)).await.is_ok(), "a gRPC connection is closed at once");

    held.truncate(held.len() - 4);
    let mut served = false;
    for _ in 0..30 {
        let mut stream = TcpStream::connect(&rest).await.unwrap();
        stream.write_all(health_request(&rest).as_bytes()).await.unwrap();
        if read_answer(&mut stream).await.0 == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a REST connection is served once others closed");
    let mut served = false;
    for _ in 0..30 {
        if let Ok(mut client) =
            amazing_payments::proto::payment_service_client::PaymentServiceClient::connect(app.grpc_addr.clone()).await
        {
            served = client.health_check(HealthCheckRequest {}).await.is_ok();
            if served {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a gRPC connection is served once others closed");
}

#[tokio::test]
async fn headers_over_the_limit_fail_only_their_request_431_over_rest_and_resource_exhausted_over_grpc() {
    let app = spawn(short_limits()).await;
    let padding = "p".repeat(10_000);
    let with_headers = |n: usize| {
        let mut req = app.http.get(format!("{}/v1/healthcheck", app.rest));
        for i in 0..n {
            req = req.header(format!("x-padding-{i}"), &padding);
        }
        req
    };
    let resp = with_headers(10).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let error: Value = resp.json().await.unwrap();
    assert_eq!(error["reason"], "HEADERS_TOO_LARGE");
    assert_eq!((error["code"].as_i64(), error["status"].as_str()), (Some(8), Some("RESOURCE_EXHAUSTED")));
    assert_eq!(with_headers(3).send().await.unwrap().status(), reqwest::StatusCode::OK, "30 KB pass");

    let mut grpc = app.grpc().await;
    let mut req = with_key(HealthCheckRequest {}, &app.key);
    for i in 0..10 {
        req.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(format!("x-padding-{i}").as_bytes()).unwrap(),
            padding.parse().unwrap(),
        );
    }
    let status = grpc.health_check(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "HEADERS_TOO_LARGE");
    assert!(grpc.health_check(HealthCheckRequest {}).await.unwrap().into_inner().is_healthy, "the channel serves on");

    // On one raw HTTP/2 connection: the big call fails, the connection lives,
    // the next call on it is served (a client could not reconnect unseen).
    let addr = grpc_addr(&app);
    let (send, driver) = h2_connect(&addr).await;
    let mut big = grpc_health(&addr);
    for i in 0..10 {
        big.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-padding-{i}").as_bytes()).unwrap(),
            padding.parse().unwrap(),
        );
    }
    let mut ready = send.clone().ready().await.unwrap();
    let (response, mut body) = ready.send_request(big, false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED, trailers-only");
    assert_eq!(h2_health(&send, &addr).await, "0", "the same connection serves the next call");
    assert!(!driver.is_finished(), "the connection was not ended");

    // And over one HTTP/1.1 connection: the 431, then the next request on it.
    let mut tcp = TcpStream::connect(rest_addr(&app)).await.unwrap();
    let mut head = String::from("GET /v1/healthcheck HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..10 {
        head.push_str(&format!("X-Padding-{i}: {padding}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let first = read_response(&mut tcp).await;
    assert!(first.starts_with("HTTP/1.1 431"), "{first}");
    tcp.write_all(b"GET /v1/healthcheck HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let second = read_response(&mut tcp).await;
    assert!(second.starts_with("HTTP/1.1 200"), "the connection serves on: {second}");
}

/// One HTTP/1.1 response with a Content-Length body, read from `tcp`.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a whole response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_request_waiting_on_stripe_longer_than_every_timeout_is_answered_on_both_listeners() {
    let app = spawn(short_limits()).await;
    let customer = app.new_customer().await;
    // Stripe takes longer than each of the header, body and idle timeouts.
    app.http
        .post(format!("{}/_sim/faults", app.sim.url()))
        .json(&serde_json::json!([{"path": "/v1/payment_intents", "method": "POST", "latency_ms": 3500, "times": 2}]))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let body = serde_json::json!({"customerID": customer, "amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"});
    let (status, answer) = app.post("/v1/payment", body).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "succeeded");
    let mut grpc = app.grpc().await;
    let request = amazing_payments::proto::CreatePaymentRequest {
        customer_id: customer.parse().unwrap(),
        amount: 1000,
        currency: "usd".into(),
        payment_method: "pm_card_visa".into(),
        ..Default::default()
    };
    let made = grpc.create_payment(with_key(request, &app.key)).await.unwrap();
    assert_eq!(made.get_ref().status, "succeeded");
}

#[tokio::test]
async fn shutdown_closes_connections_that_ask_nothing_without_waiting_for_the_drain_timeout() {
    let app = spawn(ConnectionLimits::default()).await;
    let (rest, grpc) = (rest_addr(&app), grpc_addr(&app));
    let half = b"GET /v1/healthcheck HTTP/1.1\r\nHost: localhost\r\nX-Half: ";
    let _stalled = [
        stall("REST, nothing", &rest, b"").await,
        stall("REST, half a head", &rest, half).await,
        stall("REST, the preface only", &rest, H2_PREFACE).await,
        stall("gRPC, half a head", &grpc, half).await,
        stall("gRPC, the preface only", &grpc, H2_PREFACE).await,
    ];
    served_meanwhile(&app).await;

    let since = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), app.stop()).await.expect("stopped well within the drain timeout");
    assert!(since.elapsed() < Duration::from_secs(5));
}
