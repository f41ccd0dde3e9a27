//! Renders the OpenAPI 3.0 document from the same descriptors and bindings
//! as the REST routes, so the document cannot drift from what is served.
//! Schemas describe the JSON as it really is: proto field names as keys,
//! 64-bit integers as decimal strings, enums as their names. Request schemas
//! carry the contract's rules (`build/rules.rs`): what is required, the
//! allowed values, lengths, ranges and forms, the same the service checks.

use super::routes::{Binding, PUBLIC_RPCS, comment_of};
use super::rules::{FieldRule, charge_rule, field_rule};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

fn scalar(kind: &Kind) -> Value {
    match kind {
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => json!({"$ref": format!("#/components/schemas/{}", schema_name(m))}),
    }
}

fn schema_name(m: &MessageDescriptor) -> String {
    m.full_name().trim_start_matches("payment.").replace('.', "_")
}

/// The schema of a request field with rules: exactly what the service accepts.
fn ruled_schema(f: &FieldDescriptor, rule: &FieldRule) -> Value {
    let mut schema = if f.is_map() {
        let mut keys = rule.keys.clone().unwrap_or_default();
        keys.raw = true;
        let values = rule.vals.clone().unwrap_or_default();
        let mut s = json!({"type": "object", "additionalProperties": values.text_schema(), "propertyNames": keys.text_schema()});
        if let Some(n) = rule.max_entries {
            s["maxProperties"] = json!(n);
        }
        s
    } else if f.is_list() {
        let mut item = rule.clone();
        item.required = true;
        let mut s = json!({"type": "array", "items": item.text_schema()});
        if rule.required {
            s["minItems"] = json!(1);
        }
        if let Some(n) = rule.max_entries {
            s["maxItems"] = json!(n);
        }
        s
    } else {
        match f.kind() {
            Kind::Int64 => rule.int_schema(true),
            Kind::Int32 => rule.int_schema(false),
            _ => rule.text_schema(),
        }
    };
    let doc = comment_of(&f.parent_file(), f.path());
    if !doc.is_empty() {
        schema["description"] = json!(doc);
    }
    schema
}

fn field_schema(f: &FieldDescriptor) -> Value {
    let mut schema = if f.is_map() {
        let Kind::Message(entry) = f.kind() else { unreachable!("a map field is a message") };
        json!({"type": "object", "additionalProperties": scalar(&entry.map_entry_value_field().kind())})
    } else if f.is_list() {
        json!({"type": "array", "items": scalar(&f.kind())})
    } else if f.containing_oneof().is_some_and(|o| o.is_synthetic()) {
        // A proto3 `optional` field: null is "not given", as absent.
        let mut s = scalar(&f.kind());
        if let Some(t) = s.get("type").cloned() {
            s["type"] = json!([t, "null"]);
        }
        s
    } else {
        scalar(&f.kind())
    };
    let doc = comment_of(&f.parent_file(), f.path());
    if !doc.is_empty() {
        if schema.get("$ref").is_some() {
            schema = json!({"allOf": [schema], "description": doc});
        } else {
            schema["description"] = json!(doc);
        }
    }
    schema
}

/// A request message as the body of a route: its fields minus those taken
/// from the path (as grpc-gateway binds them), with their rules.
fn request_body(pool: &DescriptorPool, m: &MessageDescriptor, path: &[String]) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in m.fields().filter(|f| !path.contains(&f.name().to_string())) {
        let schema = match field_rule(pool, &f) {
            Some(rule) => {
                if rule.required {
                    required.push(f.name().to_string());
                }
                ruled_schema(&f, &rule)
            }
            None => field_schema(&f),
        };
        props.insert(f.name().to_string(), schema);
    }
    let mut schema = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    if let Some(charge) = charge_rule(pool, m) {
        schema["allOf"] = json!([super::rules::charge_schema(&charge)]);
    }
    let doc = comment_of(&m.parent_file(), m.path());
    if !doc.is_empty() {
        schema["description"] = json!(doc);
    }
    schema
}

fn collect(m: &MessageDescriptor, out: &mut BTreeMap<String, Value>) {
    let name = schema_name(m);
    if out.contains_key(&name) {
        return;
    }
    out.insert(name.clone(), Value::Null);
    let mut props = Map::new();
    for f in m.fields() {
        props.insert(f.name().to_string(), field_schema(&f));
        if let Kind::Message(inner) = f.kind() {
            if inner.is_map_entry() {
                if let Kind::Message(v) = inner.map_entry_value_field().kind() {
                    collect(&v, out);
                }
            } else {
                collect(&inner, out);
            }
        }
    }
    let mut schema = json!({"type": "object", "properties": props});
    let doc = comment_of(&m.parent_file(), m.path());
    if !doc.is_empty() {
        schema["description"] = json!(doc);
    }
    out.insert(name, schema);
}

