//! Bindings: `SCHEME://HOST:PORT`, the address half of an HTTP.sys URL prefix.
//!
//! The path half of a prefix lives in a site's `app` list, so a binding may carry at most a
//! trailing "/". Host names are lower-cased here, once, so routing compares them as bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Where a site listens: scheme, host category and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    pub scheme: Scheme,
    pub host: BindingHost,
    /// 0 asks the OS for an ephemeral port (tests).
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    /// TLS; the site needs `tls = { cert, key }`.
    Https,
}

/// The host part of a binding, one variant per HTTP.sys host category.
///
/// Routing tries them in the order strong `+`, explicit name, IP, weak `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BindingHost {
    /// `+`: every host name on this port, ahead of any other binding.
    Strong,
    /// `*`: every host name on this port that nothing else matched.
    Weak,
    /// An IPv4 literal or a bracketed IPv6 literal: requests arriving on that address.
    Ip(IpAddr),
    /// A host name, matched against the `Host` header; always lower case.
    Name(String),
}

/// Why a string is not a binding. Each message says what would be valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error(
        "{0:?} is not a binding; expected SCHEME://HOST:PORT with SCHEME http or https, HOST +, *, an IP or a host name"
    )]
    Malformed(String),
    #[error(
        "{0:?} has a path; a binding is SCHEME://HOST:PORT with at most a trailing \"/\" (put URL paths in the site's app list)"
    )]
    Path(String),
    #[error(
        "{text:?} has host {host:?}, which is not a host; expected +, *, an IPv4 address, an IPv6 address in brackets such as [::1], or a host name of letters, digits, '-' and '.'"
    )]
    Host { text: String, host: String },
    #[error(
        "{text:?} has port {port:?}, which is not a port; expected a decimal number from 0 to 65535 without leading zeros"
    )]
    Port { text: String, port: String },
}

impl FromStr for Binding {
    type Err = BindingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || BindingError::Malformed(text.to_owned());
        let (scheme, rest) = text.split_once("://").ok_or_else(malformed)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(malformed()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['?', '#', '@']) || authority.chars().any(char::is_whitespace) {
            return Err(malformed());
        }
        if authority.contains('/') {
            return Err(BindingError::Path(text.to_owned()));
        }
        let (host, port) = split_host_port(authority).ok_or_else(malformed)?;
        let port = parse_port(port).ok_or_else(|| BindingError::Port {
            text: text.to_owned(),
            port: port.to_owned(),
        })?;
        let host = parse_host(host).ok_or_else(|| BindingError::Host {
            text: text.to_owned(),
            host: host.to_owned(),
        })?;
        Ok(Binding { scheme, host, port })
    }
}

/// Splits `HOST:PORT` or `[V6]:PORT`; the brackets stay on the host so `parse_host` can tell
/// a bracketed literal from a bare one.
fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let port = authority[close + 1..].strip_prefix(':')?;
        Some((&authority[..=close], port))
    } else {
        authority
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
    }
}

/// Decimal, no sign, no leading zero unless the port is exactly "0" (HTTP.sys rejects them too).
fn parse_port(port: &str) -> Option<u16> {
    let digits_only = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (port.len() > 1 && port.starts_with('0')) {
        return None;
    }
    port.parse().ok()
}

fn parse_host(host: &str) -> Option<BindingHost> {
    match host {
        "+" => return Some(BindingHost::Strong),
        "*" => return Some(BindingHost::Weak),
        _ => {}
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Zone ids (`fe80::1%eth0`) do not parse as Ipv6Addr and are refused with the rest.
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| BindingHost::Ip(ip.into()));
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Some(BindingHost::Ip(v4.into()));
    }
    is_host_name(host).then(|| BindingHost::Name(host.to_ascii_lowercase()))
}

/// Letters, digits, '-' and '.', in non-empty labels. A name made only of digits and dots is
/// a mistyped IPv4 address (`127.0.0.256`), not a name.
fn is_host_name(host: &str) -> bool {
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let all_numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    labels_ok && !all_numeric
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Http => f.write_str("http"),
            Scheme::Https => f.write_str("https"),
        }
    }
}

