//! API documentation: the OpenAPI document generated from `proto/` at build
//! time, at `/openapi.json`, and Swagger UI at `/docs`, served from files
//! compiled into the binary (no network needed).

use super::error::RestError;
use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use std::sync::{Arc, OnceLock};
use tonic::Code;

/// The OpenAPI 3 document of every REST route.
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/docs", get(|| async { Redirect::permanent("/docs/") }))
        .route("/docs/", get(|| swagger(String::new())))
        .route("/docs/{*file}", get(|Path(file): Path<String>| swagger(file)))
}

fn error(description: &str) -> serde_json::Value {
    serde_json::json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The generated document, plus the one route that is not an rpc: Stripe's
/// webhook endpoint.
fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("build.rs writes valid JSON");
        doc["paths"]["/v1/webhooks/stripe"] = serde_json::json!({"post": {
            "operationId": "StripeWebhook",
            "summary": "Stripe's webhook deliveries (REST only, no API key: the Stripe-Signature is the sender's credential). A verified event is stored once and acknowledged; a delivery whose signature does not check out answers 401 and stores nothing.",
            "tags": ["Webhooks"],
            "security": [{"stripeSignature": []}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "description": "A Stripe Event"}}}},
            "responses": {
                "200": {"description": "Stored (or already stored)", "content": {"application/json": {"schema": {"type": "object", "properties": {"received": {"type": "boolean"}, "duplicate": {"type": "boolean"}}}}}},
                "400": error("The body is not a Stripe event"),
                "401": error("The Stripe-Signature is missing, malformed, stale or does not match (`reason` WEBHOOK_SIGNATURE_MISSING, WEBHOOK_SIGNATURE_MALFORMED, WEBHOOK_TIMESTAMP_STALE, WEBHOOK_SIGNATURE_INVALID)"),
                "408": error("The body did not arrive in time"),
                "413": error("The body is over the limit"),
                "431": error("The headers are over the limit"),
                "500": error("A failure of ours; Stripe delivers again"),
                "503": error("The database cannot be reached, no webhook secret is configured, or the instance is shedding load; Stripe delivers again"),
            }
        }});
        doc["components"]["securitySchemes"]["stripeSignature"] = serde_json::json!({
            "type": "apiKey", "in": "header", "name": "Stripe-Signature",
            "description": "Stripe's signature of the delivery, with the endpoint's signing secret (STRIPE_WEBHOOK_SECRET)."
        });
        doc.to_string()
    })
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

fn config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG.get_or_init(|| Arc::new(utoipa_swagger_ui::Config::from("/openapi.json"))).clone()
}

async fn swagger(file: String) -> Response {
    match utoipa_swagger_ui::serve(&file, config()) {
        Ok(Some(f)) => ([(header::CONTENT_TYPE, f.content_type)], f.bytes.into_owned()).into_response(),
        Ok(None) => {
            RestError::new(StatusCode::NOT_FOUND, Code::NotFound, "ROUTE_NOT_FOUND", format!("no file /docs/{file}"))
                .into_response()
        }
        Err(e) => {
            RestError::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, "INTERNAL", e.to_string()).into_response()
        }
    }
}
