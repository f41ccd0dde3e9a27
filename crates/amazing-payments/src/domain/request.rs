//! The values of payment requests: payment method ids, metadata, free text,
//! URLs and reasons, checked against Stripe's limits. Card numbers are
//! refused wherever they might be smuggled in: this service never handles
//! raw card data (tokenize with Stripe.js).

use super::Invalid;
use std::collections::HashMap;

/// Whether `text` holds something that looks like a card number: 13 to 19
/// digits (spaces and dashes allowed between) that pass the Luhn check.
pub fn contains_card_number(text: &str) -> bool {
    let mut digits: Vec<u32> = Vec::new();
    let check = |d: &[u32]| {
        (13..=19).contains(&d.len()) && {
            let sum: u32 = d
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &x)| {
                    if i % 2 == 1 {
                        let y = x * 2;
                        if y > 9 { y - 9 } else { y }
                    } else {
                        x
                    }
                })
                .sum();
            sum.is_multiple_of(10)
        }
    };
    for c in text.chars().chain(std::iter::once('x')) {
        match c {
            '0'..='9' => digits.push(c.to_digit(10).expect("a digit")),
            ' ' | '-' if !digits.is_empty() => {}
            _ => {
                if check(&digits) {
                    return true;
                }
                digits.clear();
            }
        }
    }
    false
}

fn raw_card(field: &'static str) -> Invalid {
    Invalid::new(
        field,
        "RAW_CARD_NUMBER",
        "card numbers are never accepted: tokenize the card with Stripe.js (or Stripe's mobile SDKs) and send the PaymentMethod id (pm_...)",
    )
}

/// A Stripe PaymentMethod id: `pm_...`, such as one made by Stripe.js or a
/// test id like `pm_card_visa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethodId(String);

impl PaymentMethodId {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let v = raw.trim();
        if contains_card_number(v) {
            return Err(raw_card("payment_method"));
        }
        if v.is_empty() {
            return Err(Invalid::new(
                "payment_method",
                "MISSING_PAYMENT_METHOD",
                "payment_method is required: a Stripe PaymentMethod id (pm_...)",
            ));
        }
        let ok = v.starts_with("pm_")
            && v.len() <= 255
            && v[3..].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && v.len() > 3;
        if !ok {
            return Err(Invalid::new(
                "payment_method",
                "INVALID_PAYMENT_METHOD",
                "payment_method must be a Stripe PaymentMethod id (pm_...), e.g. made by Stripe.js",
            ));
        }
        Ok(Self(v.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keys the service itself sets on Stripe objects.
pub const RESERVED_METADATA: &[&str] = &["paymentID", "customerID", "refundID", "productID", "priceID"];

/// Metadata within Stripe's limits (50 keys, keys up to 40 characters, values
/// up to 500), leaving room for our own keys, which clients cannot set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(HashMap<String, String>);

impl Metadata {
    pub fn parse(raw: HashMap<String, String>) -> Result<Self, Invalid> {
        let invalid = |m: String| Invalid::new("metadata", "INVALID_METADATA", m);
        if raw.len() > 50 - RESERVED_METADATA.len() {
            return Err(invalid(format!("metadata may have at most {} keys", 50 - RESERVED_METADATA.len())));
        }
        for (k, v) in &raw {
            if k.is_empty() || k.chars().count() > 40 || k.contains(['[', ']']) {
                return Err(invalid(format!("metadata key {k:?} must have 1 to 40 characters and no brackets")));
            }
            if RESERVED_METADATA.contains(&k.as_str()) {
                return Err(invalid(format!("metadata key {k:?} is set by the service")));
            }
            if v.chars().count() > 500 {
                return Err(invalid(format!("metadata value of {k:?} is longer than 500 characters")));
            }
            if contains_card_number(v) {
                return Err(raw_card("metadata"));
            }
        }
        Ok(Self(raw))
    }

    pub fn entries(&self) -> &HashMap<String, String> {
        &self.0
    }
}

/// Free text up to `max` characters, with no card number in it.
pub fn text(field: &'static str, raw: &str, max: usize) -> Result<Option<String>, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.chars().count() > max {
        return Err(Invalid::new(field, "TEXT_TOO_LONG", format!("{field} is longer than {max} characters")));
    }
    if contains_card_number(v) {
        return Err(raw_card(field));
    }
    Ok(Some(v.to_string()))
}

/// An absolute http(s) URL, for `return_url`.
pub fn url(field: &'static str, raw: &str) -> Result<Option<String>, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let ok = (v.starts_with("https://") || v.starts_with("http://"))
        && v.chars().count() <= 2048
        && !v.contains(char::is_whitespace);
    if !ok {
        return Err(Invalid::new(field, "INVALID_URL", format!("{field} must be an absolute http(s) URL")));
    }
    Ok(Some(v.to_string()))
}

/// One of `allowed`, or nothing.
pub fn choice(field: &'static str, raw: &str, allowed: &[&'static str]) -> Result<Option<&'static str>, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    allowed
        .iter()
        .find(|a| **a == v)
        .copied()
        .map(Some)
        .ok_or_else(|| Invalid::new(field, "INVALID_REASON", format!("{field} must be one of: {}", allowed.join(", "))))
}

pub const CANCELLATION_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer", "abandoned"];
pub const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_recognised_however_they_are_written() {
        for n in ["4242424242424242", "4242 4242 4242 4242", "4000-0027-6000-3184", "my card 5555555555554444 thanks"] {
            assert!(contains_card_number(n), "{n}");
        }
        for n in ["4242424242424241", "order 12345", "pm_card_visa", "2026-11-26 10:00"] {
            assert!(!contains_card_number(n), "{n}");
        }
    }

    #[test]
    fn a_raw_card_number_as_payment_method_is_refused_with_advice() {
        let e = PaymentMethodId::parse("4242 4242 4242 4242").unwrap_err();
        assert_eq!(e.reason, "RAW_CARD_NUMBER");
        assert!(e.message.contains("Stripe.js"));
        assert_eq!(PaymentMethodId::parse("card_123").unwrap_err().reason, "INVALID_PAYMENT_METHOD");
        assert!(PaymentMethodId::parse("pm_card_visa").is_ok());
    }

    #[test]
    fn metadata_follows_stripes_limits_and_keeps_our_keys() {
        let m = |k: &str, v: &str| Metadata::parse(HashMap::from([(k.to_string(), v.to_string())]));
        assert!(m("order", "42").is_ok());
        assert_eq!(m(&"k".repeat(41), "v").unwrap_err().reason, "INVALID_METADATA");
        assert_eq!(m("paymentID", "1").unwrap_err().reason, "INVALID_METADATA");
        assert_eq!(m("note", &"v".repeat(501)).unwrap_err().reason, "INVALID_METADATA");
        assert_eq!(m("card", "4242424242424242").unwrap_err().reason, "RAW_CARD_NUMBER");
    }
}
