//! The gRPC door: each rpc authenticates, parses its request, calls one use
//! case and converts the answer. No logic lives here. The REST gateway calls
//! these same methods in process.

use crate::{
    app::{App, AppError, Principal},
    domain::customer::CustomerId,
    proto::{self, payment_service_server::PaymentService},
};
use tonic::{Request, Response, Status};

/// The `payment.PaymentService` implementation.
#[derive(Clone)]
pub struct PaymentApi {
    app: App,
}

impl PaymentApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }

    /// The caller, from the `authorization` metadata.
    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let value = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        Ok(self.app.authenticate(value).await?)
    }
}

fn parse<T, U: TryFrom<T, Error = AppError>>(message: T) -> Result<U, Status> {
    U::try_from(message).map_err(Status::from)
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_customer(
        &self,
        request: Request<proto::CreateCustomerRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        self.principal(&request).await?;
        let customer = self.app.create_customer(parse(request.into_inner())?).await?;
        Ok(Response::new(customer.into()))
    }

    async fn get_customer(
        &self,
        request: Request<proto::GetCustomerRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        self.principal(&request).await?;
        let id = CustomerId::parse(request.get_ref().customer_id).map_err(AppError::from)?;
        Ok(Response::new(self.app.get_customer(id).await?.into()))
    }

    async fn health_check(
        &self,
        _request: Request<proto::HealthCheckRequest>,
    ) -> Result<Response<proto::HealthCheckResponse>, Status> {
        self.app.health().await?;
        Ok(Response::new(proto::HealthCheckResponse { is_healthy: true }))
    }

    async fn update_customer(
        &self,
        request: Request<proto::UpdateCustomerRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        self.principal(&request).await?;
        let customer = self.app.update_customer(parse(request.into_inner())?).await?;
        Ok(Response::new(customer.into()))
    }

    async fn list_customers(
        &self,
        request: Request<proto::ListCustomersRequest>,
    ) -> Result<Response<proto::ListCustomersResponse>, Status> {
        self.principal(&request).await?;
        let (rows, next) = self.app.list_customers(parse(request.into_inner())?).await?;
        Ok(Response::new(proto::ListCustomersResponse {
            customers: rows.into_iter().map(Into::into).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
