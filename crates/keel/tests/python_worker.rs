//! The Python worker SDK (`sdk/python`, written from docs/worker-protocol.md alone) under a
//! real daemon: the same checks as the Rust demo worker's, through `python3 -m
//! keel_worker.demo` (an ASGI app behind the SDK's ASGI adapter, one task per request) and
//! `python3 -m keel_worker.demo wsgi` (the same routes as a WSGI app behind the WSGI
//! adapter, answered inline by the read loop).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn python_available() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn py() -> String {
    assert!(python_available(), "python3 is needed for these tests");
    python_demo_worker()
}

fn wsgi() -> String {
    assert!(python_available(), "python3 is needed for these tests");
    python_wsgi_demo_worker()
}

#[test]
fn python_get_is_answered() {
    check_get_root(&py());
}

#[test]
fn python_head_is_answered_like_get_without_body() {
    let d = Daemon::start(&worker_config(&py(), ""));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-length: 15\r\n"), "{text}");
    assert!(text.contains("x-keel-pool: demo\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after a HEAD: {text:?}");
    assert_eq!(get(d.addr(), "/nope").status, 404);
    assert_eq!(get(d.addr(), "/nope").text(), "not found");
    assert_eq!(get(d.addr(), "/env?name=KEEL_POOL").text(), "demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_one_mib_post_is_echoed() {
    check_one_mib_post_is_echoed(&py()).await;
}

#[test]
fn python_hundred_pipelined_requests_are_answered_in_order() {
    check_hundred_pipelined_requests_in_order(&py());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_killed_every_200ms_loses_no_request() {
    check_worker_killed_every_200ms_loses_no_request(&py(), true).await;
}

#[test]
fn python_slow_reader_of_a_big_response_does_not_delay_other_requests() {
    check_slow_reader_does_not_delay_other_requests(&py());
}

#[test]
fn python_crashing_request_gets_502_and_the_next_one_succeeds() {
    check_crashing_request_gets_502_and_the_next_one_succeeds(&py());
}

#[test]
fn python_stats_counts_requests_and_big_is_whole() {
    let d = Daemon::start(&worker_config(&py(), ""));
    assert_eq!(get(d.addr(), "/stats").text(), "requests 1");
    let r = get(d.addr(), "/big?bytes=3000000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
    assert_eq!(get(d.addr(), "/stats").text(), "requests 3");
}

// ---- the WSGI adapter

#[test]
fn python_wsgi_get_is_answered() {
    check_get_root(&wsgi());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_wsgi_one_mib_post_is_echoed() {
    check_one_mib_post_is_echoed(&wsgi()).await;
}

#[test]
fn python_wsgi_hundred_pipelined_requests_are_answered_in_order() {
    check_hundred_pipelined_requests_in_order(&wsgi());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_wsgi_worker_killed_every_200ms_loses_no_request() {
    check_worker_killed_every_200ms_loses_no_request(&wsgi(), true).await;
}

#[test]
fn python_wsgi_slow_reader_of_a_big_response_does_not_delay_other_requests() {
    check_slow_reader_does_not_delay_other_requests(&wsgi());
}

#[test]
fn python_wsgi_crashing_request_gets_502_and_the_next_one_succeeds() {
    check_crashing_request_gets_502_and_the_next_one_succeeds(&wsgi());
}
