//! A GET or HEAD's preconditions and byte range, judged against the representation it would
//! get (RFC 9110 §13–14): one reading for the response cache's hits (`cache/serve.rs`) and
//! the static roots (`static_files.rs`), so the two answer a conditional request alike.
//!
//! Invariant: plain functions of the request's fields and the representation's validators
//! (no clock, no I/O), covered by the tables below.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::time::{SystemTime, UNIX_EPOCH};

/// The request fields that can change the answer from a representation; a request with
/// none of them gets it whole (`If-Range` without `Range` changes nothing). A `static`, not
/// a `const`: a plain cache hit looks for them without building the array each time.
pub static FIELDS: [HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
];

/// What a representation is compared by.
#[derive(Clone, Copy, Debug)]
pub struct Validators<'a> {
    /// Its entity-tag as sent, quotes and all (`"x"`, or `W/"x"` when weak).
    pub etag: Option<&'a [u8]>,
    /// Its `Last-Modified`, in whole seconds since the epoch (what an HTTP-date holds).
    pub last_modified: Option<u64>,
    /// When the answer these validators belong to was made, in the same seconds: a cache
    /// entry's `Date`, the time a static file is answered. A `Last-Modified` is a strong
    /// validator only when it is at least one second before that (RFC 9110 §8.8.2.2): the
    /// representation may have changed again within its second.
    pub date: u64,
}

/// What the preconditions of a GET or HEAD say (RFC 9110 §13.2.2, steps 1 to 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// None failed: on to the range, then the representation.
    Holds,
    /// `If-Match` or `If-Unmodified-Since` failed: 412 Precondition Failed.
    Failed,
    /// `If-None-Match` or `If-Modified-Since` said the client has it: 304 Not Modified.
    NotModified,
}

/// Judges the preconditions of a GET or HEAD with fields `req` in RFC 9110 §13.2.2 order:
/// `If-Match`, else `If-Unmodified-Since`; then `If-None-Match`, else `If-Modified-Since`.
/// For a representation that exists and would be answered with a 2xx (§13.2.1: other
/// answers ignore preconditions, which is the caller's to know).
pub fn preconditions(req: &HeaderMap, ours: Validators<'_>) -> Precondition {
    if req.contains_key(header::IF_MATCH) {
        if !etag_matches(req, header::IF_MATCH, ours.etag, Comparison::Strong) {
            return Precondition::Failed;
        }
    } else if modified_since(req, header::IF_UNMODIFIED_SINCE, ours) == Some(true) {
        return Precondition::Failed;
    }
    if req.contains_key(header::IF_NONE_MATCH) {
        if etag_matches(req, header::IF_NONE_MATCH, ours.etag, Comparison::Weak) {
            return Precondition::NotModified;
        }
    } else if modified_since(req, header::IF_MODIFIED_SINCE, ours) == Some(false) {
        return Precondition::NotModified;
    }
    Precondition::Holds
}

/// RFC 9110 §8.8.3.2.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Both tags strong and equal (`If-Match`).
    Strong,
    /// Equal once `W/` is set aside (`If-None-Match`).
    Weak,
}

/// Whether the `name` lines (an entity-tag list) of `req` match `ours`: `*` matches any
/// representation, with an entity-tag or not (RFC 9110 §13.1.1, §13.1.2); a list of tags
/// matches only a representation that has one.
fn etag_matches(
    req: &HeaderMap,
    name: HeaderName,
    ours: Option<&[u8]>,
    comparison: Comparison,
) -> bool {
    let lines = req.get_all(name);
    match ours {
        Some(tag) => {
            let strong = comparison == Comparison::Strong;
            crate::header_list::etag_list_matches(lines, tag, strong)
        }
        None => lines
            .iter()
            .any(|line| crate::header_list::entity_tags(line).is_none()),
    }
}

/// Whether the representation was modified after the date of `req`'s `name` field; `None`
/// when that field is absent or not an HTTP-date, or the representation has no
/// `Last-Modified` (RFC 9110 §13.1.3, §13.1.4: the field is then ignored).
fn modified_since(req: &HeaderMap, name: HeaderName, ours: Validators<'_>) -> Option<bool> {
    let since = http_date(req.get(name)?)?;
    Some(ours.last_modified? > since)
}

/// What a GET's `Range` asks of a representation of `len` bytes (RFC 9110 §14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// No byte range to serve (none asked, `If-Range` no longer names this representation,
    /// several ranges, another unit, bad syntax): the whole representation, 200.
    Whole,
    /// Bytes `first..=last`: 206.
    Part(u64, u64),
    /// Not one byte of the range is there: 416.
    Unsatisfiable,
}

/// The range a GET with fields `req` asks of `ours` (`len` bytes): its `Range`, honoured
/// only while its `If-Range` (if any) still names `ours` (RFC 9110 §13.1.5). Several ranges
/// are answered whole: a 200 is allowed (§14.2), multipart/byteranges is not produced.
pub fn range(req: &HeaderMap, ours: Validators<'_>, len: u64) -> Range {
    let Some(value) = req.get(header::RANGE) else {
        return Range::Whole;
    };
    if let Some(if_range) = req.get(header::IF_RANGE)
        && !if_range_holds(if_range, ours)
    {
        return Range::Whole;
    }
    byte_range(value, len)
}

