//! Whether a response may be stored, and for how long (RFC 9111 for a shared cache, with
//! the HTTP.sys / IIS restrictions of HTTPSYS.md §3.2–3.4).
//!
//! Invariant: plain functions of their inputs (no clock of their own, no I/O), so every
//! rule is covered by the table of unit tests below.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use keel_proto::CachePolicy;
use std::time::{Duration, SystemTime};

/// How long a stored response stays fresh, and how long after that it may still be served
/// when the pool fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// `None`: fresh until invalidated (the worker's `UntilInvalidated` policy).
    pub fresh_for: Option<Duration>,
    /// The response's own `stale-if-error=N` (RFC 5861), if it has one.
    pub stale_if_error: Option<Duration>,
    /// `must-revalidate` / `proxy-revalidate`: never served stale (unless it names its own
    /// `stale-if-error`).
    pub must_revalidate: bool,
    /// The response's `Age` when it arrived.
    pub initial_age: Duration,
}

/// Why a response is not stored (for tests and, later, tracing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoStore {
    /// Not a GET: a HEAD's answer has no body to store (a stored GET answers HEADs).
    Method,
    Status,
    SetCookie,
    Private,
    NoStore,
    NoCache,
    VaryStar,
    Authorization,
    /// Neither the worker's policy nor the headers give a (positive) lifetime.
    NoLifetime,
}

/// Whether a request may be answered from the cache or lead to a stored response at all:
/// GET or HEAD without a body. (`Authorization` is decided with the response: `public`.)
pub fn request_may_use_cache(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// Whether the answer `status` to a request with `method` means the target resource
/// changed, so that what is stored for it is dropped (RFC 9111 §4.4): a 2xx or 3xx to an
/// unsafe method, that is any method but GET, HEAD, OPTIONS and TRACE (RFC 9110 §9.2.1),
/// unknown ones included. A GET is told by its first comparison.
pub fn changes_resource(method: &Method, status: StatusCode) -> bool {
    let safe = *method == Method::GET
        || *method == Method::HEAD
        || *method == Method::OPTIONS
        || *method == Method::TRACE;
    !safe && (status.is_success() || status.is_redirection())
}

/// The directives of every `Cache-Control` field, lower-cased, `(name, value)`.
fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for part in crate::header_list::members(headers, header::CACHE_CONTROL) {
        let (name, arg) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"').to_owned())),
            None => (part, None),
        };
        out.push((name.to_ascii_lowercase(), arg));
    }
    out
}

/// The largest delta-seconds (RFC 9111 §1.2.2): a larger value, or one too large for any
/// integer, is taken as 2^31 seconds (68 years), so no sum of lifetimes and ages overflows.
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// A delta-seconds value (`1*DIGIT`), at most [`DELTA_SECONDS_MAX`]; `None` if `text` is not
/// one.
fn delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only digits: parsing fails only past u64::MAX.
    let secs = text.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs.min(DELTA_SECONDS_MAX)))
}

/// A directive's delta-seconds argument.
fn seconds(arg: &Option<String>) -> Option<Duration> {
    delta_seconds(arg.as_deref()?)
}

