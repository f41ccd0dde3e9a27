//! The payment state machine. A [`Ledger`] is a payment's status and money at
//! one moment. `plan_*` decide, before Stripe is called, whether a request can
//! succeed; the transition methods apply what Stripe reports (through our API,
//! webhooks or the reconciler) and refuse anything that would break the
//! invariants or move a payment backwards.
//!
//! Invariants: `0 <= captured <= amount`, `0 <= refunded <= captured`,
//! `capturable + captured <= amount`, and the status agrees with the money
//! (e.g. `refunded` exactly when everything captured was refunded).

use std::fmt;

/// A payment's status, in words a person would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Recorded here; Stripe's answer not yet known.
    Pending,
    /// The customer must act (3-D Secure).
    RequiresAction,
    /// The payment method is being processed.
    Processing,
    /// Authorized, awaiting capture.
    Authorized,
    /// Captured.
    Succeeded,
    PartiallyRefunded,
    Refunded,
    /// The last attempt was declined or not authenticated. Not final:
    /// Stripe keeps the PaymentIntent open, and the customer may still
    /// complete it with another card (Stripe.js and the client secret), so
    /// it can still become authorized or succeeded. Cancel it to close it.
    Failed,
    Canceled,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Pending,
        Status::RequiresAction,
        Status::Processing,
        Status::Authorized,
        Status::Succeeded,
        Status::PartiallyRefunded,
        Status::Refunded,
        Status::Failed,
        Status::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::RequiresAction => "requires_action",
            Status::Processing => "processing",
            Status::Authorized => "authorized",
            Status::Succeeded => "succeeded",
            Status::PartiallyRefunded => "partially_refunded",
            Status::Refunded => "refunded",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether money was captured.
    pub fn is_captured(self) -> bool {
        matches!(self, Status::Succeeded | Status::PartiallyRefunded | Status::Refunded)
    }

    /// Whether a payment may move from `self` to `to`. Refund-driven moves
    /// among the captured statuses are allowed both ways (a refund can fail
    /// after succeeding); a failed attempt may be followed by another, in
    /// any outcome; nothing leaves `canceled`.
    pub fn can_move_to(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (a, b) if a == b => true,
            (Pending, _) => true,
            (RequiresAction, Processing | Authorized | Succeeded | Failed | Canceled) => true,
            (Processing, Authorized | Succeeded | Failed | Canceled) => true,
            (Failed, RequiresAction | Processing | Authorized | Succeeded | Canceled) => true,
            (RequiresAction | Processing, RequiresAction | Processing) => true,
            (Authorized, Succeeded | Canceled) => true,
            (Succeeded | PartiallyRefunded | Refunded, Succeeded | PartiallyRefunded | Refunded) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a payment is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMethod {
    Automatic,
    Manual,
}

impl CaptureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "automatic" => Some(CaptureMethod::Automatic),
            "manual" => Some(CaptureMethod::Manual),
            _ => None,
        }
    }
}

/// A request that cannot succeed in the payment's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
}

fn refused(reason: &'static str, message: impl Into<String>) -> Refused {
    Refused { reason, message: message.into() }
}

/// A payment's status and money at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    pub status: Status,
    pub amount: i64,
    pub capturable: i64,
    pub captured: i64,
    pub refunded: i64,
}

impl Ledger {
    /// A payment just recorded, before Stripe answers.
    pub fn pending(amount: i64) -> Self {
        Self { status: Status::Pending, amount, capturable: 0, captured: 0, refunded: 0 }
    }

    /// Whether the invariants hold.
    pub fn is_consistent(&self) -> bool {
        let money = self.amount > 0
            && (0..=self.amount).contains(&self.captured)
            && (0..=self.captured).contains(&self.refunded)
            && self.capturable >= 0
            && self.capturable + self.captured <= self.amount;
        let status = match self.status {
            Status::Authorized => self.capturable > 0 && self.captured == 0,
            Status::Succeeded => self.captured > 0 && self.refunded == 0 && self.capturable == 0,
            Status::PartiallyRefunded => self.refunded > 0 && self.refunded < self.captured,
            Status::Refunded => self.captured > 0 && self.refunded == self.captured,
            _ => self.captured == 0 && self.refunded == 0,
        };
        money && status
    }

    /// How much a capture of `requested` (all when `None`) would take.
    pub fn plan_capture(&self, requested: Option<i64>) -> Result<i64, Refused> {
        match self.status {
            Status::Authorized => {}
            s if s.is_captured() => {
                return Err(refused("ALREADY_CAPTURED", "the payment is already captured; a payment is captured once"));
            }
            Status::Canceled => {
                return Err(refused("PAYMENT_CANCELED", "the payment is canceled and cannot be captured"));
            }
            s => {
                return Err(refused(
                    "NOT_CAPTURABLE",
                    format!("a {s} payment cannot be captured; only an authorized one can"),
                ));
            }
        }
        let amount = requested.unwrap_or(self.capturable);
        if amount > self.capturable {
            return Err(refused(
                "CAPTURE_EXCEEDS_AUTHORIZED",
                format!("cannot capture {amount}: only {} is authorized", self.capturable),
            ));
        }
        Ok(amount)
    }

