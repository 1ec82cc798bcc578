//! The pool manager from the outside: on-demand start, web garden growth, idle shutdown,
//! health pings, rapid-fail with back-off, recycling under load, identities, cgroup limits,
//! shared isolation, TCP-level unavailability and attached workers.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn count_lines(d: &Daemon, needle: &str) -> usize {
    d.log_lines().iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn on_demand_pool_starts_its_first_worker_on_the_first_request() {
    let d = Daemon::start(&demo_config(""));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.worker_pids().is_empty(),
        "no worker before the first request"
    );
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(d.worker_pids().len(), 1);
}

#[test]
fn always_pool_starts_its_workers_with_the_daemon() {
    let d = Daemon::start(&demo_config("start = \"always\"\nworkers = 2"));
    d.wait_for_workers(2, Duration::from_secs(10));
}

#[test]
fn web_garden_grows_to_its_size_while_requests_wait() {
    let d = Daemon::start(&demo_config("workers = 3\ncapacity = 5"));
    let addr = d.addr();
    let clients: Vec<_> = (0..30)
        .map(|_| std::thread::spawn(move || get(addr, "/sleep?ms=1500")))
        .collect();
    wait_until(Duration::from_secs(10), "three workers", || {
        d.worker_pids().len() == 3
    });
    for c in clients {
        assert_eq!(c.join().unwrap().status, 200);
    }
    assert_eq!(d.worker_pids().len(), 3, "never more than workers = 3");
}

#[test]
fn idle_worker_is_stopped_and_the_pool_restarts_on_demand() {
    let d = Daemon::start(&demo_config("idle_timeout = \"1s\""));
    let first: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    wait_until(Duration::from_secs(10), "idle shutdown", || {
        d.worker_pids().is_empty()
    });
    assert!(count_lines(&d, "idle for") >= 1, "{:#?}", d.log_lines());
    d.wait_for_line("-> Idle", Duration::from_secs(5));
    let second: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert_ne!(first, second, "a new worker started on demand");
}

#[test]
fn hung_worker_is_killed_and_the_request_behind_it_is_served() {
    let d = Daemon::start(&demo_config(
        "capacity = 1\nping_interval = \"200ms\"\nping_timeout = \"600ms\"",
    ));
    let hung: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let addr = d.addr();
    let hang = std::thread::spawn(move || get(addr, "/hang"));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let behind = get(d.addr(), "/pid");
    assert_eq!(behind.status, 200);
    let served_by: u32 = behind.text().parse().unwrap();
    assert_ne!(served_by, hung, "answered by a replacement");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(!process_alive(hung), "the hung worker was killed");
    assert!(count_lines(&d, "no PONG") >= 1, "{:#?}", d.log_lines());
    // /hang itself hangs every worker it reaches: retried once, then 502.
    assert_eq!(hang.join().unwrap().status, 502);
}

/// A pool whose workers fail at start (switch file says "fail") next to a healthy pool.
fn failing_config(switch: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[[site]]
name = "broken"
bindings = ["http://127.0.0.1:0"]
app = [{{ path = "/", pool = "broken" }}]

[[site]]
name = "healthy"
bindings = ["http://healthy.test:0"]
app = [{{ path = "/", pool = "healthy" }}]

[pool.broken]
command = ["{{demo}}"]
startup_timeout = "1s"
env = {{ KEEL_DEMO_FAIL_FILE = "{}" }}
{extra}

[pool.healthy]
command = ["{{demo}}"]
"#,
        switch.display()
    )
}

#[test]
fn crash_looping_pool_goes_offline_while_others_serve_then_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let switch = write_file(dir.path(), "switch", "fail");
    let d = Daemon::start(&failing_config(&switch, ""));
    // The first request starts the pool; five failed starts disable it.
    let t = Instant::now();
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(t.elapsed() < Duration::from_secs(15));
    d.wait_for_line("-> Disabled", Duration::from_secs(5));
    assert!(
        d.error_lines().iter().any(|l| l.contains("AppOffline")),
        "{:?}",
        d.error_lines()
    );
    // New requests are refused at once, other pools are unaffected.
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 503);
    let r = get_host(d.addr(), "healthy.test", "/pid");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-keel-pool"), Some("healthy"));
    // The fault is fixed; the back-off (30 s) re-enables the pool, and it serves again.
    std::fs::write(&switch, "ok").unwrap();
    d.wait_for_line("back-off elapsed", Duration::from_secs(45));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn worker_that_never_says_hello_is_a_startup_failure() {
    let dir = tempfile::tempdir().unwrap();
    let switch = write_file(dir.path(), "switch", "hang");
    let d = Daemon::start(&failing_config(
        &switch,
        "rapid_fail = { failures = 2, interval = \"1m\", backoff = false }",
    ));
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 503);
    // The log lines reach the test through a reader thread: wait for the last one.
    d.wait_for_line("waiting for an operator", Duration::from_secs(10));
    assert!(
        count_lines(&d, "no hello within startup_timeout") >= 2,
        "{:#?}",
        d.log_lines()
    );
    assert!(count_lines(&d, "-> Disabled") == 1);
    assert!(count_lines(&d, "waiting for an operator") == 1);
}

