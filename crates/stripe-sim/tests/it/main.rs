//! The simulator's tests, linked as one binary (one link instead of one per
//! file). Each module is a file of tests; `common` is their harness.

mod api;
mod common;
mod disputes;
mod faults;
mod payments;
mod refunds;
mod search;
mod setup_intents;
mod webhooks;
