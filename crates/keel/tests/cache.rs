//! The response cache end to end: a real daemon, real demo workers, real sockets. The demo
//! worker counts its calls per `id` (`/count?id=X`), so "from cache" means "the worker was
//! not called".

mod common;

use common::{Daemon, demo_config, get, raw_request, rss_kib};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn start(cache: &str, pool_extra: &str) -> Daemon {
    Daemon::start(&format!("[cache]\n{cache}\n{}", demo_config(pool_extra)))
}

fn count(addr: SocketAddr, id: &str) -> u64 {
    let r = get(addr, &format!("/count?id={id}"));
    assert_eq!(r.status, 200);
    r.text().parse().unwrap()
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> common::RawResponse {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    raw_request(addr, raw.as_bytes())
}

#[test]
fn a_cacheable_url_reaches_the_worker_once_per_ttl_and_never_with_cookie_or_private() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    for i in 0..1000 {
        let r = get(a, "/cached?ttl=2&id=a");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "/cached id=a call=1");
        let want = if i == 0 { "MISS" } else { "HIT" };
        assert_eq!(r.header("x-cache"), Some(want), "request {i}");
        if i > 0 {
            assert!(r.header("age").is_some());
        }
    }
    assert_eq!(count(a, "a"), 1);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(a, "/cached?ttl=2&id=a").text(), "/cached id=a call=2");
    assert_eq!(get(a, "/cached?ttl=2&id=a").header("x-cache"), Some("HIT"));
    assert_eq!(count(a, "a"), 2);

    for _ in 0..20 {
        assert_eq!(get(a, "/cookie?id=c").status, 200);
        assert_eq!(get(a, "/private?id=p").status, 200);
    }
    assert_eq!(count(a, "c"), 20);
    assert_eq!(count(a, "p"), 20);
}

/// The cache key is built from the Host as sent: a Host that is not `host[:port]` would let
/// `Host: h/x` plus `/p` share the key of `/x/p` on `h`.
#[test]
fn a_host_with_a_path_cannot_plant_an_answer_under_another_url() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    for host in [format!("{a}/x"), format!("{a}/x?"), format!("u@{a}")] {
        let raw =
            format!("GET /cached?id=plant HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw_request(a, raw.as_bytes());
        assert_eq!(r.status, 400, "Host: {host}: {r:?}");
        assert!(r.text().contains("Hostname"), "{}", r.text());
    }
    assert_eq!(count(a, "plant"), 0);
    let r = get(a, "/x/cached?id=plant");
    assert_ne!(r.header("x-cache"), Some("HIT"), "{r:?}");
    assert!(!r.text().contains("call="), "{}", r.text());
}

#[test]
fn default_admission_stores_on_the_second_request() {
    let d = start("", "");
    let a = d.addr();
    for _ in 0..50 {
        assert_eq!(get(a, "/cached?id=f").status, 200);
    }
    assert_eq!(count(a, "f"), 2);
}

#[test]
fn vary_accept_encoding_keeps_two_variants_and_vary_star_is_never_stored() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    for _ in 0..3 {
        let gz = request(a, "GET", "/vary?id=v", &["Accept-Encoding: gzip"]);
        assert_eq!(gz.text(), "enc=gzip call=1");
        let br = request(a, "GET", "/vary?id=v", &["Accept-Encoding: br"]);
        assert_eq!(br.text(), "enc=br call=2");
    }
    assert_eq!(count(a, "v"), 2);
    for _ in 0..3 {
        assert_eq!(get(a, "/varystar?id=s").status, 200);
    }
    assert_eq!(count(a, "s"), 3);
}

