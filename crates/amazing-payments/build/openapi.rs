//! Renders the OpenAPI 3.0 document from the same descriptors and bindings
//! as the REST routes, so the document cannot drift from what is served.
//! Schemas describe the JSON as it really is: proto field names as keys,
//! 64-bit integers as decimal strings, enums as their names.

use super::routes::{Binding, PUBLIC_RPCS, comment_of};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor};
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

fn field_schema(f: &FieldDescriptor) -> Value {
    let mut schema = if f.is_map() {
        let Kind::Message(entry) = f.kind() else { unreachable!("a map field is a message") };
        json!({"type": "object", "additionalProperties": scalar(&entry.map_entry_value_field().kind())})
    } else if f.is_list() {
        json!({"type": "array", "items": scalar(&f.kind())})
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

fn parameter(f: &FieldDescriptor, location: &str) -> Value {
    let mut schema = field_schema(f);
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("description");
    }
    if location == "path" {
        // Every path parameter is an id: a positive integer.
        schema = json!({"type": "string", "format": "int64", "pattern": "^[1-9][0-9]{0,18}$"});
    } else if f.name() == "page_size" {
        schema = json!({"type": "integer", "format": "int32", "minimum": 0, "maximum": 100});
    }
    json!({
        "name": f.name(),
        "in": location,
        "required": location == "path",
        "description": comment_of(&f.parent_file(), f.path()),
        "schema": schema,
    })
}

pub fn render(service: &ServiceDescriptor, bindings: &[Binding]) -> Result<String, Box<dyn std::error::Error>> {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for b in bindings {
        collect(&b.input, &mut schemas);
        collect(&b.output, &mut schemas);
        let mut params = Vec::new();
        for name in b.path_params() {
            let f = b
                .input
                .get_field_by_name(&name)
                .ok_or_else(|| format!("{}: path parameter {name} is not a field", b.rpc))?;
            params.push(parameter(&f, "path"));
        }
        for f in b.query_fields() {
            params.push(parameter(&f, "query"));
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
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(&b.output))}}}
                },
                "default": {
                    "description": "An error: the HTTP status follows the gRPC code; `reason` says why, for programs.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            }
        });
        if b.body == "*" {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(&b.input))}}}
            });
        }
        if PUBLIC_RPCS.contains(&b.rpc.as_str()) {
            op["security"] = json!([]);
        }
        paths.entry(b.path.clone()).or_default().insert(b.method.to_lowercase(), op);
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
        "openapi": "3.0.3",
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
