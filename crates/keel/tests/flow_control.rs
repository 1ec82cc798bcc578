//! Per-request flow control: one slow client never stalls other requests on the same worker.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn slow_reader_of_a_big_response_does_not_delay_other_requests() {
    let d = Daemon::start(&demo_config("workers = 1"));
    assert_eq!(get(d.addr(), "/").status, 200);
    // A client that asks for 50 MB and reads almost nothing.
    let mut slow = TcpStream::connect(d.addr()).unwrap();
    slow.write_all(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The same single worker still answers everyone else promptly.
    for _ in 0..20 {
        let t = Instant::now();
        let r = get(d.addr(), "/");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
    }
    // The slow client's stream is still intact: it can read on.
    let mut more = vec![0u8; 1 << 20];
    slow.read_exact(&mut more).unwrap();
    assert!(more.iter().all(|&b| b == more[0]));
}