fn parameter(pool: &DescriptorPool, f: &FieldDescriptor, location: &str) -> Value {
    let rule = field_rule(pool, f);
    let mut schema = match (&rule, f.kind()) {
        // In a path or a query, a number is its decimal digits.
        (Some(r), Kind::Int64 | Kind::Int32) => {
            let wide = f.kind() == Kind::Int64;
            let lo = r.min.unwrap_or(if wide { i64::MIN } else { i64::from(i32::MIN) });
            let hi = r.max.unwrap_or(if wide { i64::MAX } else { i64::from(i32::MAX) });
            json!({"type": "integer", "format": if wide { "int64" } else { "int32" }, "minimum": lo, "maximum": hi})
        }
        (Some(r), _) => ruled_schema(f, r),
        (None, _) => field_schema(f),
    };
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("description");
    }
    if location == "query" && !matches!(f.kind(), Kind::String) {
        // `?page_size=` is read as "not given", as HTML forms send it.
        schema = json!({"anyOf": [schema, {"type": "string", "maxLength": 0}]});
    }
    json!({
        "name": f.name(),
        "in": location,
        "required": location == "path",
        "description": comment_of(&f.parent_file(), f.path()),
        "schema": schema,
    })
}

/// The error answers an operation can give, each in the error schema.
fn error_responses(rpc: &str, has_id: bool, has_body: bool) -> Map<String, Value> {
    let mut statuses: Vec<(&str, &str)> = vec![
        (
            "400",
            "INVALID_ARGUMENT: the request breaks the contract's rules (`reason` and `details.field` say which), or an idempotency key was used with other parameters (`IDEMPOTENCY_KEY_REUSED`); or FAILED_PRECONDITION `STRIPE_REFUSED` / `STRIPE_FAILED`: Stripe refused or failed it and nothing was done",
        ),
        (
            "401",
            "UNAUTHENTICATED: no API key, or one that is unknown, revoked (`API_KEY_REVOKED`) or expired (`API_KEY_EXPIRED`)",
        ),
        (
            "403",
            "PERMISSION_DENIED `INSUFFICIENT_SCOPE`: the API key lacks the scope this operation needs (`details.required_scope`)",
        ),
    ];
    if has_id || !rpc.starts_with("List") {
        statuses.push(("404", "NOT_FOUND: a resource named in the request does not exist"));
    }
    if rpc == "CreatePayment" {
        statuses
            .push(("402", "The card was declined (`reason` CARD_DECLINED, or AUTHENTICATION_REQUIRED off-session: the bank wants the customer, and the payment keeps its client_secret for Stripe.js); the payment is kept, with status failed"));
    }
    if has_body {
        statuses.extend([
            ("408", "The request body did not arrive in time (`reason` BODY_READ_TIMEOUT)"),
            (
                "409",
                "Tell the two apart by `status`. FAILED_PRECONDITION: the resource's state does not allow this (`ALREADY_CAPTURED`, `REFUND_EXCEEDS_CAPTURED`, ...); final, a retry gets the same answer. ABORTED: the idempotency key (or the payment) is in use by a request still running; retry shortly with the same key",
            ),
            ("413", "The request body is over the limit (`reason` BODY_TOO_LARGE)"),
        ]);
    }
    statuses.extend([
        ("429", "RESOURCE_EXHAUSTED `RATE_LIMITED`: the API key is over its rate; retry after `Retry-After` seconds"),
        ("431", "The request headers are over the limit (`reason` HEADERS_TOO_LARGE)"),
        ("500", "INTERNAL: a failure of ours; the request may be retried with the same idempotency key"),
        (
            "503",
            "UNAVAILABLE: the database or Stripe cannot be reached, or the outcome of a Stripe call is not yet known (`STRIPE_UNAVAILABLE`, `DATABASE_UNAVAILABLE`), the instance is shedding load (`OVERLOADED`) or holds too many connections (`TOO_MANY_CONNECTIONS`); retry after `Retry-After` with the same idempotency key",
        ),
    ]);
    statuses.sort();
    statuses
        .into_iter()
        .map(|(code, description)| {
            (
                code.to_string(),
                json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            )
        })
        .collect()
}