#[test]
fn disabled_pool_with_unavailable_reset_closes_connections() {
    let dir = tempfile::tempdir().unwrap();
    let switch = write_file(dir.path(), "switch", "fail");
    let d = Daemon::start(&failing_config(
        &switch,
        "unavailable = \"reset\"\nrapid_fail = { failures = 2, interval = \"1m\", backoff = false }",
    ));
    // Whatever the first request saw, once disabled every request's connection is closed.
    let _ = std::panic::catch_unwind(|| get(d.addr(), "/"));
    d.wait_for_line("-> Disabled", Duration::from_secs(10));
    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "no response, just a closed connection: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(get_host(d.addr(), "healthy.test", "/").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_every_500_requests_under_load_loses_nothing() {
    let d = Daemon::start(&demo_config("recycle = { requests = 500 }"));
    let failures = hammer(&d.url("/pid"), 10_000, 32).await;
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let recycles = count_lines(&d, "trigger Requests");
    assert!(recycles >= 10, "only {recycles} recycles logged");
    assert!(d.error_lines().is_empty(), "{:?}", d.error_lines());
}

#[test]
fn worker_past_its_memory_limit_is_recycled() {
    let d = Daemon::start(&demo_config("recycle = { memory = \"64 MiB\" }"));
    let before: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert_eq!(get(d.addr(), "/alloc?mb=100").status, 200);
    d.wait_for_line("trigger Memory", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "the old worker to exit", || {
        !process_alive(before)
    });
    let after: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    assert_ne!(before, after);
}

#[test]
fn workers_run_as_the_pool_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: skipping");
        return;
    }
    let d = Daemon::start(&demo_config("user = \"nobody\""));
    let r = get(d.addr(), "/whoami");
    assert_eq!(r.status, 200);
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(2).map(String::from))
        .unwrap();
    assert!(r.text().contains(&format!("uid={nobody}")), "{}", r.text());
}

#[test]
fn worker_past_memory_max_is_killed_and_replaced() {
    let d = Daemon::start(&demo_config("memory_max = \"48 MiB\""));
    let before: u32 = get(d.addr(), "/pid").text().parse().unwrap();
    let r = get(d.addr(), "/alloc?mb=200");
    assert_eq!(r.status, 502, "the allocating request dies with its worker");
    assert!(!process_alive(before));
    // The client's 502 goes out before the manager logs the cause.
    d.wait_for_line("OOM killer", Duration::from_secs(5));
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    assert_ne!(r.text().parse::<u32>().unwrap(), before);
}

#[test]
fn shared_isolation_serves_every_site_from_one_queue() {
    let cfg = r#"
isolation = "shared"

[[site]]
name = "a"
bindings = ["http://a.test:0"]
app = [{ path = "/" }]

[[site]]
name = "b"
bindings = ["http://b.test:0"]
app = [{ path = "/" }]

[pool.everything]
command = ["{demo}"]
"#;
    let d = Daemon::start(cfg);
    let a = get_host(d.addr(), "a.test", "/pid");
    let b = get_host(d.addr(), "b.test", "/pid");
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 200);
    assert_eq!(a.text(), b.text(), "one worker serves both sites");
    assert_eq!(a.header("x-keel-pool"), Some("everything"));
}

#[test]
fn attached_worker_with_the_token_joins_and_others_are_refused() {
    let d = Daemon::start(&demo_config(
        "attach = true\n\n[daemon]\nruntime_dir = \"{dir}/run\"",
    ));
    let socket = d.dir.path().join("run/attach/demo/worker.sock");
    let token_file = d.dir.path().join("run/attach/demo/token");
    wait_until(Duration::from_secs(5), "the attach socket", || {
        socket.exists()
    });

    // Without the token: refused.
    let mut bad = std::process::Command::new(demo_worker())
        .env_remove("KEEL_FD")
        .env("KEEL_ATTACH", &socket)
        .env(
            "KEEL_ATTACH_TOKEN",
            write_file(d.dir.path(), "wrong", &"0".repeat(64)),
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = bad.wait().unwrap();
    assert!(
        !status.success(),
        "a worker with a wrong token is turned away"
    );
    d.wait_for_line("refus", Duration::from_secs(5));

    // With the token: joins, and serves the pool's requests.
    let mut good = std::process::Command::new(demo_worker())
        .env_remove("KEEL_FD")
        .env("KEEL_ATTACH", &socket)
        .env("KEEL_ATTACH_TOKEN", &token_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    d.wait_for_line(
        &format!("worker {} of pool demo: Spawned -> Ready", good.id()),
        Duration::from_secs(5),
    );
    let r = get(d.addr(), "/pid");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().parse::<u32>().unwrap(), good.id());
    let _ = good.kill();
    let _ = good.wait();
}
