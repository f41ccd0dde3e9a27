//! `POST /v1/webhooks/stripe`: Stripe's deliveries (REST only, no API key;
//! the signature is the check). A verified event is stored and acknowledged
//! at once; a refused one answers 400 and stores nothing.

use super::error::RestError;
use crate::app::App;
use axum::{Json, Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use serde_json::{Value, json};

pub fn router(app: App) -> Router {
    Router::new().route("/v1/webhooks/stripe", post(receive)).with_state(app)
}

async fn receive(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, RestError> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let new = app.receive_webhook(signature, &body).await?;
    Ok(Json(json!({"received": true, "duplicate": !new})))
}
