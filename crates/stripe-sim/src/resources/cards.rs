//! Stripe's test cards: what each number, and each test PaymentMethod id,
//! does when charged.

/// What happens when a card is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Succeed,
    /// Declined at the charge (and when attached to a customer).
    Decline {
        code: &'static str,
        decline_code: &'static str,
        message: &'static str,
    },
    /// Attaches to a customer; every charge is declined.
    AttachThenDecline,
    /// Always asks for 3-D Secure, on setup and on every charge, off-session
    /// ones included (which are then declined `authentication_required`).
    RequireAuthentication,
    /// Asks for 3-D Secure on setup and on one-time charges; once set up
    /// for future use (a SetupIntent, or a payment with
    /// `setup_future_usage`, authenticated), off-session charges succeed.
    AuthenticateOnSetup,
    /// Succeeds, then the charge is disputed: a chargeback (funds withdrawn,
    /// the charge no longer refundable) or, `inquiry`, a request for
    /// information (nothing withdrawn yet).
    Dispute {
        reason: &'static str,
        inquiry: bool,
    },
}

/// A test card.
#[derive(Clone, Copy, Debug)]
pub struct Card {
    pub number: &'static str,
    pub brand: &'static str,
    pub behaviour: Behaviour,
}

const GENERIC: Behaviour =
    Behaviour::Decline { code: "card_declined", decline_code: "generic_decline", message: "Your card was declined." };

/// The cards, with their test PaymentMethod ids.
pub const CARDS: &[(&str, Card)] = &[
    ("pm_card_visa", Card { number: "4242424242424242", brand: "visa", behaviour: Behaviour::Succeed }),
    ("pm_card_mastercard", Card { number: "5555555555554444", brand: "mastercard", behaviour: Behaviour::Succeed }),
    ("pm_card_chargeDeclined", Card { number: "4000000000000002", brand: "visa", behaviour: GENERIC }),
    (
        "pm_card_chargeDeclinedInsufficientFunds",
        Card {
            number: "4000000000009995",
            brand: "visa",
            behaviour: Behaviour::Decline {
                code: "card_declined",
                decline_code: "insufficient_funds",
                message: "Your card has insufficient funds.",
            },
        },
    ),
    (
        "pm_card_chargeDeclinedExpiredCard",
        Card {
            number: "4000000000000069",
            brand: "visa",
            behaviour: Behaviour::Decline {
                code: "expired_card",
                decline_code: "expired_card",
                message: "Your card has expired.",
            },
        },
    ),
    (
        "pm_card_chargeDeclinedIncorrectCvc",
        Card {
            number: "4000000000000127",
            brand: "visa",
            behaviour: Behaviour::Decline {
                code: "incorrect_cvc",
                decline_code: "incorrect_cvc",
                message: "Your card's security code is incorrect.",
            },
        },
    ),
    (
        "pm_card_chargeCustomerFail",
        Card { number: "4000000000000341", brand: "visa", behaviour: Behaviour::AttachThenDecline },
    ),
    (
        "pm_card_authenticationRequiredOnSetup",
        Card { number: "4000002500003155", brand: "visa", behaviour: Behaviour::AuthenticateOnSetup },
    ),
    (
        "pm_card_authenticationRequired",
        Card { number: "4000002760003184", brand: "visa", behaviour: Behaviour::RequireAuthentication },
    ),
    (
        "pm_card_createDispute",
        Card {
            number: "4000000000000259",
            brand: "visa",
            behaviour: Behaviour::Dispute { reason: "fraudulent", inquiry: false },
        },
    ),
    (
        "pm_card_createDisputeProductNotReceived",
        Card {
            number: "4000000000002685",
            brand: "visa",
            behaviour: Behaviour::Dispute { reason: "product_not_received", inquiry: false },
        },
    ),
    (
        "pm_card_createDisputeInquiry",
        Card {
            number: "4000000000001976",
            brand: "visa",
            behaviour: Behaviour::Dispute { reason: "fraudulent", inquiry: true },
        },
    ),
];

/// The decline of a card that attaches but cannot be charged.
pub const CUSTOMER_FAIL: Behaviour = GENERIC;

/// The test card of a test PaymentMethod id.
pub fn by_test_id(id: &str) -> Option<Card> {
    CARDS.iter().find(|(t, _)| *t == id).map(|(_, c)| *c)
}

/// A card's brand and behaviour by number: a test card, or any other
/// Luhn-valid number (which succeeds, as Stripe's other test numbers do).
pub fn by_number(number: &str) -> Option<(&'static str, Behaviour)> {
    let digits: String = number.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some((_, c)) = CARDS.iter().find(|(_, c)| c.number == digits) {
        return Some((c.brand, c.behaviour));
    }
    let valid = (12..=19).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) && luhn(&digits);
    valid.then(|| {
        let brand = match digits.chars().next() {
            Some('4') => "visa",
            Some('5') | Some('2') => "mastercard",
            Some('3') => "amex",
            _ => "unknown",
        };
        (brand, Behaviour::Succeed)
    })
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}