pub fn render(
    pool: &DescriptorPool,
    service: &ServiceDescriptor,
    bindings: &[Binding],
) -> Result<String, Box<dyn std::error::Error>> {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for b in bindings {
        if b.body == "*" {
            schemas.insert(schema_name(&b.input), request_body(pool, &b.input, &b.path_params()));
        }
        collect(&b.output, &mut schemas);
        let mut params = Vec::new();
        for name in b.path_params() {
            let f = b
                .input
                .get_field_by_name(&name)
                .ok_or_else(|| format!("{}: path parameter {name} is not a field", b.rpc))?;
            params.push(parameter(pool, &f, "path"));
        }
        for f in b.query_fields() {
            params.push(parameter(pool, &f, "query"));
        }
        let mut responses = error_responses(&b.rpc, !b.path_params().is_empty(), b.body == "*");
        responses.insert(
            "200".into(),
            json!({
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(&b.output))}}}
            }),
        );
        if PUBLIC_RPCS.contains(&b.rpc.as_str()) {
            responses.retain(|code, _| !matches!(code.as_str(), "401" | "403" | "404" | "402" | "409" | "429"));
        }
        let mut op = json!({
            "operationId": if paths.values().any(|p| p.values().any(|o| o["operationId"] == b.rpc)) {
                format!("{}_{}", b.rpc, b.method.to_lowercase())
            } else {
                b.rpc.clone()
            },
            "summary": b.comment,
            "tags": [service.name()],
            "parameters": params,
            "responses": responses,
        });
        if b.body == "*" {
            // A body with nothing required may be left out (`{}` is meant).
            let required = schemas.get(&schema_name(&b.input)).is_some_and(|s| s.get("required").is_some());
            op["requestBody"] = json!({
                "required": required,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(&b.input))}}}
            });
        }
        if PUBLIC_RPCS.contains(&b.rpc.as_str()) {
            op["security"] = json!([]);
        } else {
            // The scope an API key needs, for people and for tools.
            let scope = super::scopes::needed(&b.rpc).as_str();
            op["x-required-scope"] = json!(scope);
            op["description"] = json!(format!(
                "Needs an API key with the `{scope}` scope (`admin` grants every scope, and every scope grants `read`)."
            ));
        }
        paths.entry(b.path.clone()).or_default().insert(b.method.to_lowercase(), op);
    }
    // Links: an id in an answer feeds every operation that takes that id in
    // its path, and nothing else there (a created payment's paymentID →
    // capture, refund, ...), so clients and tools can follow a resource's
    // life. An operation whose path needs more (a customer's saved card)
    // is not one the answer alone leads to.
    for b in bindings {
        let mut links = Map::new();
        for f in b.output.fields().filter(|f| f.name().ends_with("ID") && f.kind() == Kind::Int64 && !f.is_list()) {
            for o in bindings.iter().filter(|o| o.path_params() == [f.name().to_string()]) {
                let target = &paths[&o.path][&o.method.to_lowercase()];
                let id = target["operationId"].as_str().unwrap_or_default().to_string();
                links.insert(
                    format!("{id}By{}", f.name()),
                    json!({"operationId": id, "parameters": {f.name(): format!("$response.body#/{}", f.name())}}),
                );
            }
        }
        if !links.is_empty() {
            paths.get_mut(&b.path).and_then(|p| p.get_mut(&b.method.to_lowercase())).expect("rendered above")["responses"]
                ["200"]["links"] = Value::Object(links);
        }
    }
    let mut schemas: Map<String, Value> = schemas.into_iter().collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "The body of every error answer.",
            "properties": {
                "code": {"type": "integer", "description": "The gRPC status code (3 = INVALID_ARGUMENT, 5 = NOT_FOUND, ...)."},
                "status": {"type": "string", "description": "The gRPC status code's name, e.g. INVALID_ARGUMENT."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "reason": {"type": "string", "description": "What went wrong, for programs: a stable UPPER_SNAKE_CASE word such as INVALID_EMAIL."},
                "details": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Facts about the error, such as the field at fault."}
            },
            "required": ["code", "message", "reason"]
        }),
    );
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "amazing-payments",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Payments in front of Stripe. Every operation is also served over gRPC (package `payment`, service `PaymentService`). JSON keys are the proto field names; 64-bit integers are decimal strings; fields holding their default value are left out."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key made with `amazing-payments apikey create`."}}
        }
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}
