//! Products and prices, created in Stripe and stored with the Stripe ids.
//! As with customers, ids are reserved first so Stripe's objects carry ours
//! and their idempotency keys derive from them; our rows are written once
//! Stripe has answered, so a Stripe failure writes nothing here.

use super::{App, AppError, Kind, page::Page, stripe_failure};
use crate::{
    domain::{money::Money, request},
    store::products::{self, NewPrice, PriceRow, ProductRow},
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

fn product_not_found(id: i64) -> AppError {
    AppError::not_found("PRODUCT_NOT_FOUND", format!("product {id} does not exist")).detail("productID", id.to_string())
}

fn price_not_found(id: i64) -> AppError {
    AppError::not_found("PRICE_NOT_FOUND", format!("price {id} does not exist")).detail("priceID", id.to_string())
}

impl App {
    pub async fn create_product(&self, cmd: CreateProduct) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let id = products::reserve_id(&self.db, "product").await?;
        let id_text = id.to_string();
        let form = Form::new()
            .set("name", &cmd.name)
            .set_opt("description", cmd.description.as_deref())
            .map("metadata", [("productID", id_text.as_str())]);
        let product =
            self.stripe.create_product(&form, &format!("product-{id}-create")).await.map_err(stripe_failure)?.object;
        let (price_id, stripe_price) = self.create_stripe_price(&product.id, cmd.price).await?;
        let new_price = NewPrice {
            id: price_id,
            unit_amount: cmd.price.amount(),
            currency: cmd.price.currency().code(),
            stripe_price_id: &stripe_price,
        };
        let (product, price) =
            products::insert_product(&self.db, id, &cmd.name, cmd.description.as_deref(), &product.id, new_price)
                .await?;
        Ok((product, vec![price]))
    }

    async fn create_stripe_price(&self, stripe_product: &str, price: Money) -> Result<(i64, String), AppError> {
        let id = products::reserve_id(&self.db, "price").await?;
        let id_text = id.to_string();
        let form = Form::new()
            .set("product", stripe_product)
            .set("unit_amount", price.amount())
            .set("currency", price.currency().code())
            .map("metadata", [("priceID", id_text.as_str())]);
        let created =
            self.stripe.create_price(&form, &format!("price-{id}-create")).await.map_err(stripe_failure)?.object;
        Ok((id, created.id))
    }

    pub async fn add_price(&self, product_id: i64, price: Money) -> Result<PriceRow, AppError> {
        let product =
            products::get_product(&self.db, product_id).await?.ok_or_else(|| product_not_found(product_id))?;
        if !product.active {
            return Err(AppError::new(Kind::FailedPrecondition, "PRODUCT_INACTIVE", "the product is deactivated")
                .detail("productID", product_id.to_string()));
        }
        let stripe_product = product.stripe_product_id.as_deref().unwrap_or_default();
        let (id, stripe_price) = self.create_stripe_price(stripe_product, price).await?;
        let new_price = NewPrice {
            id,
            unit_amount: price.amount(),
            currency: price.currency().code(),
            stripe_price_id: &stripe_price,
        };
        Ok(products::insert_price(&self.db, product_id, new_price).await?)
    }

    pub async fn get_product(&self, id: i64) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let product = products::get_product(&self.db, id).await?.ok_or_else(|| product_not_found(id))?;
        let prices = products::prices_of(&self.db, &[id]).await?;
        Ok((product, prices))
    }

    /// A page of products with their prices, and the next page's token.
    pub async fn list_products(
        &self,
        page_size: i32,
        token: &str,
        active_only: bool,
    ) -> Result<(Vec<(ProductRow, Vec<PriceRow>)>, Option<String>), AppError> {
        let page = Page::parse(page_size, token, "product")?;
        let mut rows = products::list_products(&self.db, page.cursor.unwrap_or(0), page.size + 1, active_only).await?;
        let next = page.finish(&mut rows, "product", |r| r.id);
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        let prices = products::prices_of(&self.db, &ids).await?;
        let out = rows
            .into_iter()
            .map(|p| {
                let mine: Vec<PriceRow> = prices.iter().filter(|pr| pr.product_id == p.id).cloned().collect();
                (p, mine)
            })
            .collect();
        Ok((out, next))
    }

    pub async fn deactivate_product(&self, id: i64) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        let product = products::get_product(&self.db, id).await?.ok_or_else(|| product_not_found(id))?;
        if let Some(stripe_id) = &product.stripe_product_id {
            let form = Form::new().set("active", "false");
            self.stripe
                .update_product(stripe_id, &form, &format!("product-{id}-deactivate"))
                .await
                .map_err(stripe_failure)?;
        }
        products::deactivate_product(&self.db, id).await?;
        self.get_product(id).await
    }

    pub async fn deactivate_price(&self, id: i64) -> Result<PriceRow, AppError> {
        let price = products::get_price(&self.db, id).await?.ok_or_else(|| price_not_found(id))?;
        if let Some(stripe_id) = &price.stripe_price_id {
            let form = Form::new().set("active", "false");
            self.stripe
                .update_price(stripe_id, &form, &format!("price-{id}-deactivate"))
                .await
                .map_err(stripe_failure)?;
        }
        products::deactivate_price(&self.db, id).await?.ok_or_else(|| price_not_found(id))
    }
}
