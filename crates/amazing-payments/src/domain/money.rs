//! Money: an amount in a currency's smallest unit, never a float.
//!
//! The rules are Stripe's: currencies are ISO 4217 codes (lowercase on the
//! wire) from the set Stripe charges in; zero-decimal currencies count whole
//! units, three-decimal ones (BHD, JOD, KWD, OMR, TND) must end in 0; a charge
//! is at least the currency's minimum and has at most 8 digits.

use super::Invalid;
use std::fmt;

use super::currencies::{CURRENCIES, MINIMUMS, THREE_DECIMAL, ZERO_DECIMAL};

pub use super::currencies::MAX_AMOUNT;

/// An ISO 4217 currency that Stripe charges in, held lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(&'static str);

impl Currency {
    /// Parses a code in any case: `"USD"`, `"usd"`.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let code = raw.trim().to_ascii_lowercase();
        if code.is_empty() {
            return Err(Invalid::new(
                "currency",
                "MISSING_CURRENCY",
                "currency is required (an ISO 4217 code such as usd)",
            ));
        }
        CURRENCIES.iter().find(|c| **c == code).map(|c| Currency(c)).ok_or_else(|| {
            Invalid::new(
                "currency",
                "INVALID_CURRENCY",
                format!("{raw:?} is not a currency Stripe charges in (ISO 4217, such as usd)"),
            )
        })
    }

    /// The lowercase code, as Stripe wants it.
    pub fn code(self) -> &'static str {
        self.0
    }

    /// Digits after the decimal point: 0, 2 or 3.
    pub fn exponent(self) -> u32 {
        if ZERO_DECIMAL.contains(&self.0) {
            0
        } else if THREE_DECIMAL.contains(&self.0) {
            3
        } else {
            2
        }
    }

    /// The smallest amount Stripe charges in this currency.
    pub fn minimum_charge(self) -> i64 {
        MINIMUMS.iter().find(|(c, _)| *c == self.0).map(|(_, m)| *m).unwrap_or(1)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A positive amount in a currency's smallest unit, valid as a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: i64,
    currency: Currency,
}

impl Money {
    /// A chargeable amount: at least the currency's minimum, at most 8 digits,
    /// a multiple of 10 in three-decimal currencies.
    pub fn charge(amount: i64, currency: Currency) -> Result<Self, Invalid> {
        Self::check_shape(amount, currency)?;
        let min = currency.minimum_charge();
        if amount < min {
            return Err(Invalid::new(
                "amount",
                "AMOUNT_TOO_SMALL",
                format!("the smallest {} charge is {min} (in the currency's smallest unit)", currency.code()),
            ));
        }
        Ok(Self { amount, currency })
    }

    /// A part of a charge (a capture, a refund): positive, of the right shape,
    /// but with no minimum.
    pub fn part(amount: i64, currency: Currency) -> Result<Self, Invalid> {
        Self::check_shape(amount, currency)?;
        Ok(Self { amount, currency })
    }

    fn check_shape(amount: i64, currency: Currency) -> Result<(), Invalid> {
        if amount <= 0 {
            return Err(Invalid::new(
                "amount",
                "INVALID_AMOUNT",
                "amount must be a positive integer in the currency's smallest unit",
            ));
        }
        if amount > MAX_AMOUNT {
            return Err(Invalid::new("amount", "AMOUNT_TOO_LARGE", format!("amount must be at most {MAX_AMOUNT}")));
        }
        if currency.exponent() == 3 && amount % 10 != 0 {
            return Err(Invalid::new(
                "amount",
                "INVALID_AMOUNT",
                format!("{} amounts must end in 0 (Stripe charges whole hundredths)", currency.code()),
            ));
        }
        Ok(())
    }

    pub fn amount(self) -> i64 {
        self.amount
    }

    pub fn currency(self) -> Currency {
        self.currency
    }
}

/// An amount in minor units, written in major units with the currency's
/// decimals: `format_amount(1234, usd) == "12.34 USD"`.
pub fn format_amount(amount: i64, currency: Currency) -> String {
    let exp = currency.exponent();
    let code = currency.code().to_ascii_uppercase();
    if exp == 0 {
        return format!("{amount} {code}");
    }
    let unit = 10_i64.pow(exp);
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.abs();
    format!("{sign}{}.{:0width$} {code}", a / unit, a % unit, width = exp as usize)
}

