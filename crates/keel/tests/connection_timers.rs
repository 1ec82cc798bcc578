//! The listener's connection timers from a client's side: a slowloris crowd is cut at
//! `header_wait` without slowing anyone else down, and a client that stops reading a
//! response is cut by `min_send_rate` while one that only pauses is not.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn config(listener: &str) -> String {
    format!(
        "[listener]\n{listener}\nshutdown_timeout = \"10s\"\n{}",
        demo_config("").replace("[listener]\nshutdown_timeout = \"10s\"\n", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slowloris_connections_are_cut_at_header_wait_and_slow_no_one() {
    const CROWD: usize = 500;
    let d = Daemon::start(&config("header_wait = \"4s\""));
    let addr = d.addr();
    assert_eq!(get(addr, "/").status, 200);
    let rss_before = rss_kib(d.pid());

    // Each connection sends one header byte per second and never finishes its head.
    let started = Instant::now();
    let mut crowd = Vec::new();
    for _ in 0..CROWD {
        crowd.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
                if s.write_all(&[*b]).await.is_err() {
                    return Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if started.elapsed() > Duration::from_secs(15) {
                    return None;
                }
            }
            None
        }));
    }

    // Meanwhile a normal client, on a new connection each time, is answered at once.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        let r = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_during = rss_kib(d.pid());

    let mut cut_after = Vec::new();
    for c in crowd {
        cut_after.push(c.await.unwrap().map(|t| t - started));
    }
    let never_cut = cut_after.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        never_cut, 0,
        "{never_cut} slow connections were never closed"
    );
    let latest = cut_after.iter().flatten().max().unwrap();
    // A write fails only on the byte after the close (up to 1 s later).
    assert!(
        *latest < Duration::from_secs(8),
        "last cut after {latest:?}"
    );

    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = *latencies.last().unwrap();
    assert!(median < Duration::from_millis(100), "median {median:?}");
    assert!(worst < Duration::from_millis(1000), "worst {worst:?}");

    // Bounded memory: 500 half-open heads cost little (hyper's buffer per connection).
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS {rss_before} KiB -> {rss_during} KiB"
    );
    let logged = d
        .error_lines()
        .iter()
        .filter(|l| l.contains("Timer_HeaderWait"))
        .count();
    assert_eq!(
        logged, CROWD,
        "one Timer_HeaderWait line per slow connection"
    );
    assert_eq!(get(addr, "/").status, 200);
}

/// Sends a GET for a 50 MB response and returns the socket without reading it.
fn ask_for_big(d: &Daemon) -> TcpStream {
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.write_all(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s
}

/// Reads up to `limit` bytes or until the connection closes; returns the bytes read.
fn read_up_to(s: &mut TcpStream, limit: usize) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while total < limit {
        let want = (limit - total).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
    total
}

#[test]
fn a_client_that_stops_reading_is_cut_by_min_send_rate_and_one_that_pauses_is_not() {
    // 5 MB/s: a client that takes nothing after the socket buffers fill falls below it
    // within a few seconds; one that pauses for a second does not.
    let d = Daemon::start(&config("min_send_rate = 5000000"));

    let mut stalled = ask_for_big(&d);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let mut logged = false;
    while t.elapsed() < Duration::from_secs(20) {
        logged = d
            .error_lines()
            .iter()
            .any(|l| l.contains("Timer_MinBytesPerSecond"));
        if logged {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logged, "no Timer_MinBytesPerSecond: {:?}", d.error_lines());
    let got = read_up_to(&mut stalled, usize::MAX);
    assert!(got < 50_000_000, "the stalled client got the whole answer");

    // A client that takes most of the answer, pauses for a second, then reads on gets all
    // of it: the rate is averaged over the whole response (IIS), so a short stall late in a
    // fast response costs nothing. (A second's pause after the first megabyte would fall
    // below 5 MB/s on average, and be cut, as it should.)
    let mut pausing = ask_for_big(&d);
    let mut first = vec![0u8; 64 * 1024];
    pausing.read_exact(&mut first).unwrap();
    let head_len = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap();
    let mut rest = 50_000_000 - (first.len() - head_len);
    let before_pause = 40_000_000;
    assert_eq!(read_up_to(&mut pausing, before_pause), before_pause);
    rest -= before_pause;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_up_to(&mut pausing, rest), rest);
    let cuts = d
        .error_lines()
        .iter()
        .filter(|l| l.contains("Timer_MinBytesPerSecond"))
        .count();
    assert_eq!(cuts, 1, "{:?}", d.error_lines());
    assert_eq!(get(d.addr(), "/").status, 200);
}
