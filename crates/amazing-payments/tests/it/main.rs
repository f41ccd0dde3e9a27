//! The integration tests, linked as one binary (one link instead of one per
//! file: the build's largest cost). Each module is a file of tests; `common`
//! is their harness.

mod apikeys;
mod caller_webhooks;
mod common;
mod conformance;
mod connections;
mod customers;
mod deadlines;
mod disputes;
mod e2e;
mod exactly_once;
mod metrics;
mod notifications;
mod partial_failure;
mod payments;
mod platform;
mod proofs;
mod ratelimit;
mod replica;
mod saved_cards;
mod scaleout;
mod stripe_client;
mod traces;
mod webhooks;
