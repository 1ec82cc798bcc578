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
