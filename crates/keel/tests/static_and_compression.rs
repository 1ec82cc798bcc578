//! Static roots served by the daemon itself, and response compression, from the outside.

mod common;
use common::*;
use std::io::Read;
use std::time::Duration;

/// A site with a static root at /static (files under `{dir}/public`) and the demo pool
/// everywhere else, compression on, cache storing on first request.
fn config(extra_app: &str) -> String {
    format!(
        r#"
[cache]
admission = "always"

[[site]]
name = "site"
bindings = ["http://127.0.0.1:0"]
compression = true
app = [{{ path = "/", pool = "demo" }}, {{ path = "/static", root = "public" }}{extra_app}]

[pool.demo]
command = ["{{demo}}"]
"#
    )
}

fn public(d: &Daemon) -> std::path::PathBuf {
    d.dir.path().join("public")
}

fn start(extra_app: &str, files: &[(&str, &[u8])]) -> Daemon {
    // The root must exist when the config is loaded: make it in a dir the daemon then uses.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("public/sub")).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join("public").join(name), bytes).unwrap();
    }
    std::fs::write(dir.path().join("keel.toml.secret"), "do not serve").unwrap();
    let mut text = config(extra_app).replace("{demo}", demo_worker().to_str().unwrap());
    text.push_str("\n[log]\nerror_log = \"error.log\"\n");
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, text).unwrap();
    Daemon::start_with(dir, &["serve", "--config", path.to_str().unwrap()])
}

fn request(d: &Daemon, path: &str, headers: &str) -> RawResponse {
    raw_request(
        d.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn static_files_are_served_with_types_validators_ranges_and_head() {
    let d = start(
        "",
        &[
            ("hello.txt", b"hello static world"),
            ("sub/index.html", b"<p>index</p>"),
        ],
    );
    let r = request(&d, "/static/hello.txt", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello static world");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let etag = r.header("etag").unwrap().to_string();
    assert!(r.header("last-modified").is_some());
    // Conditional and range requests.
    let r = request(
        &d,
        "/static/hello.txt",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304);
    let r = request(&d, "/static/hello.txt", "Range: bytes=6-11\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "static");
    // HEAD: headers, no body (the connection closes right after them).
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"HEAD /static/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 18"),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "no body after the head: {head:?}"
    );
    // Directories: index.html, and a redirect to the slash form.
    let r = request(&d, "/static/sub/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<p>index</p>");
    assert_eq!(request(&d, "/static/sub", "").status, 301);
    assert_eq!(request(&d, "/static/missing.txt", "").status, 404);
    // Small hot files are served from the response cache.
    let r = request(&d, "/static/hello.txt", "");
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(r.text(), "hello static world");
    // The demo pool still serves the rest of the site.
    assert_eq!(request(&d, "/", "").text(), "Hello from keel");
}

#[test]
fn traversal_attempts_are_refused() {
    let d = start("", &[("hello.txt", b"hi")]);
    std::os::unix::fs::symlink(
        d.dir.path().join("keel.toml.secret"),
        public(&d).join("escape"),
    )
    .unwrap();
    for path in [
        "/static/../keel.toml.secret",
        "/static/%2e%2e/keel.toml.secret",
        "/static/..%2fkeel.toml.secret",
        "/static/%2fetc%2fpasswd",
        "/static/hello.txt%00.png",
        "/static/..\\keel.toml.secret",
        "/static/escape",
    ] {
        let r = request(&d, path, "");
        assert!(
            matches!(r.status, 400 | 403 | 404),
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("do not serve"), "{path} leaked the file");
    }
}

#[test]
fn a_hundred_megabyte_file_streams_with_flat_memory() {
    let d = start("", &[]);
    let big = std::fs::File::create(public(&d).join("big.bin")).unwrap();
    big.set_len(100 * 1024 * 1024).unwrap();
    let rss = || common::rss_kib(d.pid()) * 1024;
    let before = rss();
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut peak = before;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        if total % (16 << 20) < n as u64 {
            peak = peak.max(rss());
        }
    }
    assert!(total > 100 * 1024 * 1024, "read {total}");
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 32 << 20,
        "the daemon grew by {grew} bytes serving 100 MB"
    );
}

