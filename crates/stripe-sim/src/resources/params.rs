//! Reading and checking request parameters as Stripe does.

use crate::error::ApiError;
use serde_json::{Map, Value};

/// Refuses any parameter not in `allowed` (`expand` is always allowed).
pub fn only(params: &Value, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(map) = params.as_object() {
        for key in map.keys() {
            if key != "expand" && !allowed.contains(&key.as_str()) {
                return Err(ApiError::unknown_param(key));
            }
        }
    }
    Ok(())
}

/// A string parameter, if given.
pub fn text<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(name, format!("Invalid string: {name} must be a string"))),
    }
}

/// Validates `metadata`: at most 50 keys, keys up to 40 characters, values up
/// to 500. An empty string as a value means "remove this key".
pub fn metadata(params: &Value) -> Result<Option<Map<String, Value>>, ApiError> {
    match params.get("metadata") {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(Some(Map::new())),
        Some(Value::Object(map)) => {
            if map.len() > 50 {
                return Err(ApiError::invalid("metadata", "You can specify up to 50 keys in metadata."));
            }
            for (k, v) in map {
                if k.chars().count() > 40 {
                    return Err(ApiError::invalid(
                        &format!("metadata[{k}]"),
                        "Metadata keys can be at most 40 characters long.",
                    ));
                }
                if v.as_str().is_none_or(|s| s.chars().count() > 500) {
                    return Err(ApiError::invalid(
                        &format!("metadata[{k}]"),
                        "Metadata values can be strings of at most 500 characters.",
                    ));
                }
            }
            Ok(Some(map.clone()))
        }
        Some(_) => Err(ApiError::invalid("metadata", "Invalid object")),
    }
}

/// Merges `update` into `metadata` as Stripe does: empty values delete keys,
/// and an empty update (`metadata=`) clears everything.
pub fn merge_metadata(target: &mut Value, update: Map<String, Value>) {
    if update.is_empty() {
        *target = Value::Object(Map::new());
        return;
    }
    let map = match target {
        Value::Object(m) => m,
        other => {
            *other = Value::Object(Map::new());
            other.as_object_mut().expect("just set")
        }
    };
    for (k, v) in update {
        if v.as_str() == Some("") {
            map.remove(&k);
        } else {
            map.insert(k, v);
        }
    }
}

/// An integer parameter, if given.
pub fn int(params: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    match text(params, name)? {
        None => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| ApiError::invalid(name, format!("Invalid integer: {s}"))),
    }
}

/// A boolean parameter, if given.
pub fn flag(params: &Value, name: &str) -> Result<Option<bool>, ApiError> {
    match text(params, name)? {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(s) => Err(ApiError::invalid(name, format!("Invalid boolean: {s}"))),
    }
}

/// A required string parameter.
pub fn required<'a>(params: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    text(params, name)?.filter(|s| !s.is_empty()).ok_or_else(|| ApiError::missing(name))
}

/// One of `allowed`, if given.
pub fn one_of<'a>(params: &'a Value, name: &str, allowed: &[&str]) -> Result<Option<&'a str>, ApiError> {
    match text(params, name)? {
        Some(v) if !allowed.contains(&v) => {
            Err(ApiError::invalid(name, format!("Invalid {name}: must be one of {}", allowed.join(", "))))
        }
        other => Ok(other),
    }
}
