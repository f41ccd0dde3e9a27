//! Background work that runs inside `serve` (and as its own command).

pub mod reconciler;
pub mod webhooks;