#[test]
fn precompressed_sibling_is_served_as_is() {
    let br = compress_br(b"body of app.js, compressed ahead of time");
    let d = start(
        "",
        &[
            ("app.js", b"body of app.js, compressed ahead of time"),
            ("app.js.br", &br),
        ],
    );
    let r = request(&d, "/static/app.js", "Accept-Encoding: br, gzip\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.body, br);
    let r = request(&d, "/static/app.js", "");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.text(), "body of app.js, compressed ahead of time");
    // A range is of the identity bytes, whatever the client accepts.
    let r = request(
        &d,
        "/static/app.js",
        "Accept-Encoding: br\r\nRange: bytes=0-3\r\n",
    );
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.header("content-encoding"), None, "{r:?}");
    assert_eq!(r.text(), "body");
}

fn compress_br(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
    std::io::Write::write_all(&mut w, data).unwrap();
    drop(w);
    out
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn json_is_compressed_as_the_client_prefers_and_each_variant_is_cached() {
    let d = start("", &[]);
    let url = "/json?kb=100&ttl=60";
    let plain = request(&d, url, "");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.body.len() >= 100 * 1024);
    assert!(
        plain
            .header("vary")
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")
    );

    let br = request(&d, url, "Accept-Encoding: br, gzip\r\n");
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert!(br.body.len() < plain.body.len() / 4);
    assert_eq!(unbrotli(&br.body), plain.body);

    let gz = request(&d, url, "Accept-Encoding: gzip\r\n");
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&gz.body), plain.body);

    // Each variant now comes from the cache: the worker is not asked again.
    let before = get(d.addr(), "/stats").text();
    for h in [
        "",
        "Accept-Encoding: br, gzip\r\n",
        "Accept-Encoding: gzip\r\n",
    ] {
        let r = request(&d, url, h);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache"), Some("HIT"), "{h:?}");
    }
    let after = get(d.addr(), "/stats").text();
    let n = |s: &str| {
        s.trim()
            .trim_start_matches("requests ")
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        n(&after),
        n(&before) + 1,
        "only the /stats request itself reached the worker"
    );
}

#[test]
fn already_encoded_and_small_responses_are_left_alone() {
    let d = start("", &[]);
    let r = request(&d, "/", "Accept-Encoding: br, gzip\r\n");
    assert_eq!(
        r.header("content-encoding"),
        None,
        "15 bytes are not worth compressing"
    );
    assert_eq!(r.text(), "Hello from keel");
}

#[test]
fn a_missing_file_is_not_remembered_and_a_file_named_as_a_directory_is_not_served() {
    let d = start("", &[("here.txt", b"here")]);
    // Two 404s (a cached answer would be the second), then the file is put in place.
    for _ in 0..2 {
        let r = request(&d, "/static/late.txt", "");
        assert_eq!(r.status, 404);
        assert_ne!(r.header("x-cache"), Some("HIT"));
    }
    std::fs::write(public(&d).join("late.txt"), b"arrived").unwrap();
    let r = request(&d, "/static/late.txt", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "arrived");
    // `file/` is not the file (nginx: 404), cached or not.
    assert_eq!(request(&d, "/static/here.txt", "").status, 200);
    assert_eq!(request(&d, "/static/here.txt", "").status, 200);
    for path in ["/static/here.txt/", "/static/here.txt//"] {
        assert_eq!(request(&d, path, "").status, 404, "{path}");
    }
}

/// `n` bytes of text that compresses well.
fn compressible_text(n: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(n + 64);
    let mut i = 0;
    while text.len() < n {
        text.extend_from_slice(format!("line {i} of a text file worth compressing\n").as_bytes());
        i += 1;
    }
    text.truncate(n);
    text
}