/// Everything the daemon sends for a HEAD request until it closes the connection.
fn head_exchange(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn head_conditionals_and_ranges_come_from_the_cache() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let full = get(a, "/etag?id=e");
    assert_eq!(full.text(), "0123456789abcdefghijklmnopqrstuvwxyz");

    // HEAD: the whole exchange up to the server's close has no body after the head.
    let head = head_exchange(a, "/etag?id=e");
    let (fields, body) = head.split_once("\r\n\r\n").unwrap();
    assert!(fields.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        fields.to_ascii_lowercase().contains("x-cache: hit"),
        "{head}"
    );
    assert!(
        fields.to_ascii_lowercase().contains("content-length: 36"),
        "{head}"
    );
    assert!(body.is_empty(), "{head}");

    let inm = request(a, "GET", "/etag?id=e", &["If-None-Match: \"v0\", \"v1\""]);
    assert_eq!(inm.status, 304);
    assert_eq!(inm.header("etag"), Some("\"v1\""));
    assert!(inm.body.is_empty());
    let other = request(a, "GET", "/etag?id=e", &["If-None-Match: \"v2\""]);
    assert_eq!(other.status, 200);

    let ims = request(
        a,
        "GET",
        "/etag?id=e",
        &["If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"],
    );
    assert_eq!(ims.status, 304);
    let older = request(
        a,
        "GET",
        "/etag?id=e",
        &["If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT"],
    );
    assert_eq!(older.status, 200);

    let range = request(a, "GET", "/etag?id=e", &["Range: bytes=10-15"]);
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "abcdef");
    assert_eq!(range.header("content-range"), Some("bytes 10-15/36"));
    let suffix = request(a, "GET", "/etag?id=e", &["Range: bytes=-3"]);
    assert_eq!(suffix.text(), "xyz");
    let multi = request(a, "GET", "/etag?id=e", &["Range: bytes=0-1,3-4"]);
    assert_eq!(multi.status, 200);
    let past = request(a, "GET", "/etag?id=e", &["Range: bytes=100-"]);
    assert_eq!(past.status, 416);

    assert_eq!(count(a, "e"), 1);
}

#[test]
fn a_worker_invalidates_by_prefix() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    for _ in 0..3 {
        get(a, "/cached?id=inv1");
        get(a, "/cached?id=inv2");
        get(a, "/cached?id=keep");
    }
    let r = get(a, "/invalidate?prefix=/cached?id=inv");
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        get(a, "/cached?id=inv1");
        get(a, "/cached?id=inv2");
        get(a, "/cached?id=keep");
    }
    assert_eq!(count(a, "inv1"), 2);
    assert_eq!(count(a, "inv2"), 2);
    assert_eq!(count(a, "keep"), 1);

    let r = get(a, "/invalidate?exact=/cached?id=keep");
    assert_eq!(r.status, 200);
    get(a, "/cached?id=keep");
    assert_eq!(count(a, "keep"), 2);
}

#[test]
fn concurrent_first_requests_reach_the_worker_once_with_the_default_settings() {
    let d = start("", "");
    let a = d.addr();
    let threads: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || get(a, "/slow-cached?ms=700&id=col")))
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "/slow-cached id=col call=1");
    }
    assert_eq!(count(a, "col"), 1);
}

#[test]
fn stale_if_error_answers_while_the_pool_is_offline_then_503() {
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    std::fs::write(&fail, "ok").unwrap();
    let d = start(
        "admission = \"always\"\nstale_if_error = \"3s\"",
        &format!(
            "queue_timeout = \"1s\"\nrapid_fail = {{ failures = 2, interval = \"1m\", backoff = false }}\nenv = {{ KEEL_DEMO_FAIL_FILE = \"{}\" }}",
            fail.display()
        ),
    );
    let a = d.addr();
    let warm = get(a, "/cached?ttl=1&id=stale");
    assert_eq!(warm.status, 200);
    let stored = Instant::now();
    std::fs::write(&fail, "fail").unwrap();
    for pid in d.worker_pids() {
        common::kill(pid);
    }
    std::thread::sleep(Duration::from_millis(1300).saturating_sub(stored.elapsed()));
    let r = get(a, "/cached?ttl=1&id=stale");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "/cached id=stale call=1");
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
    assert!(r.header("age").is_some());
    assert!(stored.elapsed() < Duration::from_secs(4));

    std::thread::sleep(Duration::from_millis(4500).saturating_sub(stored.elapsed()));
    let r = get(a, "/cached?ttl=1&id=stale");
    assert_eq!(r.status, 503, "{r:?}");
    // Looked up and not answered from the cache: a miss, as the figures count it.
    assert_eq!(r.header("x-cache"), Some("MISS"));
}

