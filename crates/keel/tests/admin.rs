//! The admin API and the CLI commands built on it, as an operator uses them: a real daemon,
//! its real admin socket, the real `keel` binary.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, for at most `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn worker_pids(status: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = status["pools"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "Ready")
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    pids
}

#[test]
fn status_shows_pools_workers_and_their_figures() {
    let d = Daemon::start(&demo_config("workers = 2\nstart = \"always\""));
    let pids = d.wait_for_workers(2, Duration::from_secs(10));
    for _ in 0..5 {
        assert_eq!(get(d.addr(), "/").status, 200);
    }
    // Figures are published by the pool manager within its half-second tick.
    let status = wait_for(
        "both workers ready with 5 requests",
        Duration::from_secs(5),
        || {
            let s = d.admin_json("GET", "/status");
            let served: u64 = s["pools"][0]["workers"]
                .as_array()?
                .iter()
                .map(|w| w["requests"].as_u64().unwrap_or(0))
                .sum();
            (worker_pids(&s).len() == 2 && served == 5).then_some(s)
        },
    );
    let pool = &status["pools"][0];
    assert_eq!(pool["name"], "demo");
    assert_eq!(pool["state"], "Running");
    assert_eq!(pool["queue_depth"], 0);
    assert_eq!(pool["queue_length"], 1000);
    let got: Vec<u32> = worker_pids(&status).iter().map(|&p| p as u32).collect();
    assert_eq!(got, pids);
    for w in pool["workers"].as_array().unwrap() {
        assert!(w["rss_bytes"].as_u64().unwrap() > 0, "{w}");
        assert_eq!(w["in_flight"], 0);
    }
    assert_eq!(status["pid"], d.pid());
    assert_eq!(status["sites"][0]["name"], "demo");
    assert_eq!(status["sites"][0]["apps"][0]["pool"], "demo");
    let port = d.addr().port();
    assert!(
        status["listeners"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}")),
        "{status}"
    );
    assert!(status["cache"]["misses"].as_u64().unwrap() >= 5);
    // Each site's share.
    let site = &status["cache"]["sites"]["demo"];
    assert_eq!(site["misses"], status["cache"]["misses"], "{status}");
    for figure in [
        "hits",
        "stale_hits",
        "collapsed",
        "stored_bytes",
        "entries",
        "evictions",
    ] {
        assert!(site[figure].is_u64(), "{figure}: {status}");
    }

    // The table a person reads.
    let out = d.cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("POOL"), "{}", out.stdout);
    assert!(out.stdout.contains("demo  Running"), "{}", out.stdout);
    for pid in &pids {
        assert!(out.stdout.contains(&pid.to_string()), "{}", out.stdout);
    }
    assert!(out.stdout.contains("cache: hit ratio"), "{}", out.stdout);

    // The JSON a script reads.
    let out = d.cli(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["pools"][0]["name"], "demo");
}

#[test]
fn commands_without_a_daemon_say_it_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let s = socket.to_str().unwrap();
    for args in [
        vec!["status", "--socket", s],
        vec!["recycle", "demo", "--socket", s],
        vec!["pool", "enable", "demo", "--socket", s],
        vec!["invalidate", "http://x/", "--socket", s],
        vec!["stop", "--socket", s],
        vec!["reload", "--socket", s],
        vec!["upgrade", "--socket", s],
    ] {
        let out = cli(&args, dir.path());
        assert_eq!(out.code, Some(3), "{args:?}: {out:?}");
        assert_eq!(
            out.stderr.trim(),
            format!("keel is not running (no socket at {s})"),
            "{args:?}"
        );
    }
    // Found through --config: the socket its [admin] section names.
    let config = write_file(
        dir.path(),
        "keel.toml",
        &format!(
            "[admin]\nsocket = \"ctl.sock\"\n{}",
            demo_config("").replace("{demo}", demo_worker().to_str().unwrap())
        ),
    );
    let out = cli(
        &["status", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "no socket at {}",
            dir.path().join("ctl.sock").display()
        )),
        "{out:?}"
    );
    // A socket file nobody answers on (keel was killed): also not running.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let out = cli(&["status", "--socket", s], dir.path());
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("nothing answers on"), "{out:?}");
}

