//! The checks a request head passes before anything else looks at it (HTTP.sys limits,
//! RFC 9112 framing rules against request smuggling, a canonical path): a pure function of
//! the parsed head, table-tested below. hyper has already refused what it cannot parse
//! (bad request lines, bare LF/CR in the head, duplicate `Content-Length` values, invalid
//! chunk sizes); this adds what it lets through.
//!
//! Every refusal names its status and its HTTP.sys reason, and the connection is closed
//! after it (a framing error leaves the rest of the byte stream meaningless).

use crate::config::RequestLimits;
use crate::log::Reason;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{StatusCode, Version};

/// A request extension set by the listener when the head carried both `Content-Length` and
/// `Transfer-Encoding`: hyper drops the `Content-Length` of such a head before keel sees it
/// (`listener/framing.rs` watches the bytes for it).
#[derive(Clone, Copy, Debug)]
pub struct LengthWithTransferEncoding;

/// The parts of a request head the checks read.
struct Head<'a> {
    method: &'a http::Method,
    uri: &'a http::Uri,
    version: Version,
    headers: &'a http::HeaderMap,
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: Reason,
    /// The answer's body.
    pub message: &'static str,
}

const fn refuse(status: StatusCode, reason: Reason, message: &'static str) -> Refusal {
    Refusal {
        status,
        reason,
        message,
    }
}

/// Checks one head. `Ok` carries the canonical path (decoded, dot segments removed), which
/// routing uses; the worker still gets the target as the client sent it.
pub fn check<'r, B>(
    req: &'r http::Request<B>,
    limits: &RequestLimits,
) -> Result<std::borrow::Cow<'r, str>, Refusal> {
    let parts = Head {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
    };
    if !matches!(
        parts.version,
        Version::HTTP_10 | Version::HTTP_11 | Version::HTTP_2
    ) {
        return Err(refuse(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Reason::VersionNotSupported,
            "HTTP Version Not Supported\n",
        ));
    }
    check_sizes(&parts, limits)?;
    if req
        .extensions()
        .get::<LengthWithTransferEncoding>()
        .is_some()
    {
        return Err(both_lengths());
    }
    check_framing(parts.headers)?;
    check_host(&parts)?;
    // An absolute-form target names the resource: keel serves `http` and `https` ones only
    // (RFC 9112 §3.2.2; another scheme is a proxy's business).
    if let Some(scheme) = parts.uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(bad_url());
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    check_url_length(target, limits)?;
    // `OPTIONS *` has no path to canonicalise.
    if *parts.method == http::Method::OPTIONS && parts.uri.path() == "*" {
        return Ok("*".into());
    }
    check_path(parts.uri.path(), limits)
}

/// [`check`] for an HTTP/1.1 GET or HEAD that the HTTP/1.1 front read itself, from its
/// slices: one Host (checked here with [`valid_host`]), no `Content-Length` or `Transfer-Encoding` (the front leaves any
/// other head to hyper), `target` in origin form without a fragment. `head_bytes` and
/// `longest_field` are the head's size and its longest field line as [`check_sizes`]
/// counts them.
pub fn check_plain<'t>(
    target: &'t str,
    host: &str,
    head_bytes: usize,
    longest_field: usize,
    limits: &RequestLimits,
) -> Result<std::borrow::Cow<'t, str>, Refusal> {
    check_head_size(longest_field, head_bytes, limits)?;
    if !valid_host(host.as_bytes()) {
        return Err(bad_host());
    }
    check_url_length(target, limits)?;
    check_path(target, limits)
}

/// The canonical form of `path` (cut at its `?query` or `#fragment`), within the segment
/// limits.
fn check_path<'p>(
    path: &'p str,
    limits: &RequestLimits,
) -> Result<std::borrow::Cow<'p, str>, Refusal> {
    let bad_url = bad_url();
    let within = |segments: usize, longest: usize| {
        segments <= limits.max_segments && longest <= limits.max_segment_chars
    };
    // Most paths are canonical as they are, measured in one pass.
    if let Some(shape) = crate::static_files::canonical_shape(path) {
        return if within(shape.segments, shape.longest_segment) {
            Ok(std::borrow::Cow::Borrowed(&path[..shape.len]))
        } else {
            Err(bad_url)
        };
    }
    let canonical = crate::static_files::canonical_path(path).map_err(|_| bad_url)?;
    let segments = canonical.split('/').filter(|s| !s.is_empty());
    let (count, longest) = segments.fold((0, 0), |(n, longest), s| {
        (n + 1, longest.max(s.chars().count()))
    });
    if within(count, longest) {
        Ok(canonical)
    } else {
        Err(bad_url)
    }
}

