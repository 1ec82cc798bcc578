//! Requests travel through the daemon to a real worker process and back.

mod common;
use common::*;
use std::io::{BufReader, Write};
use std::time::Duration;

#[test]
fn get_is_answered_by_a_worker() {
    let d = Daemon::start(&demo_config(""));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from keel");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let pid: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    assert!(
        d.worker_pids().contains(&pid),
        "answered by a worker of this daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_post_is_echoed() {
    check_one_mib_post_is_echoed(RUST_DEMO_WORKER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_post_is_echoed() {
    let d = Daemon::start(&demo_config(""));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..40)
        .map(|i| Ok(vec![b'a' + (i % 26) as u8; 10_000]))
        .collect();
    let expected: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.as_ref().unwrap().clone())
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = reqwest::Client::new()
        .post(d.url("/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), expected);
}

#[test]
fn hundred_pipelined_requests_are_answered_in_order() {
    check_hundred_pipelined_requests_in_order(RUST_DEMO_WORKER);
}

#[test]
fn big_response_is_streamed_whole() {
    let d = Daemon::start(&demo_config(""));
    let r = get(d.addr(), "/big?bytes=3000000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
}

#[test]
fn a_streamed_answer_of_known_length_keeps_its_content_length() {
    let d = Daemon::start(&demo_config(""));
    // 200 KiB of JSON: more than the RESPONSE frame carries, so it streams; the SDK knows
    // its length and declares it, and the client gets it rather than chunks.
    let r = get(d.addr(), "/json?kb=200");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(r.body.len() > 200 * 1024);
    // A small answer is whole when the daemon gets it: its length is counted there.
    let r = get(d.addr(), "/json?kb=1");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[test]
fn worker_output_is_logged_with_pool_and_pid() {
    let d = Daemon::start(&demo_config(""));
    assert_eq!(get(d.addr(), "/").status, 200);
    let pid = d.worker_pids()[0];
    // The demo worker prints "keel-demo-worker pid N ready" on stderr at start.
    let line = d.wait_for_line(
        &format!("keel-demo-worker pid {pid} ready"),
        Duration::from_secs(5),
    );
    assert!(line.contains("pool=demo"), "{line}");
    assert!(line.contains(&format!("pid={pid}")), "{line}");
}

#[test]
fn head_gets_the_headers_without_a_body() {
    let d = Daemon::start(&demo_config(""));
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // Skip the HEAD response's headers; no body follows them.
    loop {
        line.clear();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // The next bytes on the connection are the second response, not a body.
    let next = read_response(&mut r).unwrap();
    assert_eq!(next.status, 200);
    assert!(next.text().parse::<u32>().is_ok(), "{}", next.text());
}

/// `Max open files` from /proc/PID/limits: (soft, hard).
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

#[test]
fn the_daemon_raises_its_open_files_limit_and_workers_keep_the_one_it_was_started_with() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // This test's process (nextest runs each test in its own) starts keel with a soft limit
    // of 512 under its hard one, as a shell or service manager starts it with 1024.
    let hard = getrlimit(Resource::Nofile).maximum;
    assert!(hard.is_none_or(|h| h > 512), "hard limit {hard:?}");
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(512),
            maximum: hard,
        },
    )
    .unwrap();
    let hard_text = hard.map_or("unlimited".to_owned(), |h| h.to_string());
    let d = Daemon::start(&demo_config(""));
    assert_eq!(
        open_files_limit(d.pid()),
        (hard_text.clone(), hard_text.clone())
    );
    d.wait_for_line(
        "open files limit raised from 512 to",
        Duration::from_secs(5),
    );
    // A worker of a pool without `limits.nofile` gets 512 back.
    let worker: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    assert_eq!(open_files_limit(worker), ("512".to_owned(), hard_text));
    // One with `limits.nofile` gets that.
    let d = Daemon::start(&demo_config("limits = { nofile = 300 }"));
    let worker: u32 = get(d.addr(), "/pid").text().trim().parse().unwrap();
    assert_eq!(
        open_files_limit(worker),
        ("300".to_owned(), "300".to_owned())
    );
}
