//! The contract's own rules (`proto/rules/rules.proto`), checked on every
//! request before any use case: `build.rs` turns each field's `rules.field`
//! option into a [`Validate`] impl (`contract_rules.rs`) and into the OpenAPI
//! document's `required`, `enum`, `pattern`, `minLength`/`maxLength` and
//! `minimum`/`maximum`. The gRPC door runs them through [`Checked`], the REST
//! gateway after decoding the JSON; both answer INVALID_ARGUMENT (400) with
//! the rule's reason and the field, and nothing is written.
//!
//! Rules that need stored data (a customer that exists, a payment still
//! capturable) stay with the use cases; the domain types parse again what
//! passed here, so the layers below never see an unchecked value.

use crate::{
    app::AppError,
    domain::{
        money::{Currency, Money},
        request::contains_card_number,
    },
};
use regex::Regex;
use std::{collections::HashMap, sync::LazyLock};

/// A request message that can check its own rules.
pub trait Validate {
    fn validate(&self) -> Result<(), AppError>;
}

/// Who may call: run by [`Checked`] before the rules, so that a caller
/// without a key learns nothing about its message, as over REST.
pub trait Authenticate {
    /// Authenticates the caller of `request` to `rpc` (its key, rate limit
    /// and scope) and keeps who it is in the request's extensions (which no
    /// remote client can set). What the caller's rate limit leaves it comes
    /// back, for the answer.
    fn authenticate<T: Send>(
        &self,
        request: &mut tonic::Request<T>,
        rpc: &'static str,
    ) -> impl std::future::Future<Output = Result<Option<crate::app::ratelimit::Quota>, tonic::Status>> + Send;
}

/// Puts the rate-limit headers on a gRPC answer (as metadata).
pub fn annotate<T>(response: &mut tonic::Response<T>, quota: Option<crate::app::ratelimit::Quota>) {
    for (name, value) in quota.iter().flat_map(|q| q.headers()) {
        if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(name.as_bytes()), value.parse()) {
            response.metadata_mut().insert(k, v);
        }
    }
}

/// The rules of a text field.
pub struct Text {
    pub field: &'static str,
    pub required: bool,
    pub min_len: Option<usize>,
    pub max_len: Option<usize>,
    pub pattern: Option<&'static LazyLock<Regex>>,
    pub values: &'static [&'static str],
    /// `values` in any letter case (currency codes).
    pub any_case: bool,
    pub not_in: &'static [&'static str],
    pub reason: &'static str,
    pub missing: &'static str,
    pub too_long: &'static str,
    pub message: &'static str,
    /// Told when a required value is not given; "FIELD is required" if empty.
    pub missing_message: &'static str,
    /// Taken as sent: no white space trimmed (map keys).
    pub raw: bool,
}

fn refuse(field: &str, reason: &'static str, message: String) -> AppError {
    AppError::invalid(reason, message).detail("field", field)
}

impl Text {
    /// Checks `value` as the document states it: white space around it is
    /// allowed (and trimmed by the domain types after), lengths count the
    /// value as sent, in code points.
    pub fn check(&self, value: &str) -> Result<(), AppError> {
        let field = self.field;
        let trimmed = if self.raw { value } else { value.trim() };
        if trimmed.is_empty() && self.required {
            let message = if self.missing_message.is_empty() {
                format!("{field} is required")
            } else {
                self.missing_message.into()
            };
            return Err(refuse(field, self.missing, message));
        }
        let len = value.chars().count();
        if let Some(max) = self.max_len.filter(|max| len > *max) {
            return Err(refuse(field, self.too_long, format!("{field} is longer than {max} characters")));
        }
        if let Some(min) = self.min_len.filter(|min| len < *min) {
            return Err(refuse(field, self.reason, format!("{field} is shorter than {min} characters")));
        }
        if trimmed.is_empty() {
            return Ok(());
        }
        let listed = |v: &str| {
            self.values.contains(&v) || (self.any_case && self.values.contains(&v.to_ascii_lowercase().as_str()))
        };
        if !self.values.is_empty() && !listed(trimmed) {
            let allowed: Vec<&str> =
                self.values.iter().copied().filter(|v| !v.chars().any(char::is_uppercase)).collect();
            return Err(refuse(field, self.reason, format!("{field} must be one of: {}", allowed.join(", "))));
        }
        if self.not_in.contains(&trimmed) {
            return Err(refuse(field, self.reason, format!("{field} {trimmed:?} is set by the service")));
        }
        if let Some(pattern) = self.pattern
            && !pattern.is_match(value)
        {
            if contains_card_number(value) {
                return Err(refuse(
                    field,
                    "RAW_CARD_NUMBER",
                    "card numbers are never accepted: tokenize the card with Stripe.js (or Stripe's mobile SDKs) and send the PaymentMethod id (pm_...)".into(),
                ));
            }
            let message = if self.message.is_empty() {
                format!("{field} is not in the form required")
            } else {
                self.message.into()
            };
            return Err(refuse(field, self.reason, message));
        }
        Ok(())
    }
}