/// HTTP.sys `MaxFieldLength` and `MaxRequestBytes`, counted as the bytes of the head on the
/// wire would be (hyper has already bounded what it buffered).
fn check_sizes(parts: &Head<'_>, limits: &RequestLimits) -> Result<(), Refusal> {
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path().len(), |pq| pq.as_str().len());
    let mut total = parts.method.as_str().len() + 1 + target + 1 + 8 + 2;
    let mut longest = 0;
    for (name, value) in parts.headers {
        let line = name.as_str().len() + 2 + value.len() + 2;
        longest = longest.max(line);
        total += line;
    }
    check_head_size(longest, total, limits)
}

/// `MaxFieldLength` for the longest field line, then `MaxRequestBytes` for the whole head.
fn check_head_size(
    longest_field: usize,
    head_bytes: usize,
    limits: &RequestLimits,
) -> Result<(), Refusal> {
    if longest_field > limits.max_field_bytes {
        return Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::FieldLength,
            "Request Header Fields Too Large (a header field is too long)\n",
        ));
    }
    if head_bytes > limits.max_request_bytes {
        return Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::RequestLength,
            "Request Header Fields Too Large (the request head is too long)\n",
        ));
    }
    Ok(())
}

/// `MaxUrlLength` for the target (path and query).
fn check_url_length(target: &str, limits: &RequestLimits) -> Result<(), Refusal> {
    if target.len() > limits.max_url_bytes {
        return Err(refuse(
            StatusCode::URI_TOO_LONG,
            Reason::UrlLength,
            "URI Too Long\n",
        ));
    }
    Ok(())
}

fn both_lengths() -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        Reason::BadRequest,
        "Bad Request (both Content-Length and Transfer-Encoding)\n",
    )
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; HTTP/1.0 and HTTP/2 at most
/// one (HTTP/2's `:authority` became a Host field before this).
fn check_host(parts: &Head<'_>) -> Result<(), Refusal> {
    let count = value_count(parts.headers, &HOST);
    let valid = || first_value(parts.headers, &HOST).is_none_or(|v| valid_host(v.as_bytes()));
    if count > 1 || (count == 0 && parts.version == Version::HTTP_11) || !valid() {
        return Err(bad_host());
    }
    Ok(())
}

fn bad_url() -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        Reason::Url,
        "Bad Request (Invalid URL)\n",
    )
}

fn bad_host() -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        Reason::Hostname,
        "Bad Request (Invalid Hostname)\n",
    )
}

/// RFC 9110 §7.2 and RFC 3986 §3.2: `Host = uri-host [ ":" port ]`, where `uri-host` is an
/// IPv6 literal in brackets or a reg-name (letters, digits, `-._~`, `%HH`, `!$&'()*+,;=`;
/// an IPv4 address is one), and `port` at most 65535. An empty Host is valid (a target
/// without an authority). Refused besides, as nginx refuses them: two dots in a row.
///
/// Routing and the cache key read the Host as it was sent: a `/`, `?`, `#` or `@` in it
/// would let `Host: h/x` with path `/p` share the key of `Host: h` with path `/x/p`.
pub fn valid_host(host: &[u8]) -> bool {
    if let [b'[', rest @ ..] = host {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        return match &rest[end + 1..] {
            [] => true,
            [b':', port @ ..] => valid_port(port),
            _ => false,
        };
    }
    // One pass over a reg-name, to its port if it has one: most bytes are letters, digits
    // and dots, judged by one table lookup.
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if REG_NAME_BYTES[usize::from(b)] {
            i += 1;
            continue;
        }
        match b {
            b'.' if host.get(i + 1) == Some(&b'.') => return false,
            b'.' => {}
            b'%' => {
                let hex = |j: usize| host.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 2;
            }
            // A port needs a name before it.
            b':' => return i > 0 && valid_port(&host[i + 1..]),
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `port = *DIGIT` (empty is allowed), at most 65535.
fn valid_port(port: &[u8]) -> bool {
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
}

/// RFC 3986's unreserved characters and sub-delims: what a URI component keeps as it is
/// (a Host's reg-name, here and in [`valid_host`]; the path and query the HTTP/1.1 front
/// takes as plain).
pub const fn unreserved_or_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
    )
}

