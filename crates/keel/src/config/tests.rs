//! Loading whole files: what a user who writes keel.toml sees.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::*;

const BASE: &str = "/srv/keel";

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(
        text,
        ConfigSource::File("keel.toml".into()),
        Path::new(BASE),
    )
}

/// Loads `text` as if keel ran as `host`.
fn load_as(text: &str, host: &load::Host) -> Result<Config, ConfigError> {
    load::load(
        text,
        ConfigSource::File("keel.toml".into()),
        BASE.into(),
        host,
    )
}

fn host(euid: u32, egid: u32, xdg_runtime_dir: Option<&str>) -> load::Host {
    load::Host {
        euid,
        egid,
        xdg_runtime_dir: xdg_runtime_dir.map(Into::into),
        systemd_runtime_dir: None,
    }
}

const ROOT: load::Host = load::Host {
    euid: 0,
    egid: 0,
    xdg_runtime_dir: None,
    systemd_runtime_dir: None,
};

/// The full error text for `text`, which must be invalid.
fn errors(text: &str) -> String {
    match load(text) {
        Ok(config) => panic!("expected errors, loaded {config:#?}"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_error(text: &str, expected: &str) {
    let errors = errors(text);
    assert!(
        errors.contains(expected),
        "expected {expected:?} in:\n{errors}"
    );
}

/// A valid site and pool, to which each test adds the line it is about.
const MINIMAL: &str = r#"
[[site]]
name = "demo"
bindings = ["http://127.0.0.1:8080"]
app = [{ path = "/", pool = "demo" }]

[pool.demo]
command = ["/bin/worker"]
"#;

#[test]
fn a_minimal_file_gets_every_default() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.base_dir, Path::new(BASE));
    assert_eq!(config.listener.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.log.error_log, None);
    let site = &config.sites[0];
    assert_eq!(site.name, "demo");
    assert_eq!(
        site.bindings[0].host,
        BindingHost::Ip(Ipv4Addr::LOCALHOST.into())
    );
    assert_eq!(site.bindings[0].port, 8080);
    assert_eq!(site.apps[0].path, "/");
    let pool = &config.pools["demo"];
    assert_eq!(pool.name, "demo");
    assert_eq!(pool.command, ["/bin/worker"]);
    assert_eq!(pool.workers, 1);
    assert_eq!(pool.queue_length, 1000);
    assert_eq!(pool.queue_timeout, Duration::from_secs(120));
    assert_eq!(pool.capacity, None);
    assert_eq!(pool.retry, RetryPolicy::Idempotent);
    assert!(pool.env.is_empty());
    assert_eq!(pool.cwd, None);
    assert_eq!(config.isolation, Isolation::Pool);
    assert_eq!(pool.start, StartMode::OnDemand);
    assert_eq!(pool.idle_timeout, Some(Duration::from_secs(20 * 60)));
    assert_eq!(pool.ping_interval, Some(Duration::from_secs(30)));
    assert_eq!(pool.ping_timeout, Duration::from_secs(90));
    assert_eq!(pool.startup_timeout, Duration::from_secs(90));
    assert_eq!(pool.shutdown_timeout, Duration::from_secs(90));
    assert!(pool.overlap);
    assert_eq!(
        pool.recycle,
        RecycleConfig {
            uptime: Some(Duration::from_secs(29 * 3600)),
            requests: None,
            memory: None,
            schedule: vec![],
        }
    );
    assert_eq!(
        pool.rapid_fail,
        RapidFailConfig {
            failures: 5,
            interval: Duration::from_secs(300),
            backoff: true,
        }
    );
    assert_eq!(pool.identity, None);
    assert_eq!(pool.limits, Limits::default());
    assert_eq!(pool.memory_max, None);
    assert_eq!(pool.cpu_max, None);
    assert_eq!(pool.unavailable, Unavailable::Status503);
    assert!(!pool.attach);
}

#[test]
fn runtime_dir_defaults_by_who_keel_runs_as() {
    let dir = |h: &load::Host| load_as(MINIMAL, h).unwrap().daemon.runtime_dir;
    assert_eq!(dir(&ROOT), Path::new("/run/keel"));
    assert_eq!(
        dir(&host(0, 0, Some("/run/user/0"))),
        Path::new("/run/keel")
    );
    assert_eq!(
        dir(&host(1000, 1000, Some("/run/user/1000"))),
        Path::new("/run/user/1000/keel")
    );
    assert_eq!(
        dir(&host(1000, 1000, Some("relative"))),
        Path::new("/tmp/keel-1000")
    );
    assert_eq!(dir(&host(1000, 1000, None)), Path::new("/tmp/keel-1000"));
    // systemd's RuntimeDirectory= (RUNTIME_DIRECTORY) wins for anyone; a relative one is
    // ignored.
    let systemd = |euid, value: &str| load::Host {
        systemd_runtime_dir: Some(value.into()),
        ..host(euid, euid, Some("/run/user/1000"))
    };
    assert_eq!(
        dir(&systemd(0, "/run/keel-a:/run/b")),
        Path::new("/run/keel-a")
    );
    assert_eq!(dir(&systemd(1000, "/srv/run")), Path::new("/srv/run"));
    assert_eq!(dir(&systemd(0, "run")), Path::new("/run/keel"));
    let config = load(MINIMAL).unwrap();
    assert!(config.daemon.runtime_dir.is_absolute());
}

#[test]
fn runtime_dir_resolves_against_the_config_directory() {
    let config = load(&format!("[daemon]\nruntime_dir = \"run\"\n{MINIMAL}")).unwrap();
    assert_eq!(config.daemon.runtime_dir, Path::new("/srv/keel/run"));
    let config = load(&format!(
        "[daemon]\nruntime_dir = \"/var/run/k\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(config.daemon.runtime_dir, Path::new("/var/run/k"));
    assert_error(
        &format!("[daemon]\nruntime_dir = \"\"\n{MINIMAL}"),
        "keel.toml:2: daemon.runtime_dir: must not be empty",
    );
    assert_error(
        &format!("[daemon]\nrun_dir = \"x\"\n{MINIMAL}"),
        "keel.toml:2: daemon.run_dir: unknown key (valid keys: runtime_dir, threads)",
    );
    assert_error(
        &format!("daemon = 1\n{MINIMAL}"),
        "keel.toml:1: daemon: must be a table (got an integer)",
    );
}

#[test]
fn admin_socket_defaults_to_the_runtime_dir() {
    let socket = |text: &str, h: &load::Host| load_as(text, h).unwrap().admin.socket;
    assert_eq!(socket(MINIMAL, &ROOT), Path::new("/run/keel/admin.sock"));
    assert_eq!(
        socket(MINIMAL, &host(1000, 1000, Some("/run/user/1000"))),
        Path::new("/run/user/1000/keel/admin.sock")
    );
    // An explicit runtime_dir moves the default socket with it.
    assert_eq!(
        socket(
            &format!("[daemon]\nruntime_dir = \"run\"\n{MINIMAL}"),
            &ROOT
        ),
        Path::new("/srv/keel/run/admin.sock")
    );
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.admin.listen, None);
    assert_eq!(config.admin.token, None);
}

#[test]
fn admin_keys_are_read_and_checked() {
    let config = load(&format!(
        "[admin]\nsocket = \"ctl/admin.sock\"\nlisten = \"127.0.0.1:9180\"\ntoken = \"s3cret\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(config.admin.socket, Path::new("/srv/keel/ctl/admin.sock"));
    assert_eq!(config.admin.listen, Some("127.0.0.1:9180".parse().unwrap()));
    assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
    assert_error(
        &format!("[admin]\nlisten = \"localhost\"\n{MINIMAL}"),
        "keel.toml:2: admin.listen: \"localhost\" is not an address and port",
    );
    assert_error(
        &format!("[admin]\ntoken = \"\"\n{MINIMAL}"),
        "keel.toml:2: admin.token: must not be empty",
    );
    assert_error(
        &format!("[admin]\ntoken = \"two words\"\n{MINIMAL}"),
        "keel.toml:2: admin.token: must be printable ASCII without spaces",
    );
    assert_error(
        &format!("[admin]\nsocket = \"\"\n{MINIMAL}"),
        "keel.toml:2: admin.socket: must not be empty",
    );
    let long = "x".repeat(120);
    assert_error(
        &format!("[admin]\nsocket = \"/{long}\"\n{MINIMAL}"),
        "keel.toml:2: admin.socket: /xxx",
    );
    assert_error(
        &format!("[admin]\nsokcet = \"a\"\n{MINIMAL}"),
        "keel.toml:2: admin.sokcet: unknown key (did you mean `socket`? valid keys: socket, listen, token)",
    );
}

#[test]
fn every_pool_manager_key_is_read() {
    let config = load_as(
        r#"
[[site]]
name = "demo"
bindings = ["http://127.0.0.1:8080"]
app = [{ path = "/", pool = "demo" }]

[pool.demo]
command = ["/bin/worker"]
start = "always"
idle_timeout = "0s"
ping_interval = "0s"
ping_timeout = "5s"
startup_timeout = "10s"
shutdown_timeout = "1m"
overlap = false
recycle = { uptime = "0s", requests = 500, memory = "512 MiB", schedule = ["03:00", "1:30", "23:59"] }
rapid_fail = { failures = 0, interval = "1m", backoff = false }
user = "nobody"
group = "root"
limits = { nofile = 4096, nproc = 256, core = 0 }
memory_max = "1G"
cpu_max = 0.5
unavailable = "reset"
attach = true
"#,
        &ROOT,
    )
    .unwrap();
    let pool = &config.pools["demo"];
    assert_eq!(pool.start, StartMode::Always);
    assert_eq!(pool.idle_timeout, None);
    assert_eq!(pool.ping_interval, None);
    assert_eq!(pool.ping_timeout, Duration::from_secs(5));
    assert_eq!(pool.startup_timeout, Duration::from_secs(10));
    assert_eq!(pool.shutdown_timeout, Duration::from_secs(60));
    assert!(!pool.overlap);
    let t = |hour, minute| TimeOfDay { hour, minute };
    assert_eq!(
        pool.recycle,
        RecycleConfig {
            uptime: None,
            requests: Some(500),
            memory: Some(512 << 20),
            schedule: vec![t(1, 30), t(3, 0), t(23, 59)],
        }
    );
    assert_eq!(
        pool.rapid_fail,
        RapidFailConfig {
            failures: 0,
            interval: Duration::from_secs(60),
            backoff: false,
        }
    );
    let nobody = identity_uid("nobody");
    assert_eq!(
        pool.identity,
        Some(Identity {
            user: "nobody".into(),
            uid: nobody,
            gid: 0,
        })
    );
    assert_eq!(
        pool.limits,
        Limits {
            nofile: Some(4096),
            nproc: Some(256),
            core: Some(0),
        }
    );
    assert_eq!(pool.memory_max, Some(1 << 30));
    assert_eq!(pool.cpu_max, Some(0.5));
    assert_eq!(pool.unavailable, Unavailable::Reset);
    assert!(pool.attach);
}

fn identity_uid(name: &str) -> u32 {
    super::identity::user_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {name} on this machine"))
        .uid
}

#[test]
fn sub_tables_may_be_partial_or_written_as_sections() {
    let config = load(&format!(
        "{MINIMAL}recycle = {{ requests = 10 }}\nrapid_fail = {{ failures = 2 }}\nlimits = {{ core = \"unlimited\" }}\n"
    ))
    .unwrap();
    let pool = &config.pools["demo"];
    assert_eq!(pool.recycle.uptime, Some(Duration::from_secs(29 * 3600)));
    assert_eq!(pool.recycle.requests, Some(10));
    assert_eq!(pool.rapid_fail.failures, 2);
    assert_eq!(pool.rapid_fail.interval, Duration::from_secs(300));
    assert!(pool.rapid_fail.backoff);
    assert_eq!(pool.limits.core, Some(u64::MAX));
    assert_eq!(pool.limits.nofile, None);

    let config = load(&format!(
        "{MINIMAL}\n[pool.demo.recycle]\nmemory = 1048576\nrequests = 0\n[pool.demo.rapid_fail]\ninterval = \"10m\"\n"
    ))
    .unwrap();
    let pool = &config.pools["demo"];
    assert_eq!(pool.recycle.memory, Some(1 << 20));
    assert_eq!(pool.recycle.requests, None);
    assert_eq!(pool.rapid_fail.interval, Duration::from_secs(600));
}

#[test]
fn every_key_is_read_and_paths_resolve_against_the_config_directory() {
    let config = load(
        r#"
[listener]
shutdown_timeout = "5s"

[log]
error_log = "logs/keel-error.log"

[[site]]
name = "shop"
bindings = ["http://+:80/", "http://*:80", "http://Shop.Example.com:8080", "http://[::1]:0"]
app = [{ path = "/", pool = "shop" }, { path = "/api", pool = "api" }]

[pool.shop]
command = ["bin/shop-worker", "--flag"]
workers = 4
queue_length = 10
queue_timeout = "1m 30s"
capacity = 64
retry = "never"
env = { RUST_LOG = "info", "X.Y" = "z" }
cwd = "app"

[pool.api]
command = ["/opt/api/worker"]
retry = "unstarted"

[pool.unused]
command = ["/bin/true"]
"#,
    )
    .unwrap();
    assert_eq!(config.isolation, Isolation::Pool);
    assert_eq!(config.listener.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(
        config.log.error_log.as_deref(),
        Some(Path::new("/srv/keel/logs/keel-error.log"))
    );
    let bindings: Vec<String> = config.sites[0]
        .bindings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        bindings,
        [
            "http://+:80",
            "http://*:80",
            "http://shop.example.com:8080",
            "http://[::1]:0"
        ]
    );
    let shop = &config.pools["shop"];
    assert_eq!(shop.command, ["/srv/keel/bin/shop-worker", "--flag"]);
    assert_eq!(shop.workers, 4);
    assert_eq!(shop.queue_length, 10);
    assert_eq!(shop.queue_timeout, Duration::from_secs(90));
    assert_eq!(shop.capacity, Some(64));
    assert_eq!(shop.retry, RetryPolicy::Never);
    assert_eq!(shop.env["RUST_LOG"], "info");
    assert_eq!(shop.env["X.Y"], "z");
    assert_eq!(shop.cwd.as_deref(), Some(Path::new("/srv/keel/app")));
    assert_eq!(config.pools["api"].retry, RetryPolicy::Unstarted);
    assert!(config.pools.contains_key("unused"));
}

#[test]
fn the_embedded_default_loads() {
    let config = embedded_default();
    assert_eq!(config.source, ConfigSource::Embedded);
    assert_eq!(config.base_dir, std::env::current_dir().unwrap());
    assert_eq!(config.sites.len(), 1);
    assert_eq!(config.sites[0].name, "demo");
    assert_eq!(
        config.sites[0].bindings[0].to_string(),
        "http://127.0.0.1:8080"
    );
    assert_eq!(config.sites[0].apps[0].path, "/");
    assert_eq!(config.sites[0].apps[0].pool(), Some("demo"));
    let demo = &config.pools["demo"];
    assert!(
        demo.command[0].ends_with("keel-demo-worker"),
        "{:?}",
        demo.command
    );
    assert_eq!(demo.workers, 1);
}

/// Every `# key = value` line in DEFAULT_TOML claims to show a default; uncommenting them all
/// must load to the same configuration. Examples are indented (`#   key = value`) and skipped.
#[test]
fn the_default_file_comments_show_the_real_defaults() {
    let uncommented: String = DEFAULT_TOML
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_assignment(rest) => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(uncommented, DEFAULT_TOML);
    for key in [
        "isolation",
        "shutdown_timeout",
        "queue_length",
        "queue_timeout",
        "retry",
        "env",
        "start",
        "idle_timeout",
        "ping_interval",
        "ping_timeout",
        "startup_timeout",
        "overlap",
        "recycle",
        "rapid_fail",
        "unavailable",
        "attach",
    ] {
        assert!(
            uncommented
                .lines()
                .any(|l| l.starts_with(&format!("{key} = "))),
            "{key}"
        );
    }
    let base = Path::new("/srv/keel");
    let commented = load_str(DEFAULT_TOML, ConfigSource::Embedded, base).unwrap();
    let explicit = load_str(&uncommented, ConfigSource::Embedded, base).unwrap();
    assert_eq!(commented, explicit);
}

fn is_assignment(text: &str) -> bool {
    text.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    })
}

#[test]
fn every_pool_key_appears_in_the_default_file() {
    for key in load_keys() {
        assert!(
            DEFAULT_TOML.contains(&format!("{key} =")),
            "{key} is not in default.toml"
        );
    }
}

fn load_keys() -> [&'static str; 33] {
    [
        "isolation",
        "runtime_dir",
        "socket",
        "listen",
        "token",
        "shutdown_timeout",
        "error_log",
        "command",
        "workers",
        "queue_length",
        "queue_timeout",
        "capacity",
        "retry",
        "env",
        "cwd",
        "start",
        "idle_timeout",
        "ping_interval",
        "ping_timeout",
        "startup_timeout",
        "overlap",
        "recycle",
        "rapid_fail",
        "user",
        "group",
        "limits",
        "memory_max",
        "cpu_max",
        "unavailable",
        "attach",
        "protocol",
        "listen",
        "health_path",
    ]
}

#[test]
fn http_worker_keys() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.pools["demo"].protocol, WorkerProtocol::Keel);
    let config = load(&format!(
        "{MINIMAL}protocol = \"http\"\nlisten = \"tcp\"\nhealth_path = \"/up?full=1\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.pools["demo"].protocol,
        WorkerProtocol::Http(HttpWorkerConfig {
            listen: HttpListen::Tcp,
            health_path: Some("/up?full=1".into()),
        })
    );
    let config = load(&format!("{MINIMAL}protocol = \"http\"\n")).unwrap();
    assert_eq!(
        config.pools["demo"].protocol,
        WorkerProtocol::Http(HttpWorkerConfig::default())
    );
    assert_error(
        &format!("{MINIMAL}protocol = \"fastcgi\"\n"),
        "keel.toml:9: pool.demo.protocol: \"fastcgi\" is not a worker protocol (expected one of \"keel\", \"http\")",
    );
    assert_error(
        &format!("{MINIMAL}health_path = \"/health\"\n"),
        "keel.toml:9: pool.demo.health_path: applies only to HTTP workers (protocol = \"http\")",
    );
    assert_error(
        &format!("{MINIMAL}protocol = \"http\"\nlisten = \"udp\"\n"),
        "keel.toml:10: pool.demo.listen: \"udp\" is not a listen kind (expected one of \"unix\", \"tcp\")",
    );
    assert_error(
        &format!("{MINIMAL}protocol = \"http\"\nhealth_path = \"health\"\n"),
        "keel.toml:10: pool.demo.health_path: \"health\" is not a request path",
    );
    assert_error(
        &format!("{MINIMAL}protocol = \"http\"\nattach = true\n"),
        "keel.toml:10: pool.demo.attach: attached workers speak keel's protocol",
    );
}

// ---- syntax and unknown keys ----

#[test]
fn a_syntax_error_names_its_line() {
    let text = "[[site]]\nname = \"demo\nbindings = []\n";
    assert_error(text, "keel.toml:2: TOML syntax: ");
}

#[test]
fn a_duplicate_key_is_a_syntax_error() {
    assert_error(
        &format!("{MINIMAL}workers = 1\nworkers = 2\n"),
        "keel.toml:10: TOML syntax: duplicate key",
    );
}

#[test]
fn unknown_keys_are_errors_everywhere_with_a_suggestion() {
    let text = r#"
[listner]
[log]
eror_log = "x"
[[site]]
name = "demo"
bindings = ["http://127.0.0.1:8080"]
apps = []
app = [{ path = "/", pool = "demo", rooot = "public" }]
[pool.demo]
command = ["/bin/worker"]
wokers = 2
"#;
    let errors = errors(text);
    for expected in [
        "keel.toml:2: listner: unknown key (did you mean `listener`? valid keys: isolation, daemon, admin, listener, log, cache, site, pool)",
        "keel.toml:4: log.eror_log: unknown key (did you mean `error_log`?",
        "keel.toml:8: site[0].apps: unknown key (did you mean `app`?",
        "keel.toml:9: site[0].app[0].rooot: unknown key (did you mean `root`? valid keys: path, pool, root, list, follow_symlinks)",
        "keel.toml:12: pool.demo.wokers: unknown key (did you mean `workers`?",
    ] {
        assert!(
            errors.contains(expected),
            "expected {expected:?} in:\n{errors}"
        );
    }
    assert_eq!(errors.lines().count(), 5, "{errors}");
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = r#"
[[site]]
name = "demo"
bindings = ["ftp://x:1"]
app = [{ path = "/", pool = "demo" }]

[pool.demo]
command = ["/bin/worker"]
workers = 0
queue_timeout = "soon"
"#;
    let errors = errors(text);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 3, "{errors}");
    assert!(
        lines[0].starts_with("keel.toml:4: site[0].bindings[0]: "),
        "{errors}"
    );
    assert!(
        lines[1].starts_with("keel.toml:9: pool.demo.workers: "),
        "{errors}"
    );
    assert!(
        lines[2].starts_with("keel.toml:10: pool.demo.queue_timeout: "),
        "{errors}"
    );
}

