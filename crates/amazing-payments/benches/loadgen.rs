//! Load generator for `bench/run.sh` (not a test): N concurrent clients call
//! the service for a fixed time, each keeping its connections as a real
//! caller does, and the results are reported as one JSON line. Traffic goes
//! only to the address given (loopback in `bench/run.sh`).
//!
//! `cargo bench --bench loadgen -- <mode> <url> <api-key> <clients> <seconds> <customerIDs>`
//! with `customerIDs` a comma-separated list (clients spread over them) and
//! mode:
//! - `create-payment`: REST payment creation with an idempotency key;
//! - `mixed`: each client takes payments and works them as a shop does: reads
//!   (a payment, a customer), automatic and manual payments, captures and
//!   partial refunds;
//! - `get-customer-rest`, `get-customer-grpc`: reads of one customer.
//!
//! Besides rates and latencies it reports, from each answer's
//! `Server-Timing` header, the service's own overhead (total minus Stripe),
//! and how many requests were shed (503 `OVERLOADED`) and how fast.

use amazing_payments::proto::{GetCustomerRequest, payment_service_client::PaymentServiceClient};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Latency of each accepted (2xx) answer, in microseconds.
    ok: Vec<u32>,
    /// Our own overhead of each accepted answer (Server-Timing total minus
    /// stripe), in microseconds.
    overhead: Vec<u32>,
    /// Latency of each answer shed by admission (503 OVERLOADED).
    shed: Vec<u32>,
    errors: u64,
    /// Failed answers by HTTP status and reason (or `network`).
    failures: BTreeMap<String, u64>,
    /// Accepted answers by kind of call.
    kinds: BTreeMap<&'static str, u64>,
}

/// The answer of one call, as the load generator judges it.
enum Outcome {
    Ok {
        overhead_us: Option<u32>,
        body: Option<Value>,
    },
    /// Shed, with the wait the service asked for (`Retry-After`), which
    /// the client honours as a real caller would.
    Shed(Duration),
    /// Failed: the HTTP status and the error's reason.
    Error(String),
}

fn overhead_us(headers: &reqwest::header::HeaderMap) -> Option<u32> {
    let value = headers.get("server-timing")?.to_str().ok()?;
    let mut total = None;
    let mut stripe = 0.0;
    for entry in value.split(',') {
        let (name, dur) = entry.trim().split_once(";dur=")?;
        let ms: f64 = dur.parse().ok()?;
        match name {
            "total" => total = Some(ms),
            "stripe" => stripe = ms,
            _ => {}
        }
    }
    Some(((total? - stripe).max(0.0) * 1000.0) as u32)
}

async fn judge(r: reqwest::Result<reqwest::Response>, want_body: bool) -> Outcome {
    let Ok(resp) = r else { return Outcome::Error("network".into()) };
    let overhead = overhead_us(resp.headers());
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs);
    let status = resp.status();
    let body = resp.bytes().await;
    match (status.as_u16(), body) {
        (200..=299, Ok(b)) => {
            Outcome::Ok { overhead_us: overhead, body: if want_body { serde_json::from_slice(&b).ok() } else { None } }
        }
        (503, Ok(b)) if String::from_utf8_lossy(&b).contains("OVERLOADED") => Outcome::Shed(retry_after),
        (status, body) => {
            let reason = body
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_default();
            Outcome::Error(format!("{status} {reason}"))
        }
    }
}

/// One client of the `mixed` mode: what it has to work on.
#[derive(Default)]
struct Shop {
    /// Payments it took, to read back.
    payments: Vec<String>,
    /// An authorized payment waiting for its capture.
    to_capture: Option<String>,
    /// A captured payment that may be refunded in part.
    to_refund: Option<String>,
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
    customers: Arc<Vec<i64>>,
    id: usize,
    n: u64,
}

impl Client {
    fn customer(&self) -> i64 {
        self.customers[(self.id + self.n as usize) % self.customers.len()]
    }

    async fn create(&self, capture: &str) -> Outcome {
        let body = json!({"customerID": self.customer().to_string(), "amount": 1000, "currency": "usd",
                          "payment_method": "pm_card_visa", "capture_method": capture});
        let r = self
            .http
            .post(format!("{}/v1/payment", self.url))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", format!("bench-{}-{}-{}", std::process::id(), self.id, self.n))
            .json(&body)
            .send()
            .await;
        judge(r, true).await
    }

    async fn post(&self, path: String, body: Value) -> Outcome {
        let key = format!("bench-{}-{}-{}", std::process::id(), self.id, self.n);
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await;
        judge(r, false).await
    }

