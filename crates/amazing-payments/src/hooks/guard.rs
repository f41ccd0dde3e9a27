//! Where deliveries may go. A webhook URL is the caller's text, and the
//! deliverer sends from inside the operator's network: a URL naming a
//! loopback, private or link-local address (the database, a cloud's
//! metadata service at 169.254.169.254) would turn the service into a way
//! in (server-side request forgery). So an endpoint's URL is checked when
//! it is registered, and every delivery checks again the addresses its
//! host name resolves to at that moment and connects only to those it
//! checked (a name can be pointed elsewhere after registration). Redirects
//! are not followed. `WEBHOOK_ALLOW_PRIVATE` lifts this, for development.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::{Host, Url};

/// Whether an address is on the public Internet: not loopback, private,
/// link-local, shared (carrier NAT), multicast, reserved or for
/// documentation, nor an IPv6 form of one of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    // SIIT's IPv4-translated form (::ffff:0:a.b.c.d).
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[0] == 0x2001 && s[1] == 0)
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || s[0..6] == [0, 0, 0, 0, 0, 0])
}

/// Why a URL cannot be an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not an absolute http(s) URL, or one with a user name or password.
    Invalid(&'static str),
    /// It names, or its host resolves to, an address deliveries may not reach.
    NotAllowed(String),
}

/// Checks an endpoint URL as given: its form, and the address it names if
/// it is an address, or the addresses its host resolves to now (a name
/// that does not resolve yet is let through: deliveries check it again).
pub async fn check_url(raw: &str, allow_private: bool) -> Result<Url, Refusal> {
    let url = Url::parse(raw).map_err(|_| Refusal::Invalid("url is not an absolute URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(Refusal::Invalid("url must be https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Invalid("url must not hold a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(Refusal::Invalid("url must not have a fragment"));
    }
    if allow_private {
        return Ok(url);
    }
    match url.host() {
        None => Err(Refusal::Invalid("url has no host")),
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => match literal_refused(&url) {
            Some(why) => Err(Refusal::NotAllowed(why)),
            None => Ok(url),
        },
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal") {
                return Err(Refusal::NotAllowed(format!("{name} is a local name")));
            }
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::time::timeout(LOOKUP_WITHIN, tokio::net::lookup_host((name.as_str(), port))).await;
            if let Ok(Ok(addrs)) = lookup {
                for a in addrs {
                    // Which address is not told: that would map the
                    // operator's private names for whoever asks.
                    if !is_public(a.ip()) {
                        return Err(Refusal::NotAllowed(format!("{name} resolves to a non-public address")));
                    }
                }
            }
            Ok(url)
        }
    }
}

/// How long registration waits for a name to resolve (a name that does not
/// resolve in time is let through: every delivery checks it again).
const LOOKUP_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolves names for deliveries, keeping only public addresses: the
/// connection goes to an address checked here, never to one the name
/// gives a moment later.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> = if found.is_empty() {
                    format!("{host} has no address").into()
                } else {
                    format!("{host} resolves to no public address: delivery refused").into()
                };
                return Err(e);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a URL's host, an address literal, may not be reached (the resolver
/// never sees those); `None` for a public address or a name.
pub fn literal_refused(url: &Url) -> Option<String> {
    let ip = match url.host()? {
        Host::Ipv4(ip) => IpAddr::V4(ip),
        Host::Ipv6(ip) => IpAddr::V6(ip),
        Host::Domain(_) => return None,
    };
    (!is_public(ip)).then(|| format!("{ip} is not a public address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_private_link_local_and_their_ipv6_forms_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "fec0::1",
            "64:ff9b:1::a",
            "2001::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "172.32.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_url_naming_a_local_place_is_refused_unless_private_addresses_are_allowed() {
        for url in [
            "https://127.0.0.1/hook",
            "https://[::1]:8443/hook",
            "https://10.0.0.5/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost/hook",
            "https://db.localhost/hook",
            "https://0x7f000001/hook",
        ] {
            assert!(matches!(check_url(url, false).await, Err(Refusal::NotAllowed(_))), "{url}");
            assert!(check_url(url, true).await.is_ok(), "{url}");
        }
        for url in
            ["http://example.com/hook", "ftp://example.com", "https://u:p@example.com/", "hook", "https://a.com/#x"]
        {
            assert!(matches!(check_url(url, false).await, Err(Refusal::Invalid(_))), "{url}");
        }
        assert!(check_url("https://hooks.example.com/in", false).await.is_ok());
        assert!(check_url("http://127.0.0.1:9/in", true).await.is_ok());
    }
}