/// Margin over `max_bytes` the daemon's resident set may grow by while the cache fills and
/// churns (allocator slack, moka's structures, connection buffers).
const RSS_MARGIN_KIB: u64 = 16 * 1024;

#[test]
fn memory_stays_bounded() {
    let max_kib = 2 * 1024;
    let d = start("admission = \"always\"\nmax_bytes = \"2 MiB\"", "");
    let a = d.addr();
    // Warm up the daemon's own buffers first.
    for i in 0..20 {
        get(a, &format!("/cached?id=warm{i}&size=1000"));
    }
    let before = rss_kib(d.pid());
    let mut peak = before;
    // 3 × max_bytes of distinct cacheable 64 KiB responses.
    for i in 0..96 {
        let r = get(a, &format!("/cached?id=m{i}&size=65536"));
        assert_eq!(r.body.len(), 65536);
        peak = peak.max(rss_kib(d.pid()));
    }
    // The newest ones are cached, the oldest were evicted.
    assert_eq!(
        get(a, "/cached?id=m95&size=65536").header("x-cache"),
        Some("HIT")
    );
    assert_eq!(
        get(a, "/cached?id=m0&size=65536").header("x-cache"),
        Some("MISS")
    );
    eprintln!("daemon RSS: {before} KiB before, peak {peak} KiB");
    assert!(
        peak <= before + max_kib + RSS_MARGIN_KIB,
        "RSS grew from {before} KiB to {peak} KiB"
    );
}

/// What the cache remembers of URLs it did not store (admission counts, uncacheable URLs) is
/// bounded too, whatever the URLs' length: 4,000 distinct 6 KB URLs (24 MB of them) leave
/// the daemon's RSS within the margin.
#[test]
fn urls_the_cache_did_not_store_do_not_grow_memory() {
    use std::io::{BufReader, Write};
    let d = start("max_bytes = \"1 MiB\"", "");
    let a = d.addr();
    let pad = "p".repeat(6000);
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut batch = |from: usize| {
        let mut raw = String::new();
        for i in from..from + 50 {
            // A cacheable URL seen once (admission counts it) and an uncacheable one.
            let path = if i % 2 == 0 { "/cached" } else { "/private" };
            raw.push_str(&format!(
                "GET {path}?id=u{i}&pad={pad} HTTP/1.1\r\nHost: localhost\r\n\r\n"
            ));
        }
        s.write_all(raw.as_bytes()).unwrap();
        for _ in 0..50 {
            assert_eq!(common::read_response(&mut r).unwrap().status, 200);
        }
    };
    batch(0);
    let before = rss_kib(d.pid());
    let mut peak = before;
    for from in (50..4000).step_by(50) {
        batch(from);
        peak = peak.max(rss_kib(d.pid()));
    }
    eprintln!("daemon RSS: {before} KiB before, peak {peak} KiB");
    assert!(
        peak <= before + 1024 + RSS_MARGIN_KIB,
        "RSS grew from {before} KiB to {peak} KiB"
    );
}

/// Two sites whose bindings accept the same `Host` (on two ports here) compute the same
/// key for a URL: each is answered only with what its own pool sent.
#[test]
fn a_site_is_never_answered_with_another_sites_entry() {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pa, pb) = (port(), port());
    let _daemon = Daemon::start(&format!(
        r#"
[cache]
admission = "always"

[[site]]
name = "a"
bindings = ["http://127.0.0.1:{pa}"]
app = [{{ path = "/", pool = "a" }}]

[[site]]
name = "b"
bindings = ["http://127.0.0.1:{pb}"]
app = [{{ path = "/", pool = "b" }}]

[pool.a]
command = ["{{demo}}"]

[pool.b]
command = ["{{demo}}"]
"#
    ));
    let (a, b): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{pa}").parse().unwrap(),
        format!("127.0.0.1:{pb}").parse().unwrap(),
    );
    let url = "/cached?ttl=60&id=shared";
    // Both with `Host: localhost`: one cache key.
    let r = request(a, "GET", url, &[]);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(request(a, "GET", url, &[]).header("x-cache"), Some("HIT"));
    let r = request(b, "GET", url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-cache"),
        Some("MISS"),
        "b answered from a's entry"
    );
    assert_eq!(count(b, "shared"), 1, "b's own worker answered");
    assert_eq!(request(b, "GET", url, &[]).header("x-cache"), Some("HIT"));
    // b's response took the key: a's next request goes to a's worker, not to b's entry.
    let r = request(a, "GET", url, &[]);
    assert_eq!(
        r.header("x-cache"),
        Some("MISS"),
        "a answered from b's entry"
    );
    assert_eq!(count(a, "shared"), 2);
}

