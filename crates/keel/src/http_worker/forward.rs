//! The headers of a request on its way to an HTTP worker, and of the response on its way
//! back: hop-by-hop fields removed (RFC 9110 §7.6.1), and the proxy fields set from what the
//! daemon saw — `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
//! (RFC 7239). Copies a client sent are dropped, never appended to: only keel's own view of
//! the client reaches the application.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What the daemon knows of the client connection.
#[derive(Clone, Debug, Default)]
pub struct ClientView {
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
}

/// Removes hop-by-hop fields, including those listed in `Connection` (the daemon's own
/// list, as for requests to protocol workers).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Only the names the head has are removed (a removal costs a hashed lookup); most heads
    // have none (the daemon's own encoding already left them out of requests), and an
    // empty list allocates nothing.
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|k| crate::request_path::is_hop_by_hop(k))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    present.extend(crate::request_path::connection_listed(headers));
    for name in present {
        headers.remove(name);
    }
}

/// An address as text: an IPv4 one written digit by digit (the formatting machinery costs
/// more than the rest of a forwarding field), any other by `Display`.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The fields keel sets on every request to a worker from what it saw itself: any copy a
/// client sent is dropped, never passed on or appended to.
pub const PROXY_FIELDS: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_REAL_IP,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    X_FORWARDED_HOST,
    header::FORWARDED,
];

/// Calls `set` with each proxy field's name and value, in [`PROXY_FIELDS`] order; a field
/// keel cannot fill (no client address, no host) is left out. `host` is the host the
/// client asked for (`Host`, or an HTTP/2 request's authority).
pub fn proxy_fields(view: &ClientView, host: Option<&str>, mut set: impl FnMut(&HeaderName, &str)) {
    let proto = if view.tls { "https" } else { "http" };
    let mut forwarded = String::with_capacity(96);
    if let Some(ip) = view.client.map(|c| c.ip()) {
        let text = ip_text(ip);
        forwarded.push_str("for=");
        forwarded_node(ip, &text, &mut forwarded);
        set(&X_FORWARDED_FOR, &text);
        set(&X_REAL_IP, &text);
    }
    set(&X_FORWARDED_PROTO, proto);
    if let Some(local) = view.local {
        let mut digits = [0u8; 20];
        set(&X_FORWARDED_PORT, port_text(local.port(), &mut digits));
    }
    if let Some(host) = host {
        if !forwarded.is_empty() {
            forwarded.push(';');
        }
        forwarded.push_str("host=");
        quoted(host, &mut forwarded);
        set(&X_FORWARDED_HOST, host);
    }
    if !forwarded.is_empty() {
        forwarded.push(';');
    }
    forwarded.push_str("proto=");
    forwarded.push_str(proto);
    set(&header::FORWARDED, &forwarded);
}

/// A port number in decimal, written into `digits`.
fn port_text(port: u16, digits: &mut [u8; 20]) -> &str {
    let text = crate::http1_head::decimal(u64::from(port), digits);
    std::str::from_utf8(text).unwrap_or_default()
}

/// Prepares a request's headers for the worker: hop-by-hop fields and `Expect` out, the
/// proxy fields set from `view` (client copies dropped), and `Host` from `authority` when
/// the request has none (HTTP/2 requests carry `:authority` instead; HTTP/1.1 servers
/// want `Host`).
pub fn request_headers(headers: &mut HeaderMap, view: &ClientView, authority: Option<&str>) {
    strip_hop_by_hop(headers);
    // The daemon has answered any `Expect: 100-continue` already.
    headers.remove(header::EXPECT);
    for name in PROXY_FIELDS {
        headers.remove(name);
    }
    let host = match headers.get(header::HOST) {
        Some(h) if h.to_str().is_ok() => Some(h.clone()),
        _ => authority.and_then(|a| HeaderValue::from_str(a).ok()),
    };
    if !headers.contains_key(header::HOST)
        && let Some(h) = &host
    {
        headers.insert(header::HOST, h.clone());
    }
    let host = host.as_ref().and_then(|h| h.to_str().ok());
    let mut set = Vec::with_capacity(PROXY_FIELDS.len());
    proxy_fields(view, host, |name, value| {
        if let Ok(value) = HeaderValue::from_str(value) {
            set.push((name.clone(), value));
        }
    });
    for (name, value) in set {
        headers.insert(name, value);
    }
}

/// The response says its connection closes after it (`Connection: close`).
pub fn closes_connection(headers: &HeaderMap) -> bool {
    crate::header_list::lists(headers, header::CONNECTION, "close")
}

