//! Malformed and hostile request heads on raw sockets: each gets its status (or a closed
//! connection), an error-log reason, and the daemon keeps serving.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The status line's code, or `None` when the connection closed without an answer.
fn answer(d: &Daemon, raw: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A peer that closes early may refuse the rest of a long write: that is an answer too.
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

#[test]
fn malformed_heads_get_their_status_and_the_daemon_keeps_serving() {
    let d = Daemon::start(&demo_config(""));
    let long = |n: usize| "a".repeat(n);
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("CL.TE", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX".to_vec(), Some(200)),
        ("TE.CL", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n".to_vec(), Some(200)),
        ("TE.TE obfuscated", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n".to_vec(), Some(400)),
        ("TE gzip", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), Some(400)),
        ("duplicate CL", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(), Some(400)),
        ("CL too large", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 30000001\r\n\r\n".to_vec(), Some(413)),
        ("dot-dot above root", b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("encoded dot-dot", b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("encoded slash", b"GET /a%2f..%2f..%2fetc HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("encoded NUL", b"GET /a%00.txt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("backslash encoded", b"GET /a%5c..%5cb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("invalid UTF-8", b"GET /%c3%28 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("URL over 8 KiB", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", long(9000)).into_bytes(), Some(414)),
        ("segment over 260", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", long(300)).into_bytes(), Some(400)),
        ("256 segments", format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", "/s".repeat(256)).into_bytes(), Some(400)),
        ("field over 16 KiB", format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", long(17000)).into_bytes(), Some(431)),
        ("head over 16 KiB", format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}\r\nX-B: {}\r\n\r\n", long(9000), long(9000)).into_bytes(), Some(431)),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(), Some(400)),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), Some(400)),
        ("invalid chunk size", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), Some(400)),
        ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("invalid method token", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("NUL in the path", b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
    ];
    let mut wrong = Vec::new();
    for (name, raw, want) in &cases {
        let got = answer(&d, raw);
        // `None`: closed without an answer. CL.TE and TE.CL are framed by
        // Transfer-Encoding (hyper drops the Content-Length before keel sees the head), so
        // the chunked body is the body and nothing is smuggled: 200 for the POST itself.
        let ok = match want {
            None => got.is_none(),
            Some(w) => got == Some(*w),
        };
        if !ok {
            wrong.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // After all of them, a normal request is answered.
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200);
    let log = d.error_lines().join("\n");
    for reason in [
        "URL_Length",
        "FieldLength",
        "RequestLength",
        "EntityTooLarge",
        "URL",
    ] {
        assert!(log.contains(reason), "no {reason} in the error log:\n{log}");
    }
}

#[test]
fn connections_past_max_connections_are_closed_at_once_and_logged() {
    let d = Daemon::start(&format!(
        "[listener]\nmax_connections = 4\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    // Four connections, each proven open by an answered request on it (kept alive).
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_response(&mut r).unwrap().status, 200);
        open.push(s);
    }
    // The fifth is closed without an answer.
    assert_eq!(answer(&d, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    let t = std::time::Instant::now();
    while !d.error_lines().iter().any(|l| l.contains("ConnLimit")) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            d.error_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One closes: a new one is served.
    drop(open.pop());
    let t = std::time::Instant::now();
    loop {
        if answer(
            &d,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ) == Some(200)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no room after a close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_head_dribbled_past_header_wait_is_cut_off() {
    let d = Daemon::start(&format!(
        "[listener]\nheader_wait = \"1s\"\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = std::time::Instant::now();
    // One header byte every 200 ms: the head never ends within 1 s.
    let mut cut = false;
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !cut {
        let mut buf = [0u8; 64];
        cut = matches!(s.read(&mut buf), Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408");
    }
    assert!(cut, "the connection was still open after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(6));
    // Meanwhile and after, normal clients are served.
    assert_eq!(get(d.addr(), "/").status, 200);
    let t = std::time::Instant::now();
    while !d
        .error_lines()
        .iter()
        .any(|l| l.contains("Timer_HeaderWait"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            d.error_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_idle_connection() {
    let d = Daemon::start(&format!(
        "[listener]\nidle_connection = \"1s\"\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    // Then nothing: closed after about a second, logged as idle, not as a slow head.
    let mut buf = [0u8; 16];
    assert!(matches!(r.get_mut().read(&mut buf), Ok(0) | Err(_)));
    let t = std::time::Instant::now();
    while !d
        .error_lines()
        .iter()
        .any(|l| l.contains("Timer_ConnectionIdle"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            d.error_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !d.error_lines()
            .iter()
            .any(|l| l.contains("Timer_HeaderWait"))
    );
}

#[test]
fn a_request_body_that_stalls_past_entity_body_gets_408() {
    let d = Daemon::start(&format!(
        "[listener]\nentity_body = \"1s\"\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    ));
    // A small body (read whole before queueing) and a large one (streamed to the worker),
    // each stopping short of its Content-Length.
    let small = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec();
    let mut large = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    large.extend(std::iter::repeat_n(b'x', 100_000));
    for raw in [small, large] {
        let t = std::time::Instant::now();
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&raw).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        // The echo worker may have begun its answer already: then the answer is cut short
        // and the connection closed, instead of a 408.
        let cut = text.starts_with("HTTP/1.1 200") && buf.len() < 1_000_000;
        assert!(
            text.starts_with("HTTP/1.1 408") || cut,
            "{:?}",
            &text[..text.len().min(200)]
        );
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    let n = d
        .error_lines()
        .iter()
        .filter(|l| l.contains("Timer_EntityBody"))
        .count();
    assert_eq!(n, 2, "{:?}", d.error_lines());
    assert_eq!(get(d.addr(), "/").status, 200);
}