/// The HTTP-date of `headers`' `name` field, if it has a readable one.
pub(super) fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// Decides whether the response to a request may be stored. `method` and `req` are the
/// request's; `worker` is the policy the worker sent in its RESPONSE frame; `now` is the
/// time the response arrived (for `Expires`).
pub fn decide(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    worker: CachePolicy,
    now: SystemTime,
) -> Result<Lifetime, NoStore> {
    // HEAD responses carry no body: only a GET response can answer both.
    if *method != Method::GET {
        return Err(NoStore::Method);
    }
    if !matches!(status.as_u16(), 200 | 203 | 301 | 404 | 410) {
        return Err(NoStore::Status);
    }
    if resp.contains_key(header::SET_COOKIE) {
        return Err(NoStore::SetCookie);
    }
    // Nothing could give it a lifetime: most dynamic responses end here, without the
    // lookups below.
    if worker == CachePolicy::None
        && !resp.contains_key(header::CACHE_CONTROL)
        && !resp.contains_key(header::EXPIRES)
    {
        return Err(NoStore::NoLifetime);
    }
    let cc = directives(resp);
    let has = |name: &str| cc.iter().any(|(n, _)| n == name);
    let arg = |name: &str| cc.iter().find(|(n, _)| n == name).map(|(_, a)| a);
    if has("private") {
        return Err(NoStore::Private);
    }
    if has("no-store") {
        return Err(NoStore::NoStore);
    }
    if has("no-cache") {
        return Err(NoStore::NoCache);
    }
    if crate::header_list::lists(resp, header::VARY, "*") {
        return Err(NoStore::VaryStar);
    }
    let public = has("public");
    if req.contains_key(header::AUTHORIZATION) && !public {
        return Err(NoStore::Authorization);
    }
    let fresh_for = match worker {
        CachePolicy::Ttl(0) => return Err(NoStore::NoLifetime),
        CachePolicy::Ttl(secs) => Some(Duration::from_secs(u64::from(secs))),
        CachePolicy::UntilInvalidated => None,
        CachePolicy::None => {
            // s-maxage is meant for shared caches; max-age only with `public`; Expires
            // (relative to Date, else to now) as RFC 9111 §4.2.1 says.
            let lifetime = if let Some(s) = arg("s-maxage").and_then(seconds) {
                Some(s)
            } else if public && let Some(s) = arg("max-age").and_then(seconds) {
                Some(s)
            } else if !has("max-age") && resp.contains_key(header::EXPIRES) {
                let base = http_date(resp, header::DATE).unwrap_or(now);
                Some(
                    http_date(resp, header::EXPIRES)
                        .and_then(|e| e.duration_since(base).ok())
                        .unwrap_or(Duration::ZERO),
                )
            } else {
                None
            };
            match lifetime {
                Some(d) if !d.is_zero() => Some(d),
                _ => return Err(NoStore::NoLifetime),
            }
        }
    };
    let initial_age = resp
        .get(header::AGE)
        .and_then(|v| delta_seconds(v.to_str().ok()?.trim()))
        .unwrap_or_default();
    Ok(Lifetime {
        fresh_for,
        stale_if_error: arg("stale-if-error").and_then(seconds),
        must_revalidate: has("must-revalidate") || has("proxy-revalidate"),
        initial_age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use crate::test_fields::header_map as headers;

    #[test]
    fn table() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let s = |n| Ok(Some(Duration::from_secs(n)));
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            u16,
            &'a [(&'a str, &'a str)],
            CachePolicy,
            Result<Option<Duration>, NoStore>,
        );
        let rows: &[Row] = &[
            // method, request headers, status, response headers, worker policy → outcome
            (
                "GET",
                &[],
                200,
                &[("cache-control", "public, max-age=60")],
                CachePolicy::None,
                s(60),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "max-age=60")],
                CachePolicy::None,
                Err(NoStore::NoLifetime),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "s-maxage=30, max-age=60")],
                CachePolicy::None,
                s(30),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "public, max-age=0")],
                CachePolicy::None,
                Err(NoStore::NoLifetime),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "Public, Max-Age=\"5\"")],
                CachePolicy::None,
                s(5),
            ),
            (
                "GET",
                &[],
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
                ],
                CachePolicy::None,
                s(60),
            ),
            (
                "GET",
                &[],
                200,
                &[("expires", "Sun, 06 Nov 1994 08:59:37 GMT")],
                CachePolicy::None,
                s(600),
            ),
            (
                "GET",
                &[],
                200,
                &[("expires", "0")],
                CachePolicy::None,
                Err(NoStore::NoLifetime),
            ),
            (
                "GET",
                &[],
                200,
                &[],
                CachePolicy::None,
                Err(NoStore::NoLifetime),
            ),
            ("GET", &[], 200, &[], CachePolicy::Ttl(10), s(10)),
            (
                "GET",
                &[],
                200,
                &[],
                CachePolicy::Ttl(0),
                Err(NoStore::NoLifetime),
            ),
            (
                "GET",
                &[],
                200,
                &[],
                CachePolicy::UntilInvalidated,
                Ok(None),
            ),
            (
                "HEAD",
                &[],
                200,
                &[("cache-control", "public, max-age=60")],
                CachePolicy::None,
                Err(NoStore::Method),
            ),
            (
                "POST",
                &[],
                200,
                &[],
                CachePolicy::Ttl(10),
                Err(NoStore::Method),
            ),
            (
                "GET",
                &[],
                304,
                &[],
                CachePolicy::Ttl(10),
                Err(NoStore::Status),
            ),
            (
                "GET",
                &[],
                500,
                &[],
                CachePolicy::Ttl(10),
                Err(NoStore::Status),
            ),
            (
                "GET",
                &[],
                206,
                &[],
                CachePolicy::Ttl(10),
                Err(NoStore::Status),
            ),
            ("GET", &[], 203, &[], CachePolicy::Ttl(10), s(10)),
            ("GET", &[], 301, &[], CachePolicy::Ttl(10), s(10)),
            ("GET", &[], 404, &[], CachePolicy::Ttl(10), s(10)),
            ("GET", &[], 410, &[], CachePolicy::Ttl(10), s(10)),
            (
                "GET",
                &[],
                200,
                &[
                    ("set-cookie", "a=b"),
                    ("cache-control", "public, max-age=9"),
                ],
                CachePolicy::Ttl(10),
                Err(NoStore::SetCookie),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "private, max-age=9")],
                CachePolicy::Ttl(10),
                Err(NoStore::Private),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "public"), ("cache-control", "no-store")],
                CachePolicy::None,
                Err(NoStore::NoStore),
            ),
            (
                "GET",
                &[],
                200,
                &[("cache-control", "no-cache")],
                CachePolicy::UntilInvalidated,
                Err(NoStore::NoCache),
            ),
            (
                "GET",
                &[],
                200,
                &[
                    ("cache-control", "public, max-age=9"),
                    ("vary", "accept, *"),
                ],
                CachePolicy::None,
                Err(NoStore::VaryStar),
            ),
            (
                "GET",
                &[],
                200,
                &[
                    ("cache-control", "public, max-age=9"),
                    ("vary", "accept-encoding"),
                ],
                CachePolicy::None,
                s(9),
            ),
            (
                "GET",
                &[("authorization", "Basic eA==")],
                200,
                &[("cache-control", "s-maxage=9")],
                CachePolicy::None,
                Err(NoStore::Authorization),
            ),
            (
                "GET",
                &[("authorization", "Basic eA==")],
                200,
                &[],
                CachePolicy::Ttl(9),
                Err(NoStore::Authorization),
            ),
            (
                "GET",
                &[("authorization", "Basic eA==")],
                200,
                &[("cache-control", "public, max-age=9")],
                CachePolicy::None,
                s(9),
            ),
        ];
        for (i, (method, req, status, resp, worker, want)) in rows.iter().enumerate() {
            let got = decide(
                &Method::from_bytes(method.as_bytes()).unwrap(),
                &headers(req),
                StatusCode::from_u16(*status).unwrap(),
                &headers(resp),
                *worker,
                now,
            )
            .map(|l| l.fresh_for);
            assert_eq!(&got, want, "row {i}: {method} {status} {resp:?} {worker:?}");
        }
    }

    #[test]
    fn a_non_error_answer_to_an_unsafe_method_changes_the_resource() {
        let rows: &[(&str, u16, bool)] = &[
            ("POST", 200, true),
            ("PUT", 201, true),
            ("DELETE", 204, true),
            ("PATCH", 303, true),
            ("POST", 307, true),
            // Unknown methods are not known to be safe.
            ("PURGE", 200, true),
            ("CONNECT", 200, true),
            ("POST", 304, true),
            ("POST", 100, false),
            ("POST", 404, false),
            ("PUT", 409, false),
            ("DELETE", 500, false),
            ("PATCH", 503, false),
            ("GET", 200, false),
            ("HEAD", 200, false),
            ("OPTIONS", 200, false),
            ("TRACE", 200, false),
        ];
        for (method, status, want) in rows {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(
                changes_resource(&method, status),
                *want,
                "{method} {status}"
            );
        }
    }

    #[test]
    fn delta_seconds_past_2_pow_31_are_2_pow_31() {
        let max = Duration::from_secs(1 << 31);
        let huge = "99999999999999999999";
        // Response fields → (fresh_for, stale_if_error, initial_age), or why not stored.
        type Outcome = Result<(Option<Duration>, Option<Duration>, Duration), NoStore>;
        let rows: &[(&[(&str, String)], Outcome)] = &[
            (
                &[("cache-control", format!("public, max-age={huge}"))],
                Ok((Some(max), None, Duration::ZERO)),
            ),
            (
                &[("cache-control", format!("s-maxage={huge}"))],
                Ok((Some(max), None, Duration::ZERO)),
            ),
            (
                &[("cache-control", format!("public, max-age={}", u64::MAX))],
                Ok((Some(max), None, Duration::ZERO)),
            ),
            (
                &[(
                    "cache-control",
                    format!("s-maxage=60, stale-if-error={huge}"),
                )],
                Ok((Some(Duration::from_secs(60)), Some(max), Duration::ZERO)),
            ),
            (
                &[
                    ("cache-control", "s-maxage=60".to_owned()),
                    ("age", huge.to_owned()),
                ],
                Ok((Some(Duration::from_secs(60)), None, max)),
            ),
            (
                &[("cache-control", "s-maxage=2147483647".to_owned())],
                Ok((Some(max - Duration::from_secs(1)), None, Duration::ZERO)),
            ),
            // Not delta-seconds at all: no lifetime from it.
            (
                &[("cache-control", "public, max-age=+5".to_owned())],
                Err(NoStore::NoLifetime),
            ),
            (
                &[("cache-control", "public, max-age=-1".to_owned())],
                Err(NoStore::NoLifetime),
            ),
        ];
        for (i, (resp, want)) in rows.iter().enumerate() {
            let mut h = HeaderMap::new();
            for (n, v) in *resp {
                h.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let got = decide(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &h,
                CachePolicy::None,
                SystemTime::now(),
            )
            .map(|l| (l.fresh_for, l.stale_if_error, l.initial_age));
            assert_eq!(&got, want, "row {i}: {resp:?}");
        }
    }

    #[test]
    fn stale_if_error_age_and_must_revalidate() {
        let l = decide(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[
                (
                    "cache-control",
                    "public, max-age=5, stale-if-error=30, must-revalidate",
                ),
                ("age", "3"),
            ]),
            CachePolicy::None,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(l.stale_if_error, Some(Duration::from_secs(30)));
        assert_eq!(l.initial_age, Duration::from_secs(3));
        assert!(l.must_revalidate);
    }
}
