//! Stripe's rules for currencies and amounts.

use crate::error::ApiError;

const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];
/// Minimum charge amounts in minor units; other currencies: 1 here.
const MINIMUMS: &[(&str, i64)] = &[
    ("usd", 50),
    ("aed", 200),
    ("aud", 50),
    ("bgn", 100),
    ("brl", 50),
    ("cad", 50),
    ("chf", 50),
    ("czk", 1500),
    ("dkk", 250),
    ("eur", 50),
    ("gbp", 30),
    ("hkd", 400),
    ("huf", 17500),
    ("inr", 50),
    ("jpy", 50),
    ("mxn", 1000),
    ("myr", 200),
    ("nok", 300),
    ("nzd", 50),
    ("pln", 200),
    ("ron", 200),
    ("sek", 300),
    ("sgd", 50),
    ("thb", 1000),
];

/// Checks `currency` (three lowercase letters).
pub fn currency(raw: &str) -> Result<String, ApiError> {
    let c = raw.to_ascii_lowercase();
    if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_lowercase()) {
        Ok(c)
    } else {
        Err(ApiError::invalid(
            "currency",
            format!("Invalid currency: {raw}. Stripe currently supports these currencies: usd, eur, gbp, jpy, ..."),
        ))
    }
}

/// Checks a charge amount: minimum, at most 8 digits, three-decimal rule.
pub fn charge_amount(amount: i64, currency: &str, param: &str) -> Result<(), ApiError> {
    let min = MINIMUMS.iter().find(|(c, _)| *c == currency).map(|(_, m)| *m).unwrap_or(1);
    if amount < min {
        return Err(ApiError::invalid(
            param,
            format!("Amount must be at least {min} {currency} (in the smallest currency unit)"),
        )
        .code("amount_too_small"));
    }
    if amount > 99_999_999 {
        return Err(ApiError::invalid(param, "Amount must be no more than 99999999 (in the smallest currency unit)")
            .code("amount_too_large"));
    }
    if THREE_DECIMAL.contains(&currency) && amount % 10 != 0 {
        return Err(ApiError::invalid(
            param,
            format!("Amounts in {currency} must be divisible by 10: the last digit is not charged"),
        )
        .code("invalid_amount"));
    }
    Ok(())
}

/// Whether amounts in `currency` are whole units.
pub fn is_zero_decimal(currency: &str) -> bool {
    ZERO_DECIMAL.contains(&currency)
}
