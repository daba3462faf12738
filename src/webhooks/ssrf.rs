//! SSRF guard for webhook destinations.
//!
//! A webhook URL is checked twice: when it is registered
//! ([`parse_url`] then [`check_destination`]), and at every delivery, where
//! the HTTP client resolves names through [`GuardedResolver`] so that a name
//! re-pointed at an internal address after registration (DNS rebinding) is
//! refused before any connection is made.
//!
//! The resolver only sees names: the delivery client must also refuse
//! redirects (a `Location` may be an IP literal) and ignore proxy settings,
//! and IP-literal URLs are judged once, by [`check_destination`].
//!
//! [`blocked_reason`] is the single judge of addresses: loopback, private,
//! link-local, cloud metadata, multicast, reserved and documentation ranges,
//! and IPv6 addresses embedding any of those IPv4 addresses.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Longest webhook URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Reason given for the cloud instance metadata endpoints.
const CLOUD_METADATA: &str = "cloud metadata address";

/// Blocked IPv4 ranges as (network, prefix length, reason). The first match
/// wins, so single addresses come before the ranges holding them.
const BLOCKED_V4: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 32, "unspecified address"),
    ([255, 255, 255, 255], 32, "broadcast address"),
    ([169, 254, 169, 254], 32, CLOUD_METADATA),
    ([0, 0, 0, 0], 8, "\"this network\" address (0.0.0.0/8)"),
    ([127, 0, 0, 0], 8, "loopback address"),
    ([10, 0, 0, 0], 8, "private address"),
    ([172, 16, 0, 0], 12, "private address"),
    ([192, 168, 0, 0], 16, "private address"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT address"),
    ([169, 254, 0, 0], 16, "link-local address"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignment (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation address"),
    ([198, 51, 100, 0], 24, "documentation address"),
    ([203, 0, 113, 0], 24, "documentation address"),
    ([198, 18, 0, 0], 15, "benchmarking address"),
    ([224, 0, 0, 0], 4, "multicast address"),
    ([240, 0, 0, 0], 4, "reserved address (240.0.0.0/4)"),
];

/// Blocked IPv6 ranges, as [`BLOCKED_V4`]. Ranges embedding an IPv4 address
/// are handled by [`embedded_ipv4`] before this table is consulted.
const BLOCKED_V6: &[(Ipv6Addr, u32, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified address"),
    (Ipv6Addr::LOCALHOST, 128, "loopback address"),
    // AWS instance metadata over IPv6 (fd00:ec2::254), inside fc00::/7.
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        CLOUD_METADATA,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local address",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local address",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local address",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast address",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64 address",
    ),
];

/// Why a webhook URL or its destination was refused. Messages describe the
/// `url` parameter's problem and are shown to API users as they are.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL_BYTES`].
    #[error("URL is {len} bytes long; the maximum is {max} bytes")]
    TooLong {
        /// Length of the given URL, in bytes.
        len: usize,
        /// [`MAX_URL_BYTES`].
        max: usize,
    },
    /// Not an absolute URL.
    #[error("not a valid absolute URL: {0}")]
    Invalid(#[from] url::ParseError),
    /// Neither `http` nor `https`.
    #[error("URL scheme must be http or https, not \"{0}\"")]
    Scheme(String),
    /// No host to deliver to.
    #[error("URL has no host")]
    MissingHost,
    /// User name or password embedded in the URL.
    #[error("URL must not contain a username or password")]
    Credentials,
    /// A `#fragment`, which is never sent to the server.
    #[error("URL must not contain a fragment (the part after \"#\")")]
    Fragment,
    /// The host is an IP address that webhooks may not reach.
    #[error("URL host {addr} is not allowed: {reason}")]
    BlockedAddress {
        /// The refused address.
        addr: IpAddr,
        /// Why, from [`blocked_reason`].
        reason: &'static str,
    },
    /// The host name resolves to an address that webhooks may not reach.
    #[error("URL host \"{host}\" resolves to {addr}, which is not allowed: {reason}")]
    BlockedHost {
        /// The host name as given.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// Why, from [`blocked_reason`].
        reason: &'static str,
    },
    /// The host name could not be resolved.
    #[error("URL host \"{host}\" could not be resolved: {error}")]
    Resolve {
        /// The host name as given.
        host: String,
        /// The resolver's error.
        error: String,
    },
    /// The host name resolved to no address at all.
    #[error("URL host \"{host}\" did not resolve to any address")]
    NoAddresses {
        /// The host name as given.
        host: String,
    },
}

/// Why webhooks must not reach `ip`, or `None` for a public address.
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::/48`) IPv6 addresses are
/// judged by the IPv4 address they embed.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => blocked_v4(v4),
            None => blocked_v6(v6),
        },
    }
}

/// [`blocked_reason`] for an IPv4 address.
fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    BLOCKED_V4
        .iter()
        .find(|(net, len, _)| prefix_matches(bits, u32::from_be_bytes(*net), *len))
        .map(|(_, _, reason)| *reason)
}

/// [`blocked_reason`] for an IPv6 address embedding no IPv4 address.
fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    BLOCKED_V6
        .iter()
        .find(|(net, len, _)| prefix_matches_v6(bits, u128::from(*net), *len))
        .map(|(_, _, reason)| *reason)
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible, NAT64 or
/// 6to4 IPv6 address. `::` and `::1` are not IPv4-compatible addresses.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    const MAPPED: u128 = 0xffff << 32;
    const NAT64: u128 = 0x0064_ff9b << 96;
    const SIX_TO_FOUR: u128 = 0x2002 << 112;
    let bits = u128::from(ip);
    // The low 32 bits, which is what the cast keeps.
    let low = Ipv4Addr::from(bits as u32);
    if prefix_matches_v6(bits, MAPPED, 96) || prefix_matches_v6(bits, NAT64, 96) {
        return Some(low);
    }
    if prefix_matches_v6(bits, 0, 96) && bits > 1 {
        return Some(low);
    }
    if prefix_matches_v6(bits, SIX_TO_FOUR, 16) {
        // Bits 16..48 of the address, which is what the cast keeps.
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether the first `len` bits of `addr` and `net` agree (IPv4).
fn prefix_matches(addr: u32, net: u32, len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    addr & mask == net & mask
}

/// Whether the first `len` bits of `addr` and `net` agree (IPv6).
fn prefix_matches_v6(addr: u128, net: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    addr & mask == net & mask
}

/// Parses and validates a webhook URL: at most [`MAX_URL_BYTES`] bytes, an
/// absolute `http` or `https` URL with a host, without credentials or
/// fragment. Says nothing about where the host points: see
/// [`check_destination`].
pub fn parse_url(raw: &str) -> Result<Url, UrlError> {
    if raw.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong {
            len: raw.len(),
            max: MAX_URL_BYTES,
        });
    }
    let url = Url::parse(raw)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    if url.host().is_none() {
        return Err(UrlError::MissingHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    Ok(url)
}

/// Refuses a destination webhooks must not reach: an IP-literal host that
/// [`blocked_reason`] refuses, or a host name that fails to resolve,
/// resolves to nothing, or resolves to ANY refused address. With
/// `allow_private` nothing is checked and nothing is resolved.
pub async fn check_destination(url: &Url, allow_private: bool) -> Result<(), UrlError> {
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(0);
    match url.host() {
        None => Err(UrlError::MissingHost),
        Some(Host::Ipv4(v4)) => check_literal(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => check_literal(IpAddr::V6(v6)),
        Some(Host::Domain(host)) => resolve_checked(host, port).await.map(drop),
    }
}

/// [`check_destination`] for an IP-literal host.
fn check_literal(addr: IpAddr) -> Result<(), UrlError> {
    match blocked_reason(addr) {
        Some(reason) => Err(UrlError::BlockedAddress { addr, reason }),
        None => Ok(()),
    }
}

/// Resolves `host` and returns its addresses, refusing a failed or empty
/// resolution and any refused address.
async fn resolve_checked(host: &str, port: u16) -> Result<Vec<SocketAddr>, UrlError> {
    let addrs = resolve(host, port).await?;
    check_resolved(host, &addrs)?;
    Ok(addrs)
}

/// Resolves `host`, refusing a failed or empty resolution.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, UrlError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| UrlError::Resolve {
            host: host.to_owned(),
            error: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(UrlError::NoAddresses {
            host: host.to_owned(),
        });
    }
    Ok(addrs)
}

/// Refuses `addrs` if any of them is blocked, naming the first such.
fn check_resolved(host: &str, addrs: &[SocketAddr]) -> Result<(), UrlError> {
    let blocked = addrs
        .iter()
        .find_map(|a| blocked_reason(a.ip()).map(|reason| (a.ip(), reason)));
    match blocked {
        Some((addr, reason)) => Err(UrlError::BlockedHost {
            host: host.to_owned(),
            addr,
            reason,
        }),
        None => Ok(()),
    }
}

/// DNS resolver for the delivery client
/// (`reqwest::ClientBuilder::dns_resolver`): resolves with the system
/// resolver and, unless `allow_private`, fails the request when any address
/// of the name is blocked, so a rebinding name cannot reach internal
/// addresses after its URL was accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver {
    /// Skip the address checks (for development against local receivers).
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let addrs = if allow_private {
                resolve(host, 0).await
            } else {
                resolve_checked(host, 0).await
            };
            addrs
                .map(|addrs| Box::new(addrs.into_iter()) as Addrs)
                .map_err(|e| Box::new(e) as Box<dyn StdError + Send + Sync>)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    #[test]
    fn blocked_addresses_and_their_reasons() {
        let table: &[(&str, &str)] = &[
            ("0.0.0.0", "unspecified address"),
            ("0.1.2.3", "\"this network\" address (0.0.0.0/8)"),
            ("0.255.255.255", "\"this network\" address (0.0.0.0/8)"),
            ("127.0.0.1", "loopback address"),
            ("127.255.255.254", "loopback address"),
            ("10.0.0.1", "private address"),
            ("10.255.255.255", "private address"),
            ("172.16.0.1", "private address"),
            ("172.31.255.255", "private address"),
            ("192.168.0.1", "private address"),
            ("192.168.255.255", "private address"),
            ("100.64.0.1", "carrier-grade NAT address"),
            ("100.127.255.255", "carrier-grade NAT address"),
            ("100.100.100.200", "carrier-grade NAT address"),
            ("169.254.0.1", "link-local address"),
            ("169.254.169.253", "link-local address"),
            ("169.254.169.254", "cloud metadata address"),
            ("192.0.0.1", "IETF protocol assignment (192.0.0.0/24)"),
            ("192.0.0.255", "IETF protocol assignment (192.0.0.0/24)"),
            ("192.0.2.1", "documentation address"),
            ("198.51.100.7", "documentation address"),
            ("203.0.113.255", "documentation address"),
            ("198.18.0.1", "benchmarking address"),
            ("198.19.255.255", "benchmarking address"),
            ("224.0.0.1", "multicast address"),
            ("239.255.255.250", "multicast address"),
            ("240.0.0.1", "reserved address (240.0.0.0/4)"),
            ("255.255.255.254", "reserved address (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast address"),
            ("::", "unspecified address"),
            ("::1", "loopback address"),
            ("fe80::1", "link-local address"),
            ("febf:ffff::1", "link-local address"),
            ("fec0::1", "site-local address"),
            ("fc00::1", "unique local address"),
            ("fdff:ffff::1", "unique local address"),
            ("fd00:ec2::254", "cloud metadata address"),
            ("fd00:ec2::253", "unique local address"),
            ("ff02::1", "multicast address"),
            ("ff0e::1", "multicast address"),
            ("2001:db8::1", "documentation address"),
            ("2001:db8:ffff::1", "documentation address"),
            ("64:ff9b:1::1", "local-use NAT64 address"),
            // IPv4-mapped.
            ("::ffff:127.0.0.1", "loopback address"),
            ("::ffff:10.1.2.3", "private address"),
            ("::ffff:169.254.169.254", "cloud metadata address"),
            ("::ffff:0.0.0.0", "unspecified address"),
            ("::ffff:255.255.255.255", "broadcast address"),
            // IPv4-compatible (deprecated).
            ("::127.0.0.1", "loopback address"),
            ("::192.168.1.1", "private address"),
            ("::0.0.0.2", "\"this network\" address (0.0.0.0/8)"),
            // NAT64.
            ("64:ff9b::127.0.0.1", "loopback address"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata address"),
            ("64:ff9b::172.16.0.1", "private address"),
            // 6to4.
            ("2002:7f00:1::1", "loopback address"),
            ("2002:a9fe:a9fe::", "cloud metadata address"),
        ];
        for (addr, reason) in table {
            assert_eq!(blocked_reason(ip(addr)), Some(*reason), "{addr}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let table = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.101.1",
            "203.0.114.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:db9::1",
            "fbff:ffff::1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::8.8.8.8",
            "64:ff9b:2::1",
            "2002:0808:0808::1",
        ];
        for addr in table {
            assert_eq!(blocked_reason(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn valid_urls_parse() {
        for raw in [
            "https://example.com/hook",
            "http://example.com:8080/a/b?c=d&e=f",
            "https://93.184.216.34/",
            "https://[2606:4700:4700::1111]:8443/x",
            "HTTPS://EXAMPLE.COM/",
        ] {
            assert!(parse_url(raw).is_ok(), "{raw}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES - 20));
        assert_eq!(long.len(), MAX_URL_BYTES);
        assert!(parse_url(&long).is_ok());
    }

    #[test]
    fn invalid_urls_say_what_is_wrong() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        let table: &[(&str, &str)] = &[
            (&long, "URL is 2068 bytes long; the maximum is 2048 bytes"),
            ("", "not a valid absolute URL: relative URL without a base"),
            (
                "/hook",
                "not a valid absolute URL: relative URL without a base",
            ),
            ("http://", "not a valid absolute URL: empty host"),
            (
                "http://exa mple.com/",
                "not a valid absolute URL: invalid international domain name",
            ),
            (
                "ftp://example.com/",
                "URL scheme must be http or https, not \"ftp\"",
            ),
            (
                "file:///etc/passwd",
                "URL scheme must be http or https, not \"file\"",
            ),
            (
                "mailto:a@example.com",
                "URL scheme must be http or https, not \"mailto\"",
            ),
            (
                "https://user@example.com/",
                "URL must not contain a username or password",
            ),
            (
                "https://:pw@example.com/",
                "URL must not contain a username or password",
            ),
            (
                "https://u:pw@example.com/",
                "URL must not contain a username or password",
            ),
            (
                "https://example.com/#frag",
                "URL must not contain a fragment (the part after \"#\")",
            ),
            (
                "https://example.com/#",
                "URL must not contain a fragment (the part after \"#\")",
            ),
        ];
        for (raw, message) in table {
            let error = parse_url(raw).expect_err(raw);
            assert_eq!(error.to_string(), *message, "{raw}");
        }
    }

    async fn check(raw: &str, allow_private: bool) -> Result<(), UrlError> {
        check_destination(&parse_url(raw).expect("test URL parses"), allow_private).await
    }

    #[tokio::test]
    async fn internal_literals_are_refused() {
        let table: &[(&str, &str)] = &[
            (
                "http://127.0.0.1:1/",
                "URL host 127.0.0.1 is not allowed: loopback address",
            ),
            (
                "http://[::1]/",
                "URL host ::1 is not allowed: loopback address",
            ),
            (
                "http://169.254.169.254/latest",
                "URL host 169.254.169.254 is not allowed: cloud metadata address",
            ),
            (
                "http://[::ffff:169.254.169.254]/",
                "URL host ::ffff:169.254.169.254 is not allowed: cloud metadata address",
            ),
            // WHATWG parsing turns these into 127.0.0.1.
            (
                "http://2130706433/",
                "URL host 127.0.0.1 is not allowed: loopback address",
            ),
            (
                "http://0x7f.1/",
                "URL host 127.0.0.1 is not allowed: loopback address",
            ),
        ];
        for (raw, message) in table {
            let error = check(raw, false).await.expect_err(raw);
            assert_eq!(error.to_string(), *message, "{raw}");
            assert!(check(raw, true).await.is_ok(), "{raw} with allow_private");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused() {
        let error = check("http://localhost/", false)
            .await
            .expect_err("localhost is loopback");
        match error {
            UrlError::BlockedHost { host, addr, reason } => {
                assert_eq!(host, "localhost");
                assert!(addr.is_loopback(), "{addr}");
                assert_eq!(reason, "loopback address");
            }
            other => panic!("expected BlockedHost, got {other:?}"),
        }
        assert!(check("http://localhost/", true).await.is_ok());
    }

    #[tokio::test]
    async fn unresolvable_names_are_refused() {
        let error = check("http://name.invalid/", false)
            .await
            .expect_err(".invalid never resolves");
        assert!(
            error
                .to_string()
                .starts_with("URL host \"name.invalid\" could not be resolved"),
            "{error}"
        );
        assert!(check("http://name.invalid/", true).await.is_ok());
    }

    #[tokio::test]
    async fn public_literals_are_accepted_without_network() {
        assert!(check("http://93.184.216.34/", false).await.is_ok());
        assert!(check("https://[2606:4700:4700::1111]/", false)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn guarded_resolver_refuses_internal_names() {
        let name = Name::from_str("localhost").expect("valid name");
        let error = GuardedResolver::default()
            .resolve(name)
            .await
            .err()
            .expect("localhost is refused");
        assert!(
            error
                .to_string()
                .starts_with("URL host \"localhost\" resolves to "),
            "{error}"
        );
        assert!(error
            .to_string()
            .ends_with("which is not allowed: loopback address"));
    }

    #[tokio::test]
    async fn guarded_resolver_allows_private_when_asked() {
        let name = Name::from_str("localhost").expect("valid name");
        let addrs: Vec<SocketAddr> = GuardedResolver {
            allow_private: true,
        }
        .resolve(name)
        .await
        .expect("localhost resolves")
        .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn client_with_guarded_resolver_never_connects_to_internal_names() {
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(GuardedResolver::default()))
            .no_proxy()
            .build()
            .expect("client builds");
        let error = client
            .get("http://localhost:1/")
            .send()
            .await
            .expect_err("refused by the resolver");
        let mut source: Option<&(dyn StdError + 'static)> = Some(&error);
        let mut found = false;
        while let Some(e) = source {
            found |= e.downcast_ref::<UrlError>().is_some();
            source = e.source();
        }
        assert!(found, "{error:?}");
    }
}