/// A cached URL is answered from the cache whatever its request head looks like (more
/// fields, a Host in capitals, HEAD, pipelined, a target with bytes outside the plainest
/// set), and the request limits still refuse a head that breaks them, cached URL or not.
#[test]
fn a_cached_url_is_a_hit_in_any_head_and_the_limits_still_apply() {
    use std::io::{BufReader, Write};
    let config = demo_config("").replacen("[listener]\n", "[listener]\nmax_field_bytes = 200\n", 1);
    let d = Daemon::start(&format!("[cache]\nadmission = \"always\"\n{config}"));
    let a = d.addr();
    let url = "/cached?ttl=60&id=forms";
    let x_cache = |r: common::RawResponse| (r.status, r.header("x-cache").map(str::to_owned));
    let hit = (200, Some("HIT".to_owned()));
    assert_eq!(
        x_cache(request(a, "GET", url, &[])),
        (200, Some("MISS".to_owned()))
    );
    assert_eq!(x_cache(request(a, "GET", url, &[])), hit);
    let fields = [
        "User-Agent: test",
        "Accept: */*",
        "Accept-Language: en",
        "Cookie: a=b",
    ];
    assert_eq!(x_cache(request(a, "GET", url, &fields)), hit);
    let capitals = format!("GET {url} HTTP/1.1\r\nHost: LOCALHOST\r\nConnection: close\r\n\r\n");
    assert_eq!(x_cache(raw_request(a, capitals.as_bytes())), hit);
    assert!(head_exchange(a, url).contains("x-cache: HIT"));

    // Three heads in one write: three answers from the cache, in order.
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let one = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let last = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(format!("{one}{one}{last}").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..3 {
        let resp = common::read_response(&mut r).unwrap_or_else(|| panic!("answer {i}"));
        assert_eq!(x_cache(resp), hit, "answer {i}");
    }
    assert!(
        common::read_response(&mut r).is_none(),
        "closed after the third"
    );

    // `|` and `^`: the request's own path, still from the cache.
    let odd = "/cached?ttl=60&id=odd&q=a|b^c";
    let first = request(a, "GET", odd, &[]);
    assert_eq!(
        first.header("x-cache"),
        Some("MISS"),
        "{} {:?}",
        first.status,
        first.text()
    );
    assert_eq!(x_cache(request(a, "GET", odd, &[])), hit);

    // A field line over max_field_bytes: 431, even though the URL is cached.
    let long = format!("X-Long: {}", "x".repeat(300));
    assert_eq!(request(a, "GET", url, &[&long]).status, 431);
    assert_eq!(count(a, "forms"), 1);
    assert_eq!(count(a, "odd"), 1);
}

/// The `x-cache` of the answer to a GET for `url` (`-` without one).
fn x_cache(addr: SocketAddr, url: &str) -> String {
    let answer = request(addr, "GET", url, &[]);
    answer.header("x-cache").unwrap_or("-").to_owned()
}

/// A HEAD's answer has no body to store, but it says nothing against storing the GET's: the
/// first GET after a HEAD is stored.
#[test]
fn a_head_request_does_not_keep_the_next_get_from_being_stored() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let url = "/cached?ttl=300&id=hq";
    let head = head_exchange(a, url);
    assert!(head.contains("x-cache: MISS"), "{head}");
    assert_eq!(x_cache(a, url), "MISS");
    assert_eq!(x_cache(a, url), "HIT");
    assert_eq!(x_cache(a, url), "HIT");
    assert_eq!(count(a, "hq"), 2, "the HEAD and the first GET");
}