/// `If-Range` (RFC 9110 §13.1.5): a strong entity-tag equal to ours, or exactly our
/// `Last-Modified` date (as nginx compares it) while that date is a strong validator (at
/// least one second before our `date`). A weak tag never holds.
fn if_range_holds(value: &HeaderValue, ours: Validators<'_>) -> bool {
    let v = value.as_bytes();
    if v.starts_with(b"\"") {
        // Ours, if weak, starts with `W/`: never equal.
        return ours.etag == Some(v);
    }
    if v.starts_with(b"W/") {
        return false;
    }
    ours.last_modified
        .is_some_and(|lm| lm < ours.date && http_date(value) == Some(lm))
}

/// One `Range` value against `len` bytes. The unit is case-insensitive (RFC 9110 §14.1).
fn byte_range(value: &HeaderValue, len: u64) -> Range {
    let Some(text) = value.to_str().ok().map(str::trim) else {
        return Range::Whole;
    };
    let Some((unit, set)) = text.split_once('=') else {
        return Range::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Range::Whole;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Range::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let (first_text, last_text) = (first.trim(), last.trim());
    match (first_text.is_empty(), digits(first_text), digits(last_text)) {
        // The last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part(len - suffix.min(len), len - 1)
            }
        }
        // `first-last`, or `first-` (to the end).
        (false, Some(first), last) if last.is_some() || last_text.is_empty() => {
            if last.is_some_and(|l| l < first) {
                return Range::Whole;
            }
            if first >= len {
                return Range::Unsatisfiable;
            }
            Range::Part(first, last.map_or(len - 1, |l| l.min(len - 1)))
        }
        _ => Range::Whole,
    }
}

/// A position: digits only (no sign), fitting a u64.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An HTTP-date field value in whole seconds since the epoch (an earlier date as 0).
fn http_date(value: &HeaderValue) -> Option<u64> {
    let when = httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()?;
    Some(seconds(when))
}

