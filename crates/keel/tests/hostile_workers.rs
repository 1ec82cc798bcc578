//! Workers that break the protocol on purpose (`keel-hostile-worker`): each is disconnected
//! and replaced, its request gets 502, the reason is logged, and the pool's other worker and
//! its client see nothing of it.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// Two workers of one request each: a slow request holds one, so the hostile request lands
/// on the other. Rapid-fail protection is out of the way: every mode kills a worker.
fn hostile_config() -> String {
    demo_config(
        "workers = 2\nstart = \"always\"\nrapid_fail = { failures = 100, interval = \"1m\" }",
    )
    .replace(
        "{demo}",
        sibling_bin("keel-hostile-worker").to_str().unwrap(),
    )
}

/// The daemon's log lines saying a worker broke the protocol.
fn protocol_breaks(d: &Daemon) -> usize {
    d.log_lines()
        .iter()
        .filter(|l| l.contains("broke the protocol"))
        .count()
}

fn wait_for_breaks(d: &Daemon, n: usize) {
    let t = std::time::Instant::now();
    while protocol_breaks(d) < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no worker was disconnected for breaking the protocol:\n{}",
            d.log_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_hostile_worker_gets_its_request_502_and_is_replaced() {
    let d = Daemon::start(&hostile_config());
    let addr = d.addr();
    let modes = [
        "oversized",
        "unknown-id",
        "header-cr",
        "header-lf",
        "header-nul",
        "after-own-abort",
        "garbage",
    ];
    for (n, mode) in modes.iter().enumerate() {
        // The parallel client: a request on the other worker, running throughout.
        let slow = std::thread::spawn(move || get(addr, "/slow?ms=1500"));
        std::thread::sleep(Duration::from_millis(300));
        let r = get(addr, &format!("/hostile/{mode}"));
        assert_eq!(r.status, 502, "{mode}: {r:?}");
        // Nothing the worker tried to inject reaches the client.
        assert!(
            !r.headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("set-cookie") || v.contains("stolen")),
            "{mode}: {r:?}"
        );
        wait_for_breaks(&d, n + 1);
        let s = slow.join().unwrap();
        assert_eq!(
            s.status, 200,
            "{mode}: the other worker's client failed: {s:?}"
        );
        // The next request is served (by the replacement, or the other worker).
        assert_eq!(get(addr, "/").status, 200, "{mode}");
    }
    let log = d.log_lines().join("\n");
    for why in [
        "exceeds the limit",
        "unknown stream",
        "header value",
        "unknown frame kind",
    ] {
        assert!(log.contains(why), "no {why:?} in the daemon's log:\n{log}");
    }
    let errors = d.error_lines();
    let abandoned = errors
        .iter()
        .filter(|l| l.contains(" 502 ") && l.contains("Connection_Abandoned"))
        .count();
    assert_eq!(abandoned, modes.len(), "{errors:#?}");
}

#[test]
fn a_response_after_the_daemons_abort_ends_that_worker_only() {
    let d = Daemon::start(&hostile_config());
    let addr = d.addr();
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=2000"));
    std::thread::sleep(Duration::from_millis(300));
    // The client asks, then leaves once the worker has started: the daemon sends ABORT, and
    // the worker answers it with ABORT and then a RESPONSE on the ended stream.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /hostile/after-abort HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Leave only once a worker has taken it (the slow request and this one: 2), or the
    // request is simply dropped from the queue and no ABORT is sent. On a loaded machine
    // a fixed pause was not always enough.
    let t = std::time::Instant::now();
    loop {
        let status = d.admin_json("GET", "/status");
        let taken: u64 = status["pools"][0]["workers"]
            .as_array()
            .map(|ws| ws.iter().map(|w| w["requests"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if taken >= 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    wait_for_breaks(&d, 1);
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(get(addr, "/").status, 200);
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("broke the protocol") && l.contains("unknown stream")),
        "{}",
        d.log_lines().join("\n")
    );
}

/// A worker that answers before reading the request body discards the rest and grants the
/// window back (the SDK does): its WINDOW frames cross the daemon's last DATA, which has
/// already closed the stream. That is no breach of the protocol, and the worker stays.
#[test]
fn window_frames_crossing_the_daemons_end_do_not_end_the_worker() {
    let d = Daemon::start(&demo_config(""));
    let body = vec![b'x'; 600 * 1024];
    for _ in 0..20 {
        let mut head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        head.extend_from_slice(&body);
        // The demo worker has no POST /: it answers 404 at once, body unread.
        let r = raw_request(d.addr(), &head);
        assert_eq!(r.status, 404);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(protocol_breaks(&d), 0, "{}", d.log_lines().join("\n"));
}
