//! Products and prices, created in Stripe and stored with the Stripe ids.
//! As with customers, each change is recorded as an operation first (ids
//! reserved, so Stripe's objects carry ours), sent under the operation's
//! idempotency key, and written with the operation closed in one
//! transaction: a Stripe refusal writes no product or price, and an unknown
//! outcome is finished by a retry with the same client key or the reconciler.

use super::{App, AppError, Call, Kind, page::Page};
use crate::{
    domain::{
        money::Money,
        operation::{Operation, State},
        request,
    },
    store::{
        payments::{self as ops, OperationRow},
        products::{self, NewPrice, PriceRow, ProductRow},
    },
    stripe::Form,
};

/// A new product and its first price, checked.
#[derive(Debug)]
pub struct CreateProduct {
    pub name: String,
    pub description: Option<String>,
    pub price: Money,
}

impl CreateProduct {
    pub fn parse(name: &str, description: &str, price: Money) -> Result<Self, AppError> {
        let name = request::text("name", name, 250)?
            .ok_or_else(|| AppError::invalid("MISSING_NAME", "a product needs a name").detail("field", "name"))?;
        Ok(Self { name, description: request::text("description", description, 1000)?, price })
    }
}

pub(crate) fn product_not_found(id: i64) -> AppError {
    AppError::not_found("PRODUCT_NOT_FOUND", format!("product {id} does not exist")).detail("productID", id.to_string())
}

pub(crate) fn price_not_found(id: i64) -> AppError {
    AppError::not_found("PRICE_NOT_FOUND", format!("price {id} does not exist")).detail("priceID", id.to_string())
}

fn not_in_stripe(product_id: i64) -> AppError {
    AppError::new(Kind::Conflict, "PRODUCT_NOT_IN_STRIPE", "the product has no Stripe product")
        .detail("productID", product_id.to_string())
}

