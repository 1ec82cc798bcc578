//! HTTP workers (`protocol = "http"`): unmodified HTTP/1.1 applications — the WSGI example
//! under gunicorn and the Node.js example — as pool workers, with the same queueing, crash
//! transparency, recycling and caching as protocol workers.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn gunicorn_serves_through_the_inherited_socket() {
    let d = Daemon::start(&worker_config(&wsgi_worker(), ""));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello from WSGI\n");
    assert_eq!(r.header("server"), Some("gunicorn"));
    // The answer comes from a process of this daemon's worker (gunicorn's sync worker is a
    // child of the master keel started).
    let pid: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let masters = d.worker_pids();
    assert!(
        masters.iter().any(|m| children_of(*m).contains(&pid)),
        "{pid} is not a child of {masters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_echoes_a_one_mib_post() {
    let worker = tokio::task::spawn_blocking(wsgi_worker).await.unwrap();
    check_one_mib_post_is_echoed(&worker).await;
}

#[test]
fn forwarded_headers_are_set_and_client_copies_stripped() {
    for worker in [wsgi_worker(), node_worker()] {
        let d = Daemon::start(&worker_config(&worker, ""));
        let r = raw_request(
            d.addr(),
            b"GET /headers HTTP/1.1\r\nHost: shop.example:8443\r\n\
              X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;proto=https\r\n\
              X-Real-IP: 6.6.6.6\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let h = json(&r.text());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
        assert_eq!(h["x-real-ip"], "127.0.0.1", "{h}");
        assert_eq!(h["x-forwarded-proto"], "http", "{h}");
        assert_eq!(h["x-forwarded-host"], "shop.example:8443", "{h}");
        assert_eq!(h["host"], "shop.example:8443", "{h}");
        assert_eq!(
            h["forwarded"], "for=127.0.0.1;host=\"shop.example:8443\";proto=http",
            "{h}"
        );
        assert_eq!(h["x-forwarded-port"], d.addr().port().to_string(), "{h}");
        assert!(h.get("x-secret").is_none(), "hop-by-hop field passed: {h}");
    }
}

#[test]
fn a_cacheable_wsgi_response_is_served_from_the_cache() {
    let d = Daemon::start(&worker_config(&wsgi_worker(), ""));
    let count = || -> u32 { get(d.addr(), "/count").text().parse().unwrap() };
    let before = count();
    // Stored on its second request (frequency admission), then answered by the daemon.
    let first = get(d.addr(), "/cached");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = get(d.addr(), "/cached");
    assert_eq!(second.header("x-cache"), Some("MISS"));
    for _ in 0..5 {
        let hit = get(d.addr(), "/cached");
        assert_eq!(hit.status, 200);
        assert_eq!(hit.header("x-cache"), Some("HIT"));
        assert_eq!(hit.text(), second.text(), "the stored body");
    }
    // The application saw /cached twice, not seven times (plus this /count).
    assert_eq!(count() - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_killed_every_200ms_loses_no_request() {
    // Built before the storm (and outside the async runtime's clock).
    let worker = tokio::task::spawn_blocking(wsgi_worker).await.unwrap();
    check_worker_killed_every_200ms_loses_no_request(&worker, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pool_recycled_by_request_count_under_load_loses_nothing() {
    let d = Daemon::start(&worker_config(
        &node_worker(),
        "workers = 2\ncapacity = 8\nstart = \"always\"\nrecycle = { requests = 300 }",
    ));
    d.wait_for_workers(2, Duration::from_secs(20));
    // A worker is due for recycling at 300 requests, but it serves on until its
    // replacement is ready, so how many recycles a number of requests brings depends on
    // how fast requests go against how fast node starts: the load goes on, in rounds of
    // 1,500 requests, until four recycles are done.
    let recycled = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("drained and exited"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while recycled(&d.log_lines()) < 4 && Instant::now() < deadline {
        let failures = hammer(&d.url("/pid"), 1500, 32).await;
        assert!(
            failures.is_empty(),
            "{} failures: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
    }
    let lines = d.log_lines();
    assert!(
        recycled(&lines) >= 4,
        "{} recycles: {lines:#?}",
        recycled(&lines)
    );
    // Each drained worker got SIGTERM after its last request and exited by itself.
    assert!(
        !lines.iter().any(|l| l.contains("after SIGTERM: killed")),
        "{lines:#?}"
    );
    assert!(d.error_lines().is_empty(), "{:?}", d.error_lines());
}

#[test]
fn a_worker_that_never_answers_is_killed_at_startup_timeout_and_counts_toward_rapid_fail() {
    // `sleep` inherits the listening socket and never reads it: connections are accepted
    // by the kernel, but no answer ever comes.
    let d = Daemon::start(&worker_config(
        "protocol = \"http\"\ncommand = [\"sleep\", \"600\"]",
        "startup_timeout = \"1s\"\nrapid_fail = { failures = 2, interval = \"1m\", backoff = false }",
    ));
    let t = Instant::now();
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(20));
    d.wait_for_line("-> Disabled", Duration::from_secs(10));
    let failures = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("no hello within startup_timeout"))
        .count();
    assert!(failures >= 2, "{:#?}", d.log_lines());
    // Nothing is left running.
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.worker_pids().is_empty(), "{:?}", d.worker_pids());
}

#[test]
fn a_worker_that_binds_its_own_port_is_reached_over_tcp() {
    let d = Daemon::start(&worker_config(
        &node_worker(),
        "listen = \"tcp\"\nhealth_path = \"/health\"",
    ));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello from Node\n");
    let pid: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert!(d.worker_pids().contains(&pid));
}

#[test]
fn a_worker_failing_its_health_path_is_replaced() {
    let d = Daemon::start(&worker_config(
        &node_worker(),
        "health_path = \"/health\"\nping_interval = \"1s\"\nping_timeout = \"1s\"",
    ));
    let before: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert_eq!(get(d.addr(), "/sick").status, 200);
    d.wait_for_line("killed by the health check", Duration::from_secs(10));
    let t = Instant::now();
    loop {
        let r = get(d.addr(), "/pid");
        if r.status == 200 && r.text().parse::<u32>().unwrap() != before {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "not replaced");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_crashing_request_gets_502_and_the_pool_carries_on() {
    let d = Daemon::start(&worker_config(&node_worker(), ""));
    let before = get(d.addr(), "/pid").text();
    let r = get(d.addr(), "/crash");
    assert_eq!(r.status, 502);
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    assert_ne!(r.text(), before, "a new worker answered");
}

/// A WSGI app whose process dies (SIGKILL) half-way through a response while gunicorn's
/// master lives on and starts a new worker process, as when an application's worker
/// segfaults or is killed for its memory. `marker` (a file) makes `/once` die only the first
/// time; `/always` dies every time; `POST /once` as `/once`.
const DYING_APP: &str = r#"
import os, signal

MARKER = os.environ["DYING_MARKER"]

def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    die = path == "/always" or (path == "/once" and not os.path.exists(MARKER))
    if path == "/once" and die:
        open(MARKER, "w").close()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "26")])
    def body():
        yield b"abcdefghijklm"
        if die:
            os.kill(os.getpid(), signal.SIGKILL)
        yield b"nopqrstuvwxyz"
    return body()
"#;

fn dying_wsgi_daemon(dir: &std::path::Path) -> Daemon {
    std::fs::write(dir.join("dying.py"), DYING_APP).unwrap();
    let pool = format!(
        "protocol = \"http\"\ncommand = [\"{}\", \"--workers\", \"1\", \"--no-control-socket\", \"dying:app\"]\ncwd = \"{}\"\nenv = {{ DYING_MARKER = \"{}\" }}",
        gunicorn().display(),
        dir.display(),
        dir.join("marker").display()
    );
    Daemon::start(&worker_config(&pool, ""))
}

#[test]
fn a_get_whose_worker_process_dies_mid_response_is_answered_by_its_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let d = dying_wsgi_daemon(dir.path());
    assert_eq!(get(d.addr(), "/pid").status, 200);
    let master = d.worker_pids();
    assert_eq!(master.len(), 1);
    let t = Instant::now();
    let r = get(d.addr(), "/once");
    assert_eq!(r.status, 200, "{}", r.text());
    // Sent again on a new connection, which must not queue behind the spare connection
    // keel keeps in gunicorn's accept queue (the new gunicorn process would read that one
    // until keel closes it unused, 2 s later).
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "the replacement answered after {:?}",
        t.elapsed()
    );
    assert_eq!(r.text(), "abcdefghijklmnopqrstuvwxyz");
    assert!(
        dir.path().join("marker").exists(),
        "the first attempt did not run"
    );
    // The same server (gunicorn's master) answered, through a new worker process.
    assert_eq!(d.worker_pids(), master);
}

#[test]
fn a_response_broken_twice_or_a_broken_post_gets_502_and_the_pool_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dying_wsgi_daemon(dir.path());
    // Tried twice, broken twice: 502, and the slot is free again for the next request.
    let r = get(d.addr(), "/always");
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200, "{}", r.text());
    // A POST is never sent twice.
    let r = raw_request(
        d.addr(),
        b"POST /once HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(dir.path().join("marker").exists());
    assert_eq!(get(d.addr(), "/pid").status, 200);
}