/// An amount for people: like [`format_amount`], with thousands grouped:
/// `display_amount(123456, usd) == "1,234.56 USD"`, `(150000, jpy)` gives
/// `"150,000 JPY"`.
pub fn display_amount(amount: i64, currency: Currency) -> String {
    let plain = format_amount(amount, currency);
    let (number, code) = plain.split_once(' ').unwrap_or((&plain, ""));
    let (sign, number) = number.strip_prefix('-').map(|n| ("-", n)).unwrap_or(("", number));
    let (whole, frac) = number.split_once('.').map(|(w, f)| (w, Some(f))).unwrap_or((number, None));
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f} {code}"),
        None => format!("{sign}{grouped} {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cur(c: &str) -> Currency {
        Currency::parse(c).unwrap()
    }

    #[test]
    fn currencies_are_held_lowercase_and_unknown_codes_are_refused() {
        assert_eq!(cur("USD").code(), "usd");
        assert_eq!(Currency::parse("XYZ").unwrap_err().reason, "INVALID_CURRENCY");
        assert_eq!(Currency::parse("").unwrap_err().reason, "MISSING_CURRENCY");
    }

    #[test]
    fn amounts_for_people_group_thousands_and_keep_the_currencys_decimals() {
        assert_eq!(display_amount(123456, cur("usd")), "1,234.56 USD");
        assert_eq!(display_amount(150000, cur("jpy")), "150,000 JPY");
        assert_eq!(display_amount(999, cur("jpy")), "999 JPY");
        assert_eq!(display_amount(5, cur("eur")), "0.05 EUR");
        assert_eq!(display_amount(1234567890, cur("kwd")), "1,234,567.890 KWD");
        assert_eq!(display_amount(-100000, cur("usd")), "-1,000.00 USD");
    }

    #[test]
    fn exponents_follow_stripes_lists() {
        assert_eq!((cur("jpy").exponent(), cur("usd").exponent(), cur("kwd").exponent()), (0, 2, 3));
    }

    #[test]
    fn minimums_are_stripes() {
        assert_eq!(Money::charge(49, cur("usd")).unwrap_err().reason, "AMOUNT_TOO_SMALL");
        assert!(Money::charge(50, cur("usd")).is_ok());
        assert!(Money::charge(30, cur("gbp")).is_ok());
        assert_eq!(Money::charge(49, cur("jpy")).unwrap_err().reason, "AMOUNT_TOO_SMALL");
        assert!(Money::part(1, cur("usd")).is_ok(), "a partial capture or refund has no minimum");
    }

    #[test]
    fn amounts_are_written_with_the_currencys_decimals() {
        assert_eq!(format_amount(1234, cur("usd")), "12.34 USD");
        assert_eq!(format_amount(5, cur("eur")), "0.05 EUR");
        assert_eq!(format_amount(5000, cur("jpy")), "5000 JPY");
        assert_eq!(format_amount(1230, cur("kwd")), "1.230 KWD");
    }

    fn any_currency() -> impl Strategy<Value = Currency> {
        proptest::sample::select(CURRENCIES).prop_map(|c| Currency::parse(c).unwrap())
    }

    proptest! {
        #[test]
        fn any_case_of_a_supported_code_parses_to_the_same_currency(c in any_currency(), upper in any::<bool>()) {
            let raw = if upper { c.code().to_uppercase() } else { c.code().to_string() };
            prop_assert_eq!(Currency::parse(&raw).unwrap(), c);
        }

        #[test]
        fn non_positive_and_oversized_amounts_are_always_refused(c in any_currency(), a in prop_oneof![i64::MIN..=0, (MAX_AMOUNT + 1)..=i64::MAX]) {
            prop_assert!(Money::charge(a, c).is_err());
            prop_assert!(Money::part(a, c).is_err());
        }

        #[test]
        fn a_charge_is_accepted_exactly_when_it_meets_every_rule(c in any_currency(), a in 1..=MAX_AMOUNT) {
            let expected = a >= c.minimum_charge() && (c.exponent() != 3 || a % 10 == 0);
            prop_assert_eq!(Money::charge(a, c).is_ok(), expected);
        }

        #[test]
        fn three_decimal_amounts_must_end_in_zero(c in proptest::sample::select(THREE_DECIMAL), a in 1..=MAX_AMOUNT) {
            let c = Currency::parse(c).unwrap();
            prop_assert_eq!(Money::part(a, c).is_ok(), a % 10 == 0);
        }

        #[test]
        fn formatting_keeps_every_minor_unit(c in any_currency(), a in 0..=MAX_AMOUNT) {
            let text = format_amount(a, c);
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            prop_assert_eq!(digits.parse::<i64>().unwrap(), a);
            prop_assert_eq!(text.contains('.'), c.exponent() > 0);
        }
    }
}
