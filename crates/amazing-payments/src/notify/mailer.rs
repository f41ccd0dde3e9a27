//! Sending e-mail: SMTP (`SMTP_URL`) or, when it is unset, the `log`
//! transport for development, which logs that a mail would go (its
//! Message-ID, which names the event, and its size) but never the address,
//! the subject or the body, which carry personal data.
//!
//! `SMTP_URL` is `smtp://[user:pass@]host[:port][?tls=none|starttls|tls]`
//! or `smtps://...` (TLS from the first byte, port 465). Without `tls=`,
//! `smtp://` uses STARTTLS when credentials are given (a password is never
//! sent in the clear unless `tls=none` says so) and plain SMTP otherwise,
//! as a local relay such as `smtp://127.0.0.1:2525` needs.

use crate::secret::Secret;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use std::{fmt, time::Duration};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Tls,
}

/// `SMTP_URL`, parsed. Its password is a [`Secret`].
#[derive(Clone, PartialEq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = if self.user.is_some() { "[user]@" } else { "" };
        let tls = match self.tls {
            TlsMode::None => "no TLS",
            TlsMode::StartTls => "STARTTLS",
            TlsMode::Tls => "TLS",
        };
        write!(f, "smtp://{user}{}:{} ({tls})", self.host, self.port)
    }
}

impl SmtpSettings {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url =
            url::Url::parse(raw.trim()).map_err(|_| "is not a URL such as smtp://user:pass@host:587".to_string())?;
        let implicit = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => return Err(format!("scheme {other:?}: use smtp:// or smtps://")),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("has no host")?.to_string();
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = url.password().map(|p| Secret::new(decode(p)));
        let mut tls = None;
        for (k, v) in url.query_pairs() {
            match (k.as_ref(), v.as_ref()) {
                ("tls", "none") => tls = Some(TlsMode::None),
                ("tls", "starttls") => tls = Some(TlsMode::StartTls),
                ("tls", "tls") => tls = Some(TlsMode::Tls),
                ("tls", other) => return Err(format!("tls={other:?}: use none, starttls or tls")),
                (other, _) => return Err(format!("unknown parameter {other:?} (only tls=)")),
            }
        }
        let tls = match (implicit, tls) {
            (true, Some(TlsMode::None | TlsMode::StartTls)) => return Err("smtps:// is TLS: drop tls=".into()),
            (true, _) => TlsMode::Tls,
            (false, Some(t)) => t,
            (false, None) if user.is_some() => TlsMode::StartTls,
            (false, None) => TlsMode::None,
        };
        let port = url.port().unwrap_or(match tls {
            TlsMode::Tls => 465,
            TlsMode::StartTls => 587,
            TlsMode::None => 25,
        });
        Ok(SmtpSettings { host, port, tls, user, password })
    }
}

/// A rendered mail.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// `Message-ID` without the brackets: the same for every attempt at one
    /// event, so a mailbox can tell a repeat.
    pub message_id: String,
}

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt (connection, 4xx).
    #[error("{0}")]
    Transient(String),
    /// No attempt will do (5xx, an address that does not parse).
    #[error("{0}")]
    Permanent(String),
}

/// Sends mails from one address, over SMTP or (without it) to the log.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    smtp: Option<Smtp>,
}

#[derive(Clone)]
struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    describe: String,
}

impl Mailer {
    /// A mailer from `from`; over SMTP, up to `connections` kept open.
    pub fn new(smtp: Option<&SmtpSettings>, from: &str, timeout: Duration, connections: u32) -> Result<Self, String> {
        let from: Mailbox = from.parse().map_err(|e| format!("MAIL_FROM {from:?} is not an address: {e}"))?;
        let Some(s) = smtp else {
            return Ok(Mailer { from, smtp: None });
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(connections.max(1)));
        let tls = || TlsParameters::new(s.host.clone()).map_err(|e| format!("SMTP TLS for {}: {e}", s.host));
        b = match s.tls {
            TlsMode::None => b.tls(Tls::None),
            TlsMode::StartTls => b.tls(Tls::Required(tls()?)),
            TlsMode::Tls => b.tls(Tls::Wrapper(tls()?)),
        };
        if let (Some(u), Some(p)) = (&s.user, &s.password) {
            b = b.credentials(Credentials::new(u.clone(), p.expose().to_string()));
        }
        Ok(Mailer { from, smtp: Some(Smtp { transport: b.build(), describe: format!("{s:?}") }) })
    }