/// Requests the pool's one worker holds now, by the admin API.
fn worker_in_flight(d: &Daemon) -> u64 {
    let status = d.admin_json("GET", "/status");
    let workers = status["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "demo"))
        .map(|p| p["workers"].clone())
        .unwrap_or_else(|| panic!("no pool demo in {status}"));
    workers[0]["in_flight"]
        .as_u64()
        .unwrap_or_else(|| panic!("no in_flight in {workers}"))
}

/// The worker's slot held by a client that left is free again within `limit`.
fn assert_slot_freed_within(d: &Daemon, limit: Duration) {
    let deadline = Instant::now() + limit;
    while worker_in_flight(d) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        worker_in_flight(d),
        0,
        "the slot of the client that left is still held"
    );
}

#[test]
fn a_large_response_streams_whole_and_a_client_that_leaves_frees_its_slot() {
    use std::io::{Read, Write};
    let d = Daemon::start(&worker_config(&node_worker(), "workers = 1\ncapacity = 2"));
    // 5 MB: twenty times the stream's window, so the worker is held back and let go again
    // as the client reads.
    let r = get(d.addr(), "/big?bytes=5000000");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 5_000_000);
    assert!(r.body.iter().all(|&b| b == b'x'));

    // A client that asks for 50 MB, reads a little and leaves.
    let mut slow = std::net::TcpStream::connect(d.addr()).unwrap();
    slow.write_all(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(worker_in_flight(&d), 1);
    // The other slot still serves.
    assert_eq!(get(d.addr(), "/").status, 200);
    drop(slow);
    assert_slot_freed_within(&d, Duration::from_secs(5));
    // Both slots serve: two slow requests run side by side.
    let t = Instant::now();
    // Two URLs: the same GET twice at once would be collapsed into one worker request.
    let both: Vec<_> = (0..2)
        .map(|i| {
            let addr = d.addr();
            std::thread::spawn(move || get(addr, &format!("/sleep?ms=800&n={i}")))
        })
        .collect();
    for h in both {
        assert_eq!(h.join().unwrap().text(), "slept 800 ms");
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_client_that_leaves_before_its_answer_frees_the_slot_at_once_and_is_logged() {
    use std::io::Write;
    let d = Daemon::start(&worker_config(&node_worker(), "workers = 1\ncapacity = 1"));
    assert_eq!(get(d.addr(), "/").status, 200);
    // The request waits in the queue first, then reaches the worker while its client
    // waits: it learns of its assignment without being woken for it.
    let addr = d.addr();
    let busy = std::thread::spawn(move || get(addr, "/sleep?ms=500"));
    std::thread::sleep(Duration::from_millis(100));
    {
        let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
        s.write_all(b"GET /sleep?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(busy.join().unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(worker_in_flight(&d), 1);
    }
    assert_slot_freed_within(&d, Duration::from_secs(3));
    d.wait_for_error_line("Connection_Dropped", Duration::from_secs(5));
    let t = Instant::now();
    assert_eq!(get(d.addr(), "/").status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// A recycle while a 1.5 s request runs: the request gets its answer, the old worker
/// drains and exits by itself (no kill), and the next request comes from its replacement.
fn check_recycle_lets_a_running_request_finish(worker: &str) {
    let d = Daemon::start(&worker_config(
        worker,
        "workers = 1\ncapacity = 4\nstart = \"always\"",
    ));
    // Answered once the worker is ready: a recycle asked for before that finds nothing to
    // recycle.
    let old: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let addr = d.addr();
    let slow = std::thread::spawn(move || get(addr, "/sleep?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    let r = d.admin("POST", "/pools/demo/recycle", None);
    assert!(r.status < 300, "{} {}", r.status, r.text());
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "slept 1500 ms");
    d.wait_for_line("drained and exited", Duration::from_secs(10));
    let pid: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert_ne!(pid, old, "still served by the recycled worker");
    let lines = d.log_lines();
    assert!(!lines.iter().any(|l| l.contains("killed")), "{lines:#?}");
}

#[test]
fn a_recycle_lets_a_running_request_finish_before_the_worker_is_stopped() {
    check_recycle_lets_a_running_request_finish(&node_worker());
}

#[test]
fn a_drained_server_that_stops_at_once_on_sigterm_gets_it_only_after_its_requests() {
    // Python's default SIGTERM ends the process at once: keel must not send it while a
    // request is still being answered.
    let script = workspace_root().join("crates/keel/tests/fixtures/abrupt_http_worker.py");
    check_recycle_lets_a_running_request_finish(&format!(
        "protocol = \"http\"\ncommand = [\"python3\", \"{}\"]",
        script.display()
    ));
}

/// A one-connection-at-a-time server that closes every connection after its response (as
/// gunicorn's sync worker does) and logs each connection: `accept`, then `request <line>`
/// or, for a connection closed before any byte came, `unused`.
const CLOSING_SERVER: &str = r#"
import os, socket
log = open(os.environ["CONN_LOG"], "a", buffering=1)
listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    log.write("accept\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if not data:
        log.write("unused\n")
    else:
        log.write("request " + data.split(b"\r\n", 1)[0].decode() + "\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    conn.close()
"#;

#[test]
fn a_worker_that_closes_its_connections_finds_the_next_one_waiting_and_an_unused_one_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("closing.py"), CLOSING_SERVER).unwrap();
    let log = dir.path().join("connections.log");
    let pool = format!(
        "protocol = \"http\"\ncommand = [\"python3\", \"closing.py\"]\ncwd = \"{}\"\nenv = {{ CONN_LOG = \"{}\" }}",
        dir.path().display(),
        log.display()
    );
    let d = Daemon::start(&worker_config(&pool, ""));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let count = |text: &str, what: &str| text.lines().filter(|l| l.starts_with(what)).count();
    let r = get(d.addr(), "/one");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // The next request's connection is already in the server's accept queue: accepted,
    // and no request on it yet.
    let t = Instant::now();
    loop {
        let text = read_log();
        if count(&text, "accept") == count(&text, "request") + 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no connection opened ahead of the next request:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Unused, it is closed after a few seconds rather than holding the server (whose own
    // watchdog would take a long silence for a hung worker).
    let t = Instant::now();
    while count(&read_log(), "unused") == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "the unused connection was never closed:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = get(d.addr(), "/two");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let text = read_log();
    assert!(text.contains("request GET /two HTTP/1.1"), "{text}");
}

/// An HTTP/2 request names its host in `:authority`, not in a `Host` field; an HTTP/1.1
/// server still gets `Host` (RFC 9112 requires it) and the forwarding fields name it.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_clients_authority_reaches_the_worker_as_its_host() {
    let config =
        worker_config(&node_worker(), "").replace("[listener]\n", "[listener]\nh2c = true\n");
    let d = Daemon::start(&config);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let res = h2.get(d.url("/headers")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let h = json(&res.text().await.unwrap());
    let authority = d.addr().to_string();
    assert_eq!(h["host"], authority.as_str(), "{h}");
    assert_eq!(h["x-forwarded-host"], authority.as_str(), "{h}");
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;host=\"{authority}\";proto=http").as_str(),
        "{h}"
    );
}

/// A server that answers some paths with something that is not an HTTP response head, or
/// with one keel refuses; the others with a plain 200 (kept alive).
const BAD_ANSWERS_SERVER: &str = r#"
import socket, threading
BAD = {
    b"/garbage": b"this is not HTTP\r\n\r\n",
    b"/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"/huge-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n",
    b"/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}
def serve(conn):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        target = head.split(b" ")[1]
        if target in BAD:
            conn.sendall(BAD[target])
            conn.close()
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

#[test]
fn a_worker_answering_what_is_not_a_valid_response_gets_502_and_a_reason_and_keel_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.py"), BAD_ANSWERS_SERVER).unwrap();
    let pool = format!(
        "protocol = \"http\"\ncommand = [\"python3\", \"bad.py\"]\ncwd = \"{}\"\ncapacity = 4",
        dir.path().display()
    );
    let d = Daemon::start(&worker_config(&pool, ""));
    for (path, reason) in [
        ("/garbage", "malformed response head"),
        ("/two-lengths", "conflicting Content-Length"),
        ("/huge-head", "response head over"),
    ] {
        let r = get(d.addr(), path);
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        d.wait_for_line(reason, Duration::from_secs(5));
        assert_eq!(get(d.addr(), "/ok").text(), "ok", "after {path}");
    }
    // A body that breaks after its head went on: the client's answer is cut short, and
    // keel serves on.
    let mut sock = std::net::TcpStream::connect(d.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(
        &mut sock,
        b"GET /bad-chunk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut sock, &mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(!got.ends_with("0\r\n\r\n"), "a whole answer: {got}");
    d.wait_for_line("invalid chunk size", Duration::from_secs(5));
    assert_eq!(get(d.addr(), "/ok").text(), "ok");
}

/// A server on Python's `http.server` that writes the head of its answer to keel's readiness
/// check (`OPTIONS *`) and its body a moment later, then says so on its stderr. Had the check
/// closed its connection after the head, that write would fail and `socketserver` would print
/// a traceback (`BrokenPipeError`) on the same stderr.
const SLOW_BODY_SERVER: &str = r#"
import socket, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def address_string(self):
        return "keel"
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        time.sleep(0.2)
        self.wfile.write(body)
        sys.stderr.write(self.command + " answered in full\n")
    def do_GET(self):
        self.answer(b"hello")
    def do_OPTIONS(self):
        self.answer(b"ready")
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.serve_forever()
"#;

#[test]
fn the_readiness_check_reads_the_whole_answer_before_it_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow_body.py"), SLOW_BODY_SERVER).unwrap();
    let pool = format!(
        "protocol = \"http\"\ncommand = [\"python3\", \"slow_body.py\"]\ncwd = \"{}\"",
        dir.path().display()
    );
    let d = Daemon::start(&worker_config(&pool, ""));
    // The first request starts the worker: it is answered once the check has passed.
    let r = get(d.addr(), "/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let worker_said = |what: &str| d.log_lines().iter().any(|l| l.contains(what));
    let broke = ["Traceback", "BrokenPipeError", "ConnectionResetError"];
    wait_until(
        Duration::from_secs(10),
        "the readiness answer's end",
        || worker_said("OPTIONS answered in full") || broke.iter().any(|w| worker_said(w)),
    );
    for what in broke {
        assert!(
            !worker_said(what),
            "{what} in the worker's stderr:\n{}",
            d.log_lines().join("\n")
        );
    }
}