    /// Whether the payment can be canceled.
    pub fn plan_cancel(&self) -> Result<(), Refused> {
        match self.status {
            Status::Authorized | Status::RequiresAction | Status::Processing | Status::Failed => Ok(()),
            s if s.is_captured() => {
                Err(refused("ALREADY_SUCCEEDED", "the payment is captured and cannot be canceled; refund it instead"))
            }
            Status::Canceled => Err(refused("ALREADY_CANCELED", "the payment is already canceled")),
            s => Err(refused("NOT_CANCELABLE", format!("a {s} payment cannot be canceled yet"))),
        }
    }

    /// How much a refund of `requested` (all that remains when `None`) would
    /// return, given `in_flight` already asked for by refunds not yet settled.
    pub fn plan_refund(&self, requested: Option<i64>, in_flight: i64) -> Result<i64, Refused> {
        match self.status {
            s if s.is_captured() => {}
            Status::Authorized => {
                return Err(refused(
                    "PAYMENT_NOT_CAPTURED",
                    "the payment is authorized but not captured: cancel it instead of refunding",
                ));
            }
            Status::Canceled => {
                return Err(refused("PAYMENT_CANCELED", "the payment is canceled; there is nothing to refund"));
            }
            s => return Err(refused("NOT_REFUNDABLE", format!("a {s} payment has nothing to refund"))),
        }
        let remaining = self.captured - self.refunded - in_flight;
        if remaining <= 0 {
            return Err(refused("ALREADY_REFUNDED", "everything captured is already refunded"));
        }
        let amount = requested.unwrap_or(remaining);
        if amount > remaining {
            return Err(refused(
                "REFUND_EXCEEDS_CAPTURED",
                format!("cannot refund {amount}: only {remaining} of the captured amount remains"),
            ));
        }
        Ok(amount)
    }

    fn moved(self, next: Ledger) -> Result<Ledger, Refused> {
        if !self.status.can_move_to(next.status) {
            return Err(refused(
                "INVALID_TRANSITION",
                format!("a payment cannot move from {} to {}", self.status, next.status),
            ));
        }
        if !next.is_consistent() {
            return Err(refused("INCONSISTENT_AMOUNTS", format!("the amounts would not add up: {next:?}")));
        }
        Ok(next)
    }

    /// Stripe authorized `capturable` (manual capture).
    pub fn authorize(self, capturable: i64) -> Result<Ledger, Refused> {
        self.moved(Ledger { status: Status::Authorized, capturable, ..self })
    }

    /// Stripe captured `amount` (a capture, or an automatic-capture success);
    /// whatever else was authorized is released.
    pub fn capture(self, amount: i64) -> Result<Ledger, Refused> {
        self.moved(Ledger { status: Status::Succeeded, capturable: 0, captured: amount, refunded: 0, ..self })
    }

    /// The payment's refunds now total `total_refunded`.
    pub fn set_refunded(self, total_refunded: i64) -> Result<Ledger, Refused> {
        let status = match total_refunded {
            0 => Status::Succeeded,
            r if r == self.captured => Status::Refunded,
            _ => Status::PartiallyRefunded,
        };
        self.moved(Ledger { status, refunded: total_refunded, ..self })
    }

    /// Canceled, or an authorization that expired: nothing capturable.
    pub fn cancel(self) -> Result<Ledger, Refused> {
        self.moved(Ledger { status: Status::Canceled, capturable: 0, ..self })
    }

    /// Declined, or authentication failed.
    pub fn fail(self) -> Result<Ledger, Refused> {
        self.moved(Ledger { status: Status::Failed, capturable: 0, ..self })
    }

