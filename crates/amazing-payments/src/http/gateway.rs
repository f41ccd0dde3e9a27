//! The REST/JSON gateway, in the manner of grpc-gateway: a route per
//! `google.api.http` binding (from the table `build.rs` generates), which
//! builds the request message from the path, the query string and the JSON
//! body, calls the gRPC service implementation in process, and answers with
//! the reply as proto3 JSON (proto field names, int64 as strings, defaults
//! left out). Headers that matter to the service (`authorization`,
//! `x-request-id`, `idempotency-key`, `grpc-metadata-*`) travel as metadata.

use super::error::RestError;
use crate::grpc::service::PaymentApi;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderName, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use tonic::{Code, metadata::MetadataMap};

/// How a query parameter's text becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Bool,
    Number,
    String,
}

/// A request field that may come from the query string.
#[derive(Debug)]
pub struct QueryField {
    pub name: &'static str,
    pub json_name: &'static str,
    pub kind: FieldKind,
    pub repeated: bool,
}

/// One REST binding of an rpc.
#[derive(Debug)]
pub struct Route {
    pub rpc: &'static str,
    pub method: &'static str,
    /// The path template, e.g. `/v1/customer/{customerID}`.
    pub path: &'static str,
    /// `""`, `"*"` or the name of the field the body fills.
    pub body: &'static str,
    /// Served without an API key.
    pub public: bool,
    pub query: &'static [QueryField],
}

/// A reply: the response message as JSON, and response metadata.
pub struct Reply {
    pub body: Value,
    pub metadata: MetadataMap,
}

include!(concat!(env!("OUT_DIR"), "/rest_routes.rs"));

/// JSON does not tell `5` from `5.0` (JSON Schema calls both an integer),
/// but proto3 JSON's integer fields refuse the latter: a whole number
/// written with a fraction or an exponent is read as the integer it is.
fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

fn decode<T: DeserializeOwned>(mut input: Value) -> Result<T, tonic::Status> {
    whole_numbers(&mut input);
    serde_path_to_error::deserialize(input).map_err(|e| {
        let field = e.path().to_string();
        let status: tonic::Status =
            crate::app::AppError::invalid("MALFORMED_REQUEST", format!("field {field}: {}", e.inner()))
                .detail("field", field)
                .into();
        status
    })
}

/// The request for the service, with the caller the gateway already
/// authenticated (in extensions, which no remote client can set).
fn request_with<T>(message: T, metadata: MetadataMap, principal: Option<crate::app::Principal>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata;
    if let Some(p) = principal {
        request.extensions_mut().insert(p);
    }
    request
}

fn encode<T: Serialize>(response: tonic::Response<T>) -> Result<Reply, tonic::Status> {
    let (metadata, message, _) = response.into_parts();
    let body =
        serde_json::to_value(&message).map_err(|e| tonic::Status::internal(format!("encoding the reply: {e}")))?;
    Ok(Reply { body, metadata })
}

/// The REST routes of every annotated rpc.
pub fn router(api: PaymentApi) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<PaymentApi>> = BTreeMap::new();
    for route in ROUTES {
        let filter = match route.method {
            "GET" => MethodFilter::GET,
            "POST" => MethodFilter::POST,
            "PUT" => MethodFilter::PUT,
            "PATCH" => MethodFilter::PATCH,
            "DELETE" => MethodFilter::DELETE,
            other => panic!("unsupported HTTP method {other} in proto/"),
        };
        let handler = move |State(api): State<PaymentApi>,
                            method: Method,
                            uri: Uri,
                            headers: HeaderMap,
                            body: Result<Bytes, BytesRejection>| async move {
            let mut response = match handle(&api, route, &method, &uri, &headers, body).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            };
            response.extensions_mut().insert(crate::http::middleware::Rpc(route.rpc));
            response
        };
        let entry = by_path.remove(route.path).unwrap_or_default();
        by_path.insert(route.path, entry.merge(on(filter, handler)));
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, methods)| r.route(path, methods.fallback(method_not_allowed)))
        .with_state(api)
}

async fn method_not_allowed(method: Method, uri: Uri) -> RestError {
    RestError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn bad_request(reason: &str, message: impl Into<String>) -> RestError {
    RestError::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, reason, message)
}