/// The ways a conditional GET reaches a hit: read by the HTTP/1.1 front itself, and (with a
/// `Content-Length: 0` the front leaves to hyper) through the request path.
const BOTH_PATHS: [&[&str]; 2] = [&[], &["Content-Length: 0"]];

/// Sends a GET for `url` with `fields` along each of [`BOTH_PATHS`]; the answer of each.
fn answers(a: SocketAddr, url: &str, fields: &[&str]) -> [common::RawResponse; 2] {
    BOTH_PATHS.map(|path| {
        let all: Vec<&str> = fields.iter().chain(path).copied().collect();
        request(a, "GET", url, &all)
    })
}

/// The status of each of [`answers`].
fn statuses(a: SocketAddr, url: &str, fields: &[&str]) -> [u16; 2] {
    answers(a, url, fields).map(|r| r.status)
}

#[test]
fn if_match_and_if_unmodified_since_are_preconditions_of_a_hit() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let url = "/etag?id=pre";
    assert_eq!(get(a, url).status, 200);
    let (before, at) = (
        "Sat, 05 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT",
    );
    let ium = |date| format!("If-Unmodified-Since: {date}");
    // (fields, status) in RFC 9110 §13.2.2 order: If-Match, else If-Unmodified-Since, then
    // If-None-Match, else If-Modified-Since, then Range.
    let table: &[(&[&str], u16)] = &[
        (&["If-Match: \"zz\""], 412),
        (&["If-Match: \"v0\", \"v1\""], 200),
        (&["If-Match: *"], 200),
        // If-Match compares strongly.
        (&["If-Match: W/\"v1\""], 412),
        (&[&ium(before)], 412),
        (&[&ium(at)], 200),
        (&["If-Match: \"v1\"", &ium(before)], 200),
        (&["If-Match: \"zz\"", "If-None-Match: \"v1\""], 412),
        (&["If-Match: \"v1\"", "If-None-Match: \"v1\""], 304),
        (&[&ium(before), &format!("If-Modified-Since: {at}")], 412),
        (&["If-Match: \"zz\"", "Range: bytes=0-4"], 412),
        (&["If-Match: \"v1\"", "Range: bytes=0-4"], 206),
    ];
    for (fields, want) in table {
        assert_eq!(statuses(a, url, fields), [*want; 2], "{fields:?}");
    }
    // The 412 names what failed, but carries no caching field a cache on the way could
    // store it by.
    let failed = request(a, "GET", url, &["If-Match: \"zz\""]);
    assert_eq!(failed.header("x-cache"), Some("HIT"));
    assert_eq!(failed.header("etag"), Some("\"v1\""));
    assert_eq!(failed.header("cache-control"), None);
    assert!(failed.body.is_empty());
    assert_eq!(count(a, "pre"), 1);
}

#[test]
fn if_none_match_star_matches_a_hit_without_an_etag() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let url = "/cached?ttl=300&id=star";
    assert_eq!(get(a, url).status, 200);
    assert_eq!(statuses(a, url, &["If-None-Match: *"]), [304; 2]);
    assert_eq!(statuses(a, url, &["If-None-Match: \"x\""]), [200; 2]);
    assert_eq!(statuses(a, url, &["If-Match: \"x\""]), [412; 2]);
    assert_eq!(statuses(a, url, &["If-Match: *"]), [200; 2]);
    assert_eq!(count(a, "star"), 1);
}

#[test]
fn a_range_unit_in_any_case_is_served_from_a_hit() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let url = "/etag?id=unit";
    assert_eq!(get(a, url).status, 200);
    for unit in ["BYTES", "Bytes", "bytes"] {
        let range = format!("Range: {unit}=0-4");
        for r in answers(a, url, &[&range]) {
            assert_eq!(r.status, 206, "{range}");
            assert_eq!(r.text(), "01234");
            assert_eq!(r.header("content-range"), Some("bytes 0-4/36"));
        }
    }
    assert_eq!(count(a, "unit"), 1);
}