/// The rules of an integer field; 0 is "not given".
pub struct Int {
    pub field: &'static str,
    pub required: bool,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub reason: &'static str,
    pub missing: &'static str,
    pub too_long: &'static str,
}

impl Int {
    pub fn check(&self, value: i64) -> Result<(), AppError> {
        let field = self.field;
        if value == 0 && self.required {
            return Err(refuse(field, self.missing, format!("{field} is required: a positive integer")));
        }
        if let Some(min) = self.min.filter(|min| value < *min) {
            return Err(refuse(field, self.reason, format!("{field} must be at least {min}")));
        }
        if let Some(max) = self.max.filter(|max| value > *max) {
            return Err(refuse(field, self.too_long, format!("{field} must be at most {max}")));
        }
        Ok(())
    }
}

/// A map field: at most `max_entries` entries, each key and value within
/// its rules.
pub fn map(
    entries: &HashMap<String, String>,
    field: &'static str,
    max_entries: Option<usize>,
    reason: &'static str,
    keys: &Text,
    values: &Text,
) -> Result<(), AppError> {
    if let Some(max) = max_entries.filter(|max| entries.len() > *max) {
        return Err(refuse(field, reason, format!("{field} may have at most {max} keys")));
    }
    for (k, v) in entries {
        keys.check(k).map_err(|e| refuse(field, reason, format!("{field} key {k:?}: {}", e.message)))?;
        values.check(v).map_err(|e| refuse(field, reason, format!("{field} value of {k:?}: {}", e.message)))?;
    }
    Ok(())
}

/// A list of text values: at least one if `required`, at most
/// `max_entries`, each within `items`.
pub fn list(
    values: &[String],
    field: &'static str,
    required: bool,
    max_entries: Option<usize>,
    missing: &'static str,
    items: &Text,
) -> Result<(), AppError> {
    if required && values.is_empty() {
        return Err(refuse(field, missing, format!("{field} must list at least one value")));
    }
    if let Some(max) = max_entries.filter(|max| values.len() > *max) {
        return Err(refuse(field, items.reason, format!("{field} may list at most {max} values")));
    }
    values.iter().try_for_each(|v| items.check(v))
}