/// The bytes a reg-name holds as they are ([`unreserved_or_sub_delim`], but `.`, which
/// [`valid_host`] judges with its neighbour): one table lookup per byte of every request's
/// Host.
const REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b as u8 != b'.' && unreserved_or_sub_delim(b as u8);
        b += 1;
    }
    table
};

/// Field maps with at most this many fields are scanned by [`has_none_of`].
const SCAN_MAX: usize = 16;

/// Whether `headers` has none of the fields `names`. A request's map is usually small (one
/// to a dozen fields): comparing its names (standard ones by their index) costs less than
/// one hashed lookup per name.
pub fn has_none_of(headers: &http::HeaderMap, names: &[http::HeaderName]) -> bool {
    if headers.keys_len() <= SCAN_MAX {
        headers.keys().all(|k| !names.contains(k))
    } else {
        names.iter().all(|n| !headers.contains_key(n))
    }
}

/// The first value of `name` in `headers` (as `HeaderMap::get`, by a scan for a small map:
/// see [`has_none_of`]).
pub fn first_value<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Option<&'a http::HeaderValue> {
    if headers.keys_len() <= SCAN_MAX {
        headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// How many values of `name` `headers` has (by a scan for a small map: see
/// [`has_none_of`]).
fn value_count(headers: &http::HeaderMap, name: &http::HeaderName) -> usize {
    if headers.keys_len() <= SCAN_MAX {
        headers.iter().filter(|(k, _)| *k == name).count()
    } else {
        headers.get_all(name).iter().count()
    }
}

/// RFC 9112 §6.3 and §11.2: one unambiguous body length, or refuse.
fn check_framing(headers: &http::HeaderMap) -> Result<(), Refusal> {
    if has_none_of(headers, &[TRANSFER_ENCODING, CONTENT_LENGTH]) {
        return Ok(());
    }
    let bad = |message| refuse(StatusCode::BAD_REQUEST, Reason::BadRequest, message);
    let te: Vec<&http::HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(both_lengths());
        }
        // Only `chunked`, once, and last: anything else cannot be framed by keel.
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if codings != ["chunked"] {
            return Err(refuse(
                StatusCode::NOT_IMPLEMENTED,
                Reason::NotImplemented,
                "Not Implemented (Transfer-Encoding other than chunked)\n",
            ));
        }
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let parse = |v: &http::HeaderValue| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
        };
        let Some(n) = parse(first) else {
            return Err(bad("Bad Request (invalid Content-Length)\n"));
        };
        if lengths.any(|v| parse(v) != Some(n)) {
            return Err(bad("Bad Request (conflicting Content-Length)\n"));
        }
    }
    Ok(())
}

/// The answer to a body longer than the site's `max_body_bytes` (IIS
/// `maxAllowedContentLength`), declared or found while it streams.
pub const BODY_TOO_LARGE: Refusal = refuse(
    StatusCode::PAYLOAD_TOO_LARGE,
    Reason::EntityTooLarge,
    "Content Too Large (the request body is longer than this site accepts)\n",
);

/// A declared `Content-Length` past `max` (checked once the site is known: the limit may
/// be set per site). A body without one is counted as it streams.
pub fn check_declared_body(headers: &http::HeaderMap, max: u64) -> Result<(), Refusal> {
    if has_none_of(headers, &[CONTENT_LENGTH]) {
        return Ok(());
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max => Err(BODY_TOO_LARGE),
        _ => Ok(()),
    }
}

