//! The response for a request answered from an entry: `Age`, `x-cache`, HEAD, conditional
//! requests (412, 304) and a single byte range (206 / 416), RFC 9110 §13–14, judged by
//! `conditional.rs` as the static roots' are. As a hyper
//! `Response` ([`respond`]), or as HTTP/1.1 bytes for the connections whose hits keel
//! answers before hyper ([`write_http1`], from `listener/h1_front.rs`).

use super::{CacheStatus, Entry};
use crate::conditional::{self, Precondition, Range, Validators};
use crate::http1_head;
use crate::request_check::has_none_of;
use crate::request_path::ResponseBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use std::time::Instant;

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
    let answer = if has_none_of(req, &conditional::FIELDS) {
        Answer::Whole
    } else {
        Answer::of(entry, method, req)
    };
    let len = entry.body.len() as u64;
    let (code, headers, body) = match answer {
        Answer::Whole => (
            entry.status,
            hit_headers(entry, status),
            Some(entry.body.clone()),
        ),
        Answer::PreconditionFailed => (
            StatusCode::PRECONDITION_FAILED,
            failed_headers(entry, status),
            None,
        ),
        Answer::NotModified => {
            let mut headers = hit_headers(entry, status);
            for name in NOT_IN_304 {
                headers.remove(name);
            }
            (StatusCode::NOT_MODIFIED, headers, None)
        }
        Answer::Part(first, last) => {
            let mut headers = hit_headers(entry, status);
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            let body = entry.body.slice(first as usize..=last as usize);
            (StatusCode::PARTIAL_CONTENT, headers, Some(body))
        }
        Answer::Unsatisfiable => {
            let mut headers = hit_headers(entry, status);
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            (StatusCode::RANGE_NOT_SATISFIABLE, headers, None)
        }
    };
    // HEAD: hyper sends the head only, with the Content-Length of this body.
    let mut resp = Response::new(ResponseBody::Full(body));
    *resp.status_mut() = code;
    *resp.headers_mut() = headers;
    resp.extensions_mut().insert(status);
    resp
}

/// What a hit answers with (RFC 9110 §13.2.2: the preconditions, then the range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The entry as stored.
    Whole,
    /// 412: `If-Match` or `If-Unmodified-Since` failed.
    PreconditionFailed,
    /// 304.
    NotModified,
    /// 206: the body's bytes `first..=last`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

impl Answer {
    /// The answer to `method` with fields `req`, some of them conditional, from `entry`.
    fn of(entry: &Entry, method: &Method, req: &HeaderMap) -> Answer {
        // RFC 9110 §13.2.1: preconditions apply only to what would be a 2xx.
        if !entry.status.is_success() {
            return Answer::Whole;
        }
        let ours = validators(entry);
        match conditional::preconditions(req, ours) {
            Precondition::Holds => {}
            Precondition::Failed => return Answer::PreconditionFailed,
            Precondition::NotModified => return Answer::NotModified,
        }
        if entry.status != StatusCode::OK || *method != Method::GET {
            return Answer::Whole;
        }
        match conditional::range(req, ours, entry.body.len() as u64) {
            Range::Whole => Answer::Whole,
            Range::Part(first, last) => Answer::Part(first, last),
            Range::Unsatisfiable => Answer::Unsatisfiable,
        }
    }
}

/// What the entry is compared by.
fn validators(entry: &Entry) -> Validators<'_> {
    Validators {
        etag: entry.etag.as_ref().map(HeaderValue::as_bytes),
        last_modified: entry.last_modified.map(conditional::seconds),
        date: conditional::seconds(entry.date),
    }
}

/// The entry's fields with `Age`, `x-cache` and, for a stale answer, its warnings.
fn hit_headers(entry: &Entry, status: CacheStatus) -> HeaderMap {
    let mut headers = entry.headers.clone();
    let age = entry.age(Instant::now()).as_secs();
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
    headers
}

/// A 412's fields: the validators the request failed against, and `x-cache`. None of the
/// entry's caching fields, so that no cache on the way stores the 412 for the URL.
fn failed_headers(entry: &Entry, status: CacheStatus) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [header::ETAG, header::LAST_MODIFIED] {
        if let Some(v) = entry.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    headers.insert(super::X_CACHE, HeaderValue::from_static(status.as_str()));
    headers
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
    let head_only = *method == Method::HEAD;
    let (status, body, len, framing) = if has_none_of(req, &conditional::FIELDS) {
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
