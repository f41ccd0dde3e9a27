//! The customer's e-mail for an event: three templates per event type,
//! `<type>.subject`, `<type>.txt` and `<type>.html` (minijinja; HTML is
//! escaped automatically), built into the binary from `templates/mail/` and
//! overridable file by file from `MAIL_TEMPLATES` (a directory).
//!
//! A template sees `event` (the whole envelope), `customer`, `payment`,
//! `refund`, `dispute` (each absent when the event has none), `action_url`
//! (`MAIL_ACTION_URL` for the payment, when set) and the filter
//! `money(currency)`: `payment.amount|money(payment.currency)` gives
//! `1,234.56 USD` or `150,000 JPY`, following the currency's decimals.

use super::mailer::Mail;
use crate::domain::{
    event::{Event, EventType},
    money::{Currency, display_amount},
};
use minijinja::{Environment, UndefinedBehavior, Value, value::Serde};
use std::path::{Path, PathBuf};

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/mail/", $name)))),*]
    };
}

/// The built-in templates.
const BUILT_IN: &[(&str, &str)] = embedded!(
    "layout.html",
    "payment.authorized.subject",
    "payment.authorized.txt",
    "payment.authorized.html",
    "payment.succeeded.subject",
    "payment.succeeded.txt",
    "payment.succeeded.html",
    "payment.captured.subject",
    "payment.captured.txt",
    "payment.captured.html",
    "payment.failed.subject",
    "payment.failed.txt",
    "payment.failed.html",
    "payment.canceled.subject",
    "payment.canceled.txt",
    "payment.canceled.html",
    "payment.refunded.subject",
    "payment.refunded.txt",
    "payment.refunded.html",
    "refund.failed.subject",
    "refund.failed.txt",
    "refund.failed.html",
    "dispute.created.subject",
    "dispute.created.txt",
    "dispute.created.html",
    "customer.created.subject",
    "customer.created.txt",
    "customer.created.html",
);

pub struct Templates {
    env: Environment<'static>,
    /// `MAIL_ACTION_URL`: where a customer confirms a payment.
    action_url: Option<String>,
}

fn money(amount: i64, currency: String) -> String {
    match Currency::parse(&currency) {
        Ok(c) => display_amount(amount, c),
        Err(_) => format!("{amount} {}", currency.to_uppercase()),
    }
}