async fn handle(
    api: &PaymentApi,
    route: &'static Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    // The caller first: an unauthenticated request learns nothing about its body.
    let metadata = metadata_of(headers);
    let principal = if route.public {
        None
    } else {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        Some(api.app().authenticate(authorization, route.rpc).await.map_err(RestError::from)?)
    };
    let body = body.map_err(|e| {
        RestError::new(
            e.status(),
            Code::InvalidArgument,
            "BODY_UNREADABLE",
            format!("the request body could not be read: {e}"),
        )
    })?;
    let mut input = Map::new();
    if route.body == "*" && !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => input = map,
            Ok(_) => {
                return Err(bad_request("MALFORMED_JSON", "the request body must be a JSON object"));
            }
            Err(e) => {
                return Err(bad_request("MALFORMED_JSON", format!("the request body is not valid JSON: {e}")));
            }
        }
    } else if *method != Method::GET && *method != Method::DELETE && route.body.is_empty() && !body.is_empty() {
        return Err(bad_request("UNEXPECTED_BODY", format!("{} {} takes no body", route.method, route.path)));
    }
    query_into(route, uri.query().unwrap_or(""), &mut input)?;
    for (name, value) in path_params(route.path, uri.path()) {
        input.insert(name.to_string(), Value::String(value));
    }
    let quota = principal.as_ref().and_then(|p| p.quota);
    let reply = dispatch(api, route.rpc, Value::Object(input), metadata, principal).await?;
    let mut response = (StatusCode::OK, Json(reply.body)).into_response();
    for (name, value) in quota.iter().flat_map(|q| q.headers()) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    for (key, value) in reply.metadata.into_headers() {
        if let Some(key) = key.filter(|k| !k.as_str().starts_with("grpc-") && k.as_str() != "content-type") {
            response.headers_mut().insert(key, value);
        }
    }
    Ok(response)
}

/// The values of the `{field}` segments of `template` in `path`.
fn path_params(template: &'static str, path: &str) -> Vec<(&'static str, String)> {
    template
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(t, p)| {
            let name = t.strip_prefix('{')?.strip_suffix('}')?;
            let value = percent_decode(p);
            Some((name, value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Query parameters become fields of the request message. Unknown names are
/// ignored, as grpc-gateway did.
fn query_into(route: &Route, query: &str, input: &mut Map<String, Value>) -> Result<(), RestError> {
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        // An empty value means "not given", as in `?customerID=&status=`.
        let Some(field) =
            route.query.iter().find(|f| f.name == key || f.json_name == key).filter(|_| !value.is_empty())
        else {
            continue;
        };
        let json = match field.kind {
            FieldKind::Bool => match value.as_ref() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => {
                    return Err(bad_request(
                        "MALFORMED_REQUEST",
                        format!("query parameter {key} must be true or false"),
                    ));
                }
            },
            FieldKind::Number | FieldKind::String => Value::String(value.into_owned()),
        };
        if field.repeated {
            match input.entry(field.name).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(list) => list.push(json),
                _ => unreachable!("repeated fields are arrays"),
            }
        } else {
            input.insert(field.name.to_string(), json);
        }
    }
    Ok(())
}

/// The headers a gRPC client would send as metadata.
fn metadata_of(headers: &HeaderMap) -> MetadataMap {
    let mut forwarded = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if let Some(stripped) = n.strip_prefix("grpc-metadata-") {
            if let Ok(name) = HeaderName::from_bytes(stripped.as_bytes()) {
                forwarded.append(name, value.clone());
            }
        } else if matches!(n, "authorization" | "x-request-id" | "idempotency-key") {
            forwarded.append(name.clone(), value.clone());
        }
    }
    MetadataMap::from_headers(forwarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_read_from_their_segments() {
        assert_eq!(path_params("/v1/customer/{customerID}", "/v1/customer/42"), vec![("customerID", "42".to_string())]);
        assert_eq!(
            path_params("/v1/customer/{customerID}", "/v1/customer/a%20b"),
            vec![("customerID", "a b".to_string())]
        );
    }

    #[test]
    fn every_rpc_has_a_rest_binding() {
        for rpc in RPCS {
            assert!(ROUTES.iter().any(|r| r.rpc == *rpc), "{rpc} has no google.api.http annotation");
        }
    }
}
