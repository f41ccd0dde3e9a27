//! Verifying `Stripe-Signature` on a webhook's raw body: `t=<unix>,v1=<hex>`
//! (several `v1` while a secret is rolled), HMAC-SHA256 with an endpoint
//! secret over `"<t>.<raw body>"`. Any `v1` matching any configured secret is
//! valid; timestamps further than the tolerance from now are refused;
//! comparison is in constant time. The raw bytes are verified, never a
//! re-serialised body.

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a delivery is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Stale,
    NoMatch,
}

impl SignatureError {
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "WEBHOOK_SIGNATURE_MISSING",
            SignatureError::Malformed => "WEBHOOK_SIGNATURE_MALFORMED",
            SignatureError::Stale => "WEBHOOK_TIMESTAMP_STALE",
            SignatureError::NoMatch => "WEBHOOK_SIGNATURE_INVALID",
        }
    }
}

/// Checks `header` against `body` at time `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    tolerance_s: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t: Option<i64> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > tolerance_s {
        return Err(SignatureError::Stale);
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let mut matched = false;
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
        mac.update(&signed);
        let expected = mac.finalize().into_bytes();
        for s in &signatures {
            // Every pair is compared, in constant time, whatever matched.
            matched |= bool::from(expected.as_slice().ct_eq(s.as_slice()));
        }
    }
    if matched { Ok(()) } else { Err(SignatureError::NoMatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    const BODY: &str = r#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

    #[test]
    fn a_signature_by_a_configured_secret_is_accepted() {
        let header = format!("t=1000,v1={}", sign("whsec_a", 1000, BODY));
        assert_eq!(verify(Some(&header), BODY.as_bytes(), &[Secret::new("whsec_a")], 300, 1100), Ok(()));
    }

    #[test]
    fn a_forged_or_altered_delivery_is_refused() {
        let header = format!("t=1000,v1={}", sign("whsec_other", 1000, BODY));
        assert_eq!(
            verify(Some(&header), BODY.as_bytes(), &[Secret::new("whsec_a")], 300, 1000),
            Err(SignatureError::NoMatch)
        );
        let header = format!("t=1000,v1={}", sign("whsec_a", 1000, BODY));
        let altered = BODY.replace("succeeded", "canceled");
        assert_eq!(
            verify(Some(&header), altered.as_bytes(), &[Secret::new("whsec_a")], 300, 1000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(verify(None, BODY.as_bytes(), &[Secret::new("whsec_a")], 300, 1000), Err(SignatureError::Missing));
        assert_eq!(
            verify(Some("t=x,v1=zz"), BODY.as_bytes(), &[Secret::new("whsec_a")], 300, 1000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused_even_when_signed() {
        let header = format!("t=1000,v1={}", sign("whsec_a", 1000, BODY));
        assert_eq!(
            verify(Some(&header), BODY.as_bytes(), &[Secret::new("whsec_a")], 300, 1301),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn during_a_roll_either_secret_and_any_v1_is_valid() {
        let header = format!("t=1000,v1={},v1={}", sign("whsec_new", 1000, BODY), sign("whsec_old", 1000, BODY));
        assert!(verify(Some(&header), BODY.as_bytes(), &[Secret::new("whsec_old")], 300, 1000).is_ok());
        assert!(verify(Some(&header), BODY.as_bytes(), &[Secret::new("whsec_new")], 300, 1000).is_ok());
        let only_new = format!("t=1000,v1={}", sign("whsec_new", 1000, BODY));
        assert!(
            verify(Some(&only_new), BODY.as_bytes(), &[Secret::new("whsec_old"), Secret::new("whsec_new")], 300, 1000)
                .is_ok()
        );
    }
}
