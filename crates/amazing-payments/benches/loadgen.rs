//! Load generator for `bench/run.sh` (not a test): N concurrent clients call
//! the service for a fixed time and the latencies are reported as one JSON
//! line. Traffic goes only to the address given (loopback in `bench/run.sh`).
//!
//! `cargo bench --bench loadgen -- <mode> <url> <api-key> <clients> <seconds> <customerID>`
//! with mode `create-payment` (REST), `get-customer-rest` or `get-customer-grpc`.

use amazing_payments::proto::{GetCustomerRequest, payment_service_client::PaymentServiceClient};
use serde_json::json;
use std::{
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [mode, url, key, clients, seconds, customer] = args.as_slice() else {
        eprintln!(
            "usage: loadgen <create-payment|get-customer-rest|get-customer-grpc> <url> <api-key> <clients> <seconds> <customerID>"
        );
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("clients");
    let duration = Duration::from_secs(seconds.parse().expect("seconds"));
    let customer: i64 = customer.parse().expect("customerID");
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let channel = if mode == "get-customer-grpc" {
        Some(tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.expect("gRPC connects"))
    } else {
        None
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (mode, url, key, http, errors, channel) = (mode.clone(), url.clone(), key.clone(), http.clone(), errors.clone(), channel.clone());
            tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::new();
                let mut grpc = channel.map(PaymentServiceClient::new);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = match mode.as_str() {
                        "create-payment" => {
                            let body = json!({"customerID": customer, "amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"});
                            let r = http.post(format!("{url}/v1/payment")).bearer_auth(&key).header("Idempotency-Key", format!("bench-{c}-{n}")).json(&body).send().await;
                            matches!(r, Ok(ref resp) if resp.status().is_success())
                        }
                        "get-customer-rest" => {
                            let r = http.get(format!("{url}/v1/customer/{customer}")).bearer_auth(&key).send().await;
                            match r {
                                Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                                Err(_) => false,
                            }
                        }
                        _ => {
                            let mut req = tonic::Request::new(GetCustomerRequest { customer_id: customer, ..Default::default() });
                            req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
                            grpc.as_mut().unwrap().get_customer(req).await.is_ok()
                        }
                    };
                    n += 1;
                    if ok {
                        latencies.push(t.elapsed().as_micros() as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|v| *v as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        json!({
            "mode": mode, "clients": clients, "seconds": elapsed, "ok": all.len(), "errors": errors.load(Ordering::Relaxed),
            "rate_per_s": all.len() as f64 / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        })
    );
}
