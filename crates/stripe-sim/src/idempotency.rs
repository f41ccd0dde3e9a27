//! Stripe's idempotency rules for POST requests:
//! - the first result of a request that started executing is saved, whatever
//!   it was (500s included), and replayed for the same key with
//!   `Idempotent-Replayed: true`;
//! - the same key with other parameters is a 400 `idempotency_error`;
//! - a request arriving while another with its key executes is a 409
//!   `idempotency_key_in_use`, and is not saved;
//! - a request that failed validation is not saved and may be retried;
//! - keys may be pruned once at least 24 hours old.

use axum::http::StatusCode;
use parking_lot::Mutex;
use serde_json::Value;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How long a key is kept.
pub const KEY_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// A saved response.
#[derive(Clone, Debug)]
pub struct Saved {
    pub status: StatusCode,
    pub body: Value,
    pub request_id: String,
}

enum Entry {
    Running { fingerprint: String },
    Done { fingerprint: String, saved: Saved, since: Instant },
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// Execute it; then call [`Keys::finish`] or [`Keys::release`].
    Execute,
    /// Answer with this saved response.
    Replay(Saved),
    /// Same key, other parameters.
    Mismatch,
    /// Another request with this key is executing.
    InUse,
}

/// All idempotency keys, scoped by API key.
#[derive(Default)]
pub struct Keys {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Keys {
    pub fn claim(&self, scope: &str, key: &str, fingerprint: &str) -> Claim {
        let mut entries = self.entries.lock();
        entries.retain(|_, e| match e {
            Entry::Running { .. } => true,
            Entry::Done { since, .. } => since.elapsed() < KEY_LIFETIME,
        });
        let id = (scope.to_string(), key.to_string());
        match entries.get(&id) {
            Some(Entry::Running { fingerprint: f, .. } | Entry::Done { fingerprint: f, .. }) if f != fingerprint => {
                Claim::Mismatch
            }
            Some(Entry::Running { .. }) => Claim::InUse,
            Some(Entry::Done { saved, .. }) => Claim::Replay(saved.clone()),
            None => {
                entries.insert(id, Entry::Running { fingerprint: fingerprint.to_string() });
                Claim::Execute
            }
        }
    }

    /// Saves the result of a request that started executing.
    pub fn finish(&self, scope: &str, key: &str, saved: Saved) {
        let mut entries = self.entries.lock();
        let id = (scope.to_string(), key.to_string());
        if let Some(Entry::Running { fingerprint, .. }) = entries.remove(&id) {
            entries.insert(id, Entry::Done { fingerprint, saved, since: Instant::now() });
        }
    }

    /// Forgets a request that failed validation, so the key may be retried.
    pub fn release(&self, scope: &str, key: &str) {
        self.entries.lock().remove(&(scope.to_string(), key.to_string()));
    }
}
