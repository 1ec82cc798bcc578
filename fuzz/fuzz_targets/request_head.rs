//! Feeds arbitrary bytes to the daemon's request-head admission the way a client connection
//! reaches it:
//!
//! 1. the bytes stream through `listener::framing::HeadScan` (which finds each HTTP/1 head
//!    and the body after it, as hyper does) in chunks, and again one byte at a time: the two
//!    must agree on every head and on the first head with both `Content-Length` and
//!    `Transfer-Encoding`;
//! 2. the first line becomes a request line (`METHOD TARGET VERSION`) and the next lines
//!    header fields, built into an `http::Request` as hyper would hand it over; then
//!    `request_check::check` runs, and the canonical path it returns is routed through a small
//!    route table.
//!
//! Checks: no panic; an accepted path is canonical (starts with `/`, no empty, `.` or `..`
//! segment, no control character or backslash, at most 255 segments of at most 260
//! characters, and canonicalising it again changes nothing unless it holds a `%`, `?` or
//! `#`).
//!
//! Run: `cargo +nightly fuzz run request_head fuzz/corpus/request_head` from the repo root.

#![no_main]

use keel::listener::framing::HeadScan;
use keel::config::RequestLimits;
use keel::request_check;
use keel::routing::{HostPattern, RouteEntry, RouteTable};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    scan(data);
    check(data);
});

fn scan(data: &[u8]) {
    let mut whole = HeadScan::default();
    let mut chunked = HeadScan::default();
    let mut bytes = HeadScan::default();
    whole.feed(data);
    // Chunk sizes from the data's own length, so that splits vary without spending input.
    let step = 1 + data.len() % 7;
    for piece in data.chunks(step) {
        chunked.feed(piece);
    }
    for b in data {
        bytes.feed(std::slice::from_ref(b));
    }
    assert_eq!(whole.conflict(), chunked.conflict());
    assert_eq!(whole.conflict(), bytes.conflict());
    assert_eq!(whole.heads(), bytes.heads());
}

fn check(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(first) = lines.next() else { return };
    let mut words = first.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), version) = (words.next(), words.next(), words.next()) else {
        return;
    };
    let version = match version.map(|v| v.strip_suffix(b"\r").unwrap_or(v)) {
        Some(b"HTTP/1.0") => http::Version::HTTP_10,
        Some(b"HTTP/2") => http::Version::HTTP_2,
        Some(b"HTTP/0.9") => http::Version::HTTP_09,
        _ => http::Version::HTTP_11,
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(target)
        .version(version);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        builder = builder.header(&line[..colon], value);
    }
    let Ok(mut req) = builder.body(()) else { return };
    if data.first().is_some_and(|b| b & 1 == 1) {
        req.extensions_mut()
            .insert(request_check::LengthWithTransferEncoding);
    }
    let limits = RequestLimits::default();
    let Ok(path) = request_check::check(&req, &limits) else {
        return;
    };
    if path == "*" {
        return;
    }
    assert!(path.starts_with('/'), "{path:?}");
    let inner = path.trim_start_matches('/').trim_end_matches('/');
    if !inner.is_empty() {
        let segments: Vec<&str> = inner.split('/').collect();
        assert!(segments.len() <= limits.max_segments, "{path:?}");
        for s in &segments {
            assert!(!s.is_empty() && *s != "." && *s != "..", "{path:?}");
            assert!(s.chars().count() <= limits.max_segment_chars, "{path:?}");
        }
    }
    assert!(
        !path.chars().any(|c| c.is_control() || c == '\\'),
        "{path:?}"
    );
    // Decoding is not idempotent for what decodes to `%`, nor for `%3F` and `%23`, which
    // decode to the `?` and `#` a second pass would take for a query or a fragment.
    if !path.contains(['%', '?', '#']) {
        let again = keel::static_files::canonical_path(&path).ok();
        assert_eq!(again.as_deref(), Some(path.as_str()));
    }
    let host = req
        .uri()
        .host()
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok());
    let _ = routes().route(IpAddr::V4(Ipv4Addr::LOCALHOST), host, &path);
}

fn routes() -> &'static RouteTable<u8> {
    static TABLE: OnceLock<RouteTable<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let entry = |host, path_prefix: &str, target| RouteEntry {
            host,
            path_prefix: path_prefix.to_owned(),
            target,
        };
        RouteTable::new(vec![
            entry(HostPattern::Name("x".into()), "/", 0),
            entry(HostPattern::Name("x".into()), "/api/", 1),
            entry(HostPattern::Name("Ünï.example".into()), "/Straße", 2),
            entry(HostPattern::Weak, "/static", 3),
            entry(HostPattern::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), "/ip", 4),
        ])
    })
}
