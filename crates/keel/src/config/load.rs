//! The keel.toml schema: sections, defaults, and the checks that span sections (app → pool,
//! shared isolation, duplicate site names, binding + path conflicts).
//!
//! A bad value is recorded and replaced by its default so the walk goes on and finds the next
//! problem; any recorded problem makes the whole load fail, so a default never leaks out.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::fields::{Checker, Value, join, line_of};
use super::identity;
use super::{
    ADMIN_SOCKET_NAME, AdminConfig, AppConfig, AppServe, Binding, CacheAdmission, CacheCollapse,
    CacheConfig, Config, ConfigError, ConfigSource, DEFAULT_IDLE_TIMEOUT, DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT, DEFAULT_QUEUE_LENGTH, DEFAULT_QUEUE_TIMEOUT, DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_WORKER_SHUTDOWN_TIMEOUT, DEFAULT_WORKERS, DaemonConfig, HttpListen, HttpWorkerConfig,
    Identity, Isolation, Limits, ListenerConfig, LogConfig, MAX_THREADS, PoolConfig, Problem,
    RapidFailConfig, RecycleConfig, RequestLimits, RetryPolicy, Scheme, SiteConfig, StartMode,
    StaticConfig, TlsFiles, Unavailable, WorkerProtocol, default_runtime_dir, resolve_program,
};
use crate::log::AccessFormat;

const ROOT_KEYS: &[&str] = &[
    "isolation",
    "daemon",
    "admin",
    "listener",
    "log",
    "cache",
    "site",
    "pool",
];
const CACHE_KEYS: &[&str] = &[
    "enabled",
    "max_bytes",
    "max_entry_bytes",
    "admission",
    "scavenge_after",
    "stale_if_error",
    "collapse",
];
/// moka weighs entries in u32: one entry stays far below 4 GiB.
const MAX_CACHE_ENTRY_BYTES: u64 = 1 << 30;
const DAEMON_KEYS: &[&str] = &["runtime_dir", "threads"];
const ADMIN_KEYS: &[&str] = &["socket", "listen", "token"];
/// Longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
const LISTENER_KEYS: &[&str] = &[
    "shutdown_timeout",
    "http2",
    "h2c",
    "max_concurrent_streams",
    "max_connections",
    "header_wait",
    "entity_body",
    "idle_connection",
    "min_send_rate",
    "max_field_bytes",
    "max_request_bytes",
    "max_url_bytes",
    "max_segments",
    "max_segment_chars",
    "max_body_bytes",
];
const LOG_KEYS: &[&str] = &["error_log", "access_log", "access_format"];
const SITE_KEYS: &[&str] = &[
    "name",
    "bindings",
    "app",
    "tls",
    "compression",
    "max_body_bytes",
];
const TLS_KEYS: &[&str] = &["cert", "key"];
const APP_KEYS: &[&str] = &["path", "pool", "root", "list", "follow_symlinks"];
const POOL_KEYS: &[&str] = &[
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
    "shutdown_timeout",
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
];
const RECYCLE_KEYS: &[&str] = &["uptime", "requests", "memory", "schedule"];
const RAPID_FAIL_KEYS: &[&str] = &["failures", "interval", "backoff"];
const LIMITS_KEYS: &[&str] = &["nofile", "nproc", "core"];
/// The most CPUs `cpu_max` may name.
const MAX_CPUS: f64 = 1024.0;

const NAME_RULE: &str = "letters, digits, '_', '.' and '-'";
const BINDING_EXAMPLE: &str = "\"http://127.0.0.1:8080\"";

/// What loading depends on besides the text: who keel runs as (pool identities, the default
/// runtime_dir). Tests pass their own.
#[derive(Clone, Debug)]
pub(super) struct Host {
    pub euid: u32,
    pub egid: u32,
    pub xdg_runtime_dir: Option<OsString>,
    /// `RUNTIME_DIRECTORY`, set by systemd for a unit with `RuntimeDirectory=`.
    pub systemd_runtime_dir: Option<OsString>,
}

impl Host {
    pub(super) fn current() -> Self {
        Host {
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()),
            systemd_runtime_dir: std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()),
        }
    }
}

pub(super) fn load(
    text: &str,
    source: ConfigSource,
    base_dir: PathBuf,
    host: &Host,
) -> Result<Config, ConfigError> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let problems = syntax_errors
            .iter()
            .map(|e| syntax_problem(text, e))
            .collect();
        return Err(ConfigError::new(source.to_string(), problems));
    }
    let root = doc.get_ref();
    let mut ck = Checker::new(text);
    ck.unknown_keys(root, "", ROOT_KEYS);

    let isolation = root
        .get("isolation")
        .and_then(|v| read_choice(&mut ck, v, "isolation", "an isolation mode", &ISOLATIONS))
        .unwrap_or_default();
    let daemon = read_daemon(&mut ck, root.get("daemon"), &base_dir, host);
    let admin = read_admin(&mut ck, root.get("admin"), &base_dir, &daemon);
    let listener = root
        .get("listener")
        .map(|v| read_listener(&mut ck, v))
        .unwrap_or_default();
    let log = root
        .get("log")
        .map(|v| read_log(&mut ck, v, &base_dir))
        .unwrap_or_default();
    let cache = root
        .get("cache")
        .map(|v| read_cache(&mut ck, v))
        .unwrap_or_default();
    let pools = root
        .get("pool")
        .map(|v| read_pools(&mut ck, v, &base_dir, host))
        .unwrap_or_default();
    let shared_pool = match isolation {
        Isolation::Pool => None,
        Isolation::Shared => check_one_shared_pool(&mut ck, root.get("isolation"), &pools),
    };
    let sites = read_sites(&mut ck, root.get("site"), isolation, &base_dir);
    check_site_names_unique(&mut ck, &sites);
    check_one_scheme_per_port(&mut ck, &sites);
    check_apps_name_pools(&mut ck, &sites, &pools, isolation);
    check_no_shared_binding_and_path(&mut ck, &sites);

    let problems = ck.into_problems();
    if !problems.is_empty() {
        return Err(ConfigError::new(source.to_string(), problems));
    }
    Ok(Config {
        source,
        base_dir,
        isolation,
        daemon,
        admin,
        listener,
        log,
        cache,
        sites: sites
            .into_iter()
            .map(|site| site.into_config(shared_pool.as_deref()))
            .collect(),
        pools,
    })
}

fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let span = error.span();
    let near = span
        .as_ref()
        .and_then(|s| text.get(s.clone()))
        .filter(|s| !s.is_empty() && !s.contains('\n') && s.len() <= 40);
    let message = match near {
        Some(near) => format!("{} (at `{near}`)", error.message()),
        None => error.message().to_owned(),
    };
    Problem {
        line: span.map(|s| line_of(text, s.start)),
        key: "TOML syntax".to_owned(),
        message,
    }
}