/// An amount in a currency (`rules.Charge`): both given or, when the message
/// has another way to charge (`instead`, a price), exactly one of the two.
pub fn charge(
    (amount_field, amount): (&'static str, i64),
    (currency_field, currency): (&'static str, &str),
    minimum: bool,
    instead: Option<(&'static str, i64)>,
) -> Result<(), AppError> {
    let by_amount = amount != 0 || !currency.is_empty();
    match instead {
        Some((other, id)) if id != 0 => {
            if by_amount {
                return Err(refuse(
                    other,
                    "AMOUNT_AND_PRICE",
                    format!("give either {amount_field} and {currency_field}, or {other}, not both"),
                ));
            }
            return Ok(());
        }
        Some((other, _)) if !by_amount => {
            return Err(refuse(
                amount_field,
                "MISSING_AMOUNT",
                format!("give {amount_field} and {currency_field}, or {other}"),
            ));
        }
        _ => {}
    }
    if currency.is_empty() {
        return Err(refuse(
            currency_field,
            "MISSING_CURRENCY",
            format!("{currency_field} is required (an ISO 4217 code such as usd)"),
        ));
    }
    let currency = Currency::parse(currency).map_err(AppError::from)?;
    let checked = if minimum { Money::charge(amount, currency) } else { Money::part(amount, currency) };
    checked.map_err(|e| refuse(amount_field, e.reason, e.message))?;
    Ok(())
}

include!(concat!(env!("OUT_DIR"), "/contract_rules.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn every_pattern_of_the_contract_compiles() {
        assert!(!PATTERNS.is_empty());
        for p in PATTERNS {
            LazyLock::force(p);
        }
    }

    #[test]
    fn a_customer_without_a_name_is_refused_with_the_reason_clients_already_know() {
        let r = proto::CreateCustomerRequest { name: "  ".into(), email: "a@example.com".into(), ..Default::default() };
        assert_eq!(r.validate().unwrap_err().reason, "MISSING_NAME");
        let r = proto::CreateCustomerRequest {
            name: "Ada\u{7}".into(),
            email: "a@example.com".into(),
            ..Default::default()
        };
        assert_eq!(r.validate().unwrap_err().reason, "INVALID_NAME");
        let r = proto::CreateCustomerRequest { name: "Ada".into(), email: "a@example".into(), ..Default::default() };
        assert_eq!(r.validate().unwrap_err().reason, "INVALID_EMAIL");
        let r = proto::CreateCustomerRequest {
            name: "Ada".into(),
            email: "a.b+c@ex-ample.co.uk".into(),
            ..Default::default()
        };
        assert!(r.validate().is_ok());
    }

    #[test]
    fn an_email_address_is_dot_atoms_at_a_domain_of_labels_in_any_script() {
        let customer = |email: &str| proto::CreateCustomerRequest {
            name: "Ada".into(),
            email: email.into(),
            ..Default::default()
        };
        for ok in [
            "a@b.co",
            "first.last+tag@mail.example.com",
            "o'neil@example.ie",
            "josé@exämple.de",
            "用户@例子.广告",
            " a@b.co\n",
        ] {
            assert!(customer(ok).validate().is_ok(), "{ok}");
        }
        for bad in
            ["plainaddress", "@example.com", "a@", "a@b", "a b@c.com", "a@b..com", ".a@b.com", "a@-b.com", "a\n@b.com"]
        {
            assert_eq!(customer(bad).validate().unwrap_err().reason, "INVALID_EMAIL", "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(customer(&long).validate().unwrap_err().reason, "EMAIL_TOO_LONG");
    }

    #[test]
    fn a_charge_is_an_amount_in_a_currency_or_a_price_never_both() {
        let pay = |amount, currency: &str, price| proto::CreatePaymentRequest {
            customer_id: 1,
            amount,
            currency: currency.into(),
            price_id: price,
            payment_method: "pm_card_visa".into(),
            ..Default::default()
        };
        assert!(pay(50, "usd", 0).validate().is_ok());
        assert!(pay(50, "USD", 0).validate().is_ok());
        assert!(pay(0, "", 7).validate().is_ok());
        assert_eq!(pay(49, "usd", 0).validate().unwrap_err().reason, "AMOUNT_TOO_SMALL");
        assert_eq!(pay(55, "kwd", 0).validate().unwrap_err().reason, "INVALID_AMOUNT");
        assert_eq!(pay(50, "usd", 7).validate().unwrap_err().reason, "AMOUNT_AND_PRICE");
        assert_eq!(pay(0, "", 0).validate().unwrap_err().reason, "MISSING_AMOUNT");
        assert_eq!(pay(50, "", 0).validate().unwrap_err().reason, "MISSING_CURRENCY");
        assert_eq!(pay(50, "xyz", 0).validate().unwrap_err().reason, "INVALID_CURRENCY");
    }

    #[test]
    fn metadata_keys_the_service_sets_are_refused() {
        let r = proto::CreatePaymentRequest {
            customer_id: 1,
            amount: 100,
            currency: "usd".into(),
            payment_method: "pm_card_visa".into(),
            metadata: HashMap::from([("paymentID".to_string(), "1".to_string())]),
            ..Default::default()
        };
        assert_eq!(r.validate().unwrap_err().reason, "INVALID_METADATA");
        let r = proto::CreatePaymentRequest { metadata: HashMap::from([(String::new(), "1".to_string())]), ..r };
        assert_eq!(r.validate().unwrap_err().reason, "INVALID_METADATA", "a key is never empty");
    }

    /// Each integer the document allows as a decimal string matches its
    /// stated range exactly (the range patterns are generated by build.rs).
    #[test]
    fn the_documents_number_patterns_match_exactly_their_ranges() {
        fn walk(v: &serde_json::Value, out: &mut Vec<(i64, i64, i64, String)>) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some([number, string]) = o.get("anyOf").and_then(|a| a.as_array()).map(Vec::as_slice)
                        && number["type"] == "integer"
                        && let Some(p) = string["pattern"].as_str()
                    {
                        let step = number["multipleOf"].as_i64().unwrap_or(1);
                        out.push((
                            number["minimum"].as_i64().unwrap(),
                            number["maximum"].as_i64().unwrap(),
                            step,
                            p.into(),
                        ));
                    }
                    o.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let doc: serde_json::Value = serde_json::from_str(crate::http::docs::OPENAPI_JSON).unwrap();
        let mut ranges = Vec::new();
        walk(&doc, &mut ranges);
        assert!(ranges.len() > 10, "{ranges:?}");
        for (lo, hi, step, pattern) in ranges {
            let re = Regex::new(&pattern).unwrap();
            let mut probes = vec![0, 1, 9, 10, 11, 49, 50, 99, 100, 101, 17_499, 17_500, 99_999_999, 100_000_000];
            for n in [lo, hi] {
                probes.extend([
                    n.saturating_sub(11),
                    n.saturating_sub(1),
                    n,
                    n.saturating_add(1),
                    n.saturating_add(10),
                ]);
            }
            probes.extend((0..200).map(|i| lo.saturating_add(i * 7_919_993 % hi.saturating_sub(lo).max(1))));
            for n in probes.into_iter().filter(|n| *n >= 0) {
                let inside = (lo..=hi).contains(&n) && n % step == 0;
                assert_eq!(re.is_match(&n.to_string()), inside, "{n} against {lo}..={hi} step {step}: {pattern}");
            }
            assert!(!re.is_match("007") && !re.is_match("") && !re.is_match("-1"), "{pattern}");
        }
    }
}