impl App {
    pub async fn create_product(
        &self,
        cmd: CreateProduct,
        call: &Call,
    ) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.product_with_prices();
        }
        let id = products::reserve_id(&self.db, "product").await?;
        let price_id = products::reserve_id(&self.db, "price").await?;
        let op = Operation::CreateProduct {
            product_id: id,
            price_id,
            name: cmd.name.to_string(),
            description: cmd.description.clone(),
            unit_amount: cmd.price.amount(),
            currency: cmd.price.currency().code().to_string(),
        };
        let op = self.record(call, op).await?;
        self.drive(&op).await?.product_with_prices()
    }

    pub async fn add_price(&self, product_id: i64, price: Money, call: &Call) -> Result<PriceRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.price();
        }
        let product =
            products::get_product(&self.db, product_id).await?.ok_or_else(|| product_not_found(product_id))?;
        if !product.active {
            return Err(AppError::new(Kind::Conflict, "PRODUCT_INACTIVE", "the product is deactivated")
                .detail("productID", product_id.to_string()));
        }
        let price_id = products::reserve_id(&self.db, "price").await?;
        let op = Operation::CreatePrice {
            product_id,
            price_id,
            stripe_product_id: Some(product.stripe_product_id.ok_or_else(|| not_in_stripe(product_id))?),
            unit_amount: price.amount(),
            currency: price.currency().code().to_string(),
        };
        let op = self.record(call, op).await?;
        self.drive(&op).await?.price()
    }

    pub async fn deactivate_product(&self, id: i64, call: &Call) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.product_with_prices();
        }
        let product = products::get_product(&self.db, id).await?.ok_or_else(|| product_not_found(id))?;
        let op = self
            .record(call, Operation::DeactivateProduct { product_id: id, stripe_id: product.stripe_product_id })
            .await?;
        self.drive(&op).await?.product_with_prices()
    }

    pub async fn deactivate_price(&self, id: i64, call: &Call) -> Result<PriceRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.price();
        }
        let price = products::get_price(&self.db, id).await?.ok_or_else(|| price_not_found(id))?;
        let op =
            self.record(call, Operation::DeactivatePrice { price_id: id, stripe_id: price.stripe_price_id }).await?;
        self.drive(&op).await?.price()
    }

    /// Sends a product or price operation to Stripe and writes the result.
    /// A product's two Stripe objects get two keys derived from the one
    /// operation.
    pub(crate) async fn drive_catalog(&self, op: &OperationRow) -> Result<super::operations::Driven, AppError> {
        use super::operations::Driven;
        let key = &op.idempotency_key;
        match &op.op {
            Operation::CreateProduct { product_id, price_id, unit_amount, currency, .. }
            | Operation::CreatePrice { product_id, price_id, unit_amount, currency, .. } => {
                let stripe_product = match &op.op {
                    Operation::CreateProduct { name, description, .. } => {
                        let id_text = product_id.to_string();
                        let form = Form::new()
                            .set("name", name)
                            .set_opt("description", description.as_deref())
                            .map("metadata", [("productID", id_text.as_str())]);
                        match self.stripe.create_product(&form, &format!("{key}-product")).await {
                            Ok(r) => r.object.id,
                            Err(e) => return Err(self.unfinished_op(op, e).await),
                        }
                    }
                    Operation::CreatePrice { stripe_product_id: Some(id), .. } => id.clone(),
                    Operation::CreatePrice { stripe_product_id: None, .. } => {
                        let refused = not_in_stripe(*product_id);
                        ops::close_operation(&self.db, op.id, State::Failed, Some(&refused.message)).await?;
                        return Err(refused);
                    }
                    _ => unreachable!("matched above"),
                };
                let price_text = price_id.to_string();
                let form = Form::new()
                    .set("product", &stripe_product)
                    .set("unit_amount", unit_amount)
                    .set("currency", currency)
                    .map("metadata", [("priceID", price_text.as_str())]);
                let stripe_price = match self.stripe.create_price(&form, &format!("{key}-price")).await {
                    Ok(r) => r.object.id,
                    // The product this operation made is at Stripe: the
                    // operation was sent, whatever this call did.
                    Err(e) if matches!(op.op, Operation::CreateProduct { .. }) => {
                        return Err(self.unfinished_op(op, e.after_an_earlier_call_reached_stripe()).await);
                    }
                    Err(e) => return Err(self.unfinished_op(op, e).await),
                };
                self.finish_catalog_create(op, &stripe_product, &stripe_price).await
            }
            Operation::DeactivateProduct { product_id, stripe_id } => {
                if let Some(stripe_id) = stripe_id {
                    let form = Form::new().set("active", "false");
                    if let Err(e) = self.stripe.update_product(stripe_id, &form, key).await {
                        return Err(self.unfinished_op(op, e).await);
                    }
                }
                let mut tx = crate::store::begin(&self.db).await?;
                products::deactivate_product(&mut tx, *product_id).await?;
                ops::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
                tx.commit().await?;
                self.product_on_primary(*product_id).await.map(Driven::product)
            }
            Operation::DeactivatePrice { price_id, stripe_id } => {
                if let Some(stripe_id) = stripe_id {
                    let form = Form::new().set("active", "false");
                    if let Err(e) = self.stripe.update_price(stripe_id, &form, key).await {
                        return Err(self.unfinished_op(op, e).await);
                    }
                }
                let mut tx = crate::store::begin(&self.db).await?;
                products::deactivate_price(&mut tx, *price_id).await?;
                ops::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
                tx.commit().await?;
                products::get_price(&self.db, *price_id)
                    .await?
                    .map(Driven::Price)
                    .ok_or_else(|| price_not_found(*price_id))
            }
            other => {
                Err(AppError::internal(anyhow::anyhow!("operation {} ({}) is not a catalog one", op.id, other.kind())))
            }
        }
    }

    /// Records the product and price, or the price, that `op` created in
    /// Stripe, and closes `op` (once: the operation is locked).
    pub(crate) async fn finish_catalog_create(
        &self,
        op: &OperationRow,
        stripe_product: &str,
        stripe_price: &str,
    ) -> Result<super::operations::Driven, AppError> {
        use super::operations::Driven;
        let (Operation::CreateProduct { product_id, price_id, unit_amount, currency, .. }
        | Operation::CreatePrice { product_id, price_id, unit_amount, currency, .. }) = &op.op
        else {
            return Err(AppError::internal(anyhow::anyhow!("operation {} creates no price", op.id)));
        };
        let mut tx = crate::store::begin(&self.db).await?;
        if ops::lock_operation_state(&mut tx, op.id).await? == State::Pending {
            if let Operation::CreateProduct { name, description, .. } = &op.op {
                products::insert_product(&mut tx, *product_id, name, description.as_deref(), stripe_product).await?;
            }
            let price = NewPrice { id: *price_id, unit_amount: *unit_amount, currency, stripe_price_id: stripe_price };
            products::insert_price(&mut tx, *product_id, price).await?;
            ops::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
        }
        tx.commit().await?;
        if matches!(op.op, Operation::CreateProduct { .. }) {
            self.product_on_primary(*product_id).await.map(Driven::product)
        } else {
            products::get_price(&self.db, *price_id).await?.map(Driven::Price).ok_or_else(|| price_not_found(*price_id))
        }
    }

    /// The product as the primary has it, for a change's answer.
    pub(crate) async fn product_on_primary(&self, id: i64) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let product = products::get_product(&self.db, id).await?.ok_or_else(|| product_not_found(id))?;
        Ok((product, products::prices_of(&self.db, &[id]).await?))
    }

    pub async fn get_product(&self, id: i64) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let found = self
            .read(|db| async move {
                let Some(product) = products::get_product(&db, id).await? else { return Ok(None) };
                Ok(Some((product, products::prices_of(&db, &[id]).await?)))
            })
            .await?;
        found.ok_or_else(|| product_not_found(id))
    }

    /// A page of products with their prices, and the next page's token.
    pub async fn list_products(
        &self,
        page_size: i32,
        token: &str,
        active_only: bool,
    ) -> Result<(Vec<(ProductRow, Vec<PriceRow>)>, Option<String>), AppError> {
        let page = Page::parse(page_size, token, "product")?;
        let (after, size) = (page.cursor.unwrap_or(0), page.size + 1);
        let (mut rows, prices) = self
            .read(|db| async move {
                let rows = products::list_products(&db, after, size, active_only).await?;
                let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
                let prices = products::prices_of(&db, &ids).await?;
                Ok((rows, prices))
            })
            .await?;
        let next = page.finish(&mut rows, "product", |r| r.id);
        let out = rows
            .into_iter()
            .map(|p| {
                let mine: Vec<PriceRow> = prices.iter().filter(|pr| pr.product_id == p.id).cloned().collect();
                (p, mine)
            })
            .collect();
        Ok((out, next))
    }
}