impl fmt::Display for BindingHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingHost::Strong => f.write_str("+"),
            BindingHost::Weak => f.write_str("*"),
            BindingHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            BindingHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            BindingHost::Name(name) => f.write_str(name),
        }
    }
}

/// `http://host:port` or `https://host:port`, which parses back to the same binding.
impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Binding, BindingError> {
        text.parse()
    }

    fn http(host: BindingHost, port: u16) -> Binding {
        Binding {
            scheme: Scheme::Http,
            host,
            port,
        }
    }

    #[test]
    fn each_host_category_parses() {
        assert_eq!(parse("http://+:80"), Ok(http(BindingHost::Strong, 80)));
        assert_eq!(parse("http://*:8080/"), Ok(http(BindingHost::Weak, 8080)));
        assert_eq!(
            parse("http://127.0.0.1:0"),
            Ok(http(BindingHost::Ip([127, 0, 0, 1].into()), 0))
        );
        assert_eq!(
            parse("http://[::1]:65535"),
            Ok(http(BindingHost::Ip(Ipv6Addr::LOCALHOST.into()), 65535))
        );
        assert_eq!(
            parse("HTTP://Shop.Example.COM:80"),
            Ok(http(BindingHost::Name("shop.example.com".into()), 80))
        );
    }

    #[test]
    fn malformed_bindings_are_refused_with_the_expected_syntax() {
        for text in [
            "htp://x:80",
            "http//x:80",
            "http://x",
            "http://:80",
            "http://x:80?q",
            "http://u@x:80",
            "http://[::1:80",
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err, BindingError::Malformed(text.into()), "{text}");
            assert!(
                err.to_string().contains("expected SCHEME://HOST:PORT"),
                "{err}"
            );
        }
    }

    #[test]
    fn https_parses() {
        assert_eq!(
            parse("HTTPS://a.test:443"),
            Ok(Binding {
                scheme: Scheme::Https,
                host: BindingHost::Name("a.test".into()),
                port: 443,
            })
        );
    }

    #[test]
    fn a_path_is_refused_but_a_trailing_slash_is_not() {
        assert!(matches!(
            parse("http://+:80/shop"),
            Err(BindingError::Path(_))
        ));
        assert!(matches!(parse("http://+:80//"), Err(BindingError::Path(_))));
        assert!(parse("http://+:80/").is_ok());
    }

    #[test]
    fn ports_are_decimal_without_leading_zeros_and_in_range() {
        for port in ["080", "65536", "-1", "+80", "8o", "0x50", ""] {
            let text = format!("http://+:{port}");
            assert!(
                matches!(
                    parse(&text),
                    Err(BindingError::Port { .. } | BindingError::Malformed(_))
                ),
                "{text}"
            );
        }
        assert_eq!(parse("http://+:0").map(|b| b.port), Ok(0));
    }

    #[test]
    fn bad_hosts_are_refused() {
        for host in [
            "::1",
            "[localhost]",
            "127.0.0.256",
            "a..b",
            "a_b",
            ".x",
            "x.",
            "[fe80::1%eth0]",
        ] {
            let text = format!("http://{host}:80");
            assert!(
                matches!(
                    parse(&text),
                    Err(BindingError::Host { .. } | BindingError::Malformed(_))
                ),
                "{text}: {:?}",
                parse(&text)
            );
        }
    }

    fn any_host() -> impl Strategy<Value = BindingHost> {
        prop_oneof![
            Just(BindingHost::Strong),
            Just(BindingHost::Weak),
            any::<std::net::Ipv4Addr>().prop_map(|ip| BindingHost::Ip(ip.into())),
            any::<std::net::Ipv6Addr>().prop_map(|ip| BindingHost::Ip(ip.into())),
            "[a-z][a-z0-9-]{0,10}(\\.[a-z0-9-]{1,10}){0,3}".prop_map(BindingHost::Name),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_binding(host in any_host(), port in any::<u16>(), tls in any::<bool>()) {
            let mut binding = http(host, port);
            if tls {
                binding.scheme = Scheme::Https;
            }
            prop_assert_eq!(binding.to_string().parse::<Binding>(), Ok(binding));
        }
    }
}
