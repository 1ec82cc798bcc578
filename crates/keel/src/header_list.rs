//! Comma-separated list fields (RFC 9110 §5.6.1: `Connection`, `Vary`, `Cache-Control`, …),
//! read the same way everywhere: every line of the field, split at its commas, each member
//! trimmed of spaces and tabs, empty members skipped (`a, , b` is `a` and `b`). A line that
//! is not visible ASCII (`HeaderValue::to_str` fails) is skipped whole: no token of these
//! fields can hold other bytes.
//!
//! [`items`] is the same split over one raw field value (a response head parsed by httparse,
//! before any `HeaderValue` exists).
//!
//! Not for a client's `Transfer-Encoding`: `request_check` reads it strictly (an empty member or an
//! unreadable line refuses the request), since a body's framing must not be guessed.
//! Quoted strings are not parsed: a comma inside one (`no-cache="a, b"`) splits it, which
//! the callers' readings tolerate (an unknown directive is ignored).

use http::HeaderMap;
use http::header::AsHeaderName;

/// The members of every `name` line of `headers`, in order.
pub fn members(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|member| !member.is_empty())
}

/// The members of one raw field value: split at its commas, trimmed, empty ones skipped.
pub fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Whether a `name` line of `headers` lists `token` (ASCII case-insensitive).
pub fn lists(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    members(headers, name).any(|member| member.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::{CONNECTION, VARY};

    fn headers(lines: &[&'static [u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(VARY, HeaderValue::from_bytes(line).unwrap());
        }
        h
    }

    #[test]
    fn members_of_every_line_trimmed_without_empty_ones() {
        let table: &[(&[&[u8]], &[&str])] = &[
            (&[], &[]),
            (&[b""], &[]),
            (&[b"accept-encoding"], &["accept-encoding"]),
            (&[b" a ,b\t, ,,c "], &["a", "b", "c"]),
            (&[b"a", b"b, c"], &["a", "b", "c"]),
            (&[b",", b" , "], &[]),
            // A line with a byte `to_str` refuses is skipped whole, not the others.
            (&[b"caf\xc3\xa9, x", b"y"], &["y"]),
            (&[b"*"], &["*"]),
        ];
        for (lines, want) in table {
            let h = headers(lines);
            let got: Vec<&str> = members(&h, VARY).collect();
            assert_eq!(got, *want, "{lines:?}");
        }
    }

    #[test]
    fn items_of_a_raw_value() {
        let got: Vec<&[u8]> = items(b" close ,, Keep-Alive\t,").collect();
        assert_eq!(got, [&b"close"[..], b"Keep-Alive"]);
        assert_eq!(items(b"").count(), 0);
    }

    #[test]
    fn lists_ignores_case_and_other_fields() {
        let h = headers(&[b"Origin", b"Accept-Encoding"]);
        assert!(lists(&h, VARY, "accept-encoding"));
        assert!(lists(&h, VARY, "ORIGIN"));
        assert!(!lists(&h, VARY, "cookie"));
        assert!(!lists(&h, CONNECTION, "origin"));
        assert!(!lists(
            &headers(&[b"accept-encodings"]),
            VARY,
            "accept-encoding"
        ));
    }
}
