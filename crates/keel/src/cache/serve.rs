//! The response for a request answered from an entry: `Age`, `x-cache`, HEAD, conditional
//! requests (304) and a single byte range (206 / 416), RFC 9110 §13–14. As a hyper
//! `Response` ([`respond`]), or as HTTP/1.1 bytes for the connections whose hits keel
//! answers before hyper ([`write_http1`], from `listener/h1_front.rs`).

use super::{CacheStatus, Entry};
use crate::http1_head;
use crate::request_check::has_none_of;
use crate::request_path::ResponseBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use std::time::{Instant, SystemTime};

/// A stored answer's fields that a 304 made from it leaves out: they describe a body the 304
/// does not have (representation metadata, RFC 9110 §15.4.5, and the range fields). It
/// keeps `Cache-Control`, `Content-Location`, `Date`, `ETag`, `Expires`, `Vary` and
/// `Last-Modified`, and the rest of the stored fields.
const NOT_IN_304: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
];

/// Builds the answer to `method` with headers `req` from `entry`. The body is shared with
/// the entry, never copied.
pub fn respond(
    entry: &Entry,
    method: &Method,
    req: &HeaderMap,
    status: CacheStatus,
) -> Response<ResponseBody> {
    let now = Instant::now();
    let mut headers = entry.headers.clone();
    let age = entry.age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(super::X_CACHE, HeaderValue::from_static(status.as_str()));
    if status == CacheStatus::Stale {
        // RFC 7234 §5.5.1 / §5.5.2: served stale because the origin failed.
        headers.append(
            header::WARNING,
            HeaderValue::from_static("110 - \"Response is Stale\""),
        );
        headers.append(
            header::WARNING,
            HeaderValue::from_static("111 - \"Revalidation Failed\""),
        );
    }
    let ok = matches!(entry.status.as_u16(), 200 | 203);
    let (code, body) = if ok && not_modified(entry, req) {
        for name in NOT_IN_304 {
            headers.remove(name);
        }
        (StatusCode::NOT_MODIFIED, None)
    } else if entry.status == StatusCode::OK
        && *method == Method::GET
        && let Some(range) = req.get(header::RANGE)
        && if_range_holds(entry, req)
    {
        let len = entry.body.len() as u64;
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        match single_range(range.as_bytes(), len) {
            Range::Ignore => (StatusCode::OK, Some(entry.body.clone())),
            Range::Unsatisfiable => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}"))
                        .unwrap_or(HeaderValue::from_static("bytes */0")),
                );
                (StatusCode::RANGE_NOT_SATISFIABLE, None)
            }
            Range::Bytes(first, last) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                let body = entry.body.slice(first as usize..=last as usize);
                (StatusCode::PARTIAL_CONTENT, Some(body))
            }
        }
    } else {
        (entry.status, Some(entry.body.clone()))
    };
    // HEAD: hyper sends the head only, with the Content-Length of this body.
    let mut resp = Response::new(ResponseBody::Full(body));
    *resp.status_mut() = code;
    *resp.headers_mut() = headers;
    resp.extensions_mut().insert(status);
    resp
}

/// RFC 9110 §13.1.2 (weak comparison; `*` matches) then §13.1.3 (only without
/// If-None-Match).
fn not_modified(entry: &Entry, req: &HeaderMap) -> bool {
    if req.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = &entry.etag else {
            return false;
        };
        return crate::header_list::etag_list_matches(
            req.get_all(header::IF_NONE_MATCH),
            etag.as_bytes(),
            false,
        );
    }
    let Some(lm) = entry.last_modified else {
        return false;
    };
    req.get(header::IF_MODIFIED_SINCE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .is_some_and(|since: SystemTime| lm <= since)
}

/// RFC 9110 §13.1.5: a Range applies only if the If-Range validator (strong ETag or exact
/// Last-Modified date) still matches.
fn if_range_holds(entry: &Entry, req: &HeaderMap) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else {
        return true;
    };
    let b = v.as_bytes();
    if b.starts_with(b"\"") {
        return entry.etag.as_ref().is_some_and(|e| e.as_bytes() == b);
    }
    match (
        entry.last_modified,
        httpdate::parse_http_date(v.to_str().unwrap_or("")),
    ) {
        (Some(lm), Ok(d)) => lm == d,
        _ => false,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Not one byte range we serve (several ranges, other units, bad syntax): send all.
    Ignore,
    Unsatisfiable,
    /// Inclusive.
    Bytes(u64, u64),
}