impl Templates {
    /// The built-in templates, each replaced by the file of the same name in
    /// `dir` if there is one.
    pub fn new(dir: Option<&Path>) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("money", money);
        let dir: Option<PathBuf> = dir.map(Path::to_path_buf);
        env.set_loader(move |name| {
            if let Some(d) = &dir {
                let file = d.join(name);
                if !name.contains("..") && file.is_file() {
                    return std::fs::read_to_string(&file).map(Some).map_err(|e| {
                        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("reading {name}: {e}"))
                    });
                }
            }
            Ok(BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, t)| t.to_string()))
        });
        Templates { env, action_url: None }
    }

    /// The shop's page where a customer confirms a payment (`{paymentID}`
    /// replaced): `action_url` in the templates.
    pub fn with_action_url(mut self, url: Option<String>) -> Self {
        self.action_url = url;
        self
    }

    /// Checks that every type in `types` has its three templates and that
    /// they compile, so a mistake stops the notifier at start-up.
    pub fn check(&self, types: &[EventType]) -> Result<(), String> {
        for t in types {
            for ext in ["subject", "txt", "html"] {
                let name = format!("{t}.{ext}");
                self.env.get_template(&name).map_err(|e| format!("mail template {name}: {e:#}"))?;
            }
        }
        Ok(())
    }

    /// Renders the mail of `event`.
    pub fn render(&self, event: &Event) -> Result<Mail, String> {
        let ctx = minijinja::context! {
            event => Value::from(Serde(event)),
            customer => Value::from(Serde(&event.data.customer)),
            payment => Value::from(Serde(&event.data.payment)),
            refund => Value::from(Serde(&event.data.refund)),
            dispute => Value::from(Serde(&event.data.dispute)),
            action_url => match (&self.action_url, &event.data.payment) {
                (Some(url), Some(p)) => Some(url.replace("{paymentID}", &p.id.to_string())),
                _ => None,
            },
        };
        let render = |ext: &str| -> Result<String, String> {
            let name = format!("{}.{ext}", event.kind);
            let t = self.env.get_template(&name).map_err(|e| format!("mail template {name}: {e:#}"))?;
            t.render(&ctx).map_err(|e| format!("rendering {name}: {e:#}"))
        };
        Ok(Mail {
            to: event.recipient().to_string(),
            subject: render("subject")?.lines().map(str::trim).collect::<Vec<_>>().join(" ").trim().to_string(),
            text: render("txt")?,
            html: render("html")?,
            message_id: format!("{}@amazing-payments", event.id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{CustomerSnapshot, EventData, PaymentSnapshot};

    fn captured(amount: i64, currency: &str, name: &str) -> Event {
        let payment = PaymentSnapshot {
            id: 42,
            status: "succeeded".into(),
            previous_status: Some("authorized".into()),
            amount,
            currency: currency.into(),
            amount_capturable: 0,
            amount_captured: amount,
            amount_refunded: 0,
            capture_method: "manual".into(),
            description: Some("Blue <mug>".into()),
            metadata: Default::default(),
            receipt_email: None,
            stripe_payment_intent_id: Some("pi_1".into()),
            failure_code: None,
            failure_message: None,
            cancellation_reason: None,
            created_at: chrono::Utc::now(),
        };
        let customer = CustomerSnapshot { id: 7, name: Some(name.into()), email: "ada@example.com".into() };
        Event::new(
            EventType::PaymentCaptured,
            "api",
            EventData { customer, payment: Some(payment), refund: None, dispute: None },
        )
    }

    #[test]
    fn every_mailable_type_has_its_three_templates() {
        let t = Templates::new(None);
        t.check(&EventType::MAILED_BY_DEFAULT).unwrap();
        t.check(&[EventType::DisputeCreated, EventType::CustomerCreated]).unwrap();
        assert!(t.check(&[EventType::PaymentProcessing]).unwrap_err().contains("payment.processing.subject"));
    }

    #[test]
    fn a_captured_payment_mail_states_the_amount_in_the_currencys_own_decimals() {
        let t = Templates::new(None);
        let yen = t.render(&captured(150000, "jpy", "Ada")).unwrap();
        assert!(yen.subject.contains("150,000 JPY"), "{}", yen.subject);
        assert!(yen.text.contains("150,000 JPY") && !yen.text.contains("1,500.00"), "{}", yen.text);
        let usd = t.render(&captured(123456, "usd", "Ada")).unwrap();
        assert!(usd.html.contains("1,234.56 USD"), "{}", usd.html);
        assert_eq!(usd.to, "ada@example.com");
    }

    #[test]
    fn html_mails_escape_what_customers_typed() {
        let mail = Templates::new(None).render(&captured(100, "usd", "<script>x</script>")).unwrap();
        assert!(!mail.html.contains("<script>") && mail.html.contains("&lt;script&gt;"), "{}", mail.html);
        assert!(!mail.html.contains("<mug>"));
    }

    /// `captured` made a payment.failed with `failure_code`.
    fn failed(failure_code: &str) -> Event {
        let mut e = captured(4200, "eur", "Ada");
        e.kind = EventType::PaymentFailed.as_str().into();
        let p = e.data.payment.as_mut().unwrap();
        p.status = "failed".into();
        p.failure_code = Some(failure_code.into());
        p.failure_message = Some("Your card was declined.".into());
        e
    }

    #[test]
    fn a_charge_the_bank_wants_the_customer_for_mails_a_link_back_to_confirm_it() {
        let t = Templates::new(None).with_action_url(Some("https://shop.example/pay/{paymentID}?again=1".into()));
        let mail = t.render(&failed("authentication_required")).unwrap();
        assert_eq!(mail.subject, "Please confirm your payment of 42.00 EUR with your bank");
        assert!(mail.text.contains("Confirm it here: https://shop.example/pay/42?again=1"), "{}", mail.text);
        assert!(mail.text.contains("Nothing has been charged yet"), "{}", mail.text);
        // Escaped as HTML escapes attributes (a browser reads it back as is).
        assert!(
            mail.html.contains(r#"<a href="https:&#x2f;&#x2f;shop.example&#x2f;pay&#x2f;42?again=1">"#),
            "{}",
            mail.html
        );
        assert!(!mail.text.contains("declined"), "{}", mail.text);
        // Without MAIL_ACTION_URL the customer is asked back to the shop.
        let plain = Templates::new(None).render(&failed("authentication_required")).unwrap();
        assert!(plain.text.contains("come back to the shop"), "{}", plain.text);
        // Any other decline reads as a decline.
        let declined = t.render(&failed("card_declined")).unwrap();
        assert!(
            declined.subject.contains("was declined") && !declined.text.contains("shop.example"),
            "{}",
            declined.text
        );
    }

    #[test]
    fn a_template_in_the_override_directory_replaces_the_built_in_one() {
        let dir = std::env::temp_dir().join(format!("ap-templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("payment.captured.subject"), "Paid: {{ payment.amount|money(payment.currency) }}")
            .unwrap();
        let mail = Templates::new(Some(&dir)).render(&captured(2500, "eur", "Ada")).unwrap();
        assert_eq!(mail.subject, "Paid: 25.00 EUR");
        assert!(mail.text.contains("25.00 EUR"), "the other templates stay built in");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
