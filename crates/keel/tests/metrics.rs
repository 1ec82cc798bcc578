//! `GET /metrics`: after a known sequence of requests, cache hits, a worker killed from
//! outside and a recycle, every counter holds exactly what happened, and the text parses as
//! Prometheus exposition format.

mod common;
use common::*;
use prometheus_parse::{Sample, Scrape, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The bytes a request sent and received, to check the byte counters exactly.
#[derive(Default)]
struct Traffic {
    sent: u64,
    received: u64,
}

impl Traffic {
    /// One GET on its own connection, read to the end.
    fn get(&mut self, addr: SocketAddr, host: &str, path: &str) -> RawResponse {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        self.sent += request.len() as u64;
        self.received += raw.len() as u64;
        read_response(&mut &raw[..]).expect("a response")
    }
}

fn scrape(d: &Daemon) -> Scrape {
    let r = d.admin("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of the sample `name{labels}` (a histogram's count for a histogram); 0 when the
/// series does not exist (a counter never incremented).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matches = |s: &&Sample| {
        (s.metric == name || s.metric == format!("{name}_total"))
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    };
    match scrape.samples.iter().find(matches).map(|s| &s.value) {
        None => 0.0,
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(Value::Histogram(buckets)) => buckets.last().map_or(0.0, |b| b.count),
        Some(Value::Summary(_)) => panic!("{name} is not a summary"),
    }
}

#[test]
fn counters_hold_exactly_what_happened() {
    let d = Daemon::start(
        r#"
[cache]
admission = "always"

[[site]]
name = "demo"
bindings = ["http://localhost:0"]
app = [{ path = "/", pool = "demo" }]

[pool.demo]
command = ["{demo}"]
start = "always"
"#,
    );
    let first = d.wait_for_workers(1, Duration::from_secs(10))[0];
    let mut t = Traffic::default();
    let a = d.addr();

    // One cacheable URL three times: a miss that reaches the worker, then two hits.
    let marks: Vec<String> = (0..3)
        .map(|_| {
            let r = t.get(a, "localhost", "/cached?ttl=60&id=m");
            assert_eq!(r.status, 200);
            r.header("x-cache").unwrap().to_owned()
        })
        .collect();
    assert_eq!(marks, ["MISS", "HIT", "HIT"]);
    // Two uncacheable requests, answered by the worker.
    for _ in 0..2 {
        assert_eq!(t.get(a, "localhost", "/pid").status, 200);
    }
    // The worker is killed from outside; its replacement answers.
    kill(first);
    let second = wait_for_new_worker(&d, first);
    let r = t.get(a, "localhost", "/pid");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), second.to_string());
    // A host no binding names: 400, error-log reason Hostname.
    assert_eq!(t.get(a, "nowhere.test", "/").status, 400);

    let m = scrape(&d);
    let demo = [("site", "demo"), ("pool", "demo")];
    assert_eq!(
        value(&m, "keel_requests", &[demo[0], demo[1], ("code", "2xx")]),
        6.0
    );
    assert_eq!(
        value(
            &m,
            "keel_requests",
            &[("site", "-"), ("pool", "-"), ("code", "4xx")]
        ),
        1.0
    );
    assert_eq!(value(&m, "keel_request_duration_seconds", &demo), 6.0);
    // Requests that reached a worker: the miss and three /pid.
    assert_eq!(
        value(&m, "keel_queue_wait_seconds", &[("pool", "demo")]),
        4.0
    );
    assert_eq!(value(&m, "keel_cache_hits", &[("site", "demo")]), 2.0);
    assert_eq!(value(&m, "keel_cache_misses", &[("site", "demo")]), 4.0);
    assert_eq!(value(&m, "keel_cache_stale_hits", &[("site", "demo")]), 0.0);
    assert!(value(&m, "keel_cache_bytes", &[]) > 0.0);
    assert_eq!(value(&m, "keel_cache_entries", &[]), 1.0);
    assert_eq!(value(&m, "keel_cache_collapsed", &[("site", "demo")]), 0.0);
    assert_eq!(
        value(&m, "keel_cache_site_entries", &[("site", "demo")]),
        1.0
    );
    assert_eq!(
        value(&m, "keel_cache_site_bytes", &[("site", "demo")]),
        value(&m, "keel_cache_bytes", &[])
    );
    assert_eq!(value(&m, "keel_worker_starts", &[("pool", "demo")]), 2.0);
    assert_eq!(
        value(
            &m,
            "keel_worker_exits",
            &[("pool", "demo"), ("cause", "killed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "keel_rejections",
            &[("reason", "Hostname"), ("pool", "-")]
        ),
        1.0
    );
    assert_eq!(value(&m, "keel_queue_depth", &[("pool", "demo")]), 0.0);
    assert_eq!(value(&m, "keel_queue_length", &[("pool", "demo")]), 1000.0);
    assert_eq!(
        value(
            &m,
            "keel_pool_state",
            &[("pool", "demo"), ("state", "running")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "keel_pool_state",
            &[("pool", "demo"), ("state", "disabled")]
        ),
        0.0
    );
    assert_eq!(value(&m, "keel_workers", &[("pool", "demo")]), 1.0);
    // Every client byte, both ways, once the connections are closed on the daemon's side.
    let m = wait_for_scrape(&d, |m| value(m, "keel_connections_open", &[]) == 0.0);
    assert_eq!(value(&m, "keel_received_bytes", &[]), t.sent as f64);
    assert_eq!(value(&m, "keel_sent_bytes", &[]), t.received as f64);

    // An operator's recycle: one more start, a drained exit, a recycle by trigger.
    assert_eq!(d.cli(&["recycle", "demo"]).code, Some(0));
    let m = wait_for_scrape(&d, |m| {
        value(
            m,
            "keel_worker_exits",
            &[("pool", "demo"), ("cause", "drained")],
        ) == 1.0
    });
    assert_eq!(
        value(
            &m,
            "keel_recycles",
            &[("pool", "demo"), ("trigger", "on_demand")]
        ),
        1.0
    );
    assert_eq!(value(&m, "keel_worker_starts", &[("pool", "demo")]), 3.0);
    assert_eq!(
        value(
            &m,
            "keel_worker_exits",
            &[("pool", "demo"), ("cause", "killed")]
        ),
        1.0
    );
}

#[test]
fn a_disabled_pool_and_its_refusals_show() {
    let d = Daemon::start(&demo_config(""));
    assert_eq!(d.cli(&["pool", "disable", "demo"]).code, Some(0));
    for _ in 0..3 {
        assert_eq!(get(d.addr(), "/").status, 503);
    }
    let m = scrape(&d);
    assert_eq!(
        value(
            &m,
            "keel_pool_state",
            &[("pool", "demo"), ("state", "disabled")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "keel_rejections",
            &[("reason", "AppOffline"), ("pool", "demo")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "keel_requests",
            &[("site", "demo"), ("pool", "demo"), ("code", "5xx")]
        ),
        3.0
    );
    // Nothing reached a worker.
    assert_eq!(
        value(&m, "keel_queue_wait_seconds", &[("pool", "demo")]),
        0.0
    );
    assert_eq!(value(&m, "keel_worker_starts", &[("pool", "demo")]), 0.0);
}

fn wait_for_new_worker(d: &Daemon, old: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(&pid) = d.worker_pids().iter().find(|&&p| p != old) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no replacement worker");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_scrape(d: &Daemon, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(d);
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never reached the state");
        std::thread::sleep(Duration::from_millis(20));
    }
}
