//! Live reload (SIGHUP): a valid config is applied without dropping a connection or a
//! queued request; an invalid one is refused with file:line messages and the running
//! config stays.

mod common;
use common::*;
use rustix::process::Signal;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn count(d: &Daemon, needle: &str) -> usize {
    d.log_lines().iter().filter(|l| l.contains(needle)).count()
}

/// Sends SIGHUP and waits for the daemon to log the outcome (`needle`) once more.
fn reload(d: &Daemon, needle: &str) {
    let before = count(d, needle);
    d.signal(Signal::HUP);
    let t = Instant::now();
    while count(d, needle) == before {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no {needle:?} after SIGHUP: {:#?}",
            d.log_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pool_of(port: u16, path: &str) -> Option<String> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    // The demo worker answers every path (404 for those it does not know), naming its pool.
    let r = get(addr, path);
    assert!(
        r.status == 200 || r.status == 404,
        "{} {}",
        r.status,
        r.text()
    );
    r.header("x-keel-pool").map(str::to_owned)
}

/// Two configs the reloads alternate between.
fn config(version: u32, p1: u16, p2: u16, p3: u16) -> String {
    let common = r#"
[listener]
shutdown_timeout = "10s"

[log]
error_log = "error.log"

[daemon]
runtime_dir = "run"
"#;
    let body = if version == 0 {
        format!(
            r#"
[[site]]
name = "main"
bindings = ["http://127.0.0.1:{p1}", "http://127.0.0.1:{p3}"]
app = [{{ path = "/", pool = "a" }}]

[pool.a]
command = ["{{demo}}"]
start = "always"
workers = 1

[pool.b]
command = ["{{demo}}"]
"#
        )
    } else {
        format!(
            r#"
[[site]]
name = "main"
bindings = ["http://127.0.0.1:{p1}"]
app = [{{ path = "/", pool = "a" }}, {{ path = "/b", pool = "b" }}]

[[site]]
name = "extra"
bindings = ["http://127.0.0.1:{p2}"]
app = [{{ path = "/", pool = "b" }}]

[pool.a]
command = ["{{demo}}"]
start = "always"
workers = 2

[pool.b]
command = ["{{demo}}"]
"#
        )
    };
    format!("{common}{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_drop_nothing_and_each_change_shows() {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let d = Daemon::start(&config(0, p1, p2, p3));
    let path = d.dir.path().join("keel.toml");
    let demo = demo_worker();
    let write = move |v: u32| {
        let text = config(v, p1, p2, p3).replace("{demo}", demo.to_str().unwrap());
        std::fs::write(&path, text).unwrap();
    };
    d.wait_for_workers(1, Duration::from_secs(10));

    // 32 keep-alive clients on the binding every version keeps.
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients = keep_alive_clients(&format!("http://127.0.0.1:{p1}/pid"), 32, &done, &served);

    let checks = tokio::task::spawn_blocking(move || {
        for round in 1..=10u32 {
            let v = round % 2;
            write(v);
            reload(&d, "reload applied");
            if v == 1 {
                // A site added, a binding removed, a route added, pool a now two workers.
                assert_eq!(pool_of(p2, "/pid").as_deref(), Some("b"));
                assert_eq!(pool_of(p1, "/b/pid").as_deref(), Some("b"));
                assert_eq!(pool_of(p1, "/pid").as_deref(), Some("a"));
                assert_eq!(pool_of(p3, "/pid"), None, "port {p3} still accepts");
            } else {
                assert_eq!(pool_of(p3, "/pid").as_deref(), Some("a"));
                assert_eq!(pool_of(p1, "/b/pid").as_deref(), Some("a"));
                assert_eq!(pool_of(p2, "/pid"), None, "port {p2} still accepts");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        d
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let d = checks;
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(served.load(Ordering::Relaxed) > 100);
    // Pool a was replaced by a two-worker pool five times (and back five times).
    assert_eq!(count(&d, "pool a: Idle (start = always, workers = 2)"), 5);
    // Each old pool retires once its queue is empty (the last one a moment after).
    let t = Instant::now();
    while count(&d, "pool a: retired by a reload") < 10 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&d, "pool a: retired by a reload"), 10);
    let abandoned: Vec<_> = d
        .error_lines()
        .into_iter()
        .filter(|l| l.contains("Abandoned") || l.contains(" 503 "))
        .collect();
    assert!(abandoned.is_empty(), "{abandoned:?}");
}

#[test]
fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let p1 = free_port();
    let (p2, p3) = (free_port(), free_port());
    let d = Daemon::start(&config(0, p1, p2, p3));
    let path = d.dir.path().join("keel.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("workers = 1", "workers = 0\nqueue_lenght = 5"),
    )
    .unwrap();
    reload(&d, "reload refused");
    let lines = d.log_lines().join("\n");
    assert!(lines.contains("keel.toml:"), "{lines}");
    assert!(lines.contains("pool.a.workers"), "{lines}");
    assert!(lines.contains("queue_lenght: unknown key"), "{lines}");
    assert_eq!(pool_of(p1, "/pid").as_deref(), Some("a"));
    assert_eq!(pool_of(p3, "/pid").as_deref(), Some("a"));

    // A port that cannot be bound refuses the reload whole: nothing else changes either.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    std::fs::write(
        &path,
        good.replace(
            &format!("http://127.0.0.1:{p3}\""),
            &format!("http://127.0.0.1:{busy}\""),
        ),
    )
    .unwrap();
    reload(&d, "reload refused");
    assert_eq!(
        pool_of(p3, "/pid").as_deref(),
        Some("a"),
        "the old binding stays"
    );
    assert!(
        d.log_lines().iter().any(|l| l.contains(&format!("{busy}"))),
        "{:#?}",
        d.log_lines()
    );
}
