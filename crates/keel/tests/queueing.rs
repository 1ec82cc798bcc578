//! The per-pool queue: bounded, timed, FIFO, and a request whose client left never reaches
//! a worker.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Starts a request that holds the only worker slot for `ms` milliseconds, on its own thread.
/// Each one's URL is its own: identical GETs in flight together would be collapsed into one
/// request to the worker (the cache's `collapse = "all"`), and never fill the queue.
fn occupy(addr: std::net::SocketAddr, ms: u64) -> std::thread::JoinHandle<RawResponse> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::thread::spawn(move || get(addr, &format!("/sleep?ms={ms}&n={n}")))
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let d = Daemon::start(&demo_config("capacity = 1\nqueue_length = 2"));
    assert_eq!(get(d.addr(), "/").status, 200); // worker up
    let busy = occupy(d.addr(), 1500);
    std::thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = (0..2).map(|_| occupy(d.addr(), 10)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(busy.join().unwrap().status, 200);
    for q in queued {
        assert_eq!(q.join().unwrap().status, 200, "queued requests are served");
    }
    let lines = d.error_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 503 ") && l.contains("QueueFull")),
        "{lines:?}"
    );
}

#[test]
fn request_waiting_past_queue_timeout_gets_503() {
    let d = Daemon::start(&demo_config("capacity = 1\nqueue_timeout = \"1s\""));
    assert_eq!(get(d.addr(), "/").status, 200);
    let busy = occupy(d.addr(), 3000);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = get(d.addr(), "/");
    let waited = t.elapsed();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_millis(2800), "{waited:?}");
    assert_eq!(busy.join().unwrap().status, 200);
    assert!(
        d.error_lines().iter().any(|l| l.contains("Timer_ReqQueue")),
        "{:?}",
        d.error_lines()
    );
}

#[test]
fn client_that_disconnects_while_queued_never_reaches_the_worker() {
    let d = Daemon::start(&demo_config("capacity = 1"));
    let first = get(d.addr(), "/stats").text();
    assert_eq!(first.trim(), "requests 1");
    let busy = occupy(d.addr(), 1000);
    std::thread::sleep(Duration::from_millis(200));
    {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.write_all(b"GET /pid HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // Dropped: the client goes away while its request waits.
    }
    d.wait_for_error_line("Client_Reset", Duration::from_secs(10));
    assert_eq!(busy.join().unwrap().status, 200);
    // The worker saw: /stats, /sleep, and now this /stats; never the abandoned /pid.
    assert_eq!(get(d.addr(), "/stats").text().trim(), "requests 3");
}

#[test]
fn client_that_leaves_while_its_request_runs_frees_the_slot_at_once_and_is_logged() {
    let d = Daemon::start(&demo_config("capacity = 1"));
    assert_eq!(get(d.addr(), "/").status, 200); // worker up
    // The request waits in the queue first, then reaches the worker while its client
    // waits: it learns of its assignment without being woken for it.
    let busy = occupy(d.addr(), 500);
    std::thread::sleep(Duration::from_millis(100));
    {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.write_all(b"GET /sleep?ms=5000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert_eq!(busy.join().unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(300));
        // Dropped: the client goes away while the worker runs its request.
    }
    d.wait_for_error_line("Connection_Dropped", Duration::from_secs(10));
    // The stream was aborted, so the only slot takes the next request now, not when the
    // abandoned one would have ended.
    let t = Instant::now();
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
