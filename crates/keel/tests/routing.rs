//! HTTP.sys routing from the outside: host buckets in the order strong, explicit, IP, weak;
//! longest whole-segment prefix; 400 when nothing matches.

mod common;
use common::*;

/// Each pool is the demo worker; the `x-keel-pool` header says which pool answered.
fn config() -> String {
    let pool = |name: &str| format!("[pool.{name}]\ncommand = [\"{{demo}}\"]\n");
    format!(
        r#"
[[site]]
name = "strong"
bindings = ["http://+:0"]
app = [{{ path = "/shared", pool = "strong" }}]

[[site]]
name = "named"
bindings = ["http://Example.COM:0"]
app = [{{ path = "/", pool = "named" }}, {{ path = "/api", pool = "api" }}, {{ path = "/api/v2/", pool = "v2" }}]

[[site]]
name = "ip"
bindings = ["http://127.0.0.1:0"]
app = [{{ path = "/", pool = "ip" }}]

[[site]]
name = "weak"
bindings = ["http://*:0"]
app = [{{ path = "/", pool = "weak" }}]

{}{}{}{}{}{}"#,
        pool("strong"),
        pool("named"),
        pool("api"),
        pool("v2"),
        pool("ip"),
        pool("weak")
    )
}

fn pool_for(d: &Daemon, host: &str, path: &str) -> (u16, String) {
    let r = get_host(d.addr(), host, path);
    (r.status, r.header("x-keel-pool").unwrap_or("-").to_string())
}

#[test]
fn routing_follows_http_sys_precedence() {
    let d = Daemon::start(&config());
    assert_eq!(d.addrs.len(), 1, "all bindings share one port");
    // Strong wildcard beats an explicit host for its prefix.
    assert_eq!(pool_for(&d, "example.com", "/shared/x").1, "strong");
    // Explicit host, longest prefix on whole segments, case-insensitive.
    assert_eq!(pool_for(&d, "example.com", "/").1, "named");
    assert_eq!(pool_for(&d, "EXAMPLE.com:8080", "/API/users").1, "api");
    assert_eq!(pool_for(&d, "example.com", "/api").1, "api");
    assert_eq!(pool_for(&d, "example.com", "/apiary").1, "named");
    assert_eq!(pool_for(&d, "example.com", "/api/v2/things").1, "v2");
    assert_eq!(pool_for(&d, "example.com", "/api/v2").1, "v2");
    // Another host arriving on 127.0.0.1: the IP binding beats the weak wildcard.
    assert_eq!(pool_for(&d, "other.test", "/anything").1, "ip");
}

#[test]
fn weak_wildcard_catches_what_nothing_else_matches() {
    let cfg = r#"
[[site]]
name = "named"
bindings = ["http://example.com:0"]
app = [{ path = "/", pool = "named" }]

[[site]]
name = "weak"
bindings = ["http://*:0"]
app = [{ path = "/only", pool = "weak" }]

[pool.named]
command = ["{demo}"]
[pool.weak]
command = ["{demo}"]
"#;
    let d = Daemon::start(cfg);
    assert_eq!(pool_for(&d, "example.com", "/x").1, "named");
    assert_eq!(pool_for(&d, "unknown.test", "/only/x").1, "weak");
    // Weak bucket matched the host but no prefix: 400, reason URL.
    let r = get_host(d.addr(), "unknown.test", "/elsewhere");
    assert_eq!(r.status, 400);
    assert!(
        d.error_lines().iter().any(|l| l.ends_with(" 400 - URL -")),
        "{:?}",
        d.error_lines()
    );
}

#[test]
fn unknown_host_gets_400_with_reason_hostname() {
    let cfg = r#"
[[site]]
name = "named"
bindings = ["http://example.com:0"]
app = [{ path = "/", pool = "named" }]

[pool.named]
command = ["{demo}"]
"#;
    let d = Daemon::start(cfg);
    let r = get_host(d.addr(), "nobody.test", "/");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Hostname"), "{}", r.text());
    assert!(
        d.error_lines()
            .iter()
            .any(|l| l.contains(" 400 ") && l.contains("Hostname")),
        "{:?}",
        d.error_lines()
    );
    assert_eq!(get_host(d.addr(), "example.com", "/").status, 200);
}
