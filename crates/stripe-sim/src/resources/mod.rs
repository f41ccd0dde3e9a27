//! The API resources the simulator serves, and the table that routes a
//! request to its handler.

pub mod balance;
pub mod customers;
pub mod params;

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
        ("GET", ["v1", "customers", _]) => customers::retrieve,
        ("POST", ["v1", "customers", _]) => customers::update,
        ("DELETE", ["v1", "customers", _]) => customers::delete,
        _ => return None,
    };
    Some(handler)
}