/// RFC 9110 §13.1.5: an `If-Range` date names the representation only when it is a strong
/// validator, a `Last-Modified` at least one second before the entry's `Date` (§8.8.2.2).
#[test]
fn if_range_with_a_last_modified_as_late_as_the_date_gets_the_whole_answer() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    // Last-Modified and Date the same moment: the content may change again in that second.
    let url = "/etag?id=lm-now&lm=now";
    let first = get(a, url);
    let lm = first.header("last-modified").unwrap().to_owned();
    assert_eq!(first.header("date"), Some(lm.as_str()));
    let if_range = format!("If-Range: {lm}");
    for r in answers(a, url, &["Range: bytes=0-1", &if_range]) {
        assert_eq!(r.status, 200, "{if_range}");
        assert_eq!(r.text(), "0123456789abcdefghijklmnopqrstuvwxyz");
    }
    // The ETag is a strong validator all the same.
    for r in answers(a, url, &["Range: bytes=0-1", "If-Range: \"v1\""]) {
        assert_eq!((r.status, r.text().as_str()), (206, "01"));
    }
    // Last modified long before the entry arrived (it has no Date): the date names it, as
    // nginx compares it.
    let old = "/etag?id=lm-old";
    assert_eq!(get(a, old).status, 200);
    let if_range = "If-Range: Sun, 06 Nov 1994 08:49:37 GMT";
    for r in answers(a, old, &["Range: bytes=0-1", if_range]) {
        assert_eq!((r.status, r.text().as_str()), (206, "01"));
    }
    assert_eq!(count(a, "lm-now"), 1);
    assert_eq!(count(a, "lm-old"), 1);
}

/// RFC 9111 §1.2.2: a delta-seconds too large to hold is taken as 2^31 seconds.
#[test]
fn a_lifetime_past_any_integer_is_stored_as_2_pow_31_seconds() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let huge = "99999999999999999999";
    for (id, cc) in [
        ("max", format!("public,max-age={huge}")),
        ("shared", format!("s-maxage={huge},stale-if-error={huge}")),
    ] {
        let url = format!("/cached?id={id}&cc={cc}");
        assert_eq!(get(a, &url).header("x-cache"), Some("MISS"), "{cc}");
        let hit = get(a, &url);
        assert_eq!(hit.header("x-cache"), Some("HIT"), "{cc}");
        assert_eq!(hit.header("cache-control"), Some(cc.as_str()));
        assert_eq!(count(a, id), 1, "{cc}");
    }
}

/// RFC 9111 §4.4: a 2xx or 3xx answer to an unsafe method drops what is stored for its
/// target URI (and, on the same host, for its `Location`); an error answer or a safe method
/// does not.
#[test]
fn an_unsafe_request_answered_without_error_drops_the_stored_url() {
    let d = start("admission = \"always\"", "");
    let a = d.addr();
    let url = "/cached?ttl=300&id=unsafe";
    // `method` on `url`, the demo worker asked to answer `status` (and `fields`).
    let send = |method: &str, status: u16, fields: &[&str]| {
        let asked = format!("x-demo-status: {status}");
        let mut all = vec!["Content-Length: 0", asked.as_str()];
        all.extend(fields);
        let r = request(a, method, url, &all);
        assert_eq!(r.status, status, "{method} {fields:?}");
    };
    assert_eq!(x_cache(a, url), "MISS");
    let changes = [("POST", 200), ("PUT", 201), ("DELETE", 204), ("PATCH", 303)];
    for (method, status) in changes {
        assert_eq!(x_cache(a, url), "HIT", "before {method}");
        send(method, status, &[]);
        assert_eq!(x_cache(a, url), "MISS", "after {method} {status}");
    }
    for (method, status) in [
        ("POST", 404),
        ("PUT", 409),
        ("DELETE", 500),
        ("OPTIONS", 200),
    ] {
        send(method, status, &[]);
        assert_eq!(x_cache(a, url), "HIT", "after {method} {status}");
    }
    assert_eq!(count(a, "unsafe"), 1 + changes.len() as u64);

    // The Location of the answer goes too, when it is on the same host.
    let moved = "/cached?ttl=300&id=located";
    assert_eq!(x_cache(a, moved), "MISS");
    let elsewhere = format!("x-demo-location: http://elsewhere.example{moved}");
    send("POST", 201, &[&elsewhere]);
    assert_eq!(x_cache(a, moved), "HIT", "another host's Location");
    send(
        "POST",
        201,
        &[&format!("x-demo-location: http://LocalHost{moved}")],
    );
    assert_eq!(x_cache(a, moved), "MISS", "an absolute Location");
    send("POST", 201, &[&format!("x-demo-location: {moved}")]);
    assert_eq!(x_cache(a, moved), "MISS", "a path Location");
    assert_eq!(count(a, "located"), 3);
}

