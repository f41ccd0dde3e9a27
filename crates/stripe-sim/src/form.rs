//! Decoding of Stripe's `application/x-www-form-urlencoded` bodies with
//! bracket nesting: `metadata[order_id]=42`, `expand[]=latest_charge`,
//! `items[0][price]=price_1`. Values stay strings, as Stripe receives them.

use serde_json::{Map, Value};

/// Decodes a form body (or query string) into a JSON object.
///
/// Returns the name of the first malformed key as the error.
pub fn decode(input: &[u8]) -> Result<Value, String> {
    let mut root = Value::Object(Map::new());
    for (key, value) in form_urlencoded::parse(input) {
        let path = split_key(&key).ok_or_else(|| key.to_string())?;
        insert(&mut root, &path, Value::String(value.into_owned())).map_err(|_| key.to_string())?;
    }
    Ok(root)
}

/// `a[b][]` -> `["a", "b", ""]`.
fn split_key(key: &str) -> Option<Vec<String>> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return None;
    }
    let mut parts = vec![head.to_string()];
    while !rest.is_empty() {
        let close = rest.find(']')?;
        if !rest.starts_with('[') {
            return None;
        }
        parts.push(rest[1..close].to_string());
        rest = &rest[close + 1..];
    }
    Some(parts)
}

fn insert(node: &mut Value, path: &[String], value: Value) -> Result<(), ()> {
    let (first, rest) = path.split_first().ok_or(())?;
    if rest.is_empty() {
        return match node {
            Value::Object(map) => {
                map.insert(first.clone(), value);
                Ok(())
            }
            Value::Array(list) if first.is_empty() => {
                list.push(value);
                Ok(())
            }
            Value::Array(list) => {
                let i: usize = first.parse().map_err(|_| ())?;
                while list.len() <= i {
                    list.push(Value::Null);
                }
                list[i] = value;
                Ok(())
            }
            _ => Err(()),
        };
    }
    let child_is_list = rest[0].is_empty() || rest[0].parse::<usize>().is_ok();
    let fresh = || {
        if child_is_list { Value::Array(Vec::new()) } else { Value::Object(Map::new()) }
    };
    let child = match node {
        Value::Object(map) => map.entry(first.clone()).or_insert_with(fresh),
        Value::Array(list) => {
            if first.is_empty() {
                list.push(fresh());
                list.last_mut().ok_or(())?
            } else {
                let i: usize = first.parse().map_err(|_| ())?;
                while list.len() <= i {
                    list.push(Value::Null);
                }
                if list[i].is_null() {
                    list[i] = fresh();
                }
                &mut list[i]
            }
        }
        _ => return Err(()),
    };
    insert(child, rest, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_become_objects_and_lists() {
        let v = decode(b"email=a%40b.co&metadata[order_id]=42&expand[]=x&expand[]=y&items[0][price]=p").unwrap();
        assert_eq!(
            v,
            json!({"email": "a@b.co", "metadata": {"order_id": "42"}, "expand": ["x", "y"], "items": [{"price": "p"}]})
        );
    }

    #[test]
    fn a_key_with_an_unclosed_bracket_is_refused() {
        assert_eq!(decode(b"metadata[x=1"), Err("metadata[x".to_string()));
    }
}
