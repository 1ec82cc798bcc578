//! GET and HEAD on kept-alive HTTP/1.1 connections, which keel serves outside hyper
//! (`listener/h1_front.rs`): cache hits, static files by sendfile, worker answers, and the
//! hand-over to hyper at the first request with a body. A real daemon and demo worker, raw
//! sockets. The demo worker counts its calls per
//! `id` (`/count?id=X`), so "from cache" means "the worker was not called".

mod common;

use common::{Daemon, demo_config, get, read_response};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn start(listener: &str) -> Daemon {
    let config = demo_config("").replace(
        "[listener]\nshutdown_timeout = \"10s\"\n",
        &format!("[listener]\nshutdown_timeout = \"10s\"\n{listener}\n"),
    );
    Daemon::start(&format!("[cache]\nadmission = \"always\"\n{config}"))
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn count(addr: SocketAddr, id: &str) -> u64 {
    get(addr, &format!("/count?id={id}"))
        .text()
        .parse()
        .unwrap()
}

/// Waits until the server closes `r` (EOF or reset) and returns how long that took.
fn closed_within(r: &mut BufReader<TcpStream>, limit: Duration) -> Duration {
    let t = Instant::now();
    r.get_ref().set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match r.get_mut().read(&mut buf) {
        Ok(0) => t.elapsed(),
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("still open after {limit:?}")
        }
        Err(_) => t.elapsed(),
    }
}

#[test]
fn hits_misses_and_bodies_mix_on_one_connection_in_order() {
    let d = start("");
    let a = d.addr();
    assert_eq!(get(a, "/cached?id=k").header("x-cache"), Some("MISS"));

    let (mut s, mut r) = connect(a);
    // Two hits pipelined in one write, then a request the cache cannot answer (handed to
    // hyper with everything after it), a POST with a body, a hit, a HEAD hit.
    s.write_all(
        b"GET /cached?id=k HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /cached?id=k HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n\
          GET /count?id=k HTTP/1.1\r\nHost: localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello\
          GET /cached?id=k HTTP/1.1\r\nHost: localhost\r\n\r\n\
          HEAD /cached?id=k HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    for i in 0..2 {
        let hit = read_response(&mut r).unwrap();
        assert_eq!(hit.status, 200, "hit {i}");
        assert_eq!(hit.header("x-cache"), Some("HIT"), "hit {i}");
        assert_eq!(hit.text(), "/cached id=k call=1");
        assert!(hit.header("age").is_some() && hit.header("date").is_some());
    }
    let counted = read_response(&mut r).unwrap();
    assert_eq!(counted.text(), "1", "the worker was called once for id=k");
    let echoed = read_response(&mut r).unwrap();
    assert_eq!(echoed.text(), "hello");
    let hit = read_response(&mut r).unwrap();
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.text(), "/cached id=k call=1");
    // HEAD: the head only (the next bytes would be read as the body otherwise).
    s.write_all(b"GET /cached?id=k HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 19"),
        "{head}"
    );
    let after = read_response(&mut r).unwrap();
    assert_eq!(after.text(), "/cached id=k call=1");
    assert_eq!(count(a, "k"), 1);
}

#[test]
fn conditionals_and_ranges_on_a_kept_alive_connection_are_answered_from_the_entry() {
    let d = start("");
    let a = d.addr();
    assert_eq!(get(a, "/etag?id=e").status, 200);
    let (mut s, mut r) = connect(a);
    s.write_all(
        b"GET /etag?id=e HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"v1\"\r\n\r\n\
          GET /etag?id=e HTTP/1.1\r\nHost: localhost\r\nRange: bytes=10-15\r\n\r\n\
          GET /etag?id=e HTTP/1.1\r\nHost: localhost\r\nRange: bytes=100-\r\n\r\n\
          GET /etag?id=e HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let not_modified = read_response(&mut r).unwrap();
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    assert!(not_modified.header("content-length").is_none());
    let range = read_response(&mut r).unwrap();
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "abcdef");
    assert_eq!(range.header("content-range"), Some("bytes 10-15/36"));
    let past = read_response(&mut r).unwrap();
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */36"));
    let whole = read_response(&mut r).unwrap();
    assert_eq!(whole.text(), "0123456789abcdefghijklmnopqrstuvwxyz");
    assert_eq!(count(a, "e"), 1);
}

