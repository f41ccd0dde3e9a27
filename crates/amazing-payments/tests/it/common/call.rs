//! One way to call any rpc over either transport with the same JSON, so that
//! a scenario can be run over REST and over gRPC with the same assertions.

use super::TestApp;
use amazing_payments::{http::gateway::ROUTES, proto};
use serde_json::{Map, Value};
use tonic::Code;

/// The transport to call through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Rest,
    Grpc,
}

pub const BOTH: [Via; 2] = [Via::Rest, Via::Grpc];

/// A refused call, from either transport.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: Code,
    pub reason: String,
    /// The HTTP status (REST only).
    pub http: Option<u16>,
    pub details: Value,
    pub message: String,
}

macro_rules! grpc_call {
    ($client:expr, $api_key:expr, $key:expr, $rpc:expr, $input:expr, $($name:literal => $method:ident($req:ty)),* $(,)?) => {
        match $rpc {
            $($name => {
                let req: $req = serde_json::from_value($input).expect("the test's JSON fits the request message");
                let mut req = super::with_key(req, $api_key);
                if let Some(k) = $key {
                    req.metadata_mut().insert("idempotency-key", k.parse().unwrap());
                }
                $client.$method(req).await.map(|r| {
                    let replayed = r.metadata().get("idempotent-replayed").is_some();
                    (serde_json::to_value(r.into_inner()).unwrap(), replayed)
                })
            })*
            other => panic!("no rpc {other} in the test harness"),
        }
    };
}

impl TestApp {
    /// Calls `rpc` with `input` (proto JSON) over `via`.
    pub async fn call(&self, via: Via, rpc: &str, input: Value) -> Result<Value, Failure> {
        self.call_keyed(via, rpc, input, None).await.0
    }

    /// Calls `rpc` with an idempotency key; also whether the answer was a replay.
    pub async fn call_keyed(
        &self,
        via: Via,
        rpc: &str,
        input: Value,
        key: Option<&str>,
    ) -> (Result<Value, Failure>, bool) {
        self.call_as(&self.key, via, rpc, input, key).await
    }

    /// Calls `rpc` with the API key `api_key` (not the app's own), and an
    /// idempotency key if given; also whether the answer was a replay.
    pub async fn call_as(
        &self,
        api_key: &str,
        via: Via,
        rpc: &str,
        input: Value,
        key: Option<&str>,
    ) -> (Result<Value, Failure>, bool) {
        match via {
            Via::Rest => self.call_rest(api_key, rpc, input, key).await,
            Via::Grpc => self.call_grpc(api_key, rpc, input, key).await,
        }
    }

