//! The API resources the simulator serves, and the table that routes a
//! request to its handler.

pub mod balance;
pub mod cards;
pub mod charges;
pub mod customers;
pub mod disputes;
pub mod money;
pub mod params;
pub mod payment_intents;
pub mod payment_methods;
pub mod products;
pub mod refunds;
pub mod search;
pub mod setup_intents;

use crate::{Sim, error::ApiResult};
use axum::http::Method;
use serde_json::Value;

/// A resource handler: the simulator, the decoded parameters, the path
/// segments (`["v1", "customers", "cus_..."]`).
pub type Handler = fn(&Sim, &Value, &[&str]) -> ApiResult;

/// The handler for a method and path, if the API has one.
pub fn route(method: &Method, segments: &[&str]) -> Option<Handler> {
    let handler: Handler = match (method.as_str(), segments) {
        ("GET", ["v1", "balance"]) => balance::retrieve,
        ("POST", ["v1", "customers"]) => customers::create,
        ("GET", ["v1", "customers"]) => customers::list,
        ("GET", ["v1", "customers", "search"]) => search::customers,
        ("GET", ["v1", "customers", _]) => customers::retrieve,
        ("POST", ["v1", "customers", _]) => customers::update,
        ("DELETE", ["v1", "customers", _]) => customers::delete,
        ("POST", ["v1", "payment_methods"]) => payment_methods::create,
        ("GET", ["v1", "payment_methods", _]) => payment_methods::retrieve,
        ("POST", ["v1", "payment_methods", _, "attach"]) => payment_methods::attach,
        ("POST", ["v1", "payment_methods", _, "detach"]) => payment_methods::detach,
        ("GET", ["v1", "payment_methods"]) => payment_methods::list,
        ("GET", ["v1", "customers", _, "payment_methods"]) => payment_methods::list_for_customer,
        ("POST", ["v1", "setup_intents"]) => setup_intents::create,
        ("GET", ["v1", "setup_intents"]) => setup_intents::list,
        ("GET", ["v1", "setup_intents", _]) => setup_intents::retrieve,
        ("POST", ["v1", "setup_intents", _]) => setup_intents::update,
        ("POST", ["v1", "setup_intents", _, "confirm"]) => setup_intents::confirm,
        ("POST", ["v1", "setup_intents", _, "cancel"]) => setup_intents::cancel,
        ("POST", ["v1", "payment_intents"]) => payment_intents::create,
        ("GET", ["v1", "payment_intents"]) => payment_intents::list,
        ("GET", ["v1", "payment_intents", "search"]) => search::payment_intents,
        ("GET", ["v1", "payment_intents", _]) => payment_intents::retrieve,
        ("POST", ["v1", "payment_intents", _, "confirm"]) => payment_intents::confirm,
        ("POST", ["v1", "payment_intents", _, "capture"]) => payment_intents::capture,
        ("POST", ["v1", "payment_intents", _, "cancel"]) => payment_intents::cancel,
        ("GET", ["v1", "disputes"]) => disputes::list,
        ("GET", ["v1", "disputes", _]) => disputes::retrieve,
        ("POST", ["v1", "disputes", _]) => disputes::update,
        ("POST", ["v1", "disputes", _, "close"]) => disputes::close,
        ("GET", ["v1", "charges"]) => charges::list,
        ("GET", ["v1", "charges", "search"]) => search::charges,
        ("GET", ["v1", "charges", _]) => charges::retrieve,
        ("POST", ["v1", "refunds"]) => refunds::create,
        ("GET", ["v1", "refunds"]) => refunds::list,
        ("GET", ["v1", "refunds", _]) => refunds::retrieve,
        ("POST", ["v1", "products"]) => products::create_product,
        ("GET", ["v1", "products"]) => products::list_products,
        ("GET", ["v1", "products", _]) => products::retrieve_product,
        ("POST", ["v1", "products", _]) => products::update_product,
        ("POST", ["v1", "prices"]) => products::create_price,
        ("GET", ["v1", "prices"]) => products::list_prices,
        ("GET", ["v1", "prices", _]) => products::retrieve_price,
        ("POST", ["v1", "prices", _]) => products::update_price,
        ("POST", ["v1", "webhook_endpoints"]) => crate::webhooks::create_endpoint,
        ("GET", ["v1", "webhook_endpoints"]) => crate::webhooks::list_endpoints,
        ("GET", ["v1", "webhook_endpoints", _]) => crate::webhooks::retrieve_endpoint,
        ("POST", ["v1", "webhook_endpoints", _]) => crate::webhooks::update_endpoint,
        ("DELETE", ["v1", "webhook_endpoints", _]) => crate::webhooks::delete_endpoint,
        ("GET", ["v1", "events"]) => crate::webhooks::list_events,
        ("GET", ["v1", "events", _]) => crate::webhooks::retrieve_event,
        _ => return None,
    };
    Some(handler)
}
