//! Reads the request rules of `proto/rules/rules.proto` from the descriptors
//! and renders, from them:
//! - `contract_rules.rs`: a `Validate` impl for every request message, run on
//!   every request over both transports before any use case;
//! - the JSON Schema constraints of the OpenAPI document (`openapi.rs` asks
//!   [`FieldRule::schema`] and [`charge_schema`]).
//!
//! One reading, two renderings: the document cannot promise what the service
//! does not check, nor the service refuse what the document allows.

use super::currencies::{CURRENCIES, MAX_AMOUNT, MINIMUMS, THREE_DECIMAL};
use super::routes::snake;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor, Value,
};
use serde_json::{Value as Json, json};
use std::fmt::Write;

/// White space as Rust's `str::trim` knows it (Unicode White_Space).
pub const WS: &str =
    "[\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// The rules of one field, as `rules.Field` states them, with the defaults
/// filled in.
#[derive(Debug, Clone, Default)]
pub struct FieldRule {
    pub required: bool,
    pub min_len: Option<u32>,
    pub max_len: Option<u32>,
    pub pattern: Option<String>,
    pub values: Vec<String>,
    /// `values` in any letter case (currency codes; the document lists the
    /// lowercase and uppercase forms).
    pub any_case: bool,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub max_entries: Option<u32>,
    pub keys: Option<Box<FieldRule>>,
    pub vals: Option<Box<FieldRule>>,
    pub not_in: Vec<String>,
    pub reason: String,
    pub missing: String,
    pub too_long: String,
    pub message: String,
    pub missing_message: String,
    /// Taken as sent, white space and all (map keys, which no domain type
    /// trims).
    pub raw: bool,
}

/// `rules.Charge` of a message.
#[derive(Debug, Clone)]
pub struct ChargeRule {
    pub amount: String,
    pub currency: String,
    pub minimum: bool,
    pub instead: Option<String>,
}

