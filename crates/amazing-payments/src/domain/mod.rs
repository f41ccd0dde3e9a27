//! Domain types: values parsed at the edge, so that the layers below never
//! see a raw `String` or `i64` where a checked value belongs. No I/O here.

pub mod currencies;
pub mod customer;
pub mod event;
pub mod money;
pub mod operation;
pub mod payment;
pub mod request;
pub mod scopes;

use std::fmt;

/// A request value that does not parse: which field, why (a stable
/// UPPER_SNAKE_CASE reason for programs) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self { field, reason, message: message.into() }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}
