//! API keys: made, listed and revoked by the CLI; checked on every call.
//!
//! A key looks like `ap_AbCd1234_<32 letters and digits>`. The part before the
//! second underscore is the visible prefix, stored to find the row; the whole
//! key is stored only as HMAC-SHA256 under the service's pepper, and compared
//! in constant time.
//!
//! A key holds scopes (what it may call, [`crate::domain::scopes`]), may
//! expire, and may be rotated: a new key replaces it while the old one
//! still works for a set time.

use super::{AppError, AuthSettings, Kind, Principal};
use crate::{
    domain::scopes::{self, Scope},
    secret::Secret,
    store::apikeys,
};
use chrono::{DateTime, Utc};
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

/// The scopes of a new key: `read,write` or `all` (every scope); an empty
/// list is refused.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, AppError> {
    let mut scopes = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            return Ok(Scope::ALL.to_vec());
        }
        let scope = Scope::parse(word).ok_or_else(|| {
            AppError::invalid("INVALID_SCOPE", format!("{word:?} is no scope: use read, write, refund, admin or all"))
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(AppError::invalid("INVALID_SCOPE", "a key needs at least one scope"));
    }
    Ok(scopes)
}

fn names(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_string()).collect()
}

/// Makes a key named `name` that may do `scopes` until `expires_at`; the key
/// itself is in the answer and nowhere else.
pub async fn create(
    db: &PgPool,
    auth: &AuthSettings,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<NewKey, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::invalid("INVALID_KEY_NAME", "a key name has 1 to 100 characters"));
    }
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(AppError::invalid("INVALID_EXPIRY", "a new key must expire in the future"));
    }
    let (prefix, key) = fresh();
    let row = apikeys::insert(
        db,
        apikeys::NewKey {
            name,
            prefix: &prefix,
            hash: &keyed_hash(&auth.pepper, &key),
            scopes: &names(scopes),
            expires_at,
            rate_limit: None,
            rotated_from: None,
            lineage: None,
        },
    )
    .await?;
    Ok(NewKey { id: row.id, prefix, key: Secret::new(key) })
}

/// A new key's prefix and the key.
fn fresh() -> (String, String) {
    let prefix = format!("ap_{}", random(8));
    let key = format!("{prefix}_{}", random(32));
    (prefix, key)
}

/// Replaces the key `old` (id or prefix) with a new one of the same name,
/// scopes, rate limit and line (its idempotency keys and rate), expiring at
/// `expires_at` (`None`: when the old one would have); the old key keeps
/// working until `until`, so that callers can move to the new one. The
/// old key's row (with its new expiry) and the new key are in the answer.
pub async fn rotate(
    db: &PgPool,
    auth: &AuthSettings,
    old: &str,
    until: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(apikeys::ApiKeyRow, NewKey), AppError> {
    if until <= Utc::now() {
        return Err(AppError::invalid("INVALID_GRACE", "the old key's grace must end in the future"));
    }
    if expires_at.is_some_and(|at| at <= until) {
        return Err(AppError::invalid("INVALID_EXPIRY", "the new key must outlive the old one"));
    }
    let (prefix, key) = fresh();
    let (old, new) = apikeys::rotate(db, old.trim(), &prefix, &keyed_hash(&auth.pepper, &key), until, expires_at)
        .await?
        .ok_or_else(|| AppError::not_found("API_KEY_NOT_FOUND", format!("no API key {old} that still works")))?;
    Ok((old, NewKey { id: new.id, prefix, key: Secret::new(key) }))
}

/// A key as the cache keeps it.
#[derive(Debug, Clone)]
struct Known {
    id: i64,
    /// The first key of its rotation's line.
    lineage: i64,
    /// Its own rate limit.
    own: Option<u32>,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
}

impl Known {
    /// The caller with this key, if it may call `rpc` now.
    fn admit(self, auth: &AuthSettings, rpc: &str) -> Result<Principal, AppError> {
        if self.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AppError::unauthenticated("API_KEY_EXPIRED", "the API key has expired"));
        }
        // Every keyed request counts toward the limit, refused ones too.
        let quota = auth.limiter.admit(Some(self.lineage), self.own)?;
        let needed = scopes::needed(rpc);
        if !self.scopes.iter().any(|s| s.grants(needed)) {
            return Err(AppError::new(
                Kind::PermissionDenied,
                "INSUFFICIENT_SCOPE",
                format!("this API key may not call {rpc}: that needs the {} scope", needed.as_str()),
            )
            .detail("required_scope", needed.as_str()));
        }
        Ok(Principal { api_key_id: Some(self.id), lineage: Some(self.lineage), quota })
    }
}

