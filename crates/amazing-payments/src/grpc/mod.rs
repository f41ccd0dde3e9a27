//! The gRPC transport: `payment.PaymentService`, the standard gRPC health
//! service (kept in step with the database by a background task) and server
//! reflection, so generic clients such as grpcurl need no .proto files.

pub mod codec;
pub mod convert;
pub mod idempotency;
pub mod service;

use crate::{app::App, proto};
use std::time::Duration;
use tonic::service::Routes;

/// The gRPC services, ready to serve.
pub fn routes(app: &App) -> anyhow::Result<Routes> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(watch_health(app.clone(), reporter));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // The contract's rules first (`crate::contract`), then the service.
    let api = proto::payment_service_server::PaymentServiceServer::new(crate::contract::Checked(
        service::PaymentApi::new(app.clone()),
    ));
    Ok(Routes::new(api).add_service(health).add_service(reflection).add_service(reflection_alpha))
}

/// Reports SERVING while the database answers, NOT_SERVING while it does not.
async fn watch_health(app: App, reporter: tonic_health::server::HealthReporter) {
    const SERVICE: &str = "payment.PaymentService";
    loop {
        let status = if app.health().await.is_ok() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status(SERVICE, status).await;
        reporter.set_service_status("", status).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