/// One request whose answer has no body (a HEAD's, a 304), read to the end of the
/// connection: whatever follows the head, whatever the head declares, is its `body`.
fn bodiless(d: &Daemon, method: &str, path: &str, headers: &str) -> RawResponse {
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no whole head in {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    RawResponse {
        status: status.parse().unwrap(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect(),
        body: rest.as_bytes().to_vec(),
    }
}

fn head(d: &Daemon, path: &str, headers: &str) -> RawResponse {
    bodiless(d, "HEAD", path, headers)
}

fn varies_on_accept_encoding(r: &RawResponse) -> bool {
    r.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("vary") && v.to_ascii_lowercase().contains("accept-encoding")
    })
}

/// A HEAD's fields are the GET's (RFC 9110 §9.3.2): the same encoding, `Vary` and
/// validator, and a `Content-Length` only if it is the length the GET sends.
fn assert_head_says_what_get_sends(head: &RawResponse, get: &RawResponse, what: &str) {
    assert_eq!(head.status, get.status, "{what}: status");
    for name in ["content-encoding", "etag", "content-type"] {
        assert_eq!(head.header(name), get.header(name), "{what}: {name}");
    }
    assert_eq!(
        varies_on_accept_encoding(head),
        varies_on_accept_encoding(get),
        "{what}: Vary of HEAD {:?}, of GET {:?}",
        head.header("vary"),
        get.header("vary")
    );
    if let Some(len) = head.header("content-length") {
        assert_eq!(
            len.parse::<usize>().unwrap(),
            get.body.len(),
            "{what}: HEAD's content-length, not the length GET sends"
        );
    }
    assert!(head.body.is_empty(), "{what}: bytes after HEAD's head");
}

#[test]
fn head_of_a_compressed_worker_answer_declares_no_wrong_length() {
    let d = start("", &[]);
    let url = "/json?kb=12&ttl=60";
    let br = "Accept-Encoding: br\r\n";
    let h = head(&d, url, br);
    let g = request(&d, url, br);
    assert_eq!(g.header("content-encoding"), Some("br"));
    assert!(unbrotli(&g.body).len() >= 12 * 1024);
    assert_head_says_what_get_sends(&h, &g, "HEAD before the GET is cached");
    // Once the compressed answer is cached, HEAD is answered from the entry, with its length.
    let hit = (0..3)
        .map(|_| request(&d, url, br))
        .find(|r| r.header("x-cache") == Some("HIT"));
    assert!(hit.is_some(), "the br answer was never cached");
    let h = head(&d, url, br);
    assert_eq!(h.header("x-cache"), Some("HIT"));
    assert_eq!(h.header("content-length"), Some(&*g.body.len().to_string()));
    assert_head_says_what_get_sends(&h, &g, "HEAD from the cache");
}

#[test]
fn head_of_a_compressible_static_file_says_what_get_sends() {
    let small = compressible_text(6000);
    // Larger than a file read whole (256 KiB) and than a body compressed whole (1 MiB):
    // streamed from disk and compressed as it streams, never cached.
    let large = compressible_text(2 << 20);
    let d = start("", &[("comp2.txt", &small), ("large.txt", &large)]);
    for (path, accept) in [
        ("/static/comp2.txt", "gzip"),
        ("/static/comp2.txt", "br"),
        ("/static/large.txt", "gzip"),
    ] {
        let fields = format!("Accept-Encoding: {accept}\r\n");
        let h = head(&d, path, &fields);
        let g = request(&d, path, &fields);
        assert_eq!(g.status, 200, "{path}");
        assert_eq!(g.header("content-encoding"), Some(accept), "{path}");
        assert!(g.header("etag").unwrap().starts_with("W/\""), "{path}");
        assert_head_says_what_get_sends(&h, &g, &format!("{path}, {accept}"));
    }
    // A client that takes no coding: the file as it is, with its length, varying all the same.
    let h = head(&d, "/static/large.txt", "");
    assert_eq!(h.header("content-length"), Some(&*large.len().to_string()));
    assert_eq!(h.header("content-encoding"), None);
    assert!(h.header("etag").unwrap().starts_with('"'));
    assert!(varies_on_accept_encoding(&h));
}