    async fn call_rest(
        &self,
        api_key: &str,
        rpc: &str,
        input: Value,
        key: Option<&str>,
    ) -> (Result<Value, Failure>, bool) {
        let route = ROUTES.iter().find(|r| r.rpc == rpc).unwrap_or_else(|| panic!("no REST route for {rpc}"));
        let mut fields: Map<String, Value> = input.as_object().cloned().unwrap_or_default();
        let path: Vec<String> = route
            .path
            .split('/')
            .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => match fields.remove(name) {
                    Some(Value::String(s)) => s,
                    Some(v) => v.to_string(),
                    None => "0".into(),
                },
                None => seg.to_string(),
            })
            .collect();
        let url = format!("{}{}", self.rest, path.join("/"));
        let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
        let mut req = self.http.request(method, &url).bearer_auth(api_key);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if route.body == "*" {
            req = req.json(&Value::Object(fields));
        } else {
            let query: Vec<(String, String)> = fields
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        },
                    )
                })
                .collect();
            req = req.query(&query);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        let body: Value = resp.json().await.unwrap();
        if status == 200 {
            return (Ok(body), replayed);
        }
        let failure = Failure {
            code: Code::from(body["code"].as_i64().unwrap_or(2) as i32),
            reason: body["reason"].as_str().unwrap_or_default().to_string(),
            http: Some(status),
            details: body.get("details").cloned().unwrap_or(Value::Null),
            message: body["message"].as_str().unwrap_or_default().to_string(),
        };
        (Err(failure), replayed)
    }

    async fn call_grpc(
        &self,
        api_key: &str,
        rpc: &str,
        input: Value,
        key: Option<&str>,
    ) -> (Result<Value, Failure>, bool) {
        let mut c = self.grpc().await;
        let result = grpc_call!(c, api_key, key, rpc, input,
            "CreateCustomer" => create_customer(proto::CreateCustomerRequest),
            "GetCustomer" => get_customer(proto::GetCustomerRequest),
            "UpdateCustomer" => update_customer(proto::UpdateCustomerRequest),
            "ListCustomers" => list_customers(proto::ListCustomersRequest),
            "CreateProduct" => create_product(proto::CreateProductRequest),
            "GetProduct" => get_product(proto::GetProductRequest),
            "ListProducts" => list_products(proto::ListProductsRequest),
            "AddPrice" => add_price(proto::AddPriceRequest),
            "DeactivateProduct" => deactivate_product(proto::DeactivateProductRequest),
            "DeactivatePrice" => deactivate_price(proto::DeactivatePriceRequest),
            "CreatePayment" => create_payment(proto::CreatePaymentRequest),
            "GetPayment" => get_payment(proto::GetPaymentRequest),
            "ListPayments" => list_payments(proto::ListPaymentsRequest),
            "CapturePayment" => capture_payment(proto::CapturePaymentRequest),
            "CancelPayment" => cancel_payment(proto::CancelPaymentRequest),
            "RefundPayment" => refund_payment(proto::RefundPaymentRequest),
            "GetRefund" => get_refund(proto::GetRefundRequest),
            "ListRefunds" => list_refunds(proto::ListRefundsRequest),
            "ListDisputes" => list_disputes(proto::ListDisputesRequest),
            "GetDispute" => get_dispute(proto::GetDisputeRequest),
            "SubmitDisputeEvidence" => submit_dispute_evidence(proto::SubmitDisputeEvidenceRequest),
            "AcceptDispute" => accept_dispute(proto::AcceptDisputeRequest),
            "CreateWebhookEndpoint" => create_webhook_endpoint(proto::CreateWebhookEndpointRequest),
            "ListWebhookEndpoints" => list_webhook_endpoints(proto::ListWebhookEndpointsRequest),
            "GetWebhookEndpoint" => get_webhook_endpoint(proto::GetWebhookEndpointRequest),
            "UpdateWebhookEndpoint" => update_webhook_endpoint(proto::UpdateWebhookEndpointRequest),
            "DeleteWebhookEndpoint" => delete_webhook_endpoint(proto::DeleteWebhookEndpointRequest),
            "RollWebhookEndpointSecret" => roll_webhook_endpoint_secret(proto::RollWebhookEndpointSecretRequest),
            "ListWebhookDeliveries" => list_webhook_deliveries(proto::ListWebhookDeliveriesRequest),
            "RedeliverWebhook" => redeliver_webhook(proto::RedeliverWebhookRequest),
        );
        match result {
            Ok((v, replayed)) => (Ok(v), replayed),
            Err(status) => {
                let replayed = status.metadata().get("idempotent-replayed").is_some();
                let (reason, meta) = amazing_payments::app::error::reason_of(&status).unwrap_or_default();
                let failure = Failure {
                    code: status.code(),
                    reason,
                    http: None,
                    details: serde_json::to_value(meta).unwrap(),
                    message: status.message().to_string(),
                };
                (Err(failure), replayed)
            }
        }
    }

    /// A customer made over REST; its id.
    pub async fn new_customer(&self) -> String {
        let (status, body) =
            self.post("/v1/customer", serde_json::json!({"name": "Ada", "email": "ada@example.com"})).await;
        assert_eq!(status, 200, "{body}");
        body["customerID"].as_str().unwrap().to_string()
    }

    /// A form POST to the simulator's Stripe API, as another Stripe client
    /// would send it (a payment made outside this service, say); the answer.
    pub async fn stripe_post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        self.http
            .post(format!("{}{path}", self.sim.url()))
            .bearer_auth(super::STRIPE_KEY)
            .form(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A GET on the simulator's Stripe API; the answer.
    pub async fn stripe_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.sim.url()))
            .bearer_auth(super::STRIPE_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many requests the simulator has received.
    pub fn stripe_calls(&self) -> usize {
        self.sim.state().received().len()
    }

    /// The simulator's copy of a Stripe object, by id.
    pub fn stripe_object(&self, id: &str) -> Value {
        let data = self.sim.state().data.lock();
        let found = match id.split('_').next() {
            Some("pi") => data.payment_intents.get(id),
            Some("ch") => data.charges.get(id),
            Some("re") => data.refunds.get(id),
            Some("prod") => data.products.get(id),
            Some("price") => data.prices.get(id),
            _ => data.customers.get(id),
        };
        found.cloned().unwrap_or_else(|| panic!("no {id} in the simulator"))
    }
}

/// The int64 field `name` of a JSON answer, as a number.
pub fn int(v: &Value, name: &str) -> i64 {
    match &v[name] {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_i64().unwrap(),
        Value::Null => 0,
        other => panic!("{name} is {other}"),
    }
}
