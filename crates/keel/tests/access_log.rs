//! The access log: one line per request, cached or not, in each format; logrotate with
//! SIGUSR1 keeps every line.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn start(format: &str) -> Daemon {
    Daemon::start(&format!(
        "{}\n[cache]\nadmission = \"always\"\n\n[log]\nerror_log = \"error.log\"\naccess_log = \"access.log\"\naccess_format = \"{format}\"\n",
        demo_config("")
    ))
}

fn access_lines(d: &Daemon, name: &str) -> Vec<String> {
    std::fs::read_to_string(d.dir.path().join(name))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn wait_for_lines(d: &Daemon, name: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(d, name);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "only {} lines: {lines:?}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn w3c_lines_mark_cache_hits() {
    let d = start("w3c");
    assert_eq!(get(d.addr(), "/cached?ttl=60&id=w3c").status, 200);
    assert_eq!(get(d.addr(), "/cached?ttl=60&id=w3c").status, 200);
    let lines = wait_for_lines(&d, "access.log", 2);
    let header = std::fs::read_to_string(d.dir.path().join("access.log")).unwrap();
    assert!(header.contains("#Fields:"), "{header}");
    assert!(
        lines[0].contains("/cached") && lines[0].contains(" 200 "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("MISS"), "{}", lines[0]);
    assert!(lines[1].contains("HIT"), "{}", lines[1]);
}

/// The last two W3C fields, `x-cache x-pool`, of `line`.
fn cache_and_pool(line: &str) -> String {
    let fields: Vec<&str> = line.split(' ').collect();
    fields[fields.len() - 2..].join(" ")
}

/// A static root's small files go through the response cache: their lines say MISS and HIT
/// as the answers' `x-cache` does, and name no pool. A worker URL's lines name its pool, also
/// for a hit, which no worker took part in.
#[test]
fn static_and_worker_answers_are_logged_with_their_cache_status() {
    // The root must exist when the config is loaded.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    std::fs::write(dir.path().join("public/a.txt"), "hello\n").unwrap();
    let text = format!(
        "{}\n[cache]\nadmission = \"always\"\n\n[log]\nerror_log = \"error.log\"\naccess_log = \"access.log\"\n",
        demo_config("")
    )
    .replace(
        r#"app = [{ path = "/", pool = "demo" }]"#,
        r#"app = [{ path = "/", pool = "demo" }, { path = "/static", root = "public" }]"#,
    )
    .replace("{demo}", demo_worker().to_str().unwrap());
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, text).unwrap();
    let d = Daemon::start_with(dir, &["serve", "--config", path.to_str().unwrap()]);
    let mut sent = Vec::new();
    for url in [
        "/static/a.txt",
        "/static/a.txt",
        "/cached?ttl=60&id=w3c",
        "/cached?ttl=60&id=w3c",
    ] {
        let r = get(d.addr(), url);
        assert_eq!(r.status, 200, "{url}");
        sent.push(r.header("x-cache").unwrap_or("-").to_owned());
    }
    assert_eq!(sent, ["MISS", "HIT", "MISS", "HIT"]);
    let lines = wait_for_lines(&d, "access.log", 4);
    let logged: Vec<String> = lines.iter().map(|l| cache_and_pool(l)).collect();
    assert_eq!(
        logged,
        ["MISS -", "HIT -", "MISS demo", "HIT demo"],
        "{lines:#?}"
    );
}

#[test]
fn combined_and_json_lines() {
    let d = start("combined");
    raw_request(
        d.addr(),
        b"GET /pid HTTP/1.1\r\nHost: x\r\nUser-Agent: test \"agent\"\r\nConnection: close\r\n\r\n",
    );
    let line = &wait_for_lines(&d, "access.log", 1)[0];
    assert!(line.contains("\"GET /pid HTTP/1.1\" 200 "), "{line}");
    assert!(line.contains("test \\x22agent\\x22"), "{line}");

    let d = start("json");
    get(d.addr(), "/pid");
    let line = &wait_for_lines(&d, "access.log", 1)[0];
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"status\":200"), "{line}");
    assert!(line.contains("\"pool\":\"demo\""), "{line}");
}

#[test]
fn logrotate_rename_and_sigusr1_keep_every_line() {
    let d = start("w3c");
    for _ in 0..50 {
        assert_eq!(get(d.addr(), "/pid").status, 200);
    }
    wait_for_lines(&d, "access.log", 50);
    std::fs::rename(
        d.dir.path().join("access.log"),
        d.dir.path().join("access.log.1"),
    )
    .unwrap();
    // Lines written between the rename and the signal still land in the renamed file.
    for _ in 0..10 {
        get(d.addr(), "/pid");
    }
    d.signal(rustix::process::Signal::USR1);
    d.wait_for_line("reopening the access log", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..40 {
        get(d.addr(), "/pid");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total = access_lines(&d, "access.log.1").len() + access_lines(&d, "access.log").len();
        if total == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{total} lines of 100");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !access_lines(&d, "access.log").is_empty(),
        "the new file is used after SIGUSR1"
    );
}

/// A hit's line says what the miss's line before it said about the request (method, target,
/// host, agent, referer, site, pool, status, bytes), whichever way the daemon answered it.
#[test]
fn a_hit_is_logged_like_its_miss() {
    let d = start("json");
    let req = b"GET /cached?ttl=60&id=json HTTP/1.1\r\nHost: Example.test\r\nUser-Agent: probe/1\r\nReferer: http://r.example/a\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(d.addr(), req).header("x-cache"), Some("MISS"));
    assert_eq!(raw_request(d.addr(), req).header("x-cache"), Some("HIT"));
    let lines = wait_for_lines(&d, "access.log", 2);
    let parse = |l: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
    };
    let (mut miss, mut hit) = (parse(&lines[0]), parse(&lines[1]));
    assert_eq!(miss.remove("cache"), Some("miss".into()), "{miss:?}");
    assert_eq!(hit.remove("cache"), Some("hit".into()), "{hit:?}");
    for volatile in ["time", "duration_ms", "client"] {
        miss.remove(volatile);
        hit.remove(volatile);
    }
    assert_eq!(miss, hit);
    assert_eq!(hit.get("user_agent"), Some(&"probe/1".into()), "{hit:?}");
}