/// Only the worker's own answer counts: a 503 keel gives for an offline pool says nothing
/// of the resource.
#[test]
fn an_unsafe_request_refused_by_keel_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    std::fs::write(&fail, "ok").unwrap();
    let d = start(
        "admission = \"always\"",
        &format!(
            "queue_timeout = \"1s\"\nrapid_fail = {{ failures = 2, interval = \"1m\", backoff = false }}\nenv = {{ KEEL_DEMO_FAIL_FILE = \"{}\" }}",
            fail.display()
        ),
    );
    let a = d.addr();
    let url = "/cached?ttl=300&id=refused";
    assert_eq!(x_cache(a, url), "MISS");
    std::fs::write(&fail, "fail").unwrap();
    for pid in d.worker_pids() {
        common::kill(pid);
    }
    common::wait_until(Duration::from_secs(10), "a 503 from keel", || {
        request(a, "POST", url, &["Content-Length: 0"]).status == 503
    });
    assert_eq!(x_cache(a, url), "HIT");
}

#[test]
fn a_conditional_or_range_miss_is_answered_as_its_hits_will_be() {
    let d = start("", ""); // default admission: the first answer is not even stored
    let a = d.addr();
    // The first request for a URL, conditional: the worker answers 200, the client gets 304.
    let inm = request(a, "GET", "/etag?id=m1", &["If-None-Match: \"v1\""]);
    assert_eq!(inm.status, 304, "{}", inm.text());
    assert_eq!(inm.header("x-cache"), Some("MISS"));
    assert_eq!(inm.header("etag"), Some("\"v1\""));
    assert!(inm.body.is_empty());
    assert_eq!(count(a, "m1"), 1);
    let ims = request(
        a,
        "GET",
        "/etag?id=m2",
        &["If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"],
    );
    assert_eq!(ims.status, 304);
    let failed = request(a, "GET", "/etag?id=m3", &["If-Match: \"other\""]);
    assert_eq!(failed.status, 412);
    let range = request(a, "GET", "/etag?id=m4", &["Range: bytes=10-15"]);
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "abcdef");
    assert_eq!(range.header("content-range"), Some("bytes 10-15/36"));
    // Not matching: the whole answer.
    let other = request(a, "GET", "/etag?id=m5", &["If-None-Match: \"v0\""]);
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "0123456789abcdefghijklmnopqrstuvwxyz");
    // An uncacheable answer is passed on as the worker gave it.
    let private = request(a, "GET", "/private?id=m6", &["Range: bytes=0-1"]);
    assert_eq!(private.status, 200);
}

