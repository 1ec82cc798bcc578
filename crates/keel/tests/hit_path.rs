//! Cache hits on kept-alive HTTP/1.1 connections, which keel answers before hyper
//! (`listener/hit_path.rs`), and the hand-over to hyper at the first request that is not a
//! hit: a real daemon and demo worker, raw sockets. The demo worker counts its calls per
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