// ---- sites ----

#[test]
fn at_least_one_site_is_required() {
    assert_error(
        "[pool.demo]\ncommand = [\"w\"]\n",
        "keel.toml:1: site: at least one [[site]] is required",
    );
    assert_error(
        "site = []\n",
        "keel.toml:1: site: at least one [[site]] is required",
    );
    assert_error(
        "\n[site]\nname = \"x\"\n",
        "keel.toml:2: site: must be an array of tables: write [[site]]",
    );
}

#[test]
fn a_site_needs_a_name_bindings_and_apps() {
    let errors = errors("\n[[site]]\n");
    assert!(
        errors.contains("keel.toml:2: site[0].name: is missing"),
        "{errors}"
    );
    assert!(
        errors.contains("keel.toml:2: site[0].bindings: is missing"),
        "{errors}"
    );
    assert!(
        errors.contains("keel.toml:2: site[0].app: is missing"),
        "{errors}"
    );
}

#[test]
fn site_names_are_checked_and_unique() {
    let text = MINIMAL.replace("name = \"demo\"", "name = \"my demo\"");
    assert_error(
        &text,
        "keel.toml:3: site[0].name: \"my demo\" is not a valid site name (use letters, digits",
    );
    let twice = format!(
        "{MINIMAL}\n[[site]]\nname = \"demo\"\nbindings = [\"http://+:81\"]\napp = [{{ path = \"/\", pool = \"demo\" }}]\n"
    );
    assert_error(
        &twice,
        "keel.toml:11: site[1].name: \"demo\" is already the name of site[0]",
    );
}

