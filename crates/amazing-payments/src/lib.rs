//! amazing-payments: a payment service in front of Stripe, over gRPC and
//! REST/JSON from one proto contract, on PostgreSQL.
//!
//! # Layout
//! Requests come in by one of two thin doors and end in one use-case layer:
//!
//! - [`grpc`]: the gRPC door (`payment.PaymentService`, health, reflection).
//! - [`http`]: the REST door, generated from the proto's `google.api.http`
//!   annotations; it calls the gRPC implementation in process. Also the
//!   OpenAPI document and Swagger UI.
//! - [`app`]: the use cases and the one error type, [`app::AppError`].
//! - [`domain`]: checked values (parse, don't validate); no I/O.
//! - [`store`]: SQL, one module per table; migrations in `migrations/`.
//! - [`stripe`]: the Stripe client.
//! - [`workers`]: the reconciler and the webhook worker.
//! - [`notify`]: the outbox relay, the queues (built-in, SQS) and the e-mail
//!   notifier.
//! - [`config`], [`cli`], [`server`], [`telemetry`], [`secret`].
//!
//! The proto files in `proto/` are the single source of the API: `build.rs`
//! generates the gRPC code, the JSON mapping, the REST routes and the OpenAPI
//! document from them.

pub mod app;
pub mod cli;
pub mod config;
pub mod contract;
pub mod domain;
pub mod grpc;
pub mod hooks;
pub mod http;
pub mod meter;
pub mod notify;
pub mod secret;
pub mod server;
pub mod store;
pub mod stripe;
pub mod telemetry;
pub mod timing;
pub mod workers;

/// The generated API types (package `payment`), their proto3 JSON mapping,
/// and the encoded descriptors (for server reflection).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("payment");
    include!(concat!(env!("OUT_DIR"), "/payment.serde.rs"));

    /// The encoded `FileDescriptorSet` of `proto/`, imports included.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payment_descriptor.bin"));
}
