//! Compiles `proto/` (pure Rust, no `protoc`) and generates, from the same
//! descriptors:
//! - the gRPC server and client (tonic) and the message types (prost);
//! - proto3 JSON for every message (pbjson), with proto field names as keys;
//! - the REST route table and its dispatcher, from the `google.api.http`
//!   annotations (`build/routes.rs`);
//! - the checks of the contract's rules (`rules.field` options) and the
//!   OpenAPI document that states them (`build/rules.rs`, `build/openapi.rs`).
//!
//! The `.proto` files are therefore the single source of the API: nothing in
//! `src/` lists routes or schemas by hand.

#[path = "src/domain/currencies.rs"]
#[allow(dead_code)]
mod currencies;
#[path = "build/openapi.rs"]
mod openapi;
#[path = "build/routes.rs"]
mod routes;
#[path = "build/rules.rs"]
mod rules;
#[path = "src/domain/scopes.rs"]
#[allow(dead_code)]
mod scopes;

use std::{env, fs, path::PathBuf};

const PROTO_ROOT: &str = "../../proto";
const PROTO_FILES: &[&str] = &["payment/payment.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=src/domain/currencies.rs");
    println!("cargo:rerun-if-changed=src/domain/scopes.rs");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTO_FILES)?;
    // `file_descriptor_set()` drops extension options such as google.api.http;
    // the encoded form keeps them, so everything below reads that form.
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out.join("payment_descriptor.bin"), &encoded)?;

    // Our codec: prost's, with undecodable messages the caller's mistake.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::grpc::codec::Codec")
        .compile_fds(compiler.file_descriptor_set())?;

    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        // Old clients may send fields this version does not know; grpc-gateway
        // ignored them too.
        .ignore_unknown_fields()
        .build(&[".payment"])?;

    let pool = prost_reflect::DescriptorPool::decode(encoded.as_slice())?;
    let service =
        pool.get_service_by_name("payment.PaymentService").ok_or("payment.PaymentService is missing from proto/")?;
    let bindings = routes::bindings(&pool, &service)?;
    fs::write(out.join("rest_routes.rs"), routes::render(&service, &bindings))?;
    fs::write(out.join("contract_rules.rs"), rules::render(&pool, &service)?)?;
    fs::write(out.join("openapi.json"), openapi::render(&pool, &service, &bindings)?)?;
    Ok(())
}
