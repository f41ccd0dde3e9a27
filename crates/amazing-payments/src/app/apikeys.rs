//! API keys: made, listed and revoked by the CLI; checked on every call.
//!
//! A key looks like `ap_AbCd1234_<32 letters and digits>`. The part before the
//! second underscore is the visible prefix, stored to find the row; the whole
//! key is stored only as HMAC-SHA256 under the service's pepper, and compared
//! in constant time.

use super::{AppError, AuthSettings, Principal};
use crate::{secret::Secret, store::apikeys};
use hmac::{Hmac, Mac};
use rand::{Rng, distr::Alphanumeric};
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

/// A key just made: shown once, never stored.
pub struct NewKey {
    pub id: i64,
    pub prefix: String,
    pub key: Secret,
}

fn random(n: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(n).map(char::from).collect()
}

fn keyed_hash(pepper: &Secret, key: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `ap_AbCd1234` of `ap_AbCd1234_secret`, if the key has that shape.
fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("ap_")?;
    let (head, secret) = rest.split_once('_')?;
    (head.len() == 8 && !secret.is_empty()).then(|| &key[..3 + 8])
}

fn unauthenticated(message: &str) -> AppError {
    AppError::unauthenticated("INVALID_API_KEY", message.to_string())
}

/// Makes a key named `name`; the key itself is in the answer and nowhere else.
pub async fn create(db: &PgPool, auth: &AuthSettings, name: &str) -> Result<NewKey, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::invalid("INVALID_KEY_NAME", "a key name has 1 to 100 characters"));
    }
    let prefix = format!("ap_{}", random(8));
    let key = format!("{prefix}_{}", random(32));
    let row = apikeys::insert(db, name, &prefix, &keyed_hash(&auth.pepper, &key)).await?;
    Ok(NewKey { id: row.id, prefix, key: Secret::new(key) })
}

/// Who is calling, from the `Authorization: Bearer` value.
pub async fn authenticate(
    db: &PgPool,
    auth: &AuthSettings,
    authorization: Option<&str>,
) -> Result<Principal, AppError> {
    if !auth.required {
        // No key, no per-key limit: the old clients served so share nothing
        // they could be limited by (RATE_LIMIT is per key).
        return Ok(Principal { api_key_id: None, quota: None });
    }
    let Some(value) = authorization else {
        return Err(AppError::unauthenticated(
            "MISSING_API_KEY",
            "an API key is required: send Authorization: Bearer <key>",
        ));
    };
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value).trim();
    let prefix = prefix_of(key).ok_or_else(|| unauthenticated("the API key is not valid"))?;
    let hash = keyed_hash(&auth.pepper, key);
    if let Some((id, own)) = auth.cache.get(&hash) {
        let quota = auth.limiter.admit(Some(id), own)?;
        return Ok(Principal { api_key_id: Some(id), quota });
    }
    let row = apikeys::by_prefix(db, prefix).await?.ok_or_else(|| unauthenticated("the API key is not valid"))?;
    let matches: bool = hash.ct_eq(&row.hash).into();
    if !matches {
        return Err(unauthenticated("the API key is not valid"));
    }
    if row.revoked_at.is_some() {
        return Err(AppError::unauthenticated("API_KEY_REVOKED", "the API key has been revoked"));
    }
    let own = row.rate_limit.and_then(|r| u32::try_from(r).ok());
    auth.cache.put(hash, row.id, own);
    let quota = auth.limiter.admit(Some(row.id), own)?;
    Ok(Principal { api_key_id: Some(row.id), quota })
}

/// Keys verified in the last `ttl`, by their keyed hash (never the key):
/// a busy caller's key is read from the database once per `ttl`, not once
/// per request. Only successes are kept, so a wrong key always costs a
/// read. A revoked key stops working within `ttl` on every instance; a TTL
/// of zero turns the cache off. At most `MAX_KEYS` are kept.
#[derive(Clone, Default)]
pub struct KeyCache {
    ttl: std::time::Duration,
    verified: std::sync::Arc<parking_lot::Mutex<Verified>>,
}

/// Shown in the configuration log: its TTL and size, never the keys' hashes.
impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("ttl", &self.ttl).field("keys", &self.verified.lock().len()).finish()
    }
}

/// Keyed hash of a key -> (its id, its own rate limit, when it was verified).
type Verified = std::collections::HashMap<Vec<u8>, (i64, Option<u32>, std::time::Instant)>;

impl KeyCache {
    const MAX_KEYS: usize = 10_000;

    pub fn new(ttl: std::time::Duration) -> Self {
        Self { ttl, verified: Default::default() }
    }

    fn get(&self, hash: &[u8]) -> Option<(i64, Option<u32>)> {
        if self.ttl.is_zero() {
            return None;
        }
        let verified = self.verified.lock();
        verified.get(hash).filter(|(_, _, at)| at.elapsed() < self.ttl).map(|(id, own, _)| (*id, *own))
    }

    fn put(&self, hash: Vec<u8>, id: i64, own: Option<u32>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut verified = self.verified.lock();
        if verified.len() >= Self::MAX_KEYS {
            let ttl = self.ttl;
            verified.retain(|_, (_, _, at)| at.elapsed() < ttl);
            if verified.len() >= Self::MAX_KEYS {
                verified.clear();
            }
        }
        verified.insert(hash, (id, own, std::time::Instant::now()));
    }
}

impl super::App {
    /// Who is calling, from the `Authorization: Bearer` value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AppError> {
        authenticate(&self.db, &self.auth, authorization).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_our_shape_have_a_prefix() {
        assert_eq!(prefix_of("ap_AbCd1234_xyz"), Some("ap_AbCd1234"));
        assert_eq!(prefix_of("ap_short_xyz"), None);
        assert_eq!(prefix_of("sk_test_123"), None);
        assert_eq!(prefix_of("ap_AbCd1234_"), None);
    }

    #[test]
    fn the_hash_depends_on_the_pepper() {
        let a = keyed_hash(&Secret::new("one"), "ap_AbCd1234_x");
        let b = keyed_hash(&Secret::new("two"), "ap_AbCd1234_x");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