#[test]
fn a_hit_asked_with_connection_close_is_answered_then_closed() {
    let d = start("");
    let a = d.addr();
    get(a, "/cached?id=c");
    let (mut s, mut r) = connect(a);
    s.write_all(b"GET /cached?id=c HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let hit = read_response(&mut r).unwrap();
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("connection"), Some("close"));
    closed_within(&mut r, Duration::from_secs(5));
}

#[test]
fn after_a_hit_the_idle_and_head_timers_still_close_the_connection() {
    let d = start("idle_connection = \"1s\"\nheader_wait = \"1s\"");
    let a = d.addr();
    get(a, "/cached?id=t");

    // Idle after a hit.
    let (mut s, mut r) = connect(a);
    s.write_all(b"GET /cached?id=t HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut r).unwrap().header("x-cache"),
        Some("HIT")
    );
    let took = closed_within(&mut r, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(800), "{took:?}");

    // Half a head after a hit.
    let (mut s, mut r) = connect(a);
    s.write_all(b"GET /cached?id=t HTTP/1.1\r\nHost: localhost\r\n\r\nGET /cac")
        .unwrap();
    assert_eq!(
        read_response(&mut r).unwrap().header("x-cache"),
        Some("HIT")
    );
    closed_within(&mut r, Duration::from_secs(5));

    let t = Instant::now();
    loop {
        let lines = d.error_lines();
        let idle = lines.iter().any(|l| l.contains("Timer_ConnectionIdle"));
        let head = lines.iter().any(|l| l.contains("Timer_HeaderWait"));
        if idle && head {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_closes_a_connection_idle_after_hits_and_the_daemon_exits() {
    let mut d = start("");
    let a = d.addr();
    get(a, "/cached?id=s");
    let (mut s, mut r) = connect(a);
    s.write_all(b"GET /cached?id=s HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut r).unwrap().header("x-cache"),
        Some("HIT")
    );
    d.signal(rustix::process::Signal::TERM);
    closed_within(&mut r, Duration::from_secs(5));
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

/// A site whose /files root (no compression) is sent with sendfile on cleartext
/// connections, beside the demo pool; `[log]` access log on.
/// Sends `request` on a new connection and reads until the server closes it (or 5 s pass:
/// then the text ends with "<still open>").
fn exchange_until_closed(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                got.extend_from_slice(b"<still open>");
                break;
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// An HTTP/1.0 client gets the answer hyper gives it, whether a cache hit answers it or the
/// worker: `HTTP/1.0` in the status line; the connection closed after the answer, unless the
/// client asked to keep it alive, and then `connection: keep-alive` in the answer.
#[test]
fn http10_requests_are_answered_as_http10_from_the_cache_and_from_the_worker() {
    let d = start("");
    let a = d.addr();
    let warm = exchange_until_closed(
        a,
        b"GET /cached?id=v10 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(warm.contains("x-cache: MISS"), "{warm}");

    // A hit, then the connection closes: HTTP/1.0 without keep-alive.
    let hit = exchange_until_closed(a, b"GET /cached?id=v10 HTTP/1.0\r\nHost: localhost\r\n\r\n");
    assert!(hit.starts_with("HTTP/1.0 200 OK\r\n"), "{hit}");
    assert!(hit.contains("x-cache: HIT\r\n"), "{hit}");
    assert!(!hit.to_ascii_lowercase().contains("connection:"), "{hit}");
    assert!(hit.ends_with("\r\n\r\n/cached id=v10 call=1"), "{hit}");

    // HEAD from the entry: the head alone, then closed.
    let head = exchange_until_closed(
        a,
        b"HEAD /cached?id=v10 HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        head.contains("x-cache: HIT\r\n") && head.contains("content-length: 21\r\n"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "{head}");

    // Kept alive: a hit, a request for the worker and another hit, pipelined; the last
    // one does not ask to keep the connection, so it closes after that answer.
    let both = exchange_until_closed(
        a,
        b"GET /cached?id=v10 HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n\
          GET /count?id=v10 HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n\
          GET /cached?id=v10 HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    let answers: Vec<&str> = both.split("HTTP/1.0 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 3, "{both}");
    assert!(
        answers[0].contains("x-cache: HIT\r\n")
            && answers[0].contains("connection: keep-alive\r\n"),
        "{both}"
    );
    assert!(answers[1].contains("connection: keep-alive\r\n"), "{both}");
    assert!(
        answers[1].ends_with("\r\n\r\n1"),
        "the worker counted one call: {both}"
    );
    assert!(answers[2].contains("x-cache: HIT\r\n"), "{both}");
    assert!(answers[2].ends_with("/cached id=v10 call=1"), "{both}");
    assert_eq!(count(a, "v10"), 1, "hits never reached the worker");
}

fn start_files(listener: &str, files: &[(&str, Vec<u8>)]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join("files").join(name), bytes).unwrap();
    }
    let text = format!(
        r#"
[listener]
shutdown_timeout = "10s"
{listener}

[log]
error_log = "error.log"
access_log = "access.log"

[cache]
admission = "always"

[[site]]
name = "site"
bindings = ["http://127.0.0.1:0"]
app = [{{ path = "/", pool = "demo" }}, {{ path = "/files", root = "files" }}]

[pool.demo]
command = ["{demo}"]
"#,
        demo = common::demo_worker().display()
    );
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, text).unwrap();
    Daemon::start_with(dir, &["serve", "--config", path.to_str().unwrap()])
}

#[test]
fn static_files_are_sent_whole_by_range_and_by_head_on_one_connection() {
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let d = start_files(
        "",
        &[
            ("big.bin", big.clone()),
            ("small.txt", b"small file".to_vec()),
        ],
    );
    let a = d.addr();
    get(a, "/cached?id=f");
    let (mut s, mut r) = connect(a);
    s.write_all(
        b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /files/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-1999\r\n\r\n\
          GET /files/small.txt HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /files/missing.txt HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /cached?id=f HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let whole = read_response(&mut r).unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(whole.header("etag").is_some() && whole.header("last-modified").is_some());
    assert!(whole.body == big, "the 3 MiB file arrived changed");
    let part = read_response(&mut r).unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some("bytes 1000-1999/3145728")
    );
    assert!(part.body == big[1000..2000]);
    assert_eq!(read_response(&mut r).unwrap().text(), "small file");
    assert_eq!(read_response(&mut r).unwrap().status, 404);
    let hit = read_response(&mut r).unwrap();
    assert_eq!(hit.header("x-cache"), Some("HIT"));

    // A conditional GET with the file's ETag: 304, no body.
    let etag = whole.header("etag").unwrap().to_owned();
    s.write_all(
        format!("GET /files/big.bin HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 304);

    // The access log has each request with the bytes sent.
    drop((s, r));
    let log = d.dir.path().join("access.log");
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("3145728") && text.contains("/files/missing.txt") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A static file for HTTP/1.0 goes out as for HTTP/1.1 (head, then the file), with the
/// head an HTTP/1.0 head: kept alive when asked, closed after the file otherwise.
#[test]
fn static_files_for_http10_keep_alive_only_when_asked() {
    let d = start_files("", &[("a.txt", b"file for 1.0".to_vec())]);
    let a = d.addr();
    let both = exchange_until_closed(
        a,
        b"GET /files/a.txt HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n\
          HEAD /files/a.txt HTTP/1.0\r\nHost: x\r\n\r\n",
    );
    let answers: Vec<&str> = both.split("HTTP/1.0 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 2, "{both}");
    assert!(answers[0].contains("connection: keep-alive\r\n"), "{both}");
    assert!(answers[0].contains("content-length: 12\r\n"), "{both}");
    assert!(answers[0].ends_with("\r\n\r\nfile for 1.0"), "{both}");
    assert!(!answers[1].contains("connection:"), "{both}");
    assert!(
        answers[1].ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {both}"
    );
}

#[test]
fn a_client_that_stops_reading_a_static_file_is_cut_by_min_send_rate() {
    let d = start_files("min_send_rate = 5000000", &[]);
    let big = std::fs::File::create(d.dir.path().join("files/big.bin")).unwrap();
    big.set_len(200 * 1024 * 1024).unwrap();
    let (mut s, _r) = connect(d.addr());
    s.write_all(b"GET /files/big.bin?slow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    loop {
        if d.error_lines()
            .iter()
            .any(|l| l.contains("Timer_MinBytesPerSecond"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?}",
            d.error_lines()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cut answer has its access-log line, with the bytes the socket took.
    let (status, bytes) = logged_status_and_bytes(&d, "slow=1");
    assert_eq!(status, 200);
    assert!(bytes < 200 * 1024 * 1024, "{bytes} bytes logged");
    // The daemon still serves.
    assert_eq!(get(d.addr(), "/").status, 200);
}

/// The `sc-status` and `sc-bytes` of the W3C access-log line whose `cs-uri-query` is `query`,
/// waited for (10 s at most).
fn logged_status_and_bytes(d: &Daemon, query: &str) -> (u16, u64) {
    let path = d.dir.path().join("access.log");
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let fields: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("#Fields: "))
            .map(|f| f.split(' ').collect())
            .unwrap_or_default();
        let at = |name: &str| fields.iter().position(|f| *f == name);
        if let (Some(q), Some(status), Some(bytes)) =
            (at("cs-uri-query"), at("sc-status"), at("sc-bytes"))
        {
            let line = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(' ').collect::<Vec<_>>())
                .find(|l| l.get(q) == Some(&query));
            if let Some(line) = line {
                return (line[status].parse().unwrap(), line[bytes].parse().unwrap());
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no access-log line for ?{query}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that leaves while a static file is being sent (by sendfile) still gets its
/// access-log line, as nginx logs an aborted request: the status sent and the bytes the socket
/// took, fewer than the answer's. The whole file and a range alike.
#[test]
fn a_static_file_cut_by_the_client_is_logged_with_the_bytes_sent() {
    let d = start_files("", &[]);
    let size = 200 * 1024 * 1024;
    let big = std::fs::File::create(d.dir.path().join("files/big.bin")).unwrap();
    // Sparse: far more than the socket buffers hold, so the client leaves mid-file.
    big.set_len(size).unwrap();
    for (query, range, status) in [
        ("abort=1", "", 200),
        ("abort=2", "Range: bytes=1000-\r\n", 206),
    ] {
        let (mut s, mut r) = connect(d.addr());
        s.write_all(
            format!("GET /files/big.bin?{query} HTTP/1.1\r\nHost: x\r\n{range}\r\n").as_bytes(),
        )
        .unwrap();
        let mut first = vec![0u8; 64 * 1024];
        r.read_exact(&mut first).unwrap();
        let status_line = format!("HTTP/1.1 {status} ");
        assert!(first.starts_with(status_line.as_bytes()), "{query}");
        // Closed with unread bytes: the server's next send fails (reset).
        drop((s, r));
        let (logged, bytes) = logged_status_and_bytes(&d, query);
        assert_eq!(logged, status, "{query}");
        assert!(
            bytes > 0 && bytes < size - 1000,
            "{query}: {bytes} bytes logged"
        );
    }
}

/// A file that shrinks while it is sent ends its answer early (the promised length cannot be
/// kept: the connection closes) and still gets its access-log line, with the bytes sent.
#[test]
fn a_static_file_that_shrinks_while_sent_is_logged_with_the_bytes_sent() {
    let d = start_files("", &[]);
    let size = 200 * 1024 * 1024;
    let file = std::fs::File::create(d.dir.path().join("files/shrinks.bin")).unwrap();
    file.set_len(size).unwrap();
    let (mut s, mut r) = connect(d.addr());
    s.write_all(b"GET /files/shrinks.bin?shrink=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    r.read_exact(&mut buf).unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200 "));
    file.set_len(1024 * 1024).unwrap();
    // The client reads on until the server closes the connection.
    let mut got = buf.len() as u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => panic!("after {got} bytes: {e}"),
        }
    }
    assert!(got < size, "{got} bytes arrived");
    let (status, bytes) = logged_status_and_bytes(&d, "shrink=1");
    assert_eq!(status, 200);
    assert!(bytes > 0 && bytes < size, "{bytes} bytes logged");
    assert!(
        bytes <= got,
        "{bytes} bytes logged, {got} arrived with the head"
    );
}