    /// Waiting for the customer (3-D Secure) or the payment method.
    pub fn wait(self, status: Status) -> Result<Ledger, Refused> {
        debug_assert!(matches!(status, Status::RequiresAction | Status::Processing));
        self.moved(Ledger { status, capturable: 0, ..self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn authorized(amount: i64) -> Ledger {
        Ledger::pending(amount).authorize(amount).unwrap()
    }

    #[test]
    fn capturing_twice_or_more_than_authorized_is_refused() {
        let l = authorized(1000);
        assert_eq!(l.plan_capture(Some(1001)).unwrap_err().reason, "CAPTURE_EXCEEDS_AUTHORIZED");
        let captured = l.capture(l.plan_capture(Some(600)).unwrap()).unwrap();
        assert_eq!((captured.captured, captured.capturable), (600, 0), "the rest is released");
        assert_eq!(captured.plan_capture(None).unwrap_err().reason, "ALREADY_CAPTURED");
    }

    #[test]
    fn a_canceled_payment_can_be_neither_captured_nor_refunded() {
        let l = authorized(1000).cancel().unwrap();
        assert_eq!(l.plan_capture(None).unwrap_err().reason, "PAYMENT_CANCELED");
        assert_eq!(l.plan_refund(None, 0).unwrap_err().reason, "PAYMENT_CANCELED");
        assert_eq!(l.plan_cancel().unwrap_err().reason, "ALREADY_CANCELED");
    }

    #[test]
    fn an_uncaptured_payment_is_canceled_not_refunded() {
        assert_eq!(authorized(1000).plan_refund(None, 0).unwrap_err().reason, "PAYMENT_NOT_CAPTURED");
    }

    #[test]
    fn a_succeeded_payment_cannot_be_canceled() {
        let l = authorized(1000).capture(1000).unwrap();
        assert_eq!(l.plan_cancel().unwrap_err().reason, "ALREADY_SUCCEEDED");
    }

    #[test]
    fn refunds_may_not_exceed_what_was_captured_counting_those_in_flight() {
        let l = authorized(1000).capture(800).unwrap();
        assert_eq!(l.plan_refund(Some(300), 0), Ok(300));
        assert_eq!(l.plan_refund(Some(600), 300).unwrap_err().reason, "REFUND_EXCEEDS_CAPTURED");
        assert_eq!(l.plan_refund(None, 300), Ok(500));
        let l = l.set_refunded(800).unwrap();
        assert_eq!(l.status, Status::Refunded);
        assert_eq!(l.plan_refund(Some(1), 0).unwrap_err().reason, "ALREADY_REFUNDED");
    }

    #[test]
    fn a_payment_never_leaves_canceled_or_goes_back_to_authorized() {
        assert!(!Status::Canceled.can_move_to(Status::Succeeded));
        assert!(!Status::Succeeded.can_move_to(Status::Authorized));
        assert!(!Status::Authorized.can_move_to(Status::RequiresAction));
        assert!(authorized(100).cancel().unwrap().capture(100).is_err());
    }

    #[test]
    fn a_failed_attempt_is_not_final_while_stripe_may_still_take_the_money() {
        let failed = Ledger::pending(1000).fail().unwrap();
        assert_eq!(failed.authorize(1000).unwrap().status, Status::Authorized);
        assert_eq!(failed.capture(1000).unwrap().status, Status::Succeeded);
        assert_eq!(failed.wait(Status::RequiresAction).unwrap().status, Status::RequiresAction);
        assert_eq!(failed.cancel().unwrap().status, Status::Canceled);
        assert!(failed.cancel().unwrap().authorize(1000).is_err(), "canceled stays canceled");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Capture(Option<i64>),
        Cancel,
        Refund(Option<i64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let amount = proptest::option::of(1..=1500i64);
        prop_oneof![amount.clone().prop_map(Op::Capture), Just(Op::Cancel), amount.prop_map(Op::Refund)]
    }

    proptest! {
        /// Random requests against a payment: every accepted one keeps the
        /// invariants, refused ones change nothing, and the totals add up to
        /// exactly what was accepted.
        #[test]
        fn amounts_always_add_up_whatever_is_asked(amount in 50..=1000i64, manual in any::<bool>(), ops in proptest::collection::vec(op(), 0..20)) {
            let mut l = if manual { authorized(amount) } else { Ledger::pending(amount).capture(amount).unwrap() };
            let (mut captured, mut refunded) = (if manual { 0 } else { amount }, 0);
            for op in ops {
                let before = l;
                let next = match op {
                    Op::Capture(a) => l.plan_capture(a).and_then(|a| { captured += a; l.capture(a) }),
                    Op::Cancel => l.plan_cancel().and_then(|_| l.cancel()),
                    Op::Refund(a) => l.plan_refund(a, 0).and_then(|a| { refunded += a; l.set_refunded(l.refunded + a) }),
                };
                match next {
                    Ok(n) => {
                        prop_assert!(n.is_consistent(), "{:?}", n);
                        prop_assert!(before.status.can_move_to(n.status));
                        l = n;
                    }
                    Err(_) => prop_assert_eq!(l, before),
                }
                prop_assert_eq!(l.captured, captured);
                prop_assert_eq!(l.refunded, refunded);
                prop_assert!(l.refunded <= l.captured && l.captured <= l.amount);
            }
        }
    }
}