/// `t` in whole seconds since the epoch, as an HTTP-date holds it (an earlier time as 0).
pub fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_fields::header_map as fields;

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const BEFORE: &str = "Sat, 05 Nov 1994 08:49:37 GMT";
    const AFTER: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    fn date(text: &str) -> u64 {
        seconds(httpdate::parse_http_date(text).unwrap())
    }

    fn last_modified() -> Option<u64> {
        Some(date(LM))
    }

    #[test]
    fn preconditions_in_rfc_9110_order() {
        use Precondition::*;
        let tagged = Validators {
            etag: Some(b"\"v1\""),
            last_modified: last_modified(),
            date: date(AFTER),
        };
        let weak = Validators {
            etag: Some(b"W/\"v1\""),
            ..tagged
        };
        let untagged = Validators {
            etag: None,
            ..tagged
        };
        let bare = Validators {
            etag: None,
            last_modified: None,
            ..tagged
        };
        /// The representation, the request's fields, what they say.
        type Row<'a> = (Validators<'a>, &'a [(&'a str, &'a str)], Precondition);
        let rows: &[Row] = &[
            (tagged, &[], Holds),
            // If-Match: strong comparison, `*` matches anything there is.
            (tagged, &[("if-match", "\"v1\"")], Holds),
            (tagged, &[("if-match", "\"zz\"")], Failed),
            (tagged, &[("if-match", "\"zz\", \"v1\"")], Holds),
            (
                tagged,
                &[("if-match", "\"zz\""), ("if-match", "\"v1\"")],
                Holds,
            ),
            (tagged, &[("if-match", "W/\"v1\"")], Failed),
            (weak, &[("if-match", "W/\"v1\"")], Failed),
            (tagged, &[("if-match", "*")], Holds),
            (untagged, &[("if-match", "*")], Holds),
            (untagged, &[("if-match", "\"v1\"")], Failed),
            // If-Unmodified-Since: only without If-Match, only with a Last-Modified.
            (tagged, &[("if-unmodified-since", BEFORE)], Failed),
            (tagged, &[("if-unmodified-since", LM)], Holds),
            (tagged, &[("if-unmodified-since", AFTER)], Holds),
            (tagged, &[("if-unmodified-since", "yesterday")], Holds),
            (bare, &[("if-unmodified-since", BEFORE)], Holds),
            (
                tagged,
                &[("if-match", "\"v1\""), ("if-unmodified-since", BEFORE)],
                Holds,
            ),
            // If-None-Match: weak comparison, `*` matches anything there is.
            (tagged, &[("if-none-match", "\"v1\"")], NotModified),
            (tagged, &[("if-none-match", "W/\"v1\"")], NotModified),
            (weak, &[("if-none-match", "\"v1\"")], NotModified),
            (tagged, &[("if-none-match", "\"zz\"")], Holds),
            (tagged, &[("if-none-match", "*")], NotModified),
            (untagged, &[("if-none-match", "*")], NotModified),
            (bare, &[("if-none-match", "*")], NotModified),
            (untagged, &[("if-none-match", "\"v1\"")], Holds),
            // If-Modified-Since: only without If-None-Match, only with a Last-Modified.
            (tagged, &[("if-modified-since", LM)], NotModified),
            (tagged, &[("if-modified-since", AFTER)], NotModified),
            (tagged, &[("if-modified-since", BEFORE)], Holds),
            (bare, &[("if-modified-since", AFTER)], Holds),
            (
                tagged,
                &[("if-none-match", "\"zz\""), ("if-modified-since", LM)],
                Holds,
            ),
            // A failed If-Match or If-Unmodified-Since comes before a 304.
            (
                tagged,
                &[("if-match", "\"zz\""), ("if-none-match", "\"v1\"")],
                Failed,
            ),
            (
                tagged,
                &[("if-unmodified-since", BEFORE), ("if-modified-since", LM)],
                Failed,
            ),
            (
                tagged,
                &[("if-match", "\"v1\""), ("if-none-match", "\"v1\"")],
                NotModified,
            ),
        ];
        for (i, (ours, req, want)) in rows.iter().enumerate() {
            let got = preconditions(&fields(req), *ours);
            assert_eq!(got, *want, "row {i}: {req:?} against {ours:?}");
        }
    }

    #[test]
    fn byte_ranges() {
        use Range::*;
        let rows: &[(&str, u64, Range)] = &[
            ("bytes=0-4", 12, Part(0, 4)),
            ("bytes=6-", 12, Part(6, 11)),
            ("bytes=-3", 12, Part(9, 11)),
            ("bytes=-100", 12, Part(0, 11)),
            ("bytes=5-100", 12, Part(5, 11)),
            ("bytes=11-11", 12, Part(11, 11)),
            // The unit in any case (RFC 9110 §14.1).
            ("BYTES=0-4", 12, Part(0, 4)),
            ("Bytes=0-4", 12, Part(0, 4)),
            ("BYTES = 1-2", 12, Part(1, 2)),
            ("bytes=12-", 12, Unsatisfiable),
            ("bytes=100-200", 12, Unsatisfiable),
            ("bytes=-0", 12, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=5-4", 12, Whole),
            ("bytes=0-1,3-4", 12, Whole),
            ("bytes=a-b", 12, Whole),
            ("bytes=x-1", 12, Whole),
            ("bytes=+1-2", 12, Whole),
            ("bytes=-", 12, Whole),
            ("bytes=1", 12, Whole),
            ("items=0-1", 12, Whole),
            ("bytes=99999999999999999999999-", 12, Whole),
        ];
        for (value, len, want) in rows {
            let req = fields(&[("range", value)]);
            let ours = Validators {
                etag: None,
                last_modified: None,
                date: date(AFTER),
            };
            assert_eq!(range(&req, ours, *len), *want, "{value} of {len}");
        }
        assert_eq!(range(&HeaderMap::new(), ours_v1(), 12), Whole);
    }

    /// Tagged, and last modified a day before its answer's `Date`.
    fn ours_v1() -> Validators<'static> {
        Validators {
            etag: Some(b"\"v1\""),
            last_modified: last_modified(),
            date: date(AFTER),
        }
    }

    #[test]
    fn if_range_names_the_representation_or_the_whole_is_sent() {
        let weak = Validators {
            etag: Some(b"W/\"v1\""),
            last_modified: None,
            ..ours_v1()
        };
        // Last modified in the second of its answer's `Date`, or one second before it.
        let same_second = Validators {
            date: date(LM),
            ..ours_v1()
        };
        let second_before = Validators {
            date: date("Sun, 06 Nov 1994 08:49:38 GMT"),
            ..ours_v1()
        };
        let rows: &[(Validators, &str, Range)] = &[
            (ours_v1(), "\"v1\"", Range::Part(0, 4)),
            (ours_v1(), LM, Range::Part(0, 4)),
            // A date is compared as nginx compares it (equal to `Last-Modified`), and only
            // while it is a strong validator (RFC 9110 §13.1.5, §8.8.2.2).
            (second_before, LM, Range::Part(0, 4)),
            (same_second, LM, Range::Whole),
            (same_second, "\"v1\"", Range::Part(0, 4)),
            (
                Validators {
                    date: date(BEFORE),
                    ..ours_v1()
                },
                LM,
                Range::Whole,
            ),
            (ours_v1(), BEFORE, Range::Whole),
            (ours_v1(), "\"v2\"", Range::Whole),
            (ours_v1(), "W/\"v1\"", Range::Whole),
            (ours_v1(), AFTER, Range::Whole),
            (ours_v1(), "garbage", Range::Whole),
            (weak, "W/\"v1\"", Range::Whole),
            (weak, "\"v1\"", Range::Whole),
        ];
        for (i, (ours, if_range, want)) in rows.iter().enumerate() {
            let req = fields(&[("range", "bytes=0-4"), ("if-range", if_range)]);
            assert_eq!(
                range(&req, *ours, 12),
                *want,
                "row {i}: If-Range: {if_range}"
            );
        }
    }
}