#[test]
fn head_of_a_compressible_http_worker_answer_says_what_get_sends() {
    let d = Daemon::start(&format!(
        r#"
[[site]]
name = "site"
bindings = ["http://127.0.0.1:0"]
compression = true
app = [{{ path = "/", pool = "demo" }}]

[pool.demo]
{}
"#,
        node_worker()
    ));
    // `/headers` answers the request's fields as JSON: padded past what is worth compressing.
    let fields = format!("Accept-Encoding: gzip\r\nX-Pad: {}\r\n", "p".repeat(2000));
    let h = head(&d, "/headers", &fields);
    let g = request(&d, "/headers", &fields);
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert!(gunzip(&g.body).len() > 2000);
    assert_head_says_what_get_sends(&h, &g, "HTTP worker");
}

#[test]
fn a_no_transform_answer_is_not_compressed() {
    let d = start("", &[]);
    let url = "/json?kb=4&cc=no-transform";
    let fields = "Accept-Encoding: br, gzip\r\n";
    let g = request(&d, url, fields);
    assert_eq!(g.status, 200);
    assert_eq!(g.header("cache-control"), Some("no-transform"));
    assert_eq!(g.header("content-encoding"), None);
    assert!(!varies_on_accept_encoding(&g), "{:?}", g.header("vary"));
    assert!(g.text().starts_with("[{\"id\":0"), "{}", g.text());
    assert_head_says_what_get_sends(&head(&d, url, fields), &g, "no-transform");
}

/// A 6000-byte text file at /static/comp2.txt: worth compressing, and small enough to cache.
fn start_with_comp2() -> (Daemon, Vec<u8>) {
    let text = compressible_text(6000);
    (start("", &[("comp2.txt", &text)]), text)
}

const COMP2: &str = "/static/comp2.txt";
const GZIP: &str = "Accept-Encoding: gzip\r\n";

/// The file's strong ETag, from an answer that is never cached (a range).
fn strong_etag(d: &Daemon) -> String {
    let part = request(d, COMP2, "Range: bytes=0-0\r\n");
    assert_eq!(part.status, 206);
    let etag = part.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    etag
}

#[test]
fn a_range_of_a_compressible_file_varies_as_its_whole_answer() {
    let (d, text) = start_with_comp2();
    let whole = request(&d, COMP2, GZIP);
    assert_eq!(whole.header("content-encoding"), Some("gzip"));
    assert!(varies_on_accept_encoding(&whole));
    // A range is of the identity bytes, whatever the client accepts.
    let part = request(&d, COMP2, &format!("{GZIP}Range: bytes=0-3\r\n"));
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-encoding"), None);
    assert_eq!(part.body, &text[..4]);
    assert!(varies_on_accept_encoding(&part), "206: {:?}", part.headers);
}

#[test]
fn a_304_made_from_the_file_carries_the_etag_and_vary_of_the_200() {
    let (d, _) = start_with_comp2();
    let strong = strong_etag(&d);
    let weak = format!("W/{strong}");
    // Nothing cached yet: the 304s are made from the file.
    let gzip_304 = bodiless(
        &d,
        "GET",
        COMP2,
        &format!("{GZIP}If-None-Match: {weak}\r\n"),
    );
    let identity_304 = bodiless(&d, "GET", COMP2, &format!("If-None-Match: {strong}\r\n"));
    // The 200s they stand for.
    let gzip_200 = request(&d, COMP2, GZIP);
    assert_eq!(gzip_200.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip_200.header("etag"), Some(weak.as_str()));
    let identity_200 = request(&d, COMP2, "");
    assert_eq!(identity_200.header("content-encoding"), None);
    assert_eq!(identity_200.header("etag"), Some(strong.as_str()));
    for (not_modified, ok, what) in [
        (&gzip_304, &gzip_200, "gzip"),
        (&identity_304, &identity_200, "identity"),
    ] {
        assert_eq!(not_modified.status, 304, "{what}");
        assert_eq!(not_modified.header("x-cache"), Some("MISS"), "{what}");
        assert_eq!(not_modified.header("etag"), ok.header("etag"), "{what}");
        assert!(varies_on_accept_encoding(ok), "{what} 200");
        assert!(varies_on_accept_encoding(not_modified), "{what} 304");
        assert!(not_modified.body.is_empty(), "{what}");
    }
}

