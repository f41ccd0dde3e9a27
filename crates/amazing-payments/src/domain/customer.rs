//! Customer values: id, name, e-mail address, the free-text charge date.

use super::Invalid;
use std::fmt;

/// Longest customer name we keep (Stripe's limit is 256).
pub const MAX_NAME: usize = 256;
/// Longest e-mail address (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;
/// Longest `stripe_charge_date`.
pub const MAX_CHARGE_DATE: usize = 64;

/// A customer id: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomerId(i64);

impl CustomerId {
    pub fn parse(raw: i64) -> Result<Self, Invalid> {
        if raw > 0 {
            Ok(Self(raw))
        } else {
            Err(Invalid::new("customerID", "INVALID_CUSTOMER_ID", "customerID must be a positive integer"))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A customer's name: not blank, at most [`MAX_NAME`] characters, no control
/// characters; surrounding white space is trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerName(String);

impl CustomerName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(Invalid::new("name", "MISSING_NAME", "must provide email and name: name is empty"));
        }
        if name.chars().count() > MAX_NAME {
            return Err(Invalid::new("name", "NAME_TOO_LONG", format!("name is longer than {MAX_NAME} characters")));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid::new("name", "INVALID_NAME", "name contains control characters"));
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An e-mail address of the form `local@domain.tld`, at most [`MAX_EMAIL`]
/// characters. Its `Debug` form is masked (`j***@example.com`) so that an
/// address cannot reach a log in full.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = raw.trim();
        if email.is_empty() {
            return Err(Invalid::new("email", "MISSING_EMAIL", "must provide email and name: email is empty"));
        }
        if email.chars().count() > MAX_EMAIL {
            return Err(Invalid::new(
                "email",
                "EMAIL_TOO_LONG",
                format!("email is longer than {MAX_EMAIL} characters"),
            ));
        }
        // The form (dot-atoms, labels, Unicode allowed) is the contract's rule
        // (`proto/payment/payment.proto`), checked before any use case; here
        // only what every address has, so that the two cannot disagree.
        let ok = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !email.contains(char::is_whitespace)
        });
        if !ok {
            return Err(Invalid::new("email", "INVALID_EMAIL", "email is not a valid e-mail address"));
        }
        Ok(Self(email.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `j***@example.com`: enough to recognise, not enough to use.
    pub fn masked(&self) -> String {
        mask_email(&self.0)
    }
}

/// Masks any e-mail-like string for logs.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

/// The earlier service's free-text `stripe_charge_date`, at most
/// [`MAX_CHARGE_DATE`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeDate(String);

impl ChargeDate {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let v = raw.trim();
        if v.chars().count() > MAX_CHARGE_DATE {
            return Err(Invalid::new(
                "stripe_charge_date",
                "CHARGE_DATE_TOO_LONG",
                format!("stripe_charge_date is longer than {MAX_CHARGE_DATE} characters"),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(Invalid::new(
                "stripe_charge_date",
                "INVALID_CHARGE_DATE",
                "stripe_charge_date contains control characters",
            ));
        }
        Ok(Self(v.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_parse() {
        for ok in ["a@b.co", "first.last+tag@mail.example.com", "o'neil@example.ie", "x@xn--bcher-kva.example"] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        // The finer form is the contract's (`contract::tests`).
        for bad in ["plainaddress", "@example.com", "a@", "a b@c.com", "a@b@c.com"] {
            assert_eq!(Email::parse(bad).unwrap_err().reason, "INVALID_EMAIL", "{bad}");
        }
        assert_eq!(Email::parse("  ").unwrap_err().reason, "MISSING_EMAIL");
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long).unwrap_err().reason, "EMAIL_TOO_LONG");
    }

    #[test]
    fn an_email_is_masked_when_debug_printed() {
        let e = Email::parse("jane.doe@example.com").unwrap();
        assert_eq!(format!("{e:?}"), "Email(j***@example.com)");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(CustomerName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert_eq!(CustomerName::parse("").unwrap_err().reason, "MISSING_NAME");
        assert_eq!(CustomerName::parse(&"x".repeat(257)).unwrap_err().reason, "NAME_TOO_LONG");
        assert!(CustomerName::parse(&"é".repeat(256)).is_ok());
    }

    #[test]
    fn customer_ids_must_be_positive() {
        assert!(CustomerId::parse(1).is_ok());
        assert_eq!(CustomerId::parse(0).unwrap_err().reason, "INVALID_CUSTOMER_ID");
        assert_eq!(CustomerId::parse(-4).unwrap_err().reason, "INVALID_CUSTOMER_ID");
    }
}