fn text(m: &DynamicMessage, name: &str) -> String {
    match m.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn flag(m: &DynamicMessage, name: &str) -> bool {
    matches!(m.get_field_by_name(name).as_deref(), Some(Value::Bool(true)))
}

fn opt<T>(m: &DynamicMessage, name: &str, f: impl Fn(&Value) -> Option<T>) -> Option<T> {
    if m.has_field_by_name(name) { m.get_field_by_name(name).as_deref().and_then(f) } else { None }
}

fn list(m: &DynamicMessage, name: &str) -> Vec<String> {
    match m.get_field_by_name(name).as_deref() {
        Some(Value::List(l)) => l.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// `customerID` → `CUSTOMER_ID`, for default reasons.
fn upper(name: &str) -> String {
    let mut s = String::new();
    let mut prev_upper = true;
    for c in name.chars() {
        if c.is_uppercase() && !prev_upper {
            s.push('_');
        }
        prev_upper = c.is_uppercase();
        s.push(c.to_ascii_uppercase());
    }
    s
}

fn read(m: &DynamicMessage, field: &str) -> FieldRule {
    let sub = |name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Value::Message(inner)) if m.has_field_by_name(name) => Some(Box::new(read(inner, field))),
        _ => None,
    };
    let reason =
        Some(text(m, "reason")).filter(|r| !r.is_empty()).unwrap_or_else(|| format!("INVALID_{}", upper(field)));
    let any_case = flag(m, "currency");
    let mut values = list(m, "in");
    if any_case {
        values = CURRENCIES.iter().map(|c| c.to_string()).chain(CURRENCIES.iter().map(|c| c.to_uppercase())).collect();
    }
    FieldRule {
        required: flag(m, "required"),
        min_len: opt(m, "min_len", Value::as_u32),
        max_len: opt(m, "max_len", Value::as_u32),
        pattern: Some(text(m, "pattern")).filter(|p| !p.is_empty()),
        values,
        any_case,
        min: opt(m, "min", Value::as_i64),
        max: opt(m, "max", Value::as_i64),
        max_entries: opt(m, "max_entries", Value::as_u32),
        keys: sub("keys"),
        vals: sub("values"),
        not_in: list(m, "not_in"),
        missing: Some(text(m, "missing"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("MISSING_{}", upper(field))),
        too_long: Some(text(m, "too_long")).filter(|r| !r.is_empty()).unwrap_or_else(|| reason.clone()),
        message: text(m, "message"),
        missing_message: text(m, "missing_message"),
        raw: false,
        reason,
    }
}

/// The rules of `f`, if it has any.
pub fn field_rule(pool: &DescriptorPool, f: &FieldDescriptor) -> Option<FieldRule> {
    let ext = pool.get_extension_by_name("rules.field")?;
    let options = f.options();
    if !options.has_extension(&ext) {
        return None;
    }
    match options.get_extension(&ext).as_ref() {
        Value::Message(m) => Some(read(m, f.name())),
        _ => None,
    }
}

/// The charge rule of `m`, if it has one.
pub fn charge_rule(pool: &DescriptorPool, m: &MessageDescriptor) -> Option<ChargeRule> {
    let ext = pool.get_extension_by_name("rules.message")?;
    let options = m.options();
    if !options.has_extension(&ext) {
        return None;
    }
    let Value::Message(rules) = options.get_extension(&ext).into_owned() else { return None };
    let Some(Value::Message(c)) = rules.get_field_by_name("charge").map(|v| v.into_owned()) else { return None };
    Some(ChargeRule {
        amount: text(&c, "amount"),
        currency: text(&c, "currency"),
        minimum: flag(&c, "minimum"),
        instead: Some(text(&c, "instead")).filter(|s| !s.is_empty()),
    })
}

impl FieldRule {
    /// The whole-value regular expression: anchored, and matching the empty
    /// value unless the field is required.
    /// White space around the value is allowed (the service trims it), so it
    /// is written around the pattern: Rust's `str::trim` set, spelled out, as
    /// `\s` differs between Rust, Python and ECMA 262.
    pub fn anchored(&self) -> Option<String> {
        self.pattern.as_ref().map(|p| {
            let optional = if self.required { "" } else { "?" };
            if self.raw { format!("^(?:{p}){optional}$") } else { format!("^{WS}*(?:{p}){optional}{WS}*$") }
        })
    }

    /// The JSON Schema of a text value.
    pub fn text_schema(&self) -> Json {
        let mut s = json!({"type": "string"});
        if !self.values.is_empty() {
            let mut values = self.values.clone();
            if !self.required {
                values.insert(0, String::new());
            }
            s["enum"] = json!(values);
            return s;
        }
        if let Some(p) = self.anchored() {
            s["pattern"] = json!(p);
        }
        let min = self.min_len.or(if self.required { Some(1) } else { None });
        if let Some(n) = min {
            s["minLength"] = json!(n);
        }
        if let Some(n) = self.max_len {
            s["maxLength"] = json!(n);
        }
        if !self.not_in.is_empty() {
            s["not"] = json!({"enum": self.not_in});
        }
        s
    }

    /// The JSON Schema of an integer: a JSON number or, as proto3 JSON writes
    /// 64-bit integers, a decimal string; both within the range.
    pub fn int_schema(&self, wide: bool) -> Json {
        let lo = self.min.unwrap_or(if wide { i64::MIN } else { i64::from(i32::MIN) });
        let hi = self.max.unwrap_or(if wide { i64::MAX } else { i64::from(i32::MAX) });
        integer(lo, hi, 1)
    }
}

/// An integer in `lo..=hi`, a multiple of `step`: as a JSON number or a
/// decimal string.
pub fn integer(lo: i64, hi: i64, step: i64) -> Json {
    let mut number = json!({"type": "integer", "format": "int64", "minimum": lo, "maximum": hi});
    if step > 1 {
        number["multipleOf"] = json!(step);
    }
    if lo < 0 {
        // Negative numbers are never asked for by a rule; no string form.
        return number;
    }
    let digits = if step > 1 {
        let tens = format!("(?:{})0", range_regex((lo as u64).div_ceil(step as u64).max(1), hi as u64 / step as u64));
        if lo == 0 { format!("0|{tens}") } else { tens }
    } else {
        range_regex(lo as u64, hi as u64)
    };
    // Python's `$` also matches before a final newline; ECMA's and Rust's do not.
    json!({"anyOf": [number, {"type": "string", "pattern": format!("^(?:{digits})$"), "not": {"pattern": "\n"}}]})
}

/// A regular expression for the decimal numbers `lo..=hi` (no sign, no
/// leading zeros), e.g. `1..=250` → `[1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|250`.
pub fn range_regex(lo: u64, hi: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut start = lo;
    if start == 0 {
        parts.push("0".into());
        start = 1;
    }
    // Blocks [s, s + 10^k - 1] with s a multiple of 10^k: "prefix" then k free digits.
    let mut blocks: Vec<(String, u32)> = Vec::new();
    while start <= hi {
        let mut k = 0u32;
        while start.is_multiple_of(10u64.pow(k + 1)) && start.checked_add(10u64.pow(k + 1) - 1).is_some_and(|e| e <= hi)
        {
            k += 1;
        }
        blocks.push(((start / 10u64.pow(k)).to_string(), k));
        match start.checked_add(10u64.pow(k)) {
            Some(next) => start = next,
            None => break,
        }
    }
    // Merge runs of blocks that differ only in the prefix's last digit.
    let mut i = 0;
    while i < blocks.len() {
        let (prefix, k) = &blocks[i];
        let head = &prefix[..prefix.len() - 1];
        let first = prefix.as_bytes()[prefix.len() - 1];
        let mut last = first;
        let mut j = i + 1;
        while j < blocks.len() {
            let (p, kk) = &blocks[j];
            if kk == k && p.len() == prefix.len() && &p[..p.len() - 1] == head && p.as_bytes()[p.len() - 1] == last + 1
            {
                last += 1;
                j += 1;
            } else {
                break;
            }
        }
        let digit =
            if first == last { (first as char).to_string() } else { format!("[{}-{}]", first as char, last as char) };
        let tail = match k {
            0 => String::new(),
            1 => "[0-9]".into(),
            k => format!("[0-9]{{{k}}}"),
        };
        parts.push(format!("{head}{digit}{tail}"));
        i = j;
    }
    parts.join("|")
}

/// The JSON Schema alternatives of a message's charge rule: which currency
/// allows which amounts (and, with `instead`, the other way to charge).
pub fn charge_schema(rule: &ChargeRule) -> Json {
    let mut groups: Vec<(i64, i64, Vec<&str>)> = Vec::new();
    for c in CURRENCIES {
        let min = if rule.minimum { MINIMUMS.iter().find(|(m, _)| m == c).map(|(_, v)| *v).unwrap_or(1) } else { 1 };
        let step = if THREE_DECIMAL.contains(c) { 10 } else { 1 };
        match groups.iter_mut().find(|(m, s, _)| *m == min && *s == step) {
            Some(g) => g.2.push(c),
            None => groups.push((min, step, vec![c])),
        }
    }
    let by_currency: Vec<Json> = groups
        .into_iter()
        .map(|(min, step, codes)| {
            let mut names: Vec<String> = codes.iter().map(|c| c.to_string()).collect();
            names.extend(codes.iter().map(|c| c.to_uppercase()));
            json!({"properties": {
                rule.currency.clone(): {"enum": names},
                rule.amount.clone(): integer(min, MAX_AMOUNT, step),
            }})
        })
        .collect();
    let zero = json!({"anyOf": [{"type": "integer", "enum": [0]}, {"type": "string", "enum": ["0"]}]});
    let by_amount = json!({"required": [rule.amount, rule.currency], "anyOf": by_currency});
    match &rule.instead {
        None => by_amount,
        Some(other) => {
            let mut by_amount = by_amount;
            by_amount["properties"] = json!({other.clone(): zero});
            let by_other = json!({
                "required": [other],
                "properties": {other.clone(): integer(1, i64::MAX, 1), rule.amount.clone(): zero, rule.currency.clone(): {"enum": [""]}}
            });
            json!({"anyOf": [by_amount, by_other]})
        }
    }
}

fn rust_str(s: &str) -> String {
    format!("{s:?}")
}

fn text_rules(field: &str, r: &FieldRule, pattern: Option<&str>) -> String {
    let opt = |v: Option<u32>| v.map(|n| format!("Some({n})")).unwrap_or_else(|| "None".into());
    let strs = |v: &[String]| format!("&[{}]", v.iter().map(|s| rust_str(s)).collect::<Vec<_>>().join(", "));
    format!(
        "Text {{ field: {field:?}, required: {}, min_len: {}, max_len: {}, pattern: {}, values: {}, any_case: {}, not_in: {}, reason: {:?}, missing: {:?}, too_long: {:?}, message: {:?}, missing_message: {:?}, raw: {} }}",
        r.required,
        opt(r.min_len),
        opt(r.max_len),
        pattern.map(|p| format!("Some(&{p})")).unwrap_or_else(|| "None".into()),
        strs(&r.values),
        r.any_case,
        strs(&r.not_in),
        r.reason,
        r.missing,
        r.too_long,
        r.message,
        r.missing_message,
        r.raw,
    )
}

/// Renders `contract_rules.rs`, included by `src/contract.rs`.
pub fn render(pool: &DescriptorPool, service: &ServiceDescriptor) -> Result<String, Box<dyn std::error::Error>> {
    let mut s = String::from("// @generated by build.rs from the rules.field options in proto/.\n\n");
    let mut statics = String::new();
    let mut patterns: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut body = String::new();
    for m in service.methods() {
        let input = m.input();
        if !seen.insert(input.full_name().to_string()) {
            continue;
        }
        let _ = writeln!(
            body,
            "impl Validate for crate::proto::{} {{\n    fn validate(&self) -> Result<(), AppError> {{",
            input.name()
        );
        for f in input.fields() {
            let Some(rule) = field_rule(pool, &f) else { continue };
            let member = rust_member(&f);
            let mut pattern_static = |r: &FieldRule| -> Result<Option<String>, Box<dyn std::error::Error>> {
                let Some(p) = r.anchored() else { return Ok(None) };
                regex::Regex::new(&p)
                    .map_err(|e| format!("{}.{}: the pattern does not compile: {e}", input.name(), f.name()))?;
                let name = format!("PATTERN_{}", patterns.len());
                let _ = writeln!(
                    statics,
                    "static {name}: LazyLock<Regex> = LazyLock::new(|| Regex::new({}).expect(\"checked by build.rs\"));",
                    rust_str(&p)
                );
                patterns.push(name.clone());
                Ok(Some(name))
            };
            if f.is_map() {
                let mut keys = rule.keys.clone().unwrap_or_default();
                keys.raw = true;
                let vals = rule.vals.clone().unwrap_or_default();
                let kp = pattern_static(&keys)?;
                let vp = pattern_static(&vals)?;
                let mut keys = *keys;
                keys.raw = true;
                keys.reason = rule.reason.clone();
                keys.too_long = rule.reason.clone();
                keys.missing = rule.reason.clone();
                let mut vals = *vals;
                vals.reason = rule.reason.clone();
                vals.too_long = rule.reason.clone();
                let _ = writeln!(
                    body,
                    "        map(&self.{member}, {:?}, {}, {:?}, &{}, &{})?;",
                    f.name(),
                    rule.max_entries.map(|n| format!("Some({n})")).unwrap_or_else(|| "None".into()),
                    rule.reason,
                    text_rules(f.name(), &keys, kp.as_deref()),
                    text_rules(f.name(), &vals, vp.as_deref()),
                );
                continue;
            }
            if f.is_list() && f.kind() == Kind::String {
                // Each item within the rules (every item required: an
                // empty one is no value); `required` asks for one at least.
                let mut item = rule.clone();
                item.required = true;
                let p = pattern_static(&item)?;
                let _ = writeln!(
                    body,
                    "        list(&self.{member}, {:?}, {}, {}, {:?}, &{})?;",
                    f.name(),
                    rule.required,
                    rule.max_entries.map(|n| format!("Some({n})")).unwrap_or_else(|| "None".into()),
                    rule.missing,
                    text_rules(f.name(), &item, p.as_deref()),
                );
                continue;
            }
            match f.kind() {
                Kind::String => {
                    let p = pattern_static(&rule)?;
                    let _ =
                        writeln!(body, "        {}.check(&self.{member})?;", text_rules(f.name(), &rule, p.as_deref()));
                }
                Kind::Int64 | Kind::Int32 => {
                    let _ = writeln!(
                        body,
                        "        Int {{ field: {:?}, required: {}, min: {}, max: {}, reason: {:?}, missing: {:?}, too_long: {:?} }}.check({})?;",
                        f.name(),
                        rule.required,
                        rule.min.map(|n| format!("Some({n})")).unwrap_or_else(|| "None".into()),
                        rule.max.map(|n| format!("Some({n})")).unwrap_or_else(|| "None".into()),
                        rule.reason,
                        rule.missing,
                        rule.too_long,
                        if f.kind() == Kind::Int32 {
                            format!("i64::from(self.{member})")
                        } else {
                            format!("self.{member}")
                        },
                    );
                }
                other => {
                    return Err(
                        format!("{}.{}: rules on a {other:?} field are not supported", input.name(), f.name()).into()
                    );
                }
            }
        }
        if let Some(c) = charge_rule(pool, &input) {
            let field = |name: &str| -> Result<String, Box<dyn std::error::Error>> {
                let f = input
                    .get_field_by_name(name)
                    .ok_or_else(|| format!("{}: charge names no field {name}", input.name()))?;
                Ok(rust_member(&f))
            };
            let instead = match &c.instead {
                Some(o) => format!("Some(({o:?}, self.{}))", field(o)?),
                None => "None".into(),
            };
            let _ = writeln!(
                body,
                "        charge(({:?}, self.{}), ({:?}, &self.{}), {}, {instead})?;",
                c.amount,
                field(&c.amount)?,
                c.currency,
                field(&c.currency)?,
                c.minimum
            );
        }
        body.push_str("        Ok(())\n    }\n}\n\n");
    }
    s.push_str(&statics);
    let _ = writeln!(
        s,
        "\n/// Every pattern, for the test that compiles them all.\n#[cfg(test)]\npub(crate) static PATTERNS: &[&LazyLock<Regex>] = &[{}];\n",
        patterns.iter().map(|p| format!("&{p}")).collect::<Vec<_>>().join(", ")
    );
    s.push_str(&body);
    s.push_str(
        "/// The service with the caller authenticated, then the contract's rules\n\
         /// checked, before each rpc: what the gRPC server serves (the REST\n\
         /// gateway does the same two steps itself).\n\
         #[derive(Debug, Clone)]\n\
         pub struct Checked<S>(pub S);\n\n\
         #[tonic::async_trait]\n\
         impl<S: crate::proto::payment_service_server::PaymentService + Authenticate> crate::proto::payment_service_server::PaymentService for Checked<S> {\n",
    );
    for m in service.methods() {
        let public = super::routes::PUBLIC_RPCS.contains(&m.name());
        let body = if public {
            format!("        request.get_ref().validate()?;\n        self.0.{}(request).await", snake(m.name()))
        } else {
            format!(
                "        let quota = self.0.authenticate(&mut request, {:?}).await?;\n        request.get_ref().validate()?;\n        let mut response = self.0.{}(request).await?;\n        annotate(&mut response, quota);\n        Ok(response)",
                m.name(),
                snake(m.name())
            )
        };
        let binding = if public { "request" } else { "mut request" };
        let _ = writeln!(
            s,
            "    async fn {}(&self, {binding}: tonic::Request<crate::proto::{}>) -> Result<tonic::Response<crate::proto::{}>, tonic::Status> {{\n{body}\n    }}",
            snake(m.name()),
            m.input().name(),
            m.output().name(),
        );
    }
    s.push_str("}\n");
    Ok(s)
}

/// The Rust name prost gives a field (heck's snake case: `customerID` →
/// `customer_id`).
fn rust_member(f: &FieldDescriptor) -> String {
    let chars: Vec<char> = f.name().chars().collect();
    let mut s = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                s.push('_');
            }
        }
        s.push(c.to_ascii_lowercase());
    }
    s
}