/// The demo worker's `/validated` answers an `If-None-Match` itself, with a 304 that has no
/// `Content-Type`: keel describes it as the compressed 200 the client holds.
#[test]
fn a_workers_own_304_carries_the_etag_and_vary_of_the_compressed_200() {
    let d = start("", &[]);
    let ok = request(&d, "/validated", GZIP);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-encoding"), Some("gzip"));
    assert_eq!(ok.header("etag"), Some("W/\"abc\""));
    assert!(varies_on_accept_encoding(&ok));
    let fields = format!("{GZIP}If-None-Match: W/\"abc\"\r\n");
    for not_modified in [
        bodiless(&d, "GET", "/validated", &fields),
        head(&d, "/validated", &fields),
    ] {
        assert_eq!(not_modified.status, 304);
        // Made by the worker, not from a cache entry.
        assert_eq!(not_modified.header("x-cache"), Some("MISS"));
        assert_eq!(not_modified.header("content-type"), None);
        assert_eq!(not_modified.header("etag"), ok.header("etag"));
        assert!(
            varies_on_accept_encoding(&not_modified),
            "{:?}",
            not_modified.headers
        );
        assert!(not_modified.body.is_empty());
    }
}

#[test]
fn a_304_from_a_cached_entry_leaves_out_the_fields_of_a_body() {
    let (d, _) = start_with_comp2();
    let strong = strong_etag(&d);
    let weak = format!("W/{strong}");
    for (fields, etag) in [(GZIP, &weak), ("", &strong)] {
        let cached = (0..3)
            .map(|_| request(&d, COMP2, fields))
            .any(|r| r.header("x-cache") == Some("HIT"));
        assert!(cached, "{fields:?}: never cached");
        let r = bodiless(
            &d,
            "GET",
            COMP2,
            &format!("{fields}If-None-Match: {etag}\r\n"),
        );
        assert_eq!(r.status, 304, "{fields:?}");
        assert_eq!(r.header("x-cache"), Some("HIT"), "{fields:?}");
        for gone in [
            "content-encoding",
            "content-length",
            "accept-ranges",
            "content-type",
        ] {
            assert_eq!(r.header(gone), None, "{fields:?}: {gone} on a 304");
        }
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{fields:?}");
        assert!(r.header("last-modified").is_some(), "{fields:?}");
        assert!(r.header("date").is_some(), "{fields:?}");
        assert!(varies_on_accept_encoding(&r), "{fields:?}");
        assert!(r.body.is_empty(), "{fields:?}");
    }
}