/// Hot hits are remembered per serving thread (`cache/hot.rs`): once an invalidation has
/// returned, no thread answers with what it remembered.
#[test]
fn an_invalidated_url_is_fetched_again_on_every_serving_thread() {
    use std::io::{BufReader, Write};
    let d = Daemon::start(&format!(
        "[daemon]\nthreads = 2\n\n[cache]\nadmission = \"always\"\n{}",
        demo_config("")
    ));
    let url = "/cached?ttl=600&id=mt";
    assert_eq!(get(d.addr(), url).text(), "/cached id=mt call=1");
    let ask = |conn: &mut BufReader<std::net::TcpStream>| {
        let req = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        conn.get_mut().write_all(req.as_bytes()).unwrap();
        common::read_response(conn).expect("an answer").text()
    };
    // Kept-alive connections, spread over both threads, each answered from the cache a few
    // times: the URL is remembered wherever they are served.
    let mut conns: Vec<_> = (0..16)
        .map(|_| BufReader::new(std::net::TcpStream::connect(d.addr()).unwrap()))
        .collect();
    for _ in 0..3 {
        for conn in &mut conns {
            assert_eq!(ask(conn), "/cached id=mt call=1");
        }
    }
    let out = d.cli(&["invalidate", &format!("http://localhost{url}")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for conn in &mut conns {
        assert_eq!(ask(conn), "/cached id=mt call=2");
    }
    assert_eq!(count(d.addr(), "mt"), 2);
}

#[test]
fn a_fully_qualified_host_shares_the_entry_of_its_name() {
    let d = start("admission = \"always\"", "");
    let ask = |host: &str| {
        let req = format!(
            "GET /cached?ttl=60&id=fq HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let r = raw_request(d.addr(), req.as_bytes());
        assert_eq!(r.status, 200, "{host}");
        r.header("x-cache").map(str::to_owned)
    };
    assert_eq!(ask("localhost").as_deref(), Some("MISS"));
    assert_eq!(ask("LocalHost.").as_deref(), Some("HIT"));
    // Invalidated under either spelling.
    let out = d.cli(&["invalidate", "http://localhost./cached?ttl=60&id=fq"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(ask("localhost").as_deref(), Some("MISS"));
    assert_eq!(count(d.addr(), "fq"), 2);
}

#[test]
fn an_answer_in_flight_when_its_pool_is_replaced_is_not_stored() {
    let d = start("admission = \"always\"", "start = \"always\"");
    let a = d.addr();
    let slow = "/slow-cached?ms=2000&id=r&ttl=300";
    let old_pid = get(a, "/pid").text();
    let first = std::thread::spawn(move || get(a, slow));
    std::thread::sleep(Duration::from_millis(500));

    // A deploy: the pool's config changes, so a reload replaces it while its worker is
    // still working on the first request.
    let path = d.dir.path().join("keel.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replace("[pool.demo]", "[pool.demo]\nenv = { DEPLOY = \"2\" }");
    std::fs::write(&path, changed).unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("replaced: demo"), "{out:?}");

    let r = first.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "/slow-cached id=r call=1");
    assert_ne!(get(a, "/pid").text(), old_pid, "a new worker serves");

    // The old worker's answer was not kept: the next request reaches the new worker, whose
    // answer is stored as usual.
    let r = get(a, slow);
    assert_eq!(r.header("x-cache"), Some("MISS"), "{}", r.text());
    assert_eq!(count(a, "r"), 1, "the new worker's calls");
    assert_eq!(get(a, slow).header("x-cache"), Some("HIT"));
    assert_eq!(count(a, "r"), 1);
}

/// A cache smaller than the default largest entry (256 KiB) stores no answer it could not
/// keep: one larger than the whole cache is passed through, not stored and evicted at once
/// (counted as an eviction, after its body was copied aside for nothing).
#[test]
fn a_small_cache_passes_larger_answers_through() {
    let d = start("admission = \"always\"\nmax_bytes = \"100 KiB\"", "");
    let a = d.addr();
    assert_eq!(x_cache(a, "/cached?ttl=60&id=small&size=1000"), "MISS");
    assert_eq!(x_cache(a, "/cached?ttl=60&id=small&size=1000"), "HIT");
    for _ in 0..3 {
        let r = get(a, "/cached?ttl=60&id=big&size=153600");
        assert_eq!(r.body.len(), 153_600);
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    assert_eq!(x_cache(a, "/cached?ttl=60&id=small&size=1000"), "HIT");
    // Time for the store's removals to be reported, if there were any.
    std::thread::sleep(Duration::from_millis(300));
    let cache = &d.admin_json("GET", "/status")["cache"];
    assert_eq!(cache["evictions"], 0, "{cache}");
    assert_eq!(cache["entries"], 1, "{cache}");
}
