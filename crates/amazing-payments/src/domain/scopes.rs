//! What an API key may do, as data only: the service checks every call
//! against it and `build.rs` writes each operation's scope into the OpenAPI
//! document, so both read one table.
//!
//! Four scopes, as a team splits its work: `read` sees; `write` takes
//! payments and keeps customers; `refund` gives money back, which many
//! teams allow fewer services to do; `admin` changes what the shop sells
//! (products and prices) and may do everything else. Every scope includes
//! `read`: a key that may change something may see what it changed.

/// One scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Read,
    Write,
    Refund,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Refund, Scope::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Refund => "refund",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a key holding `self` may make a call that needs `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || self == Scope::Admin || needed == Scope::Read
    }
}

/// The scope each rpc needs. An rpc missing here needs `admin` (see
/// [`needed`]), so a new rpc is closed until it is given its scope.
pub const RPC_SCOPES: &[(&str, Scope)] = &[
    ("GetCustomer", Scope::Read),
    ("ListCustomers", Scope::Read),
    ("GetProduct", Scope::Read),
    ("ListProducts", Scope::Read),
    ("GetPayment", Scope::Read),
    ("ListPayments", Scope::Read),
    ("GetRefund", Scope::Read),
    ("ListRefunds", Scope::Read),
    ("ListPaymentMethods", Scope::Read),
    ("ListWebhookEndpoints", Scope::Read),
    ("GetWebhookEndpoint", Scope::Read),
    ("ListWebhookDeliveries", Scope::Read),
    ("ListDisputes", Scope::Read),
    ("GetDispute", Scope::Read),
    ("SetupPaymentMethod", Scope::Write),
    ("DetachPaymentMethod", Scope::Write),
    ("CreateCustomer", Scope::Write),
    ("UpdateCustomer", Scope::Write),
    ("CreatePayment", Scope::Write),
    ("CapturePayment", Scope::Write),
    ("CancelPayment", Scope::Write),
    ("RefundPayment", Scope::Refund),
    ("SubmitDisputeEvidence", Scope::Write),
    ("AcceptDispute", Scope::Refund),
    ("CreateProduct", Scope::Admin),
    ("AddPrice", Scope::Admin),
    ("DeactivateProduct", Scope::Admin),
    ("DeactivatePrice", Scope::Admin),
    ("CreateWebhookEndpoint", Scope::Admin),
    ("UpdateWebhookEndpoint", Scope::Admin),
    ("DeleteWebhookEndpoint", Scope::Admin),
    ("RollWebhookEndpointSecret", Scope::Admin),
    ("RedeliverWebhook", Scope::Admin),
];

/// The scope `rpc` needs.
pub fn needed(rpc: &str) -> Scope {
    RPC_SCOPES.iter().find(|(name, _)| *name == rpc).map_or(Scope::Admin, |(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_grants_everything_every_scope_grants_read_and_nothing_else_is_granted() {
        for s in Scope::ALL {
            assert!(Scope::Admin.grants(s));
            assert!(s.grants(Scope::Read));
            assert!(s.grants(s));
        }
        assert!(!Scope::Read.grants(Scope::Write));
        assert!(!Scope::Write.grants(Scope::Refund));
        assert!(!Scope::Refund.grants(Scope::Write));
        assert!(!Scope::Write.grants(Scope::Admin));
    }

    #[test]
    fn every_rpc_of_the_api_is_given_its_scope_and_an_unknown_one_needs_admin() {
        for route in crate::http::gateway::ROUTES.iter().filter(|r| !r.public) {
            assert!(RPC_SCOPES.iter().any(|(name, _)| *name == route.rpc), "{} has no scope", route.rpc);
        }
        assert_eq!(needed("SomethingNew"), Scope::Admin);
        assert_eq!(needed("RefundPayment"), Scope::Refund);
    }
}
