//! A worker crash is invisible to clients: queued and unstarted requests are replayed,
//! started idempotent ones are retried once when the worker was killed from outside, and
//! what cannot be saved gets a clean 502.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_every_200ms_loses_no_request() {
    check_worker_killed_every_200ms_loses_no_request(RUST_DEMO_WORKER, false).await;
}

/// `threads = 1` runs the daemon on tokio's single-threaded scheduler: the same storm loses
/// nothing there, and the daemon still stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_serving_thread_loses_no_request_in_the_storm() {
    let config = format!(
        "[daemon]\nthreads = 1\nruntime_dir = \"run\"\n{}",
        worker_config(RUST_DEMO_WORKER, "workers = 2\nstart = \"always\"")
    );
    let mut d = Daemon::start(&config);
    d.wait_for_line("1 serving thread(s)", Duration::from_secs(1));
    check_storm_loses_no_request(&d, false).await;
    let status = d.stop(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn crashing_request_gets_502_and_the_next_one_succeeds() {
    check_crashing_request_gets_502_and_the_next_one_succeeds(RUST_DEMO_WORKER);
}

#[test]
fn started_request_killed_from_outside_is_retried_on_another_worker() {
    let d = Daemon::start(&demo_config(""));
    let pid: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let addr = d.addr();
    let slow = std::thread::spawn(move || get(addr, "/sleep?ms=700"));
    std::thread::sleep(Duration::from_millis(300));
    kill(pid);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "retried on the replacement");
    assert_eq!(r.text(), "slept 700 ms");
}

#[test]
fn started_post_is_not_retried_when_its_worker_is_killed() {
    let d = Daemon::start(&demo_config(""));
    let pid: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let addr = d.addr();
    let slow = std::thread::spawn(move || {
        raw_request(
            addr,
            b"POST /sleep?ms=700 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    kill(pid);
    assert_eq!(slow.join().unwrap().status, 502);
}

#[test]
fn retry_never_gives_502_even_for_started_gets() {
    let d = Daemon::start(&demo_config("retry = \"never\""));
    let pid: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let addr = d.addr();
    let slow = std::thread::spawn(move || get(addr, "/sleep?ms=700"));
    std::thread::sleep(Duration::from_millis(300));
    kill(pid);
    assert_eq!(slow.join().unwrap().status, 502);
}

#[test]
fn requests_queued_behind_a_crash_are_served_by_the_replacement() {
    let d = Daemon::start(&demo_config("capacity = 1"));
    assert_eq!(get(d.addr(), "/").status, 200);
    let addr = d.addr();
    let crash = std::thread::spawn(move || get(addr, "/crash"));
    let waiting: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr, "/")))
        .collect();
    assert_eq!(crash.join().unwrap().status, 502);
    for w in waiting {
        let r = w.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Hello from keel");
    }
}

#[test]
fn killing_the_daemon_takes_its_workers_with_it() {
    let mut d = Daemon::start(&demo_config("workers = 2\nstart = \"always\""));
    let workers = d.wait_for_workers(2, Duration::from_secs(10));
    d.signal(rustix::process::Signal::KILL);
    d.wait_exit(Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while workers.iter().any(|&p| process_alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "orphaned workers {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