fn single_range(value: &[u8], len: u64) -> Range {
    let Ok(text) = std::str::from_utf8(value) else {
        return Range::Ignore;
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Range::Ignore;
    };
    if spec.contains(',') {
        return Range::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let (first, last) = if a.is_empty() {
        // Suffix: the last N bytes.
        let Some(n) = parse(b) else {
            return Range::Ignore;
        };
        if n == 0 || len == 0 {
            return Range::Unsatisfiable;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let Some(first) = parse(a) else {
            return Range::Ignore;
        };
        let last = if b.is_empty() {
            u64::MAX
        } else {
            match parse(b) {
                Some(l) if l >= first => l,
                _ => return Range::Ignore,
            }
        };
        if first >= len {
            return Range::Unsatisfiable;
        }
        (first, last.min(len - 1))
    };
    Range::Bytes(first, last)
}

/// The status line and fields of a stored response as HTTP/1.1 bytes, without the blank
/// line that ends the head.
pub(super) fn prepare_head(status: StatusCode, headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + headers.len() * 48);
    http1_head::put_start(status, headers, &mut out);
    out.freeze()
}

/// What [`write_http1`] wrote, for the access log and the metrics.
pub struct Written {
    pub status: u16,
    /// Body bytes (the access log counts the body only).
    pub body_bytes: u64,
}

/// Appends to `out` the HTTP/1.1 answer to `method` with headers `req` from the fresh entry
/// `entry` at `now`: the same answer [`respond`] gives, its head ended as hyper would end it
/// (`http1_head::put_end`), with `Connection: close` when `close`. A plain GET or HEAD is
/// the entry's prepared head, `Age`, `x-cache`, the end of the head and the body.
pub fn write_http1(
    entry: &Entry,
    method: &Method,
    req: &HeaderMap,
    close: bool,
    now: Instant,
    out: &mut BytesMut,
) -> Written {
    const CONDITIONAL: [HeaderName; 3] = [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::RANGE,
    ];
    let head_only = *method == Method::HEAD;
    let (status, body, len, framing) = if has_none_of(req, &CONDITIONAL) {
        out.reserve(entry.prepared.len() + 160 + entry.body.len());
        out.put_slice(&entry.prepared);
        out.put_slice(b"age: ");
        http1_head::put_decimal(entry.age(now).as_secs(), out);
        out.put_slice(b"\r\nx-cache: HIT\r\n");
        let len = entry.body.len() as u64;
        let framing = http1_head::put_end_known(
            entry.status,
            entry.prepared_says,
            Some(len),
            head_only,
            close,
            out,
        );
        (entry.status, Some(entry.body.clone()), len, framing)
    } else {
        let answer = respond(entry, method, req, CacheStatus::Hit);
        http1_head::put_start(answer.status(), answer.headers(), out);
        let body = match answer.body() {
            ResponseBody::Full(b) => b.clone(),
            _ => None,
        };
        let len = body.as_ref().map_or(0, Bytes::len) as u64;
        let framing = http1_head::put_end(
            answer.status(),
            answer.headers(),
            Some(len),
            head_only,
            close,
            out,
        );
        (answer.status(), body, len, framing)
    };
    let body_bytes = match (framing, body) {
        (http1_head::Framing::Length(_), Some(b)) if !head_only => {
            out.put_slice(&b);
            len
        }
        _ => 0,
    };
    Written {
        status: status.as_u16(),
        body_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let cases: &[(&str, u64, Range)] = &[
            ("bytes=0-9", 100, Range::Bytes(0, 9)),
            ("bytes=90-", 100, Range::Bytes(90, 99)),
            ("bytes=-10", 100, Range::Bytes(90, 99)),
            ("bytes=-1000", 100, Range::Bytes(0, 99)),
            ("bytes=50-1000", 100, Range::Bytes(50, 99)),
            ("bytes=100-", 100, Range::Unsatisfiable),
            ("bytes=-0", 100, Range::Unsatisfiable),
            ("bytes=0-1,5-6", 100, Range::Ignore),
            ("bytes=9-1", 100, Range::Ignore),
            ("items=0-1", 100, Range::Ignore),
            ("bytes=x-1", 100, Range::Ignore),
        ];
        for (v, len, want) in cases {
            assert_eq!(&single_range(v.as_bytes(), *len), want, "{v}");
        }
    }
}
