//! Paging of lists: a page size (1 to 100, 0 meaning 50) and an opaque token
//! naming the last row seen, tied to the kind of list that gave it.
//!
//! A token is a letter naming the list (`c`ustomers, p`r`oducts, `p`ayments, `w`ebhook deliveries, `d`isputes)
//! and the last id's eight bytes in unpadded base64url: twelve characters
//! that the contract can state as a pattern (`proto/payment/payment.proto`),
//! and any string of that form decodes to a place in the list, so a token the
//! document allows is never refused. Forging one only moves the caller
//! within a list its key may read anyway.

use super::AppError;
use base64::{
    Engine,
    alphabet::URL_SAFE,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// Unpadded base64url. The pattern's last character leaves the trailing bits
/// zero, so every token it allows decodes; decoding does not insist on it.
const TOKEN: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The letter of a list's tokens.
fn letter(kind: &str) -> char {
    match kind {
        "customer" => 'c',
        "product" => 'r',
        "delivery" => 'w',
        "dispute" => 'd',
        _ => 'p',
    }
}

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 100;

/// A checked page request: how many rows, and the id after which to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    pub cursor: Option<i64>,
}

impl Page {
    pub fn parse(size: i32, token: &str, kind: &str) -> Result<Self, AppError> {
        let size = match i64::from(size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(AppError::invalid(
                    "INVALID_PAGE_SIZE",
                    format!("page_size must be between 1 and {MAX_PAGE_SIZE}"),
                )
                .detail("field", "page_size"));
            }
        };
        let token = token.trim();
        let cursor = if token.is_empty() {
            None
        } else {
            let refused = || {
                AppError::invalid("INVALID_PAGE_TOKEN", "page_token is not one this service gave for this list")
                    .detail("field", "page_token")
            };
            let rest = token.strip_prefix(letter(kind)).ok_or_else(refused)?;
            let bytes = TOKEN.decode(rest).ok().filter(|b| b.len() == 8).ok_or_else(refused)?;
            Some(i64::from_be_bytes(bytes.try_into().expect("eight bytes")))
        };
        Ok(Self { size, cursor })
    }

    /// Cuts `rows` (fetched with `size + 1`) to the page; the next page's token.
    pub fn finish<T>(&self, rows: &mut Vec<T>, kind: &str, id: impl Fn(&T) -> i64) -> Option<String> {
        if rows.len() as i64 > self.size {
            rows.truncate(self.size as usize);
            rows.last().map(|r| format!("{}{}", letter(kind), TOKEN.encode(id(r).to_be_bytes())))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_one_of_another_list_or_forged_is_refused() {
        let p = Page::parse(2, "", "customer").unwrap();
        let mut rows = vec![1, 2, 3];
        let token = p.finish(&mut rows, "customer", |r| *r).unwrap();
        assert_eq!(rows, [1, 2]);
        assert_eq!(Page::parse(2, &token, "customer").unwrap().cursor, Some(2));
        assert_eq!(Page::parse(2, &token, "payment").unwrap_err().reason, "INVALID_PAGE_TOKEN");
        assert_eq!(Page::parse(2, "bm9wZQ", "customer").unwrap_err().reason, "INVALID_PAGE_TOKEN");
        assert_eq!(token.len(), 12, "{token}");
        assert!(token.starts_with('c'));
    }

    #[test]
    fn page_size_zero_means_the_default_and_out_of_range_is_refused() {
        assert_eq!(Page::parse(0, "", "x").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::parse(101, "", "x").unwrap_err().reason, "INVALID_PAGE_SIZE");
        assert_eq!(Page::parse(-1, "", "x").unwrap_err().reason, "INVALID_PAGE_SIZE");
    }
}