/// Why a request body could not be read: its chunked framing was malformed (`Number`: a
/// chunk size, its extensions or the CRLF after the data — hyper's decoder reports these as
/// invalid input or data), or the client went away (`Client_Reset`).
pub fn body_error_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        {
            return Reason::Number;
        }
        source = err.source();
    }
    Reason::ClientReset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_judged_by_the_uri_grammar() {
        for good in [
            "",
            "x",
            "example.com",
            "Example.COM.",
            "x:8080",
            "x:",
            "x:65535",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]",
            "my_host-1~",
            "a%2fb",
            "a!$&'()*+,;=b",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?} refused");
        }
        for bad in [
            "x/y",
            "x:80/y",
            "x?q",
            "x:80?q",
            "x#f",
            "u@x",
            "x\\y",
            "x y",
            "x\ty",
            "x:abc",
            "x:65536",
            "x:99999",
            "x:000080",
            "x:80:81",
            ":80",
            ":",
            "x..",
            "a..b",
            "x%",
            "x%2",
            "x%zz",
            "[::1",
            "[zz]",
            "[::1]x",
            "[::1]:y",
            "\u{e9}.example",
            "x\0",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} accepted");
        }
    }

    /// The scans for small maps answer as the map's own lookups do, for standard and
    /// custom names, below and above `SCAN_MAX`.
    #[test]
    fn field_scans_agree_with_lookups() {
        use http::header::{HeaderMap, HeaderName, HeaderValue, RANGE};
        let custom = HeaderName::from_static("x-custom");
        let absent = HeaderName::from_static("x-absent");
        for fields in [0, 1, 5, SCAN_MAX, SCAN_MAX + 1, 40] {
            let mut map = HeaderMap::new();
            for i in 0..fields {
                let name = HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap();
                map.append(name, HeaderValue::from(i));
            }
            map.append(HOST, HeaderValue::from_static("a"));
            map.append(HOST, HeaderValue::from_static("b"));
            map.append(custom.clone(), HeaderValue::from_static("c"));
            for name in [&HOST, &custom, &absent, &RANGE] {
                assert_eq!(first_value(&map, name), map.get(name), "{fields} {name}");
                assert_eq!(
                    value_count(&map, name),
                    map.get_all(name).iter().count(),
                    "{fields} {name}"
                );
                assert_eq!(
                    has_none_of(&map, std::slice::from_ref(name)),
                    !map.contains_key(name),
                    "{fields} {name}"
                );
            }
            assert!(has_none_of(&map, &[RANGE, absent.clone()]));
            assert!(!has_none_of(&map, &[RANGE, custom.clone()]));
        }
    }

    fn head(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> http::Request<()> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, (u16, &'static str)> {
        let mut headers = headers.to_vec();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            headers.push(("host", "x"));
        }
        let limits = RequestLimits::default();
        let req = head(method, target, Version::HTTP_11, &headers);
        check(&req, &limits)
            .and_then(|path| {
                check_declared_body(req.headers(), limits.max_body_bytes)
                    .map(|()| path.into_owned())
            })
            .map_err(|r| (r.status.as_u16(), r.reason.phrase()))
    }

    /// Method, target, headers, and the canonical path or (status, reason).
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Result<&'a str, (u16, &'a str)>,
    );

    #[test]
    fn the_table() {
        let limits = RequestLimits::default();
        let long_field = "a".repeat(limits.max_field_bytes);
        let half = "b".repeat(9 * 1024);
        let long_url = format!("/{}", "u".repeat(limits.max_url_bytes));
        let long_seg = format!("/{}", "s".repeat(limits.max_segment_chars + 1));
        let many_segs = "/s".repeat(limits.max_segments + 1);
        let ok_segs = "/s".repeat(limits.max_segments);
        // A segment's limit counts characters: two bytes each here.
        let wide_seg = format!("/{}", "%C3%A9".repeat(limits.max_segment_chars));
        let wide_seg_decoded = format!("/{}", "é".repeat(limits.max_segment_chars));
        let too_wide_seg = format!("/{}", "%C3%A9".repeat(limits.max_segment_chars + 1));
        let cases: Vec<Case<'_>> = vec![
            ("GET", "/", vec![], Ok("/")),
            ("GET", "/a/./b/../c//d", vec![], Ok("/a/c/d")),
            ("GET", "/%61%62c", vec![], Ok("/abc")),
            // Found by fuzzing (fuzz/README.md): `%3F` and `%23` decode to a plain `?` and
            // `#` in the canonical path, which routing takes as path characters.
            ("GET", "/a%3fb/%23c", vec![], Ok("/a?b/#c")),
            ("GET", "/a/..", vec![], Ok("/")),
            ("OPTIONS", "*", vec![], Ok("*")),
            ("GET", "/..", vec![], Err((400, "URL"))),
            ("GET", &wide_seg, vec![], Ok(&wide_seg_decoded)),
            ("GET", &too_wide_seg, vec![], Err((400, "URL"))),
            ("GET", "/a/../..", vec![], Err((400, "URL"))),
            ("GET", "/%2e%2e/etc/passwd", vec![], Err((400, "URL"))),
            ("GET", "/..%2fetc", vec![], Err((400, "URL"))),
            ("GET", "/a%2fb", vec![], Err((400, "URL"))),
            ("GET", "/a%5cb", vec![], Err((400, "URL"))),
            ("GET", "/a%00b", vec![], Err((400, "URL"))),
            ("GET", "/a%01b", vec![], Err((400, "URL"))),
            ("GET", "/%ff", vec![], Err((400, "URL"))),
            ("GET", "/%zz", vec![], Err((400, "URL"))),
            ("GET", &long_url, vec![], Err((414, "URL_Length"))),
            ("GET", &long_seg, vec![], Err((400, "URL"))),
            ("GET", &many_segs, vec![], Err((400, "URL"))),
            ("GET", &ok_segs, vec![], Ok(ok_segs.as_str())),
            (
                "GET",
                "/",
                vec![("x-big", long_field.as_str())],
                Err((431, "FieldLength")),
            ),
            (
                "GET",
                "/",
                vec![("x-a", half.as_str()), ("x-b", half.as_str())],
                Err((431, "RequestLength")),
            ),
            (
                "POST",
                "/",
                vec![("content-length", "5"), ("transfer-encoding", "chunked")],
                Err((400, "BadRequest")),
            ),
            (
                "POST",
                "/",
                vec![("transfer-encoding", "gzip, chunked")],
                Err((501, "N/I")),
            ),
            (
                "POST",
                "/",
                vec![("transfer-encoding", "chunked, gzip")],
                Err((501, "N/I")),
            ),
            (
                "POST",
                "/",
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err((501, "N/I")),
            ),
            (
                "POST",
                "/",
                vec![("transfer-encoding", "xchunked")],
                Err((501, "N/I")),
            ),
            ("POST", "/", vec![("transfer-encoding", "Chunked")], Ok("/")),
            (
                "POST",
                "/",
                vec![("content-length", "5"), ("content-length", "6")],
                Err((400, "BadRequest")),
            ),
            (
                "POST",
                "/",
                vec![("content-length", "5, 5")],
                Err((400, "BadRequest")),
            ),
            (
                "POST",
                "/",
                vec![("content-length", "+5")],
                Err((400, "BadRequest")),
            ),
            (
                "POST",
                "/",
                vec![("content-length", "5"), ("content-length", "5")],
                Ok("/"),
            ),
            (
                "POST",
                "/",
                vec![("content-length", "30000001")],
                Err((413, "EntityTooLarge")),
            ),
            ("POST", "/", vec![("content-length", "30000000")], Ok("/")),
        ];
        for (method, target, headers, want) in cases {
            let got = status(method, target, &headers);
            let want = want.map(str::to_owned);
            assert_eq!(
                got,
                want,
                "{method} {} {headers:?}",
                &target[..target.len().min(40)]
            );
        }
    }

    #[test]
    fn host_fields() {
        let one = [("host", "x")];
        let two = [("host", "x"), ("host", "y")];
        for (version, headers, ok) in [
            (Version::HTTP_11, &one[..], true),
            (Version::HTTP_11, &[][..], false),
            (Version::HTTP_11, &two[..], false),
            (Version::HTTP_10, &[][..], true),
            (Version::HTTP_10, &two[..], false),
            (Version::HTTP_2, &[][..], true),
        ] {
            let req = head("GET", "/", version, headers);
            let r = check(&req, &RequestLimits::default());
            assert_eq!(r.is_ok(), ok, "{version:?} {headers:?}");
            if let Err(r) = r {
                assert_eq!((r.status.as_u16(), r.reason), (400, Reason::Hostname));
            }
        }
    }

    #[test]
    fn a_head_marked_by_the_listener_is_refused() {
        let mut req = head("POST", "/", Version::HTTP_11, &[("host", "x")]);
        assert!(check(&req, &RequestLimits::default()).is_ok());
        req.extensions_mut().insert(LengthWithTransferEncoding);
        let r = check(&req, &RequestLimits::default()).unwrap_err();
        assert_eq!((r.status.as_u16(), r.reason), (400, Reason::BadRequest));
    }

    #[test]
    fn versions() {
        for (v, ok) in [
            (Version::HTTP_09, false),
            (Version::HTTP_10, true),
            (Version::HTTP_11, true),
            (Version::HTTP_2, true),
            (Version::HTTP_3, false),
        ] {
            let req = head("GET", "/", v, &[("host", "x")]);
            let r = check(&req, &RequestLimits::default());
            assert_eq!(r.is_ok(), ok, "{v:?}");
            if let Err(r) = r {
                assert_eq!(r.status, StatusCode::HTTP_VERSION_NOT_SUPPORTED);
            }
        }
    }
}