const ISOLATIONS: [(&str, Isolation); 2] =
    [("pool", Isolation::Pool), ("shared", Isolation::Shared)];
const START_MODES: [(&str, StartMode); 2] = [
    ("on-demand", StartMode::OnDemand),
    ("always", StartMode::Always),
];
/// `protocol`: is it "http"?
const PROTOCOLS: [(&str, bool); 2] = [("keel", false), ("http", true)];
const LISTENS: [(&str, HttpListen); 2] = [("unix", HttpListen::Unix), ("tcp", HttpListen::Tcp)];
const UNAVAILABLES: [(&str, Unavailable); 2] = [
    ("503", Unavailable::Status503),
    ("reset", Unavailable::Reset),
];

/// A string that must be one of `choices`; `what` names the kind in the error.
fn read_choice<T: Copy>(
    ck: &mut Checker<'_>,
    v: &Value<'_>,
    key: &str,
    what: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let valid = || {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        names.join(", ")
    };
    if !matches!(v.get_ref(), DeValue::String(_)) {
        let message = format!("must be one of {} (as a string)", valid());
        ck.report(&v.span(), key, message);
        return None;
    }
    let text = ck.string(v, key)?;
    match choices.iter().find(|(n, _)| *n == text) {
        Some((_, choice)) => Some(*choice),
        None => {
            let message = format!("{text:?} is not {what} (expected one of {})", valid());
            ck.report(&v.span(), key, message);
            None
        }
    }
}

fn read_daemon(
    ck: &mut Checker<'_>,
    v: Option<&Value<'_>>,
    base_dir: &Path,
    host: &Host,
) -> DaemonConfig {
    let mut runtime_dir = None;
    let mut threads = None;
    if let Some(v) = v
        && let Some(t) = ck.table(v, "daemon")
    {
        ck.unknown_keys(t, "daemon", DAEMON_KEYS);
        if let Some(v) = t.get("runtime_dir") {
            runtime_dir = read_path(ck, v, "daemon.runtime_dir", base_dir);
        }
        if let Some(v) = t.get("threads") {
            threads = read_threads(ck, v);
        }
    }
    DaemonConfig {
        threads,
        runtime_dir: runtime_dir.unwrap_or_else(|| {
            default_runtime_dir(
                host.euid,
                host.xdg_runtime_dir.as_deref(),
                host.systemd_runtime_dir.as_deref(),
            )
        }),
    }
}

/// `daemon.threads`: `"auto"` (`None`) or a count from 1 to [`MAX_THREADS`].
fn read_threads(ck: &mut Checker<'_>, v: &Value<'_>) -> Option<u32> {
    const KEY: &str = "daemon.threads";
    if let DeValue::String(s) = v.get_ref() {
        if s.as_ref() != "auto" {
            ck.report(
                &v.span(),
                KEY,
                format!("{s:?} is not a thread count (expected \"auto\" or an integer from 1 to {MAX_THREADS})"),
            );
        }
        return None;
    }
    ck.integer(v, KEY, 1..=MAX_THREADS)
}

fn read_admin(
    ck: &mut Checker<'_>,
    v: Option<&Value<'_>>,
    base_dir: &Path,
    daemon: &DaemonConfig,
) -> AdminConfig {
    let mut admin = AdminConfig {
        socket: daemon.runtime_dir.join(ADMIN_SOCKET_NAME),
        listen: None,
        token: None,
    };
    let Some(t) = v.and_then(|v| ck.table(v, "admin")) else {
        return admin;
    };
    ck.unknown_keys(t, "admin", ADMIN_KEYS);
    if let Some(v) = t.get("socket")
        && let Some(path) = read_path(ck, v, "admin.socket", base_dir)
    {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            ck.report(
                &v.span(),
                "admin.socket",
                format!(
                    "{} is {} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH}",
                    path.display(),
                    path.as_os_str().len()
                ),
            );
        } else {
            admin.socket = path;
        }
    }
    if let Some(v) = t.get("listen")
        && let Some(text) = ck.string(v, "admin.listen")
    {
        match text.parse::<std::net::SocketAddr>() {
            Ok(addr) => admin.listen = Some(addr),
            Err(_) => ck.report(
                &v.span(),
                "admin.listen",
                format!(
                    "{text:?} is not an address and port (e.g. \"127.0.0.1:9180\" or \"[::1]:9180\")"
                ),
            ),
        }
    }
    if let Some(v) = t.get("token")
        && let Some(token) = ck.string(v, "admin.token")
    {
        if token.is_empty() {
            ck.report(
                &v.span(),
                "admin.token",
                "must not be empty (leave the key out for no token)",
            );
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            ck.report(
                &v.span(),
                "admin.token",
                "must be printable ASCII without spaces (it travels in an Authorization header)",
            );
        } else {
            admin.token = Some(token.to_owned());
        }
    }
    admin
}

fn read_listener(ck: &mut Checker<'_>, v: &Value<'_>) -> ListenerConfig {
    let mut listener = ListenerConfig::default();
    let Some(t) = ck.table(v, "listener") else {
        return listener;
    };
    ck.unknown_keys(t, "listener", LISTENER_KEYS);
    if let Some(v) = t.get("shutdown_timeout")
        && let Some(d) = ck.duration(v, "listener.shutdown_timeout", true)
    {
        listener.shutdown_timeout = d;
    }
    if let Some(v) = t.get("http2")
        && let Some(b) = ck.boolean(v, "listener.http2")
    {
        listener.http2 = b;
    }
    if let Some(v) = t.get("h2c")
        && let Some(b) = ck.boolean(v, "listener.h2c")
    {
        listener.h2c = b;
    }
    if let Some(v) = t.get("max_concurrent_streams")
        && let Some(n) = ck.integer(v, "listener.max_concurrent_streams", 1..=10_000)
    {
        listener.max_concurrent_streams = n;
    }
    if let Some(v) = t.get("max_connections")
        && let Some(n) = ck.integer(v, "listener.max_connections", 1..=1_000_000)
    {
        listener.max_connections = n;
    }
    if let Some(v) = t.get("header_wait")
        && let Some(d) = ck.duration(v, "listener.header_wait", false)
    {
        listener.header_wait = d;
    }
    if let Some(v) = t.get("entity_body")
        && let Some(d) = ck.duration(v, "listener.entity_body", false)
    {
        listener.entity_body = d;
    }
    if let Some(v) = t.get("idle_connection")
        && let Some(d) = ck.duration(v, "listener.idle_connection", false)
    {
        listener.idle_connection = d;
    }
    if let Some(v) = t.get("min_send_rate")
        && let Some(n) = ck.integer(v, "listener.min_send_rate", 0..=1_000_000_000)
    {
        listener.min_send_rate = u64::from(n);
    }
    read_request_limits(ck, t, &mut listener.request_limits);
    listener
}

/// Largest head limit keel accepts: hyper buffers at most about 400 KiB of a head.
const MAX_HEAD_LIMIT: u64 = 256 * 1024;