/// Who is calling `rpc`, from the `Authorization: Bearer` value: a key that
/// exists, is neither revoked nor expired, is within its rate limit and
/// holds the scope `rpc` needs.
pub async fn authenticate(
    db: &PgPool,
    auth: &AuthSettings,
    authorization: Option<&str>,
    rpc: &str,
) -> Result<Principal, AppError> {
    if !auth.required {
        // No key, no per-key limit: the old clients served so share nothing
        // they could be limited by (RATE_LIMIT is per key).
        return Ok(Principal { api_key_id: None, lineage: None, quota: None });
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
    if let Some(known) = auth.cache.get(&hash) {
        return known.admit(auth, rpc);
    }
    let row = apikeys::by_prefix(db, prefix).await?.ok_or_else(|| unauthenticated("the API key is not valid"))?;
    let matches: bool = hash.ct_eq(&row.hash).into();
    if !matches {
        return Err(unauthenticated("the API key is not valid"));
    }
    if row.revoked_at.is_some() {
        return Err(AppError::unauthenticated("API_KEY_REVOKED", "the API key has been revoked"));
    }
    let known = Known {
        id: row.id,
        lineage: row.lineage.unwrap_or(row.id),
        own: row.rate_limit.and_then(|r| u32::try_from(r).ok()),
        scopes: row.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        expires_at: row.expires_at,
    };
    auth.cache.put(hash, known.clone());
    let principal = known.admit(auth, rpc)?;
    // Only a call let through uses the key. A failure here lets the call go
    // on: when a key was last used is for people, not for deciding anything.
    if let Err(e) = apikeys::touch(db, row.id, LAST_USED_PRECISION).await {
        tracing::warn!(api_key_id = row.id, error = %e, "could not note when the API key was used");
    }
    Ok(principal)
}

/// `last_used_at` is written at most this often per key and instance.
const LAST_USED_PRECISION: std::time::Duration = std::time::Duration::from_secs(60);

/// Keys verified in the last `ttl`, by their keyed hash (never the key):
/// a busy caller's key is read from the database once per `ttl`, not once
/// per request. Only successes are kept, so a wrong key always costs a
/// read. A revoked key, or a change of its scopes, takes effect within
/// `ttl` on every instance; an expiry is checked on every call. A TTL of
/// zero turns the cache off. At most `MAX_KEYS` are kept.
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

/// Keyed hash of a key -> (the key, when it was verified).
type Verified = std::collections::HashMap<Vec<u8>, (Known, std::time::Instant)>;

impl KeyCache {
    const MAX_KEYS: usize = 10_000;

    pub fn new(ttl: std::time::Duration) -> Self {
        Self { ttl, verified: Default::default() }
    }

    fn get(&self, hash: &[u8]) -> Option<Known> {
        if self.ttl.is_zero() {
            return None;
        }
        let verified = self.verified.lock();
        verified.get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(known, _)| known.clone())
    }

    fn put(&self, hash: Vec<u8>, known: Known) {
        if self.ttl.is_zero() {
            return;
        }
        let mut verified = self.verified.lock();
        if verified.len() >= Self::MAX_KEYS {
            let ttl = self.ttl;
            verified.retain(|_, (_, at)| at.elapsed() < ttl);
            if verified.len() >= Self::MAX_KEYS {
                verified.clear();
            }
        }
        verified.insert(hash, (known, std::time::Instant::now()));
    }
}

impl super::App {
    /// Who is calling `rpc`, from the `Authorization: Bearer` value.
    pub async fn authenticate(&self, authorization: Option<&str>, rpc: &str) -> Result<Principal, AppError> {
        authenticate(&self.db, &self.auth, authorization, rpc).await
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