    pub fn describe(&self) -> String {
        match &self.smtp {
            Some(s) => s.describe.clone(),
            None => "the log transport (SMTP_URL unset): mails are logged, not sent".into(),
        }
    }

    pub async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        let to: Mailbox =
            mail.to.parse().map_err(|_| SendError::Permanent("the recipient is not an e-mail address".into()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&mail.subject)
            .message_id(Some(format!("<{}>", mail.message_id)))
            .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
            .map_err(|e| SendError::Permanent(format!("the mail could not be built: {e}")))?;
        match &self.smtp {
            None => {
                // The subject and body carry the customer's name and the
                // address is personal data: neither is logged.
                tracing::info!(
                    message_id = %mail.message_id,
                    text_bytes = mail.text.len(),
                    html_bytes = mail.html.len(),
                    "mail (log transport: not sent)"
                );
                Ok(())
            }
            Some(Smtp { transport, .. }) => match transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => {
                    Err(SendError::Permanent(without_addresses(&format!("SMTP refused the mail: {e}"))))
                }
                Err(e) => Err(SendError::Transient(without_addresses(&format!("SMTP: {e}")))),
            },
        }
    }
}

/// `text` with every e-mail address replaced by `[address]`: an SMTP
/// server's answer often quotes the recipient, and errors are logged and
/// kept (personal data is not).
pub fn without_addresses(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let local = |c: char| c.is_alphanumeric() || "._%+-'".contains(c);
    let domain = |c: char| c.is_alphanumeric() || ".-".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            let mut start = i;
            while start > 0 && local(chars[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < chars.len() && domain(chars[end]) {
                end += 1;
            }
            if start < i && end > i + 1 {
                let kept = out.chars().count() - (i - start);
                out = out.chars().take(kept).collect();
                out.push_str("[address]");
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_answers_lose_the_addresses_they_quote() {
        assert_eq!(
            without_addresses("permanent error (550): 5.1.1 <ada.l+shop@mail.example.com>: Recipient address rejected"),
            "permanent error (550): 5.1.1 <[address]>: Recipient address rejected"
        );
        assert_eq!(without_addresses("a@b and c@d.e"), "[address] and [address]");
        assert_eq!(without_addresses("no address @ here"), "no address @ here");
    }

    #[test]
    fn a_plain_local_relay_needs_no_tls_and_credentials_imply_starttls() {
        let local = SmtpSettings::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!((local.host.as_str(), local.port, local.tls, local.user), ("127.0.0.1", 2525, TlsMode::None, None));
        let auth = SmtpSettings::parse("smtp://me%40shop.com:p%3Ass@mail.example.com").unwrap();
        assert_eq!((auth.port, auth.tls, auth.user.as_deref()), (587, TlsMode::StartTls, Some("me@shop.com")));
        assert_eq!(auth.password.unwrap().expose(), "p:ss");
        assert_eq!(SmtpSettings::parse("smtps://mail.example.com").unwrap().port, 465);
        assert_eq!(SmtpSettings::parse("smtp://h:25?tls=tls").unwrap().tls, TlsMode::Tls);
    }

    #[test]
    fn bad_smtp_urls_say_what_is_wrong_and_never_show_the_password() {
        assert!(SmtpSettings::parse("http://host").unwrap_err().contains("scheme"));
        assert!(SmtpSettings::parse("smtp://host?tls=maybe").unwrap_err().contains("tls="));
        assert!(SmtpSettings::parse("smtp://host?verify=no").unwrap_err().contains("verify"));
        let s = SmtpSettings::parse("smtp://u:hunter22@host").unwrap();
        assert!(!format!("{s:?}").contains("hunter22"));
    }
}