fn read_request_limits(ck: &mut Checker<'_>, t: &DeTable<'_>, limits: &mut RequestLimits) {
    let head_size = |ck: &mut Checker<'_>, name: &str, value: &mut usize| {
        if let Some(v) = t.get(name)
            && let Some(n) = ck.size(v, &format!("listener.{name}"), false)
        {
            if n > MAX_HEAD_LIMIT {
                ck.report(
                    &v.span(),
                    &format!("listener.{name}"),
                    format!("must be at most 256 KiB (got {n} bytes)"),
                );
            } else {
                *value = n as usize;
            }
        }
    };
    head_size(ck, "max_field_bytes", &mut limits.max_field_bytes);
    head_size(ck, "max_request_bytes", &mut limits.max_request_bytes);
    head_size(ck, "max_url_bytes", &mut limits.max_url_bytes);
    if let Some(v) = t.get("max_segments")
        && let Some(n) = ck.integer(v, "listener.max_segments", 1..=65_535)
    {
        limits.max_segments = n as usize;
    }
    if let Some(v) = t.get("max_segment_chars")
        && let Some(n) = ck.integer(v, "listener.max_segment_chars", 1..=65_535)
    {
        limits.max_segment_chars = n as usize;
    }
    if let Some(v) = t.get("max_body_bytes")
        && let Some(n) = ck.size(v, "listener.max_body_bytes", true)
    {
        limits.max_body_bytes = n;
    }
}

const CACHE_ADMISSIONS: [(&str, CacheAdmission); 3] = [
    ("frequent", CacheAdmission::Frequent),
    ("tinylfu", CacheAdmission::TinyLfu),
    ("always", CacheAdmission::Always),
];

fn read_cache(ck: &mut Checker<'_>, v: &Value<'_>) -> CacheConfig {
    let mut cache = CacheConfig::default();
    let Some(t) = ck.table(v, "cache") else {
        return cache;
    };
    ck.unknown_keys(t, "cache", CACHE_KEYS);
    if let Some(v) = t.get("enabled")
        && let Some(b) = ck.boolean(v, "cache.enabled")
    {
        cache.enabled = b;
    }
    if let Some(v) = t.get("max_bytes")
        && let Some(n) = ck.size(v, "cache.max_bytes", false)
    {
        cache.max_bytes = n;
        // Unless given, an entry may be as large as the default or the whole cache,
        // whichever is smaller: a larger one would be stored and evicted at once.
        cache.max_entry_bytes = cache.max_entry_bytes.min(n);
    }
    if let Some(v) = t.get("max_entry_bytes")
        && let Some(n) = ck.size(v, "cache.max_entry_bytes", false)
    {
        if n > MAX_CACHE_ENTRY_BYTES {
            ck.report(
                &v.span(),
                "cache.max_entry_bytes",
                format!("must be at most 1 GiB (got {n} bytes)"),
            );
        } else if n > cache.max_bytes {
            ck.report(
                &v.span(),
                "cache.max_entry_bytes",
                format!(
                    "must not exceed cache.max_bytes ({} bytes)",
                    cache.max_bytes
                ),
            );
        } else {
            cache.max_entry_bytes = n;
        }
    }
    if let Some(v) = t.get("admission")
        && let Some(a) = read_choice(
            ck,
            v,
            "cache.admission",
            "an admission policy",
            &CACHE_ADMISSIONS,
        )
    {
        cache.admission = a;
    }
    if let Some(v) = t.get("collapse")
        && let Some(c) = read_choice(
            ck,
            v,
            "cache.collapse",
            "a collapsing mode",
            &[
                ("cacheable", CacheCollapse::Cacheable),
                ("all", CacheCollapse::All),
            ],
        )
    {
        cache.collapse = c;
    }
    if let Some(v) = t.get("scavenge_after")
        && let Some(d) = ck.duration(v, "cache.scavenge_after", false)
    {
        cache.scavenge_after = d;
    }
    if let Some(v) = t.get("stale_if_error")
        && let Some(d) = ck.duration(v, "cache.stale_if_error", true)
    {
        cache.stale_if_error = d;
    }
    cache
}

fn read_log(ck: &mut Checker<'_>, v: &Value<'_>, base_dir: &Path) -> LogConfig {
    let mut log = LogConfig::default();
    let Some(t) = ck.table(v, "log") else {
        return log;
    };
    ck.unknown_keys(t, "log", LOG_KEYS);
    if let Some(v) = t.get("error_log") {
        log.error_log = read_path(ck, v, "log.error_log", base_dir);
    }
    if let Some(v) = t.get("access_log") {
        log.access_log = read_path(ck, v, "log.access_log", base_dir);
    }
    if let Some(v) = t.get("access_format")
        && let Some(name) = ck.string(v, "log.access_format")
    {
        match name.parse::<AccessFormat>() {
            Ok(f) => log.access_format = f,
            Err(_) => ck.report(
                &v.span(),
                "log.access_format",
                format!("{name:?} is not a format (use \"w3c\", \"combined\" or \"json\")"),
            ),
        }
    }
    log
}

/// A non-empty path string, resolved against `base_dir` (an absolute path stays as is).
fn read_path(ck: &mut Checker<'_>, v: &Value<'_>, key: &str, base_dir: &Path) -> Option<PathBuf> {
    let path = ck.string(v, key)?;
    if path.is_empty() {
        ck.report(
            &v.span(),
            key,
            "must not be empty (a path relative to the config file's directory)",
        );
        return None;
    }
    Some(base_dir.join(path))
}

fn read_pools(
    ck: &mut Checker<'_>,
    v: &Value<'_>,
    base_dir: &Path,
    host: &Host,
) -> BTreeMap<String, PoolConfig> {
    let mut pools = BTreeMap::new();
    let Some(t) = ck.table(v, "pool") else {
        return pools;
    };
    for (name, v) in t.iter() {
        let name: &str = name.get_ref();
        let key = join("pool", name);
        if !is_name(name) {
            let message = format!("{name:?} is not a valid pool name (use {NAME_RULE})");
            ck.report(&v.span(), &key, message);
        }
        // Kept even when invalid, so that apps naming it are not also reported.
        pools.insert(
            name.to_owned(),
            read_pool(ck, name, v, &key, base_dir, host),
        );
    }
    pools
}

