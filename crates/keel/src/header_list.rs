//! Comma-separated list fields (RFC 9110 §5.6.1: `Connection`, `Vary`, `Cache-Control`,
//! `Accept-Encoding`, …), read the same way everywhere: every line of the field, split at
//! its commas, each member trimmed of spaces and tabs, empty members skipped (`a, , b` is
//! `a` and `b`). A line that is not visible ASCII (`HeaderValue::to_str` fails) is skipped
//! whole: no token of these fields can hold other bytes.
//!
//! [`items`] is the same split over one raw field value (a response head parsed by httparse,
//! before any `HeaderValue` exists).
//!
//! Entity-tag lists (`If-None-Match`, `If-Match`) are read by [`entity_tags`] instead: an
//! entity-tag may hold a comma (`"a,b"`).
//!
//! Not for a client's `Transfer-Encoding`: `request_check` reads it strictly (an empty
//! member or an unreadable line refuses the request), since a body's framing must not be
//! guessed.
//! Quoted strings are not parsed: a comma inside one (`no-cache="a, b"`) splits it, which
//! the callers' readings tolerate (an unknown directive is ignored).

use http::header::AsHeaderName;
use http::{HeaderMap, HeaderValue};

/// The members of every `name` line of `headers`, in order.
pub fn members(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers.get_all(name).into_iter().flat_map(line_members)
}

/// The members of one line (none if it is not visible ASCII).
fn line_members(line: &HeaderValue) -> impl Iterator<Item = &str> {
    line.to_str()
        .unwrap_or_default()
        .split(',')
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

/// The entity-tags of one `If-None-Match` / `If-Match` line (RFC 9110 §8.8.3), as (weak,
/// opaque-tag with its quotes), in order; `None` for `*`. A malformed member ends the list
/// (what came before it is kept).
pub fn entity_tags(line: &HeaderValue) -> Option<Vec<(bool, &[u8])>> {
    let b = line.as_bytes();
    if b.trim_ascii() == b"*" {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let weak = b[i..].starts_with(b"W/");
        if weak {
            i += 2;
        }
        if b.get(i) != Some(&b'"') {
            break;
        }
        let Some(len) = b[i + 1..].iter().position(|&c| c == b'"') else {
            break;
        };
        out.push((weak, &b[i..i + len + 2]));
        i += len + 2;
    }
    Some(out)
}

/// Whether the `lines` of an `If-None-Match` or `If-Match` field match our entity-tag
/// `ours` (`"x"` or `W/"x"`): weak comparison for `If-None-Match`, strong (`strong`: neither
/// tag weak) for `If-Match` (RFC 9110 §8.8.3.2). `*` matches; no line matches nothing.
pub fn etag_list_matches<'a>(
    lines: impl IntoIterator<Item = &'a HeaderValue>,
    ours: &[u8],
    strong: bool,
) -> bool {
    let (ours_weak, ours_tag) = match ours.strip_prefix(b"W/") {
        Some(tag) => (true, tag),
        None => (false, ours),
    };
    lines.into_iter().any(|line| match entity_tags(line) {
        None => true,
        Some(list) => list
            .iter()
            .any(|&(weak, tag)| tag == ours_tag && !(strong && (weak || ours_weak))),
    })
}

/// Whether a `name` line of `headers` lists `token` (ASCII case-insensitive).
pub fn lists(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    members(headers, name).any(|member| member.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn entity_tag_lists_keep_commas_inside_tags() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        /// A line, and its tags as (weak, tag) (`None`: `*`).
        type Case = (&'static str, Option<&'static [(bool, &'static str)]>);
        let table: &[Case] = &[
            ("*", None),
            (" * ", None),
            ("\"a\"", Some(&[(false, "\"a\"")])),
            (
                "\"a,b\", W/\"c\"",
                Some(&[(false, "\"a,b\""), (true, "\"c\"")]),
            ),
            (" , \"a\" ,", Some(&[(false, "\"a\"")])),
            // Malformed: the list ends there, keeping what came before.
            ("\"a\", b, \"c\"", Some(&[(false, "\"a\"")])),
            ("\"unterminated", Some(&[])),
        ];
        for &(line, want) in table {
            let value = v(line);
            let got = entity_tags(&value);
            let want: Option<Vec<(bool, &[u8])>> =
                want.map(|w| w.iter().map(|&(weak, t)| (weak, t.as_bytes())).collect());
            assert_eq!(got, want, "{line}");
        }
        // Weak comparison ignores weakness on either side; strong needs both strong.
        assert!(etag_list_matches([&v("W/\"a,b\"")], b"\"a,b\"", false));
        assert!(etag_list_matches([&v("\"x\", \"a\"")], b"W/\"a\"", false));
        assert!(!etag_list_matches([&v("\"x\", \"a\"")], b"W/\"a\"", true));
        assert!(!etag_list_matches([&v("W/\"a\"")], b"\"a\"", true));
        assert!(etag_list_matches([&v("\"a\"")], b"\"a\"", true));
        assert!(!etag_list_matches([&v("\"a\"")], b"\"a,b\"", false));
        assert!(etag_list_matches([&v("*")], b"\"z\"", true));
        // Every line of the field counts; a field with no line matches nothing.
        assert!(etag_list_matches(
            [&v("\"x\""), &v("\"a\"")],
            b"\"a\"",
            true
        ));
        assert!(!etag_list_matches([], b"\"a\"", false));
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
