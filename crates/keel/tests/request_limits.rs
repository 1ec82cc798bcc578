//! HTTP.sys's request limits set in keel.toml: `[listener]` for every site, `max_body_bytes`
//! per site, and a body without a declared length counted as it streams.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const CONFIG: &str = r#"
[listener]
shutdown_timeout = "10s"
max_body_bytes = "1 KiB"
max_url_bytes = 100
max_field_bytes = "1 KiB"

[[site]]
name = "small"
bindings = ["http://small.test:0"]
app = [{ path = "/", pool = "demo" }]

[[site]]
name = "uploads"
bindings = ["http://uploads.test:0"]
max_body_bytes = "1 MiB"
app = [{ path = "/", pool = "demo" }]

[pool.demo]
command = ["{demo}"]
"#;

/// Sends `raw` and returns the status code (`None`: closed without an answer) and, for a
/// refusal, whether the connection was closed after it (a success is kept alive: `false`).
fn send(d: &Daemon, raw: &[u8]) -> (Option<u16>, bool) {
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut r = std::io::BufReader::new(s);
    let Some(resp) = read_response(&mut r) else {
        return (None, true);
    };
    if resp.status < 400 {
        return (Some(resp.status), false);
    }
    let mut rest = [0u8; 1];
    let closed = matches!(r.get_mut().read(&mut rest), Ok(0) | Err(_));
    (Some(resp.status), closed)
}

fn post(host: &str, path: &str, len: usize) -> Vec<u8> {
    let mut raw = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', len));
    raw
}

fn chunked(host: &str, path: &str, len: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n"
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', len));
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    raw
}

fn logged(d: &Daemon, reason: &str) -> usize {
    d.error_lines()
        .iter()
        .filter(|l| l.contains(reason))
        .count()
}

#[test]
fn max_body_bytes_is_enforced_per_site_for_declared_and_chunked_bodies() {
    let d = Daemon::start(CONFIG);

    // Declared past the listener's 1 KiB: 413 before anything reaches a worker.
    assert_eq!(
        send(&d, &post("small.test", "/echo", 2048)),
        (Some(413), true)
    );
    // The uploads site takes up to 1 MiB.
    let (status, _) = send(&d, &post("uploads.test", "/echo", 2048));
    assert_eq!(status, Some(200));
    assert_eq!(
        send(&d, &post("uploads.test", "/echo", 2 * 1024 * 1024)),
        (Some(413), true)
    );

    // Chunked, no declared length: counted as it streams (the worker sleeps before
    // answering, so the limit is found before any answer).
    assert_eq!(
        send(&d, &chunked("small.test", "/sleep?ms=500", 2048)),
        (Some(413), true)
    );
    let (status, _) = send(&d, &chunked("uploads.test", "/sleep?ms=10", 2048));
    assert_eq!(status, Some(200));

    let until = std::time::Instant::now() + Duration::from_secs(5);
    while logged(&d, "EntityTooLarge") < 3 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(logged(&d, "EntityTooLarge"), 3, "{:?}", d.error_lines());
    // Within the limit on the small site, and the daemon serves on.
    let (status, _) = send(&d, &post("small.test", "/echo", 1024));
    assert_eq!(status, Some(200));
}

#[test]
fn head_limits_come_from_the_listener_config() {
    let d = Daemon::start(CONFIG);
    let long_url = format!("/{}", "u".repeat(120));
    let raw = format!("GET {long_url} HTTP/1.1\r\nHost: small.test\r\n\r\n");
    assert_eq!(send(&d, raw.as_bytes()).0, Some(414));
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: small.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1100)
    );
    assert_eq!(send(&d, raw.as_bytes()).0, Some(431));
    let raw = format!(
        "GET /{} HTTP/1.1\r\nHost: small.test\r\nConnection: close\r\n\r\n",
        "u".repeat(90)
    );
    assert_eq!(send(&d, raw.as_bytes()).0, Some(404));
    assert_eq!(logged(&d, "URL_Length"), 1, "{:?}", d.error_lines());
    assert_eq!(logged(&d, "FieldLength"), 1, "{:?}", d.error_lines());
}

#[test]
fn limits_out_of_range_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keel.toml"),
        "[listener]\nmax_field_bytes = \"1 MiB\"\n\n[[site]]\nname = \"a\"\nbindings = [\"http://127.0.0.1:0\"]\nmax_body_bytes = \"lots\"\napp = [{ path = \"/\", pool = \"p\" }]\n\n[pool.p]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let out = cli(&["check"], dir.path());
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("keel.toml:2: listener.max_field_bytes: must be at most 256 KiB"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("keel.toml:7: site[0].max_body_bytes:"),
        "{}",
        out.stderr
    );
}
