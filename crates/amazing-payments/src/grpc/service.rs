//! The gRPC door: each rpc authenticates, parses its request, calls one use
//! case and converts the answer. No logic lives here. Mutating rpcs honour a
//! client idempotency key ([`idempotency::once`]). The REST gateway calls
//! these same methods in process.

use super::{
    convert::{self, id},
    idempotency,
};
use crate::{
    app::{
        App, AppError, Principal,
        answer::Answered,
        endpoints::{EndpointChanges, NewEndpoint},
        payments::ListPayments,
        products::CreateProduct,
    },
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

    pub fn app(&self) -> &App {
        &self.app
    }

    /// The caller: as the door already authenticated it (the REST gateway,
    /// or [`crate::contract::Checked`], for the rpc's scope), else from the
    /// `authorization` metadata, for a call that would need every scope.
    fn principal<T>(&self, request: &Request<T>) -> impl Future<Output = Result<Principal, Status>> + Send + '_ {
        self.principal_for(request, "")
    }

    fn principal_for<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
    ) -> impl Future<Output = Result<Principal, Status>> + Send + '_ {
        // Read before the future: it must not hold the request, which is not `Sync`.
        let known = request.extensions().get::<Principal>().cloned();
        let value = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        async move {
            match known {
                Some(p) => Ok(p),
                None => Ok(self.app.authenticate(value.as_deref(), rpc).await?),
            }
        }
    }
}

impl crate::contract::Authenticate for PaymentApi {
    async fn authenticate<T: Send>(
        &self,
        request: &mut Request<T>,
        rpc: &'static str,
    ) -> Result<Option<crate::app::ratelimit::Quota>, Status> {
        let principal = self.principal_for(request, rpc).await?;
        let quota = principal.quota;
        request.extensions_mut().insert(principal);
        Ok(quota)
    }
}