/// Prepares a worker's response headers for the daemon (and so for the client).
pub fn response_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// RFC 7239 §6: an IPv6 node is quoted and bracketed; IPv4 is a bare token. `text` is
/// `ip` as text.
fn forwarded_node(ip: IpAddr, text: &str, out: &mut String) {
    use std::fmt::Write;
    match ip {
        IpAddr::V4(_) => out.push_str(text),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                let _ = write!(out, "{v4}");
            }
            None => {
                out.push_str("\"[");
                out.push_str(text);
                out.push_str("]\"");
            }
        },
    }
}

/// A quoted-string (RFC 9110 §5.6.4) for `Forwarded` values.
fn quoted(value: &str, out: &mut String) {
    out.push('"');
    // Runs between the characters to escape go in whole (a host rarely has any).
    let mut rest = value;
    while let Some(at) = rest.bytes().position(|b| b == b'"' || b == b'\\') {
        out.push_str(&rest[..at]);
        out.push('\\');
        out.push_str(&rest[at..at + 1]);
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_string_escapes_quotes_and_backslashes_only() {
        for (value, want) in [
            ("", r#""""#),
            ("example.com:8080", r#""example.com:8080""#),
            (r#"a"b"#, r#""a\"b""#),
            (r"a\b", r#""a\\b""#),
            (r#""\""#, r#""\"\\\"""#),
            ("é\"", r#""é\"""#),
        ] {
            let mut out = String::new();
            quoted(value, &mut out);
            assert_eq!(out, want, "{value:?}");
        }
    }

    #[test]
    fn ports_as_text() {
        for port in [0u16, 7, 80, 443, 8080, 10000, 65535] {
            assert_eq!(port_text(port, &mut [0; 20]), port.to_string());
        }
    }

    #[test]
    fn addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "99.100.101.255",
            "1.9.10.199",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    use crate::test_fields::header_map as map;

    #[test]
    fn client_copies_are_replaced_by_what_keel_saw() {
        let mut h = map(&[
            ("host", "example.com:8080"),
            ("x-forwarded-for", "6.6.6.6"),
            ("X-Forwarded-For", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        let view = ClientView {
            client: Some("10.1.2.3:5555".parse().unwrap()),
            local: Some("127.0.0.1:8080".parse().unwrap()),
            tls: false,
        };
        request_headers(&mut h, &view, None);
        let all =
            |n: &str| -> Vec<&str> { h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(all("x-forwarded-proto"), ["http"]);
        assert_eq!(all("x-forwarded-host"), ["example.com:8080"]);
        assert_eq!(all("x-forwarded-port"), ["8080"]);
        assert_eq!(all("x-real-ip"), ["10.1.2.3"]);
        assert_eq!(
            all("forwarded"),
            ["for=10.1.2.3;host=\"example.com:8080\";proto=http"]
        );
        assert_eq!(all("accept"), ["*/*"]);
        assert_eq!(all("host"), ["example.com:8080"]);
    }

    #[test]
    fn ipv6_clients_and_tls_and_http2_authority() {
        let mut h = HeaderMap::new();
        let view = ClientView {
            client: Some("[2001:db8::1]:443".parse().unwrap()),
            local: None,
            tls: true,
        };
        request_headers(&mut h, &view, Some("shop.example"));
        assert_eq!(h["host"], "shop.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";host=\"shop.example\";proto=https"
        );
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("content-length", "3"),
        ]);
        request_headers(&mut h, &ClientView::default(), None);
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "transfer-encoding",
            "te",
            "upgrade",
            "expect",
            "x-forwarded-for",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["content-length"], "3");
        let mut r = map(&[("connection", "close"), ("content-type", "text/plain")]);
        response_headers(&mut r);
        assert!(!r.contains_key("connection"));
        assert_eq!(r["content-type"], "text/plain");
    }

    #[test]
    fn connection_options_across_lines_and_a_field_called_close() {
        let mut r = map(&[
            ("connection", "Close"),
            ("connection", " X-Private ,proxy-connection"),
            ("close", "1"),
            ("x-private", "2"),
            ("proxy-connection", "keep-alive"),
            ("x-public", "3"),
        ]);
        response_headers(&mut r);
        for gone in ["connection", "close", "x-private", "proxy-connection"] {
            assert!(!r.contains_key(gone), "{gone}");
        }
        assert_eq!(r["x-public"], "3");
        // `close` alone names no field: nothing else goes.
        let mut r = map(&[("connection", "close"), ("x-public", "3")]);
        response_headers(&mut r);
        assert_eq!(r.len(), 1);
        assert_eq!(r["x-public"], "3");
    }
}
