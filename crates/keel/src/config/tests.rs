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
    assert_eq!(config.sites[0].apps[0].pool, "demo");
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
        "shutdown_timeout",
        "queue_length",
        "queue_timeout",
        "retry",
        "env",
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

fn load_keys() -> [&'static str; 10] {
    [
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
    ]
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
app = [{ path = "/", pool = "demo", root = "public" }]
[pool.demo]
command = ["/bin/worker"]
wokers = 2
"#;
    let errors = errors(text);
    for expected in [
        "keel.toml:2: listner: unknown key (did you mean `listener`? valid keys: listener, log, site, pool)",
        "keel.toml:4: log.eror_log: unknown key (did you mean `error_log`?",
        "keel.toml:8: site[0].apps: unknown key (did you mean `app`?",
        "keel.toml:9: site[0].app[0].root: unknown key (valid keys: path, pool)",
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
        "keel.toml:6: site[0].bindings[1]: \"htp://x:80\" is not a binding; expected SCHEME://HOST:PORT with SCHEME http, HOST +, *, an IP or a host name",
    );
}

#[test]
fn https_bindings_are_refused_until_tls_exists() {
    let text = MINIMAL.replace("http://127.0.0.1:8080", "https://127.0.0.1:8443");
    assert_error(
        &text,
        "keel.toml:4: site[0].bindings[0]: https bindings need a tls setting; TLS is not supported yet",
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
        let expected = expected.trim_end_matches('\n');
        let err = load_file(&path)
            .expect_err(&path.display().to_string())
            .to_string();
        assert!(
            err.contains(expected),
            "{}: expected {expected:?} in:\n{err}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} fixtures in {}", dir.display());
}