fn parse<T, U: TryFrom<T, Error = AppError>>(message: T) -> Result<U, AppError> {
    U::try_from(message)
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_customer(
        &self,
        request: Request<proto::CreateCustomerRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "CreateCustomer", request, idempotency::after, |r, call| async move {
            Ok(app.create_customer(parse(r)?, &call).await?.into())
        })
        .await
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
        let replica = self.app.reads.as_ref().map(|r| {
            let status = r.status();
            proto::ReplicaHealth {
                state: status.state.as_str().into(),
                lag_seconds: status.lag.map(|l| l.as_secs_f64()),
            }
        });
        Ok(Response::new(proto::HealthCheckResponse { is_healthy: true, replica }))
    }

    async fn update_customer(
        &self,
        request: Request<proto::UpdateCustomerRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "UpdateCustomer", request, idempotency::after, |r, call| async move {
            Ok(app.update_customer(parse(r)?, &call).await?.into())
        })
        .await
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

    async fn create_product(
        &self,
        request: Request<proto::CreateProductRequest>,
    ) -> Result<Response<proto::Product>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "CreateProduct", request, idempotency::after, |r, call| async move {
            let cmd = CreateProduct::parse(&r.name, &r.description, convert::price_money(r.unit_amount, &r.currency)?)?;
            let (product, prices) = app.create_product(cmd, &call).await?;
            Ok(convert::product(product, prices))
        })
        .await
    }

    async fn get_product(
        &self,
        request: Request<proto::GetProductRequest>,
    ) -> Result<Response<proto::Product>, Status> {
        self.principal(&request).await?;
        let (product, prices) = self.app.get_product(id("productID", request.get_ref().product_id)?).await?;
        Ok(Response::new(convert::product(product, prices)))
    }

    async fn list_products(
        &self,
        request: Request<proto::ListProductsRequest>,
    ) -> Result<Response<proto::ListProductsResponse>, Status> {
        self.principal(&request).await?;
        let r = request.into_inner();
        let (rows, next) = self.app.list_products(r.page_size, &r.page_token, r.active_only).await?;
        Ok(Response::new(proto::ListProductsResponse {
            products: rows.into_iter().map(|(p, prices)| convert::product(p, prices)).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn add_price(&self, request: Request<proto::AddPriceRequest>) -> Result<Response<proto::Price>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "AddPrice", request, idempotency::after, |r, call| async move {
            let product = id("productID", r.product_id)?;
            Ok(convert::price(app.add_price(product, convert::price_money(r.unit_amount, &r.currency)?, &call).await?))
        })
        .await
    }

    async fn deactivate_product(
        &self,
        request: Request<proto::DeactivateProductRequest>,
    ) -> Result<Response<proto::Product>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "DeactivateProduct", request, idempotency::after, |r, call| async move {
            let (product, prices) = app.deactivate_product(id("productID", r.product_id)?, &call).await?;
            Ok(convert::product(product, prices))
        })
        .await
    }

    async fn deactivate_price(
        &self,
        request: Request<proto::DeactivatePriceRequest>,
    ) -> Result<Response<proto::Price>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "DeactivatePrice", request, idempotency::after, |r, call| async move {
            Ok(convert::price(app.deactivate_price(id("priceID", r.price_id)?, &call).await?))
        })
        .await
    }

    async fn create_payment(
        &self,
        request: Request<proto::CreatePaymentRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "CreatePayment", request, payment_answer, |r, call| async move {
            let payment = app.create_payment(parse(r)?, &call).await?;
            Ok(convert::payment(payment, Vec::new()))
        })
        .await
    }

    async fn get_payment(
        &self,
        request: Request<proto::GetPaymentRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        self.principal(&request).await?;
        let r = request.into_inner();
        let payment = self.app.get_payment(id("paymentID", r.payment_id)?).await?;
        let history = if r.include_history { self.app.history(payment.id).await? } else { Vec::new() };
        Ok(Response::new(convert::payment(payment, history)))
    }

    async fn list_payments(
        &self,
        request: Request<proto::ListPaymentsRequest>,
    ) -> Result<Response<proto::ListPaymentsResponse>, Status> {
        self.principal(&request).await?;
        let r = request.into_inner();
        let customer =
            if r.customer_id == 0 { None } else { Some(CustomerId::parse(r.customer_id).map_err(AppError::from)?) };
        let q = ListPayments::parse(customer, &r.status, r.page_size, &r.page_token)?;
        let (rows, next) = self.app.list_payments(q).await?;
        Ok(Response::new(proto::ListPaymentsResponse {
            payments: rows.into_iter().map(|p| convert::payment(p, Vec::new())).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn capture_payment(
        &self,
        request: Request<proto::CapturePaymentRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "CapturePayment", request, payment_answer, |r, call| async move {
            let payment =
                app.capture_payment(id("paymentID", r.payment_id)?, convert::capture_amount(r.amount)?, &call).await?;
            Ok(convert::payment(payment, Vec::new()))
        })
        .await
    }

    async fn cancel_payment(
        &self,
        request: Request<proto::CancelPaymentRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "CancelPayment", request, payment_answer, |r, call| async move {
            let reason = convert::cancellation_reason(&r.reason)?;
            let payment = app.cancel_payment(id("paymentID", r.payment_id)?, reason, &call).await?;
            Ok(convert::payment(payment, Vec::new()))
        })
        .await
    }

    async fn refund_payment(
        &self,
        request: Request<proto::RefundPaymentRequest>,
    ) -> Result<Response<proto::Refund>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once(app, &who, "RefundPayment", request, refund_answer, |r, call| async move {
            let payment = id("paymentID", r.payment_id)?;
            let (refund, currency) = app
                .refund_payment(payment, convert::capture_amount(r.amount)?, convert::refund_reason(&r.reason)?, &call)
                .await?;
            Ok(convert::refund(refund, &currency))
        })
        .await
    }

    async fn get_refund(&self, request: Request<proto::GetRefundRequest>) -> Result<Response<proto::Refund>, Status> {
        self.principal(&request).await?;
        let (refund, currency) = self.app.get_refund(id("refundID", request.get_ref().refund_id)?).await?;
        Ok(Response::new(convert::refund(refund, &currency)))
    }

    async fn list_refunds(
        &self,
        request: Request<proto::ListRefundsRequest>,
    ) -> Result<Response<proto::ListRefundsResponse>, Status> {
        self.principal(&request).await?;
        let (refunds, currency) = self.app.list_refunds(id("paymentID", request.get_ref().payment_id)?).await?;
        Ok(Response::new(proto::ListRefundsResponse {
            refunds: refunds.into_iter().map(|r| convert::refund(r, &currency)).collect(),
        }))
    }

    async fn setup_payment_method(
        &self,
        request: Request<proto::SetupPaymentMethodRequest>,
    ) -> Result<Response<proto::SetupIntent>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "SetupPaymentMethod", request, |r, call| async move {
            let customer_id = r.customer_id;
            let si = app.setup_payment_method(parse(r)?, &call).await?;
            Ok(convert::setup_intent(si, customer_id))
        })
        .await
    }

    async fn list_payment_methods(
        &self,
        request: Request<proto::ListPaymentMethodsRequest>,
    ) -> Result<Response<proto::ListPaymentMethodsResponse>, Status> {
        self.principal(&request).await?;
        let id = CustomerId::parse(request.get_ref().customer_id).map_err(AppError::from)?;
        let methods = self.app.list_payment_methods(id).await?;
        Ok(Response::new(proto::ListPaymentMethodsResponse {
            payment_methods: methods.into_iter().map(convert::payment_method).collect(),
        }))
    }

    async fn detach_payment_method(
        &self,
        request: Request<proto::DetachPaymentMethodRequest>,
    ) -> Result<Response<proto::PaymentMethod>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "DetachPaymentMethod", request, |r, call| async move {
            let id = CustomerId::parse(r.customer_id)?;
            let pm = crate::domain::request::PaymentMethodId::parse(&r.payment_method)?;
            Ok(convert::payment_method(app.detach_payment_method(id, pm, &call).await?))
        })
        .await
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<proto::CreateWebhookEndpointRequest>,
    ) -> Result<Response<proto::WebhookEndpoint>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "CreateWebhookEndpoint", request, |r, call| async move {
            let new = NewEndpoint { url: r.url, description: r.description, event_types: r.event_types };
            Ok(convert::endpoint(app.create_endpoint(new, call.by).await?, true))
        })
        .await
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<proto::ListWebhookEndpointsRequest>,
    ) -> Result<Response<proto::ListWebhookEndpointsResponse>, Status> {
        self.principal(&request).await?;
        let rows = self.app.list_endpoints().await?;
        Ok(Response::new(proto::ListWebhookEndpointsResponse {
            endpoints: rows.into_iter().map(|r| convert::endpoint(r, false)).collect(),
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<proto::GetWebhookEndpointRequest>,
    ) -> Result<Response<proto::WebhookEndpoint>, Status> {
        self.principal(&request).await?;
        let row = self.app.get_endpoint(id("endpointID", request.get_ref().endpoint_id)?).await?;
        Ok(Response::new(convert::endpoint(row, false)))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<proto::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<proto::WebhookEndpoint>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "UpdateWebhookEndpoint", request, |r, _| async move {
            let changes = EndpointChanges {
                url: Some(r.url),
                description: Some(r.description),
                event_types: Some(r.event_types),
                disabled: r.disabled,
            };
            Ok(convert::endpoint(app.update_endpoint(id("endpointID", r.endpoint_id)?, changes).await?, false))
        })
        .await
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<proto::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<proto::DeleteWebhookEndpointResponse>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "DeleteWebhookEndpoint", request, |r, _| async move {
            app.delete_endpoint(id("endpointID", r.endpoint_id)?).await?;
            Ok(proto::DeleteWebhookEndpointResponse { deleted: true })
        })
        .await
    }

    async fn roll_webhook_endpoint_secret(
        &self,
        request: Request<proto::RollWebhookEndpointSecretRequest>,
    ) -> Result<Response<proto::WebhookEndpoint>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "RollWebhookEndpointSecret", request, |r, _| async move {
            let overlap = std::time::Duration::from_secs(u64::try_from(r.overlap_seconds).unwrap_or(0));
            let row =
                app.roll_endpoint_secret(id("endpointID", r.endpoint_id)?, overlap, r.expire_previous_now).await?;
            Ok(convert::endpoint(row, true))
        })
        .await
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<proto::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<proto::ListWebhookDeliveriesResponse>, Status> {
        self.principal(&request).await?;
        let r = request.into_inner();
        let (rows, next) =
            self.app.list_deliveries(id("endpointID", r.endpoint_id)?, r.page_size, &r.page_token).await?;
        Ok(Response::new(proto::ListWebhookDeliveriesResponse {
            deliveries: rows.into_iter().map(convert::delivery).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn redeliver_webhook(
        &self,
        request: Request<proto::RedeliverWebhookRequest>,
    ) -> Result<Response<proto::WebhookDelivery>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "RedeliverWebhook", request, |r, _| async move {
            let d = app.redeliver(id("endpointID", r.endpoint_id)?, id("deliveryID", r.delivery_id)?).await?;
            Ok(convert::delivery(d))
        })
        .await
    }

    async fn list_disputes(
        &self,
        request: Request<proto::ListDisputesRequest>,
    ) -> Result<Response<proto::ListDisputesResponse>, Status> {
        self.principal(&request).await?;
        let r = request.into_inner();
        let payment = (r.payment_id != 0).then_some(r.payment_id);
        let (rows, next) = self.app.list_disputes(payment, r.page_size, &r.page_token).await?;
        Ok(Response::new(proto::ListDisputesResponse {
            disputes: rows.into_iter().map(convert::dispute).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_dispute(
        &self,
        request: Request<proto::GetDisputeRequest>,
    ) -> Result<Response<proto::Dispute>, Status> {
        self.principal(&request).await?;
        let row = self.app.get_dispute(id("disputeID", request.get_ref().dispute_id)?).await?;
        Ok(Response::new(convert::dispute(row)))
    }

    async fn submit_dispute_evidence(
        &self,
        request: Request<proto::SubmitDisputeEvidenceRequest>,
    ) -> Result<Response<proto::Dispute>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "SubmitDisputeEvidence", request, |r, call| async move {
            let evidence = r.evidence.into_iter().collect();
            let row = app
                .submit_dispute_evidence(id("disputeID", r.dispute_id)?, evidence, r.submit.unwrap_or(true), &call)
                .await?;
            Ok(convert::dispute(row))
        })
        .await
    }

    async fn accept_dispute(
        &self,
        request: Request<proto::AcceptDisputeRequest>,
    ) -> Result<Response<proto::Dispute>, Status> {
        let who = self.principal(&request).await?;
        let app = &self.app;
        idempotency::once_claimed(app, &who, "AcceptDispute", request, |r, call| async move {
            Ok(convert::dispute(app.accept_dispute(id("disputeID", r.dispute_id)?, &call).await?))
        })
        .await
    }
}

/// The answer of an rpc that answers the payment its operation left: the
/// payment, without history.
fn payment_answer(result: &Answered) -> Option<proto::Payment> {
    match result {
        Answered::Payment(p) => Some(convert::payment((**p).clone(), Vec::new())),
        Answered::Refund { .. } => None,
    }
}

/// The answer of a refund: the refund its operation left.
fn refund_answer(result: &Answered) -> Option<proto::Refund> {
    match result {
        Answered::Refund { refund, currency } => Some(convert::refund(refund.clone(), currency)),
        Answered::Payment(_) => None,
    }
}