fn read_pool(
    ck: &mut Checker<'_>,
    name: &str,
    v: &Value<'_>,
    key: &str,
    base_dir: &Path,
    host: &Host,
) -> PoolConfig {
    let mut pool = PoolConfig {
        name: name.to_owned(),
        command: Vec::new(),
        workers: DEFAULT_WORKERS,
        queue_length: DEFAULT_QUEUE_LENGTH,
        queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        capacity: None,
        retry: RetryPolicy::default(),
        env: BTreeMap::new(),
        cwd: None,
        start: StartMode::default(),
        idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        ping_interval: Some(DEFAULT_PING_INTERVAL),
        ping_timeout: DEFAULT_PING_TIMEOUT,
        startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: DEFAULT_WORKER_SHUTDOWN_TIMEOUT,
        overlap: true,
        recycle: RecycleConfig::default(),
        rapid_fail: RapidFailConfig::default(),
        identity: None,
        limits: Limits::default(),
        memory_max: None,
        cpu_max: None,
        unavailable: Unavailable::default(),
        attach: false,
        protocol: WorkerProtocol::Keel,
    };
    let Some(t) = ck.table(v, key) else {
        return pool;
    };
    ck.unknown_keys(t, key, POOL_KEYS);
    let field = |k: &str| join(key, k);

    match t.get("command") {
        Some(v) => pool.command = read_command(ck, v, &field("command"), base_dir),
        None => ck.report(
            &v.span(),
            &field("command"),
            "is missing (the worker program and its arguments, e.g. command = [\"my-worker\", \"--flag\"])",
        ),
    }
    if let Some(v) = t.get("workers")
        && let Some(n) = ck.integer(v, &field("workers"), 1..=1024)
    {
        pool.workers = n;
    }
    if let Some(v) = t.get("queue_length")
        && let Some(n) = ck.integer(v, &field("queue_length"), 1..=65535)
    {
        pool.queue_length = n;
    }
    if let Some(v) = t.get("queue_timeout")
        && let Some(d) = ck.duration(v, &field("queue_timeout"), false)
    {
        pool.queue_timeout = d;
    }
    if let Some(v) = t.get("capacity") {
        pool.capacity = ck.integer(v, &field("capacity"), 1..=65535);
    }
    if let Some(v) = t.get("retry")
        && let Some(text) = ck.string(v, &field("retry"))
    {
        match RetryPolicy::from_name(text) {
            Some(policy) => pool.retry = policy,
            None => {
                let valid = RetryPolicy::NAMES.map(|n| format!("{n:?}")).join(", ");
                let message = format!("{text:?} is not a retry policy (expected one of {valid})");
                ck.report(&v.span(), &field("retry"), message);
            }
        }
    }
    if let Some(v) = t.get("env") {
        pool.env = read_env(ck, v, &field("env"));
    }
    if let Some(v) = t.get("cwd") {
        pool.cwd = read_path(ck, v, &field("cwd"), base_dir);
    }
    read_lifecycle(ck, t, key, &mut pool);
    pool.identity = read_identity(ck, t, key, host);
    if let Some(v) = t.get("limits") {
        pool.limits = read_limits(ck, v, &field("limits"));
    }
    if let Some(v) = t.get("memory_max") {
        pool.memory_max = ck.size(v, &field("memory_max"), false);
    }
    if let Some(v) = t.get("cpu_max") {
        pool.cpu_max = ck.positive_number(v, &field("cpu_max"), MAX_CPUS);
    }
    if let Some(v) = t.get("unavailable")
        && let Some(u) = read_choice(
            ck,
            v,
            &field("unavailable"),
            "an unavailable action",
            &UNAVAILABLES,
        )
    {
        pool.unavailable = u;
    }
    if let Some(v) = t.get("attach")
        && let Some(b) = ck.boolean(v, &field("attach"))
    {
        pool.attach = b;
    }
    read_protocol(ck, t, key, &mut pool);
    pool
}

/// `protocol`, and the keys of HTTP workers (`listen`, `health_path`).
fn read_protocol(ck: &mut Checker<'_>, t: &DeTable<'_>, key: &str, pool: &mut PoolConfig) {
    let field = |k: &str| join(key, k);
    let mut http = None;
    if let Some(v) = t.get("protocol")
        && let Some(true) = read_choice(ck, v, &field("protocol"), "a worker protocol", &PROTOCOLS)
    {
        http = Some(HttpWorkerConfig::default());
    }
    for name in ["listen", "health_path"] {
        if let Some(v) = t.get(name)
            && http.is_none()
        {
            ck.report(
                &v.span(),
                &field(name),
                "applies only to HTTP workers (protocol = \"http\")",
            );
        }
    }
    let Some(mut cfg) = http else {
        return;
    };
    if let Some(v) = t.get("listen")
        && let Some(l) = read_choice(ck, v, &field("listen"), "a listen kind", &LISTENS)
    {
        cfg.listen = l;
    }
    if let Some(v) = t.get("health_path")
        && let Some(path) = ck.string(v, &field("health_path"))
    {
        if path.starts_with('/') && path.bytes().all(|b| b > 0x20 && b != 0x7f) {
            cfg.health_path = Some(path.to_owned());
        } else {
            ck.report(
                &v.span(),
                &field("health_path"),
                format!("{path:?} is not a request path (it starts with '/' and has no spaces)"),
            );
        }
    }
    if pool.attach
        && let Some(v) = t.get("attach")
    {
        ck.report(
            &v.span(),
            &field("attach"),
            "attached workers speak keel's protocol: not with protocol = \"http\"",
        );
    }
    pool.protocol = WorkerProtocol::Http(cfg);
}