#[test]
fn unknown_pool_is_refused_with_the_daemons_message() {
    let d = Daemon::start(&demo_config(""));
    for args in [
        vec!["recycle", "nope"],
        vec!["pool", "enable", "nope"],
        vec!["pool", "disable", "nope"],
    ] {
        let out = d.cli(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert_eq!(
            out.stderr.trim(),
            "keel: no pool named \"nope\" (pools: demo)",
            "{args:?}"
        );
    }
    let r = d.admin("POST", "/pools/nope/recycle", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn recycle_replaces_every_worker() {
    let d = Daemon::start(&demo_config("workers = 2\nstart = \"always\""));
    let before = d.wait_for_workers(2, Duration::from_secs(10));
    let out = d.cli(&["recycle", "demo"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("pool demo: recycle requested"),
        "{out:?}"
    );
    let after = wait_for("two new workers", Duration::from_secs(20), || {
        let pids = worker_pids(&d.admin_json("GET", "/status"));
        (pids.len() == 2 && pids.iter().all(|p| !before.contains(&(*p as u32)))).then_some(pids)
    });
    assert_eq!(after.len(), 2);
    assert_eq!(get(d.addr(), "/").status, 200);
    assert_eq!(d.admin_json("GET", "/status")["pools"][0]["recycles"], 2);
}

#[test]
fn disabled_pool_answers_503_until_enabled() {
    let d = Daemon::start(&demo_config("start = \"always\""));
    d.wait_for_workers(1, Duration::from_secs(10));
    assert_eq!(d.admin("GET", "/healthz", None).status, 200);

    let out = d.cli(&["pool", "disable", "demo"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("pool demo disabled (state Disabled)"),
        "{out:?}"
    );
    let r = get(d.addr(), "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    let health = d.admin("GET", "/healthz", None);
    assert_eq!(health.status, 503);
    let health: Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(health["disabled"], serde_json::json!(["demo"]));
    // Its worker is drained and not replaced while the pool is disabled.
    wait_for("the worker drained", Duration::from_secs(10), || {
        d.worker_pids().is_empty().then_some(())
    });

    let out = d.cli(&["pool", "enable", "demo"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("pool demo enabled"), "{out:?}");
    assert_eq!(d.admin("GET", "/healthz", None).status, 200);
    assert_eq!(get(d.addr(), "/").status, 200);
}

#[test]
fn healthz_turns_503_on_rapid_fail_and_back_after_enable() {
    let dir = tempfile::tempdir().unwrap();
    let switch = write_file(dir.path(), "switch", "fail");
    let d = Daemon::start(&demo_config(&format!(
        "startup_timeout = \"1s\"\nenv = {{ KEEL_DEMO_FAIL_FILE = \"{}\" }}\nrapid_fail = {{ failures = 2, interval = \"1m\", backoff = false }}",
        switch.display()
    )));
    assert_eq!(d.admin("GET", "/healthz", None).status, 200);
    assert_eq!(get(d.addr(), "/").status, 503);
    d.wait_for_line("-> Disabled", Duration::from_secs(10));
    let r = d.admin("GET", "/healthz", None);
    assert_eq!(r.status, 503, "{}", r.text());
    let health: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["disabled"], serde_json::json!(["demo"]));
    assert_eq!(health["pools"]["demo"], "Disabled");

    // The operator fixes the fault and enables the pool.
    std::fs::write(&switch, "ok").unwrap();
    let out = d.cli(&["pool", "enable", "demo"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = d.admin("GET", "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(d.addr(), "/").status, 200);
}

#[test]
fn invalidate_drops_cached_responses() {
    let d = Daemon::start(&format!(
        "[cache]\nadmission = \"always\"\n{}",
        demo_config("")
    ));
    let port = d.addr().port();
    let fetch = |path: &str| get(d.addr(), path).header("x-cache").map(str::to_owned);
    for path in ["/cached?ttl=60&id=a", "/cached?ttl=60&id=b"] {
        assert_eq!(fetch(path).as_deref(), Some("MISS"));
        assert_eq!(fetch(path).as_deref(), Some("HIT"));
    }
    // The harness sends `Host: localhost`; the cache keys by it.
    let out = d.cli(&["invalidate", "http://LOCALHOST/cached?ttl=60&id=a"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("invalidated cache entries for url http://localhost/cached?ttl=60&id=a"),
        "{out:?}"
    );
    assert_eq!(fetch("/cached?ttl=60&id=a").as_deref(), Some("MISS"));
    assert_eq!(fetch("/cached?ttl=60&id=b").as_deref(), Some("HIT"));

    let out = d.cli(&["invalidate", "--prefix", "http://localhost/cached"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(fetch("/cached?ttl=60&id=a").as_deref(), Some("MISS"));
    assert_eq!(fetch("/cached?ttl=60&id=b").as_deref(), Some("MISS"));

    let out = d.cli(&["invalidate", "/cached"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("is not a full URL"), "{out:?}");
    let _ = port;
}

/// A URL copied from a browser's address bar may end in `#fragment`, which no client sends:
/// it is dropped, and the URL's entry goes.
#[test]
fn invalidate_drops_a_urls_fragment() {
    let d = Daemon::start(&format!(
        "[cache]\nadmission = \"always\"\n{}",
        demo_config("")
    ));
    let fetch = |path: &str| get(d.addr(), path).header("x-cache").map(str::to_owned);
    for path in ["/cached?ttl=60&id=a", "/cached?ttl=60&id=b"] {
        assert_eq!(fetch(path).as_deref(), Some("MISS"));
        assert_eq!(fetch(path).as_deref(), Some("HIT"));
    }
    let out = d.cli(&["invalidate", "http://localhost/cached?ttl=60&id=a#reviews"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("invalidated cache entries for url http://localhost/cached?ttl=60&id=a\n"),
        "{out:?}"
    );
    assert_eq!(fetch("/cached?ttl=60&id=a").as_deref(), Some("MISS"));

    let r = d.admin(
        "POST",
        "/cache/invalidate",
        Some(r#"{"prefix": "http://localhost/cached?ttl=60&id=b#x"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(answer["target"], "http://localhost/cached?ttl=60&id=b");
    assert_eq!(fetch("/cached?ttl=60&id=b").as_deref(), Some("MISS"));
}

#[test]
fn stop_waits_until_the_daemon_has_exited() {
    let mut d = Daemon::start(&demo_config("start = \"always\""));
    let workers = d.wait_for_workers(1, Duration::from_secs(10));
    let out = d.cli(&["stop"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("keel (pid {}) is stopping", d.pid())),
        "{out:?}"
    );
    assert!(out.stdout.contains("keel stopped"), "{out:?}");
    // By the time `keel stop` returns, the daemon and its workers are gone.
    assert!(!d.admin_socket().exists());
    let status = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(workers.iter().all(|&p| !process_alive(p)));
    assert!(
        d.log_lines().iter().any(|l| l.contains("stop requested")),
        "{:#?}",
        d.log_lines()
    );
}

#[test]
fn the_socket_is_private_replaces_a_stale_one_and_is_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // A socket left by a keel that was killed.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = write_file(
        dir.path(),
        "keel.toml",
        &format!(
            "[admin]\nsocket = \"admin.sock\"\n[log]\nerror_log = \"error.log\"\n{}",
            demo_config("").replace("{demo}", demo_worker().to_str().unwrap())
        ),
    );
    let path = config.to_str().unwrap().to_owned();
    let mut d = Daemon::start_with(dir, &["serve", "--config", &path]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(d.admin("GET", "/healthz", None).status, 200);

    // A second keel with the same socket refuses to start, and leaves the first one's be.
    let second = cli(&["serve", "--config", &path], d.dir.path());
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(
        second.stderr.contains("another keel is running"),
        "{}",
        second.stderr
    );
    // It stopped before building anything: no pool came up, no attach socket was touched.
    assert!(!second.stderr.contains("pool demo"), "{}", second.stderr);
    assert_eq!(d.admin("GET", "/healthz", None).status, 200);

    assert!(d.stop(Duration::from_secs(30)).success());
    assert!(!socket.exists());
}

#[test]
fn api_errors_are_json_with_a_message() {
    let d = Daemon::start(&demo_config(""));
    let r = d.admin("GET", "/nope", None);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route GET /nope"), "{}", r.text());
    let r = d.admin("GET", "/stop", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = d.admin("POST", "/cache/invalidate", Some("{\"url\": "));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("the body is not valid"), "{}", r.text());
    let r = d.admin(
        "POST",
        "/cache/invalidate",
        Some("{\"url\": \"http://a/\", \"prefix\": \"http://a/\"}"),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("exactly one"), "{}", r.text());
    let r = d.admin("POST", "/cache/invalidate", Some("{\"path\": \"/\"}"));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("unknown field"), "{}", r.text());
    let big = format!("{{\"url\": \"http://a/{}\"}}", "x".repeat(100 * 1024));
    let r = d.admin("POST", "/cache/invalidate", Some(&big));
    assert_eq!(r.status, 413);
    // The daemon is unharmed.
    assert_eq!(d.admin("GET", "/healthz", None).status, 200);
    assert_eq!(get(d.addr(), "/").status, 200);
}

#[test]
fn tcp_listener_serves_metrics_and_healthz_and_the_rest_only_with_the_token() {
    let d = Daemon::start(&format!(
        "[admin]\nsocket = \"admin.sock\"\nlisten = \"127.0.0.1:0\"\n{}",
        demo_config("")
    ));
    let addr = admin_tcp_addr(&d);
    assert_eq!(tcp_get(addr, "/metrics", None).status, 200);
    assert_eq!(tcp_get(addr, "/healthz", None).status, 200);
    // HEAD, as some load balancers check: the status and headers, no body.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut s, b"HEAD /healthz HTTP/1.1\r\nHost: keel\r\n\r\n").unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.ends_with("\r\n\r\n"),
        "no body after the headers: {raw:?}"
    );
    let r = tcp_get(addr, "/status", None);
    assert_eq!(r.status, 403);
    assert!(r.text().contains("set [admin] token"), "{}", r.text());

    let d = Daemon::start(&format!(
        "[admin]\nsocket = \"admin.sock\"\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n{}",
        demo_config("")
    ));
    let addr = admin_tcp_addr(&d);
    assert_eq!(tcp_get(addr, "/metrics", None).status, 200);
    let r = tcp_get(addr, "/status", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"keel\""));
    assert_eq!(tcp_get(addr, "/status", Some("Bearer wrong")).status, 401);
    let r = tcp_get(addr, "/status", Some("Bearer s3cret"));
    assert_eq!(r.status, 200);
    let status: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(status["pools"][0]["name"], "demo");
}

#[test]
fn reload_applies_a_valid_config_and_refuses_an_invalid_one_with_its_lines() {
    let d = Daemon::start(&demo_config(""));
    let path = d.dir.path().join("keel.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    // Unchanged: applied, nothing started or removed.
    let out = d.cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("config reloaded: "), "{out:?}");
    // A second pool: it appears in the status.
    std::fs::write(
        &path,
        format!(
            "{good}\n[pool.extra]\ncommand = [\"{}\"]\n",
            demo_worker().display()
        ),
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("pools started: extra"), "{out:?}");
    let status: Value = serde_json::from_str(&d.cli(&["status", "--json"]).stdout).unwrap();
    let names: Vec<&str> = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo", "extra"]);
    // Invalid: refused with keel check's file:line lines; the running config stays.
    std::fs::write(
        &path,
        good.replace("[pool.demo]", "[pool.demo]\nworkers = 0"),
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("the running one stays"), "{out:?}");
    assert!(out.stderr.contains("keel.toml:"), "{out:?}");
    assert!(out.stderr.contains("pool.demo.workers"), "{out:?}");
    assert_eq!(get(d.addr(), "/").status, 200);
    let status: Value = serde_json::from_str(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["pools"].as_array().unwrap().len(), 2);
}

#[test]
fn upgrade_hands_over_to_a_new_process_and_reports_it() {
    let d = Daemon::start(&demo_config("start = \"always\""));
    let old = d.pid();
    let out = d.cli(&["upgrade"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let new: u32 = out
        .stdout
        .split("keel ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {out:?}"));
    // However the test ends, the new daemon (not a child of the test) goes.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let workers = children_of(self.0);
            kill(self.0);
            for w in workers {
                kill(w);
            }
        }
    }
    let _new = Kill(new);
    assert_ne!(new, old);
    // The same socket now answers from the new process, and requests are served.
    let status: Value = wait_for(
        "the new daemon on the socket",
        Duration::from_secs(20),
        || {
            let out = d.cli(&["status", "--json"]);
            let v: Value = serde_json::from_str(&out.stdout).ok()?;
            (v["pid"].as_u64() == Some(u64::from(new))).then_some(v)
        },
    );
    assert_eq!(status["pools"][0]["name"], "demo");
    assert_eq!(get(d.addr(), "/").status, 200);
}
