//! Metrics as an operator sees them: a real Prometheus (Debian's, installed by
//! `scripts/test.sh`) scrapes a running service during a payment's life, and
//! its HTTP API is asked for the series; `promtool` checks the exposition and
//! the alert rules in `ops/prometheus/alerts.yml`, and every series the
//! Grafana dashboard and the alerts read is one the service exposes.

use crate::common::procs::{Proc, Stack, free_port, post_json, spawn};
use serde_json::{Value, json};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(name: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is missing: scripts/test.sh installs Debian's prometheus"))
}

/// A Prometheus scraping `target` every half second; its base URL.
fn prometheus(target: &str) -> (Proc, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("prometheus-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: amazing-payments\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (spawn(&tool("prometheus"), &args, &[]), format!("http://127.0.0.1:{port}"), dir)
}

/// The value of `query` in Prometheus (a scalar or a one-series vector).
async fn query(base: &str, query: &str) -> Option<f64> {
    let answer: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let result = answer["data"]["result"].as_array()?;
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Waits (at most 60 s) until Prometheus answers `want` to `q`.
async fn until(base: &str, q: &str, want: f64) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(60) {
        last = query(base, q).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("Prometheus answered {last:?} to {q}, not {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_payments_life_from_the_metrics_listener() {
    let metrics_port = free_port();
    let stack = Stack::start(&[("METRICS_PORT", format!("127.0.0.1:{metrics_port}"))]).await;
    let key = stack.new_key();
    let (prometheus, base, dir) = prometheus(&format!("127.0.0.1:{metrics_port}"));

    let customer =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Ada", "email": "ada@example.com"}))
            .await;
    let payment = post_json(
        &format!("{}/v1/payment", stack.rest),
        &key,
        &json!({"customerID": customer["customerID"], "amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"}),
    )
    .await;
    let id = payment["paymentID"].as_str().unwrap().to_string();
    let captured = post_json(&format!("{}/v1/payment/{id}/capture", stack.rest), &key, &json!({"amount": 3000})).await;
    assert_eq!(captured["status"], "succeeded", "{captured}");
    let refund = post_json(&format!("{}/v1/payment/{id}/refund", stack.rest), &key, &json!({"amount": 1000})).await;
    assert_eq!(refund["status"], "succeeded", "{refund}");
    let missing =
        reqwest::Client::new().get(format!("{}/v1/payment/999999", stack.rest)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    until(&base, r#"up{job="amazing-payments"}"#, 1.0).await;
    until(&base, r#"sum(amazing_payments_requests_total{rpc="CapturePayment",transport="rest",code="OK"})"#, 1.0).await;
    until(
        &base,
        r#"sum(amazing_payments_requests_total{rpc="GetPayment",code="NOT_FOUND",reason="PAYMENT_NOT_FOUND"})"#,
        1.0,
    )
    .await;
    until(
        &base,
        r#"sum(amazing_payments_payment_transitions_total{from="authorized",to="succeeded",source="api"})"#,
        1.0,
    )
    .await;
    until(&base, r#"sum(amazing_payments_amount_minor_units_total{kind="captured",currency="usd"})"#, 3000.0).await;
    until(&base, r#"sum(amazing_payments_amount_minor_units_total{kind="refunded",currency="usd"})"#, 1000.0).await;
    until(
        &base,
        r#"sum(amazing_payments_stripe_requests_total{endpoint="POST /v1/payment_intents/{id}/capture",outcome="ok"})"#,
        1.0,
    )
    .await;
    until(&base, r#"sum(amazing_payments_request_duration_seconds_count{rpc="CreatePayment"})"#, 1.0).await;
    // The relay in serve publishes every event: the lag comes back to 0.
    until(&base, "amazing_payments_outbox_lag_events", 0.0).await;
    until(&base, r#"amazing_payments_build_info{version!=""}"#, 1.0).await;
    until(&base, "amazing_payments_db_gauges_up", 1.0).await;

    // promtool reads the exposition without a complaint.
    let exposition =
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let customer_id = customer["customerID"].as_str().unwrap();
    // Label values (bucket bounds aside) are never an id, a Stripe id or an address.
    let labels: String =
        exposition.lines().map(|l| l.split("le=\"").next().unwrap_or(l)).collect::<Vec<_>>().join("\n");
    for label in [format!("=\"{id}\""), format!("=\"{customer_id}\""), "=\"pi_".into(), "=\"cus_".into(), "ada@".into()]
    {
        assert!(!labels.contains(&label), "{label} is in a label:\n{exposition}");
    }
    assert!(!exposition.contains(&key), "no key in the metrics");
    drop(prometheus);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every metric name an expression of the alerts or the dashboard reads.
fn names_in(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("amazing_payments_"))
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .fold(w.to_string(), |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_alert_rules_pass_promtool_and_read_only_series_the_service_exposes() {
    let rules = repo().join("ops/prometheus/alerts.yml");
    let out = Command::new(tool("promtool")).args(["check", "rules"]).arg(&rules).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("ops/grafana/amazing-payments.json")).unwrap())
            .unwrap();
    let meter = std::fs::read_to_string(repo().join("crates/amazing-payments/src/meter.rs")).unwrap();
    let mut read = names_in(&std::fs::read_to_string(&rules).unwrap());
    read.extend(names_in(&dashboard.to_string()));
    assert!(read.len() > 10, "{read:?}");
    for name in read {
        assert!(meter.contains(&format!("\"{name}\"")), "{name} is read by an alert or the dashboard but not exposed");
    }
}