/// Start, idle, health and recycling keys (the pool manager's timers).
fn read_lifecycle(ck: &mut Checker<'_>, t: &DeTable<'_>, key: &str, pool: &mut PoolConfig) {
    let field = |k: &str| join(key, k);
    if let Some(v) = t.get("start")
        && let Some(mode) = read_choice(ck, v, &field("start"), "a start mode", &START_MODES)
    {
        pool.start = mode;
    }
    // "0s" turns these off.
    if let Some(v) = t.get("idle_timeout")
        && let Some(d) = ck.duration(v, &field("idle_timeout"), true)
    {
        pool.idle_timeout = nonzero(d);
    }
    if let Some(v) = t.get("ping_interval")
        && let Some(d) = ck.duration(v, &field("ping_interval"), true)
    {
        pool.ping_interval = nonzero(d);
    }
    for (name, slot) in [
        ("ping_timeout", &mut pool.ping_timeout),
        ("startup_timeout", &mut pool.startup_timeout),
        ("shutdown_timeout", &mut pool.shutdown_timeout),
    ] {
        if let Some(v) = t.get(name)
            && let Some(d) = ck.duration(v, &field(name), false)
        {
            *slot = d;
        }
    }
    if let Some(v) = t.get("overlap")
        && let Some(b) = ck.boolean(v, &field("overlap"))
    {
        pool.overlap = b;
    }
    if let Some(v) = t.get("recycle") {
        pool.recycle = read_recycle(ck, v, &field("recycle"));
    }
    if let Some(v) = t.get("rapid_fail") {
        pool.rapid_fail = read_rapid_fail(ck, v, &field("rapid_fail"));
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn read_recycle(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> RecycleConfig {
    let mut recycle = RecycleConfig::default();
    let Some(t) = ck.table(v, key) else {
        return recycle;
    };
    ck.unknown_keys(t, key, RECYCLE_KEYS);
    let field = |k: &str| join(key, k);
    if let Some(v) = t.get("uptime")
        && let Some(d) = ck.duration(v, &field("uptime"), true)
    {
        recycle.uptime = nonzero(d);
    }
    if let Some(v) = t.get("requests") {
        recycle.requests = ck.count(v, &field("requests")).filter(|&n| n > 0);
    }
    if let Some(v) = t.get("memory") {
        recycle.memory = ck.size(v, &field("memory"), true).filter(|&n| n > 0);
    }
    if let Some(v) = t.get("schedule")
        && let Some(items) = ck.array(v, &field("schedule"))
    {
        let key = field("schedule");
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let Some(time) = ck.time_of_day(item, &item_key) else {
                continue;
            };
            if recycle.schedule.contains(&time) {
                ck.report(&item.span(), &item_key, format!("{time} is listed twice"));
                continue;
            }
            recycle.schedule.push(time);
        }
        recycle.schedule.sort();
    }
    recycle
}

fn read_rapid_fail(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> RapidFailConfig {
    let mut rapid_fail = RapidFailConfig::default();
    let Some(t) = ck.table(v, key) else {
        return rapid_fail;
    };
    ck.unknown_keys(t, key, RAPID_FAIL_KEYS);
    let field = |k: &str| join(key, k);
    // IIS rapidFailProtectionMaxCrashes stops at 2^31 - 1; 0 here means protection off.
    if let Some(v) = t.get("failures")
        && let Some(n) = ck.integer(v, &field("failures"), 0..=i32::MAX as u32)
    {
        rapid_fail.failures = n;
    }
    if let Some(v) = t.get("interval")
        && let Some(d) = ck.duration(v, &field("interval"), false)
    {
        rapid_fail.interval = d;
    }
    if let Some(v) = t.get("backoff")
        && let Some(b) = ck.boolean(v, &field("backoff"))
    {
        rapid_fail.backoff = b;
    }
    rapid_fail
}

fn read_limits(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> Limits {
    let mut limits = Limits::default();
    let Some(t) = ck.table(v, key) else {
        return limits;
    };
    ck.unknown_keys(t, key, LIMITS_KEYS);
    for (name, slot) in [
        ("nofile", &mut limits.nofile),
        ("nproc", &mut limits.nproc),
        ("core", &mut limits.core),
    ] {
        if let Some(v) = t.get(name) {
            *slot = read_rlimit(ck, v, &join(key, name));
        }
    }
    limits
}

/// A non-negative integer, or "unlimited" (RLIM_INFINITY, `u64::MAX`).
fn read_rlimit(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> Option<u64> {
    match v.get_ref() {
        DeValue::String(s) if s.as_ref() == "unlimited" => Some(u64::MAX),
        DeValue::String(s) => {
            let message = format!(
                "{s:?} is not a limit (expected an integer of 0 or more, or \"unlimited\")"
            );
            ck.report(&v.span(), key, message);
            None
        }
        _ => ck.count(v, key),
    }
}

/// `user` and `group`, looked up, and allowed for the user keel runs as.
fn read_identity(
    ck: &mut Checker<'_>,
    t: &DeTable<'_>,
    key: &str,
    host: &Host,
) -> Option<Identity> {
    let user_key = join(key, "user");
    let group_key = join(key, "group");
    let group_v = t.get("group");
    let Some(user_v) = t.get("user") else {
        if let Some(v) = group_v {
            ck.report(
                &v.span(),
                &group_key,
                "needs user (group sets the group of the user the workers run as; add user)",
            );
        }
        return None;
    };
    let (user, entry) = read_user(ck, user_v, &user_key)?;
    let group = match group_v {
        Some(v) => Some(read_group(ck, v, &group_key)?),
        None => None,
    };
    let gid = match (&group, entry) {
        (Some((_, gid)), _) => *gid,
        (None, Some(entry)) => entry.gid,
        (None, None) => {
            let message = format!(
                "uid {user} has no entry in the user database, so it has no primary group (add group)"
            );
            ck.report(&user_v.span(), &user_key, message);
            return None;
        }
    };
    let uid = match entry {
        Some(entry) => entry.uid,
        // A numeric uid with no passwd entry.
        None => user.parse().ok()?,
    };
    let identity = Identity { user, uid, gid };
    let group_name = group.as_ref().map(|(name, _)| name.as_str());
    if let Err((which, message)) =
        identity::check_allowed(&identity, group_name, host.euid, host.egid)
    {
        let (span, k) = match (which, group_v) {
            ("group", Some(v)) => (v.span(), &group_key),
            _ => (user_v.span(), &user_key),
        };
        ck.report(&span, k, message);
        return None;
    }
    Some(identity)
}

/// The user as written, and its passwd entry (`None` only for a numeric uid without one).
fn read_user(
    ck: &mut Checker<'_>,
    v: &Value<'_>,
    key: &str,
) -> Option<(String, Option<identity::PasswdEntry>)> {
    let text = read_id_text(ck, v, key, "user name or numeric uid")?;
    let lookup = match identity::numeric_id(&text) {
        // A numeric uid needs no passwd entry; it only lacks a primary group without one.
        Some(Ok(uid)) => match identity::user_by_uid(uid) {
            Ok(entry) => return Some((text, entry)),
            Err(e) => Err(e),
        },
        Some(Err(why)) => {
            ck.report(&v.span(), key, why);
            return None;
        }
        None => identity::user_by_name(&text),
    };
    match lookup {
        Ok(Some(entry)) => Some((text, Some(entry))),
        Ok(None) => {
            let message = format!("there is no user named {text:?} (a user name or numeric uid)");
            ck.report(&v.span(), key, message);
            None
        }
        Err(e) => {
            ck.report(&v.span(), key, format!("cannot look up user {text:?}: {e}"));
            None
        }
    }
}

/// The group as written, and its gid.
fn read_group(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> Option<(String, u32)> {
    let text = read_id_text(ck, v, key, "group name or numeric gid")?;
    let lookup = match identity::numeric_id(&text) {
        Some(Ok(gid)) => return Some((text, gid)),
        Some(Err(why)) => {
            ck.report(&v.span(), key, why);
            return None;
        }
        None => identity::group_by_name(&text),
    };
    match lookup {
        Ok(Some(gid)) => Some((text, gid)),
        Ok(None) => {
            let message = format!("there is no group named {text:?} (a group name or numeric gid)");
            ck.report(&v.span(), key, message);
            None
        }
        Err(e) => {
            ck.report(
                &v.span(),
                key,
                format!("cannot look up group {text:?}: {e}"),
            );
            None
        }
    }
}

/// A name string or a non-negative integer id, as text.
fn read_id_text(ck: &mut Checker<'_>, v: &Value<'_>, key: &str, what: &str) -> Option<String> {
    match v.get_ref() {
        DeValue::Integer(_) => ck.count(v, key).map(|n| n.to_string()),
        DeValue::String(_) => {
            let text = ck.string(v, key)?;
            if text.is_empty() {
                ck.report(&v.span(), key, format!("must not be empty (a {what})"));
                return None;
            }
            Some(text.to_owned())
        }
        _ => {
            let message = format!("must be a {what}");
            ck.report(&v.span(), key, message);
            None
        }
    }
}

fn read_command(ck: &mut Checker<'_>, v: &Value<'_>, key: &str, base_dir: &Path) -> Vec<String> {
    let Some(items) = ck.array(v, key) else {
        return Vec::new();
    };
    if items.is_empty() {
        ck.report(
            &v.span(),
            key,
            "must not be empty (the worker program and its arguments)",
        );
        return Vec::new();
    }
    let mut argv: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        if let Some(arg) = ck.string(item, &item_key) {
            if i == 0 && arg.is_empty() {
                ck.report(
                    &item.span(),
                    &item_key,
                    "must not be empty (the program to run)",
                );
            }
            argv.push(arg.to_owned());
        }
    }
    if let Some(program) = argv.first_mut() {
        *program = resolve_program(program, base_dir);
    }
    argv
}

fn read_env(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(t) = ck.table(v, key) else {
        return env;
    };
    for (name, v) in t.iter() {
        let name: &str = name.get_ref();
        let var_key = join(key, name);
        if name.is_empty() || name.contains(['=', '\0']) {
            ck.report(
                &v.span(),
                &var_key,
                "is not an environment variable name (no '=' or NUL, not empty)",
            );
        }
        if let Some(value) = ck.string(v, &var_key) {
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    env
}

/// A site as read, with the spans the cross-section checks report at.
struct SiteDraft {
    index: usize,
    /// Span of the `[[site]]` table, for problems about a missing key.
    span: Range<usize>,
    name: Option<Located<String>>,
    bindings: Vec<Located<Binding>>,
    apps: Vec<AppDraft>,
    tls: Option<Located<TlsFiles>>,
    compression: bool,
    max_body_bytes: Option<u64>,
}

struct AppDraft {
    index: usize,
    path: Located<String>,
    /// `None` for a static root, and with shared isolation, where the key is optional.
    pool: Option<Located<String>>,
    /// `{ root = "dir" }`: served by the daemon itself.
    files: Option<StaticConfig>,
}

struct Located<T> {
    value: T,
    span: Range<usize>,
}

impl SiteDraft {
    fn key(&self) -> String {
        format!("site[{}]", self.index)
    }

    /// `shared_pool`: the one pool of shared isolation, for apps that name none.
    fn into_config(self, shared_pool: Option<&str>) -> SiteConfig {
        SiteConfig {
            name: self.name.map(|n| n.value).unwrap_or_default(),
            bindings: self.bindings.into_iter().map(|b| b.value).collect(),
            apps: self
                .apps
                .into_iter()
                .map(|a| AppConfig {
                    path: a.path.value,
                    serve: match a.files {
                        Some(files) => AppServe::Static(files),
                        None => AppServe::Pool(
                            a.pool
                                .map(|p| p.value)
                                .or_else(|| shared_pool.map(str::to_owned))
                                .unwrap_or_default(),
                        ),
                    },
                })
                .collect(),
            tls: self.tls.map(|t| t.value),
            compression: self.compression,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

fn read_sites(
    ck: &mut Checker<'_>,
    v: Option<&Value<'_>>,
    isolation: Isolation,
    base_dir: &Path,
) -> Vec<SiteDraft> {
    const NEED_ONE: &str = "at least one [[site]] is required, with a name, bindings and app";
    let Some(v) = v else {
        ck.report(&(0..0), "site", NEED_ONE);
        return Vec::new();
    };
    let items = match v.get_ref() {
        DeValue::Array(items) => items,
        DeValue::Table(_) => {
            ck.report(
                &v.span(),
                "site",
                "must be an array of tables: write [[site]], not [site]",
            );
            return Vec::new();
        }
        _ => {
            ck.report(
                &v.span(),
                "site",
                "must be an array of tables, written [[site]]",
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        ck.report(&v.span(), "site", NEED_ONE);
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| read_site(ck, i, v, isolation, base_dir))
        .collect()
}

fn read_site(
    ck: &mut Checker<'_>,
    index: usize,
    v: &Value<'_>,
    isolation: Isolation,
    base_dir: &Path,
) -> Option<SiteDraft> {
    let key = format!("site[{index}]");
    let t = ck.table(v, &key)?;
    ck.unknown_keys(t, &key, SITE_KEYS);
    let mut site = SiteDraft {
        index,
        span: v.span(),
        name: None,
        bindings: Vec::new(),
        apps: Vec::new(),
        tls: None,
        compression: false,
        max_body_bytes: None,
    };
    if let Some(v) = t.get("max_body_bytes") {
        site.max_body_bytes = ck.size(v, &format!("{key}.max_body_bytes"), true);
    }
    if let Some(v) = t.get("compression") {
        site.compression = ck
            .boolean(v, &format!("{key}.compression"))
            .unwrap_or(false);
    }

    let name_key = format!("{key}.name");
    match t.get("name") {
        Some(v) => {
            if let Some(name) = ck.string(v, &name_key) {
                if is_name(name) {
                    site.name = Some(Located {
                        value: name.to_owned(),
                        span: v.span(),
                    });
                } else {
                    ck.report(
                        &v.span(),
                        &name_key,
                        format!("{name:?} is not a valid site name (use {NAME_RULE})"),
                    );
                }
            }
        }
        None => ck.report(
            &site.span,
            &name_key,
            format!("is missing (a unique name of {NAME_RULE})"),
        ),
    }

    let bindings_key = format!("{key}.bindings");
    match t.get("bindings") {
        Some(v) => site.bindings = read_bindings(ck, v, &bindings_key),
        None => {
            let message = format!("is missing (a list such as bindings = [{BINDING_EXAMPLE}])");
            ck.report(&site.span, &bindings_key, message);
        }
    }

    let app_key = format!("{key}.app");
    match t.get("app") {
        Some(v) => site.apps = read_apps(ck, v, &app_key, isolation, base_dir),
        None => ck.report(
            &site.span,
            &app_key,
            "is missing (a list such as app = [{ path = \"/\", pool = \"demo\" }])",
        ),
    }

    let tls_key = format!("{key}.tls");
    if let Some(v) = t.get("tls") {
        site.tls = read_tls(ck, v, &tls_key, base_dir);
    }
    let https = site
        .bindings
        .iter()
        .enumerate()
        .find(|(_, b)| b.value.scheme == Scheme::Https);
    match (https, t.get("tls")) {
        (Some((i, b)), None) => ck.report(
            &b.span,
            &format!("{bindings_key}[{i}]"),
            format!(
                "{} is https, and the site has no certificate (add tls = {{ cert = \"site.pem\", key = \"site.key\" }} to the site)",
                b.value
            ),
        ),
        (None, Some(v)) => ck.report(
            &v.span(),
            &tls_key,
            "is set, and no binding of this site is https (add an https:// binding or remove tls)",
        ),
        _ => {}
    }
    Some(site)
}

/// `tls = { cert = "…", key = "…" }`: both files are read and checked here, so a missing,
/// unreadable or invalid file is reported at this line.
fn read_tls(
    ck: &mut Checker<'_>,
    v: &Value<'_>,
    key: &str,
    base_dir: &Path,
) -> Option<Located<TlsFiles>> {
    let t = ck.table(v, key)?;
    ck.unknown_keys(t, key, TLS_KEYS);
    let mut path = |name: &str, what: &str| {
        let field = join(key, name);
        match t.get(name) {
            Some(v) => read_path(ck, v, &field, base_dir),
            None => {
                ck.report(
                    &v.span(),
                    &field,
                    format!("is missing (the PEM file of {what})"),
                );
                None
            }
        }
    };
    let cert = path("cert", "the certificate chain");
    let key_file = path("key", "the private key");
    let files = TlsFiles {
        cert: cert?,
        key: key_file?,
    };
    if let Err(message) = files.load() {
        ck.report(&v.span(), key, message);
        return None;
    }
    Some(Located {
        value: files,
        span: v.span(),
    })
}

/// One socket speaks TLS or does not: http and https bindings may not share a port. Port 0
/// is exempt: each scheme gets its own ephemeral port.
fn check_one_scheme_per_port(ck: &mut Checker<'_>, sites: &[SiteDraft]) {
    let mut first: BTreeMap<u16, (&Binding, String)> = BTreeMap::new();
    for site in sites {
        for (i, b) in site.bindings.iter().enumerate() {
            let key = format!("{}.bindings[{i}]", site.key());
            if b.value.port == 0 {
                continue;
            }
            match first.get(&b.value.port) {
                Some((earlier, earlier_key)) if earlier.scheme != b.value.scheme => {
                    let message = format!(
                        "{} and {earlier} ({earlier_key}) share port {}; a port is either http or https",
                        b.value, b.value.port
                    );
                    ck.report(&b.span, &key, message);
                }
                Some(_) => {}
                None => {
                    first.insert(b.value.port, (&b.value, key));
                }
            }
        }
    }
}

fn read_bindings(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> Vec<Located<Binding>> {
    let Some(items) = ck.array(v, key) else {
        return Vec::new();
    };
    if items.is_empty() {
        let message =
            format!("must not be empty (add at least one binding such as {BINDING_EXAMPLE})");
        ck.report(&v.span(), key, message);
    }
    let mut bindings: Vec<Located<Binding>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(text) = ck.string(item, &item_key) else {
            continue;
        };
        match text.parse::<Binding>() {
            Ok(binding) => {
                if let Some(first) = bindings.iter().position(|b| b.value == binding) {
                    let message =
                        format!("{binding} is listed twice in this site (also {key}[{first}])");
                    ck.report(&item.span(), &item_key, message);
                }
                bindings.push(Located {
                    value: binding,
                    span: item.span(),
                });
            }
            Err(e) => ck.report(&item.span(), &item_key, e.to_string()),
        }
    }
    bindings
}

fn read_apps(
    ck: &mut Checker<'_>,
    v: &Value<'_>,
    key: &str,
    isolation: Isolation,
    base_dir: &Path,
) -> Vec<AppDraft> {
    let Some(items) = ck.array(v, key) else {
        return Vec::new();
    };
    if items.is_empty() {
        let message =
            "must not be empty (add at least one app such as { path = \"/\", pool = \"demo\" })";
        ck.report(&v.span(), key, message);
    }
    let mut apps: Vec<AppDraft> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        let Some(t) = ck.table(item, &item_key) else {
            continue;
        };
        ck.unknown_keys(t, &item_key, APP_KEYS);
        let path = read_app_path(ck, item, t, &item_key);
        let (pool, files) = if t.contains_key("root") {
            if let Some(v) = t.get("pool") {
                let message = "an app is served either by a pool or from a static root, not both";
                ck.report(&v.span(), &format!("{item_key}.pool"), message);
            }
            (Some(None), read_static(ck, t, &item_key, base_dir))
        } else {
            for k in ["list", "follow_symlinks"] {
                if let Some(v) = t.get(k) {
                    let message = "only applies to a static root (add root = \"dir\")";
                    ck.report(&v.span(), &format!("{item_key}.{k}"), message);
                }
            }
            (read_app_pool(ck, item, t, &item_key, isolation), None)
        };
        let (Some(path), Some(pool)) = (path, pool) else {
            continue;
        };
        if t.contains_key("root") && files.is_none() {
            continue;
        }
        if let Some(first) = apps.iter().find(|a| same_path(&a.path.value, &path.value)) {
            let message = format!(
                "{:?} is mapped twice in this site (also {key}[{}]; paths compare ignoring case and a trailing \"/\")",
                path.value, first.index
            );
            ck.report(&path.span, &format!("{item_key}.path"), message);
        }
        apps.push(AppDraft {
            index,
            path,
            pool,
            files,
        });
    }
    apps
}

fn read_app_path(
    ck: &mut Checker<'_>,
    app: &Value<'_>,
    t: &DeTable<'_>,
    key: &str,
) -> Option<Located<String>> {
    let key = format!("{key}.path");
    let Some(v) = t.get("path") else {
        ck.report(
            &app.span(),
            &key,
            "is missing (a URL path prefix starting with \"/\")",
        );
        return None;
    };
    let path = ck.string(v, &key)?;
    if let Err(why) = check_app_path(path) {
        ck.report(&v.span(), &key, format!("{path:?} {why}"));
        return None;
    }
    Some(Located {
        value: path.to_owned(),
        span: v.span(),
    })
}

/// `{ root = "public", list = false, follow_symlinks = false }`: the root must be an
/// existing directory (relative to the config file).
fn read_static(
    ck: &mut Checker<'_>,
    t: &DeTable<'_>,
    key: &str,
    base_dir: &Path,
) -> Option<StaticConfig> {
    let root_key = format!("{key}.root");
    let v = t.get("root")?;
    // An empty root would be the config file's own directory (keel.toml, logs, tokens).
    let root = read_path(ck, v, &root_key, base_dir)?;
    if !root.is_dir() {
        ck.report(
            &v.span(),
            &root_key,
            format!(
                "{} is not a directory keel can read (a static root must exist)",
                root.display()
            ),
        );
        return None;
    }
    let flag = |ck: &mut Checker<'_>, name: &str| {
        t.get(name)
            .and_then(|v| ck.boolean(v, &format!("{key}.{name}")))
            .unwrap_or(false)
    };
    let list = flag(ck, "list");
    let follow_symlinks = flag(ck, "follow_symlinks");
    Some(StaticConfig {
        root,
        list,
        follow_symlinks,
    })
}

/// `Some(None)`: no pool key, which only shared isolation allows; `None`: a problem.
fn read_app_pool(
    ck: &mut Checker<'_>,
    app: &Value<'_>,
    t: &DeTable<'_>,
    key: &str,
    isolation: Isolation,
) -> Option<Option<Located<String>>> {
    let key = format!("{key}.pool");
    let Some(v) = t.get("pool") else {
        if isolation == Isolation::Shared {
            return Some(None);
        }
        ck.report(
            &app.span(),
            &key,
            "is missing (the name of a [pool.NAME] section)",
        );
        return None;
    };
    let pool = ck.string(v, &key)?;
    Some(Some(Located {
        value: pool.to_owned(),
        span: v.span(),
    }))
}

/// An app path is the path part of an HTTP.sys URL prefix: it must not be able to mean two
/// things once the listener has canonicalised a request's URL.
fn check_app_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with \"/\" (e.g. \"/\" or \"/shop\")");
    }
    if path.contains(['?', '#']) {
        return Err("must not contain '?' or '#' (an app path is a URL path prefix)");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters (percent-encode them)");
    }
    let dot_segment = path.split('/').any(|seg| matches!(seg, "." | ".."));
    if path.contains("//") || dot_segment {
        return Err(
            "must not contain empty, \".\" or \"..\" segments (write it canonically, e.g. \"/shop/api\")",
        );
    }
    Ok(())
}

/// Two app paths route the same requests when they differ only in case or a trailing "/"
/// (routing lower-cases both sides the same way).
fn same_path(a: &str, b: &str) -> bool {
    let key = |p: &str| {
        let trimmed = if p.len() > 1 {
            p.strip_suffix('/').unwrap_or(p)
        } else {
            p
        };
        trimmed.to_lowercase()
    };
    key(a) == key(b)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_site_names_unique(ck: &mut Checker<'_>, sites: &[SiteDraft]) {
    let mut first_with: BTreeMap<&str, &SiteDraft> = BTreeMap::new();
    for site in sites {
        let Some(name) = &site.name else { continue };
        match first_with.get(name.value.as_str()) {
            Some(first) => {
                let message = format!(
                    "{:?} is already the name of {} (site names must be unique)",
                    name.value,
                    first.key()
                );
                ck.report(&name.span, &format!("{}.name", site.key()), message);
            }
            None => {
                first_with.insert(&name.value, site);
            }
        }
    }
}

/// With `isolation = "shared"`, the one pool's name; otherwise reports why there is none.
fn check_one_shared_pool(
    ck: &mut Checker<'_>,
    isolation: Option<&Value<'_>>,
    pools: &BTreeMap<String, PoolConfig>,
) -> Option<String> {
    let span = isolation.map_or(0..0, |v| v.span());
    let mut names = pools.keys();
    match (names.next(), names.next()) {
        (Some(only), None) => return Some(only.clone()),
        (None, _) => ck.report(
            &span,
            "isolation",
            "\"shared\" serves every app of every site from one pool, and no [pool.NAME] is \
             defined (add exactly one)",
        ),
        (Some(_), Some(_)) => {
            let names: Vec<String> = pools.keys().map(|n| format!("{n:?}")).collect();
            let message = format!(
                "\"shared\" serves every app of every site from one pool and one queue (IIS 5.0 \
                 isolation mode), so exactly one [pool.NAME] may be defined, not {} ({}); \
                 keep one, or use isolation = \"pool\"",
                names.len(),
                names.join(", ")
            );
            ck.report(&span, "isolation", message);
        }
    }
    None
}

fn check_apps_name_pools(
    ck: &mut Checker<'_>,
    sites: &[SiteDraft],
    pools: &BTreeMap<String, PoolConfig>,
    isolation: Isolation,
) {
    let defined: BTreeSet<&str> = pools.keys().map(String::as_str).collect();
    for site in sites {
        for app in &site.apps {
            let Some(pool) = &app.pool else { continue };
            let pool = &pool.value;
            if defined.contains(pool.as_str()) {
                continue;
            }
            let valid = if isolation == Isolation::Shared && defined.len() == 1 {
                let only = defined.first().copied().unwrap_or_default();
                format!(
                    "with isolation = \"shared\" every app is served by pool {only:?}; name it or leave pool out"
                )
            } else if defined.is_empty() {
                format!("no pools are defined; add a [pool.{pool}] section")
            } else {
                let names: Vec<_> = defined.iter().map(|n| format!("{n:?}")).collect();
                format!(
                    "add a [pool.{pool}] section or use one of {}",
                    names.join(", ")
                )
            };
            let key = format!("{}.app[{}].pool", site.key(), app.index);
            let span = app.pool.as_ref().map_or(0..0, |p| p.span.clone());
            ck.report(
                &span,
                &key,
                format!("there is no pool named {pool:?} ({valid})"),
            );
        }
    }
}

/// HTTP.sys refuses a second registration of the same URL prefix; here that is two sites with
/// an identical binding mapping the same path. Reported once per app, at the later site.
fn check_no_shared_binding_and_path(ck: &mut Checker<'_>, sites: &[SiteDraft]) {
    for (j, later) in sites.iter().enumerate() {
        for app in &later.apps {
            let clash = sites[..j].iter().find_map(|earlier| {
                let shares_path = earlier
                    .apps
                    .iter()
                    .any(|a| same_path(&a.path.value, &app.path.value));
                let binding = earlier
                    .bindings
                    .iter()
                    .find(|b| later.bindings.iter().any(|l| l.value == b.value))?;
                shares_path.then_some((earlier, &binding.value))
            });
            let Some((earlier, binding)) = clash else {
                continue;
            };
            let earlier_name = earlier.name.as_ref().map_or("?", |n| n.value.as_str());
            let later_name = later.name.as_ref().map_or("?", |n| n.value.as_str());
            let message = format!(
                "sites {earlier_name:?} ({}) and {later_name:?} both map {:?} on {binding} \
                 (use a different path, host name or port in one of them)",
                earlier.key(),
                app.path.value,
            );
            let key = format!("{}.app[{}].path", later.key(), app.index);
            ck.report(&app.path.span, &key, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_paths_are_canonical_prefixes() {
        for ok in ["/", "/shop", "/shop/", "/shop/api", "/a.b/c-d", "/%20x"] {
            assert_eq!(check_app_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "shop", "/shop?x", "/a#b", "/a b", "//", "/a//b", "/a/./b", "/a/..", "/..", "/./",
        ] {
            assert!(check_app_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_the_same_ignoring_case_and_a_trailing_slash() {
        assert!(same_path("/Shop", "/shop/"));
        assert!(same_path("/", "/"));
        assert!(same_path("/CAFÉ", "/café"));
        assert!(!same_path("/shop", "/shops"));
        assert!(!same_path("/", "/shop"));
    }
}
