//! HTTP/1.1 response heads written by keel itself, the way hyper's server writes them:
//! lower-case field names; `Content-Length` from the body's size (or chunked when it is not
//! known) unless the response says it; none of either for 1xx, 204 and 304; `Date` unless
//! the response has one; `Connection: close` when the connection ends after the answer.
//! Used by the cache's prepared entries and hits (`cache/serve.rs`) and by the answers the
//! HTTP/1.1 front writes (`listener/h1_writer.rs`, `request_path::answer_in_front`).

use bytes::{BufMut, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap};
use std::time::{Duration, SystemTime};

/// How a response's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body is sent (1xx, 204, 304, or HEAD without a known length).
    None,
    Length(u64),
    Chunked,
}

/// The status line and `headers`.
pub fn put_start(status: StatusCode, headers: &HeaderMap, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// Ends a head begun with [`put_start`] (`headers` are the fields written there): the
/// body's length (`body_len` when known) or `Transfer-Encoding: chunked` where `headers`
/// do not give a length, `Date` and `Connection: close` (when `close`) unless `headers` have
/// them, and the blank line. `head_only`: the answer to a HEAD. Returns how the body that
/// follows is delimited.
pub fn put_end(
    status: StatusCode,
    headers: &HeaderMap,
    body_len: Option<u64>,
    head_only: bool,
    close: bool,
    out: &mut BytesMut,
) -> Framing {
    let written = Written::of(headers, close);
    put_end_known(status, written, body_len, head_only, close, out)
}

/// What the fields written by [`put_start`] already say, for [`put_end_known`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    /// Their `Content-Length`, when it parses.
    pub content_length: Option<u64>,
    /// They have a `Date`.
    pub date: bool,
    /// They have a `Connection` (only looked at when the head is to close).
    pub connection: bool,
}

impl Written {
    /// What `headers` say; `Connection` is looked up only when `close` (a head that stays
    /// open never needs it).
    pub fn of(headers: &HeaderMap, close: bool) -> Written {
        Written {
            content_length: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            date: headers.contains_key(header::DATE),
            connection: close && headers.contains_key(header::CONNECTION),
        }
    }
}

/// [`put_end`] for fields known in advance (a cache entry's, looked at once when stored).
pub fn put_end_known(
    status: StatusCode,
    written: Written,
    body_len: Option<u64>,
    head_only: bool,
    close: bool,
    out: &mut BytesMut,
) -> Framing {
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = written.content_length;
    let framing = if no_body {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body_len {
        out.put_slice(b"content-length: ");
        put_decimal(n, out);
        out.put_slice(b"\r\n");
        Framing::Length(n)
    } else if head_only {
        Framing::None
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !written.date {
        out.put_slice(b"date: ");
        put_date_now(out);
        out.put_slice(b"\r\n");
    }
    if close && !written.connection {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    framing
}

/// `n` in decimal.
pub fn put_decimal(n: u64, out: &mut BytesMut) {
    out.put_slice(decimal(n, &mut [0; 20]));
}

/// `n` in decimal, written at the end of `digits` (without the formatting machinery).
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// The current time as an HTTP date, formatted once a second per thread (as hyper does).
fn put_date_now(out: &mut BytesMut) {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }
    // A date in seconds needs no more than the coarse clock.
    let secs = crate::os::clock::coarse_unix_secs();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            if text.len() != 29 {
                // Never for dates in this era; written as is, uncached.
                return out.put_slice(text.as_bytes());
            }
            c.1.copy_from_slice(text.as_bytes());
            c.0 = secs;
        }
        out.put_slice(&c.1);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(status: u16, fields: &[(&str, &str)], len: Option<u64>, head_only: bool) -> String {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.insert(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        let mut out = BytesMut::new();
        put_start(status, &h, &mut out);
        put_end(status, &h, len, head_only, true, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        // The date varies: only its presence is checked.
        text.lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// Status, fields, body length, HEAD, the head expected (lines joined by `|`, no Date).
    type Case<'a> = (u16, &'a [(&'a str, &'a str)], Option<u64>, bool, &'a str);

    #[test]
    fn heads_are_framed_as_hyper_frames_them() {
        let cases: &[Case] = &[
            (
                200,
                &[("x", "1")],
                Some(13),
                false,
                "HTTP/1.1 200 OK|x: 1|content-length: 13|connection: close|",
            ),
            (
                200,
                &[("content-length", "5")],
                Some(13),
                false,
                "HTTP/1.1 200 OK|content-length: 5|connection: close|",
            ),
            (
                200,
                &[],
                None,
                false,
                "HTTP/1.1 200 OK|transfer-encoding: chunked|connection: close|",
            ),
            (200, &[], None, true, "HTTP/1.1 200 OK|connection: close|"),
            (
                200,
                &[],
                Some(7),
                true,
                "HTTP/1.1 200 OK|content-length: 7|connection: close|",
            ),
            (
                304,
                &[("etag", "\"v\"")],
                Some(36),
                false,
                "HTTP/1.1 304 Not Modified|etag: \"v\"|connection: close|",
            ),
            (
                204,
                &[],
                Some(0),
                false,
                "HTTP/1.1 204 No Content|connection: close|",
            ),
            (
                400,
                &[("connection", "close")],
                Some(2),
                false,
                "HTTP/1.1 400 Bad Request|connection: close|content-length: 2|",
            ),
        ];
        for (status, fields, len, head_only, want) in cases {
            assert_eq!(
                &head(*status, fields, *len, *head_only),
                want,
                "{status} {fields:?}"
            );
        }
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 4096, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(n, &mut out);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