/// On a compressing site the cache keys an answer by the coding keel chose for it, not by
/// the text of `Accept-Encoding`: every spelling of one choice shares one variant.
#[test]
fn spellings_of_one_coding_share_its_cached_variant() {
    let d = start("", &[]);
    let fetch = |ae: &str| {
        let field = if ae.is_empty() {
            String::new()
        } else {
            format!("Accept-Encoding: {ae}\r\n")
        };
        let r = request(&d, "/json?kb=12&ttl=60", &field);
        assert_eq!(r.status, 200, "{ae}");
        let field = |name| r.header(name).map(str::to_owned);
        (field("x-cache"), field("content-encoding"))
    };
    let hit = |coding: Option<&str>| (Some("HIT".to_owned()), coding.map(str::to_owned));
    let miss = |coding: Option<&str>| (Some("MISS".to_owned()), coding.map(str::to_owned));
    assert_eq!(fetch("gzip, deflate, br"), miss(Some("br")));
    for ae in [
        "gzip, deflate, br, zstd",
        "br",
        "BR;q=1, gzip;q=0.5",
        "br,gzip",
    ] {
        assert_eq!(fetch(ae), hit(Some("br")), "{ae}");
    }
    assert_eq!(fetch("gzip"), miss(Some("gzip")));
    for ae in ["gzip, deflate", "x-gzip", "br;q=0, gzip"] {
        assert_eq!(fetch(ae), hit(Some("gzip")), "{ae}");
    }
    assert_eq!(fetch(""), miss(None));
    for ae in ["deflate", "identity", "zstd;q=1"] {
        assert_eq!(fetch(ae), hit(None), "{ae}");
    }
}

/// A stream of unknown length (server-sent events) is compressed as it flows: each event
/// reaches the client when the worker sends it, not when the stream ends.
#[test]
fn a_slow_stream_is_compressed_without_being_held_back() {
    use std::io::{BufReader, Write};
    use std::time::Instant;
    let d = start("", &[]);
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let asked = Instant::now();
    // Four events 1.5 s apart: the stream ends 4.5 s after it begins.
    s.write_all(
        b"GET /events?n=4&ms=1500 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The head and the first event's compressed bytes.
    let first_event_at = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n")
            && seen.len() > end + 4 + 20
        {
            break asked.elapsed();
        }
    };
    let mut r = BufReader::new(std::io::Cursor::new(seen).chain(s));
    let resp = read_response(&mut r).expect("a response");
    assert_eq!(resp.header("content-encoding"), Some("gzip"), "{resp:?}");
    let text = String::from_utf8(gunzip(&resp.body)).unwrap();
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
    assert!(
        first_event_at < Duration::from_millis(3000),
        "the first event arrived after {first_event_at:?}, with the stream's end"
    );
}

/// On a compressing site, a range of a worker's cacheable answer is of its identity bytes,
/// as a static file's is: from the miss as from the hit, while the same URL without `Range`
/// is still answered compressed.
#[test]
fn a_range_of_a_compressed_worker_answer_is_of_its_identity_bytes() {
    let d = start("", &[]);
    let url = "/cached?ttl=60&id=rg&size=5000";
    for want in ["MISS", "HIT"] {
        let r = request(&d, url, "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n");
        assert_eq!(r.status, 206, "{r:?}");
        assert_eq!(r.header("content-encoding"), None, "{r:?}");
        assert_eq!(r.header("content-range"), Some("bytes 0-9/5000"), "{r:?}");
        assert_eq!(r.body, b"cccccccccc", "{r:?}");
        assert_eq!(r.header("x-cache"), Some(want), "{r:?}");
    }
    let r = request(&d, url, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
    assert_eq!(gunzip(&r.body), vec![b'c'; 5000]);
}

/// Slow clients of a large file each hold a bounded share of the daemon's memory: 20 of
/// them reading a little at a time (the file streamed in chunks read on the blocking pool)
/// grow its RSS by less than 40 MiB.
#[test]
fn slow_clients_of_a_large_file_hold_little_memory() {
    use std::io::Write;
    let d = start("", &[]);
    let big = std::fs::File::create(public(&d).join("big.bin")).unwrap();
    big.set_len(200 * 1024 * 1024).unwrap();
    let rss = || common::rss_kib(d.pid()) * 1024;
    let before = rss();
    let mut clients: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
            s.write_all(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let mut peak = before;
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..40 {
        for s in &mut clients {
            assert!(s.read(&mut buf).unwrap() > 0);
        }
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss());
    }
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 40 << 20,
        "20 slow clients grew the daemon by {} MiB",
        grew >> 20
    );
}