#[test]
fn bindings_and_apps_must_not_be_empty() {
    assert_error(
        &MINIMAL.replace(r#"["http://127.0.0.1:8080"]"#, "[]"),
        "keel.toml:4: site[0].bindings: must not be empty",
    );
    assert_error(
        &MINIMAL.replace(r#"[{ path = "/", pool = "demo" }]"#, "[]"),
        "keel.toml:5: site[0].app: must not be empty",
    );
}

#[test]
fn a_bad_binding_says_what_a_binding_is() {
    let text = MINIMAL.replace(
        r#"["http://127.0.0.1:8080"]"#,
        "[\n  \"http://+:80\",\n  \"htp://x:80\",\n]",
    );
    assert_error(
        &text,
        "keel.toml:6: site[0].bindings[1]: \"htp://x:80\" is not a binding; expected SCHEME://HOST:PORT with SCHEME http or https, HOST +, *, an IP or a host name",
    );
}

#[test]
fn https_bindings_need_the_sites_tls() {
    let text = MINIMAL.replace("http://127.0.0.1:8080", "https://127.0.0.1:8443");
    assert_error(
        &text,
        "keel.toml:4: site[0].bindings[0]: https://127.0.0.1:8443 is https, and the site has no certificate (add tls = { cert = \"site.pem\", key = \"site.key\" } to the site)",
    );
}

#[test]
fn tls_files_are_checked_at_load() {
    let text = MINIMAL
        .replace("http://127.0.0.1:8080", "https://127.0.0.1:8443")
        .replace(
            "app = [",
            "tls = { cert = \"/nonexistent/keel/site.pem\", key = \"/nonexistent/keel/site.key\" }\napp = [",
        );
    assert_error(
        &text,
        "keel.toml:5: site[0].tls: cannot read /nonexistent/keel/site.pem",
    );
}

#[test]
fn a_binding_listed_twice_in_one_site_is_an_error() {
    let text = MINIMAL.replace(
        r#"["http://127.0.0.1:8080"]"#,
        r#"["http://127.0.0.1:8080", "http://127.0.0.1:8080/"]"#,
    );
    assert_error(
        &text,
        "keel.toml:4: site[0].bindings[1]: http://127.0.0.1:8080 is listed twice in this site (also site[0].bindings[0])",
    );
}

#[test]
fn app_paths_must_be_canonical_and_distinct() {
    let text = MINIMAL.replace(r#"path = "/""#, r#"path = "shop""#);
    assert_error(
        &text,
        "keel.toml:5: site[0].app[0].path: \"shop\" must start with \"/\"",
    );
    let text = MINIMAL.replace(
        r#"[{ path = "/", pool = "demo" }]"#,
        r#"[{ path = "/Shop", pool = "demo" }, { path = "/shop/", pool = "demo" }]"#,
    );
    assert_error(
        &text,
        "keel.toml:5: site[0].app[1].path: \"/shop/\" is mapped twice in this site (also site[0].app[0]",
    );
    let text = MINIMAL.replace(r#"path = "/""#, r#"path = "/a/../b""#);
    assert_error(
        &text,
        "site[0].app[0].path: \"/a/../b\" must not contain empty, \".\" or \"..\" segments",
    );
}

#[test]
fn an_app_needs_a_path_and_a_pool_that_exists() {
    let text = MINIMAL.replace(
        r#"{ path = "/", pool = "demo" }"#,
        r#"{ pool = "demo" }, { path = "/x" }"#,
    );
    let errors = errors(&text);
    assert!(
        errors.contains("keel.toml:5: site[0].app[0].path: is missing"),
        "{errors}"
    );
    assert!(
        errors.contains("keel.toml:5: site[0].app[1].pool: is missing"),
        "{errors}"
    );

    let text = MINIMAL.replace(r#"pool = "demo""#, r#"pool = "shop""#);
    assert_error(
        &text,
        "keel.toml:5: site[0].app[0].pool: there is no pool named \"shop\" (add a [pool.shop] section or use one of \"demo\")",
    );
    let no_pools = MINIMAL.split("[pool.demo]").next().unwrap();
    assert_error(
        no_pools,
        "site[0].app[0].pool: there is no pool named \"demo\" (no pools are defined; add a [pool.demo] section)",
    );
}

/// An empty `root` would serve the config file's own directory (keel.toml, logs, an
/// admin token): it is refused even where that directory exists; `"."` says it on purpose.
#[test]
fn a_static_root_must_not_be_empty() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let with_root = |root: &str| {
        let app = format!(r#"{{ path = "/", pool = "demo" }}, {{ path = "/r", root = "{root}" }}"#);
        let text = MINIMAL.replace(r#"{ path = "/", pool = "demo" }"#, &app);
        load_str(&text, ConfigSource::File("keel.toml".into()), dir)
    };
    let err = with_root("").expect_err("an empty root loaded").to_string();
    assert!(
        err.contains("keel.toml:5: site[0].app[1].root: must not be empty"),
        "{err}"
    );
    let config = with_root(".").unwrap();
    match &config.sites[0].apps[1].serve {
        AppServe::Static(files) => assert_eq!(files.root, dir.join(".")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_sites_may_share_a_port_but_not_a_binding_and_path() {
    let second = |binding: &str, path: &str| {
        format!(
            "{MINIMAL}\n[[site]]\nname = \"other\"\nbindings = [\"{binding}\"]\napp = [{{ path = \"{path}\", pool = \"demo\" }}]\n"
        )
    };
    assert!(load(&second("http://localhost:8080", "/")).is_ok());
    assert!(load(&second("http://+:8080", "/")).is_ok());
    assert!(load(&second("http://127.0.0.1:8080", "/other")).is_ok());
    assert_error(
        &second("http://127.0.0.1:8080/", "/"),
        "keel.toml:13: site[1].app[0].path: sites \"demo\" (site[0]) and \"other\" both map \"/\" on http://127.0.0.1:8080",
    );
}

// ---- pools ----

#[test]
fn pool_names_are_checked() {
    let text = MINIMAL
        .replace("[pool.demo]", "[pool.\"my pool\"]")
        .replace("pool = \"demo\"", "pool = \"my pool\"");
    assert_error(
        &text,
        "keel.toml:7: pool.\"my pool\": \"my pool\" is not a valid pool name",
    );
}

#[test]
fn a_pool_needs_a_non_empty_command() {
    assert_error(
        &MINIMAL.replace("command = [\"/bin/worker\"]", ""),
        "keel.toml:7: pool.demo.command: is missing",
    );
    assert_error(
        &MINIMAL.replace("[\"/bin/worker\"]", "[]"),
        "keel.toml:8: pool.demo.command: must not be empty",
    );
    assert_error(
        &MINIMAL.replace("[\"/bin/worker\"]", "[\"\"]"),
        "keel.toml:8: pool.demo.command[0]: must not be empty",
    );
    assert_error(
        &MINIMAL.replace("[\"/bin/worker\"]", "\"/bin/worker\""),
        "keel.toml:8: pool.demo.command: must be an array (got a string)",
    );
    assert_error(
        &MINIMAL.replace("[\"/bin/worker\"]", "[\"/bin/worker\", 3]"),
        "keel.toml:8: pool.demo.command[1]: must be a string (got an integer)",
    );
}

#[test]
fn pool_integers_are_range_checked() {
    let with = |line: &str| format!("{MINIMAL}{line}\n");
    assert_error(
        &with("workers = 0"),
        "keel.toml:9: pool.demo.workers: must be at least 1 (got 0)",
    );
    assert_error(
        &with("workers = 1025"),
        "keel.toml:9: pool.demo.workers: must be at most 1024 (got 1025)",
    );
    assert_error(
        &with("workers = -3"),
        "keel.toml:9: pool.demo.workers: must be at least 1 (got -3)",
    );
    assert_error(
        &with("workers = 99999999999999999999"),
        "keel.toml:9: pool.demo.workers: must be at most 1024 (got 99999999999999999999)",
    );
    assert_error(
        &with("workers = \"2\""),
        "keel.toml:9: pool.demo.workers: must be an integer from 1 to 1024 (got a string)",
    );
    assert_error(
        &with("queue_length = 0"),
        "keel.toml:9: pool.demo.queue_length: must be at least 1 (got 0)",
    );
    assert_error(
        &with("queue_length = 65536"),
        "keel.toml:9: pool.demo.queue_length: must be at most 65535 (got 65536)",
    );
    assert_error(
        &with("capacity = 0"),
        "keel.toml:9: pool.demo.capacity: must be at least 1 (got 0)",
    );
    assert_error(
        &with("capacity = 1.5"),
        "keel.toml:9: pool.demo.capacity: must be an integer from 1 to 65535 (got a float)",
    );
    assert!(
        load(&with(
            "workers = 1024\nqueue_length = 65535\ncapacity = 0x10"
        ))
        .is_ok()
    );
}

#[test]
fn durations_are_humane_strings() {
    let with = |line: &str| format!("{MINIMAL}{line}\n");
    assert_error(
        &with("queue_timeout = \"soon\""),
        "keel.toml:9: pool.demo.queue_timeout: \"soon\" is not a duration (expected a number and a unit",
    );
    assert_error(
        &with("queue_timeout = \"0s\""),
        "keel.toml:9: pool.demo.queue_timeout: must be longer than zero (got \"0s\")",
    );
    assert_error(
        &with("queue_timeout = 120"),
        "keel.toml:9: pool.demo.queue_timeout: must be a duration string (got the integer 120; for seconds write \"120s\")",
    );
    assert_error(
        &format!("[listener]\nshutdown_timeout = true\n{MINIMAL}"),
        "keel.toml:2: listener.shutdown_timeout: must be a duration string",
    );
    let zero_drain = load(&format!("[listener]\nshutdown_timeout = \"0s\"\n{MINIMAL}")).unwrap();
    assert_eq!(zero_drain.listener.shutdown_timeout, Duration::ZERO);
}

#[test]
fn connection_timers_have_http_sys_defaults_and_are_checked() {
    let defaults = load(MINIMAL).unwrap().listener;
    assert_eq!(defaults.header_wait, Duration::from_secs(30));
    assert_eq!(defaults.idle_connection, Duration::from_secs(120));
    assert_eq!(defaults.min_send_rate, 150);
    let set = load(&format!(
        "[listener]\nidle_connection = \"5m\"\nmin_send_rate = 0\n{MINIMAL}"
    ))
    .unwrap()
    .listener;
    assert_eq!(set.idle_connection, Duration::from_secs(300));
    assert_eq!(set.min_send_rate, 0);
    assert_error(
        &format!("[listener]\nidle_connection = \"0s\"\n{MINIMAL}"),
        "keel.toml:2: listener.idle_connection: must be longer than zero (got \"0s\")",
    );
    assert_error(
        &format!("[listener]\nmin_send_rate = -1\n{MINIMAL}"),
        "keel.toml:2: listener.min_send_rate: must be at least 0 (got -1)",
    );
}

#[test]
fn retry_policy_names_are_checked() {
    assert_error(
        &format!("{MINIMAL}retry = \"always\"\n"),
        "keel.toml:9: pool.demo.retry: \"always\" is not a retry policy (expected one of \"idempotent\", \"unstarted\", \"never\")",
    );
}

#[test]
fn env_is_a_table_of_strings() {
    assert_error(
        &format!("{MINIMAL}env = {{ A = 1 }}\n"),
        "keel.toml:9: pool.demo.env.A: must be a string (got an integer)",
    );
    assert_error(
        &format!("{MINIMAL}env = {{ \"A=B\" = \"x\" }}\n"),
        "keel.toml:9: pool.demo.env.\"A=B\": is not an environment variable name",
    );
    assert_error(
        &format!("{MINIMAL}env = [\"A=B\"]\n"),
        "keel.toml:9: pool.demo.env: must be a table (got an array)",
    );
}

#[test]
fn paths_must_not_be_empty() {
    assert_error(
        &format!("{MINIMAL}cwd = \"\"\n"),
        "keel.toml:9: pool.demo.cwd: must not be empty",
    );
    assert_error(
        &format!("[log]\nerror_log = \"\"\n{MINIMAL}"),
        "keel.toml:2: log.error_log: must not be empty",
    );
}

#[test]
fn an_absolute_cwd_is_kept() {
    let config = load(&format!("{MINIMAL}cwd = \"/var/app\"\n")).unwrap();
    assert_eq!(
        config.pools["demo"].cwd.as_deref(),
        Some(Path::new("/var/app"))
    );
}

// ---- pool manager ----

#[test]
fn pool_manager_values_are_checked_with_their_lines() {
    let with = |line: &str| format!("{MINIMAL}{line}\n");
    for (line, expected) in [
        (
            "start = \"lazy\"",
            "keel.toml:9: pool.demo.start: \"lazy\" is not a start mode (expected one of \"on-demand\", \"always\")",
        ),
        (
            "start = true",
            "keel.toml:9: pool.demo.start: must be one of \"on-demand\", \"always\" (as a string)",
        ),
        (
            "idle_timeout = 20",
            "keel.toml:9: pool.demo.idle_timeout: must be a duration string (got the integer 20",
        ),
        (
            "ping_interval = \"often\"",
            "keel.toml:9: pool.demo.ping_interval: \"often\" is not a duration",
        ),
        (
            "ping_timeout = \"0s\"",
            "keel.toml:9: pool.demo.ping_timeout: must be longer than zero (got \"0s\")",
        ),
        (
            "startup_timeout = \"0s\"",
            "keel.toml:9: pool.demo.startup_timeout: must be longer than zero",
        ),
        (
            "shutdown_timeout = \"0ms\"",
            "keel.toml:9: pool.demo.shutdown_timeout: must be longer than zero",
        ),
        (
            "overlap = \"yes\"",
            "keel.toml:9: pool.demo.overlap: must be true or false (got a string)",
        ),
        (
            "recycle = \"29h\"",
            "keel.toml:9: pool.demo.recycle: must be a table (got a string)",
        ),
        (
            "recycle = { uptim = \"1h\" }",
            "keel.toml:9: pool.demo.recycle.uptim: unknown key (did you mean `uptime`? valid keys: uptime, requests, memory, schedule)",
        ),
        (
            "recycle = { uptime = 3600 }",
            "keel.toml:9: pool.demo.recycle.uptime: must be a duration string",
        ),
        (
            "recycle = { requests = -1 }",
            "keel.toml:9: pool.demo.recycle.requests: must be at least 0 (got -1)",
        ),
        (
            "recycle = { requests = \"500\" }",
            "keel.toml:9: pool.demo.recycle.requests: must be an integer of 0 or more (got a string)",
        ),
        (
            "recycle = { memory = \"512 MeB\" }",
            "keel.toml:9: pool.demo.recycle.memory: \"512 MeB\" is not a size: unknown unit \"MeB\"",
        ),
        (
            "recycle = { memory = \"lots\" }",
            "keel.toml:9: pool.demo.recycle.memory: \"lots\" is not a size (expected a number and a unit such as \"512 MiB\"",
        ),
        (
            "recycle = { memory = -5 }",
            "keel.toml:9: pool.demo.recycle.memory: must be at least 0 (got -5)",
        ),
        (
            "recycle = { memory = 1.5 }",
            "keel.toml:9: pool.demo.recycle.memory: must be a size (a number and a unit",
        ),
        (
            "recycle = { schedule = \"03:00\" }",
            "keel.toml:9: pool.demo.recycle.schedule: must be an array (got a string)",
        ),
        (
            "recycle = { schedule = [\"03:00\", \"24:00\"] }",
            "keel.toml:9: pool.demo.recycle.schedule[1]: \"24:00\" is not a time of day (expected \"HH:MM\" from \"00:00\" to \"23:59\")",
        ),
        (
            "recycle = { schedule = [03:00:00] }",
            "keel.toml:9: pool.demo.recycle.schedule[0]: must be a string \"HH:MM\" (got a TOML time",
        ),
        (
            "recycle = { schedule = [\"03:00\", \"3:00\"] }",
            "keel.toml:9: pool.demo.recycle.schedule[1]: 03:00 is listed twice",
        ),
        (
            "rapid_fail = { failures = -1 }",
            "keel.toml:9: pool.demo.rapid_fail.failures: must be at least 0 (got -1)",
        ),
        (
            "rapid_fail = { failures = 2147483648 }",
            "keel.toml:9: pool.demo.rapid_fail.failures: must be at most 2147483647",
        ),
        (
            "rapid_fail = { interval = \"0s\" }",
            "keel.toml:9: pool.demo.rapid_fail.interval: must be longer than zero",
        ),
        (
            "rapid_fail = { backoff = 1 }",
            "keel.toml:9: pool.demo.rapid_fail.backoff: must be true or false (got an integer)",
        ),
        (
            "rapid_fail = { crashes = 5 }",
            "keel.toml:9: pool.demo.rapid_fail.crashes: unknown key (valid keys: failures, interval, backoff)",
        ),
        (
            "limits = { nofile = -1 }",
            "keel.toml:9: pool.demo.limits.nofile: must be at least 0 (got -1)",
        ),
        (
            "limits = { core = \"infinite\" }",
            "keel.toml:9: pool.demo.limits.core: \"infinite\" is not a limit (expected an integer of 0 or more, or \"unlimited\")",
        ),
        (
            "limits = { stack = 1 }",
            "keel.toml:9: pool.demo.limits.stack: unknown key (valid keys: nofile, nproc, core)",
        ),
        (
            "memory_max = 0",
            "keel.toml:9: pool.demo.memory_max: must be more than 0 bytes",
        ),
        (
            "memory_max = \"0 MiB\"",
            "keel.toml:9: pool.demo.memory_max: must be more than 0 bytes",
        ),
        (
            "memory_max = \"99999999 TiB\"",
            "keel.toml:9: pool.demo.memory_max: \"99999999 TiB\" is too large a size",
        ),
        (
            "cpu_max = 0",
            "keel.toml:9: pool.demo.cpu_max: must be above 0 (got 0)",
        ),
        (
            "cpu_max = -0.5",
            "keel.toml:9: pool.demo.cpu_max: must be above 0 (got -0.5)",
        ),
        (
            "cpu_max = 1025",
            "keel.toml:9: pool.demo.cpu_max: must be at most 1024 (got 1025)",
        ),
        (
            "cpu_max = nan",
            "keel.toml:9: pool.demo.cpu_max: must be above 0 (got nan)",
        ),
        (
            "cpu_max = inf",
            "keel.toml:9: pool.demo.cpu_max: must be at most 1024 (got inf)",
        ),
        (
            "cpu_max = \"50%\"",
            "keel.toml:9: pool.demo.cpu_max: must be a number above 0 and at most 1024 (got a string)",
        ),
        (
            "unavailable = 503",
            "keel.toml:9: pool.demo.unavailable: must be one of \"503\", \"reset\" (as a string)",
        ),
        (
            "unavailable = \"close\"",
            "keel.toml:9: pool.demo.unavailable: \"close\" is not an unavailable action (expected one of \"503\", \"reset\")",
        ),
        (
            "attach = \"true\"",
            "keel.toml:9: pool.demo.attach: must be true or false (got a string)",
        ),
    ] {
        assert_error(&with(line), expected);
    }
}

#[test]
fn zero_turns_triggers_off_and_limits_take_any_count() {
    let config = load(&format!(
        "{MINIMAL}recycle = {{ uptime = \"0s\", requests = 0, memory = \"0 MiB\" }}\nrapid_fail = {{ failures = 0 }}\ncpu_max = 2\nmemory_max = 4096\nlimits = {{ nofile = 0x100000 }}\n"
    ))
    .unwrap();
    let pool = &config.pools["demo"];
    assert_eq!(
        pool.recycle,
        RecycleConfig {
            uptime: None,
            requests: None,
            memory: None,
            schedule: vec![],
        }
    );
    assert_eq!(pool.rapid_fail.failures, 0);
    assert_eq!(pool.cpu_max, Some(2.0));
    assert_eq!(pool.memory_max, Some(4096));
    assert_eq!(pool.limits.nofile, Some(1 << 20));
}

// ---- identity ----

#[test]
fn root_resolves_users_and_groups_by_name_or_number() {
    let nobody = super::identity::user_by_name("nobody").unwrap().unwrap();
    let with = |lines: &str| format!("{MINIMAL}{lines}\n");
    let identity = |text: &str| load_as(text, &ROOT).unwrap().pools["demo"].identity.clone();
    assert_eq!(
        identity(&with("user = \"nobody\"")),
        Some(Identity {
            user: "nobody".into(),
            uid: nobody.uid,
            gid: nobody.gid,
        })
    );
    assert_eq!(
        identity(&with("user = \"nobody\"\ngroup = 0")),
        Some(Identity {
            user: "nobody".into(),
            uid: nobody.uid,
            gid: 0,
        })
    );
    assert_eq!(
        identity(&with("user = 0\ngroup = \"root\"")),
        Some(Identity {
            user: "0".into(),
            uid: 0,
            gid: 0,
        })
    );
    // A numeric uid needs no passwd entry, but then it has no primary group.
    assert_eq!(
        identity(&with("user = \"4000000\"\ngroup = \"4000000\"")),
        Some(Identity {
            user: "4000000".into(),
            uid: 4_000_000,
            gid: 4_000_000,
        })
    );
    let errors = |text: &str| load_as(text, &ROOT).unwrap_err().to_string();
    let err = errors(&with("user = \"4000000\""));
    assert!(
        err.contains("keel.toml:9: pool.demo.user: uid 4000000 has no entry in the user database, so it has no primary group (add group)"),
        "{err}"
    );
    let err = errors(&with("user = \"keel-no-such-user\""));
    assert!(
        err.contains("keel.toml:9: pool.demo.user: there is no user named \"keel-no-such-user\""),
        "{err}"
    );
    let err = errors(&with("user = \"nobody\"\ngroup = \"keel-no-such-group\""));
    assert!(
        err.contains(
            "keel.toml:10: pool.demo.group: there is no group named \"keel-no-such-group\""
        ),
        "{err}"
    );
    let err = errors(&with("group = \"root\""));
    assert!(
        err.contains("keel.toml:9: pool.demo.group: needs user"),
        "{err}"
    );
    let err = errors(&with("user = \"\""));
    assert!(
        err.contains("keel.toml:9: pool.demo.user: must not be empty"),
        "{err}"
    );
    let err = errors(&with("user = -1"));
    assert!(
        err.contains("keel.toml:9: pool.demo.user: must be at least 0 (got -1)"),
        "{err}"
    );
    let err = errors(&with("user = 4294967295"));
    assert!(
        err.contains("keel.toml:9: pool.demo.user: 4294967295 is not a valid id"),
        "{err}"
    );
    let err = errors(&with("user = true"));
    assert!(
        err.contains("keel.toml:9: pool.demo.user: must be a user name or numeric uid"),
        "{err}"
    );
}

#[test]
fn a_non_root_keel_cannot_start_workers_as_another_user() {
    let nobody = super::identity::user_by_name("nobody").unwrap().unwrap();
    let me = host(1000, 1000, None);
    let err = load_as(&format!("{MINIMAL}user = \"nobody\"\n"), &me)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "keel.toml:9: pool.demo.user: keel runs as uid 1000, not root, so it cannot start workers as \"nobody\" (uid {}); run keel as root or remove user",
            nobody.uid
        )
    );
    // Its own uid and gid are fine, by number or by name.
    let config = load_as(&format!("{MINIMAL}user = 1000\ngroup = 1000\n"), &me).unwrap();
    assert_eq!(
        config.pools["demo"].identity,
        Some(Identity {
            user: "1000".into(),
            uid: 1000,
            gid: 1000,
        })
    );
    let err = load_as(&format!("{MINIMAL}user = 1000\ngroup = \"root\"\n"), &me)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("keel.toml:10: pool.demo.group: keel runs as gid 1000, not root, so it cannot start workers in group \"root\" (gid 0); run keel as root or remove group"),
        "{err}"
    );
    // The same file loads for root.
    assert!(load_as(&format!("{MINIMAL}user = \"nobody\"\n"), &ROOT).is_ok());
}

// ---- isolation ----

#[test]
fn isolation_is_pool_or_shared() {
    assert_eq!(
        load(&format!("isolation = \"pool\"\n{MINIMAL}"))
            .unwrap()
            .isolation,
        Isolation::Pool
    );
    assert_eq!(
        load(&format!("isolation = \"shared\"\n{MINIMAL}"))
            .unwrap()
            .isolation,
        Isolation::Shared
    );
    assert_error(
        &format!("isolation = \"process\"\n{MINIMAL}"),
        "keel.toml:1: isolation: \"process\" is not an isolation mode (expected one of \"pool\", \"shared\")",
    );
    assert_error(
        &format!("isolation = 5\n{MINIMAL}"),
        "keel.toml:1: isolation: must be one of \"pool\", \"shared\" (as a string)",
    );
}

#[test]
fn shared_isolation_serves_every_app_from_the_one_pool() {
    let text = r#"isolation = "shared"

[[site]]
name = "a"
bindings = ["http://127.0.0.1:8080"]
app = [{ path = "/" }, { path = "/api", pool = "only" }]

[[site]]
name = "b"
bindings = ["http://127.0.0.1:8081"]
app = [{ path = "/" }]

[pool.only]
command = ["/bin/worker"]
"#;
    let config = load(text).unwrap();
    assert_eq!(config.isolation, Isolation::Shared);
    let pools: Vec<&str> = config
        .sites
        .iter()
        .flat_map(|s| s.apps.iter().filter_map(|a| a.pool()))
        .collect();
    assert_eq!(pools, ["only", "only", "only"]);

    let err = errors(&text.replace(r#"pool = "only" }"#, r#"pool = "other" }"#));
    assert!(
        err.contains("keel.toml:6: site[0].app[1].pool: there is no pool named \"other\" (with isolation = \"shared\" every app is served by pool \"only\"; name it or leave pool out)"),
        "{err}"
    );
    // Without isolation = "shared", pool is required.
    let err = errors(&text.replace("isolation = \"shared\"", ""));
    assert!(
        err.contains("keel.toml:6: site[0].app[0].pool: is missing"),
        "{err}"
    );
}

#[test]
fn shared_isolation_needs_exactly_one_pool() {
    let two =
        format!("isolation = \"shared\"\n{MINIMAL}\n[pool.other]\ncommand = [\"/bin/other\"]\n");
    let err = errors(&two);
    assert!(
        err.contains("keel.toml:1: isolation: \"shared\" serves every app of every site from one pool and one queue (IIS 5.0 isolation mode), so exactly one [pool.NAME] may be defined, not 2 (\"demo\", \"other\"); keep one, or use isolation = \"pool\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let none = format!(
        "isolation = \"shared\"\n{}",
        MINIMAL.split("[pool.demo]").next().unwrap()
    );
    let err = errors(&none);
    assert!(
        err.contains("keel.toml:1: isolation: \"shared\" serves every app of every site from one pool, and no [pool.NAME] is defined (add exactly one)"),
        "{err}"
    );
}

// ---- files ----

#[test]
fn load_file_resolves_against_the_file_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, MINIMAL.replace("/bin/worker", "./bin/worker")).unwrap();
    let config = load_file(&path).unwrap();
    assert_eq!(config.source, ConfigSource::File(path.clone()));
    assert_eq!(config.base_dir, dir.path());
    assert_eq!(
        config.pools["demo"].command[0],
        dir.path().join("bin/worker").to_string_lossy()
    );
}

#[test]
fn an_unreadable_file_is_a_config_error_naming_it() {
    let err = load_file(Path::new("/nonexistent/keel.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/keel.toml: cannot read the file: "),
        "{err}"
    );
}

#[test]
fn errors_name_the_embedded_default_when_there_is_no_file() {
    let err = load_str("[[site]]\n", ConfigSource::Embedded, Path::new("/")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("<embedded default>:1: site[0].name: is missing"),
        "{err}"
    );
}

/// The fixtures the `keel check` integration tests use: each `NAME.toml` must fail with an
/// error containing the text of `NAME.expected`.
#[test]
fn bad_fixtures_fail_with_their_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let err = load_file(&path)
            .expect_err(&path.display().to_string())
            .to_string();
        // One expected substring per line, as `keel check`'s CLI test reads them.
        for want in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                err.contains(want),
                "{}: expected {want:?} in:\n{err}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 13,
        "only {checked} fixtures in {}",
        dir.display()
    );
}

#[test]
fn daemon_threads_is_auto_or_a_count() {
    let with = |value: &str| format!("[daemon]\nthreads = {value}\n{MINIMAL}");
    let auto = load(MINIMAL).unwrap().daemon;
    assert_eq!(auto.threads, None);
    assert!(auto.serving_threads() >= 1);
    assert_eq!(load(&with("\"auto\"")).unwrap().daemon.threads, None);
    let one = load(&with("1")).unwrap().daemon;
    assert_eq!((one.threads, one.serving_threads()), (Some(1), 1));
    assert_eq!(load(&with("4")).unwrap().daemon.serving_threads(), 4);
    assert_error(
        &with("0"),
        "keel.toml:2: daemon.threads: must be at least 1 (got 0)",
    );
    assert_error(
        &with("257"),
        "keel.toml:2: daemon.threads: must be at most 256 (got 257)",
    );
    assert_error(
        &with("\"two\""),
        "keel.toml:2: daemon.threads: \"two\" is not a thread count (expected \"auto\" or an integer from 1 to 256)",
    );
    assert_error(
        &with("1.5"),
        "keel.toml:2: daemon.threads: must be an integer from 1 to 256",
    );
}

/// `max_entry_bytes` never exceeds `max_bytes`: given, it is checked; left out, the default
/// (256 KiB) is lowered to a smaller cache, whose entries could not be kept otherwise.
#[test]
fn cache_max_entry_bytes_is_at_most_max_bytes() {
    let cache = |lines: &str| load(&format!("[cache]\n{lines}\n{MINIMAL}")).unwrap().cache;
    let entry_bytes = |lines: &str| cache(lines).max_entry_bytes;
    let defaults = load(MINIMAL).unwrap().cache;
    assert_eq!(defaults.max_bytes, 256 << 20);
    assert_eq!(defaults.max_entry_bytes, 256 << 10);
    assert_eq!(entry_bytes("max_bytes = \"1 MiB\""), 256 << 10);
    assert_eq!(entry_bytes("max_bytes = \"100 KiB\""), 100 << 10);
    assert_eq!(entry_bytes("max_bytes = \"256 KiB\""), 256 << 10);
    assert_eq!(
        entry_bytes("max_bytes = \"100 KiB\"\nmax_entry_bytes = \"10 KiB\""),
        10 << 10
    );
    assert_eq!(
        entry_bytes("max_entry_bytes = \"100 KiB\"\nmax_bytes = \"100 KiB\""),
        100 << 10
    );
    assert_eq!(entry_bytes("max_entry_bytes = \"1 MiB\""), 1 << 20);
    assert_error(
        &format!("[cache]\nmax_bytes = \"100 KiB\"\nmax_entry_bytes = \"200 KiB\"\n{MINIMAL}"),
        "keel.toml:3: cache.max_entry_bytes: must not exceed cache.max_bytes (102400 bytes)",
    );
}