    async fn get(&self, path: String) -> Outcome {
        judge(self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.key).send().await, false).await
    }

    /// The next call of a shop's day: mostly reads, then payments, captures
    /// and refunds.
    async fn shop(&self, shop: &mut Shop) -> (&'static str, Outcome) {
        let id_of = |o: &Outcome| match o {
            Outcome::Ok { body: Some(b), .. } => b["paymentID"].as_str().map(str::to_string),
            _ => None,
        };
        match self.n % 10 {
            0 | 1 if !shop.payments.is_empty() => {
                let p = &shop.payments[(self.n as usize / 10) % shop.payments.len()];
                ("get-payment", self.get(format!("/v1/payment/{p}")).await)
            }
            0..=2 => ("get-customer", self.get(format!("/v1/customer/{}", self.customer())).await),
            3..=5 => {
                let o = self.create("automatic").await;
                if let Some(id) = id_of(&o) {
                    shop.to_refund = Some(id.clone());
                    shop.payments.push(id);
                }
                ("create-automatic", o)
            }
            6 => {
                let o = self.create("manual").await;
                if let Some(id) = id_of(&o) {
                    shop.to_capture = Some(id.clone());
                    shop.payments.push(id);
                }
                ("create-manual", o)
            }
            7 | 8 if shop.to_capture.is_some() => {
                let p = shop.to_capture.take().expect("checked");
                let o = self.post(format!("/v1/payment/{p}/capture"), json!({})).await;
                if matches!(o, Outcome::Ok { .. }) {
                    shop.to_refund = Some(p);
                }
                ("capture", o)
            }
            _ => match shop.to_refund.take() {
                Some(p) => ("refund", self.post(format!("/v1/payment/{p}/refund"), json!({"amount": 300})).await),
                None => ("get-customer", self.get(format!("/v1/customer/{}", self.customer())).await),
            },
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [mode, url, key, clients, seconds, customers] = args.as_slice() else {
        eprintln!(
            "usage: loadgen <create-payment|mixed|get-customer-rest|get-customer-grpc> <url> <api-key> <clients> <seconds> <customerIDs>"
        );
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("clients");
    let duration = Duration::from_secs(seconds.parse().expect("seconds"));
    let customers: Arc<Vec<i64>> =
        Arc::new(customers.split(',').map(|c| c.trim().parse().expect("customerID")).collect());
    let deadline = Instant::now() + duration;
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let channel = if mode == "get-customer-grpc" {
        Some(tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.expect("gRPC connects"))
    } else {
        None
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let mode = mode.clone();
            let mut client = Client {
                http: http.clone(),
                url: url.clone(),
                key: key.clone(),
                customers: customers.clone(),
                id,
                n: 0,
            };
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut grpc = channel.map(PaymentServiceClient::new);
                let mut shop = Shop::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (kind, outcome) = match mode.as_str() {
                        "create-payment" => ("create-automatic", client.create("automatic").await),
                        "mixed" => client.shop(&mut shop).await,
                        "get-customer-rest" => {
                            ("get-customer", client.get(format!("/v1/customer/{}", client.customer())).await)
                        }
                        _ => {
                            let mut req = tonic::Request::new(GetCustomerRequest {
                                customer_id: client.customer(),
                                ..Default::default()
                            });
                            req.metadata_mut()
                                .insert("authorization", format!("Bearer {}", client.key).parse().unwrap());
                            let outcome = match grpc.as_mut().unwrap().get_customer(req).await {
                                Ok(_) => Outcome::Ok { overhead_us: None, body: None },
                                Err(s) => Outcome::Error(format!("grpc {:?}", s.code())),
                            };
                            ("get-customer", outcome)
                        }
                    };
                    client.n += 1;
                    let micros = t.elapsed().as_micros() as u32;
                    match outcome {
                        Outcome::Ok { overhead_us, .. } => {
                            seen.ok.push(micros);
                            seen.overhead.extend(overhead_us);
                            *seen.kinds.entry(kind).or_default() += 1;
                        }
                        Outcome::Shed(wait) => {
                            seen.shed.push(micros);
                            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
                        }
                        Outcome::Error(why) => {
                            seen.errors += 1;
                            *seen.failures.entry(why).or_default() += 1;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Seen::default();
    for t in tasks {
        let seen = t.await.unwrap();
        all.ok.extend(seen.ok);
        all.overhead.extend(seen.overhead);
        all.shed.extend(seen.shed);
        all.errors += seen.errors;
        for (k, v) in seen.kinds {
            *all.kinds.entry(k).or_default() += v;
        }
        for (k, v) in seen.failures {
            *all.failures.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let pct = |v: &mut Vec<u32>, p: f64| {
        v.sort_unstable();
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).map(|x| *x as f64 / 1000.0).unwrap_or(0.0)
    };
    println!(
        "{}",
        json!({
            "mode": mode, "clients": clients, "customers": customers.len(), "seconds": elapsed,
            "ok": all.ok.len(), "errors": all.errors, "shed": all.shed.len(),
            "rate_per_s": all.ok.len() as f64 / elapsed,
            "p50_ms": pct(&mut all.ok, 0.50), "p99_ms": pct(&mut all.ok, 0.99),
            "overhead_p50_ms": pct(&mut all.overhead, 0.50), "overhead_p99_ms": pct(&mut all.overhead, 0.99),
            "shed_p99_ms": pct(&mut all.shed, 0.99), "by_kind": all.kinds, "failures": all.failures,
        })
    );
}
